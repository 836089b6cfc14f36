//! What can go wrong applying firewall rules: the in-process nf_tables client, or the
//! iptables / nft command-line tools (started, then refusing), each given its spec code here.

use crate::kernel::nf_tables;
use crate::protocol::error::Error;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Nftables(#[from] nf_tables::Error),
    /// The tool could not be started or waited for.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The tool ran and refused; `stderr` is what it said.
    #[error("{program} failed: {stderr}")]
    Refused {
        program: &'static str,
        stderr: String,
    },
}

impl FirewallError {
    /// For `map_err` on starting or waiting for `program`.
    pub fn spawn(program: &'static str) -> impl Fn(std::io::Error) -> FirewallError {
        move |source| FirewallError::Spawn { program, source }
    }

    pub fn refused(program: &'static str, stderr: &[u8]) -> FirewallError {
        FirewallError::Refused {
            program,
            stderr: String::from_utf8_lossy(stderr).trim().to_string(),
        }
    }

    /// A table or chain the request refers to does not exist. The tools say so only in text
    /// (`nft` prints strerror(ENOENT)), read here and nowhere else.
    pub fn is_not_found(&self) -> bool {
        match self {
            FirewallError::Nftables(e) => e.is_not_found(),
            FirewallError::Refused { stderr, .. } => stderr.contains("No such file or directory"),
            FirewallError::Spawn { .. } => false,
        }
    }
}

/// The one place a firewall failure gets its spec code: none fits (Go's `ErrInternal`).
impl From<FirewallError> for Error {
    fn from(e: FirewallError) -> Error {
        let errno = match &e {
            FirewallError::Nftables(e) => e.errno(),
            _ => None,
        };
        Error::internal(e.to_string()).with_errno(errno)
    }
}

impl From<nf_tables::Error> for Error {
    fn from(e: nf_tables::Error) -> Error {
        FirewallError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::errno::Errno;

    #[test]
    fn kernel_verdicts_survive_the_conversion() {
        let refused = nf_tables::Error::Request {
            op: "get table inet t".into(),
            errno: Errno::NotFound,
        };
        let e = FirewallError::from(refused);
        assert!(e.is_not_found());
        let e = Error::from(e);
        assert_eq!(
            (e.code, e.errno()),
            (crate::Code::Internal, Some(Errno::NotFound))
        );
        let nft = FirewallError::refused("nft", b"Error: No such file or directory\n");
        assert!(nft.is_not_found());
        assert!(!FirewallError::refused("nft", b"syntax error").is_not_found());
    }
}
