//! Snapshots: a running QEMU VM's memory and devices (QEMU's migration
//! stream, written to a file through a descriptor handed over QMP) and its
//! disks at that instant, kept under `snapshots/<id>/`:
//!
//! ```text
//! state.bin    the migration stream (RAM, CPU and device state)
//! base.ext4    the image's root file system (a hard link)
//! root.qcow2   the VM's root overlay, frozen (its backing file: base.ext4)
//! work.ext4    the VM's work disk (sparse copy)
//! ```
//!
//! Built in a `.tmp-` directory and published by rename, then recorded: a
//! snapshot is listed only when whole, and an interrupted one leaves only a
//! `.tmp-` directory, swept at the next start. A VM made `--from` a
//! snapshot has its root overlay backed by the snapshot's, so the snapshot
//! is kept while such a VM exists.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Ctx, Stages};
use crate::domain::{VmState, VmmKind};
use crate::fsutil::IoContext;
use crate::paths::VmPaths;

use crate::domain::views::SnapshotView;
use crate::ops::OpError;
use crate::store::model::now_unix;
use crate::store::{SnapshotRecord, VmRecord};
use crate::vmm::qmp;

pub const STATE: &str = "state.bin";
pub const BASE: &str = "base.ext4";
pub const ROOT: &str = "root.qcow2";
pub const WORK: &str = "work.ext4";
/// The QMP name of the state file's descriptor.
const FD_NAME: &str = "bangersnap";
/// Saving or loading a guest's memory (a file on a local disk).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

pub fn snapshots_dir(ctx: &Ctx) -> PathBuf {
    ctx.layout.state_dir.join("snapshots")
}

fn validate_name(name: &str) -> Result<(), OpError> {
    crate::image::validate_image_name(name)
        .map_err(|e| OpError::invalid(e.replace("image", "snapshot")))
}

/// Looks a snapshot up, or says it does not exist and what does.
pub fn get(ctx: &Ctx, name: &str) -> Result<SnapshotRecord, OpError> {
    validate_name(name)?;
    ctx.store.get_snapshot(name)?.ok_or_else(|| {
        OpError::not_found(format!(
            "no snapshot named {name:?} (it may have been deleted); see `banger snapshot list`, or make one with `banger vm snapshot <vm> --name {name}`"
        ))
    })
}

/// The snapshot a VM was made from, by id.
pub fn by_id(ctx: &Ctx, id: &str) -> Result<SnapshotRecord, OpError> {
    ctx.store
        .list_snapshots()?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| {
            OpError::not_found(format!(
                "the snapshot this VM was made from (id {id}) is gone; delete the VM"
            ))
        })
}

