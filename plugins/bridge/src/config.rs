//! The bridge plugin's keys, with the reference's defaults and checks.

use libcni::kernel::netlink::parse_mac;
use libcni::protocol::args::CniArgs;
use libcni::protocol::json::Lenient;
use libcni::protocol::skel::Request;
use libcni::{Error, Result};
use serde::Deserialize;

/// The validated configuration: what ADD, CHECK and STATUS work from.
#[derive(Debug)]
pub struct Conf {
    pub bridge: String,
    /// IPAM plugin type; `None` is L2 mode.
    pub ipam: Option<String>,
    /// `isGateway`, also implied by `isDefaultGateway`.
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    /// `nftables`, `iptables`, or `None` for the node's choice.
    pub ip_masq_backend: Option<String>,
    /// 0 is the kernel's default.
    pub mtu: u32,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    /// The port's untagged VLAN (PVID); 0 is none.
    pub vlan: u16,
    /// Tagged VLANs of the port, sorted.
    pub trunk: Vec<u16>,
    pub preserve_default_vlan: bool,
    pub macspoofchk: bool,
    pub enabledad: bool,
    pub disable_container_interface: bool,
    pub port_isolation: bool,
    /// The container interface's MAC, when the runtime asks for one.
    pub mac: Option<[u8; 6]>,
}

/// The bridge name when the config has none.
const DEFAULT_BRIDGE: &str = "cni0";

/// What the kernel accepts for a veth and a bridge (`ETH_MIN_MTU`, `ETH_MAX_MTU`); checked
/// here so that a bad value is a config error naming the key, not a netlink EINVAL.
const MTU: std::ops::RangeInclusive<u32> = 68..=65535;

impl Conf {
    pub fn load(req: &Request) -> Result<Conf> {
        let keys: Keys = req.plugin_conf()?;
        keys.check_values()?;
        let trunk = trunk_vids(&keys.vlan_trunk)?;
        req.conf.dns()?;
        let ipam = req.conf.ipam_type().map(str::to_string);
        keys.check_combinations(ipam.is_some())?;
        let mac = container_mac(req, &keys)?;
        Ok(Conf {
            bridge: keys.bridge,
            ipam,
            is_gateway: keys.is_gateway || keys.is_default_gateway,
            is_default_gateway: keys.is_default_gateway,
            force_address: keys.force_address,
            ip_masq: keys.ip_masq,
            ip_masq_backend: keys.ip_masq_backend,
            mtu: keys.mtu,
            hairpin_mode: keys.hairpin_mode,
            promisc_mode: keys.promisc_mode,
            vlan: keys.vlan as u16,
            trunk,
            preserve_default_vlan: keys.preserve_default_vlan,
            macspoofchk: keys.macspoofchk,
            enabledad: keys.enabledad,
            disable_container_interface: keys.disable_container_interface,
            port_isolation: keys.port_isolation,
            mac,
        })
    }

    pub fn has_vlans(&self) -> bool {
        self.vlan != 0 || !self.trunk.is_empty()
    }
}

/// The keys as written, before [`Conf::load`] checks them.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct Keys {
    bridge: String,
    #[serde(rename = "isGateway")]
    is_gateway: bool,
    #[serde(rename = "isDefaultGateway")]
    is_default_gateway: bool,
    #[serde(rename = "forceAddress")]
    force_address: bool,
    #[serde(rename = "ipMasq")]
    ip_masq: bool,
    #[serde(rename = "ipMasqBackend")]
    ip_masq_backend: Option<String>,
    mtu: u32,
    #[serde(rename = "hairpinMode")]
    hairpin_mode: bool,
    #[serde(rename = "promiscMode")]
    promisc_mode: bool,
    vlan: i64,
    #[serde(rename = "vlanTrunk")]
    vlan_trunk: Vec<Trunk>,
    #[serde(rename = "preserveDefaultVlan")]
    preserve_default_vlan: bool,
    macspoofchk: bool,
    enabledad: bool,
    #[serde(rename = "disableContainerInterface")]
    disable_container_interface: bool,
    #[serde(rename = "portIsolation")]
    port_isolation: bool,
    #[serde(rename = "runtimeConfig")]
    runtime_config: MacHolder,
    args: ArgsHolder,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            bridge: DEFAULT_BRIDGE.into(),
            is_gateway: false,
            is_default_gateway: false,
            force_address: false,
            ip_masq: false,
            ip_masq_backend: None,
            mtu: 0,
            hairpin_mode: false,
            promisc_mode: false,
            vlan: 0,
            vlan_trunk: Vec::new(),
            preserve_default_vlan: false,
            macspoofchk: false,
            enabledad: false,
            disable_container_interface: false,
            port_isolation: false,
            runtime_config: MacHolder::default(),
            args: ArgsHolder::default(),
        }
    }
}

