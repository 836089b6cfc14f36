//! portmap against Debian's reference Go portmap (v1.1.1: spec up to 1.0.0, iptables only).
//! The same chain (loopback + bridge + host-local + portmap, run by our cnitool) in private
//! host namespaces, one per implementation: a pod the reference set up is fully removed by our
//! DEL, and for the same mappings our nftables and iptables backends give the reference's
//! reachability (from the host, from outside, via localhost, hairpin, per hostIP, transit).

use std::path::{Path, PathBuf};
use std::time::Duration;

use conformance::{
    Background, BridgeConf, Netns, Outcome, REFERENCE_DIR, Workdir, bin_dir, cnitool_container_id,
    cnitool_env, lease_files, node_with_uplink, portmap_conflist, portmap_plugin, reference_plugin,
    unique,
};
use serde_json::{Value, json};
use tempfile::TempDir;

const NET: &str = "pmdiff";
const UP4: &str = "192.168.77.1";
const UP6: &str = "fd77::1";

fn reference_dir() -> PathBuf {
    reference_plugin("portmap");
    PathBuf::from(REFERENCE_DIR)
}

/// One implementation's node: a host namespace with an uplink to an external namespace
/// (192.168.77.1/.3, fd77::1/::3 on the host; .2/::2 outside) and a "far" namespace routed
/// through the host (198.51.100.2, fd78::2); a 1.0.0 conflist loopback + bridge + host-local +
/// portmap; plugins from `cni_path`.
struct Side {
    host: Netns,
    ext: Netns,
    far: Netns,
    work: Workdir,
    data: TempDir,
    br: String,
    cni_path: PathBuf,
}

impl Side {
    fn reference() -> Side {
        Side::new(reference_dir(), json!({}))
    }

    fn new(cni_path: PathBuf, extra: Value) -> Side {
        let (host, ext) = node_with_uplink();
        let far = host.veth_peer(
            "f",
            &["198.51.100.1/24", "fd78::1/64"],
            &["198.51.100.2/24", "fd78::2/64"],
        );
        let data = tempfile::tempdir().unwrap();
        let br = unique("pd");
        let bridge = BridgeConf::new(&br)
            .subnets(&["10.99.0.0/24", "fd99::/64"])
            .data_dir(data.path())
            .with(&json!({"isDefaultGateway": true, "hairpinMode": true}));
        let conflist = portmap_conflist("1.0.0", NET, bridge, portmap_plugin(&extra));
        let work = Workdir::new();
        work.write_conf("10-pm.conflist", &conflist);
        Side {
            host,
            ext,
            far,
            work,
            data,
            br,
            cni_path,
        }
    }

    /// cnitool `verb` with this side's plugins (or `cni_path`) and `CAP_ARGS`.
    fn tool_with(&self, cni_path: &Path, verb: &str, ns: &Path, mappings: &Value) -> Outcome {
        let caps = json!({"portMappings": mappings}).to_string();
        cnitool_env(
            &self.host,
            &self.work,
            &[verb, NET, ns.to_str().unwrap()],
            &[
                ("CAP_ARGS", caps.as_str()),
                ("CNI_PATH", cni_path.to_str().unwrap()),
            ],
        )
    }

    /// ADD of a pod whose servers ([::]:port for each mapped protocol and container port)
    /// answer `<name>/<port>`, ready.
    fn pod(&self, name: &str, mappings: &Value) -> Pod {
        let ctr = Netns::new("c");
        self.tool_with(&self.cni_path, "add", &ctr.path, mappings)
            .ok();
        let mut servers = Vec::new();
        let mut started = Vec::new();
        for m in mappings.as_array().unwrap() {
            let proto = m["protocol"].as_str().unwrap();
            let port = m["containerPort"].as_u64().unwrap();
            if started.contains(&(proto, port)) {
                continue;
            }
            started.push((proto, port));
            let says = format!("{name}/{port}");
            servers.push(ctr.serve(proto, &format!("[::]:{port}"), &says));
            assert!(ctr.answers(
                proto,
                &format!("127.0.0.1:{port}"),
                &says,
                Duration::from_secs(5)
            ));
        }
        self.host.wait_dad(&self.br);
        Pod {
            _servers: servers,
            cid: cnitool_container_id(&ctr.path),
            ctr,
        }
    }

    /// `iptables -t nat -S` and `ip6tables -t nat -S` in the host namespace.
    fn nat_rules(&self) -> Vec<String> {
        let mut out = Vec::new();
        for prog in ["iptables", "ip6tables"] {
            let text = self
                .host
                .command(prog)
                .args(["-w", "-t", "nat", "-S"])
                .output()
                .unwrap();
            out.extend(
                String::from_utf8_lossy(&text.stdout)
                    .lines()
                    .map(|l| format!("{prog}: {l}")),
            );
        }
        out
    }

    /// Servers answering "far" in the far namespace (transit destination).
    fn far_servers(&self, port: u16) -> [Background; 2] {
        let addr = format!("[::]:{port}");
        [
            self.far.serve("tcp", &addr, "far"),
            self.far.serve("udp", &addr, "far"),
        ]
    }
}

