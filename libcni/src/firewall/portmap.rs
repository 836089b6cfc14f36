//! Host port forwarding (`portmap`) on nftables, over netlink in process.
//!
//! One table of our own for both families. The hook chains send only traffic addressed to a
//! local address of the host into `hostports` (never transit traffic); every attachment owns
//! its rules there and in `postrouting`, marked with its owner's comment, so concurrent ADDs
//! never touch each other's rules and DEL is exact:
//!
//! ```text
//! table inet rcni_portmap {
//!   chain prerouting  { type nat hook prerouting priority dstnat; fib daddr type local jump hostports }
//!   chain output      { type nat hook output priority -100;       fib daddr type local jump hostports }
//!   chain hostports   { [conditions] [ip daddr <hostIP>] meta nfproto ipv4 tcp dport 8080 dnat ip to 10.88.0.5:80 comment "<owner>" }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!                       ct status dnat ip saddr 10.88.0.0/16 ip daddr 10.88.0.5 masquerade comment "<owner>" # hairpin
//!                       ct status dnat ip saddr 127.0.0.1 ip daddr 10.88.0.5 masquerade comment "<owner>" } # localhost
//! }
//! ```
//!
//! Configs with `conditionsV4`/`conditionsV6` (nft expression text) add their rules through
//! the `nft` tool (`portmap_conditions`); everything else is netlink. DEL also removes what the
//! Go portmap's nftables backend made for the container (`ip`/`ip6 cni_hostport`).

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::check::Tally;
use super::handles::{self, Kind};
use super::owner::{Owner, stale};
use super::{nftables, portmap_conditions, subnet_of};
use crate::kernel::nf_tables::{
    self, BaseChain, Batch, Chain, ChainType, Client, Family, Hook, L4, ListedRule, Rule,
};
use crate::protocol::error::Result;

pub const TABLE: &str = "rcni_portmap";
pub(super) const NFT: Family = Family::Inet;
const HOSTPORTS: &str = "hostports";
const POSTROUTING: &str = "postrouting";
/// The chains attachments own rules in.
const OWNED: [&str; 2] = [HOSTPORTS, POSTROUTING];

/// The Go portmap's tables (`ip` and `ip6`), the chains its rules are in, and their comment:
/// the container ID, cut to what knftables keeps.
pub(super) const REFERENCE_TABLE: &str = "cni_hostport";
pub(super) const REFERENCE_CHAINS: [&str; 3] = ["hostports", "hostip_hostports", "masquerading"];
pub(super) const REFERENCE_COMMENT_MAX: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: L4,
    /// Only traffic to this host address is forwarded.
    pub host_ip: Option<IpAddr>,
}

/// Everything the rules of one attachment depend on.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    pub owner: Owner<'a>,
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

impl Attachment<'_> {
    fn has_conditions(&self) -> bool {
        !self.conditions_v4.is_empty() || !self.conditions_v6.is_empty()
    }

    /// The mappings that apply to a container address: those without a `hostIP` of the
    /// other family.
    pub(super) fn mappings_for(&self, ip: IpAddr) -> impl Iterator<Item = &Mapping> {
        self.mappings
            .iter()
            .filter(move |m| m.host_ip.is_none_or(|h| h.is_ipv4() == ip.is_ipv4()))
    }
}

/// `(ip daddr <hostIP> | meta nfproto <family>) <l4> dport <host port> dnat to <to>:<port>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dnat {
    pub host_ip: Option<IpAddr>,
    pub protocol: L4,
    pub host_port: u16,
    pub to: IpAddr,
    pub port: u16,
}

/// One rule of an attachment, before it is built as netlink expressions or as nft text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Planned {
    /// In `hostports`.
    Dnat(Dnat),
    /// In `postrouting`: `ct status dnat [saddr <from>] daddr <to> masquerade`.
    Masquerade { from: Option<IpNetwork>, to: IpAddr },
}