impl Keys {
    /// The bridge name, MTU and VLAN are in range.
    fn check_values(&self) -> Result<()> {
        if !valid_bridge_name(&self.bridge) {
            return Err(Error::invalid_config(format!(
                "invalid bridge name {:?}",
                self.bridge
            )));
        }
        if self.mtu != 0 && !MTU.contains(&self.mtu) {
            return Err(Error::invalid_config(format!(
                "invalid MTU {} (key \"mtu\", must be {} to {}, or 0 for the default)",
                self.mtu,
                MTU.start(),
                MTU.end()
            )));
        }
        if !(0..=4094).contains(&self.vlan) {
            return Err(Error::invalid_config(format!(
                "invalid VLAN ID {} (key \"vlan\", must be 0 to 4094)",
                self.vlan
            )));
        }
        Ok(())
    }

    /// No two keys contradict each other, and the masquerade backend is one we have.
    fn check_combinations(&self, layer3: bool) -> Result<()> {
        if layer3 && self.disable_container_interface {
            return Err(Error::invalid_config(
                "cannot use IPAM when \"disableContainerInterface\" is set: the interface stays down",
            ));
        }
        if self.hairpin_mode && self.promisc_mode {
            return Err(Error::invalid_config(
                "cannot set both \"hairpinMode\" and \"promiscMode\"",
            ));
        }
        match self.ip_masq_backend.as_deref() {
            None | Some("nftables") | Some("iptables") => Ok(()),
            Some(other) => Err(Error::invalid_config(format!(
                "unknown ipMasqBackend {other:?} (expected \"nftables\" or \"iptables\")"
            ))),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Trunk {
    id: Option<i64>,
    #[serde(rename = "minID")]
    min_id: Option<i64>,
    #[serde(rename = "maxID")]
    max_id: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MacHolder {
    mac: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ArgsHolder {
    cni: MacHolder,
}

/// What DEL and GC read: only the keys they need, each read on its own without failing, so
/// that a config that can no longer ADD (a key of the wrong type, a bad MAC or VLAN) still lets
/// its pods be torn down (a runtime stops a DEL chain at the first plugin that fails).
#[derive(Debug)]
pub struct Teardown {
    /// `None` when the key holds no usable name: what needs the bridge is then skipped.
    pub bridge: Option<String>,
    pub ipam: Option<String>,
    /// Unreadable flags count as set: removing what an attachment does not own is a no-op.
    pub ip_masq: bool,
    pub macspoofchk: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TeardownKeys {
    bridge: Lenient<String>,
    #[serde(rename = "ipMasq")]
    ip_masq: Lenient<bool>,
    macspoofchk: Lenient<bool>,
}

impl Teardown {
    pub fn load(req: &Request) -> Result<Teardown> {
        let keys: TeardownKeys = req.plugin_conf()?;
        let flag = |key: &str, value: Lenient<bool>| match value {
            Lenient::Absent => false,
            Lenient::Valid(on) => on,
            Lenient::Invalid(why) => {
                eprintln!("bridge: key {key:?}: {why}; cleaning up as if it were true");
                true
            }
        };
        let bridge = match keys.bridge {
            Lenient::Absent => Some(DEFAULT_BRIDGE.to_string()),
            Lenient::Valid(name) => Some(name).filter(|n| valid_bridge_name(n)),
            Lenient::Invalid(_) => None,
        };
        Ok(Teardown {
            bridge,
            ipam: req.conf.ipam_type().map(str::to_string),
            ip_masq: flag("ipMasq", keys.ip_masq),
            macspoofchk: flag("macspoofchk", keys.macspoofchk),
        })
    }
}

fn valid_bridge_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && !name.contains(['/', ':', ' '])
}

/// `MAC` from CNI_ARGS, overridden by `args.cni.mac`, overridden by `runtimeConfig.mac`.
fn container_mac(req: &Request, keys: &Keys) -> Result<Option<[u8; 6]>> {
    let args = CniArgs::parse(&req.raw_args)?;
    args.check_known(&["MAC"])?;
    let sources = [
        ("CNI_ARGS MAC", args.get("MAC").map(str::to_string)),
        ("args.cni.mac", keys.args.cni.mac.clone()),
        ("runtimeConfig.mac", keys.runtime_config.mac.clone()),
    ];
    let mut mac = None;
    for (key, value) in sources {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            let parsed = parse_mac(&v).ok_or_else(|| {
                Error::invalid_config(format!("{key}: {v:?} is not a MAC address"))
            })?;
            mac = Some(parsed);
        }
    }
    Ok(mac)
}

/// More entries than VLAN IDs cannot be a real trunk; refused before anything is expanded.
const MAX_TRUNK_ENTRIES: usize = 4094;

fn trunk_vids(trunks: &[Trunk]) -> Result<Vec<u16>> {
    let bad = |msg: String| Error::invalid_config(format!("vlanTrunk: {msg}"));
    if trunks.len() > MAX_TRUNK_ENTRIES {
        return Err(bad(format!(
            "{} entries, at most {MAX_TRUNK_ENTRIES} (one per VLAN ID)",
            trunks.len()
        )));
    }
    let valid = |v: i64| (1..=4094).contains(&v);
    let mut vids = VlanSet::default();
    for t in trunks {
        match (t.min_id, t.max_id) {
            (Some(min), Some(max)) => {
                if !valid(min) {
                    return Err(bad(format!("minID {min} must be 1 to 4094")));
                }
                if !valid(max) {
                    return Err(bad(format!("maxID {max} must be 1 to 4094")));
                }
                if max < min {
                    return Err(bad(format!("minID {min} is greater than maxID {max}")));
                }
                vids.insert_range(min as u16, max as u16);
            }
            (None, Some(_)) => {
                return Err(bad(
                    "minID and maxID must be set together, minID is missing".into(),
                ));
            }
            (Some(_), None) => {
                return Err(bad(
                    "minID and maxID must be set together, maxID is missing".into(),
                ));
            }
            (None, None) => {}
        }
        if let Some(id) = t.id {
            if !valid(id) {
                return Err(bad(format!("id {id} must be 1 to 4094")));
            }
            vids.insert_range(id as u16, id as u16);
        }
    }
    Ok(vids.ids())
}

/// VLAN IDs 0..4096 as a bit set: duplicates and overlapping ranges cost nothing.
struct VlanSet([u64; 64]);

impl Default for VlanSet {
    fn default() -> Self {
        VlanSet([0; 64])
    }
}

impl VlanSet {
    /// Adds `min..=max` (both below 4096) a word at a time.
    fn insert_range(&mut self, min: u16, max: u16) {
        let (min, max) = (usize::from(min), usize::from(max));
        for word in min / 64..=max / 64 {
            let lo = if word == min / 64 { min % 64 } else { 0 };
            let hi = if word == max / 64 { max % 64 } else { 63 };
            self.0[word] |= (u64::MAX >> (63 - (hi - lo))) << lo;
        }
    }

    /// The IDs in ascending order.
    fn ids(&self) -> Vec<u16> {
        (0..4096u16)
            .filter(|id| self.0[usize::from(id / 64)] & (1 << (id % 64)) != 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: Option<i64>, min: Option<i64>, max: Option<i64>) -> Trunk {
        Trunk {
            id,
            min_id: min,
            max_id: max,
        }
    }

    #[test]
    fn vlan_set_ranges_cover_word_edges() {
        let mut set = VlanSet::default();
        set.insert_range(63, 129);
        set.insert_range(4094, 4094);
        set.insert_range(1, 1);
        let want: Vec<u16> = [1].into_iter().chain(63..=129).chain([4094]).collect();
        assert_eq!(set.ids(), want);
        let mut all = VlanSet::default();
        all.insert_range(1, 4094);
        assert_eq!(all.ids().len(), 4094);
    }

    #[test]
    fn huge_trunks_are_bounded() {
        let full = || t(None, Some(1), Some(4094));
        let many: Vec<Trunk> = (0..4094).map(|_| full()).collect();
        assert_eq!(trunk_vids(&many).unwrap().len(), 4094);
        let too_many: Vec<Trunk> = (0..4095).map(|_| full()).collect();
        let e = trunk_vids(&too_many).unwrap_err();
        assert_eq!(e.code, libcni::Code::InvalidConfig);
        assert!(e.msg.starts_with("vlanTrunk: 4095 entries"), "{}", e.msg);
    }

    #[test]
    fn trunks() {
        assert_eq!(trunk_vids(&[]).unwrap(), Vec::<u16>::new());
        assert_eq!(
            trunk_vids(&[t(Some(101), Some(200), Some(202))]).unwrap(),
            vec![101, 200, 201, 202]
        );
        for (bad, needle) in [
            (t(None, Some(5), None), "maxID is missing"),
            (t(None, None, Some(5)), "minID is missing"),
            (t(None, Some(-1), Some(5)), "minID -1"),
            (t(None, Some(1), Some(4095)), "maxID 4095"),
            (t(None, Some(9), Some(5)), "greater"),
            (t(Some(0), None, None), "id 0"),
        ] {
            let e = trunk_vids(&[bad]).unwrap_err();
            assert_eq!(e.code, libcni::Code::InvalidConfig);
            assert!(e.msg.contains(needle), "{}", e.msg);
        }
    }
}
