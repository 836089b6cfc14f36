//! Kernel inspection inside a namespace: links, addresses, sysctls, nftables, iptables.

use std::process::{Command, Stdio};

use libcni::kernel::nf_tables::{Batch, Chain, Family, Rule};
use serde_json::Value;

use crate::{Netns, outcome, run_ok};

impl Netns {
    /// The flags of link `name`, e.g. `["LOOPBACK","UP","LOWER_UP"]`.
    pub fn link_flags(&self, name: &str) -> Vec<String> {
        let links = self.ip_json(&["link", "show", "dev", name]);
        links[0]["flags"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn is_up(&self, name: &str) -> bool {
        self.link_flags(name).iter().any(|f| f == "UP")
    }

    /// `ip -d -j link show dev <name>` in this namespace: the link's object, `None` when there
    /// is no such link.
    pub fn link(&self, name: &str) -> Option<Value> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-d", "-j", "link", "show", "dev", name])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        links.get(0).cloned()
    }

    /// The names of every link in this namespace.
    pub fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .map(|links| {
                links
                    .iter()
                    .filter_map(|l| l["ifname"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The addresses on `dev` as `address/prefix`, link-local (`scope link`) ones left out.
    pub fn global_addrs(&self, dev: &str) -> Vec<String> {
        self.addr_info(dev)
            .iter()
            .filter(|a| a["scope"] != "link")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    /// The `addr_info` objects of `dev` (every family and scope).
    pub fn addr_info(&self, dev: &str) -> Vec<Value> {
        let v = self.ip_json(&["addr", "show", "dev", dev]);
        v[0]["addr_info"].as_array().cloned().unwrap_or_default()
    }

    /// Sets `/proc/sys/<key>` (slash-separated) inside this namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        run_ok(
            self.command("sysctl")
                .args(["-qw", &format!("{key}={value}")]),
        );
    }

    /// `/proc/sys/<key>` (slash-separated) as read from inside this namespace.
    pub fn sysctl(&self, key: &str) -> String {
        let out = run_ok(self.command("cat").arg(format!("/proc/sys/{key}")));
        String::from_utf8_lossy(&out).trim().to_string()
    }

    /// Waits (up to 5 s) until no global address on `dev` is tentative (IPv6 duplicate address
    /// detection is over), so that traffic to it is answered.
    pub fn wait_dad(&self, dev: &str) {
        for _ in 0..100 {
            let info = self.addr_info(dev);
            if !info
                .iter()
                .any(|a| a["tentative"] == true && a["scope"] != "link")
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{dev} in {} still has tentative addresses", self.name);
    }

    /// The rules of nftables table `family table` as `nft -j` lists them; none when the table
    /// does not exist.
    pub fn nft_table_rules(&self, family: &str, table: &str) -> Vec<Value> {
        let out = self
            .command("nft")
            .args(["-j", "list", "table", family, table])
            .output()
            .unwrap();
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("rule").cloned())
            .collect()
    }

    /// Applies `script` with `nft -f -` in this namespace; fails the test if nft refuses it.
    pub fn nft(&self, script: &str) {
        let out = outcome(self.command("nft").args(["-f", "-"]), script);
        assert_eq!(out.status, 0, "nft failed: {}\n{script}", out.stderr);
    }

    /// `nft -j list ruleset` in this namespace: the `nftables` array.
    pub fn nft_ruleset(&self) -> Vec<Value> {
        let out = run_ok(self.command("nft").args(["-j", "list", "ruleset"]));
        let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        v["nftables"].as_array().cloned().unwrap_or_default()
    }

    /// Deletes the first rule of nat `chain` (`program`: iptables or ip6tables) whose
    /// `-L -n` line contains `needle`; fails the test if there is none.
    pub fn delete_nat_rule(&self, program: &str, chain: &str, needle: &str) {
        let listing = run_ok(self.command(program).args([
            "-w",
            "-t",
            "nat",
            "-L",
            chain,
            "-n",
            "--line-numbers",
        ]));
        let listing = String::from_utf8_lossy(&listing).into_owned();
        let number = listing
            .lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no rule with {needle:?} in {program} {chain}:\n{listing}"))
            .to_string();
        run_ok(
            self.command(program)
                .args(["-w", "-t", "nat", "-D", chain, &number]),
        );
    }

    /// Puts iptables' nat table in use with a rule that is no plugin's (`POSTROUTING -o up0
    /// -j RETURN`), as on a node whose iptables has chains of its own.
    pub fn use_iptables_nat(&self) {
        let rule = ["-A", "POSTROUTING", "-o", "up0", "-j", "RETURN"];
        run_ok(
            self.command("iptables")
                .args(["-w", "-t", "nat"])
                .args(rule),
        );
    }

    /// Deletes the rules of nftables chain `family table chain` whose comment `pick` accepts;
    /// how many there were.
    pub fn nft_delete_rules(
        &self,
        family: &str,
        table: &str,
        chain: &str,
        pick: impl Fn(&str) -> bool,
    ) -> usize {
        let script: Vec<String> = self
            .nft_table_rules(family, table)
            .iter()
            .filter(|r| r["chain"] == chain && r["comment"].as_str().is_some_and(&pick))
            .map(|r| {
                format!(
                    "delete rule {family} {table} {chain} handle {}",
                    r["handle"]
                )
            })
            .collect();
        if !script.is_empty() {
            self.nft(&script.join("\n"));
        }
        script.len()
    }
}

/// Whether this kernel has bridge VLAN filtering (`CONFIG_BRIDGE_VLAN_FILTERING`): probed once
/// by creating a filtering bridge in a throwaway namespace.
pub fn bridge_vlan_filtering_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let ns = Netns::new("v");
        Command::new("ip")
            .args(["-n", &ns.name, "link", "add", "probe0", "type", "bridge"])
            .args(["vlan_filtering", "1"])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    })
}

/// An nf_tables batch (for the in-process client) that adds `table inet t` with the regular `chains` and `rules`.
pub fn nft_batch(chains: &[&str], rules: impl IntoIterator<Item = Rule>) -> Batch {
    let mut batch = Batch::new();
    batch.add_table(Family::Inet, "t").unwrap();
    for chain in chains {
        batch
            .add_chain(&Chain::regular(Family::Inet, "t", chain))
            .unwrap();
    }
    for rule in rules {
        batch.add_rule(&rule).unwrap();
    }
    batch
}

impl Netns {
    /// Every firewall rule, chain, set and element in this namespace as text that compares
    /// equal when nothing changed: `nft -j list ruleset` without handles and counter values,
    /// then `iptables-save` and `ip6tables-save` without comments and counters.
    pub fn firewall_state(&self) -> String {
        fn strip(v: &mut Value) {
            match v {
                Value::Object(o) => {
                    o.remove("handle");
                    for (key, value) in o.iter_mut() {
                        if key == "packets" || key == "bytes" {
                            *value = Value::Null;
                        } else {
                            strip(value);
                        }
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let mut nft = Value::Array(self.nft_ruleset());
        strip(&mut nft);
        let mut state = serde_json::to_string_pretty(&nft).unwrap();
        for save in ["iptables-save", "ip6tables-save"] {
            let out = run_ok(&mut self.command(save));
            for line in String::from_utf8_lossy(&out).lines() {
                if line.starts_with('#') {
                    continue;
                }
                let line = match line.rsplit_once(" [") {
                    Some((chain, counters)) if line.starts_with(':') && counters.ends_with(']') => {
                        chain.to_string()
                    }
                    _ => line.to_string(),
                };
                state.push_str(&format!("\n{save}: {line}"));
            }
        }
        state
    }
}
