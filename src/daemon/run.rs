//! `vm run` as one operation: create (or restore) → workspace → bootstrap →
//! warm → the command → the patch → delete. Every client (the CLI, and the
//! HTTP, MCP and containerd front ends after it) gets the whole run from
//! here; the client parses arguments, forwards its input and renders.
//!
//! The run lives on its own task: a client that goes away (killed, its
//! terminal closed) no longer waits for it, and the run treats that as an
//! interruption — the command is killed, the patch is still written (by the
//! daemon where the client asked, or kept under the state directory and
//! named in the log), and `rm` still deletes the VM.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::vms;
use crate::actors::Slots;
use crate::domain::views::{Exit, VmCreateSpec, VmView};
use crate::domain::{Event, Input, Inputs};
use crate::ops::warm::{self, WarmInputs};
use crate::ops::Ctx;
use crate::ops::OpError;
use crate::protocol::cli::{RunCommand, RunSpec, WarmSpec};
use crate::workspace::WorkspaceSpec;

/// How a run ended: the command's exit, or (without a command) the VM it
/// left running.
#[derive(Debug)]
pub enum RunEnd {
    Exit(Exit),
    Vm(Box<VmView>),
}

/// How long the daemon waits for a client to say it wrote the patch.
const PATCH_ACK: Duration = Duration::from_secs(120);
/// What the patch streams to the client in.
const PATCH_CHUNK: usize = 1 << 20;
/// `mise install` in a repository that asks for it, where the image has
/// mise (the sandbox image does); elsewhere a note and nothing else.
const BOOTSTRAP: &str = "if command -v mise >/dev/null 2>&1; then mise trust -q . && mise install; else echo 'note: this image has no mise, so the mise config of the repo is not applied (debian-bookworm-sandbox has mise)' >&2; fi";

/// `vm run`: checks the request, then runs it on its own task.
pub async fn run(
    ctx: Arc<Ctx>,
    slots: Arc<Slots>,
    spec: RunSpec,
    events: mpsc::Sender<Event>,
    inputs: Inputs,
) -> Result<RunEnd, OpError> {
    let bootstrap = check(&spec)?;
    let run = Run {
        ctx,
        slots,
        inbox: Inbox::split(inputs),
        events,
        spec,
    };
    tokio::spawn(run.go(bootstrap))
        .await
        .map_err(|e| OpError::failed(format!("the run ended abnormally: {e}")))?
}

/// Refuses what cannot work before anything is made; answers whether the
/// repository's tools are to be installed with mise.
fn check(spec: &RunSpec) -> Result<bool, OpError> {
    let bad = |m: &str| Err(OpError::invalid(m));
    if spec.rm && spec.command.is_none() {
        return bad("leaving the VM running (-d) and deleting it afterwards (--rm) contradict each other; pick one");
    }
    if spec.export_patch.is_some() && (spec.workspace.is_none() || spec.command.is_none()) {
        return bad("--export-patch needs a repository path and a command (it writes the workspace's changes when the command ends)");
    }
    if let Some(p) = &spec.export_patch {
        if !Path::new(p).is_absolute() {
            return bad("--export-patch needs an absolute path");
        }
    }
    if spec.warm.is_some() && (spec.workspace.is_none() || spec.create.from.is_some()) {
        return bad("--warm needs a repository path and no --from");
    }
    let Some(ws) = &spec.workspace else {
        return Ok(false);
    };
    let git = crate::workspace::git::Git::at(Path::new(&ws.path))
        .map_err(|e| OpError::invalid(e.to_string()))?;
    // Whether its tools need the network is mise's to find out (a tool may
    // be in the repo, or installed in the image): no refusal here.
    let mise = git.root.join(".mise.toml").exists() || git.root.join("mise.toml").exists();
    Ok(mise && !spec.no_bootstrap)
}

/// The client's inputs, sorted: before the command runs a signal stops the
/// run after its current step; then they feed the command; the patch's
/// acknowledgement goes to the export.
struct Inbox {
    stop: Arc<AtomicBool>,
    started: Arc<AtomicBool>,
    command: Option<Inputs>,
    acks: mpsc::Receiver<Option<String>>,
}

