//! Messages between `bangerd` and `bangerd-root`: a small, typed set of
//! privileged operations. Nothing here carries a command line or a shell
//! string; every name and address is validated by the helper before use.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::Methods;

/// A privileged operation. Append new variants at the end and bump COUNT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum PrivRequest {
    /// Liveness and identity. Answers [`PrivReply::Pong`].
    Ping,
    /// Creates the bridge if missing, gives it `address/prefix_len` and brings
    /// it up. Idempotent. `name` must be a banger bridge name (`banger*`).
    EnsureBridge {
        name: String,
        address: Ipv4Addr,
        prefix_len: u8,
    },
    /// Creates a tap owned by the registered owner uid and attaches it to
    /// `bridge`. Idempotent. `name` must be a banger tap name (`bgt*`).
    CreateTap { name: String, bridge: String },
    /// Deletes a banger tap. Idempotent (absent is success); refuses any
    /// interface that is not a banger tap.
    DeleteTap { name: String },
    /// Lists banger taps. Answers [`PrivReply::Taps`].
    ListTaps,
    /// Stops the helper. Running VMs are not touched.
    Shutdown,
}

impl Methods for PrivRequest {
    const COUNT: u32 = 6;
}

impl PrivRequest {
    #[doc(hidden)]
    pub fn last_variant_for_tests() -> PrivRequest {
        PrivRequest::Shutdown
    }

    /// Method name for logs.
    pub fn method(&self) -> &'static str {
        match self {
            PrivRequest::Ping => "ping",
            PrivRequest::EnsureBridge { .. } => "ensure_bridge",
            PrivRequest::CreateTap { .. } => "create_tap",
            PrivRequest::DeleteTap { .. } => "delete_tap",
            PrivRequest::ListTaps => "list_taps",
            PrivRequest::Shutdown => "shutdown",
        }
    }
}

/// Successful answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum PrivReply {
    Pong {
        pid: u32,
        version: String,
        owner_uid: u32,
    },
    Done,
    Taps(Vec<TapInfo>),
}

/// A tap device as the helper reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TapInfo {
    pub name: String,
    pub master: Option<String>,
    pub up: bool,
}

/// The helper protocol streams no events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum NoEvent {}
