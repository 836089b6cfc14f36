//! Upgrading a node from the reference plugins to ours and rolling it back, with pods running,
//! against Debian's 1.1.1 and the newest reference (1.9.1, with its iptables and its nftables
//! backends). One node (a private host namespace), one network (loopback + bridge with
//! ipMasq, isDefaultGateway and macspoofchk + host-local + portmap with a hostPort per pod),
//! one result cache, dual-stack pods: the reference ADDs pods, which ours CHECKs; ours ADDs,
//! CHECKs and DELs a pod beside them and ADDs more that stay; `cnitool rollback` (a dry run
//! first, then twice) converts ours' pods to the reference's layout, line for line what the
//! reference made for its own; a hostPort still reaches its pod; the reference CHECKs and DELs
//! every pod; nothing is left that names a pod, its address or its port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use conformance::{
    BridgeConf, Netns, Outcome, REFERENCE_DIR, Workdir, bin_dir, cnitool_container_id, cnitool_env,
    installed, lease_files, node_with_uplink, portmap_conflist, portmap_plugin, result_ips, unique,
};
use libcni::firewall::{masquerade, portmap_iptables};
use serde_json::{Value, json};
use tempfile::TempDir;

const NET: &str = "uprb";
const UPLINK: &str = "192.168.77.1";

/// A reference release to roll back to.
struct Reference {
    dir: PathBuf,
    release: &'static str,
    /// Config keys that select its nftables backends (none: iptables).
    bridge_keys: Value,
    portmap_keys: Value,
    /// Debian's 1.1.1 portmap CHECK always fails once its IPv4 rules passed: it looks for them
    /// in ip6tables too (plugins#819).
    check_fails_with: Option<&'static str>,
    /// 1.9.1's bridge DEL with `ipMasqBackend: "nftables"` also runs its iptables teardown,
    /// whose `iptables -D POSTROUTING … -j CNI-…` fails while the container still has its
    /// addresses (iptables-nft says "Chain … does not exist", which go-iptables does not take
    /// for "not there"): its first DEL of every pod, its own included, fails after removing
    /// the veth; the runtime's retry then succeeds.
    del_fails_once_with: Option<&'static str>,
}

impl Reference {
    fn debian() -> Reference {
        Reference {
            dir: PathBuf::from(REFERENCE_DIR),
            release: "1.1.1",
            bridge_keys: json!({}),
            portmap_keys: json!({}),
            check_fails_with: Some("could not check ipv6 dnat"),
            del_fails_once_with: None,
        }
    }

    fn newest(bridge_keys: Value, portmap_keys: Value) -> Reference {
        let nft_masquerade = bridge_keys["ipMasqBackend"] == "nftables";
        Reference {
            dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/reference-1.9.1"),
            release: "1.9.1",
            bridge_keys,
            portmap_keys,
            check_fails_with: None,
            del_fails_once_with: nft_masquerade.then_some("does not exist"),
        }
    }
}

/// The node: host and uplink namespaces, the network's config, leases and result cache.
struct Node {
    host: Netns,
    ext: Netns,
    work: Workdir,
    data: TempDir,
}

struct Pod {
    ns: Netns,
    port: u16,
    ip: String,
    ip6: String,
    cid: String,
    host_veth: String,
    mac: String,
}

impl Node {
    fn new(reference: &Reference) -> Node {
        let (host, ext) = node_with_uplink();
        let data = tempfile::tempdir().unwrap();
        let bridge = BridgeConf::new(&unique("ur"))
            .subnets(&["10.98.0.0/24", "fd98::/64"])
            .data_dir(data.path())
            .with(&json!({"isDefaultGateway": true, "ipMasq": true, "macspoofchk": true}))
            .with(&reference.bridge_keys);
        let portmap = portmap_plugin(&reference.portmap_keys);
        let work = Workdir::new();
        work.write_conf(
            "10-uprb.conflist",
            &portmap_conflist("1.0.0", NET, bridge, portmap),
        );
        Node {
            host,
            ext,
            work,
            data,
        }
    }