impl Planned {
    pub(super) fn chain(&self) -> &'static str {
        match self {
            Planned::Dnat(_) => HOSTPORTS,
            Planned::Masquerade { .. } => POSTROUTING,
        }
    }

    fn rule(&self, comment: &str) -> Rule {
        let rule = Rule::new(NFT, TABLE, self.chain());
        match *self {
            Planned::Dnat(d) => match d.host_ip {
                Some(h) => rule.match_daddr(h),
                None if d.to.is_ipv4() => rule.match_nfproto_v4(),
                None => rule.match_nfproto_v6(),
            }
            .match_dport(d.protocol, d.host_port)
            .dnat_to(d.to, Some(d.port)),
            Planned::Masquerade { from, to } => {
                let rule = rule.match_ct_status_dnat();
                match from {
                    Some(from) => rule.match_saddr(from),
                    None => rule,
                }
                .match_daddr(to)
                .masquerade()
            }
        }
        .comment(comment)
    }
}

/// The attachment's rules, per container address: a DNAT per mapping of its family, then
/// (with `snat`) hairpin masquerade of the container's subnet (of every source with
/// `masqAll`) and, for IPv4, of localhost.
pub(super) fn plan(a: &Attachment<'_>) -> Vec<Planned> {
    let mut planned = Vec::new();
    for net in a.container_ips {
        let ip = net.ip();
        for m in a.mappings_for(ip) {
            planned.push(Planned::Dnat(Dnat {
                host_ip: m.host_ip.filter(|h| !h.is_unspecified()),
                protocol: m.protocol,
                host_port: m.host_port,
                to: ip,
                port: m.container_port,
            }));
        }
        if a.snat {
            let from = (!a.masq_all).then(|| subnet_of(net));
            planned.push(Planned::Masquerade { from, to: ip });
            if ip.is_ipv4() && !a.masq_all {
                let localhost = IpNetwork::from(IpAddr::from([127, 0, 0, 1]));
                planned.push(Planned::Masquerade {
                    from: Some(localhost),
                    to: ip,
                });
            }
        }
    }
    planned
}

/// Declares the table, its hook chains with their jumps, and `hostports`.
pub(super) fn base_objects(batch: &mut Batch) -> nf_tables::Result<()> {
    let nat = |hook, priority| BaseChain::accepting(ChainType::Nat, hook, priority);
    batch.create_table(NFT, TABLE)?;
    for (name, hook, priority) in [
        ("prerouting", Hook::Prerouting, nf_tables::priority::DSTNAT),
        ("output", Hook::Output, -100),
        (POSTROUTING, Hook::Postrouting, nf_tables::priority::SRCNAT),
    ] {
        batch.add_chain(&Chain::base(NFT, TABLE, name, nat(hook, priority)))?;
    }
    batch.add_chain(&Chain::regular(NFT, TABLE, HOSTPORTS))?;
    for hook_chain in ["prerouting", "output"] {
        batch.add_rule(
            &Rule::new(NFT, TABLE, hook_chain)
                .match_fib_daddr_local()
                .jump(HOSTPORTS),
        )?;
    }
    Ok(())
}

/// Adds the attachment's rules: one transaction on the hot path; the table and its chains
/// are made by the first ADD on the node.
pub fn add(nft: &mut Client, a: &Attachment<'_>) -> Result<()> {
    let planned = plan(a);
    if planned.is_empty() {
        return Ok(());
    }
    if a.has_conditions() {
        // Made through nft text: no handles come back, DEL lists.
        handles::forget(Kind::PortMappings, &a.owner);
        return portmap_conditions::add(nft, a, &planned);
    }
    let before = handles::before_add(Kind::PortMappings, &a.owner);
    let comment = a.owner.comment();
    let rules: Vec<Rule> = planned.iter().map(|p| p.rule(&comment)).collect();
    let added = nftables::add_rules_echoed(nft, &rules, base_objects)?;
    handles::after_add(Kind::PortMappings, &a.owner, before, &added);
    Ok(())
}

/// This attachment's rules in our table.
pub fn rules_of(nft: &mut Client, owner: &Owner<'_>) -> Result<Vec<ListedRule>> {
    nftables::rules_where(nft, NFT, TABLE, &OWNED, |c| owner.owns(c))
}