/// The first line of `<qemu> --version`: a restore under another QEMU is
/// refused (its device state may not load, or load wrong).
pub fn vmm_version(ctx: &Ctx) -> Result<String, OpError> {
    let bin = match &ctx.config.qemu_binary {
        Some(b) => b.clone(),
        None => crate::host::system_tool("qemu-system-x86_64").ok_or_else(|| {
            OpError::failed("qemu-system-x86_64 is not installed; install qemu-system-x86")
        })?,
    };
    let out = crate::host::process::run_bounded(
        Command::new(&bin).arg("--version"),
        Duration::from_secs(10),
        4096,
    )
    .map_err(|e| OpError::failed(format!("{}: {e}", bin.display())))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// Allocated bytes of the snapshot's own files in `dir` (the image's root
/// file system, linked in, is the image's).
fn allocated(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name() != BASE)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

fn default_name(vm: &str) -> String {
    let t = chrono_like(now_unix());
    // Within the name limit whatever the VM's name.
    let keep = crate::names::MAX_NAME_LEN - t.len() - 1;
    let vm: String = vm.chars().take(keep).collect();
    format!("{}-{t}", vm.trim_end_matches('-'))
}

/// `YYYYmmdd-HHMMSS` (UTC) without a date library.
fn chrono_like(unix: u64) -> String {
    let (days, secs) = (unix / 86400, unix % 86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `vm snapshot`: pauses the VM, saves its memory and devices, copies its
/// disks, and resumes it. On any failure nothing is listed, the staging
/// directory goes, and the VM runs on.
pub async fn take(
    ctx: &Ctx,
    rec: &VmRecord,
    agent: Option<crate::guest::session::AgentSession>,
    name: Option<String>,
    auto: bool,
    scope: Option<String>,
    stages: &mut Stages,
) -> Result<SnapshotRecord, OpError> {
    let name = check_new(ctx, rec, name)?;
    let kernel = super::kernels::get(ctx, &rec.kernel)?;
    let vmm_version = vmm_version(ctx)?;
    // A VM made from a snapshot: its overlay is backed by that snapshot's,
    // and so is this one's copy of it.
    let parent = match &rec.snapshot {
        Some(id) => Some(by_id(ctx, id)?),
        None => None,
    };
    let base = match &parent {
        Some(p) => Path::new(&p.dir).join(BASE),
        None => ctx.layout.vm(&rec.id).base_disk(),
    };
    let cmdline = kernel_cmdline_of(rec.vmm_pid)?;
    let paths = ctx.layout.vm(&rec.id);
    let dir = snapshots_dir(ctx);
    let staged = crate::fsutil::TempDir::new_in(&dir, "snapshot").ctx("creating in", &dir)?;

    let mut q = pause(ctx, &paths, agent.as_ref(), auto, stages).await?;

    let saved = save(&mut q, &paths, &base, staged.path(), stages).await;
    drop(q);
    // Whatever happened, the VM runs on: a migration still going is
    // cancelled first, over a fresh connection (this one may be what broke).
    let resumed = resume(&paths, saved.is_err()).await;
    let (elapsed_state, bytes_state) = saved_and_resumed(rec, saved, resumed)?;

    let id = crate::store::model::new_vm_id();
    let final_dir = dir.join(&id);
    let size_bytes = allocated(staged.path());
    crate::fsutil::publish_dir(staged.path(), &final_dir).ctx("publishing", &final_dir)?;
    staged.keep();
    let snap = SnapshotRecord {
        name: name.clone(),
        id,
        dir: final_dir.display().to_string(),
        source_vm: rec.name.clone(),
        source_ip: rec.ip.clone(),
        image: rec.image.clone(),
        kernel: rec.kernel.clone(),
        vmm: rec.vmm,
        vcpu: rec.vcpu,
        memory_mib: rec.memory_mib,
        disk_bytes: rec.disk_bytes,
        nat: rec.nat,
        cmdline,
        vmlinux_sha256: kernel.vmlinux_sha256,
        vmm_version,
        size_bytes,
        created_at_unix: now_unix(),
        auto,
        last_used_unix: 0,
        parent: parent.map(|p| p.id),
        scope: scope.map(|s| crate::guest::text::shown(&s, 512, false)),
    };
    // Recorded only if the name is still free (another snapshot of that
    // name may have been taken meanwhile): never replaced under a clone.
    match ctx.store.insert_snapshot(&snap) {
        Ok(true) => {}
        Ok(false) => {
            let _ = crate::fsutil::remove_all(&final_dir);
            return Err(OpError::already_exists(format!(
                "a snapshot named {name:?} was taken meanwhile; pick another name"
            )));
        }
        Err(e) => {
            let _ = crate::fsutil::remove_all(&final_dir);
            return Err(e.into());
        }
    }
    tracing::info!(vm = %rec.name, snapshot = %name, state_bytes = bytes_state, ms = elapsed_state, size_bytes, "snapshot taken");
    Ok(snap)
}

/// A snapshot can be taken of `rec` under `name` (default: generated).
fn check_new(ctx: &Ctx, rec: &VmRecord, name: Option<String>) -> Result<String, OpError> {
    super::vms::require_running(rec)?;
    if rec.vmm != VmmKind::Qemu {
        return Err(OpError::invalid(format!(
            "VM {} runs under Firecracker: snapshots here are QEMU's (Firecracker cannot boot guests on this host); make the VM with --vmm qemu",
            rec.name
        )));
    }
    let name = name.unwrap_or_else(|| default_name(&rec.name));
    validate_name(&name)?;
    if ctx.store.get_snapshot(&name)?.is_some() {
        return Err(OpError::already_exists(format!("a snapshot named {name:?} exists; pick another name or delete it (banger snapshot delete {name})"),
        ));
    }
    Ok(name)
}

/// The kernel command line the VMM `pid` was started with (`-append`).
fn kernel_cmdline_of(pid: Option<u32>) -> Result<String, OpError> {
    std::fs::read(format!("/proc/{}/cmdline", pid.unwrap_or(0)))
        .ok()
        .and_then(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            let at = args.iter().position(|a| *a == b"-append")?;
            args.get(at + 1)
                .map(|a| String::from_utf8_lossy(a).into_owned())
        })
        .ok_or_else(|| OpError::failed("cannot read the VM's kernel command line"))
}

/// Settles the guest (automatic snapshots), flushes its disks and pauses
/// the VMM; answers the QMP connection it was paused over.
async fn pause(
    ctx: &Ctx,
    paths: &crate::paths::VmPaths,
    agent: Option<&crate::guest::session::AgentSession>,
    auto: bool,
    stages: &mut Stages,
) -> Result<qmp::Qmp, OpError> {
    if let Some(a) = agent {
        settle(ctx, a, auto, stages).await?;
    }
    stages
        .begin("pause", "flush the guest, pause the VMM")
        .await;
    if let Some(a) = agent {
        // The disks as the guest sees them (its page cache is saved with
        // its memory either way; this makes later cold boots of a clone
        // closer to what ran).
        let _ = a
            .call::<banger_agent::api::Ack>(
                &banger_agent::proto::Request::Sync,
                Duration::from_secs(10),
                64 << 10,
            )
            .await;
    }
    let mut q = qmp::Qmp::connect(&paths.qmp_socket())
        .await
        .map_err(|e| OpError::failed(format!("QMP: {e}")))?;
    q.execute("stop", None)
        .await
        .map_err(|e| OpError::failed(e.to_string()))?;
    stages.end("paused").await;

    Ok(q)
}

/// The save's figures when the state was saved and the VM resumed; else
/// what went wrong (both, when both did).
fn saved_and_resumed(
    rec: &VmRecord,
    saved: Result<(u128, u64), OpError>,
    resumed: Result<(), crate::vmm::VmmError>,
) -> Result<(u128, u64), OpError> {
    let not_resumed = |r: crate::vmm::VmmError| {
        format!(
            "VM {} did not resume: {r}; restart it (banger vm restart {})",
            rec.name, rec.name
        )
    };
    match (saved, resumed) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(r)) => Err(OpError::failed(format!(
            "the snapshot was not kept: {}",
            not_resumed(r)
        ))),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(r)) => {
            let message = format!("{e}; and {}", not_resumed(r));
            Err(e.reworded(message))
        }
    }
}

