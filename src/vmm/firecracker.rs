//! Firecracker: HTTP/1.1 over its API Unix socket. machine-config,
//! boot-source, drives, network-interfaces, vsock, logger, `InstanceStart`,
//! `SendCtrlAltDel`. The process is started by bangerd-root (as the owner,
//! in its own session); nothing forwards signals to it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::LaunchSpec;
use super::{BootFut, BootSpec, Vmm, VmmError};
use crate::domain::VmmKind;
use crate::paths::VmPaths;

/// Oldest Firecracker banger will start.
pub const MIN_VERSION: (u32, u32, u32) = (1, 5, 0);
/// Newest Firecracker banger was tested with.
pub const TESTED_VERSION: (u32, u32, u32) = (1, 12, 1);

/// Where a root-owned Firecracker may live.
const LOCATIONS: &[&str] = &["/usr/local/bin/firecracker", "/usr/bin/firecracker"];

/// Why a binary may not be launched by root on the owner's behalf.
pub fn check_root_owned(path: &Path) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let md = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    if !md.is_file() {
        return Err(format!("{} is not a regular file", real.display()));
    }
    if md.uid() != 0 {
        return Err(format!(
            "{} is owned by uid {}, not root",
            real.display(),
            md.uid()
        ));
    }
    if md.mode() & 0o022 != 0 {
        return Err(format!("{} is group- or world-writable", real.display()));
    }
    if md.mode() & 0o111 == 0 {
        return Err(format!("{} is not executable", real.display()));
    }
    // Nobody but root can swap it between this check and the exec: every
    // directory above it belongs to root and is writable by nobody else
    // (or is sticky, like /tmp, where only a file's owner may rename it).
    for dir in real.ancestors().skip(1) {
        let md = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if md.uid() != 0 {
            return Err(format!(
                "{} is in {}, owned by uid {}, not root",
                real.display(),
                dir.display(),
                md.uid()
            ));
        }
        if md.mode() & 0o022 != 0 && md.mode() & 0o1000 == 0 {
            return Err(format!(
                "{} is in {}, which is group- or world-writable",
                real.display(),
                dir.display()
            ));
        }
    }
    Ok(real)
}

/// The Firecracker binary, if a valid one is installed.
pub fn binary() -> Option<PathBuf> {
    LOCATIONS
        .iter()
        .map(Path::new)
        .filter(|p| p.exists())
        .find_map(|p| check_root_owned(p).ok())
}

/// Parses `firecracker --version` output (`Firecracker v1.12.1`, possibly
/// followed by a log line).
pub fn parse_version(out: &str) -> Option<(u32, u32, u32)> {
    let v = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Firecracker v"))?
        .split_whitespace()
        .next()?;
    let core = v.split('-').next()?;
    let mut it = core.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// The installed version, or why it cannot be used.
pub fn version(bin: &Path) -> Result<(u32, u32, u32), String> {
    let out = crate::host::process::run_bounded(
        std::process::Command::new(bin).arg("--version"),
        std::time::Duration::from_secs(10),
        64 << 10,
    )
    .map_err(|e| format!("running {} --version: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = parse_version(&text).ok_or_else(|| format!("cannot read the version from {text:?}"))?;
    if v < MIN_VERSION {
        return Err(format!(
            "firecracker v{}.{}.{} is older than the supported v{}.{}.{}",
            v.0, v.1, v.2, MIN_VERSION.0, MIN_VERSION.1, MIN_VERSION.2
        ));
    }
    Ok(v)
}

/// One API call; returns the status and body, or an error for a non-2xx.
pub async fn api(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<String, VmmError> {
    let mut s = UnixStream::connect(socket).await.map_err(|e| {
        VmmError::Api(format!(
            "cannot reach the Firecracker API at {}: {e}",
            socket.display()
        ))
    })?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    // Firecracker keeps the connection open; read until the response is complete.
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .map_err(|_| VmmError::Timeout(Duration::from_secs(10)))??;
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(at)) = resp.parse(&buf) {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0);
            if buf.len() >= at + len || n == 0 {
                let code = resp.code.unwrap_or(0);
                let body =
                    String::from_utf8_lossy(&buf[at..(at + len).min(buf.len())]).into_owned();
                if !(200..300).contains(&code) {
                    return Err(VmmError::Api(format!(
                        "Firecracker {method} {path}: HTTP {code}: {body}"
                    )));
                }
                return Ok(body);
            }
        }
        if n == 0 {
            return Err(VmmError::Api(format!(
                "Firecracker {method} {path}: connection closed mid-response"
            )));
        }
    }
}

/// A full snapshot of a running microVM: paused, its state and memory
/// written by Firecracker to `state` and `mem` (paths the Firecracker
/// process can write), then resumed. Nothing of the guest runs meanwhile.
pub async fn snapshot_create(socket: &Path, state: &Path, mem: &Path) -> Result<(), VmmError> {
    let paused = serde_json::json!({ "state": "Paused" });
    api(socket, "PATCH", "/vm", Some(&paused)).await?;
    let req = serde_json::json!({
        "snapshot_type": "Full",
        "snapshot_path": state,
        "mem_file_path": mem,
    });
    let made = api(socket, "PUT", "/snapshot/create", Some(&req)).await;
    let resumed = serde_json::json!({ "state": "Resumed" });
    let back = api(socket, "PATCH", "/vm", Some(&resumed)).await;
    made?;
    back.map(drop)
}

/// Loads a full snapshot into a Firecracker process that has not been
/// configured (its drives and tap must be where they were), resuming it.
pub async fn snapshot_load(socket: &Path, state: &Path, mem: &Path) -> Result<(), VmmError> {
    let req = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": { "backend_type": "File", "backend_path": mem },
        "resume_vm": true,
    });
    api(socket, "PUT", "/snapshot/load", Some(&req))
        .await
        .map(drop)
}

