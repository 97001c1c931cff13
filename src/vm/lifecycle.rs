//! The start, stop, kill, delete and reap sequences, run as jobs in a
//! VmActor (one at a time per VM). Each returns the record as it now is and
//! persists every state change as it happens.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::actors::helper_link::call_helper;
use crate::actors::tap_pool::TapPoolMsg;
use crate::actors::vm_actor::{JobCtx, VmMsg};
use crate::actors::Services;
use crate::protocol::cli::{Event, VmState, VmmKind};
use crate::protocol::helper::{PrivReply, PrivRequest};
use crate::protocol::{new_op_id, ErrorCode, RpcError};
use crate::store::model::now_unix;
use crate::store::VmRecord;
use crate::vm::{disks, ssh::SshFiles};
use crate::vmm::{self, BootSpec};

/// Stage reporting with timings.
pub struct Stages {
    events: mpsc::Sender<Event>,
    started: Instant,
    current: Option<(String, Instant)>,
}

impl Stages {
    pub fn new(events: mpsc::Sender<Event>) -> Stages {
        Stages {
            events,
            started: Instant::now(),
            current: None,
        }
    }

    async fn send(&self, ev: Event) {
        let _ = self.events.send(ev).await;
    }

    /// Starts a stage.
    pub async fn begin(&mut self, stage: &str, detail: impl Into<String>) {
        self.current = Some((stage.to_string(), Instant::now()));
        self.send(Event::Stage {
            stage: stage.into(),
            detail: detail.into(),
            elapsed_ms: 0,
            done: false,
        })
        .await;
    }

    /// Finishes the current stage with its duration.
    pub async fn end(&mut self, detail: impl Into<String>) {
        if let Some((stage, t)) = self.current.take() {
            let ms = t.elapsed().as_millis() as u64;
            tracing::info!(stage, ms, "stage done");
            self.send(Event::Stage {
                stage,
                detail: detail.into(),
                elapsed_ms: ms,
                done: true,
            })
            .await;
        }
    }

    pub async fn log(&self, line: impl Into<String>) {
        self.send(Event::Log(line.into())).await;
    }

    /// The final `ready` stage, carrying the total time.
    pub async fn ready(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.send(Event::Stage {
            stage: "ready".into(),
            detail: String::new(),
            elapsed_ms: ms,
            done: true,
        })
        .await;
    }
}

fn failed(m: impl Into<String>) -> RpcError {
    RpcError::failed(m)
}

fn persist(svc: &Services, rec: &VmRecord) -> Result<(), RpcError> {
    svc.store.put_vm(rec).map_err(|e| failed(e.to_string()))
}

/// How long a guest may take to boot to its agent: generous under TCG.
fn boot_deadline() -> Duration {
    if crate::host::cpu::hardware_kvm() {
        Duration::from_secs(90)
    } else {
        Duration::from_secs(300)
    }
}

fn is_alive(rec: &VmRecord) -> bool {
    rec.vmm_pid.is_some_and(crate::host::process::pid_alive)
}

/// Name servers a NAT'd guest can use: the host's, unless they are loopback.
fn host_dns() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .take(3)
        .collect()
}

/// Rewrites banger's ssh_config for every VM with an address.
pub fn refresh_ssh_config(svc: &Services) {
    let vms: Vec<(String, String)> = svc
        .store
        .list_vms()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.ip.map(|ip| (v.name, ip)))
        .collect();
    if let Err(e) = SshFiles::of(&svc.layout).write_config(&vms) {
        tracing::warn!("writing ssh_config: {e}");
    }
}

async fn tap_lease(svc: &Services) -> Result<String, RpcError> {
    let pool = svc
        .taps
        .get()
        .ok_or_else(|| RpcError::new(ErrorCode::Busy, "the tap pool is restarting; retry"))?;
    ractor::call_t!(pool, TapPoolMsg::Lease, 60_000)
        .map_err(|e| failed(format!("tap pool: {e}")))?
}