/// How long `vm snapshot` waits for a booting guest to settle.
const SETTLE_WAIT: Duration = Duration::from_secs(120);

/// The `settle` stage: waits (bounded) until the guest's boot is over, so
/// clones have nothing of it left to replay. An automatic snapshot is
/// refused when the boot does not finish; a user's is taken anyway, and
/// its clones finish the boot (they wait for the readiness point on
/// restore) before anything runs in them.
async fn settle(
    ctx: &Ctx,
    agent: &crate::guest::session::AgentSession,
    auto: bool,
    stages: &mut Stages,
) -> Result<(), OpError> {
    stages
        .begin("settle", "waiting for the guest's boot to finish")
        .await;
    let wait = if auto { ctx.timeouts.boot } else { SETTLE_WAIT };
    let r = agent.ready(true, true, wait).await;
    let state = |r: &banger_agent::api::Readiness| {
        if r.system_state.is_empty() {
            "no init to wait for".to_string()
        } else {
            format!(
                "systemd: {}",
                super::lifecycle::sanitize_token(&r.system_state, 32)
            )
        }
    };
    match r {
        Ok(r) if r.settled => {
            stages
                .end(format!("settled ({}, waited {} ms)", state(&r), r.waited_ms))
                .await;
            Ok(())
        }
        Ok(r) if auto => Err(OpError::failed(format!(
            "the guest's boot did not finish within {wait:?} ({}): no warm snapshot of a booting guest",
            state(&r)
        ))),
        Err(e) if auto => Err(OpError::failed(format!(
            "cannot tell whether the guest's boot is over ({e}): no warm snapshot"
        ))),
        Ok(r) => {
            stages
                .end(format!(
                    "still booting after {wait:?} ({}): its clones finish the boot before commands run",
                    state(&r)
                ))
                .await;
            Ok(())
        }
        Err(e) => {
            stages
                .end(format!(
                    "cannot tell ({e}): its clones wait for their boot before commands run"
                ))
                .await;
            Ok(())
        }
    }
}

