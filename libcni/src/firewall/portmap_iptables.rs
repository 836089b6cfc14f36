//! Host port forwarding on iptables (`backend: "iptables"`), and removal of what the Go portmap
//! made. The shared chains are the reference's, so a node can run either plugin:
//!
//! ```text
//! PREROUTING, OUTPUT:  -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
//! POSTROUTING:         -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
//! CNI-HOSTPORT-SETMARK: -j MARK --set-xmark <mark>/<mark>
//! CNI-HOSTPORT-MASQ:    -m mark --mark <mark>/<mark> -j MASQUERADE
//! CNI-HOSTPORT-DNAT:    -p tcp --dport 8080 [conditions] -m comment --comment <key> -j RCNI-DN-<hash>
//! RCNI-DN-<hash>:       hairpin / localhost → SETMARK, then DNAT to the container
//! ```
//!
//! Each attachment owns one `RCNI-DN-…` chain and its entry rules, written in one
//! `iptables-restore --noflush` per family; DEL lists `CNI-HOSTPORT-DNAT` once per family
//! where this attachment's chain or the Go portmap's `CNI-DN-…` chain of the container may
//! exist (a netlink lookup: no iptables process on a node without them) and removes both.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::check::Tally;
use super::iptables::{self, Family, delete_line, quote, split_rule};
use super::owner::{Owner, network_key};
use super::portmap::Attachment;
use super::subnet_of;
use crate::hash::{chain_name, sha512_hex};
use crate::kernel::nf_tables::Client;
use crate::protocol::error::Result;

pub(super) const DNAT: &str = "CNI-HOSTPORT-DNAT";
pub(super) const SETMARK: &str = "CNI-HOSTPORT-SETMARK";
pub(super) const MASQ: &str = "CNI-HOSTPORT-MASQ";

/// `RCNI-DN-` + 20 hex digits keyed by the owner (network, container ID, ifname): 28
/// characters.
pub fn chain(owner: &Owner<'_>) -> String {
    format!(
        "RCNI-DN-{}{}",
        sha512_hex(owner.network, 8),
        sha512_hex(&format!("{}:{}", owner.ifname, owner.container_id), 12)
    )
}

/// The Go portmap's chain for a container: `CNI-DN-` + hex(SHA-512(network + ID)), 28 chars.
pub fn reference_chain(network: &str, container_id: &str) -> String {
    chain_name("CNI-DN-", &format!("{network}{container_id}"))
}

/// The shared POSTROUTING jump to [`MASQ`], as the reference writes it.
pub(super) fn masq_hook() -> Vec<String> {
    [
        "-m",
        "comment",
        "--comment",
        "CNI portfwd requiring masquerade",
        "-j",
        MASQ,
    ]
    .map(String::from)
    .to_vec()
}

/// The shared chains and their hooks, for a family that does not have them yet.
fn base_lines(a: &Attachment<'_>) -> Vec<String> {
    let mark = format!("{:#x}", 1u32 << a.mark_bit);
    let mut lines = vec![
        format!(":{DNAT} - [0:0]"),
        format!("-A PREROUTING -m addrtype --dst-type LOCAL -j {DNAT}"),
        format!("-A OUTPUT -m addrtype --dst-type LOCAL -j {DNAT}"),
    ];
    // Made with the shared chains even for configs that do not use them (no `snat`, an
    // external mark chain): a later config that does must find them.
    {
        lines.extend([
            format!(":{SETMARK} - [0:0]"),
            format!(":{MASQ} - [0:0]"),
            format!("-A {SETMARK} -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark {mark}/{mark}"),
            format!("-A {MASQ} -m mark --mark {mark}/{mark} -j MASQUERADE"),
            format!("-I POSTROUTING 1 -m comment --comment \"CNI portfwd requiring masquerade\" -j {MASQ}"),
        ]);
    }
    lines
}

