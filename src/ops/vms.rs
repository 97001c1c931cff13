//! VM requests' own work, outside the lifecycle: checking a spec, making
//! sure image and kernel exist, reserving a record, `vm set`, logs, SSH
//! targets and `vm exec`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Ctx, Progress};
use crate::domain::egress::EgressPolicy;
use crate::domain::views::{SshTarget, TtySize, VmCreateSpec};
use crate::domain::Event;
use crate::domain::Inputs;
use crate::domain::{VmState, VmmKind, DNS_UNCHANGED};
use crate::guest::exec::{ExecRequest, Feed, Outcome, Tty};
use crate::guest::session::AgentSession;
use crate::guest::ssh::SshFiles;
use crate::ops::OpError;
use crate::store::{ImageRecord, KernelRecord, VmRecord};

/// Checks a name (the daemon re-checks whatever the CLI checked).
pub fn validate_name(name: &str) -> Result<(), OpError> {
    Ok(crate::names::validate_vm_name(name)?)
}

/// Limits on what a VM may ask for.
pub fn validate_spec(spec: &VmCreateSpec) -> Result<(), OpError> {
    if let Some(n) = &spec.name {
        validate_name(n)?;
    }
    validate_resources(spec.vcpu, spec.memory_mib, spec.disk_bytes)
}

fn validate_resources(vcpu: u32, memory_mib: u32, disk_bytes: u64) -> Result<(), OpError> {
    if !(1..=32).contains(&vcpu) {
        return Err(OpError::invalid(format!(
            "--vcpu {vcpu} is out of range: use 1 to 32"
        )));
    }
    if memory_mib < 256 {
        return Err(OpError::invalid(format!(
            "--memory {memory_mib} MiB is too small: a VM needs at least 256 MiB (e.g. --memory 1G)"
        )));
    }
    if memory_mib > 1 << 20 {
        return Err(OpError::invalid("--memory is larger than 1 TiB"));
    }
    fits_host(vcpu, memory_mib, crate::config::HostFacts::probe())?;
    if disk_bytes < 256 << 20 {
        return Err(OpError::invalid("--disk-size must be at least 256M"));
    }
    Ok(())
}

/// A VM larger than the host could never start (QEMU would fail to
/// allocate its memory): refused before anything is made, saying what fits.
fn fits_host(vcpu: u32, memory_mib: u32, host: crate::config::HostFacts) -> Result<(), OpError> {
    if host.cpus > 0 && vcpu > host.cpus {
        return Err(OpError::invalid(format!(
            "--vcpu {vcpu} is more than this host's {} CPUs: use 1 to {}",
            host.cpus, host.cpus
        )));
    }
    let host_mib = host.memory_bytes >> 20;
    if host_mib > 0 && u64::from(memory_mib) > host_mib {
        return Err(OpError::invalid(format!(
            "--memory {} is more than this host's {} of memory: use at most {}M",
            crate::size::format_size(u64::from(memory_mib) << 20),
            crate::size::format_size(host.memory_bytes),
            host_mib
        )));
    }
    Ok(())
}

/// Refuses a VM that is not running, saying how to start it.
pub fn require_running(rec: &VmRecord) -> Result<(), OpError> {
    if rec.state != VmState::Running || !rec.vmm_pid.is_some_and(crate::host::process::pid_alive) {
        return Err(OpError::invalid(format!(
            "VM {} is not running (state {}); start it with: banger vm start {}",
            rec.name, rec.state, rec.name
        )));
    }
    Ok(())
}

fn name_taken(name: &str) -> OpError {
    OpError::already_exists(format!(
        "a VM named {name:?} exists; pick another name or delete it"
    ))
}

/// What a new VM will be made of.
pub struct CreatePlan {
    pub kind: VmmKind,
    pub image: ImageRecord,
    pub kernel: KernelRecord,
    /// `--from` (or a warm start): restore this rather than boot.
    pub snapshot: Option<crate::store::SnapshotRecord>,
    /// No warm snapshot for this image and shape yet: make this one once
    /// the VM is up.
    pub make_warm: Option<String>,
}

