//! Boot: network → disks → vmm → agent → boot (the readiness point).

use super::*;

/// Boots a VM (created or stopped). On failure everything acquired is
/// released and the VM is left in state `error` with the reason.
pub async fn start(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    mut rec: VmRecord,
    stages: &mut Stages,
) -> (VmRecord, Result<(), OpError>) {
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
        if e.is_busy() {
            // bangerd-root died under the boot and is back: what the first
            // attempt launched or took goes, then one more try.
            tracing::warn!(vm = %rec.name, "{e}; booting once more");
            if kill_vmm(ctx, &rec).await.is_ok() {
                release(ctx, vm, &mut rec).await;
                booted = boot(ctx, vm, &mut rec, stages).await;
            }
        }
    }
    match booted {
        Ok(()) => (rec, Ok(())),
        Err(e) => {
            tracing::warn!(vm = %rec.name, "start failed: {e}");
            fail_and_release(ctx, vm, &mut rec, &e).await;
            let hint = format!("{e} (see `banger vm logs {}`)", rec.name);
            (rec, Err(e.reworded(hint)))
        }
    }
}

/// Leaves a VM whose boot failed in `error`, its VMM killed and what it
/// held released; a VMM that outlives the kill (the helper is down) keeps
/// its pid and resources on the record until its exit is seen.
pub(super) async fn fail_and_release(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: &mut VmRecord,
    e: &OpError,
) {
    rec.state = VmState::Error;
    rec.last_error = Some(e.to_string());
    match kill_vmm(ctx, rec).await {
        Ok(()) => release(ctx, vm, rec).await,
        Err(k) => rec.last_error = Some(format!("{e}; {k}")),
    }
    let _ = persist(ctx, vm, rec);
}

/// Launches the VMM for `b` and waits until the driver says it is booting;
/// returns its pid and the VM's fresh agent session.
pub(super) async fn launch(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: &mut VmRecord,
    b: &BootSpec,
    driver: &dyn Vmm,
) -> Result<(u32, AgentSession), OpError> {
    let paths = &b.paths;
    // No other VMM of this VM may run: one a killed daemon asked for may
    // have been started by the helper after the new daemon's recovery
    // looked (it would hold the disks' locks).
    super::kill_vmm(ctx, rec).await?;
    for s in [
        paths.qmp_socket(),
        paths.serial_socket(),
        paths.api_socket(),
        paths.vsock_socket(),
        paths.agent_socket(),
    ] {
        let _ = std::fs::remove_file(s);
    }
    let _ = std::fs::write(paths.serial_log(), b"");
    let _ = std::fs::write(paths.vmm_log(), b"");
    vm.stop_agent().await;
    let pid = ctx.helper.launch_vmm(driver.launch_spec(b)).await?;
    rec.vmm_pid = Some(pid);
    rec.started_at_unix = Some(now_unix());
    persist(ctx, vm, rec)?;
    vm.watch_vmm(pid);
    // The exit is checked first: a VMM that is gone says why in its log.
    tokio::select! {
        biased;
        _ = crate::host::process::wait_exit_forever(pid) => {
            return Err(OpError::failed(format!(
                "{} exited at once:\n{}",
                rec.vmm.as_str(),
                log_tail(&paths.vmm_log(), 5)
            )));
        }
        r = driver.boot(b) => r.map_err(|e| OpError::failed(format!("{} did not boot: {e}", rec.vmm.as_str())))?,
    }
    let agent = vm.start_agent(channel_of(rec.vmm, paths)).await?;
    Ok((pid, agent))
}