/// Runs a paused VM again; with `cancel`, a migration still going is
/// cancelled (and waited for) first, so it cannot stop the guest later.
async fn resume(paths: &VmPaths, cancel: bool) -> Result<(), crate::vmm::VmmError> {
    let mut q = qmp::connect_within(&paths.qmp_socket(), Duration::from_secs(10)).await?;
    if cancel {
        let _ = q.execute("migrate_cancel", None).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = q.execute("query-migrate", None).await?;
            let st = m.get("status").and_then(|s| s.as_str()).unwrap_or("none");
            if !["setup", "active", "cancelling", "pre-switchover", "device"].contains(&st) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(crate::vmm::VmmError::Timeout(Duration::from_secs(30)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    q.execute("cont", None).await.map(drop)
}

/// The state file, then the disks, into `dir` (the VMM is paused).
/// Returns (ms, bytes) of the state.
async fn save(
    q: &mut qmp::Qmp,
    paths: &VmPaths,
    base: &Path,
    dir: &Path,
    stages: &mut Stages,
) -> Result<(u128, u64), OpError> {
    stages.begin("memory", "the VMM's state to a file").await;
    let t = std::time::Instant::now();
    let state = dir.join(STATE);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&state)
        .ctx("creating", &state)?;
    let api = |e: crate::vmm::VmmError| OpError::failed(format!("saving the VM's state: {e}"));
    q.send_fd(FD_NAME, f.as_fd()).await.map_err(api)?;
    drop(f);
    // Unthrottled: it is a local file.
    let _ = q
        .execute(
            "migrate-set-parameters",
            Some(serde_json::json!({ "max-bandwidth": 1u64 << 40 })),
        )
        .await;
    q.execute(
        "migrate",
        Some(serde_json::json!({ "uri": format!("fd:{FD_NAME}") })),
    )
    .await
    .map_err(api)?;
    qmp::wait_migration(q, MIGRATION_TIMEOUT)
        .await
        .map_err(api)?;
    let bytes = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);
    let ms = t.elapsed().as_millis();
    stages
        .end(format!("{} in {ms} ms", crate::size::format_size(bytes)))
        .await;

    stages.begin("disks", "root overlay and work disk").await;
    let (vm_dir, dst, base) = (paths.clone(), dir.to_path_buf(), base.to_path_buf());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        crate::fsutil::link_or_copy(&base, &dst.join(BASE))?;
        crate::fsutil::copy_synced(&vm_dir.root_qcow2(), &dst.join(ROOT))?;
        crate::fsutil::copy_synced(&vm_dir.work_disk(), &dst.join(WORK))?;
        Ok(())
    })
    .await
    .map_err(|e| OpError::failed(e.to_string()))?
    .map_err(|e| OpError::failed(format!("copying the disks: {e}")))?;
    stages.end(crate::size::format_size(allocated(dir))).await;
    Ok((ms, bytes))
}

/// Why `snap` cannot be restored here and now, if it cannot: a file is
/// missing, or the kernel or the VMM changed since it was taken.
pub fn check_restorable(ctx: &Ctx, snap: &SnapshotRecord) -> Result<(), OpError> {
    if let Some(pid) = &snap.parent {
        let parent = by_id(ctx, pid).map_err(|_| {
            OpError::failed(format!(
                "snapshot {} is damaged: the snapshot it was built on is gone; delete it (banger snapshot delete {})",
                snap.name, snap.name
            ))
        })?;
        check_restorable(ctx, &parent)?;
    }
    let dir = Path::new(&snap.dir);
    for f in [STATE, BASE, ROOT, WORK] {
        if !dir.join(f).is_file() {
            return Err(OpError::failed(format!(
                "snapshot {} is damaged: {} is missing; delete it (banger snapshot delete {}) and take it again",
                snap.name,
                dir.join(f).display(),
                snap.name
            )));
        }
    }
    let kernel = super::kernels::get(ctx, &snap.kernel)?;
    if kernel.vmlinux_sha256 != snap.vmlinux_sha256 {
        return Err(OpError::failed(format!(
            "kernel {} changed since snapshot {} was taken; a saved guest only runs on its own kernel: take the snapshot again",
            snap.kernel, snap.name
        )));
    }
    let now = vmm_version(ctx)?;
    if now != snap.vmm_version {
        return Err(OpError::failed(format!(
            "QEMU changed since snapshot {} was taken ({} then, {now} now); its saved devices may not load: take the snapshot again",
            snap.name, snap.vmm_version
        )));
    }
    Ok(())
}

