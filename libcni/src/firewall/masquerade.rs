//! Masquerade for bridge networks (`ipMasq`), per attachment as the reference does: traffic
//! from each container address to anywhere but that address's subnet (and but multicast)
//! leaves with the host's address. ADD adds the attachment's rules, DEL removes them, so once a
//! network's last pod is gone nothing names its addresses or its subnet, and a subnet change
//! applies to the next pod at once.
//!
//! ```text
//! table inet rcni_masquerade {
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr 10.88.0.5 ip daddr != 10.88.0.0/16 ip daddr != 224.0.0.0/4 masquerade comment "<owner>"
//!   }
//! }
//! ```
//!
//! With `ipMasqBackend: "iptables"`: chain `RCNI-MASQUERADE`, jumped to from nat POSTROUTING,
//! `-s <ip> -d <subnet> -j RETURN` then `-s <ip> ! -d <multicast> -j MASQUERADE`, both with
//! the owner's comment.
//!
//! Earlier versions of this suite made one rule per network and subnet (comment
//! `rcni:<hash16(net)> net=… subnet=…`); those go when their network's bridge has no port left
//! ([`remove_network_rules`]) and by GC. [`remove_reference`] deletes what the Go bridge plugin
//! made for a container, so DEL on an upgraded node cleans up pods the reference set up.

use ipnetwork::IpNetwork;
use sha2::Digest;

use super::iptables::{self, Family, delete_line, quote, split_rule};
use super::owner::{Owner, stale};
use super::{hash16, nftables, subnet_of};
use crate::error::Result;
use crate::nf_tables::{self, BaseChain, Batch, Chain, ChainType, Client, Hook, Policy, Rule};

pub const TABLE: &str = "rcni_masquerade";
pub const CHAIN: &str = "postrouting";
const IPT_CHAIN: &str = "RCNI-MASQUERADE";
const NFT: nf_tables::Family = nf_tables::Family::Inet;

fn multicast(v4: bool) -> IpNetwork {
    let (addr, prefix) = if v4 {
        (std::net::Ipv4Addr::new(224, 0, 0, 0).into(), 4)
    } else {
        (
            std::net::Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0).into(),
            8,
        )
    };
    IpNetwork::new(addr, prefix).unwrap_or_else(|_| IpNetwork::from(addr))
}

fn base_objects(batch: &mut Batch) -> nf_tables::Result<()> {
    batch.create_table(NFT, TABLE)?;
    batch.add_chain(&Chain::base(
        NFT,
        TABLE,
        CHAIN,
        BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: nf_tables::priority::SRCNAT,
            policy: Policy::Accept,
        },
    ))?;
    Ok(())
}

/// The attachment's nftables rules: one per container address.
fn nft_rules(owner: &Owner<'_>, ips: &[IpNetwork]) -> Vec<Rule> {
    let comment = owner.comment();
    ips.iter()
        .map(|ip| {
            Rule::new(NFT, TABLE, CHAIN)
                .match_saddr(ip.ip())
                .match_daddr_not(subnet_of(ip))
                .match_daddr_not(multicast(ip.is_ipv4()))
                .masquerade()
                .comment(&comment)
        })
        .collect()
}

fn ipt_rules(owner: &Owner<'_>, ip: &IpNetwork) -> [String; 2] {
    let comment = quote(&owner.comment());
    let host = IpNetwork::from(ip.ip());
    [
        format!(
            "-A {IPT_CHAIN} -s {host} -d {} -m comment --comment {comment} -j RETURN",
            subnet_of(ip)
        ),
        format!(
            "-A {IPT_CHAIN} -s {host} ! -d {} -m comment --comment {comment} -j MASQUERADE",
            multicast(ip.is_ipv4())
        ),
    ]
}

fn family(ip: &IpNetwork) -> Family {
    if ip.is_ipv4() { Family::V4 } else { Family::V6 }
}

/// Masquerades the traffic of `ips`, the attachment's addresses (nftables).
pub fn add_nft(nft: &mut Client, owner: &Owner<'_>, ips: &[IpNetwork]) -> Result<()> {
    nftables::add_rules(nft, &nft_rules(owner, ips), base_objects)
}

