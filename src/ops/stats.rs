//! `vm stats`, `vm ports`, `vm health`: figures about a running VM from
//! the host (the VMM process, the VM's files) and from its agent.

use std::path::Path;
use std::time::Duration;

use super::Ctx;
use crate::domain::views::{DiskView, GuestStatsView, HostStats, PortView};
use crate::guest::session::{AgentSession, GuestStats, Port};
use crate::store::VmRecord;

/// How long the CPU use of the VMM is sampled.
pub const CPU_SAMPLE: Duration = Duration::from_millis(250);

/// Bytes the files under `dir` take on disk (allocated blocks, so sparse
/// files count what they use). Symlinks are not followed; hard-linked files
/// (the image's root disk a QEMU VM's overlay sits on) are shared, not the
/// VM's own, and not counted.
pub fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.nlink() == 1 {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// The VMM's CPU use (over [`CPU_SAMPLE`]) and resident memory.
pub async fn vmm_usage(pid: u32) -> (u32, u64) {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let pid = Pid::from_u32(pid);
    let kind = ProcessRefreshKind::nothing().with_cpu().with_memory();
    let Ok(mut sys) = System::new() else {
        return (0, 0);
    };
    sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
    tokio::time::sleep(CPU_SAMPLE.max(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL)).await;
    sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
    match sys.process(pid) {
        Some(p) => ((p.cpu_usage() * 100.0) as u32, p.memory()),
        None => (0, 0),
    }
}

/// The host side of `vm stats`.
pub async fn host(ctx: &Ctx, rec: &VmRecord) -> HostStats {
    let (cpu, rss) = match rec.vmm_pid {
        Some(pid) => vmm_usage(pid).await,
        None => (0, 0),
    };
    let dir = ctx.layout.vm(&rec.id).state;
    let disk_bytes = tokio::task::spawn_blocking(move || allocated_bytes(&dir))
        .await
        .unwrap_or(0);
    HostStats {
        vmm_pid: rec.vmm_pid,
        cpu_percent_x100: cpu,
        rss_bytes: rss,
        disk_bytes,
    }
}

/// The agent's figures as the wire carries them.
pub fn guest_view(g: &GuestStats) -> GuestStatsView {
    let x100 = |v: f64| (v.max(0.0) * 100.0).round().min(u32::MAX as f64) as u32;
    GuestStatsView {
        load_x100: [x100(g.load[0]), x100(g.load[1]), x100(g.load[2])],
        mem_total_bytes: g.mem_total_kib.saturating_mul(1024),
        mem_available_bytes: g.mem_available_kib.saturating_mul(1024),
        disks: g
            .disks
            .iter()
            .map(|d| DiskView {
                mount: d.mount.clone(),
                total_bytes: d.total_bytes,
                used_bytes: d.used_bytes,
            })
            .collect(),
        uptime_s: g.uptime_s.max(0.0) as u64,
        processes: g.processes,
    }
}

/// A guest's listening sockets with the endpoint to reach each at:
/// `<name>.vm:<port>` when DNS is on, else the VM's IP; loopback-only
/// sockets have none.
pub fn port_views(ctx: &Ctx, rec: &VmRecord, ports: Vec<Port>) -> Vec<PortView> {
    let host = if ctx.config.network.dns_port != 0 {
        format!("{}.vm", rec.name)
    } else {
        rec.ip.clone().unwrap_or_default()
    };
    let mut v: Vec<PortView> = ports
        .into_iter()
        .map(|p| {
            let local = p.address.starts_with("127.") || p.address == "::1";
            PortView {
                endpoint: if local {
                    String::new()
                } else {
                    format!("{host}:{}", p.port)
                },
                proto: crate::guest::text::shown(&p.proto, 8, false),
                address: crate::guest::text::shown(&p.address, 64, false),
                port: p.port,
                pid: p.pid,
                process: p.process.map(|x| crate::guest::text::shown(&x, 64, false)),
            }
        })
        .collect();
    v.sort_by(|a, b| (a.port, &a.proto).cmp(&(b.port, &b.proto)));
    v
}

/// The guest side of `vm stats`, or why not.
pub async fn guest(agent: &AgentSession) -> Result<GuestStatsView, String> {
    match agent.stats(Duration::from_secs(10)).await {
        Ok(g) => Ok(guest_view(&g)),
        Err(crate::guest::session::AgentError::Refused(e)) => Err(format!(
            "the guest's agent does not know stats ({e}); rebuild the image (banger image build --rebuild)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocated_bytes_counts_blocks_not_apparent_size() {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(d.path().join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/data"), vec![7u8; 64 << 10]).unwrap();
        let n = allocated_bytes(d.path());
        assert!(n >= 64 << 10, "{n}");
        assert!(n < 1 << 20, "a sparse GiB takes no space: {n}");
    }

    #[test]
    fn guest_figures_are_scaled_and_clamped() {
        let g = GuestStats {
            load: [0.5, 1.25, -1.0],
            mem_total_kib: 1024,
            mem_available_kib: 512,
            disks: vec![],
            uptime_s: 12.7,
            processes: 40,
        };
        let v = guest_view(&g);
        assert_eq!(v.load_x100, [50, 125, 0]);
        assert_eq!(v.mem_total_bytes, 1 << 20);
        assert_eq!(v.uptime_s, 12);
    }
}