/// The rules the Go portmap made for the container, listed only where its table exists.
fn reference_rules(nft: &mut Client, container_id: &str) -> Result<Vec<ListedRule>> {
    let comment = super::truncate_bytes(container_id, REFERENCE_COMMENT_MAX);
    let mut found = Vec::new();
    for family in [Family::Ip, Family::Ip6] {
        if nft.table_exists(family, REFERENCE_TABLE)? {
            found.extend(nftables::rules_where(
                nft,
                family,
                REFERENCE_TABLE,
                &REFERENCE_CHAINS,
                |c| c == comment,
            )?);
        }
    }
    Ok(found)
}

/// Removes the attachment's rules and those the Go portmap made for its container: by the
/// handles ADD recorded when the kernel confirms them, else by a listing of our two chains;
/// the Go portmap's chains are listed where its tables exist. One deleting transaction.
pub fn remove(nft: &mut Client, owner: &Owner<'_>) -> Result<()> {
    let find = |nft: &mut Client| {
        let mut rules = rules_of(nft, owner)?;
        rules.extend(reference_rules(nft, owner.container_id)?);
        Ok(rules)
    };
    let rules = match handles::confirmed(Kind::PortMappings, nft, owner) {
        Some(mut rules) => {
            rules.extend(reference_rules(nft, owner.container_id)?);
            rules
        }
        None => find(nft)?,
    };
    nftables::delete(nft, rules, find)?;
    handles::forget(Kind::PortMappings, owner);
    Ok(())
}

/// Removes the attachment's rules in our table only (rollback: the Go portmap's rules for the
/// container stay).
pub fn remove_own(nft: &mut Client, owner: &Owner<'_>) -> Result<()> {
    let find = |nft: &mut Client| rules_of(nft, owner);
    let rules = find(nft)?;
    nftables::delete(nft, rules, find)?;
    handles::forget(Kind::PortMappings, owner);
    Ok(())
}

/// The container's first IPv4 and first IPv6 address (with their prefix length), as the Go
/// portmap picks them: IPs that name another interface, or one outside a sandbox, are not the
/// container's.
pub fn container_ips(result: &crate::protocol::result::CniResult, ifname: &str) -> Vec<IpNetwork> {
    let ours = |i: Option<usize>| match i {
        None => true,
        Some(i) => result
            .interfaces
            .get(i)
            .is_some_and(|itf| itf.name == ifname && !itf.sandbox.is_empty()),
    };
    let pick = |v4: bool| {
        result
            .ips
            .iter()
            .find(|ip| ip.address.is_ipv4() == v4 && ours(ip.interface))
            .map(|ip| ip.address)
    };
    [pick(true), pick(false)].into_iter().flatten().collect()
}

/// CHECK: what our table holds of the attachment's rules, counted per chain.
pub fn tally(nft: &mut Client, a: &Attachment<'_>) -> Result<Tally> {
    let planned = plan(a);
    let present = rules_of(nft, &a.owner)?;
    let mut tally = Tally::new(format!("{NFT} {TABLE}"));
    for (chain, what) in [(HOSTPORTS, "forwarding"), (POSTROUTING, "masquerade")] {
        let want = planned.iter().filter(|p| p.chain() == chain).count();
        let have = present.iter().filter(|r| r.chain == chain).count();
        tally.count(format!("{what} rules"), have, want);
    }
    Ok(tally)
}

/// CHECK: what the Go portmap's nftables backend holds for the container, counted per
/// family as its own CHECK counts: a DNAT rule per mapping of the family, and with `snat` two
/// masquerade rules for IPv4 (hairpin, localhost), one for IPv6.
pub fn reference_tally(nft: &mut Client, a: &Attachment<'_>) -> Result<Tally> {
    let rules = reference_rules(nft, a.owner.container_id)?;
    let mut tally = Tally::new(format!("the reference's ip/ip6 {REFERENCE_TABLE}"));
    for net in a.container_ips {
        let ip = net.ip();
        let family = if ip.is_ipv4() {
            Family::Ip
        } else {
            Family::Ip6
        };
        let have = |chains: &[&str]| {
            rules
                .iter()
                .filter(|r| r.family == family && chains.contains(&r.chain.as_str()))
                .count()
        };
        let masquerades = match (a.snat, ip.is_ipv4()) {
            (false, _) => 0,
            (true, true) => 2,
            (true, false) => 1,
        };
        tally.count(
            format!("{family} forwarding rules"),
            have(&REFERENCE_CHAINS[..2]),
            a.mappings_for(ip).count(),
        );
        tally.count(
            format!("{family} masquerade rules"),
            have(&REFERENCE_CHAINS[2..]),
            masquerades,
        );
    }
    Ok(tally)
}