/// Masquerades the traffic of `ips`, the attachment's addresses (iptables).
pub fn add_iptables(owner: &Owner<'_>, ips: &[IpNetwork]) -> Result<()> {
    // Creating the chain and its jump is check-then-act: one ADD at a time.
    let _lock = super::node_lock("masquerade")?;
    for fam in Family::BOTH {
        let mine: Vec<&IpNetwork> = ips.iter().filter(|ip| family(ip) == fam).collect();
        if mine.is_empty() {
            continue;
        }
        let mut lines = Vec::new();
        if iptables::list_chain(fam, "nat", IPT_CHAIN)?.is_none() {
            lines.push(format!(":{IPT_CHAIN} - [0:0]"));
            lines.push(format!("-A POSTROUTING -j {IPT_CHAIN}"));
        }
        lines.extend(mine.into_iter().flat_map(|ip| ipt_rules(owner, ip)));
        iptables::restore(fam, "nat", &lines)?;
    }
    Ok(())
}

/// Removes the attachment's masquerade in both backends (a config may have switched between
/// ADD and DEL): one listing of our nftables chain and at most one deleting transaction; the
/// iptables chain is listed only where it exists. Whether an earlier version's per-network
/// rules of the attachment's network are still there.
pub fn remove(nft: &mut Client, owner: &Owner<'_>) -> Result<bool> {
    let earlier = network_rule_key(owner.network);
    let rules = nftables::rules_where(nft, NFT, TABLE, &[CHAIN], |_| true)?;
    let mut network_rules = rules.iter().any(|r| {
        r.comment
            .as_deref()
            .is_some_and(|c| c.starts_with(&earlier))
    });
    let mine = rules
        .into_iter()
        .filter(|r| r.comment.as_deref().is_some_and(|c| owner.owns(c)))
        .collect();
    let relist =
        |nft: &mut Client| nftables::rules_where(nft, NFT, TABLE, &[CHAIN], |c| owner.owns(c));
    nftables::delete(nft, mine, relist)?;
    network_rules |= sweep_iptables(nft, |c| owner.owns(c), |c| c.starts_with(&earlier))?;
    Ok(network_rules)
}

/// How many rules the attachment has in our nftables table and our iptables chain.
pub fn own_rule_count(nft: &mut Client, owner: &Owner<'_>) -> Result<usize> {
    let mut count = nftables::rules_where(nft, NFT, TABLE, &[CHAIN], |c| owner.owns(c))?.len();
    for fam in Family::BOTH {
        if !iptables::chain_may_exist(nft, fam, "nat", IPT_CHAIN)? {
            continue;
        }
        count += iptables::list_chain(fam, "nat", IPT_CHAIN)?
            .unwrap_or_default()
            .iter()
            .filter(|r| comment_arg(&split_rule(r)).is_some_and(|c| owner.owns(c)))
            .count();
    }
    Ok(count)
}

/// Deletes the rules of our iptables chain whose comment `pick` accepts; whether any rule's
/// comment `notice` accepts.
fn sweep_iptables(
    nft: &mut Client,
    pick: impl Fn(&str) -> bool,
    notice: impl Fn(&str) -> bool,
) -> Result<bool> {
    let mut noticed = false;
    for fam in Family::BOTH {
        if !iptables::chain_may_exist(nft, fam, "nat", IPT_CHAIN)? {
            continue;
        }
        let Some(rules) = iptables::list_chain(fam, "nat", IPT_CHAIN)? else {
            continue;
        };
        let mut lines = Vec::new();
        for args in rules.iter().map(|r| split_rule(r)) {
            let Some(comment) = comment_arg(&args) else {
                continue;
            };
            noticed |= notice(comment);
            if pick(comment) {
                lines.push(delete_line(&args));
            }
        }
        iptables::restore(fam, "nat", &lines)?;
    }
    Ok(noticed)
}

/// The comment start of an earlier version's per-network rule.
fn network_rule_key(network: &str) -> String {
    format!("rcni:{} ", hash16(network))
}