/// Waits for the API socket to answer.
pub async fn wait_api(socket: &Path, timeout: Duration) -> Result<(), VmmError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match api(socket, "GET", "/", None).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(VmmError::Api(format!(
                    "the Firecracker API never answered: {e}"
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Configures a started Firecracker for `b` and starts the instance.
pub async fn configure_and_start(b: &BootSpec) -> Result<(), VmmError> {
    let sock = b.paths.api_socket();
    wait_api(&sock, Duration::from_secs(10)).await?;
    let fc_log = b.paths.state.join("firecracker.log");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&fc_log)?;
    api(
        &sock,
        "PUT",
        "/logger",
        Some(&json!({"log_path": fc_log, "level": "Info", "show_level": true})),
    )
    .await?;
    api(
        &sock,
        "PUT",
        "/machine-config",
        Some(&json!({"vcpu_count": b.vcpu, "mem_size_mib": b.memory_mib, "smt": false})),
    )
    .await?;
    let mut boot = json!({"kernel_image_path": b.kernel, "boot_args": b.cmdline});
    if let Some(i) = &b.initrd {
        boot["initrd_path"] = json!(i);
    }
    api(&sock, "PUT", "/boot-source", Some(&boot)).await?;
    for (n, (path, fmt)) in b.disks.iter().enumerate() {
        if *fmt != super::DiskFormat::Raw {
            return Err(VmmError::Api(format!(
                "Firecracker needs raw disks, {} is {}",
                path.display(),
                fmt.as_str()
            )));
        }
        let id = if n == 0 {
            "rootfs".to_string()
        } else {
            format!("disk{n}")
        };
        api(
            &sock,
            "PUT",
            &format!("/drives/{id}"),
            Some(&json!({"drive_id": id, "path_on_host": path, "is_root_device": n == 0, "is_read_only": false})),
        )
        .await?;
    }
    if let (Some(tap), Some(mac)) = (&b.tap, &b.mac) {
        api(
            &sock,
            "PUT",
            "/network-interfaces/eth0",
            Some(&json!({"iface_id": "eth0", "host_dev_name": tap, "guest_mac": mac})),
        )
        .await?;
    }
    api(
        &sock,
        "PUT",
        "/vsock",
        Some(&json!({"guest_cid": 3, "uds_path": b.paths.vsock_socket()})),
    )
    .await?;
    api(
        &sock,
        "PUT",
        "/actions",
        Some(&json!({"action_type": "InstanceStart"})),
    )
    .await?;
    Ok(())
}

/// `SendCtrlAltDel`.
pub async fn send_ctrl_alt_del(socket: &Path) -> Result<(), VmmError> {
    api(
        socket,
        "PUT",
        "/actions",
        Some(&json!({"action_type": "SendCtrlAltDel"})),
    )
    .await
    .map(drop)
}

/// The Firecracker driver.
pub struct Firecracker;

impl Vmm for Firecracker {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    fn launch_spec(&self, b: &BootSpec) -> LaunchSpec {
        LaunchSpec {
            vm_id: b.vm_id.clone(),
            kind: VmmKind::Firecracker,
            qemu: None,
            control_socket: b.paths.api_socket(),
            log: b.paths.vmm_log(),
            binary: b.binary.clone(),
            reads: b.reads(),
        }
    }

    fn boot<'a>(&'a self, b: &'a BootSpec) -> BootFut<'a> {
        Box::pin(configure_and_start(b))
    }

    fn powerdown<'a>(&'a self, paths: &'a VmPaths) -> BootFut<'a> {
        Box::pin(async move { send_ctrl_alt_del(&paths.api_socket()).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parsing() {
        assert_eq!(
            parse_version("Firecracker v1.12.1\n\n2026 [x] exiting successfully"),
            Some((1, 12, 1))
        );
        assert_eq!(parse_version("Firecracker v1.14.1-dev"), Some((1, 14, 1)));
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(parse_version("Firecracker vX.Y"), None);
        assert!((1, 4, 9) < MIN_VERSION && (1, 12, 1) >= MIN_VERSION);
    }

    /// The tested version is said once, here: the README and the test
    /// script (which fetches the binary the tests run) follow it.
    #[test]
    fn the_readme_and_the_test_script_name_the_tested_version() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let (a, b, c) = TESTED_VERSION;
        let (m0, m1, m2) = MIN_VERSION;
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let said = format!("(≥ {m0}.{m1}.{m2}, tested {a}.{b}.{c})");
        assert!(readme.contains(&said), "README.md must say {said}");
        let script = std::fs::read_to_string(root.join("scripts/test.sh")).unwrap();
        let fetched = format!("firecracker-{a}.{b}.{c}\"");
        assert!(
            script.contains(&fetched),
            "scripts/test.sh must fetch {fetched}"
        );
    }
}