/// A clone's disks: a root overlay backed by the snapshot's frozen one,
/// and its own copy of the work disk. Made fresh for every restore (a
/// restore that failed after the guest ran must not leave its writes under
/// the memory loaded next).
pub fn clone_disks(snap: &SnapshotRecord, paths: &VmPaths) -> Result<(), super::disks::DiskError> {
    let dir = Path::new(&snap.dir);
    super::disks::prepare_clone(&dir.join(ROOT), &dir.join(WORK), paths)
}

/// Loads the snapshot's state into a VMM started with `-incoming defer`
/// (it runs once loaded). Returns the milliseconds it took.
pub async fn load(paths: &VmPaths, snap: &SnapshotRecord) -> Result<u128, OpError> {
    let t = std::time::Instant::now();
    let err =
        |e: crate::vmm::VmmError| OpError::failed(format!("restoring snapshot {}: {e}", snap.name));
    let mut q = qmp::connect_within(&paths.qmp_socket(), Duration::from_secs(30))
        .await
        .map_err(err)?;
    let state = Path::new(&snap.dir).join(STATE);
    let f = std::fs::File::open(&state).ctx("opening", &state)?;
    q.send_fd(FD_NAME, f.as_fd()).await.map_err(err)?;
    drop(f);
    q.execute(
        "migrate-incoming",
        Some(serde_json::json!({ "uri": format!("fd:{FD_NAME}") })),
    )
    .await
    .map_err(err)?;
    qmp::wait_migration(&mut q, MIGRATION_TIMEOUT)
        .await
        .map_err(err)?;
    // The saved guest was paused (the source stops before saving), and
    // QEMU keeps a loaded guest in the state it was saved in: run it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = q.execute("query-status", None).await.map_err(err)?;
        match st.get("status").and_then(|s| s.as_str()) {
            Some("running") => break,
            Some("paused") => {
                q.execute("cont", None).await.map_err(err)?;
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(OpError::failed(format!(
                "the restored VM did not run (status {st})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(t.elapsed().as_millis())
}

/// Who a clone is: its record's name and addresses, fresh randomness and
/// the host's clock.
pub fn identity(
    ctx: &Ctx,
    rec: &VmRecord,
    snap: &SnapshotRecord,
) -> Result<banger_agent::proto::Identity, OpError> {
    let net = &ctx.config.network;
    let ip = rec
        .ip
        .as_deref()
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| OpError::failed("the VM has no address"))?;
    let seed: [u8; 64] = rand::random();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(banger_agent::proto::Identity {
        name: rec.name.clone(),
        ip,
        prefix_len: net.prefix_len,
        gw: Some(net.bridge_ip),
        dns: super::net::guest_dns(net, crate::ops::net::open_nat(rec)),
        mac: rec
            .mac
            .clone()
            .ok_or_else(|| OpError::failed("the VM has no MAC address"))?,
        old_ip: snap.source_ip.as_deref().and_then(|i| i.parse().ok()),
        seed: seed.iter().map(|b| format!("{b:02x}")).collect(),
        now_secs: now.as_secs(),
        now_nanos: now.subsec_nanos(),
    })
}

pub fn list(ctx: &Ctx) -> Result<Vec<SnapshotView>, OpError> {
    let mut v = ctx.store.list_snapshots()?;
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v.iter().map(super::views::snapshot).collect())
}

pub fn show(ctx: &Ctx, name: &str) -> Result<SnapshotView, OpError> {
    Ok(super::views::snapshot(&get(ctx, name)?))
}

/// `snapshot delete`: refused while a VM made from it exists (its root
/// disk is backed by the snapshot's). The record goes first: nothing
/// listed is ever half deleted; a directory left behind is swept.
pub fn delete(ctx: &Ctx, name: &str) -> Result<(), OpError> {
    let snap = get(ctx, name)?;
    let vms = ctx.store.list_vms()?.into_iter();
    super::refuse_if_used(
        &format!("snapshot {name}"),
        "VM(s) made from it",
        vms.filter(|v| v.snapshot.as_deref() == Some(snap.id.as_str()))
            .map(|v| v.name),
    )?;
    let snaps = ctx.store.list_snapshots()?.into_iter();
    super::refuse_if_used(
        &format!("snapshot {name}"),
        "snapshot(s) built on it",
        snaps
            .filter(|s| s.parent.as_deref() == Some(snap.id.as_str()))
            .map(|s| s.name),
    )?;
    ctx.store.delete_snapshot(name)?;
    let dir = Path::new(&snap.dir);
    crate::fsutil::remove_all(dir).ctx("removing", dir)?;
    Ok(())
}

/// Notes that `snap` was restored just now (for `snapshot prune`).
pub fn mark_used(ctx: &Ctx, snap: &SnapshotRecord) {
    if let Ok(Some(mut s)) = ctx.store.get_snapshot(&snap.name) {
        if s.id == snap.id {
            s.last_used_unix = now_unix();
            if let Err(e) = ctx.store.put_snapshot(&s) {
                tracing::warn!(snapshot = %s.name, "recording its use: {e}");
            }
        }
    }
}

/// `snapshot prune`: the automatic snapshots not restored (nor made) in
/// the last `days` days and that no VM was made from.
pub fn prune(ctx: &Ctx, days: u32) -> Result<Vec<String>, OpError> {
    let cutoff = now_unix().saturating_sub(u64::from(days) * 86_400);
    let vms = ctx.store.list_vms()?;
    let mut gone = Vec::new();
    // Children first: a parent goes once nothing is built on it.
    loop {
        let snaps = ctx.store.list_snapshots()?;
        let doomed = snaps.iter().find(|s| {
            let last = s.last_used_unix.max(s.created_at_unix);
            let used = vms
                .iter()
                .any(|v| v.snapshot.as_deref() == Some(s.id.as_str()))
                || snaps
                    .iter()
                    .any(|c| c.parent.as_deref() == Some(s.id.as_str()));
            s.auto && !used && (days == 0 || last < cutoff)
        });
        match doomed {
            Some(s) => {
                delete(ctx, &s.name)?;
                gone.push(s.name.clone());
            }
            None => break,
        }
    }
    gone.sort();
    Ok(gone)
}

/// At daemon start: staging directories of interrupted snapshots, and
/// directories no record names, go.
pub fn sweep(ctx: &Ctx) {
    let dir = snapshots_dir(ctx);
    for p in crate::fsutil::sweep_temp(&dir) {
        tracing::info!(path = %p.display(), "removed an interrupted snapshot");
    }
    // Without the records nothing is known to be unused: keep everything.
    let known: Vec<String> = match ctx.store.list_snapshots() {
        Ok(v) => v.into_iter().map(|s| s.id).collect(),
        Err(e) => {
            tracing::warn!("not sweeping snapshots: the store cannot be read: {e}");
            return;
        }
    };
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            let id = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&id) && crate::fsutil::remove_all(&p).is_ok() {
                tracing::info!(path = %p.display(), "removed a snapshot directory no record names");
            }
        }
    }
}

