//! VM orchestration used by the VmActor's jobs: disks, SSH, the start/stop
//! sequences.

pub mod disks;
pub mod lifecycle;
pub mod ssh;
