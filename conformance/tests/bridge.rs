//! bridge, black-box: the built binary through the protocol, run inside a private "host"
//! namespace per test, attaching private container namespaces; host-local (ours, from
//! `bin_dir()`) is the IPAM with a temporary `dataDir`. Every test checks the kernel (links,
//! addresses, routes, port flags, VLANs, sysctls, nftables) and, where it matters, real traffic.

use std::path::Path;

use conformance::{
    BridgeConf, Call, Netns, Outcome, VERSIONS, bin, bridge_vlan_filtering_supported, lease_files,
    unique,
};
use serde_json::{Value, json};
use tempfile::TempDir;

const NET: &str = "brnet";

/// A bridge network: unique bridge name, host-local (when L3) with its own `dataDir`. The host
/// namespace is the caller's, so that several networks can share one.
struct Net {
    name: String,
    br: String,
    data: TempDir,
    conf: Value,
}

impl Net {
    /// `subnets` (one range set each) for L3, none for L2 (`"ipam": {}`); `extra` top-level keys.
    fn new(version: &str, subnets: &[&str], extra: Value) -> Net {
        Net::named(NET, version, subnets, extra)
    }

    fn named(name: &str, version: &str, subnets: &[&str], extra: Value) -> Net {
        let data = tempfile::tempdir().unwrap();
        let br = unique("br");
        let conf = BridgeConf::new(&br)
            .subnets(subnets)
            .data_dir(data.path())
            .with(&extra)
            .network(version, name);
        Net {
            name: name.into(),
            br,
            data,
            conf,
        }
    }

    fn stdin(&self) -> String {
        self.conf.to_string()
    }

    fn stdin_with(&self, key: &str, value: Value) -> String {
        let mut conf = self.conf.clone();
        conf[key] = value;
        conf.to_string()
    }

    fn call<'a>(&self, host: &'a Netns, command: &str, netns: &Path, id: &str) -> Call<'a> {
        Call::new(host, bin("bridge"), command, netns).env("CNI_CONTAINERID", id)
    }

    fn run(&self, host: &Netns, command: &str, ctr: &Netns, id: &str) -> Outcome {
        self.call(host, command, &ctr.path, id).run(&self.stdin())
    }

    /// A successful ADD; its result.
    fn add(&self, host: &Netns, ctr: &Netns, id: &str) -> Value {
        self.run(host, "ADD", ctr, id).ok().clone()
    }

    /// A successful DEL that prints nothing.
    fn del(&self, host: &Netns, netns: &Path, id: &str) {
        let out = self.call(host, "DEL", netns, id).run(&self.stdin());
        out.ok();
        assert!(out.stdout.is_empty(), "DEL prints nothing: {out:?}");
    }

    /// A CHECK with `prev` as prevResult.
    fn check(&self, host: &Netns, ctr: &Netns, id: &str, prev: &Value) -> Outcome {
        self.call(host, "CHECK", &ctr.path, id)
            .run(&self.stdin_with("prevResult", prev.clone()))
    }

    /// A STATUS, which names no container.
    fn status(&self, host: &Netns) -> Outcome {
        self.call(host, "STATUS", Path::new(""), "x")
            .unset("CNI_CONTAINERID")
            .unset("CNI_NETNS")
            .unset("CNI_IFNAME")
            .run(&self.stdin())
    }

    /// The addresses host-local has leased on this network.
    fn leases(&self) -> Vec<String> {
        lease_files(&self.data.path().join(&self.name))
    }
}

/// The ports of bridge `br` in `host`.
fn ports(host: &Netns, br: &str) -> Vec<String> {
    host.ip_json(&["link", "show", "master", br])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

fn flags(link: &Value) -> Vec<&str> {
    link["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect()
}

/// The container is attached to `br`: the bridge is up, has exactly one port, a veth that is up
/// and the peer of the container's `eth0`, which is up with exactly `addrs` (besides
/// link-local ones). Returns the host veth's name.
fn assert_attached(host: &Netns, ctr: &Netns, br: &str, addrs: &[String]) -> String {
    let bridge = host.link(br).expect("bridge missing");
    assert_eq!(bridge["linkinfo"]["info_kind"], "bridge", "{bridge}");
    assert!(flags(&bridge).contains(&"UP"), "bridge down: {bridge}");
    let ports = ports(host, br);
    assert_eq!(ports.len(), 1, "ports of {br}: {ports:?}");
    let veth = host.link(&ports[0]).unwrap();
    assert!(
        ports[0].starts_with("veth") && ports[0].len() == 12,
        "{}",
        ports[0]
    );
    assert_eq!(veth["linkinfo"]["info_kind"], "veth");
    assert_eq!(veth["linkinfo"]["info_slave_kind"], "bridge");
    assert_eq!(veth["master"], br);
    assert!(flags(&veth).contains(&"UP"), "{veth}");
    assert_eq!(veth["operstate"], "UP", "{veth}");
    let eth0 = ctr.link("eth0").expect("eth0 missing in the container");
    assert_eq!(eth0["linkinfo"]["info_kind"], "veth");
    assert!(flags(&eth0).contains(&"UP"), "{eth0}");
    assert_eq!(
        eth0["link_index"], veth["ifindex"],
        "eth0's peer is the port"
    );
    assert_eq!(
        veth["link_index"], eth0["ifindex"],
        "the port's peer is eth0"
    );
    assert_eq!(ctr.global_addrs("eth0"), addrs);
    ports[0].clone()
}

/// The result `version` prints: interfaces (bridge, host veth, container eth0 with its sandbox,
/// the MACs the kernel has), `ips` on interface 2, `routes`, in that version's own layout.
fn expected_result(
    version: &str,
    host: &Netns,
    ctr: &Netns,
    br: &str,
    veth: &str,
    ips: &[(String, String)],
    routes: &[Value],
) -> Value {
    let mac = |ns: &Netns, dev: &str| ns.link(dev).unwrap()["address"].clone();
    if version < "0.3.0" {
        let mut v = json!({"cniVersion": version, "dns": {}});
        for (key, v6) in [("ip4", false), ("ip6", true)] {
            if let Some((addr, gw)) = ips.iter().find(|(a, _)| a.contains(':') == v6) {
                let fam_routes: Vec<&Value> = routes
                    .iter()
                    .filter(|r| r["dst"].as_str().unwrap().contains(':') == v6)
                    .collect();
                v[key] = json!({"ip": addr, "gateway": gw});
                if !fam_routes.is_empty() {
                    v[key]["routes"] = json!(fam_routes);
                }
            }
        }
        return v;
    }
    let mut v = json!({
        "cniVersion": version,
        "interfaces": [
            {"name": br, "mac": mac(host, br)},
            {"name": veth, "mac": mac(host, veth)},
            {"name": "eth0", "mac": mac(ctr, "eth0"), "sandbox": ctr.path.display().to_string()},
        ],
    });
    if !ips.is_empty() {
        v["ips"] = ips
            .iter()
            .map(|(a, g)| {
                let mut ip = json!({"interface": 2, "address": a, "gateway": g});
                if version < "1.0.0" {
                    ip["version"] = if a.contains(':') { "6" } else { "4" }.into();
                }
                ip
            })
            .collect();
    }
    if !routes.is_empty() {
        v["routes"] = json!(routes);
    }
    if version < "1.0.0" {
        v["dns"] = json!({});
    }
    v
}

/// The default routes of the container, as `(family, gateway, protocol)`.
fn default_routes(ctr: &Netns) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        for r in ctr
            .ip_json(&[fam, "route", "show", "default"])
            .as_array()
            .unwrap()
        {
            out.push((
                fam.to_string(),
                r["gateway"].as_str().unwrap_or_default().to_string(),
                r["protocol"].as_str().unwrap_or("boot").to_string(),
            ));
        }
    }
    out
}

/// For subnets like `10.10.0.0/24` / `fd10::/64`: the `n`th address and the gateway (`.1`).
fn nth(subnet: &str, n: u32) -> (String, String) {
    let (net, len) = subnet.split_once('/').unwrap();
    if net.contains(':') {
        let base = net.trim_end_matches(':');
        (format!("{base}::{n:x}/{len}"), format!("{base}::1"))
    } else {
        let base = net.rsplit_once('.').unwrap().0;
        (format!("{base}.{n}/{len}"), format!("{base}.1"))
    }
}

fn without_prefix(a: &str) -> &str {
    a.split_once('/').map_or(a, |(ip, _)| ip)
}

fn default_dst(gw: &str) -> &'static str {
    if gw.contains(':') {
        "::/0"
    } else {
        "0.0.0.0/0"
    }
}

