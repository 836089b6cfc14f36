//! Masquerade for bridge networks (`ipMasq`), on nftables (or iptables when a config asks).
//!
//! One rule per network and subnet, in our own table (iptables: in nat POSTROUTING): traffic from the subnet to anywhere but
//! the subnet (and but multicast) leaves with the host's address — the traffic the reference
//! masquerades per container IP. The rule comes with the network's first container and stays
//! while the network is in use, so DEL has no firewall work; GC removes the rules of a network
//! that has no attachments left.
//!
//! ```text
//! table inet rcni_masquerade {
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 ip daddr != 224.0.0.0/4 masquerade comment "rcni:<hash16(net)> net=<net> subnet=10.88.0.0/16"
//!   }
//! }
//! ```
//!
//! [`remove_reference`] deletes what the Go bridge plugin created for one container, so DEL
//! on an upgraded node cleans up pods the reference set up.

use std::borrow::Cow;

use sha2::Digest;

use ipnetwork::IpNetwork;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfCmd, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::iptables::{self, Family, delete_line, quote, split_rule};
use super::{Backend, Inventory, hash16, nft};
use crate::error::Result;

pub const TABLE: &str = "rcni_masquerade";
pub const CHAIN: &str = "postrouting";

fn network_key(network: &str) -> String {
    format!("rcni:{} ", hash16(network))
}

fn comment(network: &str, subnet: &IpNetwork) -> String {
    let c = format!("{}net={network} subnet={subnet}", network_key(network));
    if c.len() <= 128 {
        c
    } else {
        // Keep the key and the subnet; the name is only for people reading the ruleset.
        format!("{}subnet={subnet}", network_key(network))
    }
}

/// Makes sure traffic from each of `subnets` is masqueraded for `network`.
pub fn ensure(backend: Backend, network: &str, subnets: &[IpNetwork]) -> Result<()> {
    let _lock = super::node_lock("masquerade")?;
    match backend {
        Backend::Nftables => ensure_nft(network, subnets),
        Backend::Iptables => ensure_iptables(network, subnets),
    }
}

fn ensure_nft(network: &str, subnets: &[IpNetwork]) -> Result<()> {
    let rules = nft::list_chain("inet", TABLE, CHAIN)?;
    let present: Vec<String> = rules
        .iter()
        .flatten()
        .filter_map(|r| nft::comment(r).map(str::to_string))
        .collect();
    let mut batch = Vec::new();
    if rules.is_none() {
        batch.push(NfCmd::Add(NfListObject::Table(Table {
            family: NfFamily::INet,
            name: TABLE.into(),
            ..Default::default()
        })));
        batch.push(NfCmd::Add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: CHAIN.into(),
            _type: Some(NfChainType::NAT),
            hook: Some(NfHook::Postrouting),
            prio: Some(100),
            policy: Some(NfChainPolicy::Accept),
            ..Default::default()
        })));
    }
    for subnet in dedup(subnets) {
        let comment = comment(network, &subnet);
        if !present.contains(&comment) {
            batch.push(NfCmd::Add(NfListObject::Rule(rule(subnet, comment))));
        }
    }
    nft::apply(batch)
}

/// The iptables layout: a chain of our own, jumped to from nat POSTROUTING, holding per
/// network and subnet a RETURN for traffic within the subnet and a MASQUERADE for the rest
/// (iptables takes one `-d` per rule).
const IPT_CHAIN: &str = "RCNI-MASQUERADE";

fn iptables_rules(network: &str, subnet: IpNetwork) -> [String; 2] {
    let multicast = if subnet.is_ipv4() {
        "224.0.0.0/4"
    } else {
        "ff00::/8"
    };
    let comment = quote(&comment(network, &subnet));
    [
        format!("-A {IPT_CHAIN} -s {subnet} -d {subnet} -m comment --comment {comment} -j RETURN"),
        format!(
            "-A {IPT_CHAIN} -s {subnet} ! -d {multicast} -m comment --comment {comment} -j MASQUERADE"
        ),
    ]
}