/// Gives back everything a running VM holds on the host (tap, NAT rules,
/// vsock bridge). Idempotent; failures are logged, not fatal.
pub async fn release(ctx: &JobCtx, rec: &mut VmRecord) {
    let svc = &ctx.services;
    if rec.vmm == VmmKind::Qemu {
        let _ = ractor::call_t!(ctx.me, VmMsg::StopVsock, 15_000);
        // One no actor owns (its VMM died while the daemon was down): ended
        // here, not leaked.
        let paths = svc.layout.vm(&rec.id);
        if let Some(pid) = rec
            .vsock_pid
            .filter(|p| crate::actors::vsock_bridge::is_ours(*p, &paths))
        {
            tracing::info!(vm = %rec.name, pid, "ending a leftover vhost-device-vsock");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            crate::host::process::wait_exit(pid, Duration::from_secs(3)).await;
        }
    }
    if let (true, Some(ip)) = (rec.nat, rec.ip.as_deref().and_then(|i| i.parse().ok())) {
        let req = PrivRequest::DisableNat {
            vm_id: rec.id.clone(),
            ip,
            bridge: svc.config.network.bridge.clone(),
        };
        if let Err(e) = call_helper(&svc.helper, &new_op_id(), req).await {
            tracing::warn!(vm = %rec.name, "removing NAT rules: {}", e.message);
        }
    }
    if let Some(tap) = rec.tap.take() {
        match svc.taps.get() {
            Some(pool) => {
                let _ = pool.cast(TapPoolMsg::Release(tap));
            }
            None => {
                let _ = call_helper(
                    &svc.helper,
                    &new_op_id(),
                    PrivRequest::DeleteTap { name: tap },
                )
                .await;
            }
        }
    }
    rec.vmm_pid = None;
    rec.vsock_pid = None;
}