    /// The runtime (our cnitool) running `verb` for `ns` with the plugins of `plugins`.
    fn runtime(&self, plugins: &Path, verb: &str, ns: &Netns, port: u16) -> Outcome {
        let caps = json!({"portMappings": [
            {"hostPort": port, "containerPort": 80, "protocol": "tcp"}]})
        .to_string();
        cnitool_env(
            &self.host,
            &self.work,
            &[verb, NET, ns.path.to_str().unwrap()],
            &[("CAP_ARGS", &caps), ("CNI_PATH", plugins.to_str().unwrap())],
        )
    }

    fn add(&self, plugins: &Path, port: u16) -> Pod {
        let ns = Netns::new("c");
        let result = self.runtime(plugins, "add", &ns, port).ok().clone();
        let ips = result_ips(&result);
        let addr = |v6: bool| {
            let ip = ips.iter().find(|ip| ip.contains(':') == v6).unwrap();
            ip.split('/').next().unwrap().to_string()
        };
        let iface = |sandbox: bool| {
            result["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["sandbox"].is_string() == sandbox)
                .map(|i| (i["name"].as_str().unwrap(), i["mac"].as_str().unwrap()))
                .collect::<Vec<_>>()
        };
        Pod {
            cid: cnitool_container_id(&ns.path),
            host_veth: iface(false)[1].0.to_string(),
            mac: iface(true)[0].1.to_string(),
            ns,
            port,
            ip: addr(false),
            ip6: addr(true),
        }
    }

    fn rollback(&self, args: &[&str]) -> Outcome {
        let mut line = vec!["rollback"];
        line.extend(args);
        cnitool_env(&self.host, &self.work, &line, &[])
    }

    /// Everything the node's packet filters hold, as text: `iptables -S` of both families'
    /// nat tables and the nftables ruleset.
    fn firewall(&self) -> String {
        let mut text = String::new();
        for (tool, args) in [
            ("iptables", &["-t", "nat", "-S"][..]),
            ("ip6tables", &["-t", "nat", "-S"]),
            ("nft", &["-s", "list", "ruleset"]),
        ] {
            let out = self.host.command(tool).args(args).output().unwrap();
            assert!(out.status.success(), "{tool}: {out:?}");
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        text
    }
}

impl Pod {
    /// Every name the firewall state of this pod is keyed by, with a placeholder for it.
    fn tokens(&self) -> Vec<(String, &'static str)> {
        let nft_comment_key =
            masquerade::reference_comment_prefix(NET, &self.cid, "eth0")[17..].to_string();
        vec![
            (masquerade::reference_chain(NET, &self.cid), "<masq-chain>"),
            (
                portmap_iptables::reference_chain(NET, &self.cid),
                "<dn-chain>",
            ),
            (nft_comment_key, "<masq-key>"),
            (self.cid.clone(), "<cid>"),
            (self.host_veth.clone(), "<veth>"),
            (self.mac.clone(), "<mac>"),
            (self.ip.clone(), "<ip>"),
            (self.ip6.clone(), "<ip6>"),
            (self.port.to_string(), "<port>"),
        ]
    }

    /// The lines of `firewall` that name this pod, its names replaced by placeholders, sorted.
    fn lines_in(&self, firewall: &str) -> Vec<String> {
        let tokens = self.tokens();
        let mut lines: Vec<String> = firewall
            .lines()
            .filter(|l| tokens.iter().any(|(t, _)| l.contains(t.as_str())))
            .map(|l| {
                tokens
                    .iter()
                    .fold(l.trim().to_string(), |l, (t, p)| l.replace(t.as_str(), p))
            })
            .collect();
        lines.sort();
        lines
    }
}

/// The whole path against one reference.
fn upgrade_and_roll_back(reference: Reference) {
    let node = Node::new(&reference);
    let ours = bin_dir();
    let theirs = &reference.dir;
    installed(theirs.join("portmap"));

    // The reference's pods, which ours CHECKs after the switch; then ours beside them: one
    // ADDed, CHECKed and DELeted, two that stay.
    let ref_pods = [node.add(theirs, 18001), node.add(theirs, 18002)];
    for pod in &ref_pods {
        node.runtime(&ours, "check", &pod.ns, pod.port).ok();
    }
    let passing = node.add(&ours, 18010);
    node.runtime(&ours, "check", &passing.ns, passing.port).ok();
    node.runtime(&ours, "del", &passing.ns, passing.port).ok();
    let our_pods = [node.add(&ours, 18011), node.add(&ours, 18012)];
    node.runtime(&ours, "check", &our_pods[0].ns, our_pods[0].port)
        .ok();
    let mut ips: Vec<&str> = ref_pods
        .iter()
        .chain(&our_pods)
        .map(|p| p.ip.as_str())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 4, "pods share addresses: {ips:?}");

    // A dry run says what it would do and changes nothing.
    let before = node.firewall();
    let dry = node.rollback(&["--dry-run", "--reference", reference.release]);
    assert_eq!(dry.status, 0, "{dry:?}");
    for pod in &our_pods {
        assert!(
            dry.stdout
                .contains(&format!("{NET} {} eth0: would convert", pod.cid)),
            "{}",
            dry.stdout
        );
    }
    for pod in &ref_pods {
        assert!(
            dry.stdout.contains(&format!(
                "{NET} {} eth0: already in the reference's layout",
                pod.cid
            )),
            "{}",
            dry.stdout
        );
    }
    assert_eq!(node.firewall(), before, "the dry run changed the firewall");

    let done = node.rollback(&["--reference", reference.release]);
    assert_eq!(done.status, 0, "{done:?}");
    let after = node.firewall();
    let reference_lines = ref_pods[0].lines_in(&after);
    assert!(reference_lines.len() >= 8, "{reference_lines:?}");
    for pod in &our_pods {
        assert!(
            done.stdout
                .contains(&format!("{NET} {} eth0: converted", pod.cid)),
            "{}",
            done.stdout
        );
        // Exactly the reference's state: the same lines as for a pod the reference made.
        assert_eq!(pod.lines_in(&after), reference_lines, "{after}");
        assert!(!after.contains(&pod_key(pod)), "our rules stay: {after}");
    }
    assert!(
        !after.contains("RCNI-"),
        "our iptables chains stay: {after}"
    );
    // A second run changes nothing.
    let again = node.rollback(&["--reference", reference.release]);
    assert_eq!(again.status, 0, "{again:?}");
    assert!(!again.stdout.contains("converted"), "{}", again.stdout);
    assert_eq!(
        node.firewall(),
        after,
        "the second run changed the firewall"
    );

    // The hostPort of a converted pod still reaches it, from outside the node.
    let pod = &our_pods[0];
    let _server = pod.ns.serve("tcp", "0.0.0.0:80", "converted");
    assert!(node.ext.answers(
        "tcp",
        &format!("{UPLINK}:{}", pod.port),
        "converted",
        Duration::from_secs(5)
    ));

    // The reference CHECKs and DELs every pod, its own and ours.
    for pod in ref_pods.iter().chain(&our_pods) {
        let check = node.runtime(theirs, "check", &pod.ns, pod.port);
        match reference.check_fails_with {
            None => {
                check.ok();
            }
            Some(why) => assert!(check.stderr.contains(why), "{check:?}"),
        }
        if let Some(why) = reference.del_fails_once_with {
            let del = node.runtime(theirs, "del", &pod.ns, pod.port);
            assert!(del.status != 0 && del.stderr.contains(why), "{del:?}");
        }
        node.runtime(theirs, "del", &pod.ns, pod.port).ok();
    }

    // Nothing left of any pod.
    let links: Vec<String> = node.host.link_names();
    assert!(!links.iter().any(|l| l.starts_with("veth")), "{links:?}");
    assert_eq!(
        lease_files(&node.data.path().join(NET)),
        Vec::<String>::new()
    );
    let left = node.firewall();
    for pod in ref_pods.iter().chain(&our_pods).chain([&passing]) {
        assert_eq!(pod.lines_in(&left), Vec::<String>::new(), "{left}");
    }
    let cached: Vec<String> = std::fs::read_dir(node.work.cache_dir().join("results"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(cached, Vec::<String>::new());
}

/// The key our rules of a pod carry in their comments.
fn pod_key(pod: &Pod) -> String {
    libcni::firewall::Owner {
        network: NET,
        container_id: &pod.cid,
        ifname: "eth0",
    }
    .key()
}

#[test]
fn rollback_to_debians_1_1_1() {
    upgrade_and_roll_back(Reference::debian());
}

#[test]
fn rollback_to_1_9_1_with_iptables() {
    upgrade_and_roll_back(Reference::newest(json!({}), json!({})));
}

#[test]
fn rollback_to_1_9_1_with_nftables() {
    upgrade_and_roll_back(Reference::newest(
        json!({"ipMasqBackend": "nftables"}),
        json!({"backend": "nftables"}),
    ));
}

/// Attachments the reference could not take over are listed with the reason and left as they
/// are (exit status 1); the others are converted all the same.
#[test]
fn attachments_that_cannot_be_converted_are_listed_and_left() {
    let reference = Reference::newest(json!({}), json!({}));
    let node = Node::new(&reference);
    let ours = bin_dir();
    let kept = node.add(&ours, 18021);
    let gone = node.add(&ours, 18022);
    let status = std::process::Command::new("ip")
        .args(["netns", "del", &gone.ns.name])
        .status()
        .unwrap();
    assert!(status.success());
    // A cache entry without a result, as a runtime may leave one.
    let results = node.work.cache_dir().join("results");
    let mut entry: Value = serde_json::from_slice(
        &std::fs::read(results.join(format!("{NET}-{}-eth0", kept.cid))).unwrap(),
    )
    .unwrap();
    entry.as_object_mut().unwrap().remove("result");
    entry["containerId"] = json!("noresult");
    std::fs::write(
        results.join(format!("{NET}-noresult-eth0")),
        entry.to_string(),
    )
    .unwrap();

    let out = node.rollback(&[]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("{NET} {} eth0: converted", kept.cid)),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "{NET} {} eth0: not converted: its network namespace is gone",
            gone.cid
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "{NET} noresult eth0: not converted: the cache entry holds no result"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("2 attachment(s) not converted"),
        "{out:?}"
    );
    let firewall = node.firewall();
    assert!(firewall.contains(&pod_key(&gone)), "{firewall}");
    assert!(!firewall.contains(&pod_key(&kept)), "{firewall}");

    // Our DEL still removes what stayed ours; the reference's DEL the converted pod.
    node.runtime(&ours, "del", &gone.ns, gone.port).ok();
    node.runtime(&reference.dir, "del", &kept.ns, kept.port)
        .ok();
    let left = node.firewall();
    for pod in [&kept, &gone] {
        assert_eq!(pod.lines_in(&left), Vec::<String>::new(), "{left}");
    }
}

#[test]
fn rollback_is_in_the_usage_and_checks_its_options() {
    let node = Node::new(&Reference::debian());
    let help = cnitool_env(&node.host, &node.work, &["-h"], &[]);
    assert!(
        help.stdout.contains("cnitool rollback [--dry-run]"),
        "{help:?}"
    );
    for bad in [&["--reference", "2.0"][..], &["--force"]] {
        let out = node.rollback(bad);
        assert_ne!(out.status, 0, "{out:?}");
        assert!(out.stderr.contains(bad[0]), "{out:?}");
    }
    let empty = node.rollback(&["--dry-run"]);
    assert_eq!(empty.status, 0, "{empty:?}");
    assert_eq!(empty.stdout.trim(), "no cached attachments");
}
