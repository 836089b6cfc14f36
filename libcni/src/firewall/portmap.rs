//! Host port forwarding (`portmap`) on nftables.
//!
//! One table of our own for both families. The hook chains send only traffic addressed to a
//! local address of the host into `hostports` (never transit traffic); every attachment owns
//! its rules there and in `postrouting`, marked with a comment keyed by (network, container
//! ID, ifname), so concurrent ADDs never touch each other's rules and DEL is exact:
//!
//! ```text
//! table inet rcni_portmap {
//!   chain prerouting  { type nat hook prerouting priority dstnat; fib daddr type local jump hostports }
//!   chain output      { type nat hook output priority -100;       fib daddr type local jump hostports }
//!   chain hostports   { [conditions] [ip daddr <hostIP>] meta nfproto ipv4 tcp dport 8080 dnat ip to 10.88.0.5:80 comment "<key>" }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!                       ct status dnat ip saddr 10.88.0.0/16 ip daddr 10.88.0.5 masquerade comment "<key>" # hairpin
//!                       ct status dnat ip saddr 127.0.0.1 ip daddr 10.88.0.5 masquerade comment "<key>" } # localhost
//! }
//! ```

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use serde_json::Value;

use super::{Inventory, hash16, nft};
use crate::error::Result;

pub const TABLE: &str = "rcni_portmap";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Only traffic to this host address is forwarded.
    pub host_ip: Option<IpAddr>,
}

/// Everything the rules of one attachment depend on.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub mappings: &'a [Mapping],
    /// The container's first IPv4 and first IPv6 address, with their prefix length: hairpin
    /// masquerade covers the container's whole subnet, so a neighbour reaches its hostPort too.
    pub container_ips: &'a [IpNetwork],
    pub snat: bool,
    pub masq_all: bool,
    pub conditions_v4: &'a [String],
    pub conditions_v6: &'a [String],
    /// iptables only: the bit of the masquerade mark, or the chain that sets the mark.
    pub mark_bit: u32,
    pub external_set_mark_chain: Option<&'a str>,
}

pub fn network_key(network: &str) -> String {
    format!("rcni:{}:", hash16(network))
}

pub fn attachment_key(network: &str, container_id: &str, ifname: &str) -> String {
    format!(
        "{}{}",
        network_key(network),
        hash16(&format!("{ifname}:{container_id}"))
    )
}

fn base_objects() -> String {
    format!(
        "create table inet {TABLE}\n\
         add chain inet {TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add chain inet {TABLE} output {{ type nat hook output priority -100; policy accept; }}\n\
         add chain inet {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         add chain inet {TABLE} hostports\n\
         add rule inet {TABLE} prerouting fib daddr type local jump hostports\n\
         add rule inet {TABLE} output fib daddr type local jump hostports\n"
    )
}

pub fn comment(a: &Attachment<'_>) -> String {
    let key = attachment_key(a.network, a.container_id, a.ifname);
    let text = format!(
        "{key} net={} if={} id={}",
        a.network, a.ifname, a.container_id
    )
    .replace(['"', '\\'], "");
    super::truncate_bytes(&text, 128)
}

fn quote(s: &str) -> String {
    format!("\"{s}\"")
}

/// The subnet an address with a prefix length is in.
pub fn subnet_of(net: &IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(*net)
}

/// The rules of one attachment, as `add rule` lines.
pub fn rules(a: &Attachment<'_>) -> String {
    let comment = quote(&comment(a));
    let mut out = String::new();
    for net in a.container_ips {
        let ip = &net.ip();
        let subnet = subnet_of(net);
        let (fam, nfproto, conditions) = match ip {
            IpAddr::V4(_) => ("ip", "ipv4", a.conditions_v4),
            IpAddr::V6(_) => ("ip6", "ipv6", a.conditions_v6),
        };
        for m in a.mappings {
            if m.host_ip.is_some_and(|h| h.is_ipv4() != ip.is_ipv4()) {
                continue;
            }
            let mut rule = format!("add rule inet {TABLE} hostports");
            for c in conditions {
                rule.push(' ');
                rule.push_str(c);
            }
            match m.host_ip {
                Some(h) if !h.is_unspecified() => rule.push_str(&format!(" {fam} daddr {h}")),
                _ => rule.push_str(&format!(" meta nfproto {nfproto}")),
            }
            let target = match ip {
                IpAddr::V4(v4) => format!("{v4}:{}", m.container_port),
                IpAddr::V6(v6) => format!("[{v6}]:{}", m.container_port),
            };
            rule.push_str(&format!(
                " {} dport {} dnat {fam} to {target} comment {comment}\n",
                m.protocol, m.host_port
            ));
            out.push_str(&rule);
        }
        if a.snat {
            let from = if a.masq_all {
                String::new()
            } else {
                format!(" {fam} saddr {subnet}")
            };
            out.push_str(&format!(
                "add rule inet {TABLE} postrouting ct status dnat{from} {fam} daddr {ip} masquerade comment {comment}\n"
            ));
            if ip.is_ipv4() && !a.masq_all {
                out.push_str(&format!(
                    "add rule inet {TABLE} postrouting ct status dnat ip saddr 127.0.0.1 ip daddr {ip} masquerade comment {comment}\n"
                ));
            }
        }
    }
    out
}

