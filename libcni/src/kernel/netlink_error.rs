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
        crate::kernel::netlink::errno(&self.source)
    }

    pub fn is_not_found(&self) -> bool {
        self.errno().is_some_and(Errno::is_not_found)
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::Exists)
    }
}

/// The one place a netlink failure gets its spec code: none fits (Go's `ErrInternal`); the
/// errno stays on the error for callers.
impl From<NetlinkError> for Error {
    fn from(e: NetlinkError) -> Error {
        Error::internal(e.to_string()).with_errno(e.errno())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::ErrorMessage;

    fn refused(errno: i32) -> NetlinkError {
        let mut msg = ErrorMessage::default();
        msg.code = std::num::NonZeroI32::new(-errno);
        NetlinkError::new(
            "cannot delete \"veth1\"",
            rtnetlink::Error::NetlinkError(msg),
        )
    }

    #[test]
    fn tells_not_found_from_denied_and_keeps_it_on_the_crate_error() {
        assert!(refused(libc::ENODEV).is_not_found());
        assert!(refused(libc::EEXIST).is_exists());
        let denied = refused(libc::EPERM);
        assert!(!denied.is_not_found() && !denied.is_exists());
        let e = Error::from(denied);
        assert_eq!(
            (e.code, e.errno()),
            (crate::Code::Internal, Some(Errno::Denied))
        );
        assert!(e.msg.starts_with("cannot delete \"veth1\": "), "{}", e.msg);
        let other = NetlinkError::new("x", rtnetlink::Error::RequestFailed);
        assert_eq!(other.errno(), None);
    }
}