/// `vm create`, before anything is reserved: validates the spec and makes
/// sure the image and kernel exist (building or pulling them).
pub async fn plan_create(
    ctx: &Arc<Ctx>,
    spec: &VmCreateSpec,
    events: &mpsc::Sender<Event>,
) -> Result<CreatePlan, OpError> {
    validate_spec(spec)?;
    if let Some(from) = &spec.from {
        return plan_restore(ctx, spec, from);
    }
    let kind = crate::vmm::choose(spec.vmm).map_err(OpError::invalid)?;
    // An image here, a recipe, a catalog name or an OCI reference (the
    // last two are pulled on first use): resolved to an image's name.
    let image_name = match &spec.image {
        Some(i) => i.clone(),
        None => super::images::default_image(ctx)?,
    };
    if let Some(n) = &spec.name {
        if ctx.store.find_vm_by_name(n)?.is_some() {
            return Err(name_taken(n));
        }
    }
    let progress = Progress::to(events.clone());
    let image = super::images::ensure_for_vm(ctx, &image_name, &progress).await?;
    let kernel_name = spec
        .kernel
        .clone()
        .unwrap_or_else(|| image.kernel_ref.clone());
    let kernel = match ctx.store.get_kernel(&kernel_name)? {
        Some(k) => k,
        None if spec.kernel.is_none() => {
            super::kernels::ensure(ctx, &kernel_name, &kernel_name, &progress).await?
        }
        None => return Err(super::kernels::get(ctx, &kernel_name).unwrap_err()),
    };
    if spec.disk_bytes < image.work_seed_bytes {
        return Err(OpError::invalid(format!(
            "--disk-size must be at least the image's work seed ({})",
            crate::size::format_size(image.work_seed_bytes)
        )));
    }
    let mut plan = CreatePlan {
        kind,
        image,
        kernel,
        snapshot: None,
        make_warm: None,
    };
    // Warm start: the automatic snapshot of this image and shape, booted
    // to "agent ready", restored instead of a boot; when there is none yet,
    // this VM boots and one is made afterwards.
    if ctx.config.warm_start && !spec.cold && kind == VmmKind::Qemu {
        let version = super::snapshots::vmm_version(ctx)?;
        let shape = (spec.vcpu, spec.memory_mib, spec.disk_bytes);
        let name = super::snapshots::warm_name(&plan.image, &plan.kernel, shape, &version);
        match super::snapshots::usable_warm(ctx, &name)? {
            Some(snap) => plan.snapshot = Some(snap),
            None => plan.make_warm = Some(name),
        }
    }
    Ok(plan)
}

/// `--from SNAP`: the snapshot's image, kernel and VMM, checked to be
/// restorable now (files whole, kernel and QEMU unchanged).
fn plan_restore(ctx: &Ctx, spec: &VmCreateSpec, from: &str) -> Result<CreatePlan, OpError> {
    let snap = super::snapshots::get(ctx, from)?;
    if spec.vmm == crate::domain::VmmChoice::Firecracker {
        return Err(OpError::invalid(format!(
            "snapshot {from} is of a QEMU VM; it restores only under QEMU (drop --vmm firecracker)"
        )));
    }
    if let Some(n) = &spec.name {
        if ctx.store.find_vm_by_name(n)?.is_some() {
            return Err(name_taken(n));
        }
    }
    super::snapshots::check_restorable(ctx, &snap)?;
    Ok(CreatePlan {
        kind: snap.vmm,
        image: super::images::get(ctx, &snap.image)?,
        kernel: super::kernels::get(ctx, &snap.kernel)?,
        snapshot: Some(snap),
        make_warm: None,
    })
}

