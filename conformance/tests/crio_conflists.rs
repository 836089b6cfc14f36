//! CRI-O's shipped CNI configs (`conformance/testdata/crio/`, copied unchanged from cri-o's
//! `contrib/cni/`): the IPv4 and the dual-stack bridge network and the loopback network ADD,
//! CHECK and DEL through the Go cnitool with our plugins, with their default `dataDir`
//! (/var/lib/cni/networks) and bridge `cni0`. Those are node-global, so each test runs in a
//! private host namespace and a private mount namespace with a temp dir over /var/lib.

use std::path::{Path, PathBuf};

use conformance::{
    Netns, Outcome, bin_dir, cnitool_container_id, command_with_private_var_lib, go_cnitool,
    installed, lease_files, outcome,
};
use serde_json::{Value, json};
use tempfile::TempDir;

/// One CRI-O config installed alone in a config directory, on a node of its own.
struct Node {
    host: Netns,
    net_d: TempDir,
    var_lib: TempDir,
}

impl Node {
    fn new(file: &str) -> Node {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/crio")
            .join(file);
        let net_d = tempfile::tempdir().unwrap();
        std::fs::copy(&source, net_d.path().join(file)).unwrap();
        let host = Netns::new("h");
        host.ip(&["link", "set", "lo", "up"]);
        Node {
            host,
            net_d,
            var_lib: tempfile::tempdir().unwrap(),
        }
    }

    /// The Go cnitool `verb network ctr` with our plugins.
    fn go_cnitool(&self, verb: &str, network: &str, ctr: &Netns) -> Outcome {
        let tool = installed(go_cnitool());
        let mut cmd = command_with_private_var_lib(&self.host, self.var_lib.path(), &tool);
        cmd.args([verb, network, ctr.path.to_str().unwrap()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NETCONFPATH", self.net_d.path())
            .env("CNI_PATH", bin_dir());
        outcome(&mut cmd, "")
    }

    /// Where host-local keeps the network's leases: /var/lib/cni/networks/<network>.
    fn leases(&self, network: &str) -> Vec<String> {
        lease_files(&self.var_lib.path().join("cni/networks").join(network))
    }

    /// libcni's cached results, /var/lib/cni/results.
    fn cached_results(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.var_lib.path().join("cni/results"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    /// The rules of our masquerade table whose comment names container `cid`.
    fn masquerade_rules(&self, cid: &str) -> Vec<Value> {
        self.host
            .nft_table_rules("inet", "rcni_masquerade")
            .into_iter()
            .filter(|r| r["comment"].as_str().is_some_and(|c| c.contains(cid)))
            .collect()
    }
}

/// The result's addresses, as `address/prefix`, and their gateways.
fn addresses(result: &Value) -> Vec<(String, String)> {
    result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips in {result}"))
        .iter()
        .map(|ip| {
            (
                ip["address"].as_str().unwrap().to_string(),
                ip["gateway"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The gateway of the container's default route of one family (`-4`/`-6`).
fn default_gateway(ctr: &Netns, family: &str) -> Option<String> {
    let routes = ctr.ip_json(&[family, "route", "show", "default"]);
    routes[0]["gateway"].as_str().map(String::from)
}

/// A bridge config: ADD gives one address per subnet (`prefix` of the subnet, `gateway` its
/// first address), on eth0, with default routes via the gateways and masquerade of each
/// address; CHECK passes; DEL leaves no lease, cached result, rule or veth, and a second DEL
/// succeeds.
fn bridge_network(file: &str, subnets: &[(&str, &str)]) {
    let node = Node::new(file);
    let ctr = Netns::new("c");
    let cid = cnitool_container_id(&ctr.path);
    let result = node.go_cnitool("add", "crio", &ctr).ok().clone();

    let got = addresses(&result);
    assert_eq!(got.len(), subnets.len(), "{result}");
    for ((address, gateway), (prefix, want_gateway)) in got.iter().zip(subnets) {
        assert!(address.starts_with(prefix), "{address} not in {prefix}…");
        assert_eq!(gateway, want_gateway, "{result}");
        let family = if address.contains(':') { "-6" } else { "-4" };
        assert_eq!(
            default_gateway(&ctr, family).as_deref(),
            Some(*want_gateway),
            "default route {family}"
        );
        let bare = address.split('/').next().unwrap();
        assert!(node.leases("crio").contains(&bare.to_string()));
    }
    let on_eth0 = ctr.global_addrs("eth0");
    assert_eq!(
        on_eth0,
        got.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>()
    );
    assert!(node.host.link("cni0").is_some());
    assert_eq!(node.masquerade_rules(&cid).len(), subnets.len());
    assert_eq!(node.cached_results().len(), 1);

    node.go_cnitool("check", "crio", &ctr).ok();

    node.go_cnitool("del", "crio", &ctr).ok();
    assert!(ctr.link("eth0").is_none());
    let ports = node.host.ip_json(&["link", "show", "master", "cni0"]);
    assert_eq!(ports, json!([]), "veth left on cni0");
    assert_eq!(node.leases("crio"), Vec::<String>::new());
    assert_eq!(node.masquerade_rules(&cid), Vec::<Value>::new());
    assert_eq!(node.cached_results(), Vec::<PathBuf>::new());
    node.go_cnitool("del", "crio", &ctr).ok();
}

#[test]
fn crio_ipv4_bridge() {
    bridge_network("11-crio-ipv4-bridge.conflist", &[("10.85.", "10.85.0.1")]);
}

#[test]
fn crio_dual_stack_bridge() {
    bridge_network(
        "10-crio-bridge.conflist",
        &[("10.85.", "10.85.0.1"), ("1100:200::", "1100:200::1")],
    );
}

/// The loopback network: ADD brings lo up with its addresses in the result, CHECK passes, DEL
/// brings it down again and drops the cached result.
#[test]
fn crio_loopback() {
    let node = Node::new("99-loopback.conflist");
    let ctr = Netns::new("c");
    let result = node.go_cnitool("add", "loopback", &ctr).ok().clone();
    let got: Vec<String> = addresses(&result).into_iter().map(|(a, _)| a).collect();
    assert_eq!(got, ["127.0.0.1/8", "::1/128"], "{result}");
    assert!(ctr.is_up("lo"));
    node.go_cnitool("check", "loopback", &ctr).ok();
    node.go_cnitool("del", "loopback", &ctr).ok();
    assert!(!ctr.is_up("lo"));
    assert_eq!(node.cached_results(), Vec::<PathBuf>::new());
}