/// The mappings that apply to the family of `ip`: those without a `hostIP` or with one of
/// that family.
/// The attachment's chain and entry rules for the family of `ip`.
fn attachment_lines(a: &Attachment<'_>, net: &IpNetwork) -> Vec<String> {
    let ip = &net.ip();
    let chain = chain(&a.owner);
    let set_mark = a.external_set_mark_chain.unwrap_or(SETMARK);
    let conditions: Vec<String> = if ip.is_ipv4() {
        a.conditions_v4
    } else {
        a.conditions_v6
    }
    .iter()
    .map(|c| quote(c))
    .collect();
    let conditions = if conditions.is_empty() {
        String::new()
    } else {
        format!(" {}", conditions.join(" "))
    };
    let key = quote(&a.owner.comment());
    let target = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let mut lines = vec![format!(":{chain} - [0:0]")];
    let mut entries: Vec<(&str, u16)> = Vec::new();
    for m in a.mappings_for(*ip) {
        let dest = match m.host_ip {
            Some(h) if !h.is_unspecified() => format!(" -d {h}"),
            _ => String::new(),
        };
        let protocol = m.protocol.name();
        let port = format!("-p {protocol} --dport {}{dest}", m.host_port);
        if a.snat {
            let from = if a.masq_all {
                String::new()
            } else {
                format!(" -s {}", subnet_of(net))
            };
            lines.push(format!("-A {chain} {port}{from} -j {set_mark}"));
            if ip.is_ipv4() && !a.masq_all {
                lines.push(format!("-A {chain} {port} -s 127.0.0.1 -j {set_mark}"));
            }
        }
        lines.push(format!(
            "-A {chain} {port} -j DNAT --to-destination {target}:{}",
            m.container_port
        ));
        if !entries.contains(&(protocol, m.host_port)) {
            entries.push((protocol, m.host_port));
        }
    }
    for (proto, port) in entries {
        lines.push(format!(
            "-A {DNAT} -p {proto} --dport {port}{conditions} -m comment --comment {key} -j {chain}"
        ));
    }
    lines
}

/// Adds the attachment's chain and entry rules (and, the first time, the shared chains): one
/// listing and one restore per family that has a mapping (a family whose mappings all have a
/// `hostIP` of the other family gets no chain: nothing would jump to it).
pub fn add(a: &Attachment<'_>) -> Result<()> {
    for net in a.container_ips {
        let ip = &net.ip();
        if a.mappings_for(*ip).next().is_none() {
            continue;
        }
        let fam = Family::of(*ip);
        let mut lines = Vec::new();
        // Declaring a chain in a restore flushes it if it exists: the shared chains are made
        // once, under the node lock, after checking again that no one made them meanwhile.
        let _lock;
        if iptables::list_chain(fam, "nat", DNAT)?.is_none() {
            _lock = crate::kernel::lock::node_lock("iptables-hostport")?;
            if iptables::list_chain(fam, "nat", DNAT)?.is_none() {
                lines.extend(base_lines(a));
            }
        }
        lines.extend(attachment_lines(a, net));
        iptables::restore(fam, "nat", &lines)?;
    }
    Ok(())
}

/// Lines that delete every entry rule jumping to one of `chains` and then the chains, and the
/// chains of `orphans` (found by name) that nothing jumps to.
fn removal(entries: &[String], chains: &[String], orphans: &[String]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut found = Vec::new();
    for rule in entries {
        let args = split_rule(rule);
        if let Some(target) = args
            .iter()
            .position(|a| a == "-j")
            .and_then(|i| args.get(i + 1))
            && chains.contains(target)
        {
            lines.push(delete_line(&args));
            if !found.contains(target) {
                found.push(target.clone());
            }
        }
    }
    for orphan in orphans {
        if !found.contains(orphan) {
            found.push(orphan.clone());
        }
    }
    for chain in found {
        lines.push(format!("-F {chain}"));
        lines.push(format!("-X {chain}"));
    }
    lines
}

/// Where the attachment's chain (ours) or the container's `CNI-DN-…` chain (the Go
/// portmap's) may exist: per family, the chains that may be there (netlink lookups, no iptables
/// process).
pub fn families_to_clean(
    nft: &mut Client,
    owner: &Owner<'_>,
) -> Result<Vec<(Family, Vec<String>)>> {
    let mut families = Vec::new();
    for fam in Family::BOTH {
        let mut present = Vec::new();
        for chain in chains_of(owner) {
            if iptables::chain_may_exist(nft, fam, "nat", &chain)? {
                present.push(chain);
            }
        }
        if !present.is_empty() {
            families.push((fam, present));
        }
    }
    Ok(families)
}

