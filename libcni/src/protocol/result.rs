//! Results in every spec version: one internal shape (1.1.0) and exact conversion up and down,
//! as the Go `pkg/types` packages do it.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};

use crate::protocol::error::{Error, Result};
use crate::protocol::version::{Family, Version};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces`; absent in IPAM results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Address with its prefix length (host bits kept).
    pub address: IpNetwork,
    #[serde(
        default,
        deserialize_with = "lenient_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(
        default,
        deserialize_with = "lenient_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub advmss: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: 0,
            advmss: 0,
            priority: 0,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Go's `net.IP` reads `""` as no address; accept that too.
fn lenient_ip<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<IpAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// 0.1.0 / 0.2.0 layout.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Result020 {
    ip4: Option<Ip020>,
    ip6: Option<Ip020>,
    dns: Dns,
}

#[derive(Deserialize)]
struct Ip020 {
    ip: IpNetwork,
    #[serde(default, deserialize_with = "lenient_ip")]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
}

impl CniResult {
    /// Reads a result printed by a plugin. Its own `cniVersion` decides the layout; a result
    /// without one is read as `default` (what the Go library does with IPAM output).
    pub fn parse(value: &Value, default: Version) -> Result<(Version, CniResult)> {
        let version = match value.get("cniVersion").and_then(Value::as_str) {
            None | Some("") => default,
            Some(s) => s.parse().map_err(|_| {
                Error::incompatible(format!("result has unsupported cniVersion {s:?}"))
                    .with_details(format!("supported: {}", Version::list()))
            })?,
        };
        let decode = |e: crate::protocol::json::KeyError| {
            Error::decode(format!("cannot decode {version} result: {e}"))
        };
        let result = match version.family() {
            Family::Legacy020 => {
                let old: Result020 =
                    crate::protocol::json::from_value(value.clone()).map_err(decode)?;
                let mut result = CniResult {
                    dns: old.dns,
                    ..Default::default()
                };
                for ip in [old.ip4, old.ip6].into_iter().flatten() {
                    result.ips.push(IpConfig {
                        interface: None,
                        address: ip.ip,
                        gateway: ip.gateway,
                    });
                    result
                        .routes
                        .extend(ip.routes.into_iter().map(|r| Route::new(r.dst, r.gw)));
                }
                result
            }
            // 0.3.x/0.4.0 differ from 1.x only by the `version` of each IP, derived from the address.
            Family::Legacy040 | Family::Current => {
                crate::protocol::json::from_value(value.clone()).map_err(decode)?
            }
        };
        if let Some((i, ip)) = result
            .ips
            .iter()
            .enumerate()
            .find(|(_, ip)| ip.interface.is_some_and(|n| n >= result.interfaces.len()))
        {
            return Err(Error::decode(format!(
                "{version} result: ips[{i}].interface {} names no entry of interfaces",
                ip.interface.unwrap_or_default()
            )));
        }
        Ok((version, result))
    }

    /// The result as the given version prints it (with `cniVersion`), or code 1 when that version
    /// cannot express it.
    pub fn render(&self, version: Version) -> Result<Value> {
        let mut out = match version.family() {
            Family::Current => serde_json::to_value(self).unwrap_or_default(),
            Family::Legacy040 => self.render_040(),
            Family::Legacy020 => self.render_020(version)?,
        };
        if let Value::Object(map) = &mut out {
            map.insert("cniVersion".into(), json!(version.as_str()));
        }
        Ok(out)
    }

    fn render_040(&self) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    m.insert("mac".into(), json!(i.mac));
                }
                if !i.sandbox.is_empty() {
                    m.insert("sandbox".into(), json!(i.sandbox));
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = serde_json::to_value(ip).unwrap_or_default();
                v["version"] = json!(if ip.address.is_ipv4() { "4" } else { "6" });
                v
            })
            .collect();
        let mut m = Map::new();
        if !interfaces.is_empty() {
            m.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !ips.is_empty() {
            m.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            m.insert(
                "routes".into(),
                serde_json::to_value(&self.routes).unwrap_or_default(),
            );
        }
        m.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_default(),
        );
        Value::Object(m)
    }

    fn render_020(&self, version: Version) -> Result<Value> {
        let mut m = Map::new();
        for (key, v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self.ips.iter().find(|ip| ip.address.is_ipv4() == v4) else {
                continue;
            };
            let routes: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| r.dst.is_ipv4() == v4)
                .map(|r| match r.gw {
                    Some(gw) => json!({"dst": r.dst, "gw": gw}),
                    None => json!({"dst": r.dst}),
                })
                .collect();
            let mut o = Map::new();
            o.insert("ip".into(), json!(ip.address));
            if let Some(gw) = ip.gateway {
                o.insert("gateway".into(), json!(gw));
            }
            if !routes.is_empty() {
                o.insert("routes".into(), Value::Array(routes));
            }
            m.insert(key.into(), Value::Object(o));
        }
        if m.is_empty() {
            return Err(Error::incompatible(format!(
                "cannot convert result to {version}: no valid IP addresses"
            )));
        }
        m.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_default(),
        );
        Ok(Value::Object(m))
    }

    /// Converts a result printed in any version to `version`'s layout.
    pub fn convert(value: &Value, default: Version, version: Version) -> Result<Value> {
        CniResult::parse(value, default)?.1.render(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> CniResult {
        serde_json::from_value(json!({
            "interfaces": [
                {"name": "cni0", "mac": "0a:58:0a:01:00:01"},
                {"name": "eth0", "mac": "0a:58:0a:01:00:05", "mtu": 1400, "sandbox": "/run/netns/x",
                 "socketPath": "/s", "pciID": "0000:00:01.0"}],
            "ips": [
                {"interface": 1, "address": "10.1.0.5/16", "gateway": "10.1.0.1"},
                {"interface": 1, "address": "10.2.0.5/16"},
                {"interface": 1, "address": "2001:db8::5/64", "gateway": "2001:db8::1"}],
            "routes": [
                {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1300, "priority": 5, "table": 100, "scope": 0},
                {"dst": "::/0"}],
            "dns": {"nameservers": ["10.1.0.1"], "search": ["svc"]}
        }))
        .unwrap()
    }

    #[test]
    fn renders_1x_with_only_the_label_changing() {
        let r = full();
        let v11 = r.render(Version::V1_1_0).unwrap();
        let mut v10 = r.render(Version::V1_0_0).unwrap();
        assert_eq!(v11["cniVersion"], "1.1.0");
        v10["cniVersion"] = json!("1.1.0");
        assert_eq!(v10, v11);
        assert_eq!(v11["interfaces"][1]["mtu"], 1400);
        assert_eq!(v11["routes"][0]["table"], 100);
        assert!(v11["ips"][0].get("version").is_none());
        // Empty DNS is left out of 1.x results.
        let bare = CniResult {
            ips: r.ips.clone(),
            ..Default::default()
        };
        assert!(bare.render(Version::V1_0_0).unwrap().get("dns").is_none());
    }

    #[test]
    fn renders_040_with_versions_and_without_new_interface_fields() {
        let v = full().render(Version::V0_4_0).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][2]["version"], "6");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(
            v["interfaces"][1],
            json!({"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/run/netns/x"})
        );
        // Routes keep every field, as Go copies them.
        assert_eq!(v["routes"][0]["mtu"], 1300);
        let empty = CniResult::default().render(Version::V0_3_1).unwrap();
        assert_eq!(empty, json!({"cniVersion": "0.3.1", "dns": {}}));
    }

    #[test]
    fn renders_020_first_ip_per_family_and_routes_by_family() {
        let v = full().render(Version::V0_2_0).unwrap();
        assert_eq!(
            v,
            json!({
                "cniVersion": "0.2.0",
                "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]},
                "ip6": {"ip": "2001:db8::5/64", "gateway": "2001:db8::1", "routes": [{"dst": "::/0"}]},
                "dns": {"nameservers": ["10.1.0.1"], "search": ["svc"]}
            })
        );
        let err = CniResult::default().render(Version::V0_1_0).unwrap_err();
        assert_eq!(err.code, crate::Code::IncompatibleVersion);
        assert!(err.msg.contains("no valid IP addresses"), "{}", err.msg);
    }

    #[test]
    fn parses_every_layout_back() {
        let r = full();
        for v in Version::ALL {
            let printed = r.render(v).unwrap();
            let (got_v, back) = CniResult::parse(&printed, Version::V1_1_0).unwrap();
            assert_eq!(got_v, v);
            let expected = match v.family() {
                Family::Current => r.clone(),
                Family::Legacy040 => {
                    let mut e = r.clone();
                    for i in &mut e.interfaces {
                        i.mtu = 0;
                        i.socket_path.clear();
                        i.pci_id.clear();
                    }
                    e
                }
                Family::Legacy020 => CniResult {
                    ips: vec![r.ips[0].clone(), r.ips[2].clone()]
                        .into_iter()
                        .map(|mut ip| {
                            ip.interface = None;
                            ip
                        })
                        .collect(),
                    routes: vec![
                        Route::new(
                            "0.0.0.0/0".parse().unwrap(),
                            Some("10.1.0.1".parse().unwrap()),
                        ),
                        Route::new("::/0".parse().unwrap(), None),
                    ],
                    dns: r.dns.clone(),
                    interfaces: vec![],
                },
            };
            assert_eq!(back, expected, "round trip through {v}");
        }
    }

    #[test]
    fn parse_uses_default_version_and_rejects_unknown() {
        let ipam = json!({"ips": [{"address": "10.0.0.2/24", "gateway": ""}]});
        let (v, r) = CniResult::parse(&ipam, Version::V0_4_0).unwrap();
        assert_eq!(v, Version::V0_4_0);
        assert_eq!(r.ips[0].gateway, None);
        let err = CniResult::parse(&json!({"cniVersion": "7.0.0"}), Version::V1_0_0).unwrap_err();
        assert_eq!(err.code, crate::Code::IncompatibleVersion);
        let dangling =
            json!({"cniVersion": "1.0.0", "ips": [{"interface": 0, "address": "10.0.0.2/24"}]});
        let err = CniResult::parse(&dangling, Version::V1_0_0).unwrap_err();
        assert!(err.msg.contains("ips[0].interface 0"), "{}", err.msg);
        assert_eq!(err.code, crate::Code::Decode);
        let err = CniResult::parse(
            &json!({"cniVersion": "1.0.0", "ips": [{"address": "nope"}]}),
            Version::V1_0_0,
        )
        .unwrap_err();
        assert_eq!(err.code, crate::Code::Decode);
    }

    #[test]
    fn converts_020_up_to_1x() {
        let old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24", "gateway": "10.0.0.1",
            "routes": [{"dst": "0.0.0.0/0"}]}, "dns": {}});
        let v = CniResult::convert(&old, Version::V1_0_0, Version::V1_0_0).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1"}],
                   "routes": [{"dst": "0.0.0.0/0"}]})
        );
    }
}
