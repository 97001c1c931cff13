//! One integration-test crate (one link step): real `banger`, `bangerd` and
//! `bangerd-root` processes in temporary XDG trees and network namespaces.
//! These tests need root (namespaces, bridges, taps).

mod support;

mod daemon_cli;
mod garbage;
mod helper_net;
mod store_crash;
