//! portmap, black-box: chains run the way a runtime runs them — our cnitool inside a private
//! "host" namespace with a conflist loopback + bridge (hairpin, default gateway, host-local) +
//! portmap (`portMappings` capability through `CAP_ARGS`) — and real TCP/UDP traffic through
//! the mappings, IPv4 and IPv6: from the host itself, from an "external" namespace behind the
//! host's uplink, via localhost and from the containers (hairpin). Every traffic scenario runs
//! on both backends (`nftables::…`, `iptables::…`). Rules are inspected in the host namespace
//! (`nft -j list table inet rcni_portmap`, `iptables-save`/`ip6tables-save -t nat`).
//! Servers and clients are `rcni-echo`.

use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use conformance::{
    Background, BridgeConf, Call, Netns, Outcome, Workdir, bin, cnitool_container_id, cnitool_env,
    node_with_uplink, portmap_conflist, portmap_plugin, result_ips, unique,
};
use serde_json::{Value, json};
use tempfile::TempDir;

const NET: &str = "pmnet";
/// The host's uplink addresses (a second one per family on the same link: .3 / ::3).
const UP4: &str = "192.168.77.1";
const UP6: &str = "fd77::1";
/// The host's bridge (gateway) addresses.
const GW4: &str = "10.99.0.1";
const GW6: &str = "fd99::1";

/// A host namespace with an uplink to an external namespace (host 192.168.77.1 and .3,
/// fd77::1 and ::3; external .2 / ::2 with default routes via the host) and a conflist
/// loopback + bridge + host-local (10.99.0.0/24, fd99::/64) + portmap on `backend`.
struct World {
    host: Netns,
    ext: Netns,
    work: Workdir,
    _data: TempDir,
    br: String,
}

impl World {
    fn new(backend: &str) -> World {
        World::with(json!({"backend": backend}))
    }