/// ADD, result, kernel state, traffic to the gateway, CHECK, DEL, DEL again, in every version,
/// with `isDefaultGateway` on `subnets`. One host and bridge for all versions (v6 duplicate
/// address detection on the bridge's gateway address happens once).
fn every_version(subnets: &[&str]) {
    let host = Netns::new("h");
    let net = Net::new("1.1.0", subnets, json!({"isDefaultGateway": true}));
    for (i, version) in VERSIONS.into_iter().enumerate() {
        let mut conf = net.conf.clone();
        conf["cniVersion"] = version.into();
        let stdin = conf.to_string();
        let ctr = Netns::new("c");
        let id = format!("ctr{i}");
        let result = net.call(&host, "ADD", &ctr.path, &id).run(&stdin);
        let result = result.ok();
        // host-local hands out addresses round-robin: .2 for the first version, .3 for the next…
        let ips: Vec<(String, String)> = subnets.iter().map(|s| nth(s, 2 + i as u32)).collect();
        let routes: Vec<Value> = ips
            .iter()
            .map(|(_, gw)| json!({"dst": default_dst(gw), "gw": gw}))
            .collect();
        let addrs: Vec<String> = ips.iter().map(|(a, _)| a.clone()).collect();
        let veth = assert_attached(&host, &ctr, &net.br, &addrs);
        assert_eq!(
            result,
            &expected_result(version, &host, &ctr, &net.br, &veth, &ips, &routes),
            "{version}"
        );

        // The gateways are on the bridge; forwarding is on for their families.
        let on_bridge = host.global_addrs(&net.br);
        for (addr, gw) in &ips {
            let prefix = addr.split_once('/').unwrap().1;
            assert!(
                on_bridge.contains(&format!("{gw}/{prefix}")),
                "{on_bridge:?}"
            );
            if gw.contains(':') {
                assert_eq!(host.sysctl("net/ipv6/conf/all/forwarding"), "1");
            } else {
                assert_eq!(host.sysctl("net/ipv4/ip_forward"), "1");
            }
        }
        // One default route per family via its gateway, as the reference adds it (proto boot).
        let mut want: Vec<(String, String, String)> = ips
            .iter()
            .map(|(_, gw)| {
                let fam = if gw.contains(':') { "-6" } else { "-4" };
                (fam.to_string(), gw.clone(), "boot".to_string())
            })
            .collect();
        want.sort();
        assert_eq!(default_routes(&ctr), want, "{version}");
        // Router advertisements are off on the bridge and the port.
        assert_eq!(
            host.sysctl(&format!("net/ipv6/conf/{}/accept_ra", net.br)),
            "0"
        );
        assert_eq!(host.sysctl(&format!("net/ipv6/conf/{veth}/accept_ra")), "0");
        // The container's own sysctls.
        assert_eq!(ctr.sysctl("net/ipv4/conf/eth0/arp_notify"), "1");
        if ips.iter().any(|(a, _)| a.contains(':')) {
            assert_eq!(ctr.sysctl("net/ipv6/conf/eth0/accept_dad"), "0");
        }
        // Traffic: the container reaches each gateway.
        host.wait_dad(&net.br);
        for (_, gw) in &ips {
            assert!(ctr.ping(gw, 3), "{version}: no answer from {gw}");
        }
        // The leases are host-local's, for this container.
        let mut leased: Vec<String> = addrs.iter().map(|a| without_prefix(a).into()).collect();
        leased.sort();
        assert_eq!(net.leases(), leased);

        if version < "0.4.0" {
            let check = net.call(&host, "CHECK", &ctr.path, &id).run(&{
                conf["prevResult"] = result.clone();
                conf.to_string()
            });
            check.err(1, "CHECK");
        } else {
            let check = net.call(&host, "CHECK", &ctr.path, &id).run(&{
                conf["prevResult"] = result.clone();
                conf.to_string()
            });
            check.ok();
            assert!(check.stdout.is_empty());
        }

        for _ in 0..2 {
            let del = net.call(&host, "DEL", &ctr.path, &id).run(&stdin);
            del.ok();
            assert!(del.stdout.is_empty());
            assert!(ctr.link("eth0").is_none(), "{version}: eth0 left");
            assert!(host.link(&veth).is_none(), "{version}: {veth} left");
            assert!(net.leases().is_empty(), "{version}: {:?}", net.leases());
        }
        // DEL never removes the bridge.
        assert!(host.link(&net.br).is_some());
    }
}

/// IPv4 with `isDefaultGateway` in every spec version (see `every_version`).
#[test]
fn v4_in_every_version() {
    every_version(&["10.10.0.0/24"]);
}

/// IPv6 with `isDefaultGateway` in every spec version (see `every_version`).
#[test]
fn v6_in_every_version() {
    every_version(&["fd10::/64"]);
}

/// Dual-stack with `isDefaultGateway` in every spec version; 0.1.0/0.2.0 carry one address per
/// family as `ip4`/`ip6` (see `every_version`).
#[test]
fn dual_stack_in_every_version() {
    every_version(&["10.10.0.0/24", "fd10::/64"]);
}

/// L2 (`"ipam": {}`): no IPs, the container interface is up and a port's peer, the bridge gets
/// no address; CHECK passes (the reference fails here, a deliberate fix); 0.1.0/0.2.0 cannot
/// express a result without an IP and fail with code 1.
#[test]
fn l2_in_every_version() {
    let host = Netns::new("h");
    for version in VERSIONS {
        let net = Net::new(version, &[], json!({}));
        let ctr = Netns::new("c");
        let out = net.run(&host, "ADD", &ctr, "ctr1");
        if version < "0.3.0" {
            out.err(1, "no valid IP");
            net.del(&host, &ctr.path, "ctr1");
            assert!(ctr.link("eth0").is_none());
            assert!(ports(&host, &net.br).is_empty());
            continue;
        }
        let result = out.ok();
        let veth = assert_attached(&host, &ctr, &net.br, &[]);
        assert_eq!(
            result,
            &expected_result(version, &host, &ctr, &net.br, &veth, &[], &[]),
            "{version}"
        );
        assert!(host.global_addrs(&net.br).is_empty());
        let check = net.check(&host, &ctr, "ctr1", result);
        if version < "0.4.0" {
            check.err(1, "CHECK");
        } else {
            check.ok();
        }
        net.del(&host, &ctr.path, "ctr1");
        assert!(ctr.link("eth0").is_none());
        assert!(host.link(&veth).is_none());
        net.del(&host, &ctr.path, "ctr1");
    }
}

/// An L2 ADD in 0.1.0/0.2.0 fails (code 1), and like every failed ADD it leaves nothing behind:
/// no veth in the host or the container.
#[test]
fn failed_l2_add_in_0_2_0_leaves_nothing() {
    let host = Netns::new("h");
    for version in ["0.1.0", "0.2.0"] {
        let net = Net::new(version, &[], json!({}));
        let ctr = Netns::new("c");
        net.run(&host, "ADD", &ctr, "ctr1").err(1, "no valid IP");
        assert!(ctr.link("eth0").is_none(), "{version}: eth0 left");
        assert!(ports(&host, &net.br).is_empty(), "{version}: veth left");
    }
}

/// Two containers on one bridge reach each other (and the bridge keeps one gateway address).
#[test]
fn two_containers_reach_each_other() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &["10.20.0.0/24"], json!({"isGateway": true}));
    let a = Netns::new("c");
    let b = Netns::new("c");
    net.add(&host, &a, "a");
    net.add(&host, &b, "b");
    assert_eq!(ports(&host, &net.br).len(), 2);
    assert_eq!(host.global_addrs(&net.br), ["10.20.0.1/24"]);
    assert!(a.ping("10.20.0.3", 3));
    assert!(b.ping("10.20.0.2", 3));
    net.del(&host, &a.path, "a");
    net.del(&host, &b.path, "b");
    assert!(ports(&host, &net.br).is_empty());
}

/// The masquerade rules of our nft table, as (comment, rule) pairs.
fn masquerade_rules(host: &Netns) -> Vec<(String, Value)> {
    host.nft_ruleset()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["family"] == "inet" && r["table"] == "rcni_masquerade")
        .map(|r| {
            (
                r["comment"].as_str().unwrap_or_default().to_string(),
                r.clone(),
            )
        })
        .collect()
}

/// An "external" namespace joined to `host` by a veth: host 192.168.77.1/24, external
/// 192.168.77.2/24, and no route back to any container subnet.
fn external(host: &Netns) -> Netns {
    let ext = Netns::new("e");
    let (h, e) = (unique("xh"), unique("xe"));
    host.ip(&[
        "link", "add", &h, "type", "veth", "peer", "name", &e, "netns", &ext.name,
    ]);
    host.ip(&["addr", "add", "192.168.77.1/24", "dev", &h]);
    host.ip(&["link", "set", &h, "up"]);
    ext.ip(&["addr", "add", "192.168.77.2/24", "dev", &e]);
    ext.ip(&["link", "set", &e, "up"]);
    ext
}

/// The comment of our firewall rules for attachment (`network`, `id`, eth0).
fn owner_comment(network: &str, id: &str) -> String {
    libcni::firewall::Owner {
        network,
        container_id: id,
        ifname: "eth0",
    }
    .comment()
}

