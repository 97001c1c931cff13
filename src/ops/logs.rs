//! Caps on the logs a guest writes into: the serial console and the VMM's
//! own output grow with whatever the guest prints, so each is cut back to
//! its last [`KEEP`] bytes once it passes [`CAP`] (checked every few
//! seconds while VMs run). The writers append (`O_APPEND`), so cutting the
//! file under them is safe.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::Ctx;

/// A log longer than this is cut back.
pub const CAP: u64 = 8 << 20;
/// What is kept of it: the most recent bytes.
pub const KEEP: u64 = 1 << 20;

/// Cuts `path` back to its last `keep` bytes (after a marker line) when it
/// is longer than `cap`. Returns whether it did.
pub fn cap_file(path: &Path, cap: u64, keep: u64) -> std::io::Result<bool> {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= cap {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - keep))?;
    let mut tail = Vec::with_capacity(keep as usize);
    (&mut f).take(keep).read_to_end(&mut tail)?;
    // Start the kept part at a line boundary.
    if let Some(nl) = tail.iter().position(|&b| b == b'\n') {
        tail.drain(..=nl);
    }
    f.set_len(0)?;
    let mut w = std::fs::OpenOptions::new().append(true).open(path)?;
    let marker = format!(
        "[banger: this log passed {} MiB; earlier output was dropped]\n",
        cap >> 20
    );
    w.write_all(marker.as_bytes())?;
    w.write_all(&tail)?;
    Ok(true)
}

/// The daemon's own log (its stdout and stderr, appended) is cut back past
/// this...
pub const DAEMON_CAP: u64 = 32 << 20;
/// ...to its last this many bytes.
pub const DAEMON_KEEP: u64 = 4 << 20;

/// Cuts the daemon's log (`bangerd.log`) back when it passed its cap.
pub fn cap_daemon_log(layout: &crate::paths::Layout) -> std::io::Result<bool> {
    cap_file(&layout.daemon_log(), DAEMON_CAP, DAEMON_KEEP)
}

/// One pass over every VM that may be running, and the daemon's own log.
pub fn cap_vm_logs(ctx: &Ctx) {
    match cap_daemon_log(&ctx.layout) {
        Ok(true) => tracing::info!("cut bangerd.log back to its last {} MiB", DAEMON_KEEP >> 20),
        Ok(false) => {}
        Err(e) => tracing::warn!("capping bangerd.log: {e}"),
    }
    let Ok(vms) = ctx.store.list_vms() else {
        return;
    };
    for v in vms.iter().filter(|v| v.state.may_have_vmm()) {
        let p = ctx.layout.vm(&v.id);
        for log in [p.serial_log(), p.vmm_log(), p.state.join("firecracker.log")] {
            match cap_file(&log, CAP, KEEP) {
                Ok(true) => {
                    tracing::info!(vm = %v.name, log = %log.display(), "cut a log back to its last MiB")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(vm = %v.name, log = %log.display(), "capping a log: {e}"),
            }
        }
    }
}

/// Runs [`cap_vm_logs`] every `every` until the task is dropped.
pub async fn run(ctx: std::sync::Arc<Ctx>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let c = ctx.clone();
        let _ = tokio::task::spawn_blocking(move || cap_vm_logs(&c)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_own_log_is_capped_too() {
        let d = tempfile::tempdir().unwrap();
        let env = crate::paths::Env {
            uid: 1000,
            home: Some(d.path().join("home")),
            xdg_state_home: Some(d.path().join("state")),
            xdg_cache_home: Some(d.path().join("cache")),
            xdg_config_home: Some(d.path().join("config")),
            xdg_runtime_dir: Some(d.path().join("run")),
            system: false,
        };
        let layout = crate::paths::Layout::resolve(&env);
        std::fs::create_dir_all(layout.daemon_log().parent().unwrap()).unwrap();
        let line = "2026-12-05T00:00:00Z INFO a line of the daemon's log\n";
        let mut text = String::new();
        while (text.len() as u64) < DAEMON_CAP + 1 {
            text.push_str(line);
        }
        text.push_str("the last line\n");
        std::fs::write(layout.daemon_log(), &text).unwrap();
        assert!(cap_daemon_log(&layout).unwrap());
        let after = std::fs::read_to_string(layout.daemon_log()).unwrap();
        assert!(after.len() as u64 <= DAEMON_KEEP + 200, "{}", after.len());
        assert!(after.ends_with("the last line\n"));
        assert!(!cap_daemon_log(&layout).unwrap(), "under the cap now");
    }

    #[test]
    fn a_log_past_its_cap_keeps_its_last_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("serial.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        for i in 0..200_000u32 {
            writeln!(f, "line {i}").unwrap();
        }
        assert!(!cap_file(&p, 16 << 20, 4096).unwrap(), "under the cap");
        assert!(cap_file(&p, 1 << 20, 4096).unwrap());
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.len() < 4096 + 100, "{}", text.len());
        assert!(text.starts_with("[banger: this log passed"));
        assert!(text.ends_with("line 199999\n"));
        let second = text.lines().nth(1).unwrap();
        assert!(second.starts_with("line "), "a whole line: {second}");
        // The writer's appends land after the kept tail.
        writeln!(f, "after").unwrap();
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .ends_with("line 199999\nafter\n"));
        assert!(!cap_file(&d.path().join("absent"), 1, 1).unwrap());
    }
}
