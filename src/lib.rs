//! banger: throwaway Linux microVMs in one command.
//!
//! The library holds everything; the binaries in `src/bin/` are thin mains.
//! See `docs/ARCHITECTURE.md` for the map and what may import what.

pub mod actors;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod digest;
pub mod doctor;
pub mod domain;
pub mod errors;
pub mod fsutil;
pub mod guest;
pub mod helper;
pub mod host;
pub mod image;
pub mod kernel;
pub mod logging;
pub mod names;
pub mod ops;
pub mod paths;
pub mod protocol;
pub mod release;
pub mod size;
pub mod store;
pub mod supervise;
pub mod system;
pub mod version;
pub mod vmm;
pub mod workspace;

#[cfg(test)]
mod module_rules;
