//! `cnitool rollback`: hands the attachments of the result cache back to the reference plugins.
//! For each cached attachment, the firewall state the reference would have made for it (from
//! the cached config, result, container ID, ifname and capability arguments) is made, then our
//! own rules of the attachment are removed (`firewall::reference`). Attachments the reference
//! could not take over are reported with the reason and left as they are.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use super::{Cache, ConfList, Entry, RuntimeConf, plugin_stdin};
use crate::firewall::portmap::{self, Mapping};
use crate::firewall::reference::{Part, Release};
use crate::firewall::{Backend, Owner, iptables, nftables};
use crate::kernel::netlink::Kernel;
use crate::kernel::netns::{Netns, NetnsError};
use crate::kernel::nf_tables::{Client, L4};
use crate::protocol::error::{Error, Result};
use crate::protocol::result::CniResult;

pub struct Options {
    pub release: Release,
    pub dry_run: bool,
    /// Only these networks; every network when empty.
    pub networks: Vec<String>,
    /// Where the network configs are (`NETCONFPATH`): a list whose plugins live in its
    /// network's directory is cached without them, as libcni caches it.
    pub conf_dir: std::path::PathBuf,
}

/// What became of one attachment.
#[derive(Debug)]
pub enum Outcome {
    /// What was changed (in a dry run: what would be).
    Converted(Vec<String>),
    /// Already in the reference's layout, with nothing of ours.
    Unchanged,
    NotConverted(String),
}

#[derive(Debug, Default)]
pub struct Report {
    /// One line per attachment, each followed by its changes (indented).
    pub lines: Vec<String>,
    pub not_converted: usize,
}

/// Converts every cached attachment of `opts.networks` (all networks when empty), holding the
/// cache lock against our ADD, DEL and GC.
pub fn rollback(cache: &Cache, opts: &Options) -> Result<Report> {
    let _lock = cache.lock(crate::kernel::lock::Mode::Exclusive)?;
    let mut nft = nftables::open()?;
    let mut report = Report::default();
    let mut entries: Vec<Entry> = cache
        .all_entries()
        .into_iter()
        .filter(|e| opts.networks.is_empty() || opts.networks.contains(&e.network))
        .collect();
    entries.sort_by(|a, b| {
        (&a.network, &a.container_id, &a.ifname).cmp(&(&b.network, &b.container_id, &b.ifname))
    });
    for entry in &entries {
        let name = format!("{} {} {}", entry.network, entry.container_id, entry.ifname);
        match convert(&mut nft, entry, opts) {
            Outcome::Converted(changes) => {
                let verb = if opts.dry_run {
                    "would convert"
                } else {
                    "converted"
                };
                report.lines.push(format!("{name}: {verb}"));
                report.lines.extend(
                    changes
                        .iter()
                        .map(|c| format!("  {}", c.replace('\n', "\n  "))),
                );
            }
            Outcome::Unchanged => report
                .lines
                .push(format!("{name}: already in the reference's layout")),
            Outcome::NotConverted(why) => {
                report.not_converted += 1;
                report.lines.push(format!("{name}: not converted: {why}"));
            }
        }
    }
    if entries.is_empty() {
        report.lines.push("no cached attachments".into());
    }
    Ok(report)
}

/// Plans and (unless a dry run) makes the reference's state of one attachment, then removes
/// ours.
pub fn convert(nft: &mut Client, entry: &Entry, opts: &Options) -> Outcome {
    let state = match State::read(entry, opts) {
        Ok(state) => state,
        Err(e) => return Outcome::NotConverted(e.msg),
    };
    let parts = state.parts();
    let mut planned = Vec::new();
    for part in &parts {
        let plan = part
            .plan(nft, opts.release)
            .and_then(|writes| Ok((writes, part.ours(nft)?)));
        match plan {
            Ok(plan) => planned.push((part, plan)),
            Err(e) => return Outcome::NotConverted(format!("{}: {}", part.describe(), e.msg)),
        }
    }
    let mut changes = Vec::new();
    for (part, (writes, ours)) in &planned {
        for write in writes {
            if !opts.dry_run
                && let Err(e) = write.apply()
            {
                return Outcome::NotConverted(format!(
                    "{}: {}; our rules are left in place",
                    part.describe(),
                    e.msg
                ));
            }
            changes.push(match opts.dry_run {
                true => format!("{}: {write}", part.describe()),
                false => format!("{}: made ({})", part.describe(), write.tool()),
            });
        }
        if *ours > 0 {
            changes.push(format!("{}: our {ours} rule(s) removed", part.describe()));
        }
    }
    if !opts.dry_run {
        for (part, (_, ours)) in &planned {
            if *ours > 0
                && let Err(e) = part.remove_ours(nft)
            {
                return Outcome::NotConverted(format!(
                    "{}: the reference's state is made but ours could not be removed: {}",
                    part.describe(),
                    e.msg
                ));
            }
        }
    }
    if changes.is_empty() {
        Outcome::Unchanged
    } else {
        Outcome::Converted(changes)
    }
}

