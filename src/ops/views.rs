//! Store records as the CLI sees them (the wire views), converted
//! explicitly: the store's shape and the wire's shape change independently.

use crate::domain::views::{ImageView, KernelView, VmView, WorkspaceView};
use crate::store::{ImageRecord, KernelRecord, VmRecord, WorkspaceState};

/// A record as the CLI sees it, with what the guest watch knows.
pub fn vm_seen(
    r: &VmRecord,
    g: &crate::ops::guests::GuestHealth,
    unresponsive_after: std::time::Duration,
) -> VmView {
    let mut v = vm(r);
    if r.state == crate::domain::VmState::Running {
        if g.unresponsive(unresponsive_after, crate::store::model::now_unix()) {
            v.state = crate::domain::VmState::Unresponsive;
        } else if g.degraded() {
            v.state = crate::domain::VmState::Degraded;
        }
        v.agent_error = g.agent_error();
        // Its agent may answer (that channel is not the network), but
        // without its tap the VM is off the bridge: not healthy.
        if let Some(tap) = r.tap.as_deref().filter(|t| !interface_exists(t)) {
            if v.state == crate::domain::VmState::Running {
                v.state = crate::domain::VmState::Degraded;
            }
            v.last_error = Some(format!(
                "its tap {tap} is gone: the VM is off the network; restart it: banger vm restart {}",
                r.name
            ));
        }
    }
    v.child_restarts = g.restarts();
    v
}

/// Whether a network interface of that name exists in our namespace.
fn interface_exists(name: &str) -> bool {
    !matches!(
        nix::net::if_::if_nametoindex(name),
        Err(nix::errno::Errno::ENODEV)
    )
}

/// A record as the CLI sees it (without the guest watch).
pub fn vm(r: &VmRecord) -> VmView {
    VmView {
        id: r.id.clone(),
        name: r.name.clone(),
        state: r.state,
        image: r.image.clone(),
        vcpu: r.vcpu,
        memory_mib: r.memory_mib,
        disk_bytes: r.disk_bytes,
        ip: r.ip.clone(),
        nat: r.nat,
        created_at_unix: r.created_at_unix,
        last_error: r.last_error.clone(),
        kernel: r.kernel.clone(),
        vmm: r.vmm,
        pid: r.vmm_pid,
        started_at_unix: r.started_at_unix,
        boot_id: r.boot_id.clone(),
        workspace: r.workspace.as_ref().map(|w| w.host_path.clone()),
        agent_error: None,
        child_restarts: 0,
        links: vec![],
        egress: r.egress.clone(),
        secrets: r.secrets.clone(),
    }
}

/// The names of the VMs of `all` linked with `r`, either way round.
pub fn link_names(r: &VmRecord, all: &[VmRecord]) -> Vec<String> {
    all.iter()
        .filter(|v| r.linked_with(v))
        .map(|v| v.name.clone())
        .collect()
}

pub fn kernel(k: &KernelRecord) -> KernelView {
    KernelView {
        name: k.name.clone(),
        kernel_version: k.kernel_version.clone(),
        arch: k.arch.clone(),
        source: k.source.clone(),
        dir: k.dir.clone(),
        has_initrd: k.has_initrd,
        has_modules: k.has_modules,
        vmlinux_sha256: k.vmlinux_sha256.clone(),
        created_at_unix: k.created_at_unix,
    }
}

pub fn image(i: &ImageRecord, default: bool) -> ImageView {
    ImageView {
        name: i.name.clone(),
        distro: i.distro.clone(),
        arch: i.arch.clone(),
        kernel_ref: i.kernel_ref.clone(),
        dir: i.dir.clone(),
        rootfs_bytes: i.rootfs_bytes,
        work_seed_bytes: i.work_seed_bytes,
        rootfs_sha256: i.rootfs_sha256.clone(),
        work_seed_sha256: i.work_seed_sha256.clone(),
        source: i.source.clone(),
        default,
        created_at_unix: i.created_at_unix,
    }
}

pub fn snapshot(s: &crate::store::SnapshotRecord) -> crate::domain::views::SnapshotView {
    crate::domain::views::SnapshotView {
        name: s.name.clone(),
        source_vm: s.source_vm.clone(),
        image: s.image.clone(),
        kernel: s.kernel.clone(),
        vmm: s.vmm,
        vcpu: s.vcpu,
        memory_mib: s.memory_mib,
        disk_bytes: s.disk_bytes,
        size_bytes: s.size_bytes,
        created_at_unix: s.created_at_unix,
        dir: s.dir.clone(),
        auto: s.auto,
        scope: s.scope.clone(),
    }
}

pub fn workspace(w: &WorkspaceState, files: u64) -> WorkspaceView {
    WorkspaceView {
        guest_path: w.guest_path.clone(),
        host_path: w.host_path.clone(),
        head: w.head.clone(),
        branch: w.branch.clone(),
        mode: w.mode,
        files,
    }
}