/// With `ipMasq` the container reaches a network that has no route back to it: its traffic
/// leaves masqueraded, by one rule for the container's address. After GC with no valid
/// attachment removes the rule, the same ping gets no answer — the rule is what made it work.
#[test]
fn ip_masq_lets_the_container_reach_an_external_network() {
    let host = Netns::new("h");
    let ext = external(&host);
    let net = Net::new(
        "1.1.0",
        &["10.30.0.0/24"],
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    let ctr = Netns::new("c");
    net.add(&host, &ctr, "ctr1");
    let rules = masquerade_rules(&host);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].0, owner_comment(NET, "ctr1"));
    // From the container to anywhere but its subnet and multicast: masquerade.
    let prefix = |op: &str, field: &str, addr: &str, len: u32| {
        json!({"match": {"op": op, "left": {"payload": {"protocol": "ip", "field": field}},
                         "right": {"prefix": {"addr": addr, "len": len}}}})
    };
    assert_eq!(
        rules[0].1["expr"],
        json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": "10.30.0.2"}},
            prefix("!=", "daddr", "10.30.0.0", 24),
            prefix("!=", "daddr", "224.0.0.0", 4),
            {"masquerade": null},
        ])
    );
    assert!(ctr.ping("192.168.77.2", 3), "no answer through masquerade");

    // GC with no attachment: the rule goes (and with it the masquerade).
    net.call(&host, "GC", &ctr.path, "ctr1")
        .run(&net.stdin_with("cni.dev/valid-attachments", json!([])))
        .ok();
    assert!(masquerade_rules(&host).is_empty());
    assert!(!ctr.ping("192.168.77.2", 1), "answered without masquerade");
    drop(ext);
}

/// Every container address has its own masquerade rule in `inet rcni_masquerade`, a NAT
/// postrouting base chain; DEL removes exactly that attachment's; GC of one network with an
/// empty `cni.dev/valid-attachments` removes that network's and nothing else; GC that lists an
/// attachment keeps it. Once every pod is gone nothing names their addresses or subnets.
#[test]
fn masquerade_rules_are_per_attachment_and_go_with_del_and_gc() {
    let host = Netns::new("h");
    let masq = json!({"isDefaultGateway": true, "ipMasq": true});
    let a = Net::named(
        "net-a",
        "1.1.0",
        &["10.31.0.0/24", "fd31::/64"],
        masq.clone(),
    );
    let b = Net::named("net-b", "1.1.0", &["10.32.0.0/24"], masq);
    let (c1, c2, c3) = (Netns::new("c"), Netns::new("c"), Netns::new("c"));
    a.add(&host, &c1, "c1");
    a.add(&host, &c2, "c2");
    b.add(&host, &c3, "c3");
    let comments = |host: &Netns| -> Vec<String> {
        let mut c: Vec<String> = masquerade_rules(host).into_iter().map(|(c, _)| c).collect();
        c.sort();
        c
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let (a1, a2, b3) = (
        owner_comment("net-a", "c1"),
        owner_comment("net-a", "c2"),
        owner_comment("net-b", "c3"),
    );
    // Two addresses (v4, v6) for each container of net-a.
    assert_eq!(
        comments(&host),
        sorted(vec![
            a1.clone(),
            a1.clone(),
            a2.clone(),
            a2.clone(),
            b3.clone()
        ])
    );
    let chain = host
        .nft_ruleset()
        .into_iter()
        .filter_map(|o| o.get("chain").cloned())
        .find(|c| c["table"] == "rcni_masquerade")
        .unwrap();
    assert_eq!(
        (&chain["type"], &chain["hook"], &chain["prio"]),
        (&json!("nat"), &json!("postrouting"), &json!(100))
    );

    a.del(&host, &c2.path, "c2");
    assert_eq!(
        comments(&host),
        sorted(vec![a1.clone(), a1.clone(), b3.clone()]),
        "DEL removes exactly its attachment's rules"
    );

    let gc = |net: &Net, keep: Value| {
        let out = net
            .call(&host, "GC", Path::new(""), "x")
            .unset("CNI_CONTAINERID")
            .unset("CNI_NETNS")
            .unset("CNI_IFNAME")
            .run(&net.stdin_with("cni.dev/valid-attachments", keep));
        out.ok();
        assert!(out.stdout.is_empty());
    };
    gc(&a, json!([{"containerID": "c1", "ifname": "eth0"}]));
    assert_eq!(
        comments(&host),
        sorted(vec![a1.clone(), a1.clone(), b3.clone()]),
        "GC with a valid attachment keeps its rules"
    );
    assert_eq!(a.leases(), ["10.31.0.2", "fd31::2"]);

    let c1_record = libcni::firewall::handles::file_in(
        &host.path,
        libcni::firewall::handles::Kind::Masquerade,
        &libcni::firewall::Owner {
            network: "net-a",
            container_id: "c1",
            ifname: "eth0",
        },
    )
    .unwrap();
    assert!(c1_record.exists());
    gc(&a, json!([]));
    assert_eq!(comments(&host), [b3], "GC removes only net-a's rules");
    assert!(
        !c1_record.exists(),
        "GC drops the record of the rules it removed"
    );
    assert!(a.leases().is_empty(), "{:?}", a.leases());
    assert_eq!(b.leases(), ["10.32.0.2"]);

    b.del(&host, &c3.path, "c3");
    a.del(&host, &c1.path, "c1");
    let left = ruleset(&host);
    for gone in ["10.31.0.", "fd31:", "10.32.0."] {
        assert!(!left.contains(gone), "{gone} still named:\n{left}");
    }
}

/// ADD records the handles of its masquerade rules (libcni::firewall::handles) and DEL deletes
/// by them, without listing the chain that holds every pod's rules; a record naming another
/// pod's rule (stale or forged) is not trusted: DEL then finds its own rules by listing and
/// removes exactly those. Both records are gone after DEL.
#[test]
fn masquerade_del_goes_by_recorded_handles_and_trusts_only_confirmed_ones() {
    use libcni::firewall::handles::{Kind, file_in};
    let host = Netns::new("h");
    let net = Net::new(
        "1.0.0",
        &["10.37.0.0/24"],
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    let (c1, c2, c3) = (Netns::new("c"), Netns::new("c"), Netns::new("c"));
    net.add(&host, &c1, "c1");
    net.add(&host, &c2, "c2");
    net.add(&host, &c3, "c3");
    let owner = |id: &'static str| libcni::firewall::Owner {
        network: NET,
        container_id: id,
        ifname: "eth0",
    };
    let record = |id: &'static str| file_in(&host.path, Kind::Masquerade, &owner(id)).unwrap();
    let handle_of = |id: &str| -> u64 {
        let comment = owner_comment(NET, id);
        let rules = masquerade_rules(&host);
        let mine: Vec<u64> = rules
            .iter()
            .filter(|(c, _)| *c == comment)
            .filter_map(|(_, r)| r["handle"].as_u64())
            .collect();
        assert_eq!(mine.len(), 1, "{id}: {rules:?}");
        mine[0]
    };
    for id in ["c1", "c2", "c3"] {
        let text = std::fs::read_to_string(record(id)).unwrap();
        assert_eq!(
            text,
            format!(
                "complete 1\ninet rcni_masquerade postrouting {}\n",
                handle_of(id)
            ),
            "{id}"
        );
    }
    let comments = || -> Vec<String> {
        let mut c: Vec<String> = masquerade_rules(&host)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        c.sort();
        c
    };

    net.del(&host, &c1.path, "c1");
    assert!(!record("c1").exists());
    let mut left = vec![owner_comment(NET, "c2"), owner_comment(NET, "c3")];
    left.sort();
    assert_eq!(comments(), left);

    // c2's record names c3's rule: DEL of c2 must not take it.
    std::fs::write(
        record("c2"),
        format!(
            "complete 1\ninet rcni_masquerade postrouting {}\n",
            handle_of("c3")
        ),
    )
    .unwrap();
    net.del(&host, &c2.path, "c2");
    assert_eq!(comments(), [owner_comment(NET, "c3")]);
    assert!(!record("c2").exists());
    net.del(&host, &c3.path, "c3");
    assert!(comments().is_empty());
    assert!(!record("c3").exists());
}

/// An earlier version's per-network masquerade rule (comment `rcni:<hash16(network)> net=…
/// subnet=…`) stays while the network's bridge has ports and goes with the DEL of its last
/// port, though every DEL deletes its own rules by handle.
#[test]
fn earlier_per_network_masquerade_goes_with_the_last_port() {
    let host = Netns::new("h");
    let net = Net::new(
        "1.0.0",
        &["10.38.0.0/24"],
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    net.add(&host, &c1, "c1");
    net.add(&host, &c2, "c2");
    let earlier = format!(
        "rcni:{} net={NET} subnet=10.38.0.0/24",
        libcni::hash::hash16(NET)
    );
    host.nft(&format!(
        "add rule inet rcni_masquerade postrouting ip saddr 10.38.0.0/24 ip daddr != 10.38.0.0/24 masquerade comment \"{earlier}\""
    ));
    let has_earlier = || masquerade_rules(&host).iter().any(|(c, _)| *c == earlier);
    net.del(&host, &c1.path, "c1");
    assert!(has_earlier(), "c2's pod still relies on it");
    net.del(&host, &c2.path, "c2");
    assert!(!has_earlier(), "gone with the last port");
    assert!(masquerade_rules(&host).is_empty());
    assert!(!ruleset(&host).contains("10.38.0."));
}

/// `iptables-save -t nat` in `host`: the lines of chain RCNI-MASQUERADE.
fn iptables_masquerade(host: &Netns) -> Vec<String> {
    let out = host
        .command("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A RCNI-MASQUERADE"))
        .map(str::to_string)
        .collect()
}

/// With `ipMasqBackend: "iptables"` the masquerade is per attachment too: a RETURN for the
/// container's subnet and a MASQUERADE for the rest, in our chain jumped to from POSTROUTING;
/// traffic leaves masqueraded; DEL removes exactly the attachment's rules.
#[test]
fn ip_masq_on_iptables_is_per_attachment() {
    let host = Netns::new("h");
    let ext = external(&host);
    let net = Net::new(
        "1.0.0",
        &["10.35.0.0/24"],
        json!({"isDefaultGateway": true, "ipMasq": true, "ipMasqBackend": "iptables"}),
    );
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    net.add(&host, &c1, "c1");
    net.add(&host, &c2, "c2");
    let comment = owner_comment(NET, "c1");
    let mine: Vec<String> = iptables_masquerade(&host)
        .into_iter()
        .filter(|l| l.contains(&comment))
        .collect();
    assert_eq!(
        mine,
        [
            format!(
                "-A RCNI-MASQUERADE -s 10.35.0.2/32 -d 10.35.0.0/24 -m comment --comment \"{comment}\" -j RETURN"
            ),
            format!(
                "-A RCNI-MASQUERADE -s 10.35.0.2/32 ! -d 224.0.0.0/4 -m comment --comment \"{comment}\" -j MASQUERADE"
            ),
        ]
    );
    assert_eq!(iptables_masquerade(&host).len(), 4);
    assert!(c1.ping("192.168.77.2", 3), "no answer through masquerade");
    assert!(
        masquerade_rules(&host).is_empty(),
        "nothing of it in nftables"
    );
    net.del(&host, &c1.path, "c1");
    let left = iptables_masquerade(&host);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|l| l.contains("10.35.0.3/32")), "{left:?}");
    net.del(&host, &c2.path, "c2");
    assert!(iptables_masquerade(&host).is_empty());
    drop(ext);
}

