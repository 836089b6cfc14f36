//! MAC spoof check for bridge ports (`macspoofchk`): frames entering the bridge from a
//! container's host veth must carry the container's MAC.
//!
//! One rule per attachment in a base chain of our own (not a chain per attachment, which
//! costs a kernel grace period on every ADD and DEL):
//!
//! ```text
//! table bridge rcni_spoofcheck {
//!   chain prerouting { type filter hook prerouting priority -300; policy accept;
//!     iifname "veth1a2b3c4d" ether saddr != 0a:58:0a:01:00:05 drop comment "rcni:<hash16(net)>:<hash16(ifname:cid)> …"
//!   }
//! }
//! ```
//!
//! [`remove_reference`] deletes the Go bridge's per-attachment chains in `bridge nat`.

use std::borrow::Cow;

use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::schema::{Chain, NfCmd, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::{Inventory, hash16, nft};
use crate::error::Result;

pub const TABLE: &str = "rcni_spoofcheck";
pub const CHAIN: &str = "prerouting";

fn network_key(network: &str) -> String {
    format!("rcni:{}:", hash16(network))
}

fn attachment_key(network: &str, container_id: &str, ifname: &str) -> String {
    format!(
        "{}{}",
        network_key(network),
        hash16(&format!("{ifname}:{container_id}"))
    )
}

fn comment(network: &str, container_id: &str, ifname: &str) -> String {
    let c = format!(
        "{} net={network} if={ifname} id={container_id}",
        attachment_key(network, container_id, ifname)
    );
    super::truncate_bytes(&c, 128)
}

/// Adds the check for the port `host_veth`, whose container end has `mac`.
pub fn add(
    network: &str,
    container_id: &str,
    ifname: &str,
    host_veth: &str,
    mac: &str,
) -> Result<()> {
    let mut batch = Vec::new();
    let iifname = Expression::Named(NamedExpression::Meta(Meta {
        key: MetaKey::Iifname,
    }));
    let saddr = Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: "ether".into(),
            field: "saddr".into(),
        },
    )));
    batch.push(NfCmd::Add(NfListObject::Rule(Rule {
        family: NfFamily::Bridge,
        table: TABLE.into(),
        chain: CHAIN.into(),
        expr: Cow::Owned(vec![
            Statement::Match(Match {
                left: iifname,
                right: Expression::String(host_veth.to_string().into()),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: saddr,
                right: Expression::String(mac.to_lowercase().into()),
                op: Operator::NEQ,
            }),
            Statement::Drop(None),
        ]),
        comment: Some(comment(network, container_id, ifname).into()),
        ..Default::default()
    })));
    // Hot path: just the rule; the table and its chain are made by the node's first check.
    if nft::apply_or_missing(batch.clone())? == nft::Applied::Done {
        return Ok(());
    }
    let mut with_base = vec![
        NfCmd::Add(NfListObject::Table(Table {
            family: NfFamily::Bridge,
            name: TABLE.into(),
            ..Default::default()
        })),
        NfCmd::Add(NfListObject::Chain(Chain {
            family: NfFamily::Bridge,
            table: TABLE.into(),
            name: CHAIN.into(),
            _type: Some(NfChainType::Filter),
            hook: Some(NfHook::Prerouting),
            prio: Some(-300),
            policy: Some(NfChainPolicy::Accept),
            ..Default::default()
        })),
    ];
    with_base.extend(batch);
    nft::apply(with_base)
}

/// Removes the rules whose attachment `keep` rejects, among `network`'s (one transaction).
fn remove_where(network: &str, drop: impl Fn(&str) -> bool) -> Result<()> {
    let Some(rules) = nft::list_chain("bridge", TABLE, CHAIN)? else {
        return Ok(());
    };
    let key = network_key(network);
    let batch = nft::delete_cmds(
        NfFamily::Bridge,
        TABLE,
        &rules
            .iter()
            .filter(|r| nft::comment(r).is_some_and(|c| c.starts_with(&key) && drop(c)))
            .collect::<Vec<_>>(),
    );
    nft::apply(batch)
}

/// Removes the check of one attachment.
pub fn remove(inv: &Inventory, network: &str, container_id: &str, ifname: &str) -> Result<()> {
    if !inv.has_nft("bridge", TABLE) {
        return Ok(());
    }
    let key = attachment_key(network, container_id, ifname);
    remove_where(network, |c| c.starts_with(&key))
}

/// GC: removes the checks of `network`'s attachments that are not in `valid`.
pub fn retain(network: &str, valid: &[crate::conf::Attachment]) -> Result<()> {
    let keys: Vec<String> = valid
        .iter()
        .map(|a| attachment_key(network, &a.container_id, &a.ifname))
        .collect();
    remove_where(network, |c| !keys.iter().any(|k| c.starts_with(k.as_str())))
}

/// Deletes what the Go bridge made for one attachment in `bridge nat`: the PREROUTING jump
/// (comment `macspoofchk-<cid>-<ifname>`) and the chains `cni-br-iface-<cid>-<ifname>[-mac]`.
pub fn remove_reference(inv: &Inventory, container_id: &str, ifname: &str) -> Result<()> {
    if !inv.has_nft("bridge", "nat") {
        return Ok(());
    }
    let Some(rules) = nft::list_chain("bridge", "nat", "PREROUTING")? else {
        return Ok(());
    };
    let comment = format!("macspoofchk-{container_id}-{ifname}");
    let mut batch: Vec<NfCmd> = nft::delete_cmds(
        NfFamily::Bridge,
        "nat",
        &rules
            .iter()
            .filter(|r| nft::comment(r) == Some(comment.as_str()))
            .collect::<Vec<_>>(),
    );
    if batch.is_empty() {
        return Ok(());
    }
    let chain = format!("cni-br-iface-{container_id}-{ifname}");
    // The iface chain jumps to the -mac chain: empty both before deleting them.
    let chains = [chain.clone(), format!("{chain}-mac")];
    batch.extend(chains.iter().map(|c| flush_chain(c)));
    for name in chains {
        batch.push(NfCmd::Delete(NfListObject::Chain(Chain {
            family: NfFamily::Bridge,
            table: "nat".into(),
            name: name.into(),
            ..Default::default()
        })));
    }
    nft::apply(batch)
}

fn flush_chain(name: &str) -> NfCmd<'static> {
    NfCmd::Flush(nftables::schema::FlushObject::Chain(Chain {
        family: NfFamily::Bridge,
        table: "nat".into(),
        name: name.to_string().into(),
        ..Default::default()
    }))
}