/// GC: removes `network`'s rules whose attachment is not in `valid`.
pub fn retain(
    nft: &mut Client,
    network: &str,
    valid: &[crate::protocol::conf::Attachment],
) -> Result<()> {
    nftables::remove_where(nft, NFT, TABLE, &OWNED, |c| stale(network, valid, c))?;
    handles::forget_stale(network, valid);
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn mappings() -> [Mapping; 2] {
        [
            Mapping {
                host_port: 8080,
                container_port: 80,
                protocol: L4::Tcp,
                host_ip: None,
            },
            Mapping {
                host_port: 5353,
                container_port: 53,
                protocol: L4::Udp,
                host_ip: Some("192.168.1.5".parse().unwrap()),
            },
        ]
    }

    pub fn ips() -> [IpNetwork; 2] {
        [
            "10.88.0.5/16".parse().unwrap(),
            "fd00::5/64".parse().unwrap(),
        ]
    }

    pub const OWNER: Owner<'static> = Owner {
        network: "net",
        container_id: "c1",
        ifname: "eth0",
    };

    /// A mapping to container port 80.
    pub fn to_80(host_port: u16, protocol: L4, host_ip: Option<&str>) -> Mapping {
        Mapping {
            host_port,
            container_port: 80,
            protocol,
            host_ip: host_ip.map(|h| h.parse().unwrap()),
        }
    }

    /// `OWNER`'s attachment with SNAT, mark bit 13, no conditions.
    pub fn attachment<'a>(mappings: &'a [Mapping], ips: &'a [IpNetwork]) -> Attachment<'a> {
        Attachment {
            owner: OWNER,
            mappings,
            container_ips: ips,
            snat: true,
            masq_all: false,
            conditions_v4: &[],
            conditions_v6: &[],
            mark_bit: 13,
            external_set_mark_chain: None,
        }
    }

    #[test]
    fn plan_per_family_and_mapping() {
        let (mappings, ips) = (mappings(), ips());
        let planned = plan(&attachment(&mappings, &ips));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = |s: &str| Some(s.parse::<IpNetwork>().unwrap());
        assert_eq!(
            planned,
            [
                Planned::Dnat(Dnat {
                    host_ip: None,
                    protocol: L4::Tcp,
                    host_port: 8080,
                    to: ip("10.88.0.5"),
                    port: 80
                }),
                Planned::Dnat(Dnat {
                    host_ip: Some(ip("192.168.1.5")),
                    protocol: L4::Udp,
                    host_port: 5353,
                    to: ip("10.88.0.5"),
                    port: 53
                }),
                Planned::Masquerade {
                    from: net("10.88.0.0/16"),
                    to: ip("10.88.0.5")
                },
                Planned::Masquerade {
                    from: net("127.0.0.1/32"),
                    to: ip("10.88.0.5")
                },
                // The v4-only hostIP mapping is skipped for v6; no localhost rule for v6.
                Planned::Dnat(Dnat {
                    host_ip: None,
                    protocol: L4::Tcp,
                    host_port: 8080,
                    to: ip("fd00::5"),
                    port: 80
                }),
                Planned::Masquerade {
                    from: net("fd00::/64"),
                    to: ip("fd00::5")
                },
            ]
        );
    }

    #[test]
    fn masq_all_and_no_snat() {
        let (mappings, ips) = (mappings(), ips());
        let a = Attachment {
            masq_all: true,
            ..attachment(&mappings, &ips)
        };
        let masquerades: Vec<Planned> = plan(&a)
            .into_iter()
            .filter(|p| p.chain() == POSTROUTING)
            .collect();
        assert_eq!(
            masquerades,
            [
                Planned::Masquerade {
                    from: None,
                    to: "10.88.0.5".parse().unwrap()
                },
                Planned::Masquerade {
                    from: None,
                    to: "fd00::5".parse().unwrap()
                },
            ]
        );
        let a = Attachment {
            snat: false,
            ..attachment(&mappings, &ips)
        };
        assert!(plan(&a).iter().all(|p| p.chain() == HOSTPORTS));
    }
}