/// An apostrophe in `CNI_IFNAME` (the kernel and the spec allow it) comes back escaped from
/// `iptables -S`; DEL still finds and removes the attachment's iptables masquerade.
#[test]
fn iptables_masquerade_of_an_ifname_with_an_apostrophe_is_removed() {
    let host = Netns::new("h");
    let net = Net::new(
        "1.0.0",
        &["10.36.0.0/24"],
        json!({"isDefaultGateway": true, "ipMasq": true, "ipMasqBackend": "iptables"}),
    );
    let ctr = Netns::new("c");
    let call = |command: &str| {
        net.call(&host, command, &ctr.path, "c1")
            .env("CNI_IFNAME", "e'th0")
            .run(&net.stdin())
    };
    call("ADD").ok();
    assert_eq!(iptables_masquerade(&host).len(), 2);
    call("DEL").ok();
    assert!(
        iptables_masquerade(&host).is_empty(),
        "{:?}",
        iptables_masquerade(&host)
    );
}

/// `nft list ruleset` in `host`.
fn ruleset(host: &Netns) -> String {
    let out = host
        .command("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network whose subnet grows (an edited conflist, a node's new pod CIDR: /24 → /16) keeps
/// pods on both, on one bridge and lease store: each pod's masquerade follows its own address
/// and subnet, so a new pod whose address falls in the old subnet is not masqueraded towards
/// the rest of the new one; once the old pod is gone nothing names the old subnet.
#[test]
fn masquerade_follows_each_pod_across_a_subnet_change() {
    let host = Netns::new("h");
    let old = Net::named(
        "net-s",
        "1.0.0",
        &["10.33.0.0/24"],
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    let mut grown = old.conf.clone();
    grown["ipam"]["ranges"] = json!([[{"subnet": "10.33.0.0/16"}]]);
    grown["forceAddress"] = json!(true);
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    old.add(&host, &c1, "c1");
    let added = old
        .call(&host, "ADD", &c2.path, "c2")
        .run(&grown.to_string());
    assert_eq!(added.ok()["ips"][0]["address"], "10.33.0.3/16");
    let rules = masquerade_rules(&host);
    let excluded = |id: &str| {
        let (_, rule) = rules
            .iter()
            .find(|(c, _)| *c == owner_comment("net-s", id))
            .unwrap();
        (
            rule["expr"][0]["match"]["right"].clone(),
            rule["expr"][1]["match"]["right"]["prefix"].clone(),
        )
    };
    assert_eq!(
        excluded("c1"),
        (json!("10.33.0.2"), json!({"addr": "10.33.0.0", "len": 24}))
    );
    assert_eq!(
        excluded("c2"),
        (json!("10.33.0.3"), json!({"addr": "10.33.0.0", "len": 16}))
    );
    old.del(&host, &c1.path, "c1");
    let left = ruleset(&host);
    assert!(
        !left.contains("10.33.0.0/24"),
        "old subnet still named:\n{left}"
    );
    assert!(!left.contains("10.33.0.2 "), "old pod still named:\n{left}");
    assert!(left.contains("10.33.0.0/16"));
}

/// The bridge-port flags of the host veth (`ip -d` `info_slave_data`).
fn port_flags(host: &Netns, br: &str) -> Value {
    let port = ports(host, br).pop().unwrap();
    host.link(&port).unwrap()["linkinfo"]["info_slave_data"].clone()
}

/// `hairpinMode` sets the port's hairpin flag, and it is written off otherwise; `portIsolation`
/// sets the isolated flag likewise.
#[test]
fn hairpin_mode_and_port_isolation_set_the_port_flags() {
    let host = Netns::new("h");
    for (extra, hairpin, isolated) in [
        (json!({}), false, false),
        (json!({"hairpinMode": true}), true, false),
        (json!({"portIsolation": true}), false, true),
        (
            json!({"hairpinMode": true, "portIsolation": true}),
            true,
            true,
        ),
    ] {
        let net = Net::new("1.0.0", &[], extra.clone());
        let ctr = Netns::new("c");
        net.add(&host, &ctr, "ctr1");
        let port = port_flags(&host, &net.br);
        assert_eq!(port["hairpin"], hairpin, "{extra}: {port}");
        assert_eq!(port["isolated"], isolated, "{extra}: {port}");
    }
}

/// `promiscMode` turns promiscuous mode on for the bridge (not the port); CHECK agrees with
/// the config; without it the bridge is not promiscuous.
#[test]
fn promisc_mode_sets_bridge_promisc() {
    let host = Netns::new("h");
    for on in [true, false] {
        let net = Net::new("1.0.0", &["10.40.0.0/24"], json!({"promiscMode": on}));
        let ctr = Netns::new("c");
        let result = net.add(&host, &ctr, "ctr1");
        let bridge = host.link(&net.br).unwrap();
        assert_eq!(flags(&bridge).contains(&"PROMISC"), on, "{bridge}");
        assert_eq!(bridge["promiscuity"].as_u64().unwrap() > 0, on, "{bridge}");
        let port = ports(&host, &net.br).pop().unwrap();
        assert!(!flags(&host.link(&port).unwrap()).contains(&"PROMISC"));
        net.check(&host, &ctr, "ctr1", &result).ok();
    }
}

/// `mtu` is the MTU of a new bridge and of both veth ends.
#[test]
fn mtu_applies_to_a_new_bridge_and_both_veth_ends() {
    let host = Netns::new("h");
    let net = Net::new(
        "1.0.0",
        &["10.41.0.0/24"],
        json!({"mtu": 1400, "isGateway": true}),
    );
    let ctr = Netns::new("c");
    net.add(&host, &ctr, "ctr1");
    let port = ports(&host, &net.br).pop().unwrap();
    assert_eq!(host.link(&net.br).unwrap()["mtu"], 1400);
    assert_eq!(host.link(&port).unwrap()["mtu"], 1400);
    assert_eq!(ctr.link("eth0").unwrap()["mtu"], 1400);
    // Without `mtu` the kernel default.
    let plain = Net::new("1.0.0", &[], json!({}));
    let ctr2 = Netns::new("c");
    plain.add(&host, &ctr2, "ctr2");
    assert_eq!(host.link(&plain.br).unwrap()["mtu"], 1500);
    assert_eq!(ctr2.link("eth0").unwrap()["mtu"], 1500);
}

/// Both veth ends have one transmit and one receive queue, made so (the kernel's default is a
/// queue per CPU with one in use, each cut back under RTNL): the same one queue in use.
#[test]
fn veth_ends_are_made_with_one_queue_each_way() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &["10.42.0.0/24"], json!({}));
    let ctr = Netns::new("c");
    net.add(&host, &ctr, "ctr1");
    let port = ports(&host, &net.br).pop().unwrap();
    for link in [host.link(&port).unwrap(), ctr.link("eth0").unwrap()] {
        for key in ["num_tx_queues", "num_rx_queues"] {
            assert_eq!(link[key], 1, "{key} of {}", link["ifname"]);
        }
    }
}

/// The host end of a pod's veth has no IPv6 of its own (no address, no route in the host),
/// while the pods' IPv6 still works through the bridge.
#[test]
fn bridge_ports_have_no_ipv6_of_their_own() {
    let host = Netns::new("h");
    let net = Net::new(
        "1.0.0",
        &["10.43.0.0/24", "fd43::/64"],
        json!({"isGateway": true}),
    );
    let (ctr1, ctr2) = (Netns::new("c"), Netns::new("c"));
    net.add(&host, &ctr1, "ctr1");
    net.add(&host, &ctr2, "ctr2");
    let ports = ports(&host, &net.br);
    assert_eq!(ports.len(), 2);
    let routes = host.ip_json(&["-6", "route", "show", "table", "all"]);
    for port in &ports {
        let key = format!("net/ipv6/conf/{port}/disable_ipv6");
        assert_eq!(host.sysctl(&key), "1", "{key}");
        let addrs = host.ip_json(&["-6", "addr", "show", "dev", port]);
        assert!(
            addrs[0]["addr_info"]
                .as_array()
                .is_none_or(|a| a.is_empty()),
            "{addrs}"
        );
        let via_port = routes
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["dev"] == **port);
        assert_eq!(via_port.count(), 0, "{routes}");
    }
    for subnet in ["10.43.0.0/24", "fd43::/64"] {
        let (ip2, _) = nth(subnet, 3);
        assert!(ctr1.ping(without_prefix(&ip2), 20), "ctr1 -> {ip2}");
    }
}

