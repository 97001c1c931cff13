//! Talking to guests: the agent session (one multiplexed channel per VM:
//! QEMU's virtio-serial port or Firecracker's vsock), commands run through
//! it, and SSH for humans (banger's key, pinned host keys, a russh client).

pub mod exec;
pub mod session;
pub mod ssh;
pub mod text;