    /// The portmap entry of the conflist gets the `extra` keys.
    fn with(extra: Value) -> World {
        World::build(
            extra,
            json!([[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd99::/64"}]]),
        )
    }

    /// … and host-local the range sets `ranges`.
    fn build(extra: Value, ranges: Value) -> World {
        let (host, ext) = node_with_uplink();
        let data = tempfile::tempdir().unwrap();
        let br = unique("pm");
        let bridge = BridgeConf::new(&br)
            .ranges(ranges)
            .data_dir(data.path())
            .with(&json!({"isDefaultGateway": true, "hairpinMode": true}));
        let conflist = portmap_conflist("1.1.0", NET, bridge, portmap_plugin(&extra));
        let work = Workdir::new();
        work.write_conf("10-pm.conflist", &conflist);
        World {
            host,
            ext,
            work,
            _data: data,
            br,
        }
    }

    /// cnitool `verb` for the namespace at `ns`, with `CAP_ARGS` `{"portMappings": mappings}`
    /// when given.
    fn tool(&self, verb: &str, ns: &Path, mappings: Option<&Value>) -> Outcome {
        let caps = mappings.map(|m| json!({"portMappings": m}).to_string());
        let env: Vec<(&str, &str)> = caps.iter().map(|c| ("CAP_ARGS", c.as_str())).collect();
        cnitool_env(
            &self.host,
            &self.work,
            &[verb, NET, ns.to_str().unwrap()],
            &env,
        )
    }

    /// ADD through cnitool; the pod runs one server per mapped (protocol, containerPort),
    /// answering `<name>/<containerPort>`, and is ready for traffic.
    fn pod(&self, name: &str, mappings: &Value) -> Pod {
        let ctr = Netns::new("c");
        let result = self.tool("add", &ctr.path, Some(mappings)).ok().clone();
        let ips = result_ips(&result);
        let mut pod = Pod {
            servers: Vec::new(),
            name: name.into(),
            ip4: ips.iter().find(|i| !i.contains(':')).cloned(),
            ip6: ips.iter().find(|i| i.contains(':')).cloned(),
            cid: cnitool_container_id(&ctr.path),
            ctr,
            result,
        };
        for m in mappings.as_array().unwrap() {
            let proto = m["protocol"].as_str().unwrap().to_lowercase();
            pod.serve(&proto, m["containerPort"].as_u64().unwrap() as u16);
        }
        self.host.wait_dad(&self.br);
        pod
    }

    fn del(&self, ns: &Path, mappings: &Value) {
        self.tool("del", ns, Some(mappings)).ok();
    }

    /// Every port-mapping rule in the host namespace: our nftables table's rules (JSON) and
    /// the nat table lines of iptables-save and ip6tables-save.
    fn rules(&self) -> Vec<String> {
        let mut out: Vec<String> = nft_rules(&self.host).iter().map(Value::to_string).collect();
        for save in ["iptables-save", "ip6tables-save"] {
            let text = self
                .host
                .command(save)
                .args(["-t", "nat"])
                .output()
                .unwrap();
            out.extend(
                String::from_utf8_lossy(&text.stdout)
                    .lines()
                    .filter(|l| l.starts_with('-') || l.starts_with(':'))
                    .map(|l| format!("{save}: {l}")),
            );
        }
        out
    }

    /// The rules of container `cid`, in either backend: whatever names the container or the
    /// attachment's iptables chain.
    fn rules_of(&self, cid: &str) -> Vec<String> {
        let chain = iptables_chain(cid);
        self.rules()
            .into_iter()
            .filter(|r| r.contains(cid) || r.contains(&chain))
            .collect()
    }

    /// Our raw portmap plugin run in the host namespace for the attachment (`cid`, eth0).
    fn call(&self, command: &str, netns: &Path, cid: &str) -> Call<'_> {
        Call::new(&self.host, bin("portmap"), command, netns).env("CNI_CONTAINERID", cid)
    }
}

/// The iptables backend's chain of attachment (`cid`, eth0) on our network.
fn iptables_chain(cid: &str) -> String {
    libcni::firewall::portmap_iptables::chain(&libcni::firewall::Owner {
        network: NET,
        container_id: cid,
        ifname: "eth0",
    })
}

/// The tables of `table inet rcni_portmap` in `ns`: its rules, empty when there is no table.
fn nft_rules(ns: &Netns) -> Vec<Value> {
    ns.nft_table_rules("inet", "rcni_portmap")
}

/// The names of every nftables table in `ns` (`family name`).
fn nft_tables(ns: &Netns) -> Vec<String> {
    ns.nft_ruleset()
        .iter()
        .filter_map(|o| o.get("table"))
        .map(|t| {
            format!(
                "{} {}",
                t["family"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            )
        })
        .collect()
}

struct Pod {
    /// First, so that the servers are gone before the namespace.
    servers: Vec<Background>,
    name: String,
    ctr: Netns,
    ip4: Option<String>,
    ip6: Option<String>,
    cid: String,
    result: Value,
}

impl Pod {
    /// What the server on `port` answers.
    fn says(&self, port: u16) -> String {
        format!("{}/{port}", self.name)
    }

    /// Starts a `proto` server on `[::]:port` (both families) and waits until it answers.
    fn serve(&mut self, proto: &str, port: u16) {
        self.servers.push(
            self.ctr
                .serve(proto, &format!("[::]:{port}"), &self.says(port)),
        );
        assert!(
            self.ctr.answers(
                proto,
                &format!("127.0.0.1:{port}"),
                &self.says(port),
                Duration::from_secs(5)
            ),
            "{proto} server on {port} in {} did not start",
            self.name
        );
    }
}

fn mapping(host_port: u16, container_port: u16, proto: &str) -> Value {
    json!({"hostPort": host_port, "containerPort": container_port, "protocol": proto})
}

/// `addr:port`, IPv6 in brackets.
fn at(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// One expectation: from `ns`, `proto` to `addr` is answered with `want` (`None`: not at all).
type Case<'a> = (&'a str, &'a Netns, &'static str, String, Option<String>);

/// Runs every case at once. An expected answer may take up to 5 s to come (first packets,
/// neighbour discovery); an expected silence is one ask of 300 ms, enough for a path that
/// works to answer many times over. Panics listing every case that went otherwise.
fn expect(cases: &[Case<'_>]) {
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(label, ns, proto, addr, want)| {
                s.spawn(move || {
                    let got = match want {
                        Some(w) => {
                            if ns.answers(proto, addr, w, Duration::from_secs(5)) {
                                Some(w.clone())
                            } else {
                                ns.ask(proto, addr, 500)
                            }
                        }
                        None => ns.ask(proto, addr, 300),
                    };
                    (got != *want).then(|| {
                        format!("{label}: {proto} to {addr}: expected {want:?}, got {got:?}")
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Every proto × address combination from `ns` expecting `want`.
fn cases<'a>(label: &'a str, ns: &'a Netns, addrs: &[String], want: Option<&str>) -> Vec<Case<'a>> {
    let mut out = Vec::new();
    for proto in ["tcp", "udp"] {
        for a in addrs {
            out.push((label, ns, proto, a.clone(), want.map(String::from)));
        }
    }
    out
}

/// `host_port` → `container_port` for tcp and for udp.
fn tcp_udp(host_port: u16, container_port: u16) -> Value {
    json!([
        mapping(host_port, container_port, "tcp"),
        mapping(host_port, container_port, "udp")
    ])
}

/// Runs each scenario once per backend: `nftables::<name>` and `iptables::<name>`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod nftables {
            $(#[test]
            fn $name() {
                super::$name("nftables")
            })*
        }
        mod iptables {
            $(#[test]
            fn $name() {
                super::$name("iptables")
            })*
        }
    };
}

on_both_backends!(
    a_pod_cannot_reach_services_on_the_hosts_loopback,
    host_external_localhost_and_hairpin,
    host_ip_restricts_a_mapping_to_that_address,
    many_mappings_at_once,
    two_pods_get_their_own_traffic,
    transit_traffic_is_not_hijacked,
    del_removes_every_rule_and_the_ports_close,
    del_without_prev_result_or_namespace_removes_the_rules,
    udp_host_port_moves_to_a_new_pod_at_once,
    check_detects_a_missing_rule,
    gc_keeps_valid_attachments_and_status_succeeds,
    conditions_restrict_the_mappings_of_their_family,
    single_family_pods,
);

/// Datagrams to 127.0.0.1:9999 that got past every filter-priority input chain of `host` (a
/// counter of our own at a later priority).
fn loopback_arrivals(host: &Netns) -> u64 {
    host.nft_table_rules("inet", "rcni_probe")
        .iter()
        .flat_map(|r| r["expr"].as_array().unwrap().clone())
        .find_map(|e| e["counter"]["packets"].as_u64())
        .unwrap()
}

/// `route_localnet` (for `127.0.0.1:hostPort`) would let a pod reach the host's services bound
/// to 127.0.0.1 by routing 127.0.0.1 via its gateway (CVE-2020-8558): the node's guard drops
/// that; without the guard the same datagrams get through, which shows the test can tell.
fn a_pod_cannot_reach_services_on_the_hosts_loopback(backend: &str) {
    let w = World::new(backend);
    let pod = w.pod("a", &tcp_udp(8080, 80));
    let probe = w
        .host
        .command("nft")
        .args([
            "add table inet rcni_probe; add chain inet rcni_probe input { type filter hook \
             input priority 10; }; add rule inet rcni_probe input ip daddr 127.0.0.1 udp dport \
             9999 counter",
        ])
        .status()
        .unwrap();
    assert!(probe.success());
    // What a pod with CAP_NET_ADMIN in its own namespace can do: route 127.0.0.1 out eth0.
    pod.ctr.ip(&[
        "route",
        "del",
        "local",
        "127.0.0.0/8",
        "dev",
        "lo",
        "table",
        "local",
    ]);
    pod.ctr.ip(&[
        "route",
        "del",
        "local",
        "127.0.0.1",
        "dev",
        "lo",
        "table",
        "local",
    ]);
    pod.ctr
        .ip(&["route", "add", "127.0.0.1/32", "via", GW4, "dev", "eth0"]);
    for key in ["all", "eth0"] {
        let set = pod
            .ctr
            .command("sysctl")
            .args(["-qw", &format!("net.ipv4.conf.{key}.route_localnet=1")])
            .status()
            .unwrap();
        assert!(set.success());
    }
    let send = || {
        for _ in 0..3 {
            pod.ctr.ask("udp", "127.0.0.1:9999", 100);
        }
    };
    send();
    assert_eq!(loopback_arrivals(&w.host), 0, "the guard let them through");
    // 127.0.0.1:hostPort from the host still works.
    assert!(w.host.answers(
        "udp",
        "127.0.0.1:8080",
        &pod.says(80),
        Duration::from_secs(3)
    ));

    let removed = match backend {
        "nftables" => w
            .host
            .command("nft")
            .args(["delete", "table", "inet", "rcni_localnet"])
            .status(),
        _ => w.host.command("iptables").args(["-F", "INPUT"]).status(),
    };
    assert!(removed.unwrap().success());
    send();
    assert!(
        loopback_arrivals(&w.host) > 0,
        "without the guard the datagrams should arrive (the test would prove nothing)"
    );
}

/// One pod with tcp and udp 8080 → 80 answers on every host address from the host and from
/// outside, on 127.0.0.1 from the host (not [::1]: no IPv6 equivalent of route_localnet), and
/// to itself through the host's addresses (hairpin); unmapped ports stay closed.
fn host_external_localhost_and_hairpin(backend: &str) {
    let w = World::new(backend);
    let pod = w.pod("a", &tcp_udp(8080, 80));
    let says = pod.says(80);
    let local = [
        at(UP4, 8080),
        at(UP6, 8080),
        at("192.168.77.3", 8080),
        at("fd77::3", 8080),
        at(GW4, 8080),
        at(GW6, 8080),
    ];
    let mut all = Vec::new();
    all.extend(cases("from the host", &w.host, &local, Some(&says)));
    all.extend(cases("from outside", &w.ext, &local[..4], Some(&says)));
    all.extend(cases("hairpin", &pod.ctr, &local, Some(&says)));
    all.extend(cases(
        "localhost",
        &w.host,
        &[at("127.0.0.1", 8080)],
        Some(&says),
    ));
    all.extend(cases(
        "::1 is not forwarded (documented)",
        &w.host,
        &[at("::1", 8080)],
        None,
    ));
    all.extend(cases(
        "unmapped port",
        &w.ext,
        &[at(UP4, 8081), at(UP6, 8081)],
        None,
    ));
    // The container's own port is not the host's.
    all.extend(cases(
        "host port 80",
        &w.ext,
        &[at(UP4, 80), at(UP6, 80)],
        None,
    ));
    expect(&all);
    // 127.0.0.1 reaches the container because the bridge routes localnet.
    assert_eq!(
        w.host
            .sysctl(&format!("net/ipv4/conf/{}/route_localnet", w.br)),
        "1"
    );
    // The result is the bridge's, passed on: the container's addresses.
    assert_eq!(
        result_ips(&pod.result),
        [pod.ip4.clone().unwrap(), pod.ip6.clone().unwrap()],
        "{}",
        pod.result
    );
}

/// `hostIP` restricts a mapping to that host address (of its own family); `0.0.0.0` and `::`
/// mean every address of their family (and nothing in the other, as in the reference).
fn host_ip_restricts_a_mapping_to_that_address(backend: &str) {
    let w = World::new(backend);
    let with_ip = |port: u16, proto: &str, ip: &str| {
        let mut m = mapping(port, 80, proto);
        m["hostIP"] = ip.into();
        m
    };
    let maps = json!([
        with_ip(8080, "tcp", UP4),
        with_ip(8080, "udp", UP4),
        with_ip(8081, "tcp", UP6),
        with_ip(8081, "udp", UP6),
        with_ip(8082, "tcp", "0.0.0.0"),
        with_ip(8082, "udp", "0.0.0.0"),
        with_ip(8083, "tcp", "::"),
        with_ip(8083, "udp", "::"),
    ]);
    let pod = w.pod("a", &maps);
    let says = pod.says(80);
    let mut all = Vec::new();
    all.extend(cases("hostIP v4", &w.ext, &[at(UP4, 8080)], Some(&says)));
    all.extend(cases(
        "hostIP v4, other addresses",
        &w.ext,
        &[at("192.168.77.3", 8080), at(UP6, 8080), at("fd77::3", 8080)],
        None,
    ));
    all.extend(cases(
        "hostIP v4, other addresses",
        &w.host,
        &[at("127.0.0.1", 8080), at(GW4, 8080)],
        None,
    ));
    all.extend(cases(
        "hostIP v4, hairpin",
        &pod.ctr,
        &[at(UP4, 8080)],
        Some(&says),
    ));
    all.extend(cases("hostIP v6", &w.ext, &[at(UP6, 8081)], Some(&says)));
    all.extend(cases(
        "hostIP v6, other addresses",
        &w.ext,
        &[at("fd77::3", 8081), at(UP4, 8081), at("192.168.77.3", 8081)],
        None,
    ));
    all.extend(cases(
        "hostIP v6, other addresses",
        &w.host,
        &[at(GW6, 8081)],
        None,
    ));
    all.extend(cases(
        "hostIP v6, hairpin",
        &pod.ctr,
        &[at(UP6, 8081)],
        Some(&says),
    ));
    all.extend(cases(
        "hostIP 0.0.0.0",
        &w.ext,
        &[at(UP4, 8082), at("192.168.77.3", 8082)],
        Some(&says),
    ));
    all.extend(cases(
        "hostIP 0.0.0.0 is IPv4 only",
        &w.ext,
        &[at(UP6, 8082)],
        None,
    ));
    all.extend(cases(
        "hostIP ::",
        &w.ext,
        &[at(UP6, 8083), at("fd77::3", 8083)],
        Some(&says),
    ));
    all.extend(cases(
        "hostIP :: is IPv6 only",
        &w.ext,
        &[at(UP4, 8083)],
        None,
    ));
    expect(&all);
}

/// How many of `rules` send traffic of a host port on to an attachment: nftables `hostports`
/// rules, iptables entries in `CNI-HOSTPORT-DNAT`.
fn entries(rules: &[String]) -> usize {
    rules
        .iter()
        .filter(|r| r.contains(r#""chain":"hostports""#) || r.contains("-A CNI-HOSTPORT-DNAT "))
        .count()
}

/// Ten mappings of one pod (tcp and udp, each host port to its own container port) all work, in
/// both families; each is one entry per family.
fn many_mappings_at_once(backend: &str) {
    let w = World::new(backend);
    let proto = |i: u16| if i.is_multiple_of(2) { "tcp" } else { "udp" };
    let maps: Vec<Value> = (0..10u16)
        .map(|i| mapping(9000 + i, 7000 + i, proto(i)))
        .collect();
    let pod = w.pod("a", &json!(maps));
    let mut all: Vec<Case<'_>> = Vec::new();
    for i in 0..10u16 {
        for addr in [UP4, UP6] {
            all.push((
                "mapping",
                &w.ext,
                proto(i),
                at(addr, 9000 + i),
                Some(pod.says(7000 + i)),
            ));
        }
        // The other protocol on the same port is not mapped.
        all.push((
            "other protocol",
            &w.ext,
            proto(i + 1),
            at(UP4, 9000 + i),
            None,
        ));
    }
    expect(&all);
    assert_eq!(entries(&w.rules_of(&pod.cid)), 20, "{:#?}", w.rules());
}

/// Two pods on one bridge with different host ports each get their own traffic; deleting one
/// leaves the other working and its rules in place.
fn two_pods_get_their_own_traffic(backend: &str) {
    let w = World::new(backend);
    let maps_a = tcp_udp(8080, 80);
    let a = w.pod("a", &maps_a);
    let b = w.pod("b", &tcp_udp(8081, 80));
    let mut all = Vec::new();
    let (p8080, p8081) = (
        [at(UP4, 8080), at(UP6, 8080)],
        [at(UP4, 8081), at(UP6, 8081)],
    );
    all.extend(cases("to a", &w.ext, &p8080, Some(&a.says(80))));
    all.extend(cases("to b", &w.ext, &p8081, Some(&b.says(80))));
    all.extend(cases("a hairpin", &a.ctr, &p8080, Some(&a.says(80))));
    all.extend(cases("b hairpin", &b.ctr, &p8081, Some(&b.says(80))));
    expect(&all);
    let b_rules = w.rules_of(&b.cid);
    assert!(!b_rules.is_empty());

    w.del(&a.ctr.path, &maps_a);
    assert!(w.rules_of(&a.cid).is_empty(), "{:#?}", w.rules());
    assert_eq!(w.rules_of(&b.cid), b_rules, "DEL of a touched b's rules");
    let mut all = Vec::new();
    all.extend(cases("a deleted", &w.ext, &p8080, None));
    all.extend(cases("b still", &w.ext, &p8081, Some(&b.says(80))));
    expect(&all);
}

/// Sets `bridge-nf-call-ip(6)tables` in `ns`: whether bridged traffic goes through netfilter.
fn bridge_netfilter(ns: &Netns, on: bool) {
    let v = if on { "1" } else { "0" };
    for key in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
        let status = ns
            .command("sysctl")
            .args(["-qw", &format!("net.bridge.{key}={v}")])
            .status()
            .unwrap();
        assert!(status.success(), "br_netfilter is not loaded");
    }
}

/// A pod reaches a neighbour pod's host port through the host's address. The reference
/// (iptables) marks hairpin traffic from the container's whole subnet for masquerade, so the
/// answer comes back through the host even when bridged traffic bypasses netfilter
/// (`bridge-nf-call-ip(6)tables=0` in the host namespace; with br_netfilter on, conntrack
/// happens to fix it up).
fn neighbour_pod_reaches_a_host_port_through_the_host_address(backend: &str) {
    let w = World::new(backend);
    bridge_netfilter(&w.host, false);
    let a = w.pod("a", &tcp_udp(8080, 80));
    let b = w.pod("b", &tcp_udp(8081, 80));
    let mut all = Vec::new();
    all.extend(cases(
        "a to b",
        &a.ctr,
        &[at(UP4, 8081), at(UP6, 8081)],
        Some(&b.says(80)),
    ));
    all.extend(cases(
        "b to a",
        &b.ctr,
        &[at(UP4, 8080), at(UP6, 8080)],
        Some(&a.says(80)),
    ));
    expect(&all);
}

#[test]
fn neighbour_pod_reaches_a_host_port_nftables() {
    neighbour_pod_reaches_a_host_port_through_the_host_address("nftables");
}

#[test]
fn neighbour_pod_reaches_a_host_port_iptables() {
    neighbour_pod_reaches_a_host_port_through_the_host_address("iptables");
}

/// Traffic routed through the host to an address that is not the host's own, with a mapped
/// destination port, reaches its real destination: it is not DNATed to the pod (the
/// reference's nftables transit hijack, plugins#1209).
fn transit_traffic_is_not_hijacked(backend: &str) {
    let w = World::new(backend);
    let far = w.host.veth_peer(
        "f",
        &["198.51.100.1/24", "fd78::1/64"],
        &["198.51.100.2/24", "fd78::2/64"],
    );
    let pod = w.pod("a", &tcp_udp(8080, 80));
    let _far_servers = [
        far.serve("tcp", "[::]:8080", "far"),
        far.serve("udp", "[::]:8080", "far"),
    ];
    let mut all = Vec::new();
    all.extend(cases(
        "transit",
        &w.ext,
        &[at("198.51.100.2", 8080), at("fd78::2", 8080)],
        Some("far"),
    ));
    all.extend(cases(
        "local",
        &w.ext,
        &[at(UP4, 8080), at(UP6, 8080)],
        Some(&pod.says(80)),
    ));
    expect(&all);
}

/// DEL: the ports stop answering, no rule of the pod is left, DEL again succeeds; the raw
/// plugin's DEL is idempotent too.
fn del_removes_every_rule_and_the_ports_close(backend: &str) {
    let w = World::new(backend);
    let maps = tcp_udp(8080, 80);
    let pod = w.pod("a", &maps);
    let ports = [at(UP4, 8080), at(UP6, 8080)];
    expect(&cases("before DEL", &w.ext, &ports, Some(&pod.says(80))));
    assert!(!w.rules_of(&pod.cid).is_empty());
    w.del(&pod.ctr.path, &maps);
    assert!(w.rules_of(&pod.cid).is_empty(), "{:#?}", w.rules());
    let mut all = Vec::new();
    all.extend(cases("after DEL", &w.ext, &ports, None));
    all.extend(cases(
        "after DEL",
        &w.host,
        &[at("127.0.0.1", 8080), at(UP4, 8080), at(UP6, 8080)],
        None,
    ));
    all.extend(cases("after DEL", &pod.ctr, &ports, None));
    expect(&all);
    w.del(&pod.ctr.path, &maps);
    let conf = json!({"cniVersion": "1.1.0", "name": NET, "type": "portmap", "backend": backend,
                      "runtimeConfig": {"portMappings": maps}});
    for _ in 0..2 {
        let out = w
            .call("DEL", &pod.ctr.path, &pod.cid)
            .run(&conf.to_string());
        out.ok();
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}

/// DEL needs neither prevResult nor the container's namespace nor the mappings: the rules go
/// (raw plugin DEL without prevResult; cnitool DEL after the namespace is gone; raw DEL with
/// neither namespace, prevResult, runtimeConfig nor backend).
fn del_without_prev_result_or_namespace_removes_the_rules(backend: &str) {
    let w = World::new(backend);
    let maps = tcp_udp(8080, 80);
    let a = w.pod("a", &maps);
    let b = w.pod("b", &json!([mapping(8081, 80, "tcp")]));
    let c = w.pod("c", &json!([mapping(8082, 80, "udp")]));
    for p in [&a, &b, &c] {
        assert!(!w.rules_of(&p.cid).is_empty());
    }

    // a: raw DEL without prevResult, namespace alive.
    let conf = json!({"cniVersion": "1.1.0", "name": NET, "type": "portmap", "backend": backend,
                      "runtimeConfig": {"portMappings": maps}});
    w.call("DEL", &a.ctr.path, &a.cid)
        .run(&conf.to_string())
        .ok();
    assert!(w.rules_of(&a.cid).is_empty(), "{:#?}", w.rules());

    // b: the namespace is gone, cnitool DELs the whole chain.
    let (b_path, b_cid) = (b.ctr.path.clone(), b.cid.clone());
    drop(b);
    assert!(!b_path.exists());
    w.del(&b_path, &json!([mapping(8081, 80, "tcp")]));
    assert!(w.rules_of(&b_cid).is_empty(), "{:#?}", w.rules());

    // c: namespace gone, no prevResult, no runtimeConfig, no backend.
    let (c_path, c_cid) = (c.ctr.path.clone(), c.cid.clone());
    drop(c);
    let bare = json!({"cniVersion": "1.1.0", "name": NET, "type": "portmap"});
    w.call("DEL", &c_path, &c_cid).run(&bare.to_string()).ok();
    assert!(w.rules_of(&c_cid).is_empty(), "{:#?}", w.rules());
    w.call("DEL", &c_path, &c_cid)
        .env("CNI_NETNS", "")
        .run(&bare.to_string())
        .ok();

    let mut all = Vec::new();
    all.extend(cases(
        "after DEL",
        &w.ext,
        &[at(UP4, 8080), at(UP6, 8080)],
        None,
    ));
    all.push(("after DEL", &w.ext, "tcp", at(UP4, 8081), None));
    all.push(("after DEL", &w.ext, "udp", at(UP4, 8082), None));
    expect(&all);
}

/// A client that reads lines of `rcni-echo ask-loop` (one UDP socket, one source port, a
/// datagram every 50 ms) as they come.
struct Loop {
    _proc: Background,
    lines: mpsc::Receiver<String>,
}

impl Loop {
    fn start(ns: &Netns, addr: &str) -> Loop {
        let mut child = ns
            .command(bin("rcni-echo"))
            .args(["ask-loop", "udp", addr, "20000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Loop {
            _proc: Background(child),
            lines,
        }
    }

    /// Waits up to `within` for the reply `want`; how long it took.
    fn wait_for(&self, want: &str, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        let deadline = start + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(l) if l == want => return Some(start.elapsed()),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

/// Waits (up to 5 s) until `ns` tracks a UDP flow to `local`:`port` that is not DNATed (its
/// reply direction comes from `local` itself).
fn wait_for_unnated_entry(ns: &Netns, v6: bool, local: &str, port: u16) -> bool {
    let needle = format!("src={local} dst=");
    let sport = format!("sport={port} ");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let out = ns
            .command("conntrack")
            .arg("-L")
            .args(["-f", if v6 { "ipv6" } else { "ipv4" }, "-p", "udp"])
            .args(["--orig-port-dst", &port.to_string()])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let found = String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            // The second src= is the reply direction's.
            l.match_indices("src=")
                .nth(1)
                .is_some_and(|(i, _)| l[i..].starts_with(&needle) && l[i..].contains(&sport))
        });
        if found {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A UDP host port moves to a new pod after the old one is deleted: a client that kept sending
/// from the same source port all along gets answers from the new pod at once (the stale
/// conntrack entries — to the old pod, and un-NATed ones made while no rule existed — are
/// flushed), in both families.
fn udp_host_port_moves_to_a_new_pod_at_once(backend: &str) {
    let w = World::new(backend);
    // Another pod stays on the node throughout. (Its rules also keep connection tracking on
    // in the host namespace: with no rule that needs it, this kernel tracks nothing, and
    // there would be no stale entry to flush.)
    let _other = w.pod("other", &json!([mapping(8081, 80, "tcp")]));
    let maps = json!([mapping(5353, 53, "udp")]);
    let a = w.pod("a", &maps);
    let loops = [
        Loop::start(&w.ext, &at(UP4, 5353)),
        Loop::start(&w.ext, &at(UP6, 5353)),
    ];
    for l in &loops {
        assert!(l.wait_for(&a.says(53), Duration::from_secs(5)).is_some());
    }
    w.del(&a.ctr.path, &maps);
    drop(a);
    // The clients keep sending to a port nobody maps: the host now tracks their flows as its
    // own (the reply would come from the host's address), entries a new rule cannot change.
    for (v6, local) in [(false, UP4), (true, UP6)] {
        let family = if v6 { "ipv6" } else { "ipv4" };
        assert!(
            wait_for_unnated_entry(&w.host, v6, local, 5353),
            "{family}: the client's flow is not tracked as the host's own: its entry to the \
             deleted pod was not flushed on DEL"
        );
    }
    let b = w.pod("b", &maps);
    for (l, fam) in loops.iter().zip(["IPv4", "IPv6"]) {
        let took = l.wait_for(&b.says(53), Duration::from_secs(2));
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(1)),
            "{fam}: the new pod answered after {took:?} (stale entries not flushed on ADD?)"
        );
    }
}

/// Deletes one rule of container `cid` by hand: `what` names it (nftables: a rule of that chain
/// of our table; iptables: `entry` in CNI-HOSTPORT-DNAT, or the attachment chain's rule with
/// that target).
fn delete_rule_by_hand(w: &World, cid: &str, what: &str) {
    let (program, args): (&str, Vec<String>) = if what == "hostports" || what == "postrouting" {
        let rule = nft_rules(&w.host)
            .into_iter()
            .find(|r| r["chain"] == what && r["comment"].as_str().is_some_and(|c| c.contains(cid)))
            .unwrap_or_else(|| panic!("no {what} rule: {:#?}", w.rules()));
        let handle = rule["handle"].as_u64().unwrap().to_string();
        let args = [
            "delete",
            "rule",
            "inet",
            "rcni_portmap",
            what,
            "handle",
            &handle,
        ];
        ("nft", args.iter().map(|s| s.to_string()).collect())
    } else {
        let (chain, needle) = match what {
            "entry" => ("CNI-HOSTPORT-DNAT".to_string(), cid.to_string()),
            target => (iptables_chain(cid), target.to_string()),
        };
        let out = w
            .host
            .command("iptables")
            .args(["-w", "-t", "nat", "-L", &chain, "-n", "--line-numbers"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let num = text
            .lines()
            .find(|l| l.contains(&needle))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {what} rule in {chain}: {text}"))
            .to_string();
        (
            "iptables",
            ["-w", "-t", "nat", "-D", &chain, &num]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    };
    let status = w.host.command(program).args(&args).status().unwrap();
    assert!(status.success(), "{program} {args:?}");
}

/// CHECK passes after ADD and fails once `what` (a rule of the pod, see `delete_rule_by_hand`)
/// is deleted by hand; another pod's CHECK is not affected.
fn check_fails_without(backend: &str, whats: &[&str]) {
    let w = World::new(backend);
    let maps = tcp_udp(8080, 80);
    let other = w.pod("b", &json!([mapping(8081, 80, "tcp")]));
    for what in whats {
        let pod = w.pod("a", &maps);
        w.tool("check", &pod.ctr.path, Some(&maps)).ok();
        delete_rule_by_hand(&w, &pod.cid, what);
        let check = w.tool("check", &pod.ctr.path, Some(&maps));
        assert_ne!(
            check.status, 0,
            "CHECK passed without the {what} rule: {check:?}"
        );
        w.del(&pod.ctr.path, &maps);
    }
    w.tool(
        "check",
        &other.ctr.path,
        Some(&json!([mapping(8081, 80, "tcp")])),
    )
    .ok();
}

fn check_detects_a_missing_rule(backend: &str) {
    match backend {
        "nftables" => check_fails_without(backend, &["hostports", "postrouting"]),
        _ => check_fails_without(backend, &["entry"]),
    }
}

/// The reference's CHECK runs `iptables -C` for every rule of the container's chain, so a
/// missing DNAT or mark rule inside the chain fails it.
#[test]
fn iptables_check_detects_a_missing_rule_in_the_attachment_chain() {
    check_fails_without("iptables", &["DNAT", "CNI-HOSTPORT-SETMARK"]);
}

/// GC (1.1.0) removes the rules of every attachment of the network that is not in
/// `cni.dev/valid-attachments` and keeps the listed ones; a GC of another network keeps ours.
/// STATUS succeeds.
fn gc_keeps_valid_attachments_and_status_succeeds(backend: &str) {
    let w = World::new(backend);
    let a = w.pod("a", &tcp_udp(8080, 80));
    let b = w.pod("b", &tcp_udp(8081, 80));
    let (a_rules, b_rules) = (w.rules_of(&a.cid), w.rules_of(&b.cid));
    assert!(!a_rules.is_empty() && !b_rules.is_empty());
    let plain = |command: &str, conf: Value| {
        let out = Call::new(&w.host, bin("portmap"), command, &a.ctr.path)
            .unset("CNI_CONTAINERID")
            .unset("CNI_NETNS")
            .unset("CNI_IFNAME")
            .run(&conf.to_string());
        out.ok();
        assert!(out.stdout.is_empty(), "{out:?}");
    };
    let gc = |name: &str, valid: Value| {
        plain(
            "GC",
            json!({"cniVersion": "1.1.0", "name": name, "type": "portmap", "backend": backend,
                   "cni.dev/valid-attachments": valid}),
        );
    };
    gc("othernet", json!([]));
    assert_eq!(w.rules_of(&a.cid), a_rules);
    assert_eq!(w.rules_of(&b.cid), b_rules);

    // b is listed, but with another interface: not the attachment that has the rules.
    gc(
        NET,
        json!([{"containerID": a.cid, "ifname": "eth0"},
               {"containerID": b.cid, "ifname": "net1"}]),
    );
    assert_eq!(
        w.rules_of(&a.cid),
        a_rules,
        "GC removed a valid attachment's rules"
    );
    assert!(w.rules_of(&b.cid).is_empty(), "{:#?}", w.rules());
    let mut all = Vec::new();
    all.extend(cases(
        "kept",
        &w.ext,
        &[at(UP4, 8080), at(UP6, 8080)],
        Some(&a.says(80)),
    ));
    all.extend(cases(
        "collected",
        &w.ext,
        &[at(UP4, 8081), at(UP6, 8081)],
        None,
    ));
    expect(&all);

    plain(
        "STATUS",
        json!({"cniVersion": "1.1.0", "name": NET, "type": "portmap", "backend": backend}),
    );
    cnitool_env(&w.host, &w.work, &["status", NET], &[]).ok();
}

/// With no mappings (none given, or an empty list) portmap passes prevResult through unchanged
/// and makes no firewall table or chain; DEL has nothing to do.
#[test]
fn no_mappings_pass_through_and_make_no_table() {
    for backend in ["nftables", "iptables"] {
        let w = World::new(backend);
        for mappings in [None, Some(json!([]))] {
            let ctr = Netns::new("c");
            w.tool("add", &ctr.path, mappings.as_ref()).ok();
            assert!(
                nft_tables(&w.host).is_empty(),
                "{backend} {mappings:?}: {:?}",
                nft_tables(&w.host)
            );
            w.tool("del", &ctr.path, mappings.as_ref()).ok();
        }
        // Raw: stdout is prevResult.
        let ctr = Netns::new("c");
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:63:00:05", "sandbox": ctr.path}],
            "ips": [{"address": "10.99.0.5/24", "gateway": "10.99.0.1", "interface": 0},
                    {"address": "fd99::5/64", "gateway": "fd99::1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}],
            "dns": {"nameservers": ["10.99.0.1"]},
        });
        for runtime in [json!({}), json!({"portMappings": []})] {
            let conf = json!({"cniVersion": "1.1.0", "name": NET, "type": "portmap",
                              "backend": backend, "runtimeConfig": runtime, "prevResult": prev});
            let out = w.call("ADD", &ctr.path, "ctr1").run(&conf.to_string());
            assert_eq!(out.ok(), &prev);
        }
        assert!(nft_tables(&w.host).is_empty(), "{:?}", nft_tables(&w.host));
    }
}

/// A plausible prevResult for a container at `netns`.
fn prev_result(netns: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": netns}],
        "ips": [{"address": "10.99.0.5/24", "interface": 0}],
    })
}

/// Invalid configurations fail ADD with code 7 and a message naming the key, before anything
/// is made.
#[test]
fn config_errors_name_the_key() {
    let w = World::new("nftables");
    let ctr = Netns::new("c");
    let m = |host: Value, ctr: Value, proto: &str| json!([{"hostPort": host, "containerPort": ctr, "protocol": proto}]);
    let with_ip = |ip: &str| json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ip}]);
    let good = m(json!(8080), json!(80), "tcp");
    let cases: Vec<(Value, Value, &str)> = vec![
        (json!({}), m(json!(0), json!(80), "tcp"), "hostPort"),
        (json!({}), m(json!(70000), json!(80), "tcp"), "hostPort"),
        (json!({}), m(json!(8080), json!(0), "tcp"), "containerPort"),
        (
            json!({}),
            m(json!(8080), json!(70000), "tcp"),
            "containerPort",
        ),
        (json!({}), m(json!(8080), json!(80), "icmp"), "protocol"),
        (json!({}), with_ip("192.168.77.300"), "hostIP"),
        (json!({}), with_ip("localhost"), "hostIP"),
        (json!({"markMasqBit": 32}), good.clone(), "markMasqBit"),
        (json!({"markMasqBit": -1}), good.clone(), "markMasqBit"),
        (
            json!({"markMasqBit": 13, "externalSetMarkChain": "KUBE-MARK-MASQ"}),
            good.clone(),
            "externalSetMarkChain",
        ),
        (
            json!({"markMasqBit": 13, "externalSetMarkChain": "KUBE-MARK-MASQ"}),
            good.clone(),
            "markMasqBit",
        ),
        (
            json!({"backend": "nftables", "externalSetMarkChain": "KUBE-MARK-MASQ"}),
            good.clone(),
            "externalSetMarkChain",
        ),
        (
            json!({"backend": "nftables", "conditionsV4": ["-s", "1.2.3.4"]}),
            good.clone(),
            "conditionsV4",
        ),
        (
            json!({"backend": "nftables", "conditionsV6": ["!", "-d", "::1"]}),
            good.clone(),
            "conditionsV6",
        ),
        (
            json!({"backend": "iptables", "conditionsV4": ["ip", "saddr", "1.2.3.4"]}),
            good.clone(),
            "conditionsV4",
        ),
        (json!({"backend": "ebpf"}), good.clone(), "backend"),
    ];
    for (extra, maps, key) in cases {
        let mut conf = json!({"cniVersion": "1.1.0", "name": NET, "type": "portmap",
                              "runtimeConfig": {"portMappings": maps},
                              "prevResult": prev_result(&ctr.path)});
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        let out = w.call("ADD", &ctr.path, "ctr1").run(&conf.to_string());
        assert_eq!(out.json["code"], 7, "{conf}: {out:?}");
        let msg = out.json["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(key),
            "{conf}: message {msg:?} does not name {key}"
        );
    }
    assert!(nft_tables(&w.host).is_empty(), "{:?}", nft_tables(&w.host));
}

/// ADD without prevResult is refused (portmap is a chained plugin), in both backends.
#[test]
fn add_without_prev_result_fails() {
    let w = World::new("nftables");
    let ctr = Netns::new("c");
    for backend in ["nftables", "iptables"] {
        let conf = json!({"cniVersion": "1.1.0", "name": NET, "type": "portmap",
                          "backend": backend,
                          "runtimeConfig": {"portMappings": tcp_udp(8080, 80)}});
        w.call("ADD", &ctr.path, "ctr1")
            .run(&conf.to_string())
            .err(7, "prevResult");
    }
    assert!(nft_tables(&w.host).is_empty(), "{:?}", nft_tables(&w.host));
}

/// `conditionsV4` (in the backend's own syntax) restrict the IPv4 mappings and leave the IPv6
/// ones alone: only the external client's source address is forwarded.
fn conditions_restrict_the_mappings_of_their_family(backend: &str) {
    let conditions = match backend {
        "nftables" => json!(["ip", "saddr", "192.168.77.2"]),
        _ => json!(["-s", "192.168.77.2"]),
    };
    let w = World::with(json!({"backend": backend, "conditionsV4": conditions}));
    let pod = w.pod("a", &tcp_udp(8080, 80));
    let says = pod.says(80);
    let mut all = Vec::new();
    all.extend(cases(
        "matching source",
        &w.ext,
        &[at(UP4, 8080)],
        Some(&says),
    ));
    all.extend(cases("other source", &w.host, &[at(UP4, 8080)], None));
    all.extend(cases("other source", &pod.ctr, &[at(UP4, 8080)], None));
    all.extend(cases(
        "IPv6 unrestricted",
        &w.host,
        &[at(UP6, 8080)],
        Some(&says),
    ));
    all.extend(cases(
        "IPv6 unrestricted",
        &w.ext,
        &[at(UP6, 8080)],
        Some(&says),
    ));
    expect(&all);
    w.tool("check", &pod.ctr.path, Some(&tcp_udp(8080, 80)))
        .ok();
}

/// IPv4-only and IPv6-only pods: the mappings work in the pod's family and nowhere else;
/// CHECK passes (plugins#819) and DEL removes everything.
fn single_family_pods(backend: &str) {
    for (subnet, addr, other) in [("10.99.0.0/24", UP4, UP6), ("fd99::/64", UP6, UP4)] {
        let w = World::build(json!({"backend": backend}), json!([[{"subnet": subnet}]]));
        let maps = tcp_udp(8080, 80);
        let pod = w.pod("a", &maps);
        assert_eq!(pod.ip4.is_some(), !subnet.contains(':'));
        let mut all = Vec::new();
        all.extend(cases(
            subnet,
            &w.ext,
            &[at(addr, 8080)],
            Some(&pod.says(80)),
        ));
        all.extend(cases(subnet, &w.ext, &[at(other, 8080)], None));
        all.extend(cases(
            "hairpin",
            &pod.ctr,
            &[at(addr, 8080)],
            Some(&pod.says(80)),
        ));
        expect(&all);
        w.tool("check", &pod.ctr.path, Some(&maps)).ok();
        w.del(&pod.ctr.path, &maps);
        assert!(w.rules_of(&pod.cid).is_empty(), "{:#?}", w.rules());
    }
}
