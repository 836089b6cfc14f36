//! What the reference plugins (containernetworking/plugins) make for one attachment, so that a
//! node can be handed back to them (`cnitool rollback`): bridge's masquerade, portmap's host
//! ports and bridge's MAC spoof check, with the reference's names, hashes, comments and rule
//! shapes (`pkg/ip/ipmasq_*_linux.go`, `plugins/meta/portmap/portmap_*.go`,
//! `pkg/link/spoofcheck.go`). The reference's CHECK and DEL then treat the attachment as one it
//! made itself.
//!
//! A [`Part`] is planned first (reads only: what of the reference's state is missing) and then
//! written; our own rules of the part go after that, so the pod's traffic is never without
//! rules. iptables state is written as the reference's EnsureChain / AppendUnique /
//! InsertUnique would leave it: only the chains and rules `iptables -C` does not find, one
//! `iptables-restore --noflush` per family. nftables state is the reference's own transaction,
//! one `nft -f` per table, written only when the reference's CHECK would not pass (replacing
//! what it finds of the attachment's rules).
//!
//! Where 1.1.1 and 1.9.1 differ, [`Release`] says which layout to make: 1.1 has no nftables
//! backends (it ignores `ipMasqBackend` and portmap's `backend`, and always uses iptables) and
//! no `masqAll`; the iptables and spoof-check layouts are the same in both.

use std::fmt;

use ipnetwork::IpNetwork;

use super::iptables::{self, Family, quote};
use super::portmap_conditions::{self, Applied};
use super::{Backend, Owner, masquerade, nftables, portmap, portmap_iptables, spoofcheck};
use super::{reference_portmap, subnet_of};
use crate::kernel::nf_tables::{self, Client, ListedRule};
use crate::protocol::error::{self, Error, Result};

/// The reference release whose layout is made (1.0 … 1.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    minor: u32,
}

impl Release {
    pub const NEWEST: Release = Release { minor: 9 };

    /// `1.9.1`, `v1.1`, …: any 1.x release up to 1.9.
    pub fn parse(s: &str) -> Option<Release> {
        let s = s.strip_prefix('v').unwrap_or(s);
        let mut parts = s.split('.');
        if parts.next() != Some("1") {
            return None;
        }
        let minor: u32 = parts.next()?.parse().ok()?;
        let patch_ok = match (parts.next(), parts.next()) {
            (None, None) => true,
            (Some(p), None) => p.parse::<u32>().is_ok(),
            _ => false,
        };
        (patch_ok && minor <= 9).then_some(Release { minor })
    }

    /// `ipMasqBackend` and portmap's `backend` (nftables) arrived in 1.6.0.
    pub fn has_nftables(self) -> bool {
        self.minor >= 6
    }

    /// portmap's `masqAll` arrived in 1.2.0 (iptables only).
    pub fn has_masq_all(self) -> bool {
        self.minor >= 2
    }

    /// Since 1.9.0 portmap's nftables hook rules only send local destinations to the mappings
    /// (plugins#1209).
    pub(super) fn guards_local(self) -> bool {
        self.minor >= 9
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1.{}", self.minor)
    }
}

/// One piece of an attachment's firewall state.
#[derive(Debug, Clone)]
pub enum Part<'a> {
    /// bridge `ipMasq`: the container's addresses.
    Masquerade {
        owner: Owner<'a>,
        ips: &'a [IpNetwork],
        backend: Backend,
    },
    /// portmap: the attachment's mappings (the container addresses are the first of each family).
    PortMap {
        attachment: portmap::Attachment<'a>,
        backend: Backend,
    },
    /// bridge `macspoofchk`: the host end of the veth and the container's MAC.
    SpoofCheck {
        owner: Owner<'a>,
        host_veth: &'a str,
        mac: [u8; 6],
    },
}

/// One write that makes (some of) the reference's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Lines for `iptables-restore --noflush` of the nat table.
    Iptables { family: Family, lines: Vec<String> },
    /// An `nft -f` script, one transaction.
    Nft { script: String },
}

