//! What an operation reports while it runs ([`Event`]: stages, log lines,
//! a command's output) and what feeds a running command ([`Input`]). The
//! wire carries both unchanged.

use serde::{Deserialize, Serialize};

use super::Signal;

/// Progress and output streamed before the final reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Event {
    /// A named stage finished (or started, when `done` is false).
    Stage {
        stage: String,
        detail: String,
        elapsed_ms: u64,
        done: bool,
    },
    /// A human-readable log line.
    Log(String),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// `vm run`: the shape of the VM it makes (a snapshot's, with `from`).
    Spec {
        vcpu: u32,
        memory_mib: u32,
        disk_bytes: u64,
        nat: bool,
        from: Option<String>,
    },
    /// `vm run`: the command runs now; the client's inputs feed it.
    CommandStarted,
    /// `vm run --export-patch`: a piece of the patch, for the client to
    /// write where it asked; [`Event::PatchDone`] ends it, and the client
    /// answers with [`Input::PatchSaved`].
    Patch(Vec<u8>),
    PatchDone,
}

/// What a client sends during a call, after its request: the input of a
/// `vm exec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Input {
    Stdin(Vec<u8>),
    StdinEof,
    /// Delivered to the command's process group.
    Signal(Signal),
    Resize {
        rows: u16,
        cols: u16,
    },
    /// `vm run`: the client wrote the patch of [`Event::Patch`] where it
    /// asked (or why not).
    PatchSaved {
        error: Option<String>,
    },
}

/// The inputs a client sends during one call, in order (bounded: a client
/// that sends faster than the command reads waits).
pub type Inputs = tokio::sync::mpsc::Receiver<Input>;