/// Writes the new VM's record with a free address and MAC (one store
/// transaction; a generated name is retried until free).
pub fn reserve(ctx: &Ctx, spec: &VmCreateSpec, plan: &CreatePlan) -> Result<VmRecord, OpError> {
    let net = &ctx.config.network;
    let links = link_ids(ctx, spec)?;
    let egress = egress_policy(ctx, spec)?;
    let secrets = super::egress::secrets::prepare(&spec.secrets)?;
    loop {
        let name = spec
            .name
            .clone()
            .unwrap_or_else(crate::names::generate_vm_name);
        let mut rec = VmRecord::new(
            &name,
            &plan.image.name,
            &plan.kernel.name,
            spec.vcpu,
            spec.memory_mib,
            spec.disk_bytes,
            spec.nat,
            plan.kind,
        );
        if let Some(snap) = &plan.snapshot {
            super::snapshots::apply_shape(&mut rec, snap);
        }
        rec.links = links.clone();
        rec.ephemeral = spec.delete_on_failure;
        rec.egress = egress.clone();
        rec.secrets = secrets.as_ref().map(|s| s.refs()).unwrap_or_default();
        match ctx.store.reserve_vm(&rec, net.bridge_ip, net.prefix_len)? {
            Some(r) => {
                if let Some(s) = secrets {
                    // Kept before the VM can boot; without them, no VM.
                    if let Err(e) = ctx.vault.keep(&r.id, s) {
                        ctx.store.delete_vm(&r.id)?;
                        return Err(e);
                    }
                }
                return Ok(r);
            }
            None if spec.name.is_none() => continue,
            None => return Err(name_taken(&name)),
        }
    }
}

/// A new VM's egress policy: the spec's (checked again here), or none; with
/// `[egress] default = "deny"` every VM has one. The config's allowances
/// join every policy.
fn egress_policy(ctx: &Ctx, spec: &VmCreateSpec) -> Result<Option<EgressPolicy>, OpError> {
    let cfg = &ctx.config.egress;
    if spec.egress.is_none() && !cfg.deny_by_default && spec.secrets.is_empty() {
        return Ok(None);
    }
    if ctx.config.network.dns_port == 0 {
        return Err(OpError::invalid(NO_DNS_NO_EGRESS));
    }
    let mut p = EgressPolicy::default();
    if let Some(s) = &spec.egress {
        p.allow(&s.hosts, &s.nets).map_err(OpError::invalid)?;
    }
    p.allow(&cfg.allow.hosts, &cfg.allow.nets)
        .map_err(OpError::invalid)?;
    // A secret's host is reached by name.
    let hosts: Vec<String> = spec.secrets.iter().map(|s| s.host.clone()).collect();
    p.allow(&hosts, &[]).map_err(OpError::invalid)?;
    Ok(Some(p))
}

/// The ids of the VMs `--link` names: each must exist and not be the new
/// VM itself.
fn link_ids(ctx: &Ctx, spec: &VmCreateSpec) -> Result<Vec<String>, OpError> {
    let mut ids = Vec::new();
    for n in &spec.links {
        if spec.name.as_deref() == Some(n.as_str()) {
            return Err(OpError::invalid(format!(
                "VM {n} cannot be linked to itself; drop --link {n}"
            )));
        }
        let rec = ctx.store.find_vm_by_name(n)?.ok_or_else(|| {
            OpError::not_found(format!(
                "no VM named {n} to link to; create it first (banger vm create --name {n}) or drop --link {n}"
            ))
        })?;
        if !ids.contains(&rec.id) {
            ids.push(rec.id);
        }
    }
    Ok(ids)
}

/// What `vm set` changes (`None`: left as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmChanges {
    pub vcpu: Option<u32>,
    pub memory_mib: Option<u32>,
    pub nat: Option<bool>,
    /// The work disk's new size (it only grows; the VM stopped).
    pub disk_bytes: Option<u64>,
    pub egress: crate::domain::egress::EgressChange,
}

