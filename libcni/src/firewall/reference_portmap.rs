//! The Go portmap's state for one attachment (see `reference`): its iptables chains
//! (`plugins/meta/portmap/portmap_iptables.go`, the same in 1.1 and 1.9 but for `masqAll`) and
//! its nftables tables (`portmap_nftables.go`, 1.6+).
//!
//! ```text
//! iptables (nat):
//!   PREROUTING, OUTPUT:   -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
//!   POSTROUTING (first):  -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
//!   CNI-HOSTPORT-SETMARK: -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
//!   CNI-HOSTPORT-MASQ:    -m mark --mark 0x2000/0x2000 -j MASQUERADE
//!   CNI-HOSTPORT-DNAT:    -m comment --comment 'dnat name: "<net>" id: "<cid>"' -m multiport -p tcp
//!                         --destination-ports 8080,8081 [conditions] -j CNI-DN-<hash>
//!   CNI-DN-<hash>:        per mapping: hairpin and localhost → SETMARK, then DNAT
//! nftables: ip / ip6 cni_hostport: hostports, masquerading (comment = container ID), and the
//!   hook chains the reference flushes and rewrites on every ADD.
//! ```

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::portmap::{Attachment, REFERENCE_CHAINS, REFERENCE_COMMENT_MAX, REFERENCE_TABLE};
use super::portmap_iptables::{self, DNAT, MASQ, SETMARK};
use super::reference::{Missing, Release, Write, args, delete_lines};
use super::{iptables, nftables, subnet_of};
use crate::kernel::nf_tables::{self, Client};
use crate::protocol::error::{Error, Result};