impl Inbox {
    fn split(mut inputs: Inputs) -> Inbox {
        let (stop, started) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (cmd_tx, cmd_rx) = mpsc::channel(crate::protocol::conn::INPUT_QUEUE);
        let (ack_tx, acks) = mpsc::channel(1);
        let (s, st) = (stop.clone(), Arc::clone(&started));
        tokio::spawn(async move {
            while let Some(i) = inputs.recv().await {
                match i {
                    Input::PatchSaved { error } => {
                        let _ = ack_tx.send(error).await;
                    }
                    Input::Signal(_) if !st.load(Ordering::SeqCst) => {
                        s.store(true, Ordering::SeqCst)
                    }
                    // A command that ended (or takes no input) drops it.
                    other => {
                        let _ = cmd_tx.send(other).await;
                    }
                }
            }
        });
        Inbox {
            stop,
            started,
            command: Some(cmd_rx),
            acks,
        }
    }
}

struct Run {
    ctx: Arc<Ctx>,
    slots: Arc<Slots>,
    inbox: Inbox,
    events: mpsc::Sender<Event>,
    spec: RunSpec,
}

/// Why the command did not run.
fn interrupted() -> RunEnd {
    RunEnd::Exit(Exit {
        code: 130,
        message: Some("interrupted: stopped before the command ran".into()),
    })
}

impl Run {
    /// Interrupted by the client, or the client is gone.
    fn stopped(&self) -> bool {
        self.inbox.stop.load(Ordering::SeqCst) || self.events.is_closed()
    }

    async fn log(&self, line: String) {
        tracing::info!("vm run: {line}");
        let _ = self.events.send(Event::Log(line)).await;
    }

