//! banger-agent: runs as root in every guest, statically linked.
//!
//! At boot it reads `banger.*` parameters from `/proc/cmdline`, sets the
//! hostname, `/etc/hosts`, `/etc/resolv.conf`, root's authorized key, and
//! configures the network interface over netlink. Then it serves HTTP/1.1 on
//! vsock port [`api::AGENT_PORT`]: `GET /healthz`, `GET /ports`.
//!
//! The library half is also used by the host (`banger`) for the API types and
//! the command-line format, so both sides agree by construction.

pub mod api;
pub mod cmdline;
pub mod exec;
#[cfg(target_os = "linux")]
pub mod netlink;
pub mod ports;
#[cfg(target_os = "linux")]
pub mod server;
pub mod setup;
