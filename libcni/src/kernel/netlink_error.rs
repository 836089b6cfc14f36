//! A refused or failed rtnetlink request: what we were doing, and the kernel's errno when the
//! kernel refused it, so callers tell "no such link" from "not allowed" by type.

use crate::kernel::errno::Errno;
use crate::protocol::error::Error;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    /// What was being done ("cannot delete \"veth1\"").
    pub what: String,
    #[source]
    pub source: rtnetlink::Error,
}

impl NetlinkError {
    pub fn new(what: impl std::fmt::Display, source: rtnetlink::Error) -> NetlinkError {
        NetlinkError {
            what: what.to_string(),
            source,
        }
    }

    /// The kernel's errno, when the kernel refused the request (not a socket or decode failure).
    pub fn errno(&self) -> Option<Errno> {
        errno(&self.source)
    }

    pub fn is_not_found(&self) -> bool {
        self.errno().is_some_and(Errno::is_not_found)
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::Exists)
    }
}

/// The errno of a kernel refusal, if the error is one.
pub fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(Errno::from_code(m.raw_code())),
        _ => None,
    }
}

/// The one place a netlink failure gets its spec code: none fits (Go's `ErrInternal`); the
/// errno stays on the error for callers.
impl From<NetlinkError> for Error {
    fn from(e: NetlinkError) -> Error {
        Error::internal(e.to_string()).with_errno(e.errno())
    }
}