fn chains_of(owner: &Owner<'_>) -> [String; 2] {
    [
        chain(owner),
        reference_chain(owner.network, owner.container_id),
    ]
}

/// Removes, in each family, the attachment's chain and the container's `CNI-DN-…` chain with
/// their entry rules: one listing and one restore per family. A chain that may be there but is
/// not jumped to (an empty chain that earlier versions declared for a family without mappings)
/// is listed by name and removed too.
pub fn remove(families: &[(Family, Vec<String>)], owner: &Owner<'_>) -> Result<()> {
    remove_chains(families, &chains_of(owner))
}

/// `families`: each family with the chains of `chains` that may exist there.
fn remove_chains(families: &[(Family, Vec<String>)], chains: &[String]) -> Result<()> {
    for (fam, present) in families {
        let entries = iptables::list_chain(*fam, "nat", DNAT)?.unwrap_or_default();
        let jumped = |c: &String| {
            entries
                .iter()
                .any(|r| split_rule(r).windows(2).any(|w| w[0] == "-j" && w[1] == *c))
        };
        let mut orphans = Vec::new();
        for c in present.iter().filter(|c| !jumped(c)) {
            if iptables::list_chain(*fam, "nat", c)?.is_some() {
                orphans.push(c.clone());
            }
        }
        iptables::restore(*fam, "nat", &removal(&entries, chains, &orphans))?;
    }
    Ok(())
}

/// The families where the attachment's own chain may exist (netlink lookups).
fn own_families(nft: &mut Client, owner: &Owner<'_>) -> Result<Vec<(Family, Vec<String>)>> {
    let own = chain(owner);
    let mut families = Vec::new();
    for fam in Family::BOTH {
        if iptables::chain_may_exist(nft, fam, "nat", &own)? {
            families.push((fam, vec![own.clone()]));
        }
    }
    Ok(families)
}

/// Removes the attachment's own chain and its entry rules only (rollback: the container's
/// `CNI-DN-…` chain stays).
pub fn remove_own(nft: &mut Client, owner: &Owner<'_>) -> Result<()> {
    remove_chains(&own_families(nft, owner)?, &[chain(owner)])
}

/// How many rules the attachment has in its own chain and as entries to it.
pub fn own_rule_count(nft: &mut Client, owner: &Owner<'_>) -> Result<usize> {
    let own = chain(owner);
    let jump = format!("-j {own}");
    let mut count = 0;
    for (fam, _) in own_families(nft, owner)? {
        count += iptables::list_chain(fam, "nat", &own)?.map_or(0, |r| r.len());
        count += iptables::list_chain(fam, "nat", DNAT)?
            .unwrap_or_default()
            .iter()
            .filter(|r| r.ends_with(&jump))
            .count();
    }
    Ok(count)
}

/// CHECK: what the attachment's chain and its entry rules hold, per family, and the shared
/// chains its rules need; listed only where the chain may exist.
pub fn tally(nft: &mut Client, a: &Attachment<'_>) -> Result<Tally> {
    let chain = chain(&a.owner);
    let key = a.owner.key();
    let mut tally = Tally::new(format!("iptables {chain}"));
    for net in a.container_ips {
        let fam = Family::of(net.ip());
        let expected = attachment_lines(a, net);
        let want = |prefix: &str| expected.iter().filter(|l| l.starts_with(prefix)).count();
        let (mut own, mut entries) = (0, 0);
        if iptables::chain_may_exist(nft, fam, "nat", &chain)? {
            own = listed(fam, &chain)?.len();
            entries = listed(fam, DNAT)?
                .iter()
                .filter(|r| r.contains(&key))
                .count();
        }
        let program = fam.program();
        tally.count(
            format!("{program} rules in {chain}"),
            own,
            want(&format!("-A {chain} ")),
        );
        tally.count(
            format!("{program} entry rules in {DNAT}"),
            entries,
            want(&format!("-A {DNAT} ")),
        );
        if own > 0 {
            count_shared_chains(&mut tally, fam, a)?;
        }
    }
    Ok(tally)
}

