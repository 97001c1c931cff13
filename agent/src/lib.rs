//! banger-agent: runs as root in every guest, statically linked.
//!
//! The initramfs starts it as PID 1 (`--init`): it mounts the API
//! filesystems and the work disk, reads `banger.*` parameters from
//! `/proc/cmdline`, sets the hostname, `/etc/hosts`, `/etc/resolv.conf`,
//! root's authorized key and the network (netlink), starts the agent service
//! and then hands PID 1 to the image's init (or stays a minimal init).
//!
//! The service talks to the host over one channel per VM (a virtio-serial
//! port on QEMU, vsock on Firecracker) carrying yamux streams
//! ([`channel`], [`mux`]); each stream is one request ([`proto`]): ping,
//! health, ports, host keys, sync, power-off, exec.
//!
//! The library half is also used by the host (`banger`) for the protocol,
//! the API types and the command-line format, so both sides agree by
//! construction.

pub mod api;
pub mod channel;
pub mod cmdline;
#[cfg(target_os = "linux")]
pub mod exec;
#[cfg(target_os = "linux")]
pub mod identity;
#[cfg(target_os = "linux")]
pub mod init;
pub mod mux;
#[cfg(target_os = "linux")]
pub mod netlink;
pub mod ports;
pub mod proto;
#[cfg(target_os = "linux")]
pub mod ready;
#[cfg(target_os = "linux")]
pub mod serve;
pub mod setup;
#[cfg(target_os = "linux")]
pub mod vsock;

/// Seconds since boot.
pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0)
}
