//! What an operation fails with. Each area keeps its own error type (the
//! store's, an I/O error with its path, the workspace's, the VMM's, …) and
//! is carried here unchanged as the source; the few failures that belong to
//! an operation itself say which kind they are (bad input, missing, taken,
//! busy, failed) and what to do. The daemon maps an [`OpError`] to a wire
//! code in one place (`errors.rs`); nothing in `ops` knows the wire.

use std::sync::Arc;

use crate::fsutil::IoError;

/// An operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request is wrong (a bad name, a size out of range, a refused
    /// option); the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist; the message says how to list
    /// or make it.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// Something it needs is busy or restarting; retrying later works.
    #[error("{0}")]
    Busy(String),
    /// The operation could not be done; the message says what failed and
    /// what to do.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error(transparent)]
    Bundle(#[from] crate::image::bundle::BundleError),
    #[error(transparent)]
    Build(#[from] crate::image::build::BuildError),
    #[error(transparent)]
    Workspace(#[from] crate::workspace::WorkspaceError),
    #[error("the guest agent: {0}")]
    Agent(#[from] crate::guest::session::AgentError),
    #[error(transparent)]
    Ssh(#[from] crate::guest::ssh::SshError),
    #[error(transparent)]
    Vmm(#[from] crate::vmm::VmmError),
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    #[error(transparent)]
    Signal(#[from] crate::domain::SignalError),
    #[error(transparent)]
    Net(#[from] crate::host::net::NetError),
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    #[error(transparent)]
    Disk(#[from] super::disks::DiskError),
    #[error(transparent)]
    WarmKey(#[from] super::warm::WarmKeyError),
    #[error("an internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// One failure handed to several waiters (a shared image build).
    #[error(transparent)]
    Shared(Arc<OpError>),
    /// A failure told in the operation's words (what it was doing, what to
    /// do next); its kind is its source's.
    #[error("{message}")]
    Context {
        message: String,
        #[source]
        source: Box<OpError>,
    },
}

impl OpError {
    pub fn invalid(m: impl Into<String>) -> OpError {
        OpError::Invalid(m.into())
    }
    pub fn not_found(m: impl Into<String>) -> OpError {
        OpError::NotFound(m.into())
    }
    pub fn already_exists(m: impl Into<String>) -> OpError {
        OpError::AlreadyExists(m.into())
    }
    pub fn busy(m: impl Into<String>) -> OpError {
        OpError::Busy(m.into())
    }
    pub fn failed(m: impl Into<String>) -> OpError {
        OpError::Failed(m.into())
    }

    /// The same failure, told as `message`.
    pub fn reworded(self, message: String) -> OpError {
        OpError::Context {
            message,
            source: Box::new(self),
        }
    }

    /// What kind of failure this is, whatever area it came from (looking
    /// through a shared or reworded one): the one classification, which
    /// the daemon turns into a wire code.
    pub fn kind(&self) -> Kind {
        use crate::store::StoreError as S;
        let io = |e: &IoError| match e.source.kind() {
            std::io::ErrorKind::NotFound => Kind::NotFound,
            _ => Kind::Failed,
        };
        match self {
            OpError::Invalid(_) => Kind::Invalid,
            OpError::NotFound(_) => Kind::NotFound,
            OpError::AlreadyExists(_) => Kind::AlreadyExists,
            OpError::Busy(_) => Kind::Busy,
            OpError::Shared(e) => e.kind(),
            OpError::Context { source, .. } => source.kind(),
            OpError::Store(S::Missing(_)) => Kind::NotFound,
            OpError::Store(S::Locked(_)) => Kind::Busy,
            OpError::Io(e) => io(e),
            OpError::Kernel(crate::kernel::KernelError::Io(e)) => io(e),
            OpError::Bundle(crate::image::bundle::BundleError::Io(e)) => io(e),
            OpError::Disk(super::disks::DiskError::Io(e)) => io(e),
            OpError::WarmKey(super::warm::WarmKeyError::Store(S::Missing(_))) => Kind::NotFound,
            OpError::WarmKey(super::warm::WarmKeyError::Store(S::Locked(_))) => Kind::Busy,
            OpError::Net(crate::host::net::NetError::Missing(_)) => Kind::NotFound,
            OpError::Kernel(crate::kernel::KernelError::BadInput(_))
            | OpError::Bundle(_)
            | OpError::Disk(super::disks::DiskError::Refused(_))
            | OpError::Build(crate::image::build::BuildError::Refused(_))
            | OpError::Workspace(
                crate::workspace::WorkspaceError::NotARepo(_)
                | crate::workspace::WorkspaceError::Refused(_),
            )
            | OpError::WarmKey(super::warm::WarmKeyError::KeyFile { .. })
            | OpError::Net(crate::host::net::NetError::Policy(_))
            | OpError::Name(_)
            | OpError::Signal(_) => Kind::Invalid,
            _ => Kind::Failed,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == Kind::NotFound
    }
    pub fn is_already_exists(&self) -> bool {
        self.kind() == Kind::AlreadyExists
    }
    pub fn is_busy(&self) -> bool {
        self.kind() == Kind::Busy
    }
}

/// The kinds of failure an operation has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invalid,
    NotFound,
    AlreadyExists,
    Busy,
    Failed,
}