/// `vm set`: the new record, or why not. On a running VM NAT and the
/// egress policy switch at once (its rules, and the guest's name servers
/// through its agent; a policy's allowances hold from the guest's next
/// question or connection); vCPU and memory are recorded for the next
/// start; the work disk grows only while the VM is stopped.
pub async fn set(
    ctx: &Ctx,
    vm: &dyn super::VmChildren,
    rec: &VmRecord,
    c: VmChanges,
) -> Result<VmRecord, OpError> {
    let running = rec.state.may_have_vmm();
    if running && c.disk_bytes.is_some() {
        return Err(OpError::invalid(format!(
            "VM {} is {}; its work disk grows only while it is stopped: banger vm stop {}, then vm set again",
            rec.name, rec.state, rec.name
        )));
    }
    let mut new = rec.clone();
    new.vcpu = c.vcpu.unwrap_or(rec.vcpu);
    new.memory_mib = c.memory_mib.unwrap_or(rec.memory_mib);
    new.disk_bytes = c.disk_bytes.unwrap_or(rec.disk_bytes);
    validate_resources(new.vcpu, new.memory_mib, new.disk_bytes)?;
    if let Some(bytes) = c.disk_bytes {
        let paths = ctx.layout.vm(&rec.id);
        if paths.work_disk().exists() {
            let free = crate::doctor::free_bytes(&paths.state);
            tokio::task::spawn_blocking(move || {
                super::disks::grow_existing_work(&paths, bytes, free)
            })
            .await
            .map_err(|e| OpError::failed(e.to_string()))??;
        }
    }
    new.nat = c.nat.unwrap_or(rec.nat);
    new.egress = c
        .egress
        .apply(rec.egress.as_ref())
        .map_err(OpError::invalid)?;
    if new.egress.is_none() && !rec.secrets.is_empty() {
        return Err(OpError::invalid(format!(
            "VM {} has secrets: its traffic goes through banger's proxy, which keeps a policy; allow what it needs instead (--allow-host, --allow-net)",
            rec.name
        )));
    }
    if new.egress.is_some() && ctx.config.network.dns_port == 0 {
        return Err(OpError::invalid(NO_DNS_NO_EGRESS));
    }
    let mode = |r: &VmRecord| (super::net::open_nat(r), r.egress.is_some());
    if running && mode(&new) != mode(rec) {
        if let Err(e) = switch_nat(ctx, vm, &mut new).await {
            // Its rules as the record still says (best effort): a
            // half-switched VM must not keep what nobody recorded.
            if let Some(ip) = rec.ip.as_deref().and_then(|i| i.parse().ok()) {
                let bridge = ctx.config.network.bridge.clone();
                let _ = ctx.helper.nat(false, rec.id.clone(), ip, bridge).await;
                let _ = super::lifecycle::apply_rules(ctx, rec, ip).await;
            }
            return Err(e);
        }
    }
    ctx.store.put_vm(&new)?;
    Ok(new)
}

/// Why a policy needs the daemon's DNS.
pub const NO_DNS_NO_EGRESS: &str = "an egress policy needs banger's DNS (the guest's names are resolved and checked there), and network.dns_port is 0 in the config: set it (default 42069) and restart the daemon";

