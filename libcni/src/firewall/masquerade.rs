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
//! ADD records its nftables rules' handles (`handles`, kind `Masquerade`) and DEL deletes by
//! them once the kernel confirms them, without listing a chain that holds every pod's rules.
//!
//! Earlier versions of this suite made one rule per network and subnet (comment
//! `rcni:<hash16(net)> net=… subnet=…`); those go when their network's bridge has no port left
//! ([`remove_network_rules`]) and by GC. [`remove_reference`] deletes what the Go bridge plugin
//! made for a container, so DEL on an upgraded node cleans up pods the reference set up.

use ipnetwork::IpNetwork;

use super::check::Tally;
use super::handles::{self, Kind};
use super::iptables::{self, Family, delete_line, quote, split_rule};
use super::owner::{Owner, stale};
use super::{nftables, subnet_of};
use crate::hash::{chain_name, hash16};
use crate::kernel::nf_tables::{self, BaseChain, Batch, Chain, ChainType, Client, Hook, Rule};
use crate::protocol::error::{self, Result};

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
    let postrouting = BaseChain::accepting(
        ChainType::Nat,
        Hook::Postrouting,
        nf_tables::priority::SRCNAT,
    );
    batch.add_chain(&Chain::base(NFT, TABLE, CHAIN, postrouting))?;
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

/// Masquerades the traffic of `ips`, the attachment's addresses (nftables), recording the
/// rules' handles for DEL.
pub fn add_nft(nft: &mut Client, owner: &Owner<'_>, ips: &[IpNetwork]) -> Result<()> {
    let before = handles::before_add(Kind::Masquerade, owner);
    let added = nftables::add_rules_echoed(nft, &nft_rules(owner, ips), base_objects)?;
    handles::after_add(Kind::Masquerade, owner, before, &added);
    Ok(())
}