/// A pod without an IPv6 address has IPv6 off on its interface (no link-local address, so no
/// MLD report or neighbour solicitation flooded to every other pod of the bridge) and sends no
/// IPv6 packet; IPv4 between pods works.
#[test]
fn ipv4_only_pods_have_ipv6_off_on_their_interface() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &["10.44.0.0/24"], json!({"isGateway": true}));
    let (ctr1, ctr2) = (Netns::new("c"), Netns::new("c"));
    net.add(&host, &ctr1, "ctr1");
    net.add(&host, &ctr2, "ctr2");
    for ctr in [&ctr1, &ctr2] {
        assert_eq!(ctr.sysctl("net/ipv6/conf/eth0/disable_ipv6"), "1");
        let eth0 = ctr.ip_json(&["-6", "addr", "show", "dev", "eth0"]);
        assert!(
            eth0.as_array().is_none_or(
                |a| a.is_empty() || a[0]["addr_info"].as_array().is_none_or(|i| i.is_empty())
            ),
            "{eth0}"
        );
        let snmp6 = ctr
            .command("cat")
            .arg("/proc/net/snmp6")
            .output()
            .unwrap()
            .stdout;
        let sent = String::from_utf8_lossy(&snmp6)
            .lines()
            .find_map(|l| l.strip_prefix("Ip6OutRequests"))
            .map(|n| n.trim().to_owned());
        assert_eq!(sent.as_deref(), Some("0"), "IPv6 packets sent");
    }
    let (ip2, _) = nth("10.44.0.0/24", 3);
    assert!(ctr1.ping(without_prefix(&ip2), 20), "ctr1 -> {ip2}");
}

/// The container MAC comes from CNI_ARGS `MAC`, overridden by `args.cni.mac`, overridden by
/// `runtimeConfig.mac`; the result reports it and the kernel has it.
#[test]
fn container_mac_sources_and_their_precedence() {
    let host = Netns::new("h");
    let (m1, m2, m3) = (
        "0a:58:0a:01:00:01",
        "0a:58:0a:01:00:02",
        "0a:58:0a:01:00:03",
    );
    for (cni_args, args, runtime, want) in [
        (Some(m1), None, None, m1),
        (None, Some(m2), None, m2),
        (None, None, Some(m3), m3),
        (Some(m1), Some(m2), None, m2),
        (Some(m1), None, Some(m3), m3),
        (Some(m1), Some(m2), Some(m3), m3),
    ] {
        let mut extra = json!({});
        if let Some(m) = args {
            extra["args"] = json!({"cni": {"mac": m}});
        }
        if let Some(m) = runtime {
            extra["runtimeConfig"] = json!({"mac": m});
        }
        // L3, so host-local sees CNI_ARGS too: it needs IgnoreUnknown for MAC.
        let net = Net::new("1.0.0", &["10.42.0.0/24"], extra);
        let ctr = Netns::new("c");
        let mut call = net.call(&host, "ADD", &ctr.path, "ctr1");
        if let Some(m) = cni_args {
            call = call.env("CNI_ARGS", &format!("IgnoreUnknown=1;MAC={m}"));
        }
        let out = call.run(&net.stdin());
        let result = out.ok();
        assert_eq!(result["interfaces"][2]["mac"], want, "{result}");
        assert_eq!(ctr.link("eth0").unwrap()["address"], want);
    }
}

/// In L3 the container interface gets `arp_notify=1` and `accept_dad=0`, or with `enabledad`
/// `accept_dad=1` and `enhanced_dad=1`.
#[test]
fn container_sysctls_for_dad_and_arp_notify() {
    let host = Netns::new("h");
    for dad in [false, true] {
        let net = Net::new("1.0.0", &["fd43::/64"], json!({"enabledad": dad}));
        let ctr = Netns::new("c");
        net.add(&host, &ctr, "ctr1");
        let want = if dad { "1" } else { "0" };
        assert_eq!(ctr.sysctl("net/ipv6/conf/eth0/accept_dad"), want);
        if dad {
            assert_eq!(ctr.sysctl("net/ipv6/conf/eth0/enhanced_dad"), "1");
        }
        assert_eq!(ctr.sysctl("net/ipv4/conf/eth0/arp_notify"), "1");
        assert_eq!(ctr.sysctl("net/ipv6/conf/eth0/ndisc_notify"), "1");
    }
}

/// The gateways of the container's routes to `dst` (`-4`/`-6` by `family`), those of a
/// multipath route's next hops included, sorted.
fn gateways_to(ctr: &Netns, family: &str, dst: &str) -> Vec<String> {
    let routes = ctr.ip_json(&[family, "route", "show", dst]);
    let mut out: Vec<String> = routes
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| match r["nexthops"].as_array() {
            Some(hops) => hops.iter().map(|h| h["gateway"].clone()).collect(),
            None => vec![r["gateway"].clone()],
        })
        .filter_map(|g| g.as_str().map(String::from))
        .collect();
    out.sort();
    out
}

/// Routes to one destination via different gateways are all installed (ECMP, appended as the
/// reference 1.9 does: IPv4 as routes side by side, IPv6 as one multipath route), not dropped
/// as existing; CHECK finds each of them.
#[test]
fn routes_to_one_destination_via_two_gateways_are_all_installed() {
    let host = Netns::new("h");
    let mut net = Net::new("1.0.0", &["10.48.0.0/24", "fd48::/64"], json!({}));
    net.conf["ipam"]["routes"] = json!([
        {"dst": "0.0.0.0/0", "gw": "10.48.0.1"},
        {"dst": "0.0.0.0/0", "gw": "10.48.0.254"},
        {"dst": "::/0", "gw": "fd48::1"},
        {"dst": "::/0", "gw": "fd48::fe"},
    ]);
    let ctr = Netns::new("c");
    let result = net.add(&host, &ctr, "ctr1");
    assert_eq!(result["routes"].as_array().unwrap().len(), 4, "{result}");
    assert_eq!(
        gateways_to(&ctr, "-4", "default"),
        ["10.48.0.1", "10.48.0.254"]
    );
    assert_eq!(gateways_to(&ctr, "-6", "default"), ["fd48::1", "fd48::fe"]);
    net.check(&host, &ctr, "ctr1", &result).ok();
    // A route CHECK does not find still fails it.
    let mut other = result.clone();
    other["routes"][3]["gw"] = "fd48::fd".into();
    net.check(&host, &ctr, "ctr1", &other)
        .err(999, "route to ::/0 is missing");
    net.del(&host, &ctr.path, "ctr1");
}

/// The container's IPv6 addresses (link-local included) that are still tentative.
fn tentative_v6(ctr: &Netns) -> Vec<Value> {
    ctr.addr_info("eth0")
        .into_iter()
        .filter(|a| a["family"] == "inet6" && a["tentative"] == true)
        .collect()
}

/// With `enabledad`, ADD returns once the container's IPv6 addresses passed duplicate address
/// detection (the kernel takes a second or more), so they are usable at once.
#[test]
fn enabledad_returns_with_usable_ipv6_addresses() {
    let host = Netns::new("h");
    let net = Net::new(
        "1.0.0",
        &["10.49.0.0/24", "fd49::/64"],
        json!({"enabledad": true, "isGateway": true}),
    );
    let ctr = Netns::new("c");
    net.add(&host, &ctr, "ctr1");
    assert_eq!(tentative_v6(&ctr), Vec::<Value>::new());
    let v6: Vec<String> = ctr
        .global_addrs("eth0")
        .into_iter()
        .filter(|a| a.contains(':'))
        .collect();
    assert_eq!(v6, ["fd49::2/64"]);
    net.del(&host, &ctr.path, "ctr1");
}