struct Pod {
    _servers: Vec<Background>,
    ctr: Netns,
    cid: String,
}

fn mapping(host_port: u16, container_port: u16, proto: &str) -> Value {
    json!({"hostPort": host_port, "containerPort": container_port, "protocol": proto})
}

fn tcp_udp(host_port: u16, container_port: u16) -> Vec<Value> {
    vec![
        mapping(host_port, container_port, "tcp"),
        mapping(host_port, container_port, "udp"),
    ]
}

fn at(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// A pod the reference chain set up (iptables `CNI-DN-…` chain and its jumps from
/// `CNI-HOSTPORT-DNAT`, both families) is fully removed by our cnitool DEL running our portmap
/// and bridge (and host-local): chain and jumps gone, the ports closed, the veth and the lease
/// gone. A second DEL succeeds.
#[test]
fn our_del_removes_a_pod_the_reference_set_up() {
    let side = Side::reference();
    let maps = json!(tcp_udp(8080, 80));
    let pod = side.pod("ref", &maps);
    let chain = libcni::firewall::portmap_iptables::reference_chain(NET, &pod.cid);
    let before = side.nat_rules();
    for prog in ["iptables", "ip6tables"] {
        for want in [
            format!("{prog}: -N {chain}"),
            format!("{prog}: -A {chain} -p tcp -m tcp --dport 8080 -j DNAT"),
        ] {
            assert!(
                before.iter().any(|l| l.starts_with(&want)),
                "no {want:?} in\n{}",
                before.join("\n")
            );
        }
        let jump = before
            .iter()
            .filter(|l| l.starts_with(&format!("{prog}: -A CNI-HOSTPORT-DNAT ")))
            .filter(|l| l.ends_with(&format!("-j {chain}")))
            .count();
        assert_eq!(
            jump,
            2,
            "{prog}: tcp and udp entries\n{}",
            before.join("\n")
        );
    }
    let ports = [at(UP4, 8080), at(UP6, 8080)];
    for proto in ["tcp", "udp"] {
        for p in &ports {
            assert!(side.ext.answers(proto, p, "ref/80", Duration::from_secs(5)));
        }
    }
    assert_eq!(lease_files(&side.data.path().join(NET)).len(), 2);

    side.tool_with(&bin_dir(), "del", &pod.ctr.path, &maps).ok();
    let after = side.nat_rules();
    assert!(
        !after.iter().any(|l| l.contains(&chain)),
        "left behind:\n{}",
        after.join("\n")
    );
    for proto in ["tcp", "udp"] {
        for p in &ports {
            assert_eq!(side.ext.ask(proto, p, 300), None, "{proto} {p}");
        }
        assert_eq!(side.host.ask(proto, &at("127.0.0.1", 8080), 300), None);
    }
    assert!(pod.ctr.link("eth0").is_none());
    let bridge_ports = side.host.ip_json(&["link", "show", "master", &side.br]);
    assert_eq!(bridge_ports, json!([]), "veth left on the bridge");
    assert!(lease_files(&side.data.path().join(NET)).is_empty());
    side.tool_with(&bin_dir(), "del", &pod.ctr.path, &maps).ok();
}

/// What each probe got, by label: the reply or "-".
type Matrix = Vec<(String, String)>;

/// Probes of the same mappings on one side, all at once, after the side answered from outside.
/// Mappings: tcp/udp 8080 → 80 on every address, 8081 → 80 on hostIP 192.168.77.1, 8082 → 80
/// on hostIP fd77::1.
fn reachability(side: &Side) -> Matrix {
    let mut maps = tcp_udp(8080, 80);
    for (port, ip) in [(8081, UP4), (8082, UP6)] {
        for mut m in tcp_udp(port, 80) {
            m["hostIP"] = ip.into();
            maps.push(m);
        }
    }
    let pod = side.pod("pod", &json!(maps));
    let _far = side.far_servers(8080);
    for addr in [at(UP4, 8080), at(UP6, 8080)] {
        assert!(
            side.ext
                .answers("tcp", &addr, "pod/80", Duration::from_secs(5)),
            "{addr}"
        );
    }
    let probes: Vec<(&str, &Netns, String)> = vec![
        ("host -> own v4", &side.host, at(UP4, 8080)),
        ("host -> own v6", &side.host, at(UP6, 8080)),
        ("host -> bridge v4", &side.host, at("10.99.0.1", 8080)),
        ("host -> bridge v6", &side.host, at("fd99::1", 8080)),
        ("ext -> host v4", &side.ext, at(UP4, 8080)),
        ("ext -> host v6", &side.ext, at(UP6, 8080)),
        ("host -> 127.0.0.1", &side.host, at("127.0.0.1", 8080)),
        ("host -> ::1", &side.host, at("::1", 8080)),
        ("hairpin v4", &pod.ctr, at(UP4, 8080)),
        ("hairpin v6", &pod.ctr, at(UP6, 8080)),
        ("hostIP v4, ext -> it", &side.ext, at(UP4, 8081)),
        ("hostIP v4, ext -> .3", &side.ext, at("192.168.77.3", 8081)),
        ("hostIP v4, ext -> v6", &side.ext, at(UP6, 8081)),
        ("hostIP v4, 127.0.0.1", &side.host, at("127.0.0.1", 8081)),
        ("hostIP v4, hairpin", &pod.ctr, at(UP4, 8081)),
        ("hostIP v6, ext -> it", &side.ext, at(UP6, 8082)),
        ("hostIP v6, ext -> ::3", &side.ext, at("fd77::3", 8082)),
        ("hostIP v6, ext -> v4", &side.ext, at(UP4, 8082)),
        ("transit v4", &side.ext, at("198.51.100.2", 8080)),
        ("transit v6", &side.ext, at("fd78::2", 8080)),
    ];
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .flat_map(|(label, ns, addr)| {
                ["tcp", "udp"].map(|proto| {
                    s.spawn(move || {
                        let got = ns.ask(proto, addr, 700).unwrap_or_else(|| "-".into());
                        (format!("{proto} {label} ({addr})"), got)
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn show(m: &Matrix) -> String {
    m.iter()
        .map(|(k, v)| format!("  {k:45} {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `probe` on the reference and on both our backends (all at once, each on its own
/// node), the portmap entry of each conflist with the `extra` keys, and asserts that ours got
/// what the reference got; returns the reference's matrix.
fn compare(extra: Value, probe: fn(&Side) -> Matrix) -> Matrix {
    let side = |cni_path: PathBuf, backend: Option<&str>| {
        let mut extra = extra.clone();
        if let Some(b) = backend {
            extra["backend"] = b.into();
        }
        probe(&Side::new(cni_path, extra))
    };
    let (reference, nft, ipt) = std::thread::scope(|s| {
        let r = s.spawn(|| side(reference_dir(), None));
        let n = s.spawn(|| side(bin_dir(), Some("nftables")));
        let i = s.spawn(|| side(bin_dir(), Some("iptables")));
        (r.join().unwrap(), n.join().unwrap(), i.join().unwrap())
    });
    for (name, ours) in [("nftables", &nft), ("iptables", &ipt)] {
        assert_eq!(
            ours,
            &reference,
            "{name} differs from the reference ({extra}):\nreference:\n{}\n{name}:\n{}",
            show(&reference),
            show(ours)
        );
    }
    reference
}

fn get(m: &Matrix, key: &str) -> String {
    m.iter()
        .find(|(l, _)| l.starts_with(key))
        .map(|(_, v)| v.clone())
        .unwrap()
}

/// For the same mappings, our nftables and iptables backends answer exactly where the
/// reference does.
#[test]
fn reachability_matches_the_reference() {
    let reference = compare(json!({}), reachability);
    // The reference itself behaves as documented.
    for (probe, want) in [
        ("tcp host -> 127.0.0.1", "pod/80"),
        ("udp hairpin v6", "pod/80"),
        ("tcp host -> ::1", "-"),
        ("tcp hostIP v4, ext -> .3", "-"),
        ("udp transit v4", "far"),
    ] {
        assert_eq!(get(&reference, probe), want, "{}", show(&reference));
    }
}

/// With `snat: false` (no hairpin or localhost masquerade, no route_localnet) too.
#[test]
fn reachability_without_snat_matches_the_reference() {
    let reference = compare(json!({"snat": false}), reachability);
    assert_eq!(get(&reference, "tcp ext -> host v4"), "pod/80");
    assert_eq!(
        get(&reference, "tcp host -> 127.0.0.1"),
        "-",
        "{}",
        show(&reference)
    );
}

/// Without br_netfilter on the bridge (`bridge-nf-call-ip(6)tables=0`), pod a reaches pod b's
/// host port through the host's address only if the host masquerades it: the reference marks
/// hairpin traffic from the container's whole subnet (`-s 10.99.0.x/24`).
fn neighbour(side: &Side) -> Matrix {
    for key in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
        let ok = side
            .host
            .command("sysctl")
            .args(["-qw", &format!("net.bridge.{key}=0")])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let a = side.pod("a", &json!(tcp_udp(8080, 80)));
    let b = side.pod("b", &json!(tcp_udp(8081, 80)));
    for addr in [at(UP4, 8081), at(UP6, 8081)] {
        assert!(
            side.ext
                .answers("tcp", &addr, "b/80", Duration::from_secs(5))
        );
    }
    let probes = [
        ("a -> b v4", &a.ctr, at(UP4, 8081)),
        ("a -> b v6", &a.ctr, at(UP6, 8081)),
        ("b -> a v4", &b.ctr, at(UP4, 8080)),
        ("b -> a v6", &b.ctr, at(UP6, 8080)),
    ];
    let mut out = Vec::new();
    for (label, ns, addr) in &probes {
        for proto in ["tcp", "udp"] {
            let got = ns.ask(proto, addr, 700).unwrap_or_else(|| "-".into());
            out.push((format!("{proto} {label}"), got));
        }
    }
    out
}

#[test]
fn neighbour_pod_through_a_host_port_matches_the_reference() {
    let reference = compare(json!({}), neighbour);
    assert!(
        reference.iter().all(|(_, v)| v != "-"),
        "{}",
        show(&reference)
    );
}
