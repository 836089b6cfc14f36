//! Network configs for black-box tests.

use std::path::{Path, PathBuf};

use serde_json::Value;

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
