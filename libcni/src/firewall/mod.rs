//! Firewall state of the plugins: masquerade (bridge `ipMasq`) and, later, port forwarding.
//! nftables first, through the `nft` JSON interface; each invocation lists at most our own
//! chain and applies at most one batch.

pub mod iptables;
pub mod masquerade;
pub mod nft;
pub mod portmap;
pub mod portmap_iptables;
pub mod spoofcheck;

use sha2::{Digest, Sha512};

/// Which packet filter a plugin programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

impl Backend {
    /// The configured backend, or nftables when `nft` is installed, else iptables.
    pub fn choose(configured: Option<&str>) -> Backend {
        match configured {
            Some("iptables") => Backend::Iptables,
            Some(_) => Backend::Nftables,
            None if nft::installed() => Backend::Nftables,
            None => Backend::Iptables,
        }
    }
}

/// The first 16 hex digits of SHA-512 of `s`: short, stable keys for comments.
pub fn hash16(s: &str) -> String {
    Sha512::digest(s.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash16_matches_the_reference_vector() {
        // From the reference's ipmasq comment: hex16(sha512("unit-test")).
        assert_eq!(hash16("unit-test"), "6fd94d501e58f0aa");
    }
}