/// With `enabledad`, an address another host on the bridge already has fails the ADD, naming
/// it, and the ADD is undone (no veth, no lease); so does detection that does not end within
/// 5 s (here: ten probes a second apart).
#[test]
fn enabledad_fails_and_undoes_the_add_when_detection_does_not_pass() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &["fd4a::/64"], json!({"enabledad": true}));
    // The host, on the bridge, has the address host-local hands out first.
    host.ip(&["link", "add", &net.br, "type", "bridge"]);
    host.ip(&["addr", "add", "fd4a::2/64", "dev", &net.br, "nodad"]);
    host.ip(&["link", "set", &net.br, "up"]);
    let ctr = Netns::new("c");
    let guard = std::time::Duration::from_secs(60);
    net.call(&host, "ADD", &ctr.path, "ctr1")
        .within(guard)
        .run(&net.stdin())
        .err(999, "duplicate address detection failed for fd4a::2/64");
    assert_eq!(ctr.link_names(), ["lo"]);
    assert!(ports(&host, &net.br).is_empty(), "{:?}", host.link_names());
    assert!(net.leases().is_empty(), "{:?}", net.leases());

    host.ip(&["addr", "del", "fd4a::2/64", "dev", &net.br]);
    ctr.set_sysctl("net/ipv6/conf/default/dad_transmits", "10");
    let out = net
        .call(&host, "ADD", &ctr.path, "ctr1")
        .within(guard)
        .run(&net.stdin());
    out.err(999, "still has tentative addresses after 5 s");
    // Round-robin: the address after the one the failed ADD released.
    out.err(999, "fd4a::3/64");
    assert_eq!(ctr.link_names(), ["lo"]);
    assert!(ports(&host, &net.br).is_empty(), "{:?}", host.link_names());
    assert!(net.leases().is_empty(), "{:?}", net.leases());
}

/// A reused address is learnt at once: the host forgets a stale neighbour entry for it (the
/// previous container's MAC) when the new container gets the address.
#[test]
fn a_stale_neighbour_entry_of_a_reused_address_is_forgotten() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &["10.47.0.0/24"], json!({"isGateway": true}));
    let first = Netns::new("c");
    net.add(&host, &first, "ctr0");
    net.del(&host, &first.path, "ctr0");
    // The host still remembers the next address (.3) at a departed container's MAC.
    host.ip(&[
        "neigh",
        "replace",
        "10.47.0.3",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        &net.br,
        "nud",
        "reachable",
    ]);
    let stale = |host: &Netns| {
        host.ip_json(&["neigh", "show", "dev", &net.br])
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .any(|n| n["dst"] == "10.47.0.3" && n["lladdr"] == "02:00:00:00:00:99")
    };
    assert!(stale(&host));
    let second = Netns::new("c");
    let result = net.add(&host, &second, "ctr1");
    assert_eq!(result["ips"][0]["address"], "10.47.0.3/24");
    assert!(!stale(&host), "the stale entry survived the ADD");
    assert!(second.ping("10.47.0.1", 3));
}

/// VLANs of a port: (vid, flags).
type Vlans = Vec<(u64, Vec<String>)>;

/// The VLANs of `dev` as `bridge -j vlan show` prints them: (vid, flags).
fn vlans(host: &Netns, dev: &str) -> Vlans {
    let out = host
        .command("bridge")
        .args(["-j", "vlan", "show", "dev", dev])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let Some(entry) = v.as_array().and_then(|a| a.first()) else {
        return Vec::new();
    };
    entry["vlans"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            let start = e["vlan"].as_u64().unwrap();
            let end = e["vlanEnd"].as_u64().unwrap_or(start);
            let f: Vec<String> = e["flags"]
                .as_array()
                .map(|f| f.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            (start..=end).map(move |vid| (vid, f.clone()))
        })
        .collect()
}

fn vlan_filtering(host: &Netns, br: &str) -> u64 {
    host.link(br).unwrap()["linkinfo"]["info_data"]["vlan_filtering"]
        .as_u64()
        .unwrap()
}

fn pvid() -> Vec<String> {
    vec!["PVID".into(), "Egress Untagged".into()]
}

/// ADD of a VLAN config. VLANs need bridge VLAN filtering in the kernel; where it is missing
/// (`bridge_vlan_filtering_supported()`), ADD must fail with code 2 naming the missing kernel
/// support and leave nothing behind, and `None` is returned.
fn add_vlan(host: &Netns, net: &Net, ctr: &Netns) -> Option<Value> {
    let out = net.run(host, "ADD", ctr, "ctr1");
    if bridge_vlan_filtering_supported() {
        return Some(out.ok().clone());
    }
    eprintln!("this kernel has no bridge VLAN filtering: checking that ADD fails cleanly");
    out.err(2, "CONFIG_BRIDGE_VLAN_FILTERING");
    assert!(ctr.link("eth0").is_none());
    assert!(host.link_names().iter().all(|n| !n.starts_with("veth")));
    assert!(net.leases().is_empty());
    None
}

/// `vlan` makes the port an access port (PVID, untagged) without VID 1, and turns on
/// `vlan_filtering` on a bridge it creates; `preserveDefaultVlan` keeps VID 1; `vlanTrunk`
/// adds tagged VIDs with VID 1 as the native (PVID, untagged) VLAN. (Without kernel support:
/// a clean failure, see `add_vlan`.)
#[test]
fn vlan_trunk_and_default_vlan_on_the_port() {
    let host = Netns::new("h");
    let cases: [(Value, Vlans); 4] = [
        (json!({"vlan": 100}), vec![(100, pvid())]),
        (
            json!({"vlan": 100, "preserveDefaultVlan": true}),
            vec![(1, vec!["Egress Untagged".into()]), (100, pvid())],
        ),
        (
            json!({"vlanTrunk": [{"id": 101}, {"minID": 200, "maxID": 202}]}),
            vec![
                (1, pvid()),
                (101, vec![]),
                (200, vec![]),
                (201, vec![]),
                (202, vec![]),
            ],
        ),
        (
            json!({"vlan": 100, "vlanTrunk": [{"id": 101}]}),
            vec![(100, pvid()), (101, vec![])],
        ),
    ];
    for (extra, want) in cases {
        let net = Net::new("1.0.0", &[], extra.clone());
        let ctr = Netns::new("c");
        if add_vlan(&host, &net, &ctr).is_none() {
            assert!(host.link(&net.br).is_none(), "{extra}: bridge created");
            continue;
        }
        let port = ports(&host, &net.br).pop().unwrap();
        assert_eq!(vlans(&host, &port), want, "{extra}");
        assert_eq!(vlan_filtering(&host, &net.br), 1, "{extra}");
        assert!(ctr.is_up("eth0"));
    }
    // Without VLAN keys: the port has the bridge's default VLAN 1 and filtering stays off.
    let net = Net::new("1.0.0", &[], json!({}));
    let ctr = Netns::new("c");
    net.add(&host, &ctr, "ctr1");
    assert_eq!(vlan_filtering(&host, &net.br), 0);
    if bridge_vlan_filtering_supported() {
        let port = ports(&host, &net.br).pop().unwrap();
        assert_eq!(vlans(&host, &port), [(1, pvid())]);
    }
}

/// `vlan` on an existing bridge does not change its `vlan_filtering` (only a new bridge gets
/// it), but still sets the port's VLAN. (Without kernel support: a clean failure that leaves
/// the bridge alone.)
#[test]
fn vlan_does_not_change_an_existing_bridge() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &[], json!({"vlan": 100}));
    host.ip(&["link", "add", &net.br, "type", "bridge"]);
    let ctr = Netns::new("c");
    let added = add_vlan(&host, &net, &ctr);
    assert_eq!(vlan_filtering(&host, &net.br), 0);
    if added.is_some() {
        let port = ports(&host, &net.br).pop().unwrap();
        assert_eq!(vlans(&host, &port), [(100, pvid())]);
    } else {
        assert!(ports(&host, &net.br).is_empty());
    }
}

