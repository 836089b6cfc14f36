//! Who a firewall rule belongs to: one attachment, (network, container ID, ifname). Every
//! rule we make carries its owner's key at the start of its comment, so DEL, CHECK and GC find
//! exactly an attachment's rules (or a network's) without the container's addresses.

use super::truncate_bytes;
use crate::hash::hash16;

/// The longest comment nftables keeps (`NFT_USERDATA_MAXLEN` is 256, nft stops at 128).
pub const COMMENT_MAX: usize = 128;

#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

/// The key every rule of `network` starts its comment with: `rcni:<hash16(network)>:`.
pub fn network_key(network: &str) -> String {
    format!("rcni:{}:", hash16(network))
}

impl Owner<'_> {
    /// `rcni:<hash16(network)>:<hash16(ifname:containerID)>`.
    pub fn key(&self) -> String {
        format!(
            "{}{}",
            network_key(self.network),
            hash16(&format!("{}:{}", self.ifname, self.container_id))
        )
    }

    /// The key, then the names for people reading the ruleset (cut to what nft keeps; quotes
    /// and backslashes left out, they would need escaping in nft and iptables listings).
    pub fn comment(&self) -> String {
        let text = format!(
            "{} net={} if={} id={}",
            self.key(),
            self.network,
            self.ifname,
            self.container_id
        )
        .replace(['"', '\\'], "");
        truncate_bytes(&text, COMMENT_MAX)
    }

    /// Whether a rule's comment marks it as this attachment's.
    pub fn owns(&self, comment: &str) -> bool {
        comment.starts_with(&self.key())
    }
}

/// Whether a comment marks a rule of `network` whose attachment is not among `valid` (GC).
pub fn stale(network: &str, valid: &[crate::protocol::conf::Attachment], comment: &str) -> bool {
    comment.starts_with(&network_key(network))
        && !valid.iter().any(|a| {
            Owner {
                network,
                container_id: &a.container_id,
                ifname: &a.ifname,
            }
            .owns(comment)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_comments() {
        let o = Owner {
            network: "net",
            container_id: "c1",
            ifname: "eth0",
        };
        let key = format!("rcni:{}:{}", hash16("net"), hash16("eth0:c1"));
        assert_eq!(o.key(), key);
        assert_eq!(o.comment(), format!("{key} net=net if=eth0 id=c1"));
        assert!(o.owns(&o.comment()));
        let quoted = Owner {
            container_id: "a\"b\\c",
            ..o
        };
        assert!(!quoted.comment().contains(['"', '\\']));
        let long = "x".repeat(300);
        let long = Owner {
            container_id: &long,
            ..o
        };
        assert_eq!(long.comment().len(), COMMENT_MAX);
        assert!(long.owns(&long.comment()));
    }

    #[test]
    fn stale_is_per_network_and_attachment() {
        let o = Owner {
            network: "net",
            container_id: "c1",
            ifname: "eth0",
        };
        let valid = [crate::protocol::conf::Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        assert!(!stale("net", &valid, &o.comment()));
        assert!(stale("net", &[], &o.comment()));
        assert!(!stale("other", &[], &o.comment()));
    }
}
