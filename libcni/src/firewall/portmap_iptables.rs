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

use sha2::Digest;

use super::iptables::{self, Family, delete_line, quote, split_rule};
use super::owner::{Owner, network_key};
use super::portmap::{Attachment, Mapping};
use super::{hash16, subnet_of};
use crate::error::Result;
use crate::nf_tables::Client;

const DNAT: &str = "CNI-HOSTPORT-DNAT";
const SETMARK: &str = "CNI-HOSTPORT-SETMARK";
const MASQ: &str = "CNI-HOSTPORT-MASQ";

/// `RCNI-DN-` + 20 hex digits keyed by the owner (network, container ID, ifname): 28
/// characters.
pub fn chain(owner: &Owner<'_>) -> String {
    format!(
        "RCNI-DN-{}{}",
        &hash16(owner.network)[..8],
        &hash16(&format!("{}:{}", owner.ifname, owner.container_id))[..12]
    )
}

/// The Go portmap's chain for a container: `CNI-DN-` + hex(SHA-512(network + ID)), 28 chars.
pub fn reference_chain(network: &str, container_id: &str) -> String {
    let digest = sha2::Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("CNI-DN-{}", &hex[..21])
}

fn family_of(ip: &IpAddr) -> Family {
    if ip.is_ipv4() { Family::V4 } else { Family::V6 }
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
fn mappings_for<'a>(a: &'a Attachment<'_>, ip: &IpAddr) -> impl Iterator<Item = &'a Mapping> {
    let v4 = ip.is_ipv4();
    a.mappings
        .iter()
        .filter(move |m| m.host_ip.is_none_or(|h| h.is_ipv4() == v4))
}

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
    for m in mappings_for(a, ip) {
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
        if mappings_for(a, ip).next().is_none() {
            continue;
        }
        let fam = family_of(ip);
        let mut lines = Vec::new();
        // Declaring a chain in a restore flushes it if it exists: the shared chains are made
        // once, under the node lock, after checking again that no one made them meanwhile.
        let _lock;
        if iptables::list_chain(fam, "nat", DNAT)?.is_none() {
            _lock = super::node_lock("iptables-hostport")?;
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
    let chains = chains_of(owner);
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
        iptables::restore(*fam, "nat", &removal(&entries, &chains, &orphans))?;
    }
    Ok(())
}

/// CHECK: every rule of the attachment's chain and every entry rule is there (counted per
/// family); `Some(what is missing)` otherwise.
pub fn missing(a: &Attachment<'_>) -> Result<Option<String>> {
    let chain = chain(&a.owner);
    let key = a.owner.key();
    for net in a.container_ips {
        let fam = family_of(&net.ip());
        let expected = attachment_lines(a, net);
        let want = |prefix: &str| expected.iter().filter(|l| l.starts_with(prefix)).count();
        let own = iptables::list_chain(fam, "nat", &chain)?
            .unwrap_or_default()
            .len();
        let entries = iptables::list_chain(fam, "nat", DNAT)?
            .unwrap_or_default()
            .iter()
            .filter(|r| r.contains(&key))
            .count();
        let (want_own, want_entries) =
            (want(&format!("-A {chain} ")), want(&format!("-A {DNAT} ")));
        if own < want_own || entries < want_entries {
            return Ok(Some(format!(
                "{net}: {own} of {want_own} rules in {chain}, {entries} of {want_entries} entry rules in {DNAT}"
            )));
        }
    }
    Ok(None)
}

/// GC: removes the chains of `network`'s attachments that are not in `valid` (listed only
/// where `CNI-HOSTPORT-DNAT` may exist).
pub fn retain(nft: &mut Client, network: &str, valid: &[crate::conf::Attachment]) -> Result<()> {
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
    use crate::nf_tables::L4;

    const OWNER: Owner<'static> = Owner {
        network: "net",
        container_id: "c1",
        ifname: "eth0",
    };

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
    fn chain_rules_follow_the_reference_order() {
        let mappings = [Mapping {
            host_port: 8080,
            container_port: 80,
            protocol: L4::Tcp,
            host_ip: None,
        }];
        let ips: [IpNetwork; 1] = ["10.0.0.2/24".parse().unwrap()];
        let a = Attachment {
            owner: OWNER,
            mappings: &mappings,
            container_ips: &ips,
            snat: true,
            masq_all: false,
            conditions_v4: &[],
            conditions_v6: &[],
            mark_bit: 5,
            external_set_mark_chain: None,
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