/// With `vlan` and a gateway, the gateway address lives on `<bridge>.<vlan>`, a veth whose peer
/// is a port of the bridge in that VLAN (PVID, untagged); the bridge itself gets no address;
/// the result lists it as a 4th interface and the container reaches its gateway through the
/// VLAN. (Without kernel support: a clean failure, see `add_vlan`.)
#[test]
fn vlan_with_gateway_uses_a_bridge_dot_vlan_interface() {
    let host = Netns::new("h");
    let net = Net::new(
        "1.0.0",
        &["10.44.0.0/24"],
        json!({"vlan": 100, "isDefaultGateway": true}),
    );
    let ctr = Netns::new("c");
    let Some(result) = add_vlan(&host, &net, &ctr) else {
        assert!(host.link(&format!("{}.100", net.br)).is_none());
        return;
    };
    let vif = format!("{}.100", net.br);
    let link = host.link(&vif).expect("no <bridge>.100");
    assert_eq!(link["linkinfo"]["info_kind"], "veth");
    assert!(flags(&link).contains(&"UP"), "{link}");
    assert_eq!(host.global_addrs(&vif), ["10.44.0.1/24"]);
    assert!(host.global_addrs(&net.br).is_empty());
    // Its peer is a port of the bridge in VLAN 100, like the container's.
    let ports = ports(&host, &net.br);
    assert_eq!(ports.len(), 2, "{ports:?}");
    for port in &ports {
        assert_eq!(vlans(&host, port), [(100, pvid())], "{port}");
    }
    let ifaces = result["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 4, "{result}");
    assert_eq!(ifaces[3], json!({"name": vif, "mac": link["address"]}));
    assert!(ctr.ping("10.44.0.1", 3));
}

/// `disableContainerInterface` (L2) leaves the container veth down; with IPAM it is a config
/// error (code 7) that creates nothing.
#[test]
fn disable_container_interface() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &[], json!({"disableContainerInterface": true}));
    let ctr = Netns::new("c");
    let result = net.add(&host, &ctr, "ctr1");
    let eth0 = ctr.link("eth0").unwrap();
    assert!(!flags(&eth0).contains(&"UP"), "{eth0}");
    assert_eq!(ports(&host, &net.br).len(), 1);
    assert_eq!(result["interfaces"][2]["name"], "eth0");

    let l3 = Net::new(
        "1.0.0",
        &["10.45.0.0/24"],
        json!({"disableContainerInterface": true}),
    );
    let ctr2 = Netns::new("c");
    l3.run(&host, "ADD", &ctr2, "ctr2")
        .err(7, "disableContainerInterface");
    assert!(host.link(&l3.br).is_none());
    assert!(ctr2.link("eth0").is_none());
    assert!(l3.leases().is_empty());
}

/// Without `isGateway` the bridge gets no address, forwarding stays off and the container has
/// no default route (the IPAM gateway is only reported); `isGateway` alone puts the gateway on
/// the bridge and turns forwarding on, still without a default route.
#[test]
fn is_gateway_or_not() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &["10.46.0.0/24"], json!({}));
    let ctr = Netns::new("c");
    let result = net.add(&host, &ctr, "ctr1");
    assert_eq!(
        result["ips"],
        json!([{"interface": 2, "address": "10.46.0.2/24", "gateway": "10.46.0.1"}])
    );
    assert!(result.get("routes").is_none(), "{result}");
    assert!(host.global_addrs(&net.br).is_empty());
    assert_eq!(host.sysctl("net/ipv4/ip_forward"), "0");
    assert!(default_routes(&ctr).is_empty());

    let gw = Net::new("1.0.0", &["10.47.0.0/24"], json!({"isGateway": true}));
    let ctr2 = Netns::new("c");
    let result = gw.add(&host, &ctr2, "ctr2");
    assert!(result.get("routes").is_none(), "{result}");
    assert_eq!(host.global_addrs(&gw.br), ["10.47.0.1/24"]);
    assert_eq!(host.sysctl("net/ipv4/ip_forward"), "1");
    assert!(default_routes(&ctr2).is_empty());
    assert!(ctr2.ping("10.47.0.1", 3));
}

/// Two IPv4 range sets: the container gets an address in each, both gateways go on the bridge
/// (the reference reports the second as a conflict; a deliberate difference), and the container
/// reaches both.
#[test]
fn two_ipv4_subnets_share_the_bridge() {
    let host = Netns::new("h");
    let net = Net::new(
        "1.0.0",
        &["10.59.0.0/24", "10.60.0.0/24"],
        json!({"isGateway": true}),
    );
    let ctr = Netns::new("c");
    net.add(&host, &ctr, "ctr1");
    assert_eq!(host.global_addrs(&net.br), ["10.59.0.1/24", "10.60.0.1/24"]);
    assert_eq!(ctr.global_addrs("eth0"), ["10.59.0.2/24", "10.60.0.2/24"]);
    assert!(ctr.ping("10.59.0.1", 3));
    assert!(ctr.ping("10.60.0.1", 3));
}

/// A v4 address on the bridge that is not the gateway makes ADD fail without `forceAddress`,
/// after IPAM: the veth is removed and the lease released, the address stays. With
/// `forceAddress` it is replaced by the gateway.
#[test]
fn conflicting_bridge_address_rolls_back_or_is_replaced_with_force_address() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &["10.48.0.0/24"], json!({"isGateway": true}));
    host.ip(&["link", "add", &net.br, "type", "bridge"]);
    host.ip(&["addr", "add", "10.99.0.1/16", "dev", &net.br]);
    let ctr = Netns::new("c");
    net.run(&host, "ADD", &ctr, "ctr1")
        .err(999, "already has an IP address");
    assert!(ctr.link("eth0").is_none(), "container veth left");
    assert!(ports(&host, &net.br).is_empty(), "host veth left");
    assert_eq!(host.link_names().len(), 2, "{:?}", host.link_names());
    assert!(net.leases().is_empty(), "lease left: {:?}", net.leases());
    assert_eq!(host.global_addrs(&net.br), ["10.99.0.1/16"]);

    let mut forced = net;
    forced.conf["forceAddress"] = true.into();
    forced.add(&host, &ctr, "ctr1");
    assert_eq!(host.global_addrs(&forced.br), ["10.48.0.1/24"]);
    // Round-robin: the released .2 was the last one handed out, so .3 comes next.
    assert_eq!(forced.leases(), ["10.48.0.3"]);
    assert!(ctr.ping("10.48.0.1", 3));
}

/// The network config's `dns` replaces the DNS that IPAM returned; without it IPAM's is kept.
#[test]
fn dns_key_overrides_ipam_dns() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &["10.49.0.0/24"], json!({}));
    let resolv = net.data.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.49.0.53\nsearch ipam.example\n").unwrap();
    let mut net = net;
    net.conf["ipam"]["resolvConf"] = resolv.display().to_string().into();
    let ctr = Netns::new("c");
    let result = net.add(&host, &ctr, "ctr1");
    assert_eq!(
        result["dns"],
        json!({"nameservers": ["10.49.0.53"], "search": ["ipam.example"]})
    );
    let own =
        json!({"nameservers": ["10.0.0.10"], "domain": "conf.example", "options": ["ndots:2"]});
    net.conf["dns"] = own.clone();
    let ctr2 = Netns::new("c");
    let result = net.add(&host, &ctr2, "ctr2");
    assert_eq!(result["dns"], own);
}

/// Bad values are config errors (code 7) whose message names the key, reported before anything
/// is created.
#[test]
fn config_errors_name_the_key() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let cases: &[(Value, &str, &str)] = &[
        (json!({"vlan": -1}), "", "\"vlan\""),
        (json!({"vlan": 5000}), "", "\"vlan\""),
        (json!({"vlanTrunk": [{"minID": 5}]}), "", "vlanTrunk"),
        (json!({"vlanTrunk": [{"maxID": 5}]}), "", "vlanTrunk"),
        (
            json!({"vlanTrunk": [{"minID": 0, "maxID": 5}]}),
            "",
            "vlanTrunk",
        ),
        (
            json!({"vlanTrunk": [{"minID": 1, "maxID": 4095}]}),
            "",
            "vlanTrunk",
        ),
        (
            json!({"vlanTrunk": [{"minID": 9, "maxID": 5}]}),
            "",
            "vlanTrunk",
        ),
        (json!({"vlanTrunk": [{"id": 0}]}), "", "vlanTrunk"),
        (json!({"vlanTrunk": [{"id": 4095}]}), "", "vlanTrunk"),
        (
            json!({"hairpinMode": true, "promiscMode": true}),
            "",
            "hairpinMode",
        ),
        (
            json!({"hairpinMode": true, "promiscMode": true}),
            "",
            "promiscMode",
        ),
        (json!({"ipMasqBackend": "pf"}), "", "ipMasqBackend"),
        (
            json!({"runtimeConfig": {"mac": "0a:58:0a"}}),
            "",
            "runtimeConfig.mac",
        ),
        (
            json!({"args": {"cni": {"mac": "zz:58:0a:01:00:01"}}}),
            "",
            "args.cni.mac",
        ),
        (json!({}), "MAC=0a:58:0a:01:00:0g", "MAC"),
        (json!({"bridge": "a-name-that-is-too-long"}), "", "bridge"),
    ];
    for (extra, cni_args, needle) in cases {
        let net = Net::new("1.0.0", &["10.50.0.0/24"], extra.clone());
        let mut call = net.call(&host, "ADD", &ctr.path, "ctr1");
        if !cni_args.is_empty() {
            call = call.env("CNI_ARGS", cni_args);
        }
        let out = call.run(&net.stdin());
        out.err(7, needle);
        assert_eq!(host.link_names(), ["lo"], "{extra}: created something");
        assert_eq!(ctr.link_names(), ["lo"], "{extra}");
        assert!(net.leases().is_empty());
    }
}