impl Write {
    pub fn apply(&self) -> Result<()> {
        match self {
            Write::Iptables { family, lines } => iptables::restore(*family, "nat", lines),
            Write::Nft { script } => match portmap_conditions::apply(script)? {
                Applied::Done => Ok(()),
                Applied::Missing => Err(Error::internal(format!(
                    "nft: a table or chain the script needs is missing\n{script}"
                ))),
            },
        }
    }
}

impl Write {
    /// The program that makes the write.
    pub fn tool(&self) -> &'static str {
        match self {
            Write::Iptables {
                family: Family::V4, ..
            } => "iptables-restore -t nat",
            Write::Iptables {
                family: Family::V6, ..
            } => "ip6tables-restore -t nat",
            Write::Nft { .. } => "nft -f",
        }
    }
}

/// The program and the lines it gets.
impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<&str> = match self {
            Write::Iptables { lines, .. } => lines.iter().map(String::as_str).collect(),
            Write::Nft { script } => script.lines().collect(),
        };
        write!(f, "{}:", self.tool())?;
        for line in lines {
            write!(f, "\n    {line}")?;
        }
        Ok(())
    }
}

impl Part<'_> {
    /// What the part is, in the reference's names.
    pub fn describe(&self) -> String {
        match self {
            Part::Masquerade {
                owner,
                backend: Backend::Iptables,
                ..
            } => format!(
                "masquerade (iptables chain {})",
                masquerade::reference_chain(owner.network, owner.container_id)
            ),
            Part::Masquerade { .. } => format!("masquerade (inet {NFT_MASQ_TABLE})"),
            Part::PortMap {
                attachment,
                backend: Backend::Iptables,
            } => format!(
                "host ports (iptables chain {})",
                portmap_iptables::reference_chain(
                    attachment.owner.network,
                    attachment.owner.container_id
                )
            ),
            Part::PortMap { .. } => "host ports (ip/ip6 cni_hostport)".to_string(),
            Part::SpoofCheck { owner, .. } => {
                format!("MAC spoof check (bridge nat {})", spoof_names(owner).chain)
            }
        }
    }

    fn owner(&self) -> &Owner<'_> {
        match self {
            Part::Masquerade { owner, .. } | Part::SpoofCheck { owner, .. } => owner,
            Part::PortMap { attachment, .. } => &attachment.owner,
        }
    }

    /// The writes that make the reference's state complete; none when it is.
    pub fn plan(&self, nft: &mut Client, release: Release) -> Result<Vec<Write>> {
        match self {
            Part::Masquerade {
                owner,
                ips,
                backend: Backend::Iptables,
            } => masquerade_iptables(owner, ips),
            Part::Masquerade { owner, ips, .. } => masquerade_nft(nft, owner, ips),
            Part::PortMap {
                attachment,
                backend: Backend::Iptables,
            } => reference_portmap::iptables(attachment),
            Part::PortMap { attachment, .. } => reference_portmap::nft(nft, attachment, release),
            Part::SpoofCheck {
                owner,
                host_veth,
                mac,
            } => spoof_check(nft, owner, host_veth, mac),
        }
    }

    /// How many rules of ours the part has.
    pub fn ours(&self, nft: &mut Client) -> Result<usize> {
        let owner = self.owner();
        match self {
            Part::Masquerade { .. } => masquerade::own_rule_count(nft, owner),
            Part::PortMap { .. } => Ok(portmap::rules_of(nft, owner)?.len()
                + portmap_iptables::own_rule_count(nft, owner)?),
            Part::SpoofCheck { .. } => spoofcheck::own_rule_count(nft, owner),
        }
    }

    /// Removes our rules of the part (in both backends), leaving the reference's.
    pub fn remove_ours(&self, nft: &mut Client) -> Result<()> {
        let owner = self.owner();
        match self {
            Part::Masquerade { .. } => masquerade::remove(nft, owner).map(drop),
            Part::PortMap { .. } => error::all([
                portmap::remove_own(nft, owner),
                portmap_iptables::remove_own(nft, owner),
            ]),
            Part::SpoofCheck { .. } => spoofcheck::remove(nft, owner),
        }
    }
}

