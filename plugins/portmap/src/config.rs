//! The portmap plugin's keys, validated where the reference lets bad values through.

use std::net::IpAddr;

use libcni::firewall::Backend;
use libcni::firewall::portmap::Mapping;
use libcni::kernel::nf_tables::L4;
use libcni::protocol::json::Lenient;
use libcni::protocol::skel::Request;
use libcni::{Error, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConf {
    backend: Option<String>,
    snat: Option<bool>,
    #[serde(rename = "masqAll")]
    masq_all: bool,
    #[serde(rename = "markMasqBit")]
    mark_masq_bit: Option<i64>,
    #[serde(rename = "externalSetMarkChain")]
    external_set_mark_chain: Option<String>,
    #[serde(rename = "conditionsV4")]
    conditions_v4: Option<Vec<String>>,
    #[serde(rename = "conditionsV6")]
    conditions_v6: Option<Vec<String>>,
    #[serde(rename = "runtimeConfig")]
    runtime_config: RawRuntime,
}

impl RawRuntime {
    /// Each given mapping, validated.
    fn mappings(&self) -> impl Iterator<Item = Result<Mapping>> + '_ {
        self.port_mappings
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, m)| mapping(i, m))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRuntime {
    #[serde(rename = "portMappings")]
    port_mappings: Option<Vec<RawMapping>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawMapping {
    #[serde(rename = "hostPort")]
    host_port: i64,
    #[serde(rename = "containerPort")]
    container_port: i64,
    protocol: String,
    #[serde(rename = "hostIP")]
    host_ip: String,
}

#[derive(Debug)]
pub struct Conf {
    pub backend: Backend,
    pub snat: bool,
    pub masq_all: bool,
    pub conditions_v4: Vec<String>,
    pub conditions_v6: Vec<String>,
    pub mappings: Vec<Mapping>,
    /// iptables: the masquerade mark bit (default 13) or the chain that sets the mark.
    pub mark_bit: u32,
    pub external_set_mark_chain: Option<String>,
}

/// iptables conditions start with an option (`-i`, `! -d`); nftables ones with a keyword.
fn looks_like_iptables(conditions: &[String]) -> bool {
    conditions
        .first()
        .is_some_and(|c| c.starts_with('-') || c.starts_with('!'))
}

/// A condition is pasted into one rule of this attachment (an `nft -f` line, an
/// `iptables-restore` line): nothing in it may end that rule, start another command or section,
/// or comment out the rest of the line.
fn check_conditions(key: &str, conditions: &[String]) -> Result<()> {
    for c in conditions {
        if let Some(bad) = c
            .chars()
            .find(|ch| ch.is_control() || matches!(ch, ';' | '#'))
        {
            return Err(Error::invalid_config(format!(
                "{key}: {c:?} contains {bad:?}, which could end the rule it belongs to"
            )));
        }
    }
    Ok(())
}

/// An iptables chain name (what `-j` jumps to): 1 to 28 characters of letters, digits and
/// `_ . + -`, not starting with `-` or `!` (it would read as an option).
fn check_chain_name(key: &str, name: &str) -> Result<()> {
    let valid = (1..=28).contains(&name.len())
        && !name.starts_with(['-', '!'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'));
    if valid {
        return Ok(());
    }
    Err(Error::invalid_config(format!(
        "{key} {name:?} is not an iptables chain name (1-28 of A-Z a-z 0-9 _ . + -)"
    )))
}

impl Conf {
    pub fn load(req: &Request) -> Result<Conf> {
        let raw: RawConf = req.plugin_conf()?;
        let bad = |msg: String| Error::invalid_config(msg);
        let conditions_v4 = raw.conditions_v4.unwrap_or_default();
        let conditions_v6 = raw.conditions_v6.unwrap_or_default();
        let iptables_conditions =
            looks_like_iptables(&conditions_v4) || looks_like_iptables(&conditions_v6);
        let backend = match raw.backend.as_deref() {
            Some("nftables") => Backend::Nftables,
            Some("iptables") => Backend::Iptables,
            Some(other) => {
                return Err(bad(format!(
                    "unrecognized backend {other:?} (expected \"nftables\" or \"iptables\")"
                )));
            }
            None if iptables_conditions || raw.external_set_mark_chain.is_some() => {
                Backend::Iptables
            }
            None => Backend::choose(None),
        };
        if let Some(chain) = raw
            .external_set_mark_chain
            .as_deref()
            .filter(|c| !c.is_empty())
        {
            check_chain_name("externalSetMarkChain", chain)?;
        }
        for (key, conds) in [
            ("conditionsV4", &conditions_v4),
            ("conditionsV6", &conditions_v6),
        ] {
            check_conditions(key, conds)?;
            match backend {
                Backend::Nftables if looks_like_iptables(conds) => {
                    return Err(bad(format!(
                        "{key} {conds:?} are iptables options but the backend is nftables"
                    )));
                }
                Backend::Iptables if !conds.is_empty() && !looks_like_iptables(conds) => {
                    return Err(bad(format!(
                        "{key} {conds:?} are nftables expressions but the backend is iptables"
                    )));
                }
                _ => {}
            }
        }
        if let Some(bit) = raw.mark_masq_bit {
            if !(0..=31).contains(&bit) {
                return Err(bad(format!("markMasqBit {bit} must be 0 to 31")));
            }
            if raw.external_set_mark_chain.is_some() {
                return Err(bad(
                    "cannot set both markMasqBit and externalSetMarkChain".into()
                ));
            }
        }
        if raw.external_set_mark_chain.is_some() && backend == Backend::Nftables {
            return Err(bad("externalSetMarkChain needs the iptables backend".into()));
        }
        let mappings = raw.runtime_config.mappings().collect::<Result<Vec<_>>>()?;
        Ok(Conf {
            backend,
            snat: raw.snat.unwrap_or(true),
            masq_all: raw.masq_all,
            conditions_v4,
            conditions_v6,
            mappings,
            mark_bit: raw.mark_masq_bit.map_or(13, |b| b as u32),
            external_set_mark_chain: raw.external_set_mark_chain.filter(|c| !c.is_empty()),
        })
    }
}

/// What DEL reads: only `runtimeConfig.portMappings`, leniently, so that a config whose other
/// keys (or this one) no longer validate still lets its pods be torn down. `backend` is not
/// read: DEL removes the attachment's rules from both backends (a config may have switched).
#[derive(Debug)]
pub struct Teardown {
    /// The runtime said there are no mappings (an empty list): no rules were made.
    pub no_mappings: bool,
    /// The mappings that still validate, for the UDP conntrack flush.
    pub mappings: Vec<Mapping>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TeardownKeys {
    #[serde(rename = "runtimeConfig")]
    runtime_config: Lenient<TeardownRuntime>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TeardownRuntime {
    #[serde(rename = "portMappings")]
    port_mappings: Lenient<Vec<Lenient<RawMapping>>>,
}

impl Teardown {
    pub fn load(req: &Request) -> Result<Teardown> {
        let keys: TeardownKeys = req.plugin_conf()?;
        let given = match keys.runtime_config {
            Lenient::Valid(runtime) => runtime.port_mappings,
            Lenient::Absent => Lenient::Absent,
            Lenient::Invalid(why) => Lenient::Invalid(why),
        };
        let entries = match given {
            Lenient::Absent => None,
            Lenient::Valid(entries) => Some(entries),
            Lenient::Invalid(why) => {
                eprintln!("portmap: runtimeConfig.portMappings: {why}; removing the rules anyway");
                None
            }
        };
        let no_mappings = entries.as_ref().is_some_and(Vec::is_empty);
        let mappings = entries
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, m)| mapping(i, &m.valid()?).ok())
            .collect();
        Ok(Teardown {
            no_mappings,
            mappings,
        })
    }
}

fn mapping(i: usize, raw: &RawMapping) -> Result<Mapping> {
    let key = format!("runtimeConfig.portMappings[{i}]");
    let port = |name: &str, v: i64| {
        u16::try_from(v)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::invalid_config(format!("{key}.{name} {v} must be 1 to 65535")))
    };
    let protocol = L4::from_name(&raw.protocol.to_ascii_lowercase()).ok_or_else(|| {
        Error::invalid_config(format!(
            "{key}.protocol {:?} must be tcp, udp or sctp",
            raw.protocol
        ))
    })?;
    let host_ip = match raw.host_ip.as_str() {
        "" => None,
        s => Some(s.parse::<IpAddr>().map_err(|_| {
            Error::invalid_config(format!("{key}.hostIP {s:?} is not an IP address"))
        })?),
    };
    Ok(Mapping {
        host_port: port("hostPort", raw.host_port)?,
        container_port: port("containerPort", raw.container_port)?,
        protocol,
        host_ip,
    })
}
