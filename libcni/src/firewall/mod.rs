//! Firewall state of the plugins: masquerade (bridge `ipMasq`), MAC spoof checks and port
//! forwarding. nftables first, over netlink in process (`nftables`, on `crate::kernel::nf_tables`);
//! iptables for configs that ask for it. Every rule carries its owner's key (`owner`).

pub mod check;
pub mod driver;
pub mod error;
pub mod handles;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_bytes("abc", 128), "abc");
        assert_eq!(truncate_bytes("ééé", 3), "é");
        assert_eq!(truncate_bytes("ééé", 4), "éé");
    }
}
