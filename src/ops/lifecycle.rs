//! The start, stop, kill, delete and reap sequences of one VM. The caller
//! (a VmActor) runs one at a time per VM; each takes the record as it is,
//! persists every state change as it happens, and returns the record as it
//! now is. On failure everything acquired is released.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{disks, Ctx, Stages, VmChildren};
use crate::domain::{Signal, VmState};
use crate::guest::session::{channel_of, AgentSession};
use crate::guest::ssh::SshFiles;
use crate::host::process::pid_alive;
use crate::protocol::helper::{PrivReply, PrivRequest};
use crate::protocol::{ErrorCode, RpcError};
use crate::store::model::now_unix;
use crate::store::VmRecord;
use crate::vmm::{self, BootSpec, Vmm};

/// Stores `rec` and tells the VM's actor, so reads see it at once.
fn persist(ctx: &Ctx, vm: &dyn VmChildren, rec: &VmRecord) -> Result<(), RpcError> {
    ctx.store.put_vm(rec)?;
    vm.record_changed(rec);
    Ok(())
}

fn vmm_alive(rec: &VmRecord) -> bool {
    rec.vmm_pid.is_some_and(pid_alive)
}

/// The pid of this VM's VMM if it still runs: alive, and its command line
/// names this VM's control socket (a recycled pid does not count).
pub fn live_vmm(ctx: &Ctx, rec: &VmRecord) -> Option<u32> {
    let paths = ctx.layout.vm(&rec.id);
    rec.vmm_pid.filter(|p| {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        pid_alive(*p)
            && (cmd.contains(&paths.qmp_socket().display().to_string())
                || cmd.contains(&paths.api_socket().display().to_string()))
    })
}

/// What a (re)started VmActor finds for its record.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing runs and nothing should.
    Idle,
    /// The VMM lives: watch it again (the record says running now).
    Live(u32),
    /// The record says a VMM should run but none does: reap it.
    Dead,
    /// A boot was interrupted with its VMM up: finish it ([`resume_boot`]).
    Booting(u32),
    /// A create or start was interrupted before its VMM ran: start again
    /// (releasing what it took), so the VM ends whole and running.
    Restart,
}

/// Reconciles a record with what runs. A stop that a daemon crash
/// interrupted leaves a live VMM: the VM is then running (`vm stop` stops
/// it). An interrupted create or start is carried through.
pub fn recover(ctx: &Ctx, rec: &mut VmRecord) -> Recovery {
    if rec.state == VmState::Created {
        return Recovery::Restart;
    }
    if !rec.state.may_have_vmm() {
        return Recovery::Idle;
    }
    match live_vmm(ctx, rec) {
        // An interrupted restore is done again from the start (fresh disks,
        // the memory loaded again): a guest that may not have taken its own
        // identity yet is never accepted as it is.
        Some(_) if rec.state == VmState::Starting && rec.restore_pending => Recovery::Restart,
        Some(pid) if rec.state == VmState::Starting => Recovery::Booting(pid),
        None if rec.state == VmState::Starting => Recovery::Restart,
        Some(pid) => {
            if rec.state != VmState::Running {
                rec.state = VmState::Running;
                if let Err(e) = ctx.store.put_vm(rec) {
                    tracing::warn!(vm = %rec.name, "recording state running: {e}");
                }
            }
            Recovery::Live(pid)
        }
        None => Recovery::Dead,
    }
}

/// Rewrites banger's ssh_config for every VM with an address.
pub fn refresh_ssh_config(ctx: &Ctx) {
    let vms = || {
        ctx.store
            .list_vms()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.ip.map(|ip| (v.name, ip)))
            .collect()
    };
    if let Err(e) = SshFiles::of(&ctx.layout).write_config(vms) {
        tracing::warn!("writing ssh_config: {e}");
    }
}

/// Gives back everything a running VM holds on the host (tap, NAT rules,
/// agent session). Idempotent; failures are logged, not fatal.
pub async fn release(ctx: &Ctx, vm: &dyn VmChildren, rec: &mut VmRecord) {
    vm.stop_agent().await;
    if let (true, Some(ip)) = (rec.nat, rec.ip.as_deref().and_then(|i| i.parse().ok())) {
        let req = PrivRequest::DisableNat {
            vm_id: rec.id.clone(),
            ip,
            bridge: ctx.config.network.bridge.clone(),
        };
        if let Err(e) = ctx.helper.call(req).await {
            tracing::warn!(vm = %rec.name, "removing NAT rules: {}", e.message);
        }
    }
    if let Some(tap) = rec.tap.take() {
        ctx.taps.release(tap).await;
    }
    rec.vmm_pid = None;
}

