//! banger: throwaway Linux microVMs in one command.
//!
//! The library holds everything; the binaries in `src/bin/` are thin mains.
//! See `docs/ARCHITECTURE.md` for the map.

pub mod actors;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod digest;
pub mod fsutil;
pub mod guest;
pub mod helper;
pub mod host;
pub mod image;
pub mod kernel;
pub mod names;
pub mod paths;
pub mod protocol;
pub mod size;
pub mod store;
pub mod version;
pub mod vm;
pub mod vmm;
pub mod workspace;