/// The name of the automatic snapshot for VMs of this image, kernel, shape
/// and QEMU: any change to one of them is another snapshot.
pub fn warm_name(
    image: &crate::store::ImageRecord,
    kernel: &crate::store::KernelRecord,
    shape: (u32, u32, u64),
    vmm_version: &str,
) -> String {
    let key = crate::digest::sha256_hex(
        format!(
            // warm2: taken of a settled guest (warm1 was "agent ready",
            // mid-boot): a new name, so the old ones are never restored.
            "warm2|{}|{}|{}|{}|{}|{}|{vmm_version}",
            image.rootfs_sha256,
            image.work_seed_sha256,
            kernel.vmlinux_sha256,
            shape.0,
            shape.1,
            shape.2
        )
        .as_bytes(),
    );
    format!("warm-{}", &key[..16])
}

/// Whether the automatic snapshot `name` can serve a new VM now. One that
/// cannot (damaged, its kernel or QEMU changed) is deleted when no VM was
/// made from it, so it is made again.
pub fn usable_warm(ctx: &Ctx, name: &str) -> Result<Option<SnapshotRecord>, OpError> {
    let Some(snap) = ctx.store.get_snapshot(name)? else {
        return Ok(None);
    };
    match check_restorable(ctx, &snap) {
        Ok(()) => Ok(Some(snap)),
        Err(e) => {
            tracing::warn!(snapshot = %name, "the warm snapshot cannot be used ({e}); booting cold");
            let used = ctx
                .store
                .list_vms()?
                .iter()
                .any(|v| v.snapshot.as_deref() == Some(snap.id.as_str()));
            if !used {
                let _ = delete(ctx, name);
            }
            Ok(None)
        }
    }
}