/// Removes an earlier version's per-network rules of `network`, in both backends.
pub fn remove_network_rules(nft: &mut Client, network: &str) -> Result<()> {
    let key = network_rule_key(network);
    nftables::remove_where(nft, NFT, TABLE, &[CHAIN], |c| c.starts_with(&key))?;
    sweep_iptables(nft, |c| c.starts_with(&key), |_| false).map(drop)
}

/// GC: removes `network`'s masquerade of attachments not in `valid`, and the earlier
/// per-network rules once no attachment is left.
pub fn retain(network: &str, valid: &[crate::conf::Attachment]) -> Result<()> {
    let mut nft = nftables::open()?;
    let pick = |c: &str| stale(network, valid, c);
    let removed = nftables::remove_where(&mut nft, NFT, TABLE, &[CHAIN], pick)
        .and(sweep_iptables(&mut nft, pick, |_| false).map(drop));
    if valid.is_empty() {
        return removed.and(remove_network_rules(&mut nft, network));
    }
    removed
}

fn comment_arg(args: &[String]) -> Option<&str> {
    args.iter()
        .position(|a| a == "--comment")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The Go bridge's iptables chain of a container: `CNI-` + 24 hex digits of
/// SHA-512(network + containerID).
pub fn reference_chain(network: &str, container_id: &str) -> String {
    let digest = sha2::Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("CNI-{}", &hex[..24])
}

/// The prefix of the Go bridge's nftables masquerade comments for one attachment.
pub fn reference_comment_prefix(network: &str, container_id: &str, ifname: &str) -> String {
    format!(
        "{}-{}",
        hash16(network),
        hash16(&format!("{ifname}:{container_id}"))
    )
}

/// Deletes the masquerade state the Go bridge plugin made for the attachment: the `CNI-…`
/// chain and its POSTROUTING jumps (iptables), the rules of `inet cni_plugins_masquerade`
/// (nftables). Keyed by names alone, so it works without the container's addresses; only what
/// exists is listed.
pub fn remove_reference(nft: &mut Client, owner: &Owner<'_>) -> Result<()> {
    let chain = reference_chain(owner.network, owner.container_id);
    let jump = format!("-j {chain}");
    for fam in Family::BOTH {
        if !iptables::chain_may_exist(nft, fam, "nat", &chain)? {
            continue;
        }
        let Some(rules) = iptables::list_chain(fam, "nat", "POSTROUTING")? else {
            continue;
        };
        let mut lines: Vec<String> = rules
            .iter()
            .filter(|r| r.ends_with(&jump))
            .map(|r| delete_line(&split_rule(r)))
            .collect();
        if iptables::list_chain(fam, "nat", &chain)?.is_some() {
            lines.push(format!("-F {chain}"));
            lines.push(format!("-X {chain}"));
        }
        iptables::restore(fam, "nat", &lines)?;
    }
    let prefix = reference_comment_prefix(owner.network, owner.container_id, owner.ifname);
    nftables::remove_where(nft, NFT, "cni_plugins_masquerade", &["masq_checks"], |c| {
        c.starts_with(&prefix)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_names() {
        // The reference's own test vectors.
        assert_eq!(
            reference_chain("test", "1234"),
            "CNI-2bbe0c48b91a7d1b8a6753a8"
        );
        assert_eq!(
            reference_comment_prefix("unit-test", "one", "eth0"),
            "6fd94d501e58f0aa-287fc69eff0574a2"
        );
    }

    #[test]
    fn iptables_rules_per_address() {
        let owner = Owner {
            network: "net",
            container_id: "c1",
            ifname: "eth0",
        };
        let ip: IpNetwork = "10.88.0.5/16".parse().unwrap();
        let [ret, masq] = ipt_rules(&owner, &ip);
        assert!(ret.starts_with("-A RCNI-MASQUERADE -s 10.88.0.5/32 -d 10.88.0.0/16 "));
        assert!(ret.ends_with("-j RETURN"));
        assert!(masq.contains("-s 10.88.0.5/32 ! -d 224.0.0.0/4 "));
        let ip6: IpNetwork = "fd00::5/64".parse().unwrap();
        let [ret, masq] = ipt_rules(&owner, &ip6);
        assert!(ret.contains("-s fd00::5/128 -d fd00::/64 "));
        assert!(masq.contains("! -d ff00::/8 "));
    }
}