    async fn go(mut self, mut bootstrap: bool) -> Result<RunEnd, OpError> {
        let mut create = self.spec.create.clone();
        create.delete_on_failure = self.spec.rm;
        let name = create
            .name
            .get_or_insert_with(crate::names::generate_vm_name)
            .clone();
        let mut ws = self.spec.workspace.clone();
        let warm = match (&self.spec.warm, ws.as_mut()) {
            (Some(w), Some(ws)) => {
                let key = self.warm_key(&create, ws, w)?;
                let restore = match &key {
                    Some(k) => self.ctx.store.get_snapshot(k)?.is_some(),
                    None => false,
                };
                if restore {
                    // The snapshot has the dependencies: ship the repo
                    // again, keep its ignored files, no bootstrap.
                    create.from = key.clone();
                    ws.keep_ignored = true;
                    bootstrap = false;
                }
                (!restore).then(|| (w.clone(), key))
            }
            _ => None,
        };
        self.spec_event(&create).await?;
        let vm = vms::create(
            self.ctx.clone(),
            self.slots.clone(),
            create,
            self.events.clone(),
        )
        .await?;
        let result = self.steps(&vm, ws, bootstrap, warm).await;
        let kept = match (&self.spec.export_patch, &self.spec.command) {
            (Some(file), Some(_)) => self.export(&vm, &PathBuf::from(file)).await.err(),
            _ => None,
        };
        if self.spec.rm && kept.is_none() {
            // Only the VM this run created (by id).
            match vms::delete(&self.slots, &name, Some(vm.id.clone())).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => self.log(format!("deleting VM {name}: {e}")).await,
            }
        }
        match kept {
            None => result,
            Some(e) => {
                let message = format!(
                    "{e}; VM {name} is kept so its changes are not lost: banger vm workspace export {name} -o FILE; then banger vm delete {name}"
                );
                Err(e.reworded(message))
            }
        }
    }

    /// The snapshot a warm key names (None while the image is not here).
    fn warm_key(
        &self,
        create: &VmCreateSpec,
        ws: &WorkspaceSpec,
        w: &WarmSpec,
    ) -> Result<Option<String>, OpError> {
        let inputs = WarmInputs {
            image: create.image.as_deref(),
            kernel: create.kernel.as_deref(),
            shape: (create.vcpu, create.memory_mib, create.disk_bytes),
            nat: create.nat,
            command: &w.command,
            key_files: &w.key_files,
        };
        Ok(warm::key(&self.ctx, Path::new(&ws.path), &inputs)?)
    }

    /// The shape of the VM about to be made: a snapshot's when restoring.
    async fn spec_event(&self, c: &VmCreateSpec) -> Result<(), OpError> {
        let (mut vcpu, mut memory_mib, mut disk_bytes) = (c.vcpu, c.memory_mib, c.disk_bytes);
        if let Some(from) = &c.from {
            let s = crate::ops::snapshots::get(&self.ctx, from)?;
            (vcpu, memory_mib, disk_bytes) = (s.vcpu, s.memory_mib, s.disk_bytes);
        }
        let _ = self
            .events
            .send(Event::Spec {
                vcpu,
                memory_mib,
                disk_bytes,
                nat: c.nat,
                from: c.from.clone(),
            })
            .await;
        Ok(())
    }

    /// Workspace, bootstrap, warm save, then the command (or, without one,
    /// the VM's view).
    async fn steps(
        &mut self,
        vm: &VmView,
        ws: Option<WorkspaceSpec>,
        bootstrap: bool,
        warm: Option<(WarmSpec, Option<String>)>,
    ) -> Result<RunEnd, OpError> {
        let name = vm.name.as_str();
        if let Some(ws) = ws {
            if self.stopped() {
                return Ok(interrupted());
            }
            vms::prepare(&self.slots, name, ws.clone(), self.events.clone()).await?;
            if bootstrap && !self.stopped() {
                let code = self.setup_command(name, BOOTSTRAP).await?;
                if code != 0 {
                    let hint = if self.spec.create.nat {
                        "its output above says why"
                    } else {
                        "its tools may need the network: add --nat"
                    };
                    return Err(OpError::failed(format!(
                        "mise install failed (exit {code}); {hint}, or skip it with --no-bootstrap"
                    )));
                }
            }
            if let Some((w, key)) = warm {
                if self.stopped() {
                    return Ok(interrupted());
                }
                self.save_warm(name, &ws, &w, key).await?;
            }
        }
        if self.stopped() {
            return Ok(interrupted());
        }
        let Some(cmd) = self.spec.command.clone() else {
            return vms::show(&self.ctx, &self.slots, name)
                .await
                .map(|v| RunEnd::Vm(Box::new(v)));
        };
        let end = self.command(name, cmd).await;
        self.egress_summary(name).await;
        end.map(RunEnd::Exit)
    }

    /// One line after the command when its VM's egress policy refused
    /// anything, to grow the allowlist from.
    async fn egress_summary(&self, name: &str) {
        let Ok(v) = vms::show(&self.ctx, &self.slots, name).await else {
            return;
        };
        if v.egress.is_none() {
            return;
        }
        let refused = self.ctx.egress.refusals(&v.id);
        if refused.is_empty() {
            return;
        }
        let total: u64 = refused.iter().map(|r| r.count).sum();
        let mut shown: Vec<String> = refused
            .iter()
            .take(5)
            .map(|r| format!("{} {} x{}", r.kind, r.target(), r.count))
            .collect();
        if refused.len() > 5 {
            shown.push(format!("{} more", refused.len() - 5));
        }
        self.log(format!(
            "egress refused {total}: {}; allow a host with --allow-host NAME{}",
            shown.join(", "),
            if self.spec.rm {
                String::new()
            } else {
                format!(
                    " (banger vm set {name} --allow-host NAME; all of it: banger vm egress {name})"
                )
            }
        ))
        .await;
    }

    /// A set-up command (bootstrap, warm): output streamed, no input.
    async fn setup_command(&self, name: &str, script: &str) -> Result<i32, OpError> {
        let argv = vec!["sh".into(), "-c".into(), script.into()];
        let how = vms::ExecHow {
            cwd: None,
            env: vec![],
            tty: None,
            stdin: None,
            auto_prepare: false,
        };
        let Exit { code, message } =
            vms::exec(&self.ctx, &self.slots, name, argv, how, self.events.clone()).await?;
        if let Some(m) = message {
            self.log(m).await;
        }
        Ok(code)
    }

    /// The first `--warm` run of a key: the command in the fresh workspace,
    /// then the VM saved under the key. A failing command saves nothing.
    async fn save_warm(
        &self,
        name: &str,
        ws: &WorkspaceSpec,
        w: &WarmSpec,
        key: Option<String>,
    ) -> Result<(), OpError> {
        let code = self.setup_command(name, &w.command).await?;
        if code != 0 {
            return Err(OpError::failed(format!(
                "the --warm command failed (exit {code}); nothing was saved"
            )));
        }
        // The image exists now: the key can be known if it could not before.
        let key = match key {
            Some(k) => k,
            None => self
                .warm_key(&self.spec.create, ws, w)?
                .ok_or_else(|| OpError::failed("the VM's image is not listed"))?,
        };
        vms::snapshot(
            &self.slots,
            name,
            Some(key.clone()),
            false,
            true,
            warm::scope(Path::new(&ws.path)),
            self.events.clone(),
        )
        .await?;
        self.log(format!(
            "saved the warm workspace as snapshot {key}; runs with the same --warm and keys restore it"
        ))
        .await;
        Ok(())
    }

    /// The command, fed by the client's input; killed when the client
    /// goes away.
    async fn command(&mut self, name: &str, c: RunCommand) -> Result<Exit, OpError> {
        self.inbox.started.store(true, Ordering::SeqCst);
        let feed = self.inbox.command.take().filter(|_| c.stdin);
        let how = vms::ExecHow {
            cwd: c.cwd,
            env: c.env,
            tty: c.tty,
            stdin: feed,
            auto_prepare: false,
        };
        let _ = self.events.send(Event::CommandStarted).await;
        let events = self.events.clone();
        let exec = vms::exec(&self.ctx, &self.slots, name, c.argv, how, events);
        tokio::select! {
            r = exec => r,
            _ = self.events.closed() => {
                // Dropping the exec closes its agent stream: the guest
                // kills the command's process group.
                tracing::info!(vm = name, "vm run: the client went away; the command was killed");
                Ok(Exit {
                    code: 129,
                    message: Some("the client went away; the command was killed".into()),
                })
            }
        }
    }

    /// Writes the workspace's changes: first to a file of the daemon's
    /// (durable before anything else happens), then through the client to
    /// where it asked; when the client is gone or could not write it, the
    /// daemon writes it there itself, or keeps its file and names it. An
    /// error only when the changes could not be saved at all (the VM is
    /// then kept).
    async fn export(&mut self, vm: &VmView, file: &Path) -> Result<(), OpError> {
        let dir = self.ctx.layout.state_dir.join("patches");
        let kept = dir.join(format!(
            "{}-{}.patch",
            vm.name,
            vm.id.chars().take(8).collect::<String>()
        ));
        let bytes = self.fetch_patch(&vm.name, &dir, &kept).await?;
        let why = match self.hand_to_client(&kept).await {
            Ok(()) => {
                let _ = std::fs::remove_file(&kept);
                return Ok(());
            }
            Err(why) => why,
        };
        match copy_durably(&kept, file) {
            Ok(()) => {
                let _ = std::fs::remove_file(&kept);
                self.log(format!(
                    "{why}: the daemon wrote the workspace's changes to {} ({bytes} bytes)",
                    file.display()
                ))
                .await;
            }
            Err(e) => {
                self.log(format!(
                    "{why}, and the daemon could not write {}: {e}; the workspace's changes are kept at {} ({bytes} bytes)",
                    file.display(),
                    kept.display()
                ))
                .await
            }
        }
        Ok(())
    }

    /// The patch from the guest into `kept` (temporary name, fsync,
    /// rename); its size.
    async fn fetch_patch(&self, name: &str, dir: &Path, kept: &Path) -> Result<u64, OpError> {
        let io = |what: &'static str, p: &Path, e: std::io::Error| {
            OpError::Io(crate::fsutil::IoError::new(what, p, e))
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io("creating", dir, e))?;
        let tmp = kept.with_extension("partial");
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io("creating", &tmp, e))?;
        let (tx, mut rx) = mpsc::channel(64);
        let fetch = vms::export(&self.slots, name, None, tx);
        let write = async {
            let (mut n, mut err) = (0u64, None);
            while let Some(ev) = rx.recv().await {
                if let (Event::Stdout(d), None) = (ev, &err) {
                    n += d.len() as u64;
                    if let Err(e) = f.write_all(&d).await {
                        err = Some(e);
                    }
                }
            }
            match err {
                Some(e) => Err(e),
                None => f.sync_all().await.map(|_| n),
            }
        };
        let (fetched, written) = tokio::join!(fetch, write);
        let done = fetched.and_then(|_| written.map_err(|e| io("writing", &tmp, e)));
        let done = done.and_then(|n| {
            std::fs::rename(&tmp, kept)
                .and_then(|_| crate::fsutil::sync_dir(dir))
                .map_err(|e| io("saving", kept, e))
                .map(|_| n)
        });
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        done.map_err(|e| {
            let message = format!("exporting the workspace's changes: {e}");
            e.reworded(message)
        })
    }

    /// Streams the patch to the client and waits for it to say it wrote
    /// it; Err says why not.
    async fn hand_to_client(&mut self, kept: &Path) -> Result<(), String> {
        if self.events.is_closed() {
            return Err("the client went away".into());
        }
        // In pieces: a patch is as large as what the guest changed, and
        // never held whole in the daemon's memory.
        let mut f = tokio::fs::File::open(kept)
            .await
            .map_err(|e| format!("reading {}: {e}", kept.display()))?;
        loop {
            let mut chunk = Vec::with_capacity(PATCH_CHUNK);
            let n = (&mut f)
                .take(PATCH_CHUNK as u64)
                .read_to_end(&mut chunk)
                .await
                .map_err(|e| format!("reading {}: {e}", kept.display()))?;
            if n == 0 {
                break;
            }
            if self.events.send(Event::Patch(chunk)).await.is_err() {
                return Err("the client went away".into());
            }
        }
        let _ = self.events.send(Event::PatchDone).await;
        tokio::select! {
            ack = tokio::time::timeout(PATCH_ACK, self.inbox.acks.recv()) => match ack {
                Ok(Some(None)) => Ok(()),
                Ok(Some(Some(e))) => Err(format!("the client could not write the patch ({e})")),
                Ok(None) => Err("the client went away".into()),
                Err(_) => Err("the client did not say it wrote the patch".into()),
            },
            _ = self.events.closed() => Err("the client went away".into()),
        }
    }
}

/// Copies `from` to `to` (temporary name next to it, fsync, rename).
fn copy_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    let (parent, tmp) = crate::fsutil::partial_path(to);
    let r = (|| {
        let mut src = std::fs::File::open(from)?;
        let mut dst = std::fs::File::create(&tmp)?;
        std::io::copy(&mut src, &mut dst)?;
        dst.sync_all()?;
        std::fs::rename(&tmp, to)?;
        crate::fsutil::sync_dir(&parent)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    /// The guest scripts are shell text: `sh -n` parses them, and without
    /// mise the bootstrap only notes it (exit 0).
    #[test]
    fn the_guest_scripts_parse_and_a_guest_without_mise_passes_the_bootstrap() {
        for script in [super::BOOTSTRAP, crate::workspace::archive::GUEST_MISE_WRAP] {
            let ok = std::process::Command::new("sh")
                .args(["-n", "-c", script])
                .status()
                .unwrap()
                .success();
            assert!(ok, "{script}");
        }
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", super::BOOTSTRAP])
            .env("PATH", "/nonexistent")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("has no mise"));
    }
}
