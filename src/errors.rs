//! The one place where an error becomes an [`RpcError`], with its code: an
//! operation's [`OpError`] in the daemon, each area's error in bangerd-root.
//! Bad input is `bad_request`, a missing thing `not_found`, anything else
//! `operation_failed`. Messages are the areas' own (they already say what
//! failed and what to do); nothing is flattened to a bare errno. And back:
//! a bangerd-root answer keeps its kind as an [`OpError`].
//!
//! Nothing imports this module: the `From` impls apply everywhere, in the
//! daemon's handlers and actors and in the helper alike.

use crate::fsutil::IoError;
use crate::ops::OpError;
use crate::protocol::{ErrorCode, RpcError};

impl From<OpError> for RpcError {
    /// The operation's kind ([`OpError::kind`]) is its code; its message
    /// is the area's own.
    fn from(e: OpError) -> Self {
        use crate::ops::error::Kind as K;
        let code = match e.kind() {
            K::Invalid => ErrorCode::BadRequest,
            K::NotFound => ErrorCode::NotFound,
            K::AlreadyExists => ErrorCode::AlreadyExists,
            K::Busy => ErrorCode::Busy,
            K::Failed => ErrorCode::OperationFailed,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<RpcError> for OpError {
    /// bangerd-root's answer, with its kind kept.
    fn from(e: RpcError) -> Self {
        match e.code {
            ErrorCode::NotFound => OpError::NotFound(e.message),
            ErrorCode::AlreadyExists => OpError::AlreadyExists(e.message),
            ErrorCode::BadRequest => OpError::Invalid(e.message),
            ErrorCode::Busy => OpError::Busy(e.message),
            _ => OpError::Failed(e.message),
        }
    }
}

impl From<crate::store::StoreError> for RpcError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError as S;
        let code = match e {
            S::Missing(_) => ErrorCode::NotFound,
            S::Locked(_) => ErrorCode::Busy,
            _ => ErrorCode::OperationFailed,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<IoError> for RpcError {
    fn from(e: IoError) -> Self {
        let code = match e.source.kind() {
            std::io::ErrorKind::NotFound => ErrorCode::NotFound,
            _ => ErrorCode::OperationFailed,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<crate::kernel::KernelError> for RpcError {
    fn from(e: crate::kernel::KernelError) -> Self {
        use crate::kernel::KernelError as K;
        match e {
            K::BadInput(m) => RpcError::bad_request(m),
            K::Io(io) => io.into(),
            K::Failed(m) => RpcError::failed(m),
        }
    }
}

impl From<crate::image::bundle::BundleError> for RpcError {
    fn from(e: crate::image::bundle::BundleError) -> Self {
        use crate::image::bundle::BundleError as B;
        match e {
            B::Io(io) => io.into(),
            other => RpcError::bad_request(other.to_string()),
        }
    }
}

impl From<crate::workspace::WorkspaceError> for RpcError {
    fn from(e: crate::workspace::WorkspaceError) -> Self {
        use crate::workspace::WorkspaceError as W;
        match e {
            W::NotARepo(_) | W::Refused(_) => RpcError::bad_request(e.to_string()),
            other => RpcError::failed(other.to_string()),
        }
    }
}

impl From<crate::guest::session::AgentError> for RpcError {
    fn from(e: crate::guest::session::AgentError) -> Self {
        RpcError::failed(format!("the guest agent: {e}"))
    }
}

impl From<crate::guest::ssh::SshError> for RpcError {
    fn from(e: crate::guest::ssh::SshError) -> Self {
        RpcError::failed(e.to_string())
    }
}

impl From<crate::vmm::VmmError> for RpcError {
    fn from(e: crate::vmm::VmmError) -> Self {
        RpcError::failed(e.to_string())
    }
}

impl From<crate::names::NameError> for RpcError {
    fn from(e: crate::names::NameError) -> Self {
        RpcError::bad_request(e.to_string())
    }
}

impl From<crate::domain::SignalError> for RpcError {
    fn from(e: crate::domain::SignalError) -> Self {
        RpcError::bad_request(e.to_string())
    }
}

impl From<tokio::task::JoinError> for RpcError {
    fn from(e: tokio::task::JoinError) -> Self {
        RpcError::failed(format!("an internal task failed: {e}"))
    }
}

impl From<crate::ops::disks::DiskError> for RpcError {
    fn from(e: crate::ops::disks::DiskError) -> Self {
        use crate::ops::disks::DiskError as D;
        match e {
            D::Io(io) => io.into(),
            other => RpcError::failed(other.to_string()),
        }
    }
}

impl From<crate::host::net::NetError> for RpcError {
    fn from(e: crate::host::net::NetError) -> Self {
        use crate::host::net::NetError as N;
        match e {
            N::Policy(p) => RpcError::bad_request(p.to_string()),
            N::Missing(_) => RpcError::not_found(e.to_string()),
            N::Host(h) => h.into(),
        }
    }
}

impl From<crate::host::HostError> for RpcError {
    fn from(e: crate::host::HostError) -> Self {
        RpcError::failed(e.to_string())
    }
}

impl From<crate::image::build::BuildError> for RpcError {
    fn from(e: crate::image::build::BuildError) -> Self {
        use crate::image::build::BuildError as B;
        match e {
            B::Refused(m) => RpcError::bad_request(m),
            B::Failed(m) => RpcError::failed(m),
        }
    }
}

impl From<crate::ops::warm::WarmKeyError> for RpcError {
    fn from(e: crate::ops::warm::WarmKeyError) -> Self {
        use crate::ops::warm::WarmKeyError as W;
        match e {
            k @ W::KeyFile { .. } => RpcError::bad_request(k.to_string()),
            W::Store(s) => s.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::IoContext;

    #[test]
    fn io_errors_name_the_operation_and_the_path() {
        let p = std::path::Path::new("/nonexistent/banger/vmlinux");
        let e: RpcError = std::fs::read(p).ctx("reading", p).unwrap_err().into();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(
            e.message
                .starts_with("reading /nonexistent/banger/vmlinux: "),
            "{}",
            e.message
        );
    }

    /// An operation's failure has its area's code and message, also when
    /// it is shared by a job's waiters or told in the operation's words.
    #[test]
    fn an_operation_error_keeps_its_areas_code_when_shared_or_reworded() {
        use crate::workspace::WorkspaceError;
        let area = || WorkspaceError::NotARepo("/tmp/x".into());
        let direct = RpcError::from(area());
        assert_eq!(direct.code, ErrorCode::BadRequest);
        assert_eq!(RpcError::from(OpError::from(area())), direct);
        let shared = OpError::Shared(std::sync::Arc::new(OpError::from(area())));
        assert_eq!(RpcError::from(shared), direct);
        let worded = OpError::from(area()).reworded("preparing: it failed".into());
        let w = RpcError::from(worded);
        assert_eq!(
            (w.code, w.message.as_str()),
            (ErrorCode::BadRequest, "preparing: it failed")
        );
        let missing = OpError::from(crate::store::StoreError::Missing(
            "/nonexistent/state.redb".into(),
        ));
        assert!(missing.is_not_found());
        assert_eq!(RpcError::from(missing).code, ErrorCode::NotFound);
    }
}