/// The last `n` non-empty lines of a log, indented, for errors. Reads at
/// most the file's last 64 KiB.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = crate::fsutil::read_tail(path, 64 << 10);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return "  (nothing)".into();
    }
    // The console is the guest's: no escape sequence or control byte of
    // it reaches the owner's terminal, and no line is endless.
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| {
            let clean: String = l
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .take(240)
                .collect();
            format!("  {clean}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kills the VM's VMM (through bangerd-root) and waits for it to be gone:
/// the recorded pid, and any other VMM of this VM the helper knows (one
/// launched by an operation interrupted before it recorded the pid).
/// Returns why not when a VMM still runs (the helper is down, say): the
/// caller then keeps the VM's pid, tap and rules rather than handing them
/// out again.
async fn kill_vmm(ctx: &Ctx, rec: &VmRecord) -> Result<(), RpcError> {
    let mut pids: Vec<u32> = rec.vmm_pid.into_iter().filter(|p| pid_alive(*p)).collect();
    if let Ok(PrivReply::Vmms(all)) = ctx.helper.call(PrivRequest::ListVmms).await {
        for v in all {
            if v.vm_id == rec.id && !pids.contains(&v.pid) {
                pids.push(v.pid);
            }
        }
    }
    for pid in pids {
        let sent = ctx
            .helper
            .call(PrivRequest::SignalVmm {
                pid,
                signal: Signal::Kill,
            })
            .await;
        let gone = match &sent {
            Ok(_) => crate::host::process::wait_exit(pid, Duration::from_secs(10)).await,
            Err(_) => !pid_alive(pid),
        };
        if !gone {
            return Err(RpcError::failed(format!(
                "the {} process {pid} of VM {} is still running ({}); it keeps its tap and address until it is gone: retry when bangerd-root is back (banger daemon stop; banger vm delete {})",
                rec.vmm.as_str(),
                rec.name,
                sent.err().map(|e| e.message).unwrap_or_else(|| "it did not exit".into()),
                rec.name
            )));
        }
    }
    Ok(())
}

/// Boots a VM (created or stopped). On failure everything acquired is
/// released and the VM is left in state `error` with the reason.
pub async fn start(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    mut rec: VmRecord,
    stages: &mut Stages,
) -> (VmRecord, Result<(), RpcError>) {
    if vmm_alive(&rec) {
        if rec.state == VmState::Running {
            return (rec, Ok(()));
        }
        // A VMM left by an interrupted start or stop: never two VMMs on
        // one disk.
        tracing::warn!(vm = %rec.name, state = %rec.state, "a VMM is still alive; killing it before starting");
        if let Err(e) = kill_vmm(ctx, &rec).await {
            return (rec, Err(e));
        }
        release(ctx, vm, &mut rec).await;
    }
    let mut booted = boot(ctx, vm, &mut rec, stages).await;
    if let Err(e) = &booted {
        if e.code == crate::protocol::ErrorCode::Busy {
            // bangerd-root died under the boot and is back: what the first
            // attempt launched or took goes, then one more try.
            tracing::warn!(vm = %rec.name, "{}; booting once more", e.message);
            if kill_vmm(ctx, &rec).await.is_ok() {
                release(ctx, vm, &mut rec).await;
                booted = boot(ctx, vm, &mut rec, stages).await;
            }
        }
    }
    match booted {
        Ok(()) => (rec, Ok(())),
        Err(e) => {
            tracing::warn!(vm = %rec.name, "start failed: {}", e.message);
            fail_and_release(ctx, vm, &mut rec, &e).await;
            let hint = format!("{} (see `banger vm logs {}`)", e.message, rec.name);
            (rec, Err(RpcError { message: hint, ..e }))
        }
    }
}

/// Leaves a VM whose boot failed in `error`, its VMM killed and what it
/// held released; a VMM that outlives the kill (the helper is down) keeps
/// its pid and resources on the record until its exit is seen.
async fn fail_and_release(ctx: &Ctx, vm: &dyn VmChildren, rec: &mut VmRecord, e: &RpcError) {
    rec.state = VmState::Error;
    rec.last_error = Some(e.message.clone());
    match kill_vmm(ctx, rec).await {
        Ok(()) => release(ctx, vm, rec).await,
        Err(k) => rec.last_error = Some(format!("{}; {}", e.message, k.message)),
    }
    let _ = persist(ctx, vm, rec);
}

/// Launches the VMM for `b` and waits until the driver says it is booting;
/// returns its pid and the VM's fresh agent session.
async fn launch(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: &mut VmRecord,
    b: &BootSpec,
    driver: &dyn Vmm,
) -> Result<(u32, AgentSession), RpcError> {
    let paths = &b.paths;
    for s in [
        paths.qmp_socket(),
        paths.api_socket(),
        paths.vsock_socket(),
        paths.agent_socket(),
    ] {
        let _ = std::fs::remove_file(s);
    }
    let _ = std::fs::write(paths.serial_log(), b"");
    let _ = std::fs::write(paths.vmm_log(), b"");
    vm.stop_agent().await;
    let pid = match ctx
        .helper
        .call(PrivRequest::LaunchVmm(driver.launch_spec(b)))
        .await?
    {
        PrivReply::Launched { pid } => pid,
        other => {
            return Err(RpcError::failed(format!(
                "unexpected helper reply {other:?}"
            )))
        }
    };
    rec.vmm_pid = Some(pid);
    rec.started_at_unix = Some(now_unix());
    persist(ctx, vm, rec)?;
    vm.watch_vmm(pid);
    // The exit is checked first: a VMM that is gone says why in its log.
    tokio::select! {
        biased;
        _ = crate::host::process::wait_exit_forever(pid) => {
            return Err(RpcError::failed(format!(
                "{} exited at once:\n{}",
                rec.vmm.as_str(),
                log_tail(&paths.vmm_log(), 5)
            )));
        }
        r = driver.boot(b) => r.map_err(|e| RpcError::failed(format!("{} did not boot: {e}", rec.vmm.as_str())))?,
    }
    let agent = vm.start_agent(channel_of(rec.vmm, paths)).await?;
    Ok((pid, agent))
}

/// Resolves once `log` has not grown for `stall` (checked each second).
async fn console_stalls(log: &Path, stall: Duration) {
    let size = || std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let tick = stall.min(Duration::from_secs(1));
    let (mut last, mut since) = (size(), tokio::time::Instant::now());
    loop {
        tokio::time::sleep(tick).await;
        let now = size();
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= stall {
            return;
        }
    }
}

/// The kernel and image files a boot needs, checked before anything runs
/// so a missing file is named rather than discovered by the VMM.
fn boot_files(
    ctx: &Ctx,
    rec: &VmRecord,
) -> Result<(PathBuf, Option<PathBuf>, PathBuf, PathBuf), RpcError> {
    let image = super::images::get(ctx, &rec.image)?;
    let kernel = super::kernels::get(ctx, &rec.kernel)?;
    let kdir = PathBuf::from(&kernel.dir);
    let vmlinux = kdir.join("vmlinux");
    let initrd = kernel.has_initrd.then(|| kdir.join("initrd.img"));
    let idir = PathBuf::from(&image.dir);
    let (rootfs, seed) = (
        idir.join(crate::image::ROOTFS),
        idir.join(crate::image::WORK_SEED),
    );
    let missing = |what: &str, p: &Path, fix: String| {
        RpcError::not_found(format!("{what} {} is missing; {fix}", p.display()))
    };
    for p in std::iter::once(&vmlinux).chain(initrd.as_ref()) {
        if !p.is_file() {
            return Err(missing(
                &format!("the file of kernel {}", kernel.name),
                p,
                format!(
                    "get the kernel again: banger kernel delete {0} && banger kernel pull debian-cloud --name {0}",
                    kernel.name
                ),
            ));
        }
    }
    for p in [&rootfs, &seed] {
        if !p.is_file() {
            return Err(missing(
                &format!("the file of image {}", image.name),
                p,
                format!("rebuild it: banger image build {} --rebuild", image.name),
            ));
        }
    }
    Ok((vmlinux, initrd, rootfs, seed))
}

async fn boot(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: &mut VmRecord,
    stages: &mut Stages,
) -> Result<(), RpcError> {
    let paths = ctx.layout.vm(&rec.id);
    let net = ctx.config.network.clone();
    rec.state = VmState::Starting;
    rec.last_error = None;
    persist(ctx, vm, rec)?;

    stages.begin("network", "tap and bridge").await;
    let ip: Ipv4Addr = rec
        .ip
        .as_deref()
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| RpcError::failed("the VM has no address"))?;
    let mac = rec
        .mac
        .clone()
        .ok_or_else(|| RpcError::failed("the VM has no MAC address"))?;
    // The guest may send only as itself on the bridge. A leased tap that
    // vanished while it waited warm (deleted by hand or by another
    // program) is replaced: every warm one may be gone, the one made after
    // them is fresh.
    let mut tries = 0;
    let tap = loop {
        let tap = ctx.taps.lease().await?;
        rec.tap = Some(tap.clone());
        persist(ctx, vm, rec)?;
        let guard = PrivRequest::GuardTap {
            name: tap.clone(),
            ip,
            mac: mac.clone(),
        };
        match ctx.helper.call(guard).await {
            Ok(_) => break tap,
            Err(e) if e.code == ErrorCode::NotFound && tries <= super::net::WARM_TAPS => {
                tracing::warn!(vm = %rec.name, %tap, "the leased tap is gone; taking another");
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    };
    if rec.nat {
        ctx.helper
            .call(PrivRequest::EnableNat {
                vm_id: rec.id.clone(),
                ip,
                bridge: net.bridge.clone(),
            })
            .await?;
    }
    stages
        .end(format!(
            "{tap} on {} ({ip}{})",
            net.bridge,
            if rec.nat { ", NAT" } else { "" }
        ))
        .await;

    stages.begin("disks", "root and work disks").await;
    let (vmlinux, initrd, rootfs, seed) = boot_files(ctx, rec)?;
    // Made --from a snapshot and not yet restored: its memory is loaded
    // instead of a boot, over fresh disks at the snapshot's instant.
    let restore = match (rec.restore_pending, &rec.snapshot) {
        (true, Some(id)) => {
            let snap = super::snapshots::by_id(ctx, id)?;
            super::snapshots::check_restorable(ctx, &snap)?;
            Some(snap)
        }
        _ => None,
    };
    let how = if let Some(snap) = &restore {
        let (s, p) = (snap.clone(), paths.clone());
        tokio::task::spawn_blocking(move || super::snapshots::clone_disks(&s, &p))
            .await
            .map_err(|e| RpcError::failed(e.to_string()))?
            .map_err(RpcError::failed)?;
        format!("root: overlay on snapshot {}, work: copy", snap.name)
    } else if disks::exist(&paths, rec.vmm) {
        "reused".to_string()
    } else {
        let (p, kind, size) = (paths.clone(), rec.vmm, rec.disk_bytes);
        tokio::task::spawn_blocking(move || -> Result<String, disks::DiskError> {
            let how = disks::prepare_root(&rootfs, &p, kind)?;
            disks::prepare_work(&seed, &p, size)?;
            Ok(format!(
                "root: {how}, work: {}",
                crate::size::format_size(size)
            ))
        })
        .await??
    };
    stages.end(how).await;

    stages.begin("vmm", rec.vmm.as_str()).await;
    std::fs::create_dir_all(&paths.run)
        .map_err(|e| crate::fsutil::IoError::new("creating", &paths.run, e))?;
    let pubkey = SshFiles::of(&ctx.layout)
        .ensure_key()
        .map_err(RpcError::failed)?;
    let kvm = crate::host::cpu::hardware_kvm();
    let params = banger_agent::cmdline::GuestParams {
        name: Some(rec.name.clone()),
        ip: Some((ip, net.prefix_len)),
        gw: Some(net.bridge_ip),
        dns: super::net::guest_dns(&net, rec.nat),
        ssh_key: Some(pubkey),
    };
    let b = BootSpec {
        vm_id: rec.id.clone(),
        paths: paths.clone(),
        vcpu: rec.vcpu,
        memory_mib: rec.memory_mib,
        kernel: vmlinux,
        initrd,
        // A restore passes the command line the saved guest booted with.
        cmdline: match &restore {
            Some(snap) => snap.cmdline.clone(),
            None => vmm::qemu::kernel_cmdline(kvm, &params),
        },
        disks: vec![
            disks::root_disk(&paths, rec.vmm),
            (paths.work_disk(), vmm::DiskFormat::Raw),
        ],
        tap: Some(tap),
        mac: rec.mac.clone(),
        kvm,
        binary: match rec.vmm {
            crate::domain::VmmKind::Qemu => ctx.config.qemu_binary.clone(),
            crate::domain::VmmKind::Firecracker => ctx.config.firecracker_binary.clone(),
        },
        incoming: restore.is_some(),
    };
    let driver = ctx.drivers.driver(rec.vmm);
    let (mut pid, mut agent) = launch(ctx, vm, rec, &b, &*driver).await?;
    stages
        .end(format!(
            "{} pid {pid}, {} vcpu, {} MiB{}",
            rec.vmm.as_str(),
            rec.vcpu,
            rec.memory_mib,
            if kvm { "" } else { " (TCG)" }
        ))
        .await;

    if let Some(snap) = &restore {
        return restore_guest(ctx, vm, rec, snap, pid, &agent, stages).await;
    }

    stages.begin("agent", "waiting for banger-agent").await;
    let boot_deadline = ctx.timeouts.boot;
    let deadline = tokio::time::Instant::now() + boot_deadline;
    // A TCG guest on an overloaded host has been seen to hang for good in
    // early boot (the console stops, the agent never starts); one fresh VMM
    // gets it going. A guest that is slow but printing is left alone.
    let mut relaunch = true;
    let serial_log = paths.serial_log();
    let (health, r) = loop {
        let health = loop {
            tokio::select! {
                h = async {
                    agent.wait_up(deadline - tokio::time::Instant::now()).await?;
                    agent.health(Duration::from_secs(30)).await
                } => break h.map_err(|e| RpcError::failed(format!(
                    "the guest agent did not answer within {boot_deadline:?}: {e}; the serial console ended with:\n{}",
                    log_tail(&paths.serial_log(), 15)
                )))?,
                _ = crate::host::process::wait_exit_forever(pid) => {
                    return Err(RpcError::failed(format!(
                        "the {} process exited during boot; the serial console ended with:\n{}",
                        rec.vmm.as_str(),
                        log_tail(&paths.serial_log(), 15)
                    )));
                }
                _ = console_stalls(&serial_log, ctx.timeouts.boot_stall), if relaunch => {
                    relaunch = false;
                    tracing::warn!(vm = %rec.name, stall = ?ctx.timeouts.boot_stall, "the guest looks hung in boot (no agent, a silent console); relaunching its VMM once; the console ended with:\n{}", log_tail(&paths.serial_log(), 5));
                    kill_vmm(ctx, rec).await?;
                    (pid, agent) = launch(ctx, vm, rec, &b, &*driver).await?;
                }
            }
        };
        check_protocol(rec, &health)?;
        stages
            .end(format!(
                "guest up {:.1}s, boot {}, init {}",
                health.uptime_s,
                sanitize_token(&health.boot_id, 64),
                sanitize_token(&health.init, 32)
            ))
            .await;
        stages
            .begin("boot", "waiting for the guest's boot to reach banger-ready")
            .await;
        match wait_ready(ctx, rec, &agent, pid, deadline).await {
            Ok(r) => break (health, r),
            // Nothing has run in it yet: a guest stuck mid-boot (seen under an
            // overloaded TCG host) gets one fresh VMM, like one hung before
            // its agent started.
            Err(ReadyError::Stuck(e)) if relaunch => {
                relaunch = false;
                tracing::warn!(vm = %rec.name, "the guest stopped answering mid-boot; relaunching its VMM once: {}", e.message);
                stages
                    .end("the guest stopped answering mid-boot; a fresh VMM")
                    .await;
                kill_vmm(ctx, rec).await?;
                (pid, agent) = launch(ctx, vm, rec, &b, &*driver).await?;
                stages
                    .begin("agent", "waiting for banger-agent (relaunched)")
                    .await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    accept_guest(ctx, vm, rec, health)?;
    stages.end(ready_detail(&r)).await;
    stages.ready().await;
    Ok(())
}

/// What the `boot` stage says about a readiness answer.
fn ready_detail(r: &banger_agent::api::Readiness) -> String {
    match r.ready_at_s {
        Some(at) if at.is_finite() && at >= 0.0 => {
            format!("ready at guest uptime {at:.1}s (waited {} ms)", r.waited_ms)
        }
        _ => format!("ready (no boot to wait for; waited {} ms)", r.waited_ms),
    }
}

/// Waits until the guest is ready for commands (the readiness contract:
/// its boot can no longer change a command's world), until `deadline`.
/// A VMM that exits meanwhile, or a guest that does not get there in time,
/// is an error with the serial console's last lines.
/// Why the readiness point was not reached.
pub enum ReadyError {
    /// The agent stopped answering altogether (a stuck guest).
    Stuck(RpcError),
    Failed(RpcError),
}

impl From<ReadyError> for RpcError {
    fn from(e: ReadyError) -> RpcError {
        match e {
            ReadyError::Stuck(e) | ReadyError::Failed(e) => e,
        }
    }
}

pub async fn wait_ready(
    ctx: &Ctx,
    rec: &VmRecord,
    agent: &AgentSession,
    pid: u32,
    deadline: tokio::time::Instant,
) -> Result<banger_agent::api::Readiness, ReadyError> {
    let paths = ctx.layout.vm(&rec.id);
    let not_ready = |why: String| {
        RpcError::failed(format!(
            "the guest of {} did not finish booting: {why}; the serial console ended with:\n{}",
            rec.name,
            log_tail(&paths.serial_log(), 15)
        ))
    };
    loop {
        // One answer per at most 30 s, so a session lost meanwhile is
        // noticed and asked again.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(ReadyError::Failed(not_ready(format!(
                "banger-ready.service had not run after {:?}",
                ctx.timeouts.boot
            ))));
        }
        let ask = left.min(Duration::from_secs(30));
        let r = tokio::select! {
            r = agent.ready(false, ask) => r,
            _ = crate::host::process::wait_exit_forever(pid) => {
                return Err(ReadyError::Failed(not_ready(format!("the {} process exited", rec.vmm.as_str()))));
            }
        };
        match r {
            Ok(r) if r.ready => return Ok(r),
            Ok(_) => {}
            Err(crate::guest::session::AgentError::Refused(e)) => {
                return Err(ReadyError::Failed(not_ready(format!(
                    "its agent cannot say ({}); rebuild the image (banger image build {} --rebuild)",
                    sanitize_token(&e, 80),
                    rec.image
                ))))
            }
            // Silent through its whole wait and the grace after it: the
            // guest is stuck, not slow (a slow one answers "not yet").
            Err(e @ crate::guest::session::AgentError::Timeout(_)) => {
                return Err(ReadyError::Stuck(not_ready(format!(
                    "its agent stopped answering ({e})"
                ))))
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(ReadyError::Failed(not_ready(e.to_string())))
            }
            Err(e) => {
                tracing::debug!(vm = %rec.name, "asking the agent for readiness: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The `restore` stage: loads the snapshot's memory into the waiting VMM,
/// then the guest takes its own identity (RNG reseeded, clock, name,
/// addresses, machine-id, SSH host key) before anything may run in it.
async fn restore_guest(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: &mut VmRecord,
    snap: &crate::store::SnapshotRecord,
    pid: u32,
    agent: &AgentSession,
    stages: &mut Stages,
) -> Result<(), RpcError> {
    let paths = ctx.layout.vm(&rec.id);
    stages
        .begin("restore", format!("snapshot {}", snap.name))
        .await;
    let exited = || async {
        crate::host::process::wait_exit_forever(pid).await;
        RpcError::failed(format!(
            "{} exited while restoring snapshot {}:\n{}",
            rec.vmm.as_str(),
            snap.name,
            log_tail(&paths.vmm_log(), 5)
        ))
    };
    let load_ms = tokio::select! {
        biased;
        e = exited() => return Err(e),
        r = super::snapshots::load(&paths, snap) => r?,
    };
    let identity = super::snapshots::identity(ctx, rec, snap)?;
    let answered = tokio::select! {
        e = exited() => return Err(e),
        r = async {
            let t = Instant::now();
            agent.wait_up(Duration::from_secs(30)).await?;
            let session_ms = t.elapsed().as_millis();
            let ack = agent.reidentify(identity, Duration::from_secs(60)).await?;
            let identity_ms = t.elapsed().as_millis() - session_ms;
            let health = agent.health(Duration::from_secs(30)).await?;
            Ok::<_, crate::guest::session::AgentError>((ack, health, session_ms, identity_ms))
        } => r,
    };
    let (ack, health, session_ms, identity_ms) = answered.map_err(|e| {
        RpcError::failed(format!(
            "the restored guest's agent did not answer: {e}; is snapshot {} from an image whose agent knows restores? (take it again)",
            snap.name
        ))
    })?;
    if !ack.ok {
        // Clones must never share keys or random state: not usable.
        let detail: String = ack
            .detail
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(300)
            .collect();
        return Err(RpcError::failed(format!(
            "the restored guest could not take its own identity: {detail}"
        )));
    }
    check_protocol(rec, &health)?;
    // A snapshot of a settled guest is ready at once; one taken while the
    // guest still booted (a user's `vm snapshot`) finishes its boot first.
    let ready = wait_ready(
        ctx,
        rec,
        agent,
        pid,
        tokio::time::Instant::now() + ctx.timeouts.boot,
    )
    .await?;
    rec.restore_pending = false;
    accept_guest(ctx, vm, rec, health)?;
    super::snapshots::mark_used(ctx, snap);
    stages
        .end(format!(
            "memory {load_ms} ms, agent {session_ms} ms, identity {identity_ms} ms, ready {} ms; now {} at {}",
            ready.waited_ms,
            rec.name,
            rec.ip.as_deref().unwrap_or("?")
        ))
        .await;
    stages.ready().await;
    Ok(())
}

/// The agent answered: checks what it says (it is the guest's word) and
/// records the VM as running. The boot id is kept only as a UUID-like
/// token; anything else is the guest's problem, not a panic or a stored
/// string of its choosing.
fn accept_guest(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: &mut VmRecord,
    mut health: banger_agent::api::Healthz,
) -> Result<banger_agent::api::Healthz, RpcError> {
    check_protocol(rec, &health)?;
    health.boot_id = sanitize_token(&health.boot_id, 64);
    health.init = sanitize_token(&health.init, 32);
    rec.boot_id = Some(health.boot_id.clone());
    rec.state = VmState::Running;
    persist(ctx, vm, rec)?;
    refresh_ssh_config(ctx);
    Ok(health)
}

/// The image's agent must speak this banger's protocol.
fn check_protocol(rec: &VmRecord, health: &banger_agent::api::Healthz) -> Result<(), RpcError> {
    if health.protocol != banger_agent::proto::VERSION {
        return Err(RpcError::failed(format!(
            "the image's agent speaks protocol {}, banger {}; rebuild the image (banger image build {} --rebuild)",
            health.protocol,
            banger_agent::proto::VERSION,
            rec.image
        )));
    }
    Ok(())
}

/// At most `max` characters of `s` that are ASCII letters, digits or `-`
/// (`?` when none are).
pub fn sanitize_token(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(max)
        .collect();
    if t.is_empty() {
        "?".into()
    } else {
        t
    }
}

/// Starts again a VM whose create or start a daemon crash interrupted
/// before its VMM was recorded: whatever that attempt launched (a VMM the
/// helper knows by this VM's id) or took goes first, so a disk never has
/// two VMMs.
pub async fn restart_interrupted(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    mut rec: VmRecord,
    stages: &mut Stages,
) -> (VmRecord, Result<(), RpcError>) {
    if let Err(e) = kill_vmm(ctx, &rec).await {
        rec.state = VmState::Error;
        rec.last_error = Some(e.message.clone());
        let _ = persist(ctx, vm, &rec);
        return (rec, Err(e));
    }
    release(ctx, vm, &mut rec).await;
    start(ctx, vm, rec, stages).await
}

/// Finishes a boot that a daemon crash interrupted while its VMM ran:
/// waits (bounded) for the agent and records the VM as running, or kills
/// it and leaves it in `error`.
pub async fn resume_boot(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    mut rec: VmRecord,
    pid: u32,
) -> (VmRecord, Result<(), RpcError>) {
    let paths = ctx.layout.vm(&rec.id);
    let r = async {
        let agent = vm.start_agent(channel_of(rec.vmm, &paths)).await?;
        let health = tokio::select! {
            h = async {
                agent.wait_up(ctx.timeouts.boot).await?;
                agent.health(Duration::from_secs(30)).await
            } => h.map_err(|e| RpcError::failed(format!("the guest agent did not answer after a daemon restart: {e}")))?,
            _ = crate::host::process::wait_exit_forever(pid) => {
                return Err(RpcError::failed("the VMM exited during the resumed boot"));
            }
        };
        check_protocol(&rec, &health)?;
        wait_ready(ctx, &rec, &agent, pid, tokio::time::Instant::now() + ctx.timeouts.boot).await?;
        accept_guest(ctx, vm, &mut rec, health).map(drop)
    }
    .await;
    match r {
        Ok(()) => {
            tracing::info!(vm = %rec.name, "finished a boot the daemon had been stopped in");
            (rec, Ok(()))
        }
        Err(e) => {
            fail_and_release(ctx, vm, &mut rec, &e).await;
            (rec, Err(e))
        }
    }
}

/// Learns the guest's SSH host key from its agent (waiting, bounded, for
/// sshd's first start), pins it for `<name>.vm` and the address, and
/// records it. Only `vm ssh` needs this: commands go through the agent.
pub async fn pin_host_key(
    ctx: &Ctx,
    agent: &AgentSession,
    rec: &VmRecord,
    timeout: Duration,
) -> Result<String, RpcError> {
    let deadline = Instant::now() + timeout;
    let ip = rec
        .ip
        .clone()
        .ok_or_else(|| RpcError::failed("the VM has no address"))?;
    loop {
        let keys = agent
            .host_keys(Duration::from_secs(5))
            .await
            .unwrap_or_default();
        let ready = match keys.iter().find(|k| k.algorithm == "ssh-ed25519") {
            Some(k) => {
                let ports = agent
                    .ports(Duration::from_secs(5))
                    .await
                    .unwrap_or_default();
                ports
                    .iter()
                    .any(|p| p.port == 22)
                    .then(|| crate::guest::ssh::host_key_line(&k.algorithm, &k.key))
                    .transpose()?
            }
            None => None,
        };
        if let Some(host_key) = ready {
            let files = SshFiles::of(&ctx.layout);
            if rec.host_key.as_deref() != Some(host_key.as_str()) || !files.is_pinned(&rec.name) {
                files
                    .pin(&rec.name, &ip, &host_key)
                    .map_err(|e| RpcError::failed(format!("pinning the host key: {e}")))?;
            }
            return Ok(host_key);
        }
        if Instant::now() > deadline {
            return Err(RpcError::failed(format!(
                "sshd did not come up in VM {} within {timeout:?} (the agent answers: use banger vm exec {} -- <cmd>)",
                rec.name, rec.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stops a VM: sync and power off in the guest (agent, else SSH), then the
/// VMM's power button, then kill, each after a bounded wait.
pub async fn stop(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    mut rec: VmRecord,
    stages: &mut Stages,
) -> (VmRecord, Result<(), RpcError>) {
    if !vmm_alive(&rec) {
        release(ctx, vm, &mut rec).await;
        if rec.state != VmState::Created && rec.state != VmState::Error {
            rec.state = VmState::Stopped;
        }
        let r = persist(ctx, vm, &rec);
        return (rec, r);
    }
    let pid = rec.vmm_pid.unwrap_or(0);
    rec.state = VmState::Stopping;
    let _ = persist(ctx, vm, &rec);
    let paths = ctx.layout.vm(&rec.id);
    stages
        .begin("sync", "sync and power off in the guest")
        .await;
    let asked = match vm.agent().await {
        Some(a) => a
            .poweroff(Duration::from_secs(15))
            .await
            .map_err(|e| e.to_string()),
        None => Err("no agent session".to_string()),
    };
    let how = match asked {
        Ok(_) => "agent".to_string(),
        Err(agent_err) => {
            let ssh_res = tokio::time::timeout(Duration::from_secs(20), async {
                let (ip, key) = (rec.ip.clone()?, rec.host_key.clone()?);
                let s = crate::guest::ssh::connect(
                    &ip,
                    &SshFiles::of(&ctx.layout).key,
                    &key,
                    Duration::from_secs(5),
                )
                .await
                .ok()?;
                let _ = s
                    .output("sync; systemctl --no-block poweroff || poweroff -f &")
                    .await;
                Some(())
            })
            .await
            .ok()
            .flatten();
            match ssh_res {
                Some(()) => "ssh".into(),
                None => format!("neither the agent ({agent_err}) nor ssh answered"),
            }
        }
    };
    stages.end(how).await;
    stages
        .begin("poweroff", "waiting for the guest to power off")
        .await;
    let gone = crate::host::process::wait_exit(pid, ctx.timeouts.poweroff).await;
    let mut how = "powered off".to_string();
    if !gone {
        let _ = ctx.drivers.driver(rec.vmm).powerdown(&paths).await;
        if !crate::host::process::wait_exit(pid, ctx.timeouts.powerdown).await {
            if let Err(e) = kill_vmm(ctx, &rec).await {
                rec.state = VmState::Error;
                rec.last_error = Some(e.message.clone());
                let _ = persist(ctx, vm, &rec);
                return (rec, Err(e));
            }
            how = "killed after the bounded wait".into();
        } else {
            how = "powered off by the VMM power button".into();
        }
    }
    stages.end(how).await;
    release(ctx, vm, &mut rec).await;
    rec.state = VmState::Stopped;
    rec.started_at_unix = None;
    let r = persist(ctx, vm, &rec);
    (rec, r)
}

/// After the VMM exited on its own (power-off inside, crash, kill): release
/// and mark stopped.
pub async fn reap(ctx: &Ctx, vm: &dyn VmChildren, mut rec: VmRecord) -> VmRecord {
    if vmm_alive(&rec) {
        return rec;
    }
    release(ctx, vm, &mut rec).await;
    if rec.state.may_have_vmm() {
        rec.state = VmState::Stopped;
    }
    rec.started_at_unix = None;
    let _ = persist(ctx, vm, &rec);
    rec
}

/// `vm kill --signal`: delivers the signal; when it is one that ends the
/// VMM, waits for the exit and releases, leaving the VM stopped.
pub async fn kill(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: VmRecord,
    signal: Signal,
) -> (VmRecord, Result<(), RpcError>) {
    let Some(pid) = rec.vmm_pid.filter(|p| pid_alive(*p)) else {
        if signal.terminates() && rec.state.may_have_vmm() {
            // An aborted start or stop: whatever it had launched or taken
            // goes now.
            if let Err(e) = kill_vmm(ctx, &rec).await {
                return (rec, Err(e));
            }
            let r = reap(ctx, vm, rec).await;
            return (r, Ok(()));
        }
        let e = RpcError::bad_request(format!("VM {} is not running", rec.name));
        return (rec, Err(e));
    };
    if let Err(e) = ctx
        .helper
        .call(PrivRequest::SignalVmm { pid, signal })
        .await
    {
        return (rec, Err(e));
    }
    if signal.terminates() && crate::host::process::wait_exit(pid, Duration::from_secs(15)).await {
        let r = reap(ctx, vm, rec).await;
        return (r, Ok(()));
    }
    (rec, Ok(()))
}

/// Deletes a VM: kills it if it runs (its disks go too), releases, removes
/// files and the record.
pub async fn delete(ctx: &Ctx, vm: &dyn VmChildren, mut rec: VmRecord) -> Result<(), RpcError> {
    if let Err(e) = kill_vmm(ctx, &rec).await {
        // Nothing is removed while its VMM runs: the record keeps the pid,
        // the tap and the address so none of them is handed out again.
        rec.state = VmState::Error;
        rec.last_error = Some(e.message.clone());
        persist(ctx, vm, &rec)?;
        return Err(e);
    }
    release(ctx, vm, &mut rec).await;
    let paths = ctx.layout.vm(&rec.id);
    for d in [&paths.state, &paths.run] {
        crate::fsutil::remove_all(d).map_err(|e| crate::fsutil::IoError::new("removing", d, e))?;
    }
    if let Some(ip) = &rec.ip {
        let _ = SshFiles::of(&ctx.layout).unpin(&rec.name, ip);
    }
    ctx.store.delete_vm(&rec.id)?;
    refresh_ssh_config(ctx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::session::AgentChannel;
    use crate::ops::testing::{hostile_agent, Fakes, Hostile, LaunchMode};
    use crate::ops::Privileged;
    use std::sync::atomic::Ordering;

    fn stages() -> (
        Stages,
        tokio::sync::mpsc::Receiver<crate::protocol::cli::Event>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        (Stages::new(tx), rx)
    }

    /// Nothing the failed boot acquired is held any more.
    fn assert_nothing_held(f: &Fakes, rec: &VmRecord) {
        assert_eq!(rec.state, VmState::Error, "{rec:?}");
        assert!(rec.vmm_pid.is_none() && rec.tap.is_none(), "{rec:?}");
        let stored = f.ctx.store.get_vm(&rec.id).unwrap().unwrap();
        assert_eq!(&stored, rec, "the store holds what was returned");
        assert_eq!(
            *f.taps.leased.lock().unwrap(),
            *f.taps.released.lock().unwrap(),
            "every leased tap was given back"
        );
        for pid in f.helper.launched() {
            assert!(!pid_alive(pid), "VMM {pid} still runs");
        }
    }

    #[tokio::test]
    async fn a_vmm_that_exits_at_once_leaves_the_vm_in_error_holding_nothing() {
        let f = Fakes::new();
        f.artifacts();
        *f.helper.mode.lock().unwrap() = LaunchMode::ExitAtOnce;
        let rec = f.vm("early", true);
        let (mut st, _rx) = stages();
        let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
        let e = r.unwrap_err();
        // At once, or (when the fake boot won the race) during the boot.
        assert!(e.message.contains("exited"), "{}", e.message);
        assert!(rec.last_error.as_deref().unwrap().contains("exited"));
        assert_nothing_held(&f, &rec);
        assert_eq!(f.helper.count("enable_nat"), 1);
        assert_eq!(f.helper.count("disable_nat"), 1, "NAT rules removed");
        assert!(
            f.children.agent.lock().unwrap().is_none(),
            "the agent session of the failed boot is closed"
        );
    }

    #[tokio::test]
    async fn a_helper_that_refuses_nat_gets_no_vmm_launched_and_the_tap_back() {
        let f = Fakes::new();
        f.artifacts();
        f.helper.refuse_nat.store(true, Ordering::SeqCst);
        let rec = f.vm("nonat", true);
        let (mut st, _rx) = stages();
        let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
        assert!(r.unwrap_err().message.contains("refusing NAT"));
        assert_eq!(f.helper.count("launch_vmm"), 0);
        assert_eq!(f.taps.leased.lock().unwrap().len(), 1);
        assert_nothing_held(&f, &rec);
        let paths = f.paths(&rec);
        assert!(!paths.root_qcow2().exists(), "no disks were made");
    }

    #[tokio::test]
    async fn a_guest_that_hangs_in_boot_is_relaunched_once_then_killed_at_the_deadline() {
        let f = Fakes::new();
        f.artifacts();
        let rec = f.vm("silent", false);
        let (mut st, _rx) = stages();
        let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
        let e = r.unwrap_err();
        assert!(e.message.contains("did not answer"), "{}", e.message);
        assert_eq!(
            f.helper.count("launch_vmm"),
            2,
            "one relaunch after the stall"
        );
        assert_eq!(f.helper.count("signal_vmm"), 2, "both VMMs were killed");
        assert_eq!(f.helper.launched().len(), 0, "the fake helper reaped it");
        assert!(
            f.children.agent.lock().unwrap().is_none(),
            "the session is closed"
        );
        assert_nothing_held(&f, &rec);
        // The disks stay for the next start.
        assert!(disks::exist(&f.paths(&rec), rec.vmm));
    }

    /// A VM that runs (a live fake VMM, a tap, NAT) without a guest that
    /// answers anything.
    fn running(f: &Fakes, name: &str) -> VmRecord {
        let mut rec = f.vm(name, true);
        rec.state = VmState::Running;
        rec.vmm_pid = Some(f.helper.spawn_vmm());
        rec.tap = Some("bgtfake99".into());
        f.taps.leased.lock().unwrap().push("bgtfake99".into());
        f.ctx.store.put_vm(&rec).unwrap();
        rec
    }

    #[tokio::test]
    async fn stopping_a_silent_guest_presses_the_power_button_then_kills() {
        let f = Fakes::new();
        f.artifacts();
        let rec = running(&f, "deaf");
        let pid = rec.vmm_pid.unwrap();
        let (mut st, mut rx) = stages();
        let (rec, r) = stop(&f.ctx, &*f.children, rec, &mut st).await;
        r.unwrap();
        assert_eq!(rec.state, VmState::Stopped);
        assert_eq!(f.drivers.powerdowns.load(Ordering::SeqCst), 1);
        assert!(!pid_alive(pid));
        assert!(rec.vmm_pid.is_none() && rec.tap.is_none());
        assert_eq!(*f.taps.released.lock().unwrap(), ["bgtfake99"]);
        assert_eq!(f.helper.count("disable_nat"), 1);
        let mut said = Vec::new();
        while let Ok(crate::protocol::cli::Event::Stage { detail, .. }) = rx.try_recv() {
            said.push(detail);
        }
        assert!(said.iter().any(|d| d.contains("killed")), "{said:?}");
    }

    #[tokio::test]
    async fn reaping_a_dead_vmm_releases_its_tap_and_nat() {
        let f = Fakes::new();
        let rec = running(&f, "gone");
        let pid = rec.vmm_pid.unwrap();
        f.helper
            .call(PrivRequest::SignalVmm {
                pid,
                signal: Signal::Kill,
            })
            .await
            .unwrap();
        let rec = reap(&f.ctx, &*f.children, rec).await;
        assert_eq!(rec.state, VmState::Stopped);
        assert!(rec.vmm_pid.is_none() && rec.tap.is_none());
        assert_eq!(*f.taps.released.lock().unwrap(), ["bgtfake99"]);
        assert_eq!(f.helper.count("disable_nat"), 1);
        assert_eq!(f.ctx.store.get_vm(&rec.id).unwrap().unwrap(), rec);
    }

    #[tokio::test]
    async fn reaping_leaves_a_live_vmm_alone() {
        let f = Fakes::new();
        let rec = running(&f, "alive");
        let r = reap(&f.ctx, &*f.children, rec.clone()).await;
        assert_eq!(r, rec);
        assert!(f.taps.released.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_non_terminating_signal_does_not_wait_or_reap() {
        let f = Fakes::new();
        let rec = running(&f, "usr");
        let t = Instant::now();
        let (r, res) = kill(&f.ctx, &*f.children, rec.clone(), Signal::Usr1).await;
        res.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "it waited for an exit"
        );
        assert_eq!(r.state, VmState::Running, "not reaped");
        let (r, res) = kill(&f.ctx, &*f.children, rec, Signal::Kill).await;
        res.unwrap();
        assert_eq!(r.state, VmState::Stopped);
        assert!(f.taps.released.lock().unwrap().len() == 1);
    }

    #[tokio::test]
    async fn a_delete_while_the_helper_is_down_keeps_the_vm_its_pid_and_tap() {
        let f = Fakes::new();
        let rec = running(&f, "keep");
        let pid = rec.vmm_pid.unwrap();
        f.helper.down.store(true, Ordering::SeqCst);
        let e = delete(&f.ctx, &*f.children, rec.clone()).await.unwrap_err();
        assert!(e.message.contains("still running"), "{}", e.message);
        assert!(pid_alive(pid), "the VMM was never reachable");
        let stored = f.ctx.store.get_vm(&rec.id).unwrap().expect("record kept");
        assert_eq!(stored.state, VmState::Error);
        assert_eq!(stored.vmm_pid, Some(pid), "the pid is kept");
        assert_eq!(stored.tap.as_deref(), Some("bgtfake99"), "the tap is kept");
        assert!(f.taps.released.lock().unwrap().is_empty());
        // Once the helper is back, the delete goes through.
        f.helper.down.store(false, Ordering::SeqCst);
        delete(&f.ctx, &*f.children, stored).await.unwrap();
        assert!(!pid_alive(pid));
        assert!(f.ctx.store.get_vm(&rec.id).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_failed_start_with_the_helper_gone_keeps_the_live_vmm_recorded() {
        let f = Fakes::new();
        f.artifacts();
        let rec = f.vm("orphaned", false);
        let (mut st, _rx) = stages();
        // The helper goes away mid-boot: the guest never answers, and the
        // kill that follows cannot be delivered.
        let helper = f.helper.clone();
        let flip = tokio::spawn(async move {
            while helper.count("launch_vmm") == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            helper.down.store(true, Ordering::SeqCst);
        });
        let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
        flip.await.unwrap();
        assert!(r.is_err());
        let pid = rec.vmm_pid.expect("the pid is kept");
        assert!(pid_alive(pid));
        assert_eq!(rec.state, VmState::Error);
        assert!(rec.tap.is_some(), "the tap is kept while the VMM runs");
        let stored = f.ctx.store.get_vm(&rec.id).unwrap().unwrap();
        assert_eq!(stored.vmm_pid, Some(pid));
        f.helper.down.store(false, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn kill_after_an_aborted_start_takes_what_it_launched() {
        let f = Fakes::new();
        let mut rec = f.vm("aborted", true);
        // What an aborted start leaves: state starting, a tap recorded, a
        // VMM launched whose pid never reached the record.
        rec.state = VmState::Starting;
        rec.tap = Some("bgtfake98".into());
        f.taps.leased.lock().unwrap().push("bgtfake98".into());
        f.ctx.store.put_vm(&rec).unwrap();
        let stray = f.helper.spawn_vmm_for(&rec.id);
        let (rec, r) = kill(&f.ctx, &*f.children, rec, Signal::Kill).await;
        r.unwrap();
        assert!(!pid_alive(stray), "the unrecorded VMM was found and killed");
        assert_eq!(rec.state, VmState::Stopped);
        assert_eq!(*f.taps.released.lock().unwrap(), ["bgtfake98"]);
        assert_eq!(f.helper.count("disable_nat"), 1);
    }

    /// Serves `how` on the VM's agent socket after every VMM launch (a
    /// launch removes the socket file, as QEMU needs).
    fn hostile_after_each_launch(f: &Fakes, rec: &VmRecord, how: Hostile) {
        let (helper, sock) = (f.helper.clone(), f.paths(rec).agent_socket());
        tokio::spawn(async move {
            let (mut seen, mut agent) = (0, None);
            loop {
                let n = helper.count("launch_vmm");
                if n != seen {
                    seen = n;
                    if let Some(a) = agent.take() {
                        tokio::task::JoinHandle::abort(&a);
                    }
                    agent = Some(hostile_agent(sock.clone(), how.clone()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    fn health(boot_id: &str, init: &str) -> banger_agent::api::Healthz {
        banger_agent::api::Healthz {
            boot_id: boot_id.into(),
            uptime_s: 1.0,
            hostname: "h".into(),
            agent_version: "x".into(),
            setup_errors: vec![],
            protocol: banger_agent::proto::VERSION,
            init: init.into(),
        }
    }

    #[tokio::test]
    async fn a_guest_reporting_hostile_strings_boots_without_them_being_kept() {
        let f = Fakes::new();
        f.artifacts();
        let rec = f.vm("liar", false);
        // Multi-byte characters where a byte slice would split one, a
        // newline, and far too much.
        let boot = format!("{}\n* ssh-ed25519 AAAA{}", "é".repeat(40), "ß".repeat(5000));
        hostile_after_each_launch(&f, &rec, Hostile::Health(health(&boot, &"ü".repeat(9000))));
        let (mut st, mut rx) = stages();
        let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
        r.unwrap();
        let id = rec.boot_id.clone().unwrap();
        assert!(id.len() <= 64, "{id}");
        assert!(
            id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{id}"
        );
        let mut detail = String::new();
        while let Ok(e) = rx.try_recv() {
            detail.push_str(&format!("{e:?}"));
        }
        assert!(!detail.contains('ü') && !detail.contains('\n'), "{detail}");
        let _ = kill(&f.ctx, &*f.children, rec, Signal::Kill).await;
    }

    #[tokio::test]
    async fn a_host_key_with_an_injected_line_plants_nothing() {
        let f = Fakes::new();
        let rec = running(&f, "keys");
        let good = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let sock = f.paths(&rec).agent_socket();
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let evil = banger_agent::api::HostKey {
            algorithm: "ssh-ed25519".into(),
            key: format!("{good}\n* ssh-ed25519 {good}"),
        };
        let a = hostile_agent(sock.clone(), Hostile::HostKeys(vec![evil]));
        let agent = AgentSession::start(AgentChannel::Serial(sock.clone()));
        let e = pin_host_key(&f.ctx, &agent, &rec, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(e.message.contains("unusable host key"), "{}", e.message);
        let files = SshFiles::of(&f.ctx.layout);
        let known = std::fs::read_to_string(&files.known_hosts).unwrap_or_default();
        assert!(!known.contains('*'), "{known}");
        a.abort();
        // The same key, sent plainly, is pinned for exactly this VM.
        let honest = banger_agent::api::HostKey {
            algorithm: "ssh-ed25519".into(),
            key: good.into(),
        };
        let sock2 = sock.with_file_name("honest.sock");
        let _a = hostile_agent(sock2.clone(), Hostile::HostKeys(vec![honest]));
        let agent = AgentSession::start(AgentChannel::Serial(sock2));
        pin_host_key(&f.ctx, &agent, &rec, Duration::from_secs(10))
            .await
            .unwrap();
        let known = std::fs::read_to_string(&files.known_hosts).unwrap();
        assert_eq!(known.lines().count(), 1, "{known}");
        assert!(known.starts_with("keys.vm,"), "{known}");
    }

    #[tokio::test]
    async fn endless_and_silent_answers_are_bounded() {
        let d = tempfile::tempdir().unwrap();
        for (how, name) in [(Hostile::Endless, "endless"), (Hostile::Silent, "silent")] {
            let sock = d.path().join(name);
            let _a = hostile_agent(sock.clone(), how);
            let agent = AgentSession::start(AgentChannel::Serial(sock));
            agent.wait_up(Duration::from_secs(5)).await.unwrap();
            let t = Instant::now();
            let e = agent.health(Duration::from_secs(2)).await.unwrap_err();
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{name}: {:?}",
                t.elapsed()
            );
            let e = e.to_string();
            match name {
                "endless" => assert!(e.contains("limit"), "{name}: {e}"),
                _ => assert!(e.contains("2s") || e.contains("time"), "{name}: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn delete_kills_removes_files_the_record_and_the_pin() {
        let f = Fakes::new();
        let rec = running(&f, "doomed");
        let pid = rec.vmm_pid.unwrap();
        let paths = f.paths(&rec);
        std::fs::create_dir_all(&paths.state).unwrap();
        std::fs::create_dir_all(&paths.run).unwrap();
        std::fs::write(paths.work_disk(), b"disk").unwrap();
        let files = SshFiles::of(&f.ctx.layout);
        let ip = rec.ip.clone().unwrap();
        files.pin("doomed", &ip, "ssh-ed25519 AAAAkey").unwrap();
        files
            .pin("other", "172.16.0.200", "ssh-ed25519 BBBBkey")
            .unwrap();
        delete(&f.ctx, &*f.children, rec.clone()).await.unwrap();
        assert!(!pid_alive(pid));
        assert!(!paths.state.exists() && !paths.run.exists());
        assert!(f.ctx.store.get_vm(&rec.id).unwrap().is_none());
        let known = std::fs::read_to_string(&files.known_hosts).unwrap();
        assert!(
            !known.contains("AAAAkey") && known.contains("BBBBkey"),
            "{known}"
        );
        assert_eq!(*f.taps.released.lock().unwrap(), ["bgtfake99"]);
    }

    #[tokio::test]
    async fn a_missing_kernel_file_is_named() {
        let f = Fakes::new();
        f.artifacts();
        let k = f.ctx.store.get_kernel("krn").unwrap().unwrap();
        let vmlinux = std::path::Path::new(&k.dir).join("vmlinux");
        std::fs::remove_file(&vmlinux).unwrap();
        let rec = f.vm("nokernel", false);
        let (mut st, _rx) = stages();
        let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
        let e = r.unwrap_err();
        assert!(
            e.message.contains(&vmlinux.display().to_string()),
            "{}",
            e.message
        );
        assert_eq!(f.helper.count("launch_vmm"), 0);
        assert_nothing_held(&f, &rec);
    }
}