/// The last `n` lines of the VM's serial console, indented, for errors.
fn serial_tail(paths: &crate::paths::VmPaths, n: usize) -> String {
    let log = std::fs::read(paths.serial_log()).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return "  (nothing)".into();
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kills the VMM (through bangerd-root) and waits for it to be gone.
async fn kill_vmm(svc: &Services, rec: &VmRecord) {
    if let Some(pid) = rec.vmm_pid.filter(|p| crate::host::process::pid_alive(*p)) {
        let _ = call_helper(
            &svc.helper,
            &new_op_id(),
            PrivRequest::SignalVmm {
                pid,
                signal: "KILL".into(),
            },
        )
        .await;
        crate::host::process::wait_exit(pid, Duration::from_secs(10)).await;
    }
}

/// Boots a VM (created or stopped). On failure everything acquired is
/// released and the VM is left in state `error` with the reason.
pub async fn start(ctx: &JobCtx, stages: &mut Stages) -> (VmRecord, Result<(), RpcError>) {
    let mut rec = ctx.record.clone();
    if is_alive(&rec) {
        if rec.state == VmState::Running {
            return (rec, Ok(()));
        }
        // A VMM left by an interrupted start or stop: never two VMMs on
        // one disk.
        tracing::warn!(vm = %rec.name, state = %rec.state, "a VMM is still alive; killing it before starting");
        kill_vmm(&ctx.services, &rec).await;
        release(ctx, &mut rec).await;
    }
    match boot(ctx, &mut rec, stages).await {
        Ok(()) => (rec, Ok(())),
        Err(e) => {
            tracing::warn!(vm = %rec.name, "start failed: {}", e.message);
            kill_vmm(&ctx.services, &rec).await;
            release(ctx, &mut rec).await;
            rec.state = VmState::Error;
            rec.last_error = Some(e.message.clone());
            let _ = persist(&ctx.services, &rec);
            let hint = format!("{} (see `banger vm logs {}`)", e.message, rec.name);
            (rec, Err(RpcError { message: hint, ..e }))
        }
    }
}

/// Launches the VMM for `b` (with a fresh vsock bridge for QEMU) and waits
/// until the driver says it is booting; returns its pid.
async fn launch(
    ctx: &JobCtx,
    rec: &mut VmRecord,
    b: &BootSpec,
    driver: &dyn vmm::Vmm,
) -> Result<u32, RpcError> {
    let svc = &ctx.services;
    let paths = &b.paths;
    for s in [paths.qmp_socket(), paths.api_socket(), paths.vsock_socket()] {
        let _ = std::fs::remove_file(s);
    }
    let _ = std::fs::write(paths.serial_log(), b"");
    let _ = std::fs::write(paths.vmm_log(), b"");
    if rec.vmm == VmmKind::Qemu {
        // A fresh vhost-device-vsock for every boot: one that served an
        // earlier guest may hold that guest's connection state.
        let _ = ractor::call_t!(ctx.me, VmMsg::StopVsock, 15_000);
        let pid = ractor::call_t!(ctx.me, |r| VmMsg::StartVsock(None, r), 30_000)
            .map_err(|e| failed(format!("vsock bridge: {e}")))?
            .map_err(failed)?;
        rec.vsock_pid = Some(pid);
    }
    let pid = match call_helper(
        &svc.helper,
        &new_op_id(),
        PrivRequest::LaunchVmm(driver.launch_spec(b)),
    )
    .await?
    {
        PrivReply::Launched { pid } => pid,
        other => return Err(failed(format!("unexpected helper reply {other:?}"))),
    };
    rec.vmm_pid = Some(pid);
    rec.started_at_unix = Some(now_unix());
    persist(svc, rec)?;
    let _ = ctx.me.cast(VmMsg::AttachVmm(pid));
    tokio::select! {
        r = driver.boot(b) => r.map_err(|e| failed(format!("{} did not boot: {e}", rec.vmm.as_str())))?,
        _ = crate::host::process::wait_exit_forever(pid) => {
            let log = std::fs::read_to_string(paths.vmm_log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(failed(format!("{} exited at once: {}", rec.vmm.as_str(), tail.join(" / "))));
        }
    }
    Ok(pid)
}

async fn boot(ctx: &JobCtx, rec: &mut VmRecord, stages: &mut Stages) -> Result<(), RpcError> {
    let svc: &Arc<Services> = &ctx.services;
    let paths = svc.layout.vm(&rec.id);
    let net = svc.config.network.clone();
    rec.state = VmState::Starting;
    rec.last_error = None;
    persist(svc, rec)?;

    stages.begin("network", "tap and bridge").await;
    let tap = tap_lease(svc).await?;
    rec.tap = Some(tap.clone());
    persist(svc, rec)?;
    let ip: Ipv4Addr = rec
        .ip
        .as_deref()
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| failed("the VM has no address"))?;
    if rec.nat {
        call_helper(
            &svc.helper,
            &new_op_id(),
            PrivRequest::EnableNat {
                vm_id: rec.id.clone(),
                ip,
                bridge: net.bridge.clone(),
            },
        )
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
    let image = crate::daemon::images::get(svc, &rec.image)?;
    let kernel = crate::daemon::kernels::get(svc, &rec.kernel)?;
    let how = if disks::exist(&paths, rec.vmm) {
        "reused".to_string()
    } else {
        let (p, kind, size) = (paths.clone(), rec.vmm, rec.disk_bytes);
        let (rootfs, seed) = (
            PathBuf::from(&image.dir).join(crate::image::ROOTFS),
            PathBuf::from(&image.dir).join(crate::image::WORK_SEED),
        );
        tokio::task::spawn_blocking(move || -> Result<String, String> {
            let how = disks::prepare_root(&rootfs, &p, kind)?;
            disks::prepare_work(&seed, &p, size)?;
            Ok(format!(
                "root: {how}, work: {}",
                crate::size::format_size(size)
            ))
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(failed)?
    };
    stages.end(how).await;

    stages.begin("vmm", rec.vmm.as_str()).await;
    std::fs::create_dir_all(&paths.run)
        .map_err(|e| failed(format!("creating {}: {e}", paths.run.display())))?;
    let pubkey = SshFiles::of(&svc.layout).ensure_key().map_err(failed)?;
    let kvm = crate::host::cpu::hardware_kvm();
    let params = banger_agent::cmdline::GuestParams {
        name: Some(rec.name.clone()),
        ip: Some((ip, net.prefix_len)),
        gw: Some(net.bridge_ip),
        dns: if rec.nat { host_dns() } else { vec![] },
        ssh_key: Some(pubkey),
    };
    let kdir = PathBuf::from(&kernel.dir);
    let b = BootSpec {
        vm_id: rec.id.clone(),
        paths: paths.clone(),
        vcpu: rec.vcpu,
        memory_mib: rec.memory_mib,
        kernel: kdir.join("vmlinux"),
        initrd: kernel.has_initrd.then(|| kdir.join("initrd.img")),
        cmdline: vmm::qemu::kernel_cmdline(kvm, &params),
        disks: vec![
            disks::root_disk(&paths, rec.vmm),
            (paths.work_disk(), vmm::DiskFormat::Raw),
        ],
        tap: Some(tap),
        mac: rec.mac.clone(),
        kvm,
    };
    let driver = vmm::driver(rec.vmm);
    let mut pid = launch(ctx, rec, &b, &*driver).await?;
    stages
        .end(format!(
            "{} pid {pid}, {} vcpu, {} MiB{}",
            rec.vmm.as_str(),
            rec.vcpu,
            rec.memory_mib,
            if kvm { "" } else { " (TCG)" }
        ))
        .await;

    stages
        .begin("agent", "waiting for banger-agent over vsock")
        .await;
    let deadline = Instant::now() + boot_deadline();
    // A guest whose vsock device never comes alive (seen rarely with
    // vhost-device-vsock under load: the guest boots, the agent runs, and
    // nothing reaches it) gets one fresh VMM and bridge halfway through.
    let mut relaunch_at = Some(Instant::now() + boot_deadline() / 2);
    let health = loop {
        match crate::guest::agent::healthz(&paths.vsock_socket(), Duration::from_secs(3)).await {
            Ok(h) => break h,
            Err(e) => {
                if relaunch_at.is_some_and(|t| Instant::now() > t) {
                    relaunch_at = None;
                    tracing::warn!(vm = %rec.name, "the agent did not answer in {:?} ({e}); relaunching the VMM once; the serial console ended with:\n{}", boot_deadline() / 2, serial_tail(&paths, 5));
                    kill_vmm(svc, rec).await;
                    pid = launch(ctx, rec, &b, &*driver).await?;
                    continue;
                }
                if !crate::host::process::pid_alive(pid) {
                    return Err(failed(format!(
                        "the {} process exited during boot",
                        rec.vmm.as_str()
                    )));
                }
                if Instant::now() > deadline {
                    return Err(failed(format!(
                        "the guest agent did not answer within {:?}: {e}; the serial console ended with:\n{}",
                        boot_deadline(),
                        serial_tail(&paths, 15)
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    rec.boot_id = Some(health.boot_id.clone());
    persist(svc, rec)?;
    stages
        .end(format!(
            "guest up {:.1}s, boot {}",
            health.uptime_s,
            &health.boot_id[..8.min(health.boot_id.len())]
        ))
        .await;

    stages.begin("ssh", format!("root@{ip}")).await;
    let files = SshFiles::of(&svc.layout);
    loop {
        let ready = async {
            let keys: Vec<crate::guest::agent::HostKey> = crate::guest::agent::get(
                &paths.vsock_socket(),
                "/hostkeys",
                Duration::from_secs(3),
            )
            .await
            .ok()?;
            let k = keys.iter().find(|k| k.algorithm == "ssh-ed25519")?;
            let ports = crate::guest::agent::ports(&paths.vsock_socket(), Duration::from_secs(3))
                .await
                .ok()?;
            ports
                .iter()
                .any(|p| p.port == 22)
                .then(|| format!("{} {}", k.algorithm, k.key))
        }
        .await;
        if let Some(host_key) = ready {
            match crate::vm::ssh::connect(
                &ip.to_string(),
                &files.key,
                &host_key,
                Duration::from_secs(10),
            )
            .await
            {
                Ok(s) => {
                    s.close().await;
                    files
                        .pin(&rec.name, &ip.to_string(), &host_key)
                        .map_err(|e| failed(format!("pinning the host key: {e}")))?;
                    rec.host_key = Some(host_key);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(failed(format!("ssh to {ip}: {e}")))
                }
                Err(_) => {}
            }
        }
        if !crate::host::process::pid_alive(pid) {
            return Err(failed(format!(
                "the {} process exited during boot",
                rec.vmm.as_str()
            )));
        }
        if Instant::now() > deadline {
            return Err(failed("sshd did not come up in the guest"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    rec.state = VmState::Running;
    persist(svc, rec)?;
    refresh_ssh_config(svc);
    stages.end("ready for commands").await;
    stages.ready().await;
    Ok(())
}

/// Stops a VM: sync and power off in the guest (agent, else SSH), then the
/// VMM's power button, then kill, each after a bounded wait.
pub async fn stop(ctx: &JobCtx, stages: &mut Stages) -> (VmRecord, Result<(), RpcError>) {
    let mut rec = ctx.record.clone();
    let svc = &ctx.services;
    if !is_alive(&rec) {
        release(ctx, &mut rec).await;
        if rec.state != VmState::Created && rec.state != VmState::Error {
            rec.state = VmState::Stopped;
        }
        let r = persist(svc, &rec);
        return (rec, r);
    }
    let pid = rec.vmm_pid.unwrap_or(0);
    rec.state = VmState::Stopping;
    let _ = persist(svc, &rec);
    let paths = svc.layout.vm(&rec.id);
    stages
        .begin("sync", "sync and power off in the guest")
        .await;
    let asked =
        crate::guest::agent::post(&paths.vsock_socket(), "/poweroff", Duration::from_secs(15))
            .await;
    let how = match asked {
        Ok(_) => "agent".to_string(),
        Err(agent_err) => {
            let ssh_res = async {
                let (ip, key) = (rec.ip.clone()?, rec.host_key.clone()?);
                let s = crate::vm::ssh::connect(
                    &ip,
                    &SshFiles::of(&svc.layout).key,
                    &key,
                    Duration::from_secs(5),
                )
                .await
                .ok()?;
                let _ = s
                    .output("sync; systemctl --no-block poweroff || poweroff -f &")
                    .await;
                Some(())
            }
            .await;
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
    let gone = crate::host::process::wait_exit(pid, Duration::from_secs(60)).await;
    let mut how = "powered off".to_string();
    if !gone {
        let _ = vmm::driver(rec.vmm).powerdown(&paths).await;
        if !crate::host::process::wait_exit(pid, Duration::from_secs(20)).await {
            kill_vmm(svc, &rec).await;
            how = "killed after the bounded wait".into();
        } else {
            how = "powered off by the VMM power button".into();
        }
    }
    stages.end(how).await;
    release(ctx, &mut rec).await;
    rec.state = VmState::Stopped;
    rec.started_at_unix = None;
    let r = persist(svc, &rec);
    (rec, r)
}

/// After the VMM exited on its own (power-off inside, crash, kill): release
/// and mark stopped.
pub async fn reap(ctx: &JobCtx) -> VmRecord {
    let mut rec = ctx.record.clone();
    if is_alive(&rec) {
        return rec;
    }
    release(ctx, &mut rec).await;
    if matches!(
        rec.state,
        VmState::Running | VmState::Starting | VmState::Stopping
    ) {
        rec.state = VmState::Stopped;
    }
    rec.started_at_unix = None;
    let _ = persist(&ctx.services, &rec);
    rec
}

/// `vm kill --signal`: delivers the signal; when it ends the VMM, waits and
/// releases, leaving the VM stopped.
pub async fn kill(ctx: &JobCtx, signal: &str) -> (VmRecord, Result<(), RpcError>) {
    let rec = ctx.record.clone();
    let Some(pid) = rec.vmm_pid.filter(|p| crate::host::process::pid_alive(*p)) else {
        return (
            rec.clone(),
            Err(RpcError::bad_request(format!(
                "VM {} is not running",
                rec.name
            ))),
        );
    };
    let req = PrivRequest::SignalVmm {
        pid,
        signal: signal.to_string(),
    };
    if let Err(e) = call_helper(&ctx.services.helper, &new_op_id(), req).await {
        return (rec, Err(e));
    }
    let terminating = !matches!(
        signal
            .trim_start_matches("SIG")
            .to_ascii_uppercase()
            .as_str(),
        "USR1" | "USR2"
    );
    if terminating && crate::host::process::wait_exit(pid, Duration::from_secs(15)).await {
        let r = reap(ctx).await;
        return (r, Ok(()));
    }
    (rec, Ok(()))
}

/// Deletes a VM: kills it if it runs (its disks go too), releases, removes
/// files and the record.
pub async fn delete(ctx: &JobCtx) -> Result<(), RpcError> {
    let mut rec = ctx.record.clone();
    let svc = &ctx.services;
    kill_vmm(svc, &rec).await;
    release(ctx, &mut rec).await;
    let paths = svc.layout.vm(&rec.id);
    for d in [&paths.state, &paths.run] {
        crate::fsutil::remove_all(d)
            .map_err(|e| failed(format!("removing {}: {e}", d.display())))?;
    }
    if let Some(ip) = &rec.ip {
        let _ = SshFiles::of(&svc.layout).unpin(&rec.name, ip);
    }
    svc.store
        .delete_vm(&rec.id)
        .map_err(|e| failed(e.to_string()))?;
    refresh_ssh_config(svc);
    Ok(())
}