/// CHECK: what the Go portmap's `CNI-DN-…` chain of the container and its entry rules hold,
/// per family, as the reference's ADD makes them: per mapping of the family a DNAT rule and
/// (with `snat`) a hairpin mark rule, and a localhost one for IPv4 without `masqAll`; an entry
/// rule per protocol and 15 ports (of every mapping); the shared chains its rules need.
pub fn reference_tally(nft: &mut Client, a: &Attachment<'_>) -> Result<Tally> {
    let chain = reference_chain(a.owner.network, a.owner.container_id);
    let set_mark = format!("-j {}", a.external_set_mark_chain.unwrap_or(SETMARK));
    let jump = format!("-j {chain}");
    let mut tally = Tally::new(format!("the reference's iptables {chain}"));
    for net in a.container_ips {
        let ip = net.ip();
        let fam = Family::of(ip);
        let mappings = a.mappings_for(ip).count();
        let marks_per_mapping = match (a.snat, ip.is_ipv4() && !a.masq_all) {
            (false, _) => 0,
            (true, true) => 2,
            (true, false) => 1,
        };
        let (mut dnat, mut marks, mut entries) = (0, 0, 0);
        if iptables::chain_may_exist(nft, fam, "nat", &chain)? {
            let rules = listed(fam, &chain)?;
            dnat = rules.iter().filter(|r| r.contains(" -j DNAT ")).count();
            marks = rules.iter().filter(|r| r.ends_with(&set_mark)).count();
            entries = listed(fam, DNAT)?
                .iter()
                .filter(|r| r.ends_with(&jump))
                .count();
        }
        let program = fam.program();
        tally.count(format!("{program} DNAT rules"), dnat, mappings);
        tally.count(
            format!("{program} mark rules"),
            marks,
            mappings * marks_per_mapping,
        );
        tally.count(
            format!("{program} entry rules in {DNAT}"),
            entries,
            reference_entry_rules(a),
        );
        if dnat + marks + entries > 0 {
            count_shared_chains(&mut tally, fam, a)?;
        }
    }
    Ok(tally)
}

/// The Go portmap's entry rules: one per protocol for each 15 host ports (multiport), over
/// every mapping whatever its family.
fn reference_entry_rules(a: &Attachment<'_>) -> usize {
    let mut per_protocol: Vec<(crate::kernel::nf_tables::L4, usize)> = Vec::new();
    for m in a.mappings {
        match per_protocol.iter_mut().find(|(p, _)| *p == m.protocol) {
            Some((_, n)) => *n += 1,
            None => per_protocol.push((m.protocol, 1)),
        }
    }
    per_protocol.iter().map(|(_, n)| n.div_ceil(15)).sum()
}

/// Counts what the mark rules of an attachment's chain need (with `snat` and the shared mark
/// chain): the mark in `CNI-HOSTPORT-SETMARK`, the masquerade of marked traffic in
/// `CNI-HOSTPORT-MASQ` and POSTROUTING's jump to it. Tiny chains and one exact rule: their
/// cost does not grow with the pods.
fn count_shared_chains(tally: &mut Tally, fam: Family, a: &Attachment<'_>) -> Result<()> {
    if !a.snat || a.external_set_mark_chain.is_some() {
        return Ok(());
    }
    let mark = format!("{:#x}", 1u32 << a.mark_bit);
    let mark = format!("{mark}/{mark}");
    let program = fam.program();
    let set = listed(fam, SETMARK)?
        .iter()
        .filter(|r| r.contains(&format!("--set-xmark {mark}")))
        .count();
    tally.count(format!("{program} mark rule in {SETMARK}"), set, 1);
    let masq = listed(fam, MASQ)?
        .iter()
        .filter(|r| r.contains(&format!("--mark {mark}")) && r.ends_with("-j MASQUERADE"))
        .count();
    tally.count(format!("{program} masquerade rule in {MASQ}"), masq, 1);
    let jumps = iptables::exists(fam, "nat", "POSTROUTING", &masq_hook())?;
    tally.count(
        format!("{program} jump to {MASQ} in POSTROUTING"),
        usize::from(jumps),
        1,
    );
    Ok(())
}