/// An attachment's firewall state as the reference would have made it, read from its cache
/// entry.
struct State {
    network: String,
    container_id: String,
    ifname: String,
    masquerade: Option<(Vec<IpNetwork>, Backend)>,
    spoof_check: Option<(String, [u8; 6])>,
    port_maps: Vec<PortMap>,
}

struct PortMap {
    backend: Backend,
    mappings: Vec<Mapping>,
    container_ips: Vec<IpNetwork>,
    snat: bool,
    masq_all: bool,
    conditions_v4: Vec<String>,
    conditions_v6: Vec<String>,
    mark_bit: u32,
    external_set_mark_chain: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BridgeKeys {
    bridge: Option<String>,
    #[serde(rename = "ipMasq")]
    ip_masq: bool,
    #[serde(rename = "ipMasqBackend")]
    ip_masq_backend: Option<String>,
    macspoofchk: bool,
    ipam: IpamKeys,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IpamKeys {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PortmapKeys {
    backend: Option<String>,
    snat: Option<bool>,
    #[serde(rename = "masqAll")]
    masq_all: bool,
    #[serde(rename = "markMasqBit")]
    mark_masq_bit: Option<u32>,
    #[serde(rename = "externalSetMarkChain")]
    external_set_mark_chain: Option<String>,
    #[serde(rename = "conditionsV4")]
    conditions_v4: Vec<String>,
    #[serde(rename = "conditionsV6")]
    conditions_v6: Vec<String>,
    #[serde(rename = "runtimeConfig")]
    runtime_config: PortmapRuntime,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PortmapRuntime {
    #[serde(rename = "portMappings")]
    port_mappings: Vec<MappingKeys>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MappingKeys {
    #[serde(rename = "hostPort")]
    host_port: u16,
    #[serde(rename = "containerPort")]
    container_port: u16,
    protocol: String,
    #[serde(rename = "hostIP")]
    host_ip: String,
}

fn refuse(msg: impl Into<String>) -> Error {
    Error::invalid_config(msg)
}

/// The backend the reference picks for a plugin's backend key: as configured, else iptables
/// where it can be used.
fn reference_backend(
    key: &str,
    configured: Option<&str>,
    iptables_usable: &mut dyn FnMut() -> bool,
) -> Result<Backend> {
    match configured {
        Some("iptables") => Ok(Backend::Iptables),
        Some("nftables") => Ok(Backend::Nftables),
        None if iptables_usable() => Ok(Backend::Iptables),
        None => Ok(Backend::Nftables),
        Some(other) => Err(refuse(format!(
            "{key} {other:?} is not one the reference knows"
        ))),
    }
}

impl State {
    fn read(entry: &Entry, opts: &Options) -> Result<State> {
        let release = opts.release;
        let raw = entry
            .result
            .as_ref()
            .ok_or_else(|| refuse("the cache entry holds no result"))?;
        if entry.config.is_empty() {
            return Err(refuse("the cache entry holds no network configuration"));
        }
        let list = ConfList::from_list_bytes(&entry.config)
            .or_else(|e| ConfList::load(&opts.conf_dir, &entry.network).map_err(|_| e))
            .map_err(|e| refuse(format!("cached configuration: {}", e.msg)))?;
        let (_, result) = CniResult::parse(raw, list.version)
            .map_err(|e| refuse(format!("cached result: {}", e.msg)))?;
        let netns = open_netns(&entry.netns)?;
        let rt = RuntimeConf {
            container_id: entry.container_id.clone(),
            netns: entry.netns.clone(),
            ifname: entry.ifname.clone(),
            args: entry.cni_args.clone(),
            capability_args: entry.capability_args.clone(),
        };
        let mut state = State {
            network: list.name.clone(),
            container_id: entry.container_id.clone(),
            ifname: entry.ifname.clone(),
            masquerade: None,
            spoof_check: None,
            port_maps: Vec::new(),
        };
        let mut iptables_usable = None;
        for plugin in &list.plugins {
            let stdin: Value = serde_json::from_slice(&plugin_stdin(&list, plugin, &rt, None))
                .unwrap_or(Value::Null);
            let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
            let mut usable = || *iptables_usable.get_or_insert_with(iptables_works);
            match kind {
                "bridge" => {
                    state.read_bridge(stdin, &result, netns.as_ref(), release, &mut usable)?
                }
                "portmap" => state.read_portmap(stdin, &result, release, &mut usable)?,
                _ => {}
            }
        }
        Ok(state)
    }

    fn read_bridge(
        &mut self,
        stdin: Value,
        result: &CniResult,
        netns: Option<&Netns>,
        release: Release,
        iptables_usable: &mut dyn FnMut() -> bool,
    ) -> Result<()> {
        let keys: BridgeKeys = crate::protocol::json::from_value(stdin)
            .map_err(|e| refuse(format!("bridge configuration: {e}")))?;
        let layer3 = keys.ipam.kind.is_some_and(|t| !t.is_empty());
        if keys.ip_masq && layer3 {
            let backend = if release.has_nftables() {
                reference_backend(
                    "ipMasqBackend",
                    keys.ip_masq_backend.as_deref(),
                    iptables_usable,
                )?
            } else {
                // Before 1.6 the key does not exist: always iptables.
                Backend::Iptables
            };
            if backend == Backend::Iptables && !iptables_usable() {
                return Err(refuse(
                    "the reference would masquerade with iptables, which does not work here",
                ));
            }
            let ips: Vec<IpNetwork> = result.ips.iter().map(|ip| ip.address).collect();
            check_live_addresses(netns, &self.ifname, &ips)?;
            self.masquerade = Some((ips, backend));
        }
        if keys.macspoofchk {
            let bridge = keys.bridge.unwrap_or_else(|| "cni0".into());
            self.spoof_check = Some(spoof_check_ends(result, &bridge, &self.ifname)?);
        }
        Ok(())
    }

    fn read_portmap(
        &mut self,
        stdin: Value,
        result: &CniResult,
        release: Release,
        iptables_usable: &mut dyn FnMut() -> bool,
    ) -> Result<()> {
        let keys: PortmapKeys = crate::protocol::json::from_value(stdin)
            .map_err(|e| refuse(format!("portmap configuration: {e}")))?;
        let container_ips = portmap::container_ips(result, &self.ifname);
        if keys.runtime_config.port_mappings.is_empty() || container_ips.is_empty() {
            return Ok(());
        }
        let backend = portmap_backend(&keys, release, iptables_usable)?;
        let mappings = keys
            .runtime_config
            .port_mappings
            .iter()
            .map(|m| mapping(m, backend))
            .collect::<Result<Vec<_>>>()?;
        self.port_maps.push(PortMap {
            backend,
            mappings,
            container_ips,
            snat: keys.snat.unwrap_or(true),
            masq_all: keys.masq_all,
            conditions_v4: keys.conditions_v4,
            conditions_v6: keys.conditions_v6,
            mark_bit: keys.mark_masq_bit.unwrap_or(13).min(31),
            external_set_mark_chain: keys.external_set_mark_chain.filter(|c| !c.is_empty()),
        });
        Ok(())
    }

    fn owner(&self) -> Owner<'_> {
        Owner {
            network: &self.network,
            container_id: &self.container_id,
            ifname: &self.ifname,
        }
    }

    fn parts(&self) -> Vec<Part<'_>> {
        let owner = self.owner();
        let mut parts = Vec::new();
        if let Some((ips, backend)) = &self.masquerade {
            parts.push(Part::Masquerade {
                owner,
                ips,
                backend: *backend,
            });
        }
        for p in &self.port_maps {
            parts.push(Part::PortMap {
                attachment: portmap::Attachment {
                    owner,
                    mappings: &p.mappings,
                    container_ips: &p.container_ips,
                    snat: p.snat,
                    masq_all: p.masq_all,
                    conditions_v4: &p.conditions_v4,
                    conditions_v6: &p.conditions_v6,
                    mark_bit: p.mark_bit,
                    external_set_mark_chain: p.external_set_mark_chain.as_deref(),
                },
                backend: p.backend,
            });
        }
        if let Some((host_veth, mac)) = &self.spoof_check {
            parts.push(Part::SpoofCheck {
                owner,
                host_veth,
                mac: *mac,
            });
        }
        parts
    }
}

/// The attachment's namespace (when the cache recorded it): the reference's bridge DEL reads
/// the container's addresses there, and without them leaves its masquerade rules behind
/// (plugins#810), so an attachment whose namespace is gone stays with our DEL.
fn open_netns(path: &str) -> Result<Option<Netns>> {
    if path.is_empty() {
        return Ok(None);
    }
    match Netns::open(path) {
        Ok(ns) => Ok(Some(ns)),
        Err(e @ (NetnsError::NotExist(_) | NetnsError::NotNetns(_))) => Err(refuse(format!(
            "its network namespace is gone ({e}): the reference's DEL would leave its \
             masquerade rules behind; ours removes everything"
        ))),
        Err(e) => Err(refuse(e.to_string())),
    }
}

/// The reference's bridge DEL tears masquerade down for the addresses it finds on the
/// container interface: they must be the cached ones.
fn check_live_addresses(netns: Option<&Netns>, ifname: &str, ips: &[IpNetwork]) -> Result<()> {
    let Some(ns) = netns else {
        return Ok(());
    };
    let nl = Kernel::open(Some(ns))?;
    let Some(link) = nl.link_by_name(ifname)? else {
        return Err(refuse(format!(
            "the container has no interface {ifname:?}: the reference's DEL would leave its \
             masquerade rules behind"
        )));
    };
    let live = nl.addresses(&link)?;
    match ips.iter().find(|ip| !live.contains(ip)) {
        Some(ip) => Err(refuse(format!(
            "{ip} is not on the container's {ifname:?} any more: the reference's DEL would \
             leave its masquerade rules behind"
        ))),
        None => Ok(()),
    }
}

/// The host end of the container's veth (the result's interface outside a sandbox that is not
/// the bridge) and the container's MAC, as the reference's spoof check names them.
fn spoof_check_ends(result: &CniResult, bridge: &str, ifname: &str) -> Result<(String, [u8; 6])> {
    let host = result
        .interfaces
        .iter()
        .find(|i| {
            i.sandbox.is_empty() && i.name != bridge && !i.name.starts_with(&format!("{bridge}."))
        })
        .ok_or_else(|| refuse("the cached result names no host interface for the spoof check"))?;
    let mac = result
        .interfaces
        .iter()
        .find(|i| i.name == ifname && !i.sandbox.is_empty())
        .and_then(|i| crate::kernel::netlink::parse_mac(&i.mac))
        .ok_or_else(|| refuse("the cached result has no MAC of the container interface"))?;
    let exists = Kernel::open(None)?.link_by_name(&host.name)?;
    if exists.is_none() {
        return Err(refuse(format!(
            "the host interface {:?} is gone",
            host.name
        )));
    }
    Ok((host.name.clone(), mac))
}

/// The reference's `SupportsIPTables`: `iptables -t filter -S INPUT` works.
fn iptables_works() -> bool {
    iptables::list_chain(iptables::Family::V4, "filter", "INPUT").is_ok_and(|c| c.is_some())
}

/// iptables conditions start with an option (`-i`, `! -d`), nftables ones with a keyword.
fn condition_backend(conditions: &[String]) -> Option<Backend> {
    let first = conditions.first().filter(|c| !c.is_empty())?;
    Some(if first.starts_with(['-', '!']) {
        Backend::Iptables
    } else {
        Backend::Nftables
    })
}

/// The backend the reference's portmap would pick, or why the reference would treat the
/// config differently from ours.
fn portmap_backend(
    keys: &PortmapKeys,
    release: Release,
    iptables_usable: &mut dyn FnMut() -> bool,
) -> Result<Backend> {
    let conditions = [
        ("conditionsV4", condition_backend(&keys.conditions_v4)),
        ("conditionsV6", condition_backend(&keys.conditions_v6)),
    ];
    if !release.has_nftables() {
        if let Some((key, _)) = conditions
            .iter()
            .find(|(_, b)| *b == Some(Backend::Nftables))
        {
            return Err(refuse(format!(
                "{key} are nftables expressions: the reference {release} pastes them into iptables"
            )));
        }
        if keys.masq_all && !release.has_masq_all() {
            return Err(refuse(format!(
                "masqAll: the reference {release} does not have it (1.2.0), its pod would lose \
                 masquerading"
            )));
        }
        return Ok(Backend::Iptables);
    }
    let backend = reference_backend("backend", keys.backend.as_deref(), iptables_usable)?;
    if let Some((key, _)) = conditions
        .iter()
        .find(|(_, b)| b.is_some_and(|b| b != backend))
    {
        return Err(refuse(format!(
            "{key} do not suit the {backend:?} backend the reference picks (set \"backend\")"
        )));
    }
    if backend == Backend::Nftables {
        if keys.external_set_mark_chain.is_some() {
            return Err(refuse(
                "externalSetMarkChain: the reference's nftables backend refuses it",
            ));
        }
        if keys.masq_all {
            return Err(refuse(
                "masqAll: the reference's nftables backend ignores it, its pod would lose \
                 masquerading",
            ));
        }
    }
    Ok(backend)
}

/// A cached mapping (ours checked it at ADD); the reference's nftables backend writes
/// `protocol` as given, so only lowercase names work there.
fn mapping(m: &MappingKeys, backend: Backend) -> Result<Mapping> {
    let protocol = L4::from_name(&m.protocol.to_ascii_lowercase())
        .ok_or_else(|| refuse(format!("protocol {:?} is not tcp, udp or sctp", m.protocol)))?;
    if backend == Backend::Nftables && protocol.name() != m.protocol {
        return Err(refuse(format!(
            "protocol {:?}: the reference's nftables backend needs {:?}",
            m.protocol,
            protocol.name()
        )));
    }
    let host_ip = match m.host_ip.as_str() {
        "" => None,
        s => Some(
            s.parse::<IpAddr>()
                .map_err(|_| refuse(format!("hostIP {s:?} is not an address")))?,
        ),
    };
    if m.host_port == 0 || m.container_port == 0 {
        return Err(refuse("a port mapping has port 0"));
    }
    Ok(Mapping {
        host_port: m.host_port,
        container_port: m.container_port,
        protocol,
        host_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: Value) -> PortmapKeys {
        crate::protocol::json::from_value(v).unwrap()
    }

    #[test]
    fn portmap_backend_as_the_reference_picks_it() {
        let r11 = Release::parse("1.1.1").unwrap();
        let r19 = Release::NEWEST;
        let yes = &mut || true;
        let pick = |k: Value, r, u: &mut dyn FnMut() -> bool| portmap_backend(&keys(k), r, u);
        use serde_json::json;
        assert_eq!(pick(json!({}), r19, yes).unwrap(), Backend::Iptables);
        assert_eq!(
            pick(json!({}), r19, &mut || false).unwrap(),
            Backend::Nftables
        );
        assert_eq!(
            pick(json!({"backend": "nftables"}), r11, yes).unwrap(),
            Backend::Iptables
        );
        let nft_conditions = json!({"conditionsV4": ["iifname", "eth0"]});
        assert!(pick(nft_conditions.clone(), r11, yes).is_err());
        // Ours picks nftables for them; the reference iptables, and then refuses them.
        assert!(
            pick(nft_conditions, r19, yes)
                .unwrap_err()
                .msg
                .contains("conditionsV4")
        );
        assert!(pick(json!({"masqAll": true}), r11, yes).is_err());
        assert_eq!(
            pick(json!({"masqAll": true}), r19, yes).unwrap(),
            Backend::Iptables
        );
        assert!(pick(json!({"masqAll": true, "backend": "nftables"}), r19, yes).is_err());
    }

    #[test]
    fn nftables_protocols_must_be_written_as_nft_reads_them() {
        let m = |p: &str| MappingKeys {
            host_port: 80,
            container_port: 80,
            protocol: p.into(),
            host_ip: String::new(),
        };
        assert!(mapping(&m("TCP"), Backend::Iptables).is_ok());
        assert!(mapping(&m("TCP"), Backend::Nftables).is_err());
        assert!(mapping(&m("udp"), Backend::Nftables).is_ok());
        assert!(mapping(&m("icmp"), Backend::Iptables).is_err());
    }
}