/// The iptables lines of one family that are not there yet: chains to declare, rules
/// `iptables -C` does not find, in the order the reference adds them.
pub(super) struct Missing {
    family: Family,
    /// Chains already looked up: whether each was there.
    chains: Vec<(String, bool)>,
    declare: Vec<String>,
    rules: Vec<String>,
    seen: Vec<(String, Vec<String>)>,
}

impl Missing {
    pub(super) fn new(family: Family) -> Missing {
        Missing {
            family,
            chains: Vec::new(),
            declare: Vec::new(),
            rules: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// EnsureChain: declares `chain` unless it exists.
    pub(super) fn chain(&mut self, chain: &str) -> Result<()> {
        if self.chains.iter().any(|(c, _)| c == chain) {
            return Ok(());
        }
        let exists = iptables::list_chain(self.family, "nat", chain)?.is_some();
        if !exists {
            self.declare.push(format!(":{chain} - [0:0]"));
        }
        self.chains.push((chain.to_string(), exists));
        Ok(())
    }

    /// AppendUnique: `-A chain spec` unless the rule is there.
    pub(super) fn append(&mut self, chain: &str, spec: Vec<String>) -> Result<()> {
        self.add(chain, spec, false)
    }

    /// InsertUnique at the top: `-I chain 1 spec` unless the rule is there.
    pub(super) fn prepend(&mut self, chain: &str, spec: Vec<String>) -> Result<()> {
        self.add(chain, spec, true)
    }

    fn add(&mut self, chain: &str, spec: Vec<String>, first: bool) -> Result<()> {
        let key = (chain.to_string(), spec);
        if self.seen.contains(&key) {
            return Ok(());
        }
        let (chain, spec) = &key;
        let declared_now = self.chains.iter().any(|(c, exists)| c == chain && !exists);
        if declared_now || !iptables::exists(self.family, "nat", chain, spec)? {
            let args: Vec<String> = spec.iter().map(|a| quote(a)).collect();
            let verb = if first {
                format!("-I {chain} 1")
            } else {
                format!("-A {chain}")
            };
            self.rules.push(format!("{verb} {}", args.join(" ")));
        }
        self.seen.push(key);
        Ok(())
    }

    pub(super) fn into_write(self) -> Option<Write> {
        let lines: Vec<String> = self.declare.into_iter().chain(self.rules).collect();
        (!lines.is_empty()).then_some(Write::Iptables {
            family: self.family,
            lines,
        })
    }
}

/// Arguments from words.
pub(super) fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Go's `%q` of a name the skel accepts (letters, digits, `_ . -`): just quoted.
pub(super) fn go_quoted(name: &str) -> Result<String> {
    if crate::protocol::conf::valid_identifier(name) {
        Ok(format!("\"{name}\""))
    } else {
        Err(Error::invalid_config(format!(
            "{name:?} is not a name the reference accepts"
        )))
    }
}

/// `-d <subnet> -j ACCEPT`, `! -d <multicast> -j MASQUERADE` in `CNI-<hash>`, and
/// `POSTROUTING -s <ip> -j CNI-<hash>`, per address, all with `name: "<net>" id: "<cid>"`.
fn masquerade_iptables(owner: &Owner<'_>, ips: &[IpNetwork]) -> Result<Vec<Write>> {
    let chain = masquerade::reference_chain(owner.network, owner.container_id);
    let comment = format!(
        "name: {} id: {}",
        go_quoted(owner.network)?,
        go_quoted(owner.container_id)?
    );
    let mut writes = Vec::new();
    for fam in Family::BOTH {
        let mut missing = Missing::new(fam);
        for ip in ips.iter().filter(|ip| Family::of(ip.ip()) == fam) {
            let multicast = if ip.is_ipv4() {
                "224.0.0.0/4"
            } else {
                "ff00::/8"
            };
            let subnet = subnet_of(ip).to_string();
            let host = IpNetwork::from(ip.ip()).to_string();
            let tail = ["-m", "comment", "--comment", &comment];
            missing.chain(&chain)?;
            missing.append(
                &chain,
                args(&[&["-d", &subnet, "-j", "ACCEPT"][..], &tail].concat()),
            )?;
            missing.append(
                &chain,
                args(&[&["!", "-d", multicast, "-j", "MASQUERADE"][..], &tail].concat()),
            )?;
            missing.append(
                "POSTROUTING",
                args(&[&["-s", &host, "-j", &chain][..], &tail].concat()),
            )?;
        }
        writes.extend(missing.into_write());
    }
    Ok(writes)
}

const NFT_MASQ_TABLE: &str = "cni_plugins_masquerade";
const NFT_MASQ_CHAIN: &str = "masq_checks";
/// knftables' comment limit.
const NFT_COMMENT_MAX: usize = 128;

/// The reference's nftables masquerade comment: the attachment's hashes, then the names
/// (quotes stripped), cut to what knftables keeps.
fn nft_masquerade_comment(owner: &Owner<'_>) -> String {
    let comment = format!(
        "{}, net: {}, if: {}, id: {}",
        masquerade::reference_comment_prefix(owner.network, owner.container_id, owner.ifname),
        owner.network.replace('"', ""),
        owner.ifname.replace('"', ""),
        owner.container_id.replace('"', "")
    );
    super::truncate_bytes(&comment, NFT_COMMENT_MAX)
}

/// `delete rule` lines for listed rules.
pub(super) fn delete_lines(rules: &[ListedRule]) -> String {
    rules
        .iter()
        .map(|r| {
            format!(
                "delete rule {} {} {} handle {}\n",
                r.family, r.table, r.chain, r.handle
            )
        })
        .collect()
}

/// 1.6+: `inet cni_plugins_masquerade`, one `masq_checks` rule per address, and the
/// `postrouting` chain the reference rewrites on every ADD.
fn masquerade_nft(nft: &mut Client, owner: &Owner<'_>, ips: &[IpNetwork]) -> Result<Vec<Write>> {
    let inet = nf_tables::Family::Inet;
    let prefix =
        masquerade::reference_comment_prefix(owner.network, owner.container_id, owner.ifname);
    let comment = nft_masquerade_comment(owner);
    let present = nftables::rules_where(nft, inet, NFT_MASQ_TABLE, &[NFT_MASQ_CHAIN], |c| {
        c.starts_with(&prefix)
    })?;
    let hooked = nft.list_rules(inet, NFT_MASQ_TABLE, "postrouting")?.len() >= 3;
    if hooked
        && present.len() == ips.len()
        && present
            .iter()
            .all(|r| r.comment.as_deref() == Some(&comment))
    {
        return Ok(Vec::new());
    }
    let t = format!("inet {NFT_MASQ_TABLE}");
    let mut script = format!(
        "add table {t} {{ comment \"Masquerading for plugins from github.com/containernetworking/plugins\" ; }}\n\
         add chain {t} {NFT_MASQ_CHAIN} {{ comment \"Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet\" ; }}\n\
         add chain {t} postrouting {{ type nat hook postrouting priority 100 ; }}\n\
         flush chain {t} postrouting\n\
         add rule {t} postrouting ip daddr == 224.0.0.0/4 return\n\
         add rule {t} postrouting ip6 daddr == ff00::/8 return\n\
         add rule {t} postrouting goto {NFT_MASQ_CHAIN}\n"
    );
    script.push_str(&delete_lines(&present));
    for ip in ips {
        let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
        script.push_str(&format!(
            "add rule {t} {NFT_MASQ_CHAIN} {fam} saddr == {} {fam} daddr != {} masquerade comment \"{comment}\"\n",
            ip.ip(),
            subnet_of(ip)
        ));
    }
    Ok(vec![Write::Nft { script }])
}

/// The reference's spoof-check names of an attachment (`<cid>-<ifname>`, not hashed).
struct SpoofNames {
    chain: String,
    mac_chain: String,
    comment: String,
}

fn spoof_names(owner: &Owner<'_>) -> SpoofNames {
    let id = format!("{}-{}", owner.container_id, owner.ifname);
    SpoofNames {
        chain: format!("cni-br-iface-{id}"),
        mac_chain: format!("cni-br-iface-{id}-mac"),
        comment: format!("macspoofchk-{id}"),
    }
}

/// `bridge nat`: base chain `PREROUTING` jumping from the host veth to the attachment's chain,
/// which jumps to its `-mac` chain: `ether saddr <mac> return`, then `drop`.
fn spoof_check(
    nft: &mut Client,
    owner: &Owner<'_>,
    host_veth: &str,
    mac: &[u8; 6],
) -> Result<Vec<Write>> {
    let bridge = nf_tables::Family::Bridge;
    let n = spoof_names(owner);
    let is_ours = |c: &str| c == n.comment;
    let jumps = nftables::rules_where(nft, bridge, "nat", &["PREROUTING"], is_ours)?;
    let chain_rules = nftables::rules_where(nft, bridge, "nat", &[&n.chain], is_ours)?;
    let mac_rules = nftables::rules_where(nft, bridge, "nat", &[&n.mac_chain], is_ours)?;
    if jumps.len() == 1 && chain_rules.len() == 1 && mac_rules.len() == 2 {
        return Ok(Vec::new());
    }
    if !crate::protocol::conf::valid_identifier(host_veth) {
        return Err(Error::invalid_config(format!(
            "host interface name {host_veth:?} cannot be written in an nft rule"
        )));
    }
    let (c, m, comment) = (&n.chain, &n.mac_chain, &n.comment);
    let mut script = format!(
        "add table bridge nat\n\
         add chain bridge nat PREROUTING {{ type filter hook prerouting priority -300 ; policy accept ; }}\n\
         add chain bridge nat {c}\n\
         add chain bridge nat {m}\n\
         flush chain bridge nat {c}\n\
         flush chain bridge nat {m}\n"
    );
    script.push_str(&delete_lines(&jumps));
    script.push_str(&format!(
        "add rule bridge nat PREROUTING iifname \"{host_veth}\" jump {c} comment \"{comment}\"\n\
         add rule bridge nat {c} jump {m} comment \"{comment}\"\n\
         add rule bridge nat {m} ether saddr {} return comment \"{comment}\"\n\
         add rule bridge nat {m} drop comment \"{comment}\"\n",
        crate::kernel::netlink::format_mac(mac)
    ));
    Ok(vec![Write::Nft { script }])
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: Owner<'static> = Owner {
        network: "unit-test",
        container_id: "one",
        ifname: "eth0",
    };

    #[test]
    fn releases() {
        let r = |s| Release::parse(s);
        assert_eq!(r("1.9.1"), Some(Release::NEWEST));
        assert_eq!(r("v1.1"), Some(Release { minor: 1 }));
        assert!(r("1.1.1").is_some_and(|r| !r.has_nftables() && !r.has_masq_all()));
        assert!(r("1.6.0").is_some_and(|r| r.has_nftables() && !r.guards_local()));
        for bad in ["2.0.0", "1.10.0", "1", "1.x", "1.9.1.2", ""] {
            assert_eq!(r(bad), None, "{bad}");
        }
        assert_eq!(Release::NEWEST.to_string(), "1.9");
    }

    #[test]
    fn nft_masquerade_comment_is_the_references() {
        // The reference's own test vector (pkg/ip/ipmasq_nftables_linux_test.go).
        assert_eq!(
            nft_masquerade_comment(&OWNER),
            "6fd94d501e58f0aa-287fc69eff0574a2, net: unit-test, if: eth0, id: one"
        );
        let long = "x".repeat(200);
        let long = Owner {
            container_id: &long,
            ..OWNER
        };
        assert_eq!(nft_masquerade_comment(&long).len(), NFT_COMMENT_MAX);
    }

    #[test]
    fn spoof_check_names() {
        let n = spoof_names(&OWNER);
        assert_eq!(n.chain, "cni-br-iface-one-eth0");
        assert_eq!(n.mac_chain, "cni-br-iface-one-eth0-mac");
        assert_eq!(n.comment, "macspoofchk-one-eth0");
    }

    #[test]
    fn go_quoting_of_identifiers() {
        assert_eq!(go_quoted("net-1").unwrap(), "\"net-1\"");
        assert!(go_quoted("a\"b").is_err());
    }
}
