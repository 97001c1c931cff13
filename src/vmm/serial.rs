//! A QEMU guest's serial console: kept by QEMU in a ring of
//! [`SERIAL_RING`] bytes (a `ringbuf` chardev) and drained by the daemon
//! into `serial.log` over a monitor of its own (`serial.sock`). While no
//! daemon drains it, the ring overwrites its oldest bytes: a guest that
//! writes to its console without end fills no disk and no memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::qmp::Qmp;
use super::VmmError;

/// The ring QEMU keeps the console in (a power of two, as QEMU wants).
pub const SERIAL_RING: u32 = 1 << 20;
/// The console's chardev id.
pub const SERIAL_DEVICE: &str = "serial0";
/// How much one `ringbuf-read` takes.
const CHUNK: u32 = 64 << 10;
/// How often an idle ring is looked at.
const POLL: Duration = Duration::from_millis(100);

/// The drain monitor's socket, beside the VMM's QMP socket.
pub fn socket_beside(qmp: &Path) -> PathBuf {
    qmp.with_file_name(crate::paths::SERIAL_SOCKET)
}

/// Appends what the console ring holds to `log` until the VMM's monitor
/// goes away (the VMM exited) or the task is dropped. Connects as soon as
/// the socket answers (the VMM may still be starting).
pub async fn drain(socket: &Path, log: &Path) {
    let mut waited = Duration::ZERO;
    let mut q = loop {
        match Qmp::connect(socket).await {
            Ok(q) => break q,
            // Not there yet: QEMU makes it while it starts.
            Err(_) if waited < Duration::from_secs(60) => {
                tokio::time::sleep(POLL).await;
                waited += POLL;
            }
            Err(e) => {
                tracing::warn!(socket = %socket.display(), "the serial console is not drained: {e}");
                return;
            }
        }
    };
    loop {
        match read_once(&mut q).await {
            Ok(bytes) => {
                if !bytes.is_empty() {
                    if let Err(e) = append(log, &bytes) {
                        tracing::warn!(log = %log.display(), "writing the serial log: {e}");
                    }
                }
                if bytes.len() < CHUNK as usize {
                    tokio::time::sleep(POLL).await;
                }
            }
            // The monitor closed: the VMM is gone.
            Err(_) => return,
        }
    }
}

async fn read_once(q: &mut Qmp) -> Result<Vec<u8>, VmmError> {
    use base64::Engine;
    let v = q
        .execute(
            "ringbuf-read",
            Some(json!({ "device": SERIAL_DEVICE, "size": CHUNK, "format": "base64" })),
        )
        .await?;
    let text = v.as_str().unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| VmmError::Api(format!("ringbuf-read: {e}")))
}

fn append(log: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)?
        .write_all(bytes)
}