/// Switches a running VM's network to its record: NAT (`rec.nat`), an
/// egress policy or neither — its rules (its links kept), then the
/// guest's name servers. A guest that cannot take them (an old agent)
/// keeps the VM's new rules and says so in `last_error`.
async fn switch_nat(
    ctx: &Ctx,
    vm: &dyn super::VmChildren,
    rec: &mut VmRecord,
) -> Result<(), OpError> {
    let ip = rec
        .ip
        .as_deref()
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| OpError::failed(format!("VM {} has no address", rec.name)))?;
    // Removes its NAT, egress and link rules; what it has now goes back
    // below.
    let bridge = ctx.config.network.bridge.clone();
    ctx.helper.nat(false, rec.id.clone(), ip, bridge).await?;
    super::lifecycle::apply_rules(ctx, rec, ip).await?;
    let servers = super::net::guest_dns(&ctx.config.network, super::net::open_nat(rec));
    let told = match vm.agent().await {
        Some(a) => a
            .set_dns(servers, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string()),
        None => Err("no agent session".to_string()),
    };
    let ours = |e: &Option<String>| e.as_deref().is_some_and(|e| e.contains(DNS_UNCHANGED));
    if told.is_ok() && ours(&rec.last_error) {
        rec.last_error = None;
    }
    if let Err(e) = told {
        rec.last_error = Some(format!(
            "NAT is {}, but {DNS_UNCHANGED} ({e}); restart it: banger vm restart {}",
            match (rec.egress.is_some(), rec.nat) {
                (true, _) => "off (egress policy)",
                (false, true) => "on",
                (false, false) => "off",
            },
            rec.name
        ));
    }
    Ok(())
}

/// The tails of the serial console and the VMM log.
pub fn logs(ctx: &Ctx, rec: &VmRecord) -> (String, String) {
    let p = ctx.layout.vm(&rec.id);
    (
        crate::fsutil::read_tail(&p.serial_log(), 256 << 10),
        crate::fsutil::read_tail(&p.vmm_log(), 64 << 10),
    )
}

/// How the CLI reaches a running VM with the system `ssh`, once sshd
/// listens, with the host key the agent reports pinned.
pub async fn ssh_target(
    ctx: &Ctx,
    agent: &AgentSession,
    rec: &mut VmRecord,
) -> Result<SshTarget, OpError> {
    require_running(rec)?;
    // An image pulled without sshd: say so at once rather than wait for
    // one — unless the guest listens on 22 now (the user installed one).
    if ctx
        .store
        .get_image(&rec.image)?
        .is_some_and(|i| super::images::lacks_sshd(&i))
    {
        let listening = agent
            .ports(Duration::from_secs(5))
            .await
            .is_ok_and(|ps| ps.iter().any(|p| p.port == 22));
        if !listening {
            return Err(OpError::invalid(format!(
                "SSH is unavailable: image {} has no SSH server; use `banger vm exec -t {} -- sh` (or `banger vm run`)",
                rec.image, rec.name
            )));
        }
    }
    let f = SshFiles::of(&ctx.layout);
    // Every time: sshd may still be starting (a VM just booted), and the
    // pin follows the key the agent reports. With a key pinned already, an
    // agent that does not answer is no reason to refuse SSH (it is the way
    // in when the agent is wedged): the pin stands.
    // (Only a silent agent counts: one that answers gets the usual wait
    // for sshd, which may still be starting after a boot.)
    let wedged = rec.host_key.is_some() && agent.ping(Duration::from_secs(3)).await.is_err();
    let wait = if wedged {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(120)
    };
    match super::lifecycle::pin_host_key(ctx, agent, rec, wait).await {
        Ok(key) if rec.host_key.as_deref() != Some(key.as_str()) => {
            rec.host_key = Some(key);
            ctx.store.put_vm(rec)?;
        }
        Ok(_) => {}
        Err(e) if rec.host_key.is_some() => {
            tracing::warn!(vm = %rec.name, "the agent did not confirm the host key ({e}); using the pinned one");
        }
        Err(e) => return Err(e),
    }
    super::lifecycle::refresh_ssh_config(ctx);
    Ok(SshTarget {
        name: rec.name.clone(),
        ip: rec.ip.clone().unwrap_or_default(),
        user: "root".into(),
        identity: f.key.display().to_string(),
        known_hosts: f.known_hosts.display().to_string(),
        host_alias: format!("{}.vm", rec.name),
        ssh_config: f.config.display().to_string(),
    })
}

