//! Masquerade for bridge networks (`ipMasq`), on nftables.
//!
//! One rule per network and subnet, in our own table: traffic from the subnet to anywhere but
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

use std::borrow::Cow;
use std::fs::File;

use ipnetwork::IpNetwork;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfCmd, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::{hash16, nft};
use crate::error::{Error, Result};

pub const TABLE: &str = "rcni_masquerade";
pub const CHAIN: &str = "postrouting";
const LOCK: &str = "/run/cni-rs/masquerade.lock";

fn network_key(network: &str) -> String {
    format!("rcni:{} ", hash16(network))
}

fn comment(network: &str, subnet: &IpNetwork) -> String {
    let mut c = format!("{}net={network} subnet={subnet}", network_key(network));
    if c.len() > 128 {
        // Keep the key and the subnet; the name is only for people reading the ruleset.
        c = format!("{}subnet={subnet}", network_key(network));
    }
    c
}

/// Serialises check-then-add across concurrent ADDs, so a network's rule is added once.
fn lock() -> Result<File> {
    let dir = std::path::Path::new(LOCK)
        .parent()
        .unwrap_or(std::path::Path::new("/run"));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .map_err(|e| Error::io(format!("cannot open {LOCK}: {e}")))?;
    file.lock()
        .map_err(|e| Error::io(format!("cannot lock {LOCK}: {e}")))?;
    Ok(file)
}

/// Makes sure traffic from each of `subnets` is masqueraded for `network`.
pub fn ensure(network: &str, subnets: &[IpNetwork]) -> Result<()> {
    let _lock = lock()?;
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

/// Removes every masquerade rule of `network` (one deleting transaction, only if there are any).
pub fn remove_network(network: &str) -> Result<()> {
    let _lock = lock()?;
    let Some(rules) = nft::list_chain("inet", TABLE, CHAIN)? else {
        return Ok(());
    };
    let key = network_key(network);
    let batch = rules
        .iter()
        .filter(|r| nft::comment(r).is_some_and(|c| c.starts_with(&key)))
        .filter_map(nft::handle)
        .map(|handle| {
            NfCmd::Delete(NfListObject::Rule(Rule {
                family: NfFamily::INet,
                table: TABLE.into(),
                chain: CHAIN.into(),
                handle: Some(handle),
                ..Default::default()
            }))
        })
        .collect();
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