/// The rules of a nat chain; none when it does not exist.
fn listed(fam: Family, chain: &str) -> Result<Vec<String>> {
    Ok(iptables::list_chain(fam, "nat", chain)?.unwrap_or_default())
}

/// GC: removes the chains of `network`'s attachments that are not in `valid` (listed only
/// where `CNI-HOSTPORT-DNAT` may exist).
pub fn retain(
    nft: &mut Client,
    network: &str,
    valid: &[crate::protocol::conf::Attachment],
) -> Result<()> {
    let keep: Vec<String> = valid
        .iter()
        .map(|v| {
            chain(&Owner {
                network,
                container_id: &v.container_id,
                ifname: &v.ifname,
            })
        })
        .collect();
    let net = network_key(network);
    for fam in Family::BOTH {
        if !iptables::chain_may_exist(nft, fam, "nat", DNAT)? {
            continue;
        }
        let Some(entries) = iptables::list_chain(fam, "nat", DNAT)? else {
            continue;
        };
        let stale: Vec<String> = entries
            .iter()
            .filter(|r| r.contains(&net))
            .filter_map(|r| {
                let args = split_rule(r);
                args.iter()
                    .position(|a| a == "-j")
                    .and_then(|i| args.get(i + 1))
                    .cloned()
            })
            .filter(|c| c.starts_with("RCNI-DN-") && !keep.contains(c))
            .collect();
        iptables::restore(fam, "nat", &removal(&entries, &stale, &[]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::portmap::Mapping;
    use crate::firewall::portmap::tests::{OWNER, attachment, to_80};
    use crate::kernel::nf_tables::L4;

    #[test]
    fn reference_chain_names() {
        // The reference's own test vectors.
        let id = "icee6giejonei6sohng6ahngee7laquohquee9shiGo7fohferakah3Feiyoolu2pei7ciPhoh7shaoX6vai3vuf0ahfaeng8yohb9ceu0daez5hashee8ooYai5wa3y";
        assert_eq!(
            reference_chain("testNetName", id),
            "CNI-DN-bfd599665540dd91d5d28"
        );
        assert_eq!(reference_chain("test", id), "CNI-DN-67e92b96e692a494b6b85");
        assert_eq!(chain(&OWNER).len(), 28);
    }

    #[test]
    fn reference_entry_rules_per_protocol_and_15_ports() {
        let mut mappings: Vec<Mapping> = (1..=16).map(|p| to_80(p, L4::Tcp, None)).collect();
        mappings.push(to_80(53, L4::Udp, None));
        let ips: [IpNetwork; 1] = ["10.0.0.2/24".parse().unwrap()];
        let a = attachment(&mappings, &ips);
        assert_eq!(reference_entry_rules(&a), 3);
        assert_eq!(reference_entry_rules(&Attachment { mappings: &[], ..a }), 0);
    }

    #[test]
    fn chain_rules_follow_the_reference_order() {
        let mappings = [to_80(8080, L4::Tcp, None)];
        let ips: [IpNetwork; 1] = ["10.0.0.2/24".parse().unwrap()];
        let a = Attachment {
            mark_bit: 5,
            ..attachment(&mappings, &ips)
        };
        let c = chain(&OWNER);
        let lines = attachment_lines(&a, &ips[0]);
        assert_eq!(
            lines[1],
            format!("-A {c} -p tcp --dport 8080 -s 10.0.0.0/24 -j CNI-HOSTPORT-SETMARK")
        );
        assert_eq!(
            lines[2],
            format!("-A {c} -p tcp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK")
        );
        assert_eq!(
            lines[3],
            format!("-A {c} -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80")
        );
        assert!(
            lines[4].starts_with("-A CNI-HOSTPORT-DNAT -p tcp --dport 8080 -m comment --comment "),
            "{}",
            lines[4]
        );
        assert!(
            base_lines(&a)
                .iter()
                .any(|l| l.contains("--set-xmark 0x20/0x20"))
        );
    }
}
