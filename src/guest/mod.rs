//! Talking to guests: the agent over hybrid vsock (a host Unix socket that
//! accepts `CONNECT <port>\n`, as Firecracker and vhost-device-vsock expose).

pub mod agent;
pub mod exec;