/// `ip:port`, `[ip6]:port`.
fn ip_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Whether a mapping applies to the container address `ip` (a host IP of the other family
/// does not), and the host IP its rules match on (not an unspecified one).
fn applies(host_ip: Option<IpAddr>, ip: &IpAddr) -> Option<Option<IpAddr>> {
    match host_ip {
        Some(h) if h.is_ipv4() != ip.is_ipv4() => None,
        Some(h) if h.is_unspecified() => Some(None),
        other => Some(other),
    }
}

/// iptables' comment limit, as the reference cuts its comments.
fn trim_comment(comment: String) -> String {
    if comment.len() <= 255 {
        return comment;
    }
    format!("{}...", super::truncate_bytes(&comment, 253))
}

/// The rules of the container's `CNI-DN-…` chain for address `net`, in the reference's
/// order: per mapping, hairpin and localhost to the mark chain, then the DNAT.
fn dn_rules(a: &Attachment<'_>, net: &IpNetwork) -> Vec<Vec<String>> {
    let ip = net.ip();
    let set_mark = a.external_set_mark_chain.unwrap_or(SETMARK);
    let mut rules = Vec::new();
    for m in a.mappings {
        let Some(host_ip) = applies(m.host_ip, &ip) else {
            continue;
        };
        let mut base = args(&["-p", m.protocol.name(), "--dport", &m.host_port.to_string()]);
        if let Some(h) = host_ip {
            base.extend(args(&["-d", &h.to_string()]));
        }
        let with = |tail: &[&str]| [base.clone(), args(tail)].concat();
        if a.snat {
            let from = match (a.masq_all, ip.is_ipv4()) {
                (false, _) => subnet_of(net).to_string(),
                (true, true) => "0.0.0.0/0".to_string(),
                (true, false) => "::/0".to_string(),
            };
            rules.push(with(&["-s", &from, "-j", set_mark]));
            if ip.is_ipv4() && !a.masq_all {
                rules.push(with(&["-s", "127.0.0.1", "-j", set_mark]));
            }
        }
        rules.push(with(&[
            "-j",
            "DNAT",
            "--to-destination",
            &ip_port(ip, m.container_port),
        ]));
    }
    rules
}

/// The entry rules in `CNI-HOSTPORT-DNAT` (without their `-j`): one per protocol, sorted, of at
/// most 15 ports each, over every mapping (the reference does not filter them by family).
fn entry_rules(a: &Attachment<'_>, v4: bool) -> Vec<Vec<String>> {
    let comment = trim_comment(format!(
        "dnat name: \"{}\" id: \"{}\"",
        a.owner.network, a.owner.container_id
    ));
    let mut protocols: Vec<&str> = a.mappings.iter().map(|m| m.protocol.name()).collect();
    protocols.sort_unstable();
    protocols.dedup();
    let conditions = if v4 { a.conditions_v4 } else { a.conditions_v6 };
    let mut rules = Vec::new();
    for proto in protocols {
        let ports: Vec<String> = a
            .mappings
            .iter()
            .filter(|m| m.protocol.name() == proto)
            .map(|m| m.host_port.to_string())
            .collect();
        for chunk in ports.chunks(15) {
            let mut rule = args(&["-m", "comment", "--comment", &comment]);
            rule.extend(args(&["-m", "multiport", "-p", proto]));
            rule.extend(args(&["--destination-ports", &chunk.join(",")]));
            rule.extend(conditions.iter().cloned());
            rules.push(rule);
        }
    }
    rules
}

/// The shared chains, the container's chain and its entry rules, per container address.
pub(super) fn iptables(a: &Attachment<'_>) -> Result<Vec<Write>> {
    let dn = portmap_iptables::reference_chain(a.owner.network, a.owner.container_id);
    let mut writes = Vec::new();
    for net in a.container_ips {
        let mut missing = Missing::new(iptables::Family::of(net.ip()));
        if a.snat && a.external_set_mark_chain.is_none() {
            let mark = format!("{:#x}/{:#x}", 1u32 << a.mark_bit, 1u32 << a.mark_bit);
            missing.chain(SETMARK)?;
            missing.append(
                SETMARK,
                args(&[
                    "-m",
                    "comment",
                    "--comment",
                    "CNI portfwd masquerade mark",
                    "-j",
                    "MARK",
                    "--set-xmark",
                    &mark,
                ]),
            )?;
            missing.chain(MASQ)?;
            missing.append(
                MASQ,
                args(&["-m", "mark", "--mark", &mark, "-j", "MASQUERADE"]),
            )?;
            missing.prepend("POSTROUTING", portmap_iptables::masq_hook())?;
        }
        missing.chain(DNAT)?;
        for hook in ["PREROUTING", "OUTPUT"] {
            missing.append(
                hook,
                args(&["-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT]),
            )?;
        }
        missing.chain(&dn)?;
        for rule in dn_rules(a, net) {
            missing.append(&dn, rule)?;
        }
        for mut rule in entry_rules(a, net.is_ipv4()) {
            rule.extend(args(&["-j", &dn]));
            missing.append(DNAT, rule)?;
        }
        writes.extend(missing.into_write());
    }
    Ok(writes)
}

/// 1.6+: per container address, `ip`/`ip6 cni_hostport` as the reference's ADD transaction
/// leaves it, when its CHECK would not pass (the attachment's rules there are replaced).
pub(super) fn nft(nft: &mut Client, a: &Attachment<'_>, release: Release) -> Result<Vec<Write>> {
    let cid = a.owner.container_id;
    if cid.len() > REFERENCE_COMMENT_MAX {
        return Err(Error::invalid_config(format!(
            "container ID {cid:?} is longer than the {REFERENCE_COMMENT_MAX} characters the \
             reference's nftables comments hold"
        )));
    }
    let mut writes = Vec::new();
    for net in a.container_ips {
        if let Some(script) = nft_script(nft, a, release, net.ip())? {
            writes.push(Write::Nft { script });
        }
    }
    Ok(writes)
}

/// The script for one container address; none when the reference's CHECK would pass.
fn nft_script(
    nft: &mut Client,
    a: &Attachment<'_>,
    release: Release,
    ip: IpAddr,
) -> Result<Option<String>> {
    let cid = a.owner.container_id;
    let (family, word) = if ip.is_ipv4() {
        (nf_tables::Family::Ip, "ip")
    } else {
        (nf_tables::Family::Ip6, "ip6")
    };
    let forwards: Vec<(Option<IpAddr>, &super::portmap::Mapping)> = a
        .mappings
        .iter()
        .filter_map(|m| applies(m.host_ip, &ip).map(|h| (h, m)))
        .collect();
    let masquerades = match (a.snat, ip.is_ipv4()) {
        (false, _) => 0,
        (true, true) => 2,
        (true, false) => 1,
    };
    let present = nftables::rules_where(nft, family, REFERENCE_TABLE, &REFERENCE_CHAINS, |c| {
        c == cid
    })?;
    let count = |chain: &str| present.iter().filter(|r| r.chain == chain).count();
    if hooked(nft, family)?
        && count("hostports") >= forwards.len()
        && count("masquerading") >= masquerades
    {
        return Ok(None);
    }
    let t = format!("{word} {REFERENCE_TABLE}");
    let mut script = nft_chains(&t, a, release, ip);
    script.push_str(&delete_lines(&present));
    for (host_ip, m) in forwards {
        let daddr = host_ip.map_or(String::new(), |h| format!("{word} daddr {h} "));
        script.push_str(&format!(
            "add rule {t} hostports {daddr}{} dport {} dnat to {} comment \"{cid}\"\n",
            m.protocol.name(),
            m.host_port,
            ip_port(ip, m.container_port)
        ));
    }
    if a.snat {
        let mut sources = vec![ip.to_string()];
        if ip.is_ipv4() {
            sources.push("127.0.0.1".into());
        }
        for from in sources {
            script.push_str(&format!(
                "add rule {t} masquerading {word} saddr {from} {word} daddr {ip} masquerade comment \"{cid}\"\n"
            ));
        }
    }
    Ok(Some(script))
}

/// Whether the reference's table of `family` has both its hook rules.
fn hooked(nft: &mut Client, family: nf_tables::Family) -> Result<bool> {
    Ok(!nft
        .list_rules(family, REFERENCE_TABLE, "prerouting")?
        .is_empty()
        && !nft
            .list_rules(family, REFERENCE_TABLE, "output")?
            .is_empty())
}

/// The reference's table `t` and its chains, the hook rules rewritten (their conditions are
/// the config's).
fn nft_chains(t: &str, a: &Attachment<'_>, release: Release, ip: IpAddr) -> String {
    let conditions = if ip.is_ipv4() {
        a.conditions_v4
    } else {
        a.conditions_v6
    };
    let mut hook_match: Vec<&str> = conditions.iter().map(String::as_str).collect();
    if release.guards_local() {
        hook_match.push("fib daddr type local");
    }
    let hook_match = hook_match.join(" ");
    let mut script = format!(
        "add table {t} {{ comment \"CNI portmap plugin\" ; }}\n\
         add chain {t} hostports\n\
         add chain {t} hostip_hostports\n\
         add chain {t} hostports_all\n\
         flush chain {t} hostports_all\n\
         add rule {t} hostports_all jump hostip_hostports\n\
         add rule {t} hostports_all jump hostports\n\
         add chain {t} prerouting {{ type nat hook prerouting priority -100 ; }}\n\
         flush chain {t} prerouting\n\
         add rule {t} prerouting {hook_match} jump hostports_all\n\
         add chain {t} output {{ type nat hook output priority -100 ; }}\n\
         flush chain {t} output\n\
         add rule {t} output {hook_match} jump hostports_all\n"
    );
    if a.snat {
        script.push_str(&format!(
            "add chain {t} masquerading {{ type nat hook postrouting priority 100 ; }}\n"
        ));
    }
    script
}

#[cfg(test)]
mod tests {
    use super::super::portmap::Mapping;
    use super::super::portmap::tests::{attachment, to_80};
    use super::*;
    use crate::kernel::nf_tables::L4;

    fn mappings() -> [Mapping; 3] {
        [
            to_80(8080, L4::Udp, None),
            to_80(8081, L4::Tcp, Some("192.168.1.5")),
            to_80(8082, L4::Tcp, Some("::")),
        ]
    }

    #[test]
    fn dn_chain_rules_follow_the_references_fill_dnat_rules() {
        let mappings = mappings();
        let ips: [IpNetwork; 2] = [
            "10.0.0.2/24".parse().unwrap(),
            "fd00::2/64".parse().unwrap(),
        ];
        let a = attachment(&mappings, &ips);
        let line = |r: &Vec<String>| r.join(" ");
        let v4: Vec<String> = dn_rules(&a, &ips[0]).iter().map(line).collect();
        assert_eq!(
            v4,
            [
                "-p udp --dport 8080 -s 10.0.0.0/24 -j CNI-HOSTPORT-SETMARK",
                "-p udp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
                "-p udp --dport 8080 -j DNAT --to-destination 10.0.0.2:80",
                "-p tcp --dport 8081 -d 192.168.1.5 -s 10.0.0.0/24 -j CNI-HOSTPORT-SETMARK",
                "-p tcp --dport 8081 -d 192.168.1.5 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
                "-p tcp --dport 8081 -d 192.168.1.5 -j DNAT --to-destination 10.0.0.2:80",
            ]
        );
        let v6: Vec<String> = dn_rules(&a, &ips[1]).iter().map(line).collect();
        assert_eq!(
            v6,
            [
                "-p udp --dport 8080 -s fd00::/64 -j CNI-HOSTPORT-SETMARK",
                "-p udp --dport 8080 -j DNAT --to-destination [fd00::2]:80",
                "-p tcp --dport 8082 -s fd00::/64 -j CNI-HOSTPORT-SETMARK",
                "-p tcp --dport 8082 -j DNAT --to-destination [fd00::2]:80",
            ]
        );
        // Entry rules: every mapping, grouped by protocol in sorted order.
        let entries: Vec<String> = entry_rules(&a, true).iter().map(line).collect();
        assert_eq!(
            entries,
            [
                "-m comment --comment dnat name: \"net\" id: \"c1\" -m multiport -p tcp --destination-ports 8081,8082",
                "-m comment --comment dnat name: \"net\" id: \"c1\" -m multiport -p udp --destination-ports 8080",
            ]
        );
    }

    #[test]
    fn masq_all_and_long_port_lists() {
        let mappings: Vec<Mapping> = (1..=16)
            .map(|p| Mapping {
                host_port: 9000 + p,
                container_port: p,
                protocol: L4::Tcp,
                host_ip: None,
            })
            .collect();
        let ips: [IpNetwork; 1] = ["10.0.0.2/24".parse().unwrap()];
        let a = Attachment {
            masq_all: true,
            ..attachment(&mappings, &ips)
        };
        let rules = dn_rules(&a, &ips[0]);
        assert_eq!(rules.len(), 32, "no localhost rule with masqAll");
        assert_eq!(rules[0][4..6], args(&["-s", "0.0.0.0/0"]));
        let entries = entry_rules(&a, true);
        assert_eq!(entries.len(), 2);
        assert!(entries[1].ends_with(&args(&["--destination-ports", "9016"])));
        assert_eq!(trim_comment("x".repeat(300)).len(), 256);
    }
}
