//! A node under test: a private "host" namespace holding one bridge network (bridge +
//! host-local + portmap, one hostPort per pod, as containerd's default conflist), and its pods,
//! each a container namespace of its own. The same node is built for a plugin suite (ours or a
//! reference, driven through our runtime side or the Go cnitool) and for the kernel floor (the
//! same kernel objects made by `ip` and `nft` alone).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use conformance::{Netns, unique};
use libcni::runtime::{ConfList, RuntimeConf, plugin_stdin};
use serde_json::{Value, json};

use crate::measure::{Recorder, Result};

const SUBNET: &str = "10.88.0.0/16";
const GATEWAY: &str = "10.88.0.1";
const BRIDGE: &str = "cni0";
const FIRST_HOST_PORT: usize = 20000;

/// Every namespace the benchmark made and has not removed yet, for the panic hook (release
/// builds abort on panic, so no destructor would run).
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn netns(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ns.name.clone());
    ns
}

fn forget(ns: &Netns) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|n| *n != ns.name);
}

/// Removes every namespace still alive and the Go cnitool's cache files of our networks.
pub fn remove_everything() {
    let names = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for name in names {
        libcni::firewall::handles::forget_namespace(&Path::new("/run/netns").join(&name));
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// A directory holding `bridge`, `host-local`, `portmap` and `loopback`.
    Plugins(PathBuf),
    Floor,
}

pub struct Node {
    pub host: Netns,
    /// The host namespace, held open: processes are started from a thread inside it.
    host_ns: libcni::kernel::netns::Netns,
    kind: Kind,
    /// Configs, host-local's data and the result cache live here.
    work: tempfile::TempDir,
    network: String,
    list: ConfList,
    next: AtomicUsize,
}

pub struct Pod {
    pub ns: Netns,
    index: usize,
    pub result: Option<Value>,
}

impl Pod {
    pub fn id(&self) -> String {
        format!("bench-{}", self.index)
    }

    fn host_port(&self) -> usize {
        FIRST_HOST_PORT + self.index
    }

    /// The address the floor gives a pod (the plugins' host-local hands them out in order too).
    fn floor_ip(&self) -> Ipv4Addr {
        let n = self.index as u32 + 2;
        Ipv4Addr::new(10, 88, (n >> 8) as u8, n as u8)
    }

    fn floor_veth(&self) -> String {
        format!("fv{}", self.index)
    }

    pub fn ip(&self) -> Option<String> {
        let r = self.result.as_ref()?;
        let addr = r["ips"][0]["address"].as_str()?;
        Some(addr.split('/').next()?.to_string())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        forget(&self.ns);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        forget(&self.host);
        if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
            let prefix = format!("{}-", self.network);
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Node {
    pub fn new(kind: &Kind) -> Result<Node> {
        let host = netns("B");
        host.ip(&["link", "set", "lo", "up"]);
        let work = tempfile::tempdir().map_err(|e| e.to_string())?;
        let network = unique("bench");
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": work.path().join("ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        let bytes = serde_json::to_vec_pretty(&conf).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(work.path().join("net.d")).map_err(|e| e.to_string())?;
        std::fs::write(work.path().join("net.d/10-bench.conflist"), &bytes)
            .map_err(|e| e.to_string())?;
        let list = ConfList::from_list_bytes(&bytes).map_err(|e| e.to_string())?;
        let host_ns = libcni::kernel::netns::Netns::open(&host.path).map_err(|e| e.to_string())?;
        let node = Node {
            host,
            host_ns,
            kind: kind.clone(),
            work,
            network,
            list,
            next: AtomicUsize::new(0),
        };
        if matches!(kind, Kind::Floor) {
            node.floor_base()?;
        }
        Ok(node)
    }

    pub fn is_floor(&self) -> bool {
        matches!(self.kind, Kind::Floor)
    }

    /// What the plugins make on a node's first ADD and keep: the bridge with its gateway
    /// address, and a NAT chain for the port mappings.
    fn floor_base(&self) -> Result<()> {
        let mut rec = Recorder::default();
        rec.run(
            Command::new("ip").args(["-n", &self.host.name, "-batch", "-"]),
            format!(
                "link add {BRIDGE} type bridge\naddr add {GATEWAY}/16 dev {BRIDGE}\n\
                 link set {BRIDGE} up\n"
            )
            .as_bytes(),
        )?;
        rec.run_in(
            &self.host_ns,
            Command::new("nft").args(["-f", "-"]),
            b"add table inet floor\n\
              add chain inet floor hostports\n\
              add chain inet floor prerouting { type nat hook prerouting priority dstnat; }\n\
              add rule inet floor prerouting fib daddr type local jump hostports\n\
              add chain inet floor output { type nat hook output priority -100; }\n\
              add rule inet floor output fib daddr type local jump hostports\n\
              add chain inet floor postrouting { type nat hook postrouting priority srcnat; }\n\
              add chain inet floor podmasq { type nat hook postrouting priority srcnat; }\n",
        )?;
        Ok(())
    }

    pub fn pod(&self) -> Pod {
        Pod {
            ns: netns("b"),
            index: self.next.fetch_add(1, Ordering::Relaxed),
            result: None,
        }
    }

    fn plugin_dir(&self) -> &Path {
        match &self.kind {
            Kind::Plugins(dir) => dir,
            Kind::Floor => Path::new("/nonexistent"),
        }
    }

    fn runtime_conf(&self, pod: &Pod) -> RuntimeConf {
        let mut rt = RuntimeConf {
            container_id: pod.id(),
            netns: pod.ns.path.display().to_string(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        rt.capability_args.insert(
            "portMappings".into(),
            json!([{"hostPort": pod.host_port(), "containerPort": 80, "protocol": "tcp"}]),
        );
        rt
    }

    /// One plugin of the list (by position), run inside the host namespace.
    fn call(
        &self,
        rec: &mut Recorder,
        index: usize,
        command: &str,
        pod: &Pod,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>> {
        let plugin = &self.list.plugins[index];
        let kind = plugin["type"].as_str().unwrap_or_default();
        let stdin = plugin_stdin(&self.list, plugin, &self.runtime_conf(pod), prev);
        self.exec(rec, kind, command, pod, &stdin)
    }

    fn exec(
        &self,
        rec: &mut Recorder,
        plugin: &str,
        command: &str,
        pod: &Pod,
        stdin: &[u8],
    ) -> Result<Vec<u8>> {
        let mut cmd = Command::new(self.plugin_dir().join(plugin));
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.id())
            .env("CNI_NETNS", &pod.ns.path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.plugin_dir());
        rec.run_in(&self.host_ns, &mut cmd, stdin)
            .map_err(|e| format!("{plugin} {command}: {e}"))
    }

    // ---- the chain through our runtime side (libcni's plugin stdin, no cache) ----------

    pub fn add(&self, rec: &mut Recorder, pod: &mut Pod) -> Result<()> {
        if self.is_floor() {
            return self.floor_add(rec, pod);
        }
        let mut prev: Option<Value> = None;
        for i in 0..self.list.plugins.len() {
            let out = self.call(rec, i, "ADD", pod, prev.as_ref())?;
            prev = Some(serde_json::from_slice(&out).map_err(|e| format!("result: {e}"))?);
        }
        pod.result = prev;
        Ok(())
    }

    pub fn check(&self, rec: &mut Recorder, pod: &Pod) -> Result<()> {
        for i in 0..self.list.plugins.len() {
            self.call(rec, i, "CHECK", pod, pod.result.as_ref())?;
        }
        Ok(())
    }

    pub fn del(&self, rec: &mut Recorder, pod: &Pod) -> Result<()> {
        if self.is_floor() {
            return self.floor_del(rec, pod);
        }
        for i in (0..self.list.plugins.len()).rev() {
            self.call(rec, i, "DEL", pod, pod.result.as_ref())?;
        }
        Ok(())
    }

    // ---- the Go cnitool as the runtime --------------------------------------------------

    pub fn go_cnitool(
        &self,
        rec: &mut Recorder,
        tool: &Path,
        verb: &str,
        pod: &mut Pod,
    ) -> Result<()> {
        let caps = json!({"portMappings": self.runtime_conf(pod).capability_args["portMappings"]});
        let mut cmd = Command::new(tool);
        cmd.args([verb, &self.network, &pod.ns.path.display().to_string()])
            .env("NETCONFPATH", self.work.path().join("net.d"))
            .env("CNI_PATH", self.plugin_dir())
            .env("CAP_ARGS", caps.to_string());
        let out = rec
            .run_in(&self.host_ns, &mut cmd, b"")
            .map_err(|e| format!("Go cnitool {verb}: {e}"))?;
        if verb == "add" {
            pod.result = serde_json::from_slice(&out).ok();
        }
        Ok(())
    }

    // ---- each plugin alone --------------------------------------------------------------

    /// bridge (with its IPAM) alone: ADD or DEL.
    pub fn bridge(&self, rec: &mut Recorder, command: &str, pod: &mut Pod) -> Result<()> {
        let out = self.call(rec, 0, command, pod, pod.result.as_ref())?;
        if command == "ADD" {
            pod.result = Some(serde_json::from_slice(&out).map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    /// portmap alone, on top of the bridge result the pod holds.
    pub fn portmap(&self, rec: &mut Recorder, command: &str, pod: &Pod) -> Result<()> {
        self.call(rec, 1, command, pod, pod.result.as_ref())
            .map(drop)
    }

    /// host-local alone, with the bridge's config (an IPAM plugin reads the whole config).
    pub fn host_local(&self, rec: &mut Recorder, command: &str, pod: &Pod) -> Result<()> {
        let stdin = plugin_stdin(
            &self.list,
            &self.list.plugins[0],
            &self.runtime_conf(pod),
            None,
        );
        self.exec(rec, "host-local", command, pod, &stdin).map(drop)
    }

    pub fn loopback(&self, rec: &mut Recorder, command: &str, pod: &Pod) -> Result<()> {
        let stdin = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
        self.exec(rec, "loopback", command, pod, stdin.to_string().as_bytes())
            .map(drop)
    }

    // ---- the kernel floor ----------------------------------------------------------------

    fn floor_add(&self, rec: &mut Recorder, pod: &mut Pod) -> Result<()> {
        let (veth, ip) = (pod.floor_veth(), pod.floor_ip());
        rec.run(
            Command::new("ip").args(["-n", &self.host.name, "-batch", "-"]),
            format!(
                "link add {veth} type veth peer name eth0 netns {}\n\
                 link set {veth} master {BRIDGE} up\n\
                 link set {veth} type bridge_slave hairpin on\n",
                pod.ns.name
            )
            .as_bytes(),
        )?;
        rec.run(
            Command::new("ip").args(["-n", &pod.ns.name, "-batch", "-"]),
            format!(
                "link set lo up\nlink set eth0 up\naddr add {ip}/16 dev eth0\n\
                 route add default via {GATEWAY}\n"
            )
            .as_bytes(),
        )?;
        rec.run_in(
            &self.host_ns,
            Command::new("nft").args(["-f", "-"]),
            pod.floor_rules(&ip).as_bytes(),
        )?;
        pod.result = Some(json!({"ips": [{"address": format!("{ip}/16")}]}));
        Ok(())
    }

    fn floor_del(&self, rec: &mut Recorder, pod: &Pod) -> Result<()> {
        rec.run(
            Command::new("ip").args(["-n", &self.host.name, "link", "del", &pod.floor_veth()]),
            b"",
        )?;
        let listing = rec.run_in(
            &self.host_ns,
            Command::new("nft").args(["-a", "list", "table", "inet", "floor"]),
            b"",
        )?;
        let deletions = floor_deletions(&String::from_utf8_lossy(&listing), &pod.id());
        if deletions.lines().count() != FLOOR_RULES_PER_POD {
            return Err(format!("floor: not all rules of {} found", pod.id()));
        }
        rec.run_in(
            &self.host_ns,
            Command::new("nft").args(["-f", "-"]),
            deletions.as_bytes(),
        )?;
        Ok(())
    }

    // ---- what the node holds ------------------------------------------------------------

    /// host-local's leases: address → container ID.
    pub fn leases(&self) -> BTreeMap<String, String> {
        let dir = self.work.path().join("ipam").join(&self.network);
        conformance::dir_files(&dir)
            .into_iter()
            .filter(|(name, _)| name.parse::<std::net::IpAddr>().is_ok())
            .map(|(name, f)| {
                let content = String::from_utf8_lossy(&f.content).into_owned();
                (name, content.lines().next().unwrap_or_default().to_string())
            })
            .collect()
    }

    /// What is left on the node of `pods` after their DEL: links other than the bridge and
    /// `lo`, leases, and firewall rules naming one of their addresses.
    pub fn leftovers(&self, ips: &[String]) -> Vec<String> {
        let mut left: Vec<String> = self
            .host
            .link_names()
            .into_iter()
            .filter(|l| l != "lo" && l != BRIDGE)
            .map(|l| format!("link {l}"))
            .collect();
        left.extend(self.leases().into_keys().map(|ip| format!("lease {ip}")));
        let mut rules = String::new();
        for tool in ["iptables-save", "ip6tables-save"] {
            if let Ok(out) = self.host.command(tool).output() {
                rules.push_str(&String::from_utf8_lossy(&out.stdout));
            }
        }
        if let Ok(out) = self.host.command("nft").args(["list", "ruleset"]).output() {
            rules.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        for line in rules.lines() {
            let words: Vec<&str> = line
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .collect();
            if ips.iter().any(|ip| words.contains(&ip.as_str())) {
                left.push(format!("rule {}", line.trim()));
            }
        }
        left
    }
}

/// The nft rules our plugins make for one pod (portmap: the DNAT rule and two hairpin
/// masquerade rules; bridge: the pod's masquerade rule), as the floor makes them.
const FLOOR_RULES_PER_POD: usize = 4;

impl Pod {
    fn floor_rules(&self, ip: &Ipv4Addr) -> String {
        let (port, id) = (self.host_port(), self.id());
        format!(
            "add rule inet floor hostports tcp dport {port} dnat ip to {ip}:80 comment \"{id}\"\n\
             add rule inet floor postrouting ct status dnat ip saddr {SUBNET} ip daddr {ip} \
             masquerade comment \"{id}\"\n\
             add rule inet floor postrouting ct status dnat ip saddr 127.0.0.1 ip daddr {ip} \
             masquerade comment \"{id}\"\n\
             add rule inet floor podmasq ip saddr {ip} ip daddr != {SUBNET} \
             ip daddr != 224.0.0.0/4 masquerade comment \"{id}\"\n"
        )
    }
}

/// `delete rule` lines for every rule of `nft -a list table inet floor` commented `id`.
fn floor_deletions(listing: &str, id: &str) -> String {
    let comment = format!("comment \"{id}\"");
    let mut chain = "";
    let mut out = String::new();
    for line in listing.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("chain ") {
            chain = rest.split_whitespace().next().unwrap_or_default();
        } else if line.contains(&comment)
            && let Some(handle) = line.rsplit("# handle ").next()
        {
            out.push_str(&format!(
                "delete rule inet floor {chain} handle {}\n",
                handle.trim()
            ));
        }
    }
    out
}
