//! VMM drivers. `qemu.rs`: QEMU microvm (KVM where hardware virtualisation
//! works, TCG otherwise).

pub mod qemu;
