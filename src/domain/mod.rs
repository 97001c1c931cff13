//! Domain types shared by the wire (`protocol`), the store and the code
//! between them: VM state, VMM kind and choice, workspace mode, signals.
//!
//! The serde names here are the wire and `--json` names. The store does not
//! persist these derives: it maps each type to its own fixed strings
//! (`store::codec`), so renaming a variant here never changes a state file.

use serde::{Deserialize, Serialize};

/// What a running VM's `last_error` says when `vm set` switched its NAT
/// but its guest did not take the new name servers.
pub const DNS_UNCHANGED: &str = "the guest's name servers were not changed";

pub mod egress;
pub mod events;
pub mod views;

pub use events::{Event, Input, Inputs};

/// Lifecycle state of a VM.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Created,
    Starting,
    Running,
    Stopping,
    Stopped,
    Error,
    /// Running, but its agent has not answered for a while. Only in views
    /// (the store never holds it): a record stays `running`.
    Degraded,
    /// Running, but its agent has been silent past the bound a running
    /// command is given up at (`unresponsive_after_secs`). Only in views.
    Unresponsive,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Error => "error",
            VmState::Degraded => "degraded",
            VmState::Unresponsive => "unresponsive",
        }
    }

    /// Whether a VMM process may belong to a VM in this state.
    pub fn may_have_vmm(self) -> bool {
        matches!(
            self,
            VmState::Running
                | VmState::Starting
                | VmState::Stopping
                | VmState::Degraded
                | VmState::Unresponsive
        )
    }

    /// Whether `vm prune` may delete a VM in this state.
    pub fn prunable(self) -> bool {
        matches!(self, VmState::Created | VmState::Stopped | VmState::Error)
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which VMM drives a VM.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    #[default]
    Qemu,
    Firecracker,
}

impl VmmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VmmKind::Qemu => "qemu",
            VmmKind::Firecracker => "firecracker",
        }
    }
}

/// `vmm = auto|qemu|firecracker`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    #[default]
    Auto,
    Qemu,
    Firecracker,
}

impl std::str::FromStr for VmmChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(VmmChoice::Auto),
            "qemu" => Ok(VmmChoice::Qemu),
            "firecracker" => Ok(VmmChoice::Firecracker),
            other => Err(format!(
                "unknown vmm {other:?}: use auto, qemu or firecracker"
            )),
        }
    }
}

/// How a workspace ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceMode {
    /// A shallow repository (the commit only) plus the working tree.
    #[default]
    Overlay,
    /// The whole repository, history included (the only mode for submodules).
    FullCopy,
}

impl WorkspaceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceMode::Overlay => "overlay",
            WorkspaceMode::FullCopy => "full_copy",
        }
    }
}

impl std::str::FromStr for WorkspaceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "overlay" => Ok(WorkspaceMode::Overlay),
            "full_copy" | "full-copy" => Ok(WorkspaceMode::FullCopy),
            o => Err(format!("unknown mode {o:?}: use overlay or full_copy")),
        }
    }
}

/// A signal `vm kill` may send to a VMM: the helper's allowlist. The one
/// parser of signal names (CLI, daemon and helper all use it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum Signal {
    Term,
    Kill,
    Int,
    Hup,
    Quit,
    Usr1,
    Usr2,
    Abrt,
}

impl Signal {
    /// Every allowed signal, in the order help texts list them.
    pub const ALL: [Signal; 8] = [
        Signal::Term,
        Signal::Kill,
        Signal::Int,
        Signal::Hup,
        Signal::Quit,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Abrt,
    ];

    /// The bare name (`KILL`).
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Quit => "QUIT",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Abrt => "ABRT",
        }
    }

    /// Parses `KILL`, `kill`, `SIGKILL`, `sigkill` or the number `9`.
    pub fn parse(input: &str) -> Result<Signal, SignalError> {
        let up = input.trim().to_ascii_uppercase();
        let bare = up.strip_prefix("SIG").unwrap_or(&up);
        Signal::ALL
            .into_iter()
            .find(|s| s.name() == bare || s.number().to_string() == bare)
            .ok_or_else(|| SignalError(input.to_string()))
    }

    /// The Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
            Signal::Quit => libc::SIGQUIT,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
            Signal::Abrt => libc::SIGABRT,
        }
    }

    /// Whether sending it is meant to end the VMM (USR1 and USR2 are
    /// requests to a running VMM, not an end).
    pub fn terminates(self) -> bool {
        !matches!(self, Signal::Usr1 | Signal::Usr2)
    }

    pub fn to_nix(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal as S;
        match self {
            Signal::Term => S::SIGTERM,
            Signal::Kill => S::SIGKILL,
            Signal::Int => S::SIGINT,
            Signal::Hup => S::SIGHUP,
            Signal::Quit => S::SIGQUIT,
            Signal::Usr1 => S::SIGUSR1,
            Signal::Usr2 => S::SIGUSR2,
            Signal::Abrt => S::SIGABRT,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Signal {
    type Err = SignalError;
    fn from_str(s: &str) -> Result<Signal, SignalError> {
        Signal::parse(s)
    }
}

/// A signal name outside the allowlist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signal {0:?} is not allowed; use one of TERM KILL INT HUP QUIT USR1 USR2 ABRT")]
pub struct SignalError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_parse_one_way_everywhere() {
        let table: &[(&str, Option<Signal>)] = &[
            ("KILL", Some(Signal::Kill)),
            ("kill", Some(Signal::Kill)),
            ("SIGKILL", Some(Signal::Kill)),
            ("sigkill", Some(Signal::Kill)),
            ("9", Some(Signal::Kill)),
            (" TERM ", Some(Signal::Term)),
            ("sigterm", Some(Signal::Term)),
            ("SIGUSR1", Some(Signal::Usr1)),
            ("sigusr1", Some(Signal::Usr1)),
            ("usr1", Some(Signal::Usr1)),
            ("USR2", Some(Signal::Usr2)),
            ("hup", Some(Signal::Hup)),
            ("Quit", Some(Signal::Quit)),
            ("INT", Some(Signal::Int)),
            ("abrt", Some(Signal::Abrt)),
            ("STOP", None),
            ("CONT", None),
            ("SIGSTOP", None),
            ("19", None),
            ("SIGRTMIN", None),
            ("", None),
            ("KILL;", None),
            ("SIGSIGKILL", None),
        ];
        for (input, want) in table {
            assert_eq!(Signal::parse(input).ok(), *want, "{input:?}");
        }
        // The spellings of one signal agree on whether it ends the VMM.
        for s in ["sigusr1", "SIGUSR1", "USR1", "usr1", "10"] {
            assert!(!Signal::parse(s).unwrap().terminates(), "{s}");
        }
        for s in Signal::ALL {
            assert_eq!(Signal::parse(s.name()).unwrap(), s);
            assert_eq!(s.to_nix() as i32, s.number());
        }
        assert!(Signal::parse("STOP")
            .unwrap_err()
            .to_string()
            .contains("not allowed"));
    }

    #[test]
    fn workspace_modes_parse() {
        assert_eq!(
            "full-copy".parse::<WorkspaceMode>().unwrap(),
            WorkspaceMode::FullCopy
        );
        assert_eq!(
            WorkspaceMode::FullCopy
                .as_str()
                .parse::<WorkspaceMode>()
                .unwrap(),
            WorkspaceMode::FullCopy
        );
        assert!("shallow".parse::<WorkspaceMode>().is_err());
    }
}