fn family(subnet: &IpNetwork) -> Family {
    if subnet.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

fn ensure_iptables(network: &str, subnets: &[IpNetwork]) -> Result<()> {
    for fam in Family::BOTH {
        let wanted: Vec<IpNetwork> = dedup(subnets)
            .into_iter()
            .filter(|s| family(s) == fam)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let existing = iptables::list_chain(fam, "nat", IPT_CHAIN)?;
        let mut lines = Vec::new();
        if existing.is_none() {
            lines.push(format!(":{IPT_CHAIN} - [0:0]"));
            lines.push(format!("-A POSTROUTING -j {IPT_CHAIN}"));
        }
        let present: Vec<String> = existing
            .iter()
            .flatten()
            .filter_map(|r| comment_arg(&split_rule(r)).map(str::to_string))
            .collect();
        for subnet in wanted {
            if !present.contains(&comment(network, &subnet)) {
                lines.extend(iptables_rules(network, subnet));
            }
        }
        iptables::restore(fam, "nat", &lines)?;
    }
    Ok(())
}

/// Removes every masquerade rule of `network`, in both backends (one deleting transaction
/// each, only where there is something to delete).
pub fn remove_network(network: &str) -> Result<()> {
    let _lock = super::node_lock("masquerade")?;
    let key = network_key(network);
    for fam in Family::BOTH {
        let Some(rules) = iptables::list_chain(fam, "nat", IPT_CHAIN)? else {
            continue;
        };
        let lines: Vec<String> = rules
            .iter()
            .map(|r| split_rule(r))
            .filter(|args| comment_arg(args).is_some_and(|c| c.starts_with(&key)))
            .map(|args| delete_line(&args))
            .collect();
        iptables::restore(fam, "nat", &lines)?;
    }
    if !nft::installed() {
        return Ok(());
    }
    let Some(rules) = nft::list_chain("inet", TABLE, CHAIN)? else {
        return Ok(());
    };
    let batch = nft::delete_cmds(
        NfFamily::INet,
        TABLE,
        &rules
            .iter()
            .filter(|r| nft::comment(r).is_some_and(|c| c.starts_with(&key)))
            .collect::<Vec<_>>(),
    );
    nft::apply(batch)
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

/// Deletes the masquerade state the Go bridge plugin made for (`network`, `container_id`,
/// `ifname`): the `CNI-…` chain and its POSTROUTING jumps (iptables), the rules of
/// `inet cni_plugins_masquerade` (nftables). Keyed by names alone, so it works without the
/// container's addresses.
pub fn remove_reference(
    inv: &Inventory,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<()> {
    let chain = reference_chain(network, container_id);
    let jump = format!("-j {chain}");
    for fam in Family::BOTH
        .into_iter()
        .filter(|f| inv.has_iptables_nat(*f))
    {
        let Some(rules) = iptables::list_chain(fam, "nat", "POSTROUTING")? else {
            continue;
        };
        let mut lines: Vec<String> = rules
            .iter()
            .filter(|r| r.ends_with(&jump))
            .map(|r| delete_line(&split_rule(r)))
            .collect();
        if !lines.is_empty() {
            lines.push(format!("-F {chain}"));
            lines.push(format!("-X {chain}"));
        }
        iptables::restore(fam, "nat", &lines)?;
    }
    if !nft::installed() || !inv.has_nft("inet", "cni_plugins_masquerade") {
        return Ok(());
    }
    let Some(rules) = nft::list_chain("inet", "cni_plugins_masquerade", "masq_checks")? else {
        return Ok(());
    };
    let prefix = reference_comment_prefix(network, container_id, ifname);
    let batch = nft::delete_cmds(
        NfFamily::INet,
        "cni_plugins_masquerade",
        &rules
            .iter()
            .filter(|r| nft::comment(r).is_some_and(|c| c.starts_with(&prefix)))
            .collect::<Vec<_>>(),
    );
    nft::apply(batch)
}

fn dedup(subnets: &[IpNetwork]) -> Vec<IpNetwork> {
    let mut out: Vec<IpNetwork> = Vec::new();
    for s in subnets {
        let net = IpNetwork::new(s.network(), s.prefix()).unwrap_or(*s);
        if !out.contains(&net) {
            out.push(net);
        }
    }
    out
}

fn addr_field(v4: bool, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: if v4 { "ip" } else { "ip6" }.into(),
            field: field.into(),
        },
    )))
}

fn prefix(net: IpNetwork) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.network().to_string().into())),
        len: u32::from(net.prefix()),
    }))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn rule(subnet: IpNetwork, comment: String) -> Rule<'static> {
    let v4 = subnet.is_ipv4();
    let multicast: IpNetwork = if v4 { "224.0.0.0/4" } else { "ff00::/8" }
        .parse()
        .unwrap_or(subnet);
    Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: CHAIN.into(),
        expr: Cow::Owned(vec![
            matches(addr_field(v4, "saddr"), Operator::EQ, prefix(subnet)),
            matches(addr_field(v4, "daddr"), Operator::NEQ, prefix(subnet)),
            matches(addr_field(v4, "daddr"), Operator::NEQ, prefix(multicast)),
            Statement::Masquerade(None),
        ]),
        comment: Some(comment.into()),
        ..Default::default()
    }
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
}
