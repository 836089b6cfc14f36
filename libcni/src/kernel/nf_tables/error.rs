//! What can go wrong talking to nf_tables: the socket, the kernel's verdict on one message of a
//! transaction, or a reply we cannot read.

use std::time::Duration;

pub use crate::kernel::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nf_tables socket: {0}")]
    Socket(#[source] std::io::Error),
    /// Message `index` (0-based, batch markers not counted) of a transaction was refused; the
    /// whole transaction was rolled back.
    #[error("nf_tables refused message {index} ({op}): {errno}{}", detail(.message))]
    Rejected {
        index: usize,
        op: String,
        errno: Errno,
        /// The kernel's extended-ack text, when it gave one.
        message: Option<String>,
    },
    /// The kernel refused the batch as a whole (not any one message of it).
    #[error("nf_tables refused the batch: {errno}{}", detail(.message))]
    Batch {
        errno: Errno,
        message: Option<String>,
    },
    /// A lookup or dump request failed.
    #[error("nf_tables {op}: {errno}")]
    Request { op: String, errno: Errno },
    #[error("no reply from nf_tables within {0:?}")]
    Timeout(Duration),
    /// Replies were lost because the socket's receive buffer overflowed; whether the
    /// transaction was committed is unknown.
    #[error("nf_tables replies were lost (receive buffer overrun)")]
    Overrun,
    /// A dump changed under us more often than we retry.
    #[error("nf_tables dump kept being interrupted by concurrent changes")]
    Interrupted,
    #[error("unreadable reply from nf_tables: {0}")]
    Decode(String),
    #[error("invalid nf_tables request: {0}")]
    Invalid(String),
}

fn detail(message: &Option<String>) -> String {
    message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default()
}

impl Error {
    /// The kernel's errno, when the kernel refused something.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Rejected { errno, .. }
            | Error::Batch { errno, .. }
            | Error::Request { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// ENOENT: something the request refers to does not exist (yet).
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(Errno::NotFound)
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::Exists)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_names_the_message_and_its_errno() {
        let e = Error::Rejected {
            index: 2,
            op: "add rule inet t c".into(),
            errno: Errno::NotFound,
            message: None,
        };
        assert!(e.is_not_found());
        assert!(
            e.to_string().contains("message 2 (add rule inet t c)"),
            "{e}"
        );
    }
}