/// When a VM's workspace was prepared from a host repo whose HEAD has
/// moved since: (the repo, the prepared head, the head now).
pub fn workspace_moved(rec: &VmRecord) -> Option<(String, String, String)> {
    let ws = rec.workspace.as_ref().filter(|w| !w.pinned)?;
    let now = crate::workspace::host_head(std::path::Path::new(&ws.host_path))?;
    (now != ws.head).then(|| (ws.host_path.clone(), ws.head.clone(), now))
}

/// How to run a `vm exec`.
pub struct ExecHow {
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    pub tty: Option<TtySize>,
    /// The caller's input, when stdin is forwarded.
    pub stdin: Option<Inputs>,
    pub auto_prepare: bool,
}

/// Runs a command in a running VM through its agent, streaming its output;
/// in a VM with a workspace it runs there (else in `/root`).
pub async fn exec(
    ctx: &Ctx,
    rec: &VmRecord,
    agent: &AgentSession,
    argv: Vec<String>,
    how: ExecHow,
    events: &mpsc::Sender<Event>,
) -> Result<Outcome, OpError> {
    if argv.is_empty() {
        return Err(OpError::invalid("no command given"));
    }
    require_running(rec)?;
    let (argv, cwd) = match &rec.workspace {
        Some(ws) => (
            crate::workspace::archive::exec_argv(&argv),
            how.cwd.unwrap_or_else(|| ws.guest_path.clone()),
        ),
        None => (argv, how.cwd.unwrap_or_else(|| "/root".into())),
    };
    let mut req = ExecRequest::new(argv, &cwd);
    // Secrets' placeholders first: the caller's own values win.
    req.env = super::egress::secrets::guest_env(&rec.secrets);
    req.env.extend(how.env);
    req.tty = how.tty.map(|t| Tty {
        rows: t.rows,
        cols: t.cols,
    });
    let ip: Option<std::net::IpAddr> = rec.ip.as_deref().and_then(|i| i.parse().ok());
    let feed = match (how.stdin, ip) {
        // Without a terminal, stdin's bytes go over TCP on the bridge;
        // a terminal's keystrokes and resizes stay on the agent stream.
        (Some(rx), Some(ip)) if req.tty.is_none() => Feed::<tokio::io::Empty>::InputsTcp(ip, rx),
        (Some(rx), _) => Feed::Inputs(rx),
        (None, _) => Feed::None,
    };
    crate::guest::exec::run(agent, req, feed, events)
        .await
        .map_err(|e| guest_error(ctx, rec, "running the command", e))
}

/// An agent error of a step in `rec`'s guest, as the CLI shows it: a guest
/// that stopped answering gets what to do and its console's last lines.
pub fn guest_error(
    ctx: &Ctx,
    rec: &VmRecord,
    what: &str,
    e: crate::guest::session::AgentError,
) -> OpError {
    match e {
        crate::guest::session::AgentError::Unresponsive(d) => OpError::failed(format!(
            "VM {name} is unresponsive: {what} was given up after its guest did not answer for {}s (a stalled or locked-up guest; `banger vm logs {name}` has its console); delete it (banger vm delete {name}) or restart it; the serial console ended with:\n{}",
            d.as_secs(),
            super::lifecycle::log_tail(&ctx.layout.vm(&rec.id).serial_log(), 15),
            name = rec.name,
        )),
        e => OpError::failed(format!("{what} in {}: {e}", rec.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_larger_than_the_host_is_refused_saying_what_fits() {
        let host = crate::config::HostFacts {
            cpus: 2,
            memory_bytes: 24 << 30,
        };
        assert!(fits_host(2, 1024, host).is_ok());
        let e = fits_host(3, 1024, host).unwrap_err();
        assert!(e.to_string().contains("use 1 to 2"), "{}", e.to_string());
        let e = fits_host(1, 200 << 10, host).unwrap_err();
        assert!(matches!(e, OpError::Invalid(_)), "{e:?}");
        assert!(
            e.to_string().contains("at most 24576M"),
            "{}",
            e.to_string()
        );
    }
}