/// A VM record for `--from`: the snapshot's shape, image and kernel.
pub fn apply_shape(rec: &mut VmRecord, snap: &SnapshotRecord) {
    rec.vcpu = snap.vcpu;
    rec.memory_mib = snap.memory_mib;
    rec.disk_bytes = snap.disk_bytes;
    rec.snapshot = Some(snap.id.clone());
    rec.restore_pending = true;
    if rec.state != VmState::Created {
        rec.state = VmState::Created;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dir: &Path, ctx: &Ctx) -> SnapshotRecord {
        SnapshotRecord {
            name: "s".into(),
            id: "0123456789abcdef".into(),
            dir: dir.display().to_string(),
            source_vm: "src".into(),
            source_ip: Some("172.16.0.2".into()),
            image: "img".into(),
            kernel: "krn".into(),
            vmm: VmmKind::Qemu,
            vcpu: 1,
            memory_mib: 512,
            disk_bytes: 1 << 30,
            nat: false,
            cmdline: "console=ttyS0".into(),
            vmlinux_sha256: String::new(),
            vmm_version: vmm_version(ctx).unwrap(),
            size_bytes: 0,
            created_at_unix: 0,
            auto: false,
            last_used_unix: 0,
            parent: None,
            scope: None,
        }
    }

    /// A snapshot is restored only whole, on its own kernel and QEMU, with
    /// its parent present.
    #[test]
    fn changed_kernels_or_qemu_and_missing_files_are_refused() {
        let f = crate::ops::testing::Fakes::new();
        f.artifacts();
        let dir = f.dir.path().join("snap");
        std::fs::create_dir_all(&dir).unwrap();
        for n in [STATE, BASE, ROOT, WORK] {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
        let ok = record(&dir, &f.ctx);
        check_restorable(&f.ctx, &ok).unwrap();
        let mut k = ok.clone();
        k.vmlinux_sha256 = "another".into();
        let e = check_restorable(&f.ctx, &k).unwrap_err();
        assert!(
            e.to_string().contains("kernel krn changed"),
            "{}",
            e.to_string()
        );
        let mut q = ok.clone();
        q.vmm_version = "QEMU emulator version 1.0".into();
        let e = check_restorable(&f.ctx, &q).unwrap_err();
        assert!(e.to_string().contains("QEMU changed"), "{}", e.to_string());
        let mut p = ok.clone();
        p.parent = Some("fedcba9876543210".into());
        let e = check_restorable(&f.ctx, &p).unwrap_err();
        assert!(
            e.to_string().contains("built on is gone"),
            "{}",
            e.to_string()
        );
        std::fs::remove_file(dir.join(ROOT)).unwrap();
        let e = check_restorable(&f.ctx, &ok).unwrap_err();
        assert!(
            e.to_string().contains("is damaged") && e.to_string().contains(ROOT),
            "{}",
            e.to_string()
        );
    }

    #[test]
    fn default_names_carry_the_utc_time() {
        assert_eq!(chrono_like(0), "19700101-000000");
        assert_eq!(chrono_like(1_796_137_771), "20261201-150931");
        assert_eq!(chrono_like(951_782_400), "20000229-000000");
    }
}