/// Masquerades the traffic of `ips`, the attachment's addresses (iptables).
pub fn add_iptables(owner: &Owner<'_>, ips: &[IpNetwork]) -> Result<()> {
    // Creating the chain and its jump is check-then-act: one ADD at a time.
    let _lock = crate::kernel::lock::node_lock("masquerade")?;
    for fam in Family::BOTH {
        let mine: Vec<&IpNetwork> = ips.iter().filter(|ip| Family::of(ip.ip()) == fam).collect();
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
/// ADD and DEL): by the handles ADD recorded when the kernel confirms them, else through one
/// listing of our nftables chain (which holds every pod's rules); at most one deleting
/// transaction; the iptables chain is listed only where it exists. Whether an earlier
/// version's per-network rules of the attachment's network may still be there.
pub fn remove(nft: &mut Client, owner: &Owner<'_>) -> Result<bool> {
    let earlier = network_rule_key(owner.network);
    let (mine, network_rules) = match handles::confirmed(Kind::Masquerade, nft, owner) {
        Some(mine) => (mine, network_rules_known(nft, owner.network, &earlier)?),
        None => {
            let rules = nftables::rules_where(nft, NFT, TABLE, &[CHAIN], |_| true)?;
            let network_rules = rules.iter().any(|r| {
                r.comment
                    .as_deref()
                    .is_some_and(|c| c.starts_with(&earlier))
            });
            handles::set_network_masquerade(owner.network, network_rules);
            let mine = rules
                .into_iter()
                .filter(|r| r.comment.as_deref().is_some_and(|c| owner.owns(c)))
                .collect();
            (mine, network_rules)
        }
    };
    let relist =
        |nft: &mut Client| nftables::rules_where(nft, NFT, TABLE, &[CHAIN], |c| owner.owns(c));
    nftables::delete(nft, mine, relist)?;
    handles::forget(Kind::Masquerade, owner);
    let iptables = sweep_iptables(nft, |c| owner.owns(c), |c| c.starts_with(&earlier))?;
    Ok(network_rules || iptables)
}

/// Whether an earlier version's per-network rules of `network` are in our chain: as last
/// noted in this namespace, else looked for once (this version makes none, so "none" stays
/// true).
fn network_rules_known(nft: &mut Client, network: &str, earlier: &str) -> Result<bool> {
    if let Some(present) = handles::network_masquerade(network) {
        return Ok(present);
    }
    let found =
        !nftables::rules_where(nft, NFT, TABLE, &[CHAIN], |c| c.starts_with(earlier))?.is_empty();
    handles::set_network_masquerade(network, found);
    Ok(found)
}

/// The rules of our iptables chain in `fam`, split into arguments; listed only where the
/// chain may exist.
fn iptables_rules(nft: &mut Client, fam: Family) -> Result<Vec<Vec<String>>> {
    if !iptables::chain_may_exist(nft, fam, "nat", IPT_CHAIN)? {
        return Ok(Vec::new());
    }
    let rules = iptables::list_chain(fam, "nat", IPT_CHAIN)?.unwrap_or_default();
    Ok(rules.iter().map(|r| split_rule(r)).collect())
}

/// How many rules the attachment has in our nftables table and our iptables chain.
pub fn own_rule_count(nft: &mut Client, owner: &Owner<'_>) -> Result<usize> {
    let mut count = nftables::rules_where(nft, NFT, TABLE, &[CHAIN], |c| owner.owns(c))?.len();
    for fam in Family::BOTH {
        count += iptables_rules(nft, fam)?
            .iter()
            .filter(|r| comment_arg(r).is_some_and(|c| owner.owns(c)))
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
        let mut lines = Vec::new();
        for args in iptables_rules(nft, fam)? {
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

/// CHECK: what our nftables chain holds for the attachment (a rule per address), and whether
/// an earlier version's per-network rules of its network are there (its pods rely on them).
pub fn tally_nft(nft: &mut Client, owner: &Owner<'_>, ips: &[IpNetwork]) -> Result<[Tally; 2]> {
    let earlier = network_rule_key(owner.network);
    let rules = nftables::rules_where(nft, NFT, TABLE, &[CHAIN], |c| {
        owner.owns(c) || c.starts_with(&earlier)
    })?;
    let owned = rules
        .iter()
        .filter(|r| r.comment.as_deref().is_some_and(|c| owner.owns(c)))
        .count();
    let mut ours = Tally::new(format!("{NFT} {TABLE}"));
    ours.count("masquerade rules", owned, ips.len());
    let mut network = Tally::new(format!("{NFT} {TABLE} of an earlier version"));
    network.count("per-network rules", rules.len() - owned, 1);
    Ok([ours, network])
}

/// CHECK: what our iptables chain holds for the attachment (two rules per address), and
/// whether an earlier version's per-network rules are there; listed only where it may exist.
pub fn tally_iptables(
    nft: &mut Client,
    owner: &Owner<'_>,
    ips: &[IpNetwork],
) -> Result<[Tally; 2]> {
    let earlier = network_rule_key(owner.network);
    let mut ours = Tally::new(format!("iptables {IPT_CHAIN}"));
    let mut earlier_rules = 0;
    for fam in Family::BOTH {
        let addresses = ips.iter().filter(|ip| Family::of(ip.ip()) == fam).count();
        if addresses == 0 {
            continue;
        }
        let rules = iptables_rules(nft, fam)?;
        let comments = || rules.iter().filter_map(|args| comment_arg(args));
        let owned = comments().filter(|c| owner.owns(c)).count();
        earlier_rules += comments().filter(|c| c.starts_with(&earlier)).count();
        ours.count(format!("{} rules", fam.program()), owned, 2 * addresses);
    }
    let mut network = Tally::new(format!("iptables {IPT_CHAIN} of an earlier version"));
    network.count("per-network rules", earlier_rules, 1);
    Ok([ours, network])
}

/// The comment start of an earlier version's per-network rule.
fn network_rule_key(network: &str) -> String {
    format!("rcni:{} ", hash16(network))
}

/// Removes an earlier version's per-network rules of `network`, in both backends.
pub fn remove_network_rules(nft: &mut Client, network: &str) -> Result<()> {
    let key = network_rule_key(network);
    nftables::remove_where(nft, NFT, TABLE, &[CHAIN], |c| c.starts_with(&key))?;
    sweep_iptables(nft, |c| c.starts_with(&key), |_| false)?;
    handles::set_network_masquerade(network, false);
    Ok(())
}

/// GC: removes `network`'s masquerade of attachments not in `valid`, and the earlier
/// per-network rules once no attachment is left.
pub fn retain(network: &str, valid: &[crate::protocol::conf::Attachment]) -> Result<()> {
    let mut nft = nftables::open()?;
    let pick = |c: &str| stale(network, valid, c);
    let nf_tables = nftables::remove_where(&mut nft, NFT, TABLE, &[CHAIN], pick);
    handles::forget_stale(network, valid);
    let iptables = sweep_iptables(&mut nft, pick, |_| false).map(drop);
    let network_rules = match valid.is_empty() {
        true => remove_network_rules(&mut nft, network),
        false => Ok(()),
    };
    error::all([nf_tables, iptables, network_rules])
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
    chain_name("CNI-", &format!("{network}{container_id}"))
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
    for fam in Family::BOTH {
        if !iptables::chain_may_exist(nft, fam, "nat", &chain)? {
            continue;
        }
        let mut lines: Vec<String> = reference_jumps(fam, &chain)?
            .iter()
            .map(|r| delete_line(&split_rule(r)))
            .collect();
        if iptables::list_chain(fam, "nat", &chain)?.is_some() {
            lines.push(format!("-F {chain}"));
            lines.push(format!("-X {chain}"));
        }
        iptables::restore(fam, "nat", &lines)?;
    }
    nftables::remove_where(nft, NFT, REFERENCE_TABLE, &[REFERENCE_CHAIN], |c| {
        reference_owns(owner, c)
    })
}

/// The Go bridge's `inet` table and the chain of its per-address rules.
const REFERENCE_TABLE: &str = "cni_plugins_masquerade";
const REFERENCE_CHAIN: &str = "masq_checks";

/// Whether a comment in the Go bridge's nftables table marks the attachment's rules.
fn reference_owns(owner: &Owner<'_>, comment: &str) -> bool {
    comment.starts_with(&reference_comment_prefix(
        owner.network,
        owner.container_id,
        owner.ifname,
    ))
}

/// POSTROUTING's jumps to the Go bridge's chain of a container (one per address).
fn reference_jumps(fam: Family, chain: &str) -> Result<Vec<String>> {
    let jump = format!("-j {chain}");
    let rules = iptables::list_chain(fam, "nat", "POSTROUTING")?.unwrap_or_default();
    Ok(rules.into_iter().filter(|r| r.ends_with(&jump)).collect())
}

/// CHECK: what the Go bridge's iptables chain of the container holds, per family: for each
/// address a rule accepting its subnet and a MASQUERADE, and POSTROUTING's jump; listed only
/// where the chain may exist.
pub fn reference_tally_iptables(
    nft: &mut Client,
    owner: &Owner<'_>,
    ips: &[IpNetwork],
) -> Result<Tally> {
    let chain = reference_chain(owner.network, owner.container_id);
    let mut tally = Tally::new(format!("the reference's iptables {chain}"));
    for fam in Family::BOTH {
        let addresses = ips.iter().filter(|ip| Family::of(ip.ip()) == fam).count();
        if addresses == 0 {
            continue;
        }
        let (mut accept, mut masquerade, mut jumps) = (0, 0, 0);
        if iptables::chain_may_exist(nft, fam, "nat", &chain)? {
            let rules = iptables::list_chain(fam, "nat", &chain)?.unwrap_or_default();
            accept = rules.iter().filter(|r| r.ends_with("-j ACCEPT")).count();
            masquerade = rules
                .iter()
                .filter(|r| r.ends_with("-j MASQUERADE"))
                .count();
            jumps = reference_jumps(fam, &chain)?.len();
        }
        let program = fam.program();
        tally.count(format!("{program} subnet rules"), accept, addresses);
        tally.count(format!("{program} MASQUERADE rules"), masquerade, addresses);
        tally.count(
            format!("{program} jumps from POSTROUTING"),
            jumps,
            addresses,
        );
    }
    Ok(tally)
}

/// CHECK: the Go bridge's nftables rules of the attachment, one per address.
pub fn reference_tally_nft(
    nft: &mut Client,
    owner: &Owner<'_>,
    ips: &[IpNetwork],
) -> Result<Tally> {
    let rules = nftables::rules_where(nft, NFT, REFERENCE_TABLE, &[REFERENCE_CHAIN], |c| {
        reference_owns(owner, c)
    })?;
    let mut tally = Tally::new(format!("the reference's {NFT} {REFERENCE_TABLE}"));
    tally.count("masquerade rules", rules.len(), ips.len());
    Ok(tally)
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