/// A link named `name` that is not a bridge: one end of a veth pair (this kernel has no `dummy`).
fn not_a_bridge(ns: &Netns, name: &str) {
    ns.ip(&[
        "link",
        "add",
        name,
        "type",
        "veth",
        "peer",
        "name",
        &unique("xp"),
    ]);
}

/// A link with the bridge's name that is not a bridge: ADD fails and leaves nothing (no veth,
/// no lease, the link untouched); STATUS reports the network unavailable (code 50), and
/// succeeds when the name is free.
#[test]
fn a_non_bridge_link_with_the_bridge_name() {
    let host = Netns::new("h");
    let net = Net::new("1.1.0", &["10.51.0.0/24"], json!({"isGateway": true}));
    let status = |host: &Netns| net.status(host);
    status(&host).ok();
    not_a_bridge(&host, &net.br);
    let ctr = Netns::new("c");
    let out = net.run(&host, "ADD", &ctr, "ctr1");
    assert_ne!(out.status, 0);
    assert!(
        out.json["msg"].as_str().unwrap().contains("not a bridge"),
        "{out:?}"
    );
    assert_eq!(host.link(&net.br).unwrap()["linkinfo"]["info_kind"], "veth");
    assert!(host.global_addrs(&net.br).is_empty());
    assert_eq!(host.link_names().len(), 3, "{:?}", host.link_names());
    assert_eq!(ctr.link_names(), ["lo"]);
    assert!(net.leases().is_empty());
    status(&host).err(50, "not a bridge");
}

/// A full range set does not make the network unavailable: STATUS succeeds (a runtime would
/// mark the node not ready) and passes on host-local's warning on stderr, while ADD fails
/// until DEL frees an address.
#[test]
fn status_succeeds_with_a_full_range_and_passes_the_warning_on() {
    let host = Netns::new("h");
    let net = Net::new("1.1.0", &["10.52.0.0/30"], json!({"isGateway": true}));
    net.add(&host, &Netns::new("c"), "ctr1");
    let out = net.status(&host);
    out.ok();
    assert!(
        out.stderr
            .contains("warning: no free addresses left in range set ipam.ranges[0]"),
        "{out:?}"
    );
    let ctr2 = Netns::new("c");
    net.run(&host, "ADD", &ctr2, "ctr2")
        .err(999, "no IP addresses available");
    net.del(&host, Path::new("/rcni-gone"), "ctr1");
    let out = net.status(&host);
    out.ok();
    assert!(!out.stderr.contains("warning"), "{out:?}");
    net.add(&host, &ctr2, "ctr2");
}

/// When the requested interface already exists in the container, ADD fails and leaves it (and
/// everything else) alone.
#[test]
fn existing_container_interface_makes_add_fail() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &["10.52.0.0/24"], json!({"isGateway": true}));
    let ctr = Netns::new("c");
    not_a_bridge(&ctr, "eth0");
    ctr.ip(&["addr", "add", "192.0.2.9/24", "dev", "eth0"]);
    let before = ctr.link("eth0").unwrap();
    let out = net.run(&host, "ADD", &ctr, "ctr1");
    assert_ne!(out.status, 0);
    assert!(
        out.json["msg"].as_str().unwrap().contains("already exists"),
        "{out:?}"
    );
    let after = ctr.link("eth0").unwrap();
    assert_eq!(after["ifindex"], before["ifindex"]);
    assert_eq!(after["linkinfo"]["info_kind"], "veth");
    assert_eq!(after["address"], before["address"]);
    assert_eq!(ctr.global_addrs("eth0"), ["192.0.2.9/24"]);
    assert_eq!(host.link_names(), ["lo"], "nothing created in the host");
    assert!(net.leases().is_empty());
    // DEL for the failed ADD (as a runtime sends it) removes what is named eth0 — the test only
    // needs that nothing of ours is left, so stop here.
}

/// IPAM failing (a missing IPAM plugin, or a host-local config error) leaves no veth in the
/// host or the container and no lease.
#[test]
fn ipam_failure_leaves_nothing() {
    let host = Netns::new("h");
    for (what, ipam, code, needle) in [
        (
            "missing plugin",
            json!({"type": "rcni-no-such-ipam"}),
            7,
            "rcni-no-such-ipam",
        ),
        (
            "host-local config error",
            json!({"type": "host-local", "ranges": [[{"subnet": "10.53.0.0/24", "rangeStart": "10.54.0.9"}]]}),
            7,
            "rangeStart",
        ),
        (
            "two IPv4 range sets in 0.2.0",
            json!({"type": "host-local", "ranges": [[{"subnet": "10.53.0.0/24"}], [{"subnet": "10.54.0.0/24"}]]}),
            1,
            "more than 1 address per family",
        ),
    ] {
        let version = if what.contains("0.2.0") {
            "0.2.0"
        } else {
            "1.0.0"
        };
        let mut net = Net::new(version, &["10.53.0.0/24"], json!({"isGateway": true}));
        let mut ipam = ipam;
        ipam["dataDir"] = net.data.path().display().to_string().into();
        net.conf["ipam"] = ipam;
        let ctr = Netns::new("c");
        let out = net.run(&host, "ADD", &ctr, "ctr1");
        out.err(code, needle);
        assert_eq!(ctr.link_names(), ["lo"], "{what}");
        assert!(ports(&host, &net.br).is_empty(), "{what}");
        assert!(
            host.link_names().iter().all(|n| !n.starts_with("veth")),
            "{what}: {:?}",
            host.link_names()
        );
        assert!(net.leases().is_empty(), "{what}");
    }
}

/// CHECK passes right after ADD with the ADD result; it fails when the container's MAC changed,
/// when an address was removed, when the veth was deleted; it requires a prevResult.
#[test]
fn check_detects_changes() {
    let host = Netns::new("h");
    let net = Net::new(
        "1.0.0",
        &["10.55.0.0/24"],
        json!({"isDefaultGateway": true}),
    );
    let ctr = Netns::new("c");
    let result = net.add(&host, &ctr, "ctr1");
    net.check(&host, &ctr, "ctr1", &result).ok();
    // A prevResult is required.
    net.run(&host, "CHECK", &ctr, "ctr1").err(7, "prevResult");

    let mac = result["interfaces"][2]["mac"].as_str().unwrap().to_string();
    ctr.ip(&["link", "set", "eth0", "address", "0a:58:00:00:00:01"]);
    net.check(&host, &ctr, "ctr1", &result).err(999, "MAC");
    ctr.ip(&["link", "set", "eth0", "address", &mac]);
    net.check(&host, &ctr, "ctr1", &result).ok();

    ctr.ip(&["addr", "del", "10.55.0.2/24", "dev", "eth0"]);
    net.check(&host, &ctr, "ctr1", &result)
        .err(999, "10.55.0.2");
    ctr.ip(&["addr", "add", "10.55.0.2/24", "dev", "eth0"]);

    ctr.ip(&["link", "del", "eth0"]);
    net.check(&host, &ctr, "ctr1", &result).err(999, "eth0");
}

/// DEL with an empty CNI_NETNS, or after the container's namespace was deleted, succeeds and
/// releases the lease; in the second case the host veth went with the namespace.
#[test]
fn del_without_a_namespace_releases_the_lease() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &["10.56.0.0/24"], json!({"isGateway": true}));

    let ctr = Netns::new("c");
    net.add(&host, &ctr, "ctr1");
    assert_eq!(net.leases(), ["10.56.0.2"]);
    net.del(&host, Path::new(""), "ctr1");
    assert!(net.leases().is_empty());

    let gone = Netns::new("c");
    net.add(&host, &gone, "ctr2");
    assert_eq!(net.leases(), ["10.56.0.3"]);
    let path = gone.path.clone();
    drop(gone);
    net.del(&host, &path, "ctr2");
    assert!(net.leases().is_empty());
    // The kernel removes the pair with the namespace (asynchronously).
    for _ in 0..100 {
        if ports(&host, &net.br).len() == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        ports(&host, &net.br).len(),
        1,
        "only ctr1's veth (its netns still exists)"
    );
}

/// With a gateway the bridge's MAC is pinned to its own address: it differs from the port's
/// MAC and does not change when more containers come and go (the reference's "stable MAC"
/// test).
#[test]
fn bridge_mac_is_stable_and_not_a_port_mac() {
    let host = Netns::new("h");
    let net = Net::new("1.0.0", &["10.57.0.0/24"], json!({"isGateway": true}));
    let (a, b) = (Netns::new("c"), Netns::new("c"));
    let ra = net.add(&host, &a, "a");
    let br_mac = host.link(&net.br).unwrap()["address"].clone();
    assert_eq!(ra["interfaces"][0]["mac"], br_mac);
    // Stable: more ports, fewer ports, same MAC.
    let rb = net.add(&host, &b, "b");
    assert_eq!(rb["interfaces"][0]["mac"], br_mac);
    net.del(&host, &a.path, "a");
    assert_eq!(host.link(&net.br).unwrap()["address"], br_mac);
    // Its own: not the MAC of the port that happened to join first.
    assert_ne!(
        ra["interfaces"][1]["mac"], br_mac,
        "the bridge was pinned to the first port's MAC"
    );
}