/// Adds the attachment's rules: one transaction on the hot path; the table and its hook
/// chains are made by the first ADD on the node (a `create table` makes racing first ADDs
/// safe: the loser retries the hot path).
pub fn add(a: &Attachment<'_>) -> Result<()> {
    let rules = rules(a);
    if rules.is_empty() {
        return Ok(());
    }
    for _ in 0..3 {
        match nft::apply_text(&rules)? {
            nft::Applied::Done => return Ok(()),
            nft::Applied::Missing | nft::Applied::Exists => {}
        }
        match nft::apply_text(&format!("{}{rules}", base_objects()))? {
            nft::Applied::Done => return Ok(()),
            nft::Applied::Exists | nft::Applied::Missing => {}
        }
    }
    Err(crate::Error::internal(format!(
        "cannot create the nftables table inet {TABLE}"
    )))
}

fn rules_where(pred: impl Fn(&str) -> bool) -> Result<Vec<Value>> {
    Ok(nft::list_table("inet", TABLE)?
        .unwrap_or_default()
        .into_iter()
        .filter(|r| nft::comment(r).is_some_and(&pred))
        .collect())
}

fn delete(rules: &[Value]) -> Result<()> {
    if rules.is_empty() {
        return Ok(());
    }
    let refs: Vec<&Value> = rules.iter().collect();
    match nft::apply_text(&nft::delete_rules_script("inet", TABLE, &refs))? {
        // Already gone (a concurrent GC, say): nothing left to do.
        nft::Applied::Done | nft::Applied::Missing | nft::Applied::Exists => Ok(()),
    }
}

/// Removes the attachment's rules (one listing of our table, one deleting transaction).
pub fn remove(network: &str, container_id: &str, ifname: &str) -> Result<()> {
    let key = attachment_key(network, container_id, ifname);
    delete(&rules_where(|c| c.starts_with(&key))?)
}

/// The attachment's rules, per chain: (`hostports` count, `postrouting` count).
pub fn count(network: &str, container_id: &str, ifname: &str) -> Result<(usize, usize)> {
    let key = attachment_key(network, container_id, ifname);
    let rules = rules_where(|c| c.starts_with(&key))?;
    let in_chain = |name: &str| {
        rules
            .iter()
            .filter(|r| r.get("chain").and_then(Value::as_str) == Some(name))
            .count()
    };
    Ok((in_chain("hostports"), in_chain("postrouting")))
}

/// GC: removes `network`'s rules whose attachment is not in `valid`.
pub fn retain(network: &str, valid: &[crate::conf::Attachment]) -> Result<()> {
    let keep: Vec<String> = valid
        .iter()
        .map(|a| attachment_key(network, &a.container_id, &a.ifname))
        .collect();
    let net = network_key(network);
    delete(&rules_where(|c| {
        c.starts_with(&net) && !keep.iter().any(|k| c.starts_with(k.as_str()))
    })?)
}

/// Removes the attachment's rules and those the Go portmap made for its container
/// (`ip`/`ip6 cni_hostport`, comment = container ID): one listing of each table that exists,
/// one deleting transaction.
pub fn remove_with_reference(
    inv: &Inventory,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<()> {
    let has = |family: &str, name: &str| inv.has_nft(family, name);
    let mut script = String::new();
    if has("inet", TABLE) {
        let key = attachment_key(network, container_id, ifname);
        let rules = rules_where(|c| c.starts_with(&key))?;
        script.push_str(&nft::delete_rules_script(
            "inet",
            TABLE,
            &rules.iter().collect::<Vec<_>>(),
        ));
    }
    for family in ["ip", "ip6"] {
        if !has(family, "cni_hostport") {
            continue;
        }
        let rules = nft::list_table(family, "cni_hostport")?.unwrap_or_default();
        let mine: Vec<&Value> = rules
            .iter()
            .filter(|r| nft::comment(r) == Some(container_id))
            .collect();
        script.push_str(&nft::delete_rules_script(family, "cni_hostport", &mine));
    }
    if script.is_empty() {
        return Ok(());
    }
    nft::apply_text(&script).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_per_family_and_mapping() {
        let mappings = [
            Mapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: None,
            },
            Mapping {
                host_port: 5353,
                container_port: 53,
                protocol: "udp".into(),
                host_ip: Some("192.168.1.5".parse().unwrap()),
            },
        ];
        let ips: [IpNetwork; 2] = [
            "10.88.0.5/16".parse().unwrap(),
            "fd00::5/64".parse().unwrap(),
        ];
        let cond = ["iifname".to_string(), "\"eth0\"".to_string()];
        let a = Attachment {
            network: "net",
            container_id: "c1",
            ifname: "eth0",
            mappings: &mappings,
            container_ips: &ips,
            snat: true,
            masq_all: false,
            conditions_v4: &cond,
            conditions_v6: &[],
            mark_bit: 13,
            external_set_mark_chain: None,
        };
        let text = rules(&a);
        let key = attachment_key("net", "c1", "eth0");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(
            lines[0],
            format!(
                "add rule inet rcni_portmap hostports iifname \"eth0\" meta nfproto ipv4 tcp dport 8080 dnat ip to 10.88.0.5:80 comment \"{key} net=net if=eth0 id=c1\""
            )
        );
        assert!(
            lines[1].contains(" ip daddr 192.168.1.5 udp dport 5353 dnat ip to 10.88.0.5:53 "),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("ct status dnat ip saddr 10.88.0.0/16 ip daddr 10.88.0.5 masquerade"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("ip saddr 127.0.0.1 ip daddr 10.88.0.5 masquerade"),
            "{}",
            lines[3]
        );
        // The v4-only hostIP mapping is skipped for v6; no localhost rule for v6.
        assert!(
            lines[4].contains("meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd00::5]:80"),
            "{}",
            lines[4]
        );
        assert!(
            lines[5].contains("ip6 saddr fd00::/64 ip6 daddr fd00::5 masquerade"),
            "{}",
            lines[5]
        );
    }
}
