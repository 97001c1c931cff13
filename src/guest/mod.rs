//! Talking to guests: the agent over hybrid vsock (a host Unix socket that
//! accepts `CONNECT <port>\n`, as Firecracker and vhost-device-vsock expose),
//! and SSH (banger's key, pinned host keys, a russh client).

pub mod agent;
pub mod exec;
pub mod ssh;
