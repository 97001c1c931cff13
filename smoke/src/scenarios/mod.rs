//! The registry: every scenario with its name, class and one-line
//! description. Add one by writing `fn my_thing(c: &mut Ctx) -> Res` in the
//! file of its topic and a line in [`registry`].

mod daemon;
mod images;
mod net;
mod ready;
mod vm;
mod workspace;

use crate::ctx::Ctx;
use crate::runner::outcome;

/// How a scenario shares the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Its own VMs only: runs in the pool, in parallel with anything.
    Pure,
    /// Uses the shared fixture repository: all of them run as one serial
    /// chain, which takes one pool slot.
    Repodir,
    /// Touches everything (prune, daemon or helper restart, the config):
    /// runs alone, after the pool drained.
    Global,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Pure => "pure",
            Class::Repodir => "repodir",
            Class::Global => "global",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

pub struct Scenario {
    pub name: &'static str,
    pub class: Class,
    pub desc: &'static str,
    pub run: fn(&mut Ctx) -> Outcome,
}

fn s(
    name: &'static str,
    class: Class,
    desc: &'static str,
    run: fn(&mut Ctx) -> Outcome,
) -> Scenario {
    Scenario {
        name,
        class,
        desc,
        run,
    }
}

/// Every scenario, in the order they are listed (and, per class, started).
pub fn registry() -> Vec<Scenario> {
    use Class::*;
    vec![
        // VMs
        s("bare", Pure, "vm run --rm -- echo hi: prints hi, exits 0, leaves no VM", |c| outcome(vm::bare(c))),
        s("exit-code", Pure, "vm run --rm -- sh -c 'exit 7' exits 7", |c| outcome(vm::exit_code(c))),
        s("quoting", Pure, "the argv reaches the guest exactly as given (spaces, quotes, $)", |c| outcome(vm::quoting(c))),
        s("stdin", Pure, "piped stdin reaches vm run's command whole, with its EOF", |c| outcome(vm::stdin(c))),
        s("large-output", Pure, "20 MB of output arrive whole", |c| outcome(vm::large_output(c))),
        s("detach-refusals", Pure, "-d leaves a VM running; -d --rm and -d -- cmd are refused (125)", |c| outcome(vm::detach_refusals(c))),
        s("invalid-spec", Pure, "bad vcpu, memory, image are refused before anything is created", |c| outcome(vm::invalid_spec(c))),
        s("invalid-name", Pure, "an invalid VM name is refused and leaves no row", |c| outcome(vm::invalid_name(c))),
        s("lifecycle", Pure, "create, ssh, stop, start, ssh (data kept), delete", |c| outcome(vm::lifecycle(c))),
        s("vm-set", Pure, "vm set records vcpu/memory for the next start (nproc follows), grows a stopped VM's /root (df), never shrinks it", |c| outcome(vm::vm_set(c))),
        s("restart-boot-id", Pure, "vm restart gives a new boot id", |c| outcome(vm::restart_boot_id(c))),
        s("kill-signal", Pure, "vm kill --signal KILL stops the VM and its VMM; STOP is not allowed", |c| outcome(vm::kill_signal(c))),
        s("prune-keeps-running", Global, "vm prune needs -f, deletes stopped VMs, keeps running ones", |c| outcome(vm::prune_keeps_running(c))),
        s("ready-cold", Pure, "cold: 4 runs at once keep /tmp written first; gcc first compiles; vm run -d then at once ssh and port 22", |c| outcome(ready::cold(c))),
        s("ready-from", Pure, "--from a snapshot: 4 runs at once keep /tmp written first; vm run -d then at once ssh and port 22", |c| outcome(ready::from_snapshot(c))),
        s("concurrent-runs", Pure, "three vm run --rm at once: all succeed, distinct boots, none left", |c| outcome(vm::concurrent_runs(c))),
        // Workspaces (the fixture repository)
        s("workspace-run", Repodir, "vm run --rm REPO: tracked files in /root/repo, the untracked notice", |c| outcome(workspace::workspace_run(c))),
        s("dry-run", Repodir, "--dry-run lists exactly what a prepare ships, with no VM", |c| outcome(workspace::dry_run(c))),
        s("include-untracked", Repodir, "--include-untracked ships untracked files, never gitignored ones", |c| outcome(workspace::include_untracked(c))),
        s("mise-precondition", Repodir, "a .mise.toml in an image without mise: no refusal, a note, plain run; --no-bootstrap is quiet", |c| outcome(workspace::mise_precondition(c))),
        s("mise-bootstrap", Repodir, "sandbox image: vm run installs a repo's mise tools offline; vm exec runs through mise exec", |c| outcome(workspace::mise_bootstrap(c))),
        s("full-copy", Repodir, "submodules are refused in overlay mode and shipped with full_copy", |c| outcome(workspace::full_copy(c))),
        s("export-base-commit", Repodir, "workspace export (applies to a clone) and --base-commit includes guest commits", |c| outcome(workspace::export_base_commit(c))),
        s("workspace-persists", Repodir, "a workspace survives vm stop/start", |c| outcome(workspace::workspace_persists(c))),
        s("exec", Repodir, "vm exec: cwd, exit codes, moved-repo warning, --auto-prepare, stopped VM refused", |c| outcome(workspace::exec(c))),
        s("export-patch", Repodir, "vm run --export-patch keeps a failing command's edits; the VM goes", |c| outcome(workspace::export_patch(c))),
        s("exit-codes-12x", Pure, "125 banger failed, 126 cannot run, 127 not found, 128+N signal", |c| outcome(workspace::exit_codes_12x(c))),
        // Network and services
        s("nat-rules", Pure, "--nat rules installed, identical across stop/start, removed on delete; vm set --nat/--no-nat on a running VM switches its rules and name servers", |c| outcome(net::nat_rules(c))),
        s("ports", Pure, "vm ports shows sshd and a server started in the guest, as NAME.vm:PORT", |c| outcome(net::ports(c))),
        s("stats", Pure, "vm stats reports host and guest figures", |c| outcome(net::stats(c))),
        s("dns", Pure, "NAME.vm answers from the host and the guest; NXDOMAIN, REFUSED; gone on stop", |c| outcome(net::dns(c))),
        s("ssh-config", Pure, "ssh-config --install adds one Include (ssh -G sees the VM), --uninstall restores the file", |c| outcome(net::ssh_config(c))),
        // Snapshots and images
        s("snapshot-restore", Pure, "snapshot, restore keeps files and processes, clones differ in identity", |c| outcome(images::snapshot_restore(c))),
        s("warm-run", Global, "warm_start: the automatic snapshot is made, the next vm run restores it; warm runs keep /tmp, compile, are reachable at once", |c| outcome(images::warm_run(c))),
        s("oci-pull-run", Pure, "image pull from a local registry; vm run of an image without an init", |c| outcome(images::oci_pull_run(c))),
        s("docker", Pure, "sandbox image: docker load of a tarball made here, docker run, then docker compose up --exit-code-from with two services", |c| outcome(images::docker(c))),
        s("image-register", Pure, "image register: an ext4 file (busybox, no agent, no init) boots; a file that is not ext4 is refused, leaving no image", |c| outcome(images::image_register(c))),
        s("catalog", Pure, "image pull of a user catalog entry (a bundle over HTTP), then a run", |c| outcome(images::catalog(c))),
        // The stack
        s("doctor", Pure, "banger doctor passes, its JSON has the rows", |c| outcome(daemon::doctor(c))),
        s("daemon-restart", Global, "daemon stop/start keeps a running VM (same boot id)", |c| outcome(daemon::daemon_restart(c))),
        s("helper-restart", Global, "bangerd-root killed: the VM runs on (same boot id), the helper comes back", |c| outcome(daemon::helper_restart(c))),
        s("check-migrations", Global, "bangerd --check-migrations: up to date, absent on a fresh tree, changes nothing", |c| outcome(daemon::check_migrations(c))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_kebab_case_and_make_valid_vm_names() {
        let r = registry();
        for (i, a) in r.iter().enumerate() {
            assert!(
                a.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{}",
                a.name
            );
            assert!(a.name.len() <= 24, "{} is long for VM names", a.name);
            assert!(r[i + 1..].iter().all(|b| b.name != a.name), "{}", a.name);
        }
    }
}
