//! One integration-test crate (one link step): real `banger`, `bangerd` and
//! `bangerd-root` processes in temporary XDG trees and network namespaces.
//! These tests need root (namespaces, bridges, taps).

mod support;

mod agent;
mod api;
mod boot;
mod daemon_cli;
mod egress;
mod faults;
mod firecracker;
mod garbage;
mod hardening;
mod helper_net;
mod images;
mod oci;
mod services;
mod snapshots;
mod store_crash;
mod system;
mod update;
mod vms;
mod workspaces;
