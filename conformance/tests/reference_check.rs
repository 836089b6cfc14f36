//! Our CHECK of pods the reference plugins ADDed: a node switched from the reference to ours
//! with pods running. In a private host namespace the reference chain (bridge with `ipMasq` +
//! host-local + portmap, one TCP and one UDP hostPort, dual-stack) ADDs pods through our
//! cnitool; then our plugins CHECK them with the cached result as prevResult, as a runtime
//! does: it passes with the reference's rules in place, fails naming what is missing once one
//! of them is deleted (or all of the pod's port mappings are), and our DEL leaves nothing of
//! the pods (no rule naming them, no chain of theirs, lease or veth). Against Debian's 1.1.1
//! and the newest reference, with its default iptables backends and with both nftables
//! backends.

use std::path::{Path, PathBuf};

use conformance::{
    BridgeConf, Call, Netns, Outcome, REFERENCE_DIR, Workdir, bin, bin_dir, cnitool_container_id,
    cnitool_env, executed_programs, execve_tracer, installed, lease_files, newest_reference_dir,
    outcome, portmap_plugin, unique,
};
use serde_json::{Value, json};
use tempfile::TempDir;

const NET: &str = "refchk";

/// A node with the reference's conflist: `nftables` sets both plugins' nftables backends.
struct Node {
    host: Netns,
    work: Workdir,
    data: TempDir,
    br: String,
    reference: PathBuf,
    portmap: Value,
}

impl Node {
    fn new(reference: PathBuf, nftables: bool) -> Node {
        installed(reference.join("portmap"));
        let host = Netns::new("h");
        host.ip(&["link", "set", "lo", "up"]);
        let data = tempfile::tempdir().unwrap();
        let br = unique("rc");
        let mut bridge = BridgeConf::new(&br)
            .subnets(&["10.98.0.0/24", "fd98::/64"])
            .data_dir(data.path())
            .with(&json!({"isGateway": true, "ipMasq": true}))
            .plugin();
        let mut portmap = portmap_plugin(&json!({}));
        if nftables {
            bridge["ipMasqBackend"] = "nftables".into();
            portmap["backend"] = "nftables".into();
        }
        let work = Workdir::new();
        work.write_conf(
            "10-refchk.conflist",
            &json!({"cniVersion": "1.0.0", "name": NET, "plugins": [bridge, portmap.clone()]}),
        );
        Node {
            host,
            work,
            data,
            br,
            reference,
            portmap,
        }
    }

    /// Our cnitool `verb` for the pod in `ctr`, with the plugins of `cni_path`.
    fn tool(&self, cni_path: &Path, verb: &str, ctr: &Netns) -> Outcome {
        let caps = json!({"portMappings": mappings()}).to_string();
        cnitool_env(
            &self.host,
            &self.work,
            &[verb, NET, ctr.path.to_str().unwrap()],
            &[
                ("CAP_ARGS", caps.as_str()),
                ("CNI_PATH", cni_path.to_str().unwrap()),
            ],
        )
    }

    /// A pod the reference ADDed; our CHECK accepts it.
    fn reference_pod(&self) -> Pod {
        let ctr = Netns::new("c");
        self.tool(&self.reference, "add", &ctr).ok();
        self.check(&ctr).ok();
        Pod {
            cid: cnitool_container_id(&ctr.path),
            ctr,
        }
    }

    fn check(&self, ctr: &Netns) -> Outcome {
        self.tool(&bin_dir(), "check", ctr)
    }

    /// The reference portmap's own DEL of the pod: none of its port mappings are left.
    fn reference_portmap_del(&self, pod: &Pod) {
        let mut conf = self.portmap.clone();
        conf["cniVersion"] = "1.0.0".into();
        conf["name"] = NET.into();
        conf["runtimeConfig"] = json!({"portMappings": mappings()});
        Call::new(
            &self.host,
            self.reference.join("portmap"),
            "DEL",
            &pod.ctr.path,
        )
        .env("CNI_CONTAINERID", &pod.cid)
        .run(&conf.to_string())
        .ok();
    }