/// Resolves once `log` has not grown for `stall` (checked each second).
pub(super) async fn console_stalls(log: &Path, stall: Duration) {
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
pub(super) fn boot_files(
    ctx: &Ctx,
    rec: &VmRecord,
) -> Result<(PathBuf, Option<PathBuf>, PathBuf, PathBuf), OpError> {
    let image = crate::ops::images::get(ctx, &rec.image)?;
    let kernel = crate::ops::kernels::get(ctx, &rec.kernel)?;
    let kdir = PathBuf::from(&kernel.dir);
    let vmlinux = kdir.join("vmlinux");
    let initrd = kernel.has_initrd.then(|| kdir.join("initrd.img"));
    let idir = PathBuf::from(&image.dir);
    let (rootfs, seed) = (
        idir.join(crate::image::ROOTFS),
        idir.join(crate::image::WORK_SEED),
    );
    let missing = |what: &str, p: &Path, fix: String| {
        OpError::not_found(format!("{what} {} is missing; {fix}", p.display()))
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

pub(super) async fn boot(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: &mut VmRecord,
    stages: &mut Stages,
) -> Result<(), OpError> {
    let paths = ctx.layout.vm(&rec.id);
    rec.state = VmState::Starting;
    rec.last_error = None;
    persist(ctx, vm, rec)?;

    stages.begin("network", "tap and bridge").await;
    let (tap, ip) = network(ctx, vm, rec).await?;
    let bridge = &ctx.config.network.bridge;
    let nat = match (rec.egress.is_some(), rec.nat) {
        (true, _) => ", egress policy",
        (false, true) => ", NAT",
        (false, false) => "",
    };
    stages.end(format!("{tap} on {bridge} ({ip}{nat})")).await;

    stages.begin("disks", "root and work disks").await;
    let (files, restore, how) = disks_stage(ctx, rec, &paths).await?;
    stages.end(how).await;

    stages.begin("vmm", rec.vmm.as_str()).await;
    let b = boot_spec(ctx, rec, &paths, files, tap, ip, restore.as_ref())?;
    let driver = ctx.drivers.driver(rec.vmm);
    let (pid, agent) = launch(ctx, vm, rec, &b, &*driver).await?;
    stages
        .end(format!(
            "{} pid {pid}, {} vcpu, {} MiB{}",
            rec.vmm.as_str(),
            rec.vcpu,
            rec.memory_mib,
            if b.kvm { "" } else { " (TCG)" }
        ))
        .await;

    if let Some(snap) = &restore {
        return restore_guest(ctx, vm, rec, snap, pid, &agent, stages).await;
    }
    let launched = Launched {
        spec: &b,
        driver: &*driver,
        pid,
        agent,
    };
    let (health, r) = agent_and_ready(ctx, vm, rec, launched, stages).await?;
    accept_guest(ctx, vm, rec, health)?;
    stages.end(ready_detail(&r)).await;
    stages.ready().await;
    Ok(())
}

/// The `network` stage: a tap bound to the guest's addresses (and NAT when
/// asked). A leased tap that vanished while it waited warm (deleted by
/// hand or by another program) is replaced: every warm one may be gone,
/// the one made after them is fresh.
async fn network(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: &mut VmRecord,
) -> Result<(String, Ipv4Addr), OpError> {
    let ip: Ipv4Addr = rec
        .ip
        .as_deref()
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| OpError::failed("the VM has no address"))?;
    let mac = rec
        .mac
        .clone()
        .ok_or_else(|| OpError::failed("the VM has no MAC address"))?;
    let mut tries = 0;
    let tap = loop {
        let tap = ctx.taps.lease().await?;
        rec.tap = Some(tap.clone());
        persist(ctx, vm, rec)?;
        match ctx.helper.guard_tap(tap.clone(), ip, mac.clone()).await {
            Ok(_) => break tap,
            Err(e) if e.is_not_found() && tries <= crate::ops::net::WARM_TAPS => {
                tracing::warn!(vm = %rec.name, %tap, "the leased tap is gone; taking another");
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    };
    super::apply_rules(ctx, rec, ip).await?;
    Ok((tap, ip))
}

/// The kernel and initrd a VM boots.
pub(super) struct BootFiles {
    vmlinux: PathBuf,
    initrd: Option<PathBuf>,
}

/// The `disks` stage: fresh clone disks for a VM made `--from` a snapshot
/// and not yet restored (its memory is loaded instead of a boot), the VM's
/// own disks when it has them, else new ones from the image. Answers the
/// boot files, the snapshot to restore, and what was done.
async fn disks_stage(
    ctx: &Ctx,
    rec: &VmRecord,
    paths: &crate::paths::VmPaths,
) -> Result<(BootFiles, Option<crate::store::SnapshotRecord>, String), OpError> {
    let (vmlinux, initrd, rootfs, seed) = boot_files(ctx, rec)?;
    let restore = match (rec.restore_pending, &rec.snapshot) {
        (true, Some(id)) => {
            let snap = crate::ops::snapshots::by_id(ctx, id)?;
            crate::ops::snapshots::check_restorable(ctx, &snap)?;
            Some(snap)
        }
        _ => None,
    };
    let how = if let Some(snap) = &restore {
        let (s, p) = (snap.clone(), paths.clone());
        tokio::task::spawn_blocking(move || crate::ops::snapshots::clone_disks(&s, &p)).await??;
        format!("root: overlay on snapshot {}, work: copy", snap.name)
    } else if disks::exist(paths, rec.vmm) {
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
    Ok((BootFiles { vmlinux, initrd }, restore, how))
}

/// What the VMM is started with. A restore passes the command line the
/// saved guest booted with.
fn boot_spec(
    ctx: &Ctx,
    rec: &VmRecord,
    paths: &crate::paths::VmPaths,
    files: BootFiles,
    tap: String,
    ip: Ipv4Addr,
    restore: Option<&crate::store::SnapshotRecord>,
) -> Result<BootSpec, OpError> {
    let net = &ctx.config.network;
    std::fs::create_dir_all(&paths.run)
        .map_err(|e| crate::fsutil::IoError::new("creating", &paths.run, e))?;
    let pubkey = SshFiles::of(&ctx.layout)
        .ensure_key()
        .map_err(OpError::failed)?;
    let kvm = crate::host::cpu::hardware_kvm();
    let params = banger_agent::cmdline::GuestParams {
        name: Some(rec.name.clone()),
        ip: Some((ip, net.prefix_len)),
        gw: Some(net.bridge_ip),
        dns: crate::ops::net::guest_dns(net, crate::ops::net::open_nat(rec)),
        ssh_key: Some(pubkey),
    };
    Ok(BootSpec {
        vm_id: rec.id.clone(),
        paths: paths.clone(),
        vcpu: rec.vcpu,
        memory_mib: rec.memory_mib,
        kernel: files.vmlinux,
        initrd: files.initrd,
        cmdline: match restore {
            Some(snap) => snap.cmdline.clone(),
            None => vmm::qemu::kernel_cmdline(kvm, &params),
        },
        disks: vec![
            disks::root_disk(paths, rec.vmm),
            (paths.work_disk(), vmm::DiskFormat::Raw),
        ],
        tap: Some(tap),
        mac: rec.mac.clone(),
        kvm,
        tcg_tb_mib: ctx.config.tcg_tb_mib,
        binary: match rec.vmm {
            crate::domain::VmmKind::Qemu => ctx.config.qemu_binary.clone(),
            crate::domain::VmmKind::Firecracker => ctx.config.firecracker_binary.clone(),
        },
        incoming: restore.is_some(),
        backing: backing_dirs(ctx, rec)?,
    })
}

/// The directories a VM made `--from` a snapshot reads its root overlay's
/// backing files from: that snapshot's and each one it was built on.
fn backing_dirs(ctx: &Ctx, rec: &VmRecord) -> Result<Vec<std::path::PathBuf>, OpError> {
    let all = ctx.store.list_snapshots()?;
    let mut dirs = Vec::new();
    let mut next = rec.snapshot.clone();
    while let Some(id) = next {
        let s = match all.iter().find(|s| s.id == id) {
            Some(s) if dirs.len() < all.len() => s,
            // Gone (or a loop, which no record can make): the message
            // says what to do.
            _ => {
                return Err(crate::ops::snapshots::by_id(ctx, &id)
                    .err()
                    .unwrap_or_else(|| {
                        OpError::failed(format!("snapshot {id} is built on itself"))
                    }))
            }
        };
        dirs.push(std::path::PathBuf::from(&s.dir));
        next = s.parent.clone();
    }
    Ok(dirs)
}

/// A VMM just launched, and how to launch it again.
struct Launched<'a> {
    spec: &'a BootSpec,
    driver: &'a dyn Vmm,
    pid: u32,
    agent: AgentSession,
}

/// The `agent` and `boot` stages: the agent answers, then the guest's boot
/// reaches the readiness point. A TCG guest on an overloaded host has been
/// seen to hang for good in early boot (the console stops, the agent never
/// starts) or mid-boot (the agent stops answering): one fresh VMM gets it
/// going. A guest that is slow but printing is left alone.
async fn agent_and_ready(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: &mut VmRecord,
    l: Launched<'_>,
    stages: &mut Stages,
) -> Result<(banger_agent::api::Healthz, banger_agent::api::Readiness), OpError> {
    let Launched {
        spec: b,
        driver,
        mut pid,
        mut agent,
    } = l;
    let paths = ctx.layout.vm(&rec.id);
    stages.begin("agent", "waiting for banger-agent").await;
    let boot_deadline = ctx.timeouts.boot;
    let deadline = tokio::time::Instant::now() + boot_deadline;
    let mut relaunch = true;
    let serial_log = paths.serial_log();
    loop {
        let health = loop {
            tokio::select! {
                h = async {
                    agent.wait_up(deadline - tokio::time::Instant::now()).await?;
                    agent.health(Duration::from_secs(30)).await
                } => break h.map_err(|e| OpError::failed(format!(
                    "the guest agent did not answer within {boot_deadline:?}: {e}; the serial console ended with:\n{}",
                    log_tail(&paths.serial_log(), 15)
                )))?,
                _ = crate::host::process::wait_exit_forever(pid) => {
                    return Err(OpError::failed(format!(
                        "the {} process exited during boot; the serial console ended with:\n{}",
                        rec.vmm.as_str(),
                        log_tail(&paths.serial_log(), 15)
                    )));
                }
                _ = console_stalls(&serial_log, ctx.timeouts.boot_stall), if relaunch => {
                    relaunch = false;
                    tracing::warn!(vm = %rec.name, stall = ?ctx.timeouts.boot_stall, "the guest looks hung in boot (no agent, a silent console); relaunching its VMM once; the console ended with:\n{}", log_tail(&paths.serial_log(), 5));
                    kill_vmm(ctx, rec).await?;
                    (pid, agent) = launch(ctx, vm, rec, b, driver).await?;
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
            Ok(r) => {
                trust_ca(ctx, rec, &agent).await?;
                return Ok((health, r));
            }
            // Nothing has run in it yet: a guest stuck mid-boot gets one
            // fresh VMM, like one hung before its agent started.
            Err(ReadyError::Stuck(e)) if relaunch => {
                relaunch = false;
                tracing::warn!(vm = %rec.name, "the guest stopped answering mid-boot; relaunching its VMM once: {e}");
                stages
                    .end("the guest stopped answering mid-boot; a fresh VMM")
                    .await;
                kill_vmm(ctx, rec).await?;
                (pid, agent) = launch(ctx, vm, rec, b, driver).await?;
                stages
                    .begin("agent", "waiting for banger-agent (relaunched)")
                    .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
