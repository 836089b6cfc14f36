//! Firewall state of the plugins: masquerade (bridge `ipMasq`), MAC spoof checks and port
//! forwarding. nftables first, over netlink in process (`nftables`, on `crate::kernel::nf_tables`);
//! iptables for configs that ask for it. Every rule carries its owner's key (`owner`).

pub mod check;
pub mod driver;
pub mod error;
pub mod iptables;
pub mod localnet;
pub mod masquerade;
pub mod nftables;
pub mod owner;
pub mod portmap;
pub mod portmap_conditions;
pub mod portmap_iptables;
pub mod reference;
mod reference_portmap;
pub mod spoofcheck;

pub use owner::Owner;

use sha2::{Digest, Sha512};

/// Which packet filter a plugin programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

impl Backend {
    /// The configured backend; nftables unless iptables is asked for (nf_tables is spoken
    /// over netlink, no tool needs to be installed).
    pub fn choose(configured: Option<&str>) -> Backend {
        match configured {
            Some("iptables") => Backend::Iptables,
            _ => Backend::Nftables,
        }
    }
}

/// The subnet an address with a prefix length is in.
pub fn subnet_of(net: &ipnetwork::IpNetwork) -> ipnetwork::IpNetwork {
    ipnetwork::IpNetwork::new(net.network(), net.prefix()).unwrap_or(*net)
}

/// Cuts `s` to at most `max` bytes, at a character boundary (nft limits comments in bytes).
pub fn truncate_bytes(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
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
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_bytes("abc", 128), "abc");
        assert_eq!(truncate_bytes("ééé", 3), "é");
        assert_eq!(truncate_bytes("ééé", 4), "éé");
    }

    #[test]
    fn hash16_matches_the_reference_vector() {
        // From the reference's ipmasq comment: hex16(sha512("unit-test")).
        assert_eq!(hash16("unit-test"), "6fd94d501e58f0aa");
    }
}