    /// `iptables-save -t nat`, `ip6tables-save -t nat` and `nft list ruleset` of the node.
    fn rules(&self) -> String {
        let mut text = String::new();
        for (program, args) in [
            ("iptables-save", &["-t", "nat"][..]),
            ("ip6tables-save", &["-t", "nat"][..]),
            ("nft", &["list", "ruleset"][..]),
        ] {
            let out = self.host.command(program).args(args).output().unwrap();
            assert!(out.status.success(), "{program}");
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        text
    }

    /// Our DEL of every pod leaves nothing of them: no rule naming one or its chains, no
    /// lease, no veth.
    fn del_leaves_nothing(&self, pods: &[Pod]) {
        for pod in pods {
            self.tool(&bin_dir(), "del", &pod.ctr).ok();
        }
        let rules = self.rules();
        for pod in pods {
            for name in [&pod.cid, &bridge_chain(&pod.cid), &portmap_chain(&pod.cid)] {
                let left: Vec<&str> = rules.lines().filter(|l| l.contains(name)).collect();
                assert!(left.is_empty(), "{name} left behind: {left:#?}");
            }
            assert!(pod.ctr.link("eth0").is_none());
        }
        let ports = self.host.ip_json(&["link", "show", "master", &self.br]);
        assert_eq!(ports, json!([]), "veth left on the bridge");
        assert_eq!(
            lease_files(&self.data.path().join(NET)),
            Vec::<String>::new()
        );
    }
}

struct Pod {
    ctr: Netns,
    cid: String,
}

fn mappings() -> Value {
    json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8053, "containerPort": 53, "protocol": "udp"},
    ])
}

/// The Go bridge's masquerade chain of a container.
fn bridge_chain(cid: &str) -> String {
    libcni::firewall::masquerade::reference_chain(NET, cid)
}

/// The Go portmap's chain of a container.
fn portmap_chain(cid: &str) -> String {
    libcni::firewall::portmap_iptables::reference_chain(NET, cid)
}

/// Asserts a failed CHECK whose message says `what` and `how` (`only part`, `none present`).
fn fails(out: Outcome, what: &str, how: &str) {
    assert_ne!(out.status, 0, "CHECK passed: {out:?}");
    let msg = format!("{} {}", out.stdout, out.stderr);
    assert!(
        msg.contains(what) && msg.contains(how),
        "CHECK failed without saying {what:?} / {how:?}: {out:?}"
    );
}

/// Four reference pods: one is left alone, one loses a rule of its port mappings, one a rule
/// of its masquerade, one all its port mappings (the reference portmap's own DEL); only the
/// first still passes our CHECK; our DEL leaves nothing of any.
fn check_accepts_the_reference_pods(
    reference: PathBuf,
    nftables: bool,
    remove_portmap_rule: fn(&Node, &Pod),
    remove_masquerade_rule: fn(&Node, &Pod),
) {
    let node = Node::new(reference, nftables);
    let pods: Vec<Pod> = (0..4).map(|_| node.reference_pod()).collect();

    remove_portmap_rule(&node, &pods[1]);
    fails(node.check(&pods[1].ctr), "port mapping rules", "only part");
    remove_masquerade_rule(&node, &pods[2]);
    fails(node.check(&pods[2].ctr), "masquerade rules", "only part");
    node.reference_portmap_del(&pods[3]);
    fails(
        node.check(&pods[3].ctr),
        "port mapping rules",
        "none present",
    );
    node.check(&pods[0].ctr).ok();

    node.del_leaves_nothing(&pods);
}

/// iptables layout: the DNAT rule in the pod's IPv4 `CNI-DN-…` chain.
fn remove_iptables_dnat(node: &Node, pod: &Pod) {
    node.host
        .delete_nat_rule("iptables", &portmap_chain(&pod.cid), "DNAT");
}

/// iptables layout: POSTROUTING's IPv6 jump to the pod's `CNI-…` chain.
fn remove_iptables_masquerade_jump(node: &Node, pod: &Pod) {
    node.host
        .delete_nat_rule("ip6tables", "POSTROUTING", &bridge_chain(&pod.cid));
}

