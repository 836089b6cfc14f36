//! Network configs for black-box tests.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{Call, Outcome, bin, dir_files};

/// A host-local network for black-box tests: the config (`name`, `type`, `ipam.type` filled in)
/// with its own temporary `ipam.dataDir`, which goes away with the value.
pub struct HostLocalNet {
    pub data: tempfile::TempDir,
    /// The whole stdin config; tests may change it.
    pub conf: Value,
}

impl HostLocalNet {
    pub const NAME: &'static str = "hl-net";

    pub fn new(version: &str, mut ipam: Value) -> HostLocalNet {
        let data = tempfile::tempdir().unwrap();
        ipam["type"] = "host-local".into();
        ipam["dataDir"] = data.path().display().to_string().into();
        let conf = serde_json::json!({
            "cniVersion": version, "name": Self::NAME, "type": "host-local", "ipam": ipam,
        });
        HostLocalNet { data, conf }
    }

    /// Sets a top-level key of the config (`runtimeConfig`, `args`, …).
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.conf[key] = value;
        self
    }

    pub fn stdin(&self) -> String {
        self.conf.to_string()
    }

    /// The config with one more top-level key (`prevResult`, `cni.dev/valid-attachments`, …).
    pub fn stdin_with(&self, key: &str, value: Value) -> String {
        let mut conf = self.conf.clone();
        conf[key] = value;
        conf.to_string()
    }

    /// The network's lease directory, `<dataDir>/<name>`.
    pub fn dir(&self) -> PathBuf {
        self.data.path().join(Self::NAME)
    }

    /// Our host-local, for container `id` and interface `ifname`.
    pub fn exec(&self, command: &str, id: &str, ifname: &str) -> Call<'static> {
        self.exec_as(&bin("host-local"), command, id, ifname)
    }

    /// Another host-local binary (the reference) on the same config.
    pub fn exec_as(&self, plugin: &Path, command: &str, id: &str, ifname: &str) -> Call<'static> {
        Call::outside(plugin, command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_IFNAME", ifname)
    }

    pub fn run(&self, command: &str, id: &str, ifname: &str) -> Outcome {
        self.exec(command, id, ifname).run(&self.stdin())
    }

    /// A successful ADD for (`id`, eth0); its result.
    pub fn add(&self, id: &str) -> Value {
        self.run("ADD", id, "eth0").ok().clone()
    }

    /// A successful DEL for (`id`, eth0).
    pub fn del(&self, id: &str) {
        let out = self.run("DEL", id, "eth0");
        out.ok();
        assert!(out.stdout.is_empty(), "DEL prints nothing: {out:?}");
    }

    /// Lease files: address (file name) → content.
    pub fn leases(&self) -> std::collections::BTreeMap<String, String> {
        dir_files(&self.dir())
            .into_iter()
            .filter(|(name, _)| name.parse::<std::net::IpAddr>().is_ok())
            .map(|(name, f)| (name, String::from_utf8_lossy(&f.content).into_owned()))
            .collect()
    }

    /// The content of `last_reserved_ip.<set>`, if the file exists.
    pub fn last_reserved(&self, set: usize) -> Option<String> {
        std::fs::read_to_string(self.dir().join(format!("last_reserved_ip.{set}"))).ok()
    }
}

/// The bridge plugin's config, built up: a bridge, host-local IPAM, other keys; then one plugin
/// of a list ([`BridgeConf::plugin`]) or a whole network ([`BridgeConf::network`]).
#[derive(Clone)]
pub struct BridgeConf(Value);

impl BridgeConf {
    /// On bridge `br`, without IPAM.
    pub fn new(br: &str) -> BridgeConf {
        BridgeConf(json!({"type": "bridge", "bridge": br}))
    }

    /// host-local IPAM with `ranges` (the `ipam.ranges` array).
    pub fn ranges(mut self, ranges: Value) -> Self {
        self.0["ipam"] = json!({"type": "host-local", "ranges": ranges});
        self
    }

    /// host-local IPAM with one range set per subnet; no subnet: L2 (`"ipam": {}`).
    pub fn subnets(mut self, subnets: &[&str]) -> Self {
        if subnets.is_empty() {
            self.0["ipam"] = json!({});
            return self;
        }
        self.ranges(subnets.iter().map(|s| json!([{"subnet": s}])).collect())
    }

    /// host-local's leases under `data` (nothing for L2).
    pub fn data_dir(mut self, data: &Path) -> Self {
        if self.0["ipam"].get("type").is_some() {
            self.0["ipam"]["dataDir"] = json!(data);
        }
        self
    }

    /// Sets every key of the object `extra`.
    pub fn with(mut self, extra: &Value) -> Self {
        for (k, v) in extra.as_object().into_iter().flatten() {
            self.0[k] = v.clone();
        }
        self
    }

    /// As one plugin of a list.
    pub fn plugin(self) -> Value {
        self.0
    }

    /// As a whole network config.
    pub fn network(self, version: &str, name: &str) -> Value {
        let mut conf = self.0;
        conf["cniVersion"] = version.into();
        conf["name"] = name.into();
        conf
    }
}

/// The portmap plugin's config: the `portMappings` capability and the keys of `extra`.
pub fn portmap_plugin(extra: &Value) -> Value {
    let mut portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    for (k, v) in extra.as_object().into_iter().flatten() {
        portmap[k] = v.clone();
    }
    portmap
}

/// The port-mapping chain as a conflist: loopback, then `bridge`, then `portmap`.
pub fn portmap_conflist(version: &str, name: &str, bridge: BridgeConf, portmap: Value) -> Value {
    json!({
        "cniVersion": version, "name": name,
        "plugins": [{"type": "loopback"}, bridge.plugin(), portmap],
    })
}

/// A conflist like containerd's default: loopback, bridge `bridge` (gateway, masquerade,
/// hairpin, spoof check) with host-local on `subnets` (one range set each) in `data`, and
/// portmap with the `portMappings` capability; `backend` `"iptables"` puts both bridge's
/// masquerade and portmap on iptables.
pub fn containerd_conflist(
    network: &str,
    bridge: &str,
    data: &Path,
    subnets: &[&str],
    backend: &str,
) -> Value {
    let ranges: Vec<Value> = subnets
        .iter()
        .map(|s| serde_json::json!([{ "subnet": s }]))
        .collect();
    let routes: Vec<Value> = subnets
        .iter()
        .map(|s| serde_json::json!({"dst": if s.contains(':') { "::/0" } else { "0.0.0.0/0" }}))
        .collect();
    serde_json::json!({
        "cniVersion": "1.1.0", "name": network,
        "plugins": [
            {"type": "loopback"},
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
             "ipMasqBackend": backend, "hairpinMode": true, "macspoofchk": true,
             "ipam": {"type": "host-local", "dataDir": data, "ranges": ranges,
                      "routes": routes}},
            {"type": "portmap", "backend": backend, "capabilities": {"portMappings": true}},
        ],
    })
}