/// nftables layout: the pod's IPv6 hairpin masquerade in `ip6 cni_hostport`.
fn remove_nft_hostport_masquerade(node: &Node, pod: &Pod) {
    let n = node
        .host
        .nft_delete_rules("ip6", "cni_hostport", "masquerading", |c| c == pod.cid);
    assert_eq!(n, 1);
}

/// nftables layout: the pod's IPv4 rule in `inet cni_plugins_masquerade`.
fn remove_nft_masquerade(node: &Node, pod: &Pod) {
    let v4 = format!("id: {}", pod.cid);
    let rules = node.host.nft_table_rules("inet", "cni_plugins_masquerade");
    let first = rules
        .iter()
        .find(|r| r["comment"].as_str().is_some_and(|c| c.ends_with(&v4)))
        .unwrap_or_else(|| panic!("no masquerade rule of {}: {rules:#?}", pod.cid));
    node.host.nft(&format!(
        "delete rule inet cni_plugins_masquerade masq_checks handle {}",
        first["handle"]
    ));
}

#[test]
fn check_accepts_pods_of_debians_reference() {
    check_accepts_the_reference_pods(
        PathBuf::from(REFERENCE_DIR),
        false,
        remove_iptables_dnat,
        remove_iptables_masquerade_jump,
    );
}

#[test]
fn check_accepts_pods_of_the_newest_reference() {
    check_accepts_the_reference_pods(
        newest_reference_dir(),
        false,
        remove_iptables_dnat,
        remove_iptables_masquerade_jump,
    );
}

#[test]
fn check_accepts_pods_of_the_newest_reference_on_nftables() {
    check_accepts_the_reference_pods(
        newest_reference_dir(),
        true,
        remove_nft_hostport_masquerade,
        remove_nft_masquerade,
    );
}

/// Our own pods pass our CHECK beside the reference's, and fail it once one of our rules is
/// gone: the reference's state of other pods does not stand in for ours.
#[test]
fn our_pods_beside_the_reference_pods() {
    let node = Node::new(newest_reference_dir(), false);
    let theirs = node.reference_pod();
    let ctr = Netns::new("c");
    node.tool(&bin_dir(), "add", &ctr).ok();
    node.check(&ctr).ok();
    let n = node
        .host
        .nft_delete_rules("inet", "rcni_masquerade", "postrouting", |c| {
            c.contains(&cnitool_container_id(&ctr.path))
        });
    assert_eq!(n, 2);
    fails(node.check(&ctr), "masquerade rules", "none present");
    node.check(&theirs.ctr).ok();
    let ours = Pod {
        cid: cnitool_container_id(&ctr.path),
        ctr,
    };
    node.del_leaves_nothing(&[theirs, ours]);
}

/// On our default nftables backends, with iptables' nat table in use but none of the
/// reference's state, CHECK looks for the reference's rules without starting a process: the
/// chain runs bridge, its IPAM (host-local) and portmap, nothing else.
#[test]
fn check_starts_no_process_where_the_reference_left_nothing() {
    let node = Node::new(newest_reference_dir(), true);
    node.host.use_iptables_nat();
    let ctr = Netns::new("c");
    node.tool(&bin_dir(), "add", &ctr).ok();
    let trace = tempfile::NamedTempFile::new().unwrap();
    let caps = json!({"portMappings": mappings()}).to_string();
    let tracer = execve_tracer(trace.path());
    let mut cmd = node.host.command(&tracer[0]);
    cmd.args(&tracer[1..])
        .arg(bin("cnitool"))
        .args(["check", NET, ctr.path.to_str().unwrap()])
        .env("NETCONFPATH", node.work.net_dir())
        .env("CNI_PATH", bin_dir())
        .env("CNI_CACHE_DIR", node.work.cache_dir())
        .env("CAP_ARGS", caps);
    outcome(&mut cmd, "").ok();
    assert_eq!(
        executed_programs(trace.path()),
        ["cnitool", "bridge", "host-local", "portmap"]
    );
    let ours = Pod {
        cid: cnitool_container_id(&ctr.path),
        ctr,
    };
    node.del_leaves_nothing(&[ours]);
}
