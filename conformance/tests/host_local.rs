//! host-local, black-box: the real binary through the protocol, each test with its own temporary
//! `dataDir`. No root and no namespace needed: host-local never enters `CNI_NETNS`.

use std::collections::BTreeMap;

use conformance::{HostLocalNet, Outcome, VERSIONS, dir_files, owner_links, result_ips, umask};
use serde_json::{Value, json};

fn lease(id: &str, ifname: &str) -> String {
    format!("{id}\r\n{ifname}")
}

/// `[[{subnet}, …], …]` from subnets only.
fn ranges(sets: &[&[&str]]) -> Value {
    json!({"ranges": sets.iter().map(|set| set.iter().map(|s| json!({"subnet": s})).collect::<Vec<_>>()).collect::<Vec<_>>()})
}

/// The reference test vector: two v4 ranges in one set, one v6 set.
fn dual_stack() -> Value {
    ranges(&[&["10.1.2.0/24", "10.2.2.0/24"], &["2001:db8:1::/64"]])
}

fn resolv_conf(dir: &std::path::Path) -> String {
    let path = dir.join("resolv.conf");
    std::fs::write(
        &path,
        "# comment\n; another\nnameserver 10.1.2.53\nnameserver 2001:db8::53\n\
         domain example.com\nsearch a.example b.example\noptions ndots:5 edns0\nsortlist x\n",
    )
    .unwrap();
    path.display().to_string()
}

const DNS: &str = r#"{"nameservers": ["10.1.2.53", "2001:db8::53"], "domain": "example.com",
    "search": ["a.example", "b.example"], "options": ["ndots:5", "edns0"]}"#;

/// Each version gets its own layout: `ip4`/`ip6` with per-family routes for 0.1.0/0.2.0,
/// `ips` with `version` and `dns` always printed for 0.3.x/0.4.0, no `version` and no empty
/// `dns` for 1.x. DEL then releases every lease.
#[test]
fn every_version_has_its_result_shape() {
    for version in VERSIONS {
        for with_dns in [true, false] {
            let mut ipam = dual_stack();
            ipam["routes"] =
                json!([{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}, {"dst": "2001:db8:2::/64"}]);
            let mut net = HostLocalNet::new(version, ipam);
            let dns: Value = if with_dns {
                net.conf["ipam"]["resolvConf"] = resolv_conf(net.data.path()).into();
                serde_json::from_str(DNS).unwrap()
            } else {
                json!({})
            };
            let got = net.add("c1");
            let expected = match version {
                "0.1.0" | "0.2.0" => json!({
                    "cniVersion": version,
                    "ip4": {"ip": "10.1.2.2/24", "gateway": "10.1.2.1",
                            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}]},
                    "ip6": {"ip": "2001:db8:1::2/64", "gateway": "2001:db8:1::1",
                            "routes": [{"dst": "2001:db8:2::/64"}]},
                    "dns": dns,
                }),
                _ => {
                    let mut v = json!({
                        "cniVersion": version,
                        "ips": [{"address": "10.1.2.2/24", "gateway": "10.1.2.1"},
                                {"address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1"}],
                        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}, {"dst": "2001:db8:2::/64"}],
                        "dns": dns,
                    });
                    if version < "1.0.0" {
                        v["ips"][0]["version"] = "4".into();
                        v["ips"][1]["version"] = "6".into();
                    } else if !with_dns {
                        v.as_object_mut().unwrap().remove("dns");
                    }
                    v
                }
            };
            assert_eq!(got, expected, "{version} dns={with_dns}");
            assert_eq!(net.leases().len(), 2);
            net.del("c1");
            assert!(
                net.leases().is_empty(),
                "{version}: DEL left {:?}",
                net.leases()
            );
        }
    }
}

/// The on-disk layout is the reference's: one file per address named like Go prints it,
/// holding `<id>\r\n<ifname>`, `last_reserved_ip.<set>`, `lock`, with the current reference's
/// modes (leases and markers 0600 since 1.4.0, lock 0750);
/// each network has its own directory under `dataDir`.
#[test]
fn files_have_the_reference_layout() {
    let net = HostLocalNet::new("1.0.0", dual_stack());
    net.add("c1");
    net.run("ADD", "c2", "eth1").ok();
    let mask = umask();
    let files = dir_files(&net.dir());
    let summary: BTreeMap<&str, (&[u8], u32)> = files
        .iter()
        .map(|(k, f)| (k.as_str(), (f.content.as_slice(), f.mode)))
        .collect();
    let lease_mode = 0o600 & !mask;
    let expected: BTreeMap<&str, (&[u8], u32)> = BTreeMap::from([
        ("10.1.2.2", (&b"c1\r\neth0"[..], lease_mode)),
        ("10.1.2.3", (&b"c2\r\neth1"[..], lease_mode)),
        ("2001:db8:1::2", (&b"c1\r\neth0"[..], lease_mode)),
        ("2001:db8:1::3", (&b"c2\r\neth1"[..], lease_mode)),
        ("last_reserved_ip.0", (&b"10.1.2.3"[..], lease_mode)),
        ("last_reserved_ip.1", (&b"2001:db8:1::3"[..], lease_mode)),
        ("lock", (&b""[..], 0o750 & !mask)),
        (".owners", (&b""[..], 0o700 & !mask)),
    ]);
    assert_eq!(summary, expected);
    assert_eq!(
        owner_links(&net.dir()).keys().collect::<Vec<_>>(),
        ["10.1.2.2", "10.1.2.3", "2001:db8:1::2", "2001:db8:1::3"]
    );
    net.del("c1");
    assert_eq!(
        owner_links(&net.dir()).keys().collect::<Vec<_>>(),
        ["10.1.2.3", "2001:db8:1::3"]
    );
    let top = dir_files(net.data.path());
    assert!(top[HostLocalNet::NAME].is_dir);
    assert_eq!(top[HostLocalNet::NAME].mode, 0o755 & !mask);

    // Another network in the same dataDir is independent.
    let mut other = net.conf.clone();
    other["name"] = "other-net".into();
    let out = net.exec("ADD", "c1", "eth0").run(&other.to_string());
    assert_eq!(result_ips(out.ok()), ["10.1.2.2", "2001:db8:1::2"]);
    assert_eq!(
        std::fs::read_to_string(net.data.path().join("other-net/10.1.2.2")).unwrap(),
        lease("c1", "eth0")
    );
}

/// Round-robin: after the last reserved address (not the lowest free one), through the set's
/// ranges in order, skipping gateways, wrapping around; exhaustion names every range.
#[test]
fn round_robin_order_and_wrap_around() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({"ranges": [[
            {"subnet": "10.0.0.0/29"},
            {"subnet": "10.0.1.0/29", "rangeStart": "10.0.1.4", "rangeEnd": "10.0.1.5"},
        ]]}),
    );
    enum Step {
        Add(&'static str, &'static str),
        Del(&'static str),
        Full(&'static str),
    }
    use Step::*;
    let steps = [
        Add("a", "10.0.0.2"), // .1 is the gateway
        Add("b", "10.0.0.3"),
        Del("a"),
        Add("c", "10.0.0.4"), // not the freed .2
        Add("d", "10.0.0.5"),
        Add("e", "10.0.0.6"),
        Add("f", "10.0.1.4"), // the next range, from its rangeStart
        Add("g", "10.0.1.5"),
        Add("h", "10.0.0.2"), // wrapped around
        Full("i"),
        Del("c"),
        Add("j", "10.0.0.4"),
        Full("k"),
    ];
    for step in steps {
        match step {
            Add(id, ip) => {
                let got = net.add(id);
                assert_eq!(got["ips"][0]["address"], format!("{ip}/{}", 29), "{id}");
                assert_eq!(net.last_reserved(0).as_deref(), Some(ip));
                assert_eq!(net.leases()[ip], lease(id, "eth0"));
            }
            Del(id) => net.del(id),
            Full(id) => {
                net.run("ADD", id, "eth0").err(
                    999,
                    "no IP addresses available in range set: 10.0.0.1-10.0.0.6,10.0.1.4-10.0.1.5",
                );
                assert!(!net.leases().values().any(|c| c.starts_with(id)));
            }
        }
    }
    assert_eq!(net.leases().len(), 7);
}

/// What another writer does to the store between two of our operations (the reference after a
/// rollback, an operator) is seen by the next one, though host-local keeps a table of the
/// directory to skip listing it.
#[test]
fn changes_by_another_writer_are_seen_by_the_next_operation() {
    let net = HostLocalNet::new("1.0.0", json!({"ranges": [[{"subnet": "10.0.0.0/29"}]]}));
    let address = |result: Value| result["ips"][0]["address"].as_str().unwrap().to_owned();
    assert_eq!(address(net.add("a")), "10.0.0.2/29");
    assert!(net.dir().join(".owners/table").is_file());

    // A lease made by hand for the next address: skipped, and its owner's DEL finds it.
    std::fs::write(net.dir().join("10.0.0.3"), lease("planted", "eth0")).unwrap();
    assert_eq!(address(net.add("b")), "10.0.0.4/29");
    net.run("DEL", "planted", "eth0").ok();
    assert!(!net.leases().contains_key("10.0.0.3"));

    // A lease removed by hand: its owner's repeated ADD gets a new one, not the removed one.
    std::fs::remove_file(net.dir().join("10.0.0.2")).unwrap();
    assert_eq!(address(net.add("a")), "10.0.0.5/29");
    let leases = net.leases();
    assert_eq!(
        leases.keys().collect::<Vec<_>>(),
        ["10.0.0.4", "10.0.0.5"],
        "{leases:?}"
    );
    conformance::owner_links(&net.dir());
}

/// What the smallest ranges hand out, in order, until exhaustion: never the gateway, never the
/// network or IPv4 broadcast address (even when rangeStart/rangeEnd include them), the last
/// address for IPv6 (no broadcast there), and .1 when the gateway is elsewhere.
#[test]
fn small_ranges_hand_out_exactly_their_usable_addresses() {
    let cases: &[(Value, &[&str])] = &[
        (json!({"subnet": "10.0.0.0/30"}), &["10.0.0.2"]),
        (
            json!({"subnet": "10.0.0.0/30", "rangeStart": "10.0.0.0", "rangeEnd": "10.0.0.3"}),
            &["10.0.0.2"],
        ),
        (
            json!({"subnet": "10.0.0.0/29", "gateway": "10.0.0.6"}),
            &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"],
        ),
        (
            json!({"subnet": "2001:db8::/126"}),
            &["2001:db8::2", "2001:db8::3"],
        ),
        (
            json!({"subnet": "2001:db8::/64", "rangeStart": "2001:db8::ffff:ffff:ffff:fffe"}),
            &[
                "2001:db8::ffff:ffff:ffff:fffe",
                "2001:db8::ffff:ffff:ffff:ffff",
            ],
        ),
    ];
    for (range, expected) in cases {
        let net = HostLocalNet::new("1.0.0", json!({"ranges": [[range]]}));
        for (n, ip) in expected.iter().enumerate() {
            assert_eq!(result_ips(&net.add(&format!("c{n}"))), [*ip], "{range}");
        }
        net.run("ADD", "last", "eth0")
            .err(999, "no IP addresses available in range set");
        assert_eq!(net.leases().len(), expected.len(), "{range}");
    }
}

/// STATUS (1.1.0) succeeds with a full range set (a runtime would mark the node not ready),
/// naming the full set in a warning on stderr until an address is released; before 1.1.0 it
/// is refused; an unusable store is code 50.
#[test]
fn status_warns_of_a_full_range_set() {
    let net = HostLocalNet::new("1.1.0", ranges(&[&["2001:db8::/64"], &["10.0.0.0/30"]]));
    let status = |net: &HostLocalNet| net.exec("STATUS", "", "").run(&net.stdin());
    let out = status(&net);
    out.ok();
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert!(!net.dir().exists(), "STATUS created the lease store");
    net.add("c1");
    let out = status(&net);
    out.ok();
    assert!(out.stdout.is_empty(), "{out:?}");
    let warning: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(warning.len(), 1, "{out:?}");
    for needle in ["warning", "ipam.ranges[1]", "10.0.0.1-10.0.0.2"] {
        assert!(warning[0].contains(needle), "{needle}: {out:?}");
    }
    assert!(!warning[0].contains("ipam.ranges[0]"), "{out:?}");
    net.run("ADD", "c2", "eth0")
        .err(999, "no IP addresses available");
    net.del("c1");
    let out = status(&net);
    out.ok();
    assert!(out.stderr.is_empty(), "{out:?}");

    let mut old = net.conf.clone();
    old["cniVersion"] = "1.0.0".into();
    net.exec("STATUS", "", "")
        .run(&old.to_string())
        .err(1, "STATUS");

    // A data directory that cannot be made (under a file) is reported (code 50).
    let mut unusable = net.conf.clone();
    unusable["ipam"]["dataDir"] = "/etc/hostname/rcni-leases".into();
    net.exec("STATUS", "", "")
        .run(&unusable.to_string())
        .err(50, "lease store unusable");
}

/// Requested addresses from every source: `args.cni.ips`, `runtimeConfig.ips` and CNI_ARGS
/// `IP=` (prefixes ignored), one per range set, the other sets round-robin; CNI_ARGS `IP` is
/// ignored when `args.cni.ips` is present (even empty), not when only `runtimeConfig.ips` is.
#[test]
fn requested_ips_from_every_source() {
    let cases = [
        (
            "args.cni.ips for every set",
            Requested::default().args(json!(["10.1.2.9/24", "10.1.3.15", "2001:db8::9/64"])),
            ["10.1.2.9", "10.1.3.15", "2001:db8::9"],
        ),
        (
            "runtimeConfig.ips",
            Requested::default().runtime(json!(["10.1.3.17", "2001:db8::17"])),
            ["10.1.2.2", "10.1.3.17", "2001:db8::17"],
        ),
        (
            "CNI_ARGS IP with prefix",
            Requested::default().cni_args("IP=10.1.2.77/24"),
            ["10.1.2.77", "10.1.3.10", "2001:db8::2"],
        ),
        (
            "CNI_ARGS IP among other keys",
            Requested::default().cni_args("IgnoreUnknown=1;K8S_POD_NAME=p;IP=2001:db8::77"),
            ["10.1.2.2", "10.1.3.10", "2001:db8::77"],
        ),
        (
            "CNI_ARGS IP ignored beside args.cni.ips",
            Requested::default()
                .args(json!(["10.1.3.11"]))
                .cni_args("IP=10.1.2.77"),
            ["10.1.2.2", "10.1.3.11", "2001:db8::2"],
        ),
        (
            "CNI_ARGS IP ignored beside an empty args.cni.ips",
            Requested::default()
                .args(json!([]))
                .cni_args("IP=10.1.2.77"),
            ["10.1.2.2", "10.1.3.10", "2001:db8::2"],
        ),
        (
            "CNI_ARGS IP kept beside runtimeConfig.ips",
            Requested::default()
                .runtime(json!(["10.1.3.12"]))
                .cni_args("IP=10.1.2.77"),
            ["10.1.2.77", "10.1.3.12", "2001:db8::2"],
        ),
        (
            "args.cni.ips and runtimeConfig.ips merged",
            Requested::default()
                .args(json!(["2001:db8::5"]))
                .runtime(json!(["10.1.2.5", "2001:db8::5"])),
            ["10.1.2.5", "10.1.3.10", "2001:db8::5"],
        ),
    ];
    for (what, requested, expected) in cases {
        let (net, out) = requested.add();
        assert_eq!(result_ips(out.ok()), expected, "{what}");
        let leases = net.leases();
        assert_eq!(
            leases.keys().map(String::as_str).collect::<Vec<_>>(),
            {
                let mut e = expected.to_vec();
                e.sort();
                e
            },
            "{what}"
        );
        assert!(leases.values().all(|c| *c == lease("c1", "eth0")));
    }
}

/// Where a test requests addresses: `args.cni.ips`, `runtimeConfig.ips`, `CNI_ARGS`.
#[derive(Default)]
struct Requested {
    args: Option<Value>,
    runtime: Option<Value>,
    cni_args: &'static str,
}

impl Requested {
    fn args(self, ips: Value) -> Self {
        Requested {
            args: Some(ips),
            ..self
        }
    }

    fn runtime(self, ips: Value) -> Self {
        Requested {
            runtime: Some(ips),
            ..self
        }
    }

    fn cni_args(self, cni_args: &'static str) -> Self {
        Requested { cni_args, ..self }
    }

    /// ADD of (c1, eth0) on a fresh network of [`request_ranges`]: the network and what the
    /// plugin answered.
    fn add(self) -> (HostLocalNet, Outcome) {
        let mut net = HostLocalNet::new("1.0.0", request_ranges());
        if let Some(args) = self.args {
            net = net.with("args", json!({"cni": {"ips": args}}));
        }
        if let Some(ips) = self.runtime {
            net = net.with("runtimeConfig", json!({"ips": ips}));
        }
        let out = net
            .exec("ADD", "c1", "eth0")
            .env("CNI_ARGS", self.cni_args)
            .run(&net.stdin());
        (net, out)
    }
}

/// Three sets: a whole v4 /24, a v4 range .10-.20 of a /24, a v6 /64.
fn request_ranges() -> Value {
    json!({"ranges": [
        [{"subnet": "10.1.2.0/24"}],
        [{"subnet": "10.1.3.0/24", "rangeStart": "10.1.3.10", "rangeEnd": "10.1.3.20"}],
        [{"subnet": "2001:db8::/64"}],
    ]})
}

/// A requested address that cannot be given fails with the spec code and a message naming
/// where it came from, and leaves no lease behind.
#[test]
fn requested_ip_errors_name_their_source() {
    let cases: [(&str, Requested, u64, &[&str]); 10] = [
        (
            "the gateway, from args",
            Requested::default().args(json!(["10.1.2.1"])),
            7,
            &["args.cni.ips", "10.1.2.1", "gateway"],
        ),
        (
            "the gateway, from runtimeConfig",
            Requested::default().runtime(json!(["2001:db8::1"])),
            7,
            &["runtimeConfig.ips", "2001:db8::1", "gateway"],
        ),
        (
            "the gateway, from CNI_ARGS",
            Requested::default().cni_args("IP=10.1.2.1"),
            7,
            &["CNI_ARGS", "10.1.2.1", "gateway"],
        ),
        (
            "in no range, from args",
            Requested::default().args(json!(["10.9.9.9"])),
            7,
            &["args.cni.ips", "10.9.9.9", "not in any range set"],
        ),
        (
            "in the subnet but outside rangeStart-rangeEnd, from runtimeConfig",
            Requested::default().runtime(json!(["10.1.3.5"])),
            7,
            &["runtimeConfig.ips", "10.1.3.5", "not in any range set"],
        ),
        (
            "in no range, from CNI_ARGS",
            Requested::default().cni_args("IP=192.168.0.1"),
            7,
            &["CNI_ARGS", "192.168.0.1", "not in any range set"],
        ),
        (
            "two for one range set",
            Requested::default().args(json!(["10.1.2.5", "10.1.2.6"])),
            7,
            &["args.cni.ips", "10.1.2.6", "ipam.ranges[0]"],
        ),
        (
            "not an address",
            Requested::default().args(json!(["nonsense"])),
            7,
            &["args.cni.ips", "nonsense"],
        ),
        (
            "CNI_ARGS IP not an address",
            Requested::default().cni_args("IP=zz"),
            4,
            &["CNI_ARGS", "zz"],
        ),
        (
            "CNI_ARGS unknown key without IgnoreUnknown",
            Requested::default().cni_args("IP=10.1.2.7;FOO=1"),
            4,
            &["FOO", "IgnoreUnknown"],
        ),
    ];
    for (what, requested, code, needles) in cases {
        let (net, out) = requested.add();
        for needle in needles {
            out.err(code, needle);
        }
        assert!(net.leases().is_empty(), "{what}: {:?}", net.leases());
    }
}

/// `IgnoreUnknown` is read as Go's `strconv.ParseBool` reads it (and libcni's any-case
/// `true`/`false`): a true spelling lets unknown CNI_ARGS keys through, a false one does not,
/// anything else fails with code 4 naming the key.
#[test]
fn ignore_unknown_takes_every_go_bool_spelling() {
    let net = HostLocalNet::new("1.0.0", request_ranges());
    let add = |value: &str| {
        net.exec("ADD", "c1", "eth0")
            .env(
                "CNI_ARGS",
                &format!("IgnoreUnknown={value};K8S_POD_NAME=web"),
            )
            .run(&net.stdin())
    };
    for yes in ["1", "t", "T", "TRUE", "true", "True"] {
        assert_eq!(
            result_ips(add(yes).ok()),
            ["10.1.2.2", "10.1.3.10", "2001:db8::2"],
            "IgnoreUnknown={yes}"
        );
    }
    net.del("c1");
    for no in ["0", "f", "F", "FALSE", "false", "False"] {
        add(no).err(4, "K8S_POD_NAME");
    }
    add("yes").err(4, "IgnoreUnknown=\"yes\"");
    assert!(net.leases().is_empty(), "{:?}", net.leases());
}

/// A requested address another attachment holds is refused, and the failed ADD releases what
/// it had reserved in the other sets.
#[test]
fn requested_ip_held_by_another_container_fails_cleanly() {
    let net = HostLocalNet::new("1.0.0", request_ranges())
        .with("args", json!({"cni": {"ips": ["10.1.3.15"]}}));
    net.add("c1");
    let before = net.leases();
    net.run("ADD", "c2", "eth0")
        .err(999, "requested IP address 10.1.3.15 is not available");
    assert_eq!(net.leases(), before);
    // The holder itself may repeat its ADD.
    assert_eq!(
        result_ips(&net.add("c1")),
        ["10.1.2.2", "10.1.3.15", "2001:db8::2"]
    );
}

/// Every validation error: the spec code (7, or 1 for what a version cannot express), a
/// message naming the key, and nothing written to the dataDir.
#[test]
fn config_validation_errors_name_the_key() {
    let r = |subnet: &str| json!({"subnet": subnet});
    let cases: Vec<(&str, &str, Value, u64, &[&str])> = vec![
        (
            "overlapping range sets",
            "1.0.0",
            ranges(&[&["10.1.2.0/24"], &["10.1.0.0/16"]]),
            7,
            &["ipam.ranges[1]", "ipam.ranges[0]", "overlaps"],
        ),
        (
            "overlapping ranges in one set",
            "1.0.0",
            ranges(&[&["10.1.2.0/24", "10.1.0.0/16"]]),
            7,
            &["ipam.ranges[0]", "overlap"],
        ),
        (
            "same subnet, overlapping start/end",
            "1.0.0",
            json!({"ranges": [[
                {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"},
                {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.15", "rangeEnd": "10.0.0.25"}]]}),
            7,
            &["ipam.ranges[0]", "overlap"],
        ),
        (
            "overlapping v6 sets",
            "1.0.0",
            ranges(&[&["2001:db8::/64"], &["2001:db8::/48"]]),
            7,
            &["ipam.ranges[1]", "overlaps"],
        ),
        (
            "runtime ipRanges overlapping ipam.ranges",
            "1.0.0",
            json!({"ranges": [[r("10.1.2.0/24")]], "__runtime": [[r("10.1.2.0/25")]]}),
            7,
            &["runtimeConfig.ipRanges[0]", "ipam.ranges[0]"],
        ),
        (
            "host bits set",
            "1.0.0",
            ranges(&[&["10.1.2.5/24"]]),
            7,
            &["ipam.ranges[0][0].subnet", "10.1.2.5/24", "host bits"],
        ),
        (
            "host bits set, v6",
            "1.0.0",
            ranges(&[&["2001:db8::1/64"]]),
            7,
            &["ipam.ranges[0][0].subnet", "host bits"],
        ),
        (
            "/31",
            "1.0.0",
            ranges(&[&["10.1.2.0/31"]]),
            7,
            &["ipam.ranges[0][0].subnet", "too small"],
        ),
        (
            "/32",
            "1.0.0",
            ranges(&[&["10.1.2.0/24"], &["10.1.3.1/32"]]),
            7,
            &["ipam.ranges[1][0].subnet", "too small"],
        ),
        (
            "/127",
            "1.0.0",
            ranges(&[&["2001:db8::/127"]]),
            7,
            &["ipam.ranges[0][0].subnet", "too small"],
        ),
        (
            "/128",
            "1.0.0",
            ranges(&[&["2001:db8::/128"]]),
            7,
            &["ipam.ranges[0][0].subnet", "too small"],
        ),
        (
            "not a CIDR",
            "1.0.0",
            ranges(&[&["10.1.2.0"]]),
            7,
            &["ipam.ranges[0][0].subnet", "10.1.2.0"],
        ),
        (
            "rangeStart outside the subnet",
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}]]}),
            7,
            &["ipam.ranges[0][0].rangeStart", "10.1.3.1"],
        ),
        (
            "rangeEnd outside the subnet, second range",
            "1.0.0",
            json!({"ranges": [[r("10.1.2.0/24"), {"subnet": "10.2.0.0/24", "rangeEnd": "10.3.0.1"}]]}),
            7,
            &["ipam.ranges[0][1].rangeEnd", "10.3.0.1"],
        ),
        (
            "rangeEnd before rangeStart",
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.50", "rangeEnd": "10.1.2.40"}]]}),
            7,
            &["ipam.ranges[0][0].rangeEnd"],
        ),
        (
            "gateway of the other family",
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24", "gateway": "2001:db8::1"}]]}),
            7,
            &["ipam.ranges[0][0].gateway"],
        ),
        (
            "mixed families in a set",
            "1.0.0",
            ranges(&[&["10.1.2.0/24", "2001:db8::/64"]]),
            7,
            &["ipam.ranges[0]", "mixed"],
        ),
        (
            "empty range set",
            "1.0.0",
            json!({"ranges": [[r("10.1.2.0/24")], []]}),
            7,
            &["ipam.ranges[1]", "empty"],
        ),
        ("no ranges at all", "1.0.0", json!({}), 7, &["ipam.ranges"]),
        (
            "ranges of the wrong type",
            "1.0.0",
            json!({"ranges": "10.1.2.0/24"}),
            7,
            &["ipam.ranges"],
        ),
        (
            "subnet of the wrong type",
            "1.0.0",
            json!({"ranges": [[{"subnet": 10}]]}),
            7,
            &["ipam.ranges[0][0].subnet"],
        ),
        (
            "legacy subnet with host bits",
            "1.0.0",
            json!({"subnet": "10.5.0.1/24"}),
            7,
            &["ipam.subnet", "host bits"],
        ),
        (
            "legacy rangeStart outside",
            "1.0.0",
            json!({"subnet": "10.5.0.0/24", "rangeStart": "10.6.0.1"}),
            7,
            &["ipam.rangeStart", "10.6.0.1"],
        ),
        (
            "legacy subnet overlapping ranges",
            "1.0.0",
            json!({"subnet": "10.5.0.0/16", "ranges": [[r("10.5.1.0/24")]]}),
            7,
            &["ipam.ranges[0]", "overlaps"],
        ),
        (
            "bad runtime ipRanges",
            "1.0.0",
            json!({"ranges": [[r("10.1.2.0/24")]], "__runtime": [[r("10.9.0.0/33")]]}),
            7,
            &["runtimeConfig.ipRanges[0][0].subnet"],
        ),
        (
            "0.2.0, two v4 sets",
            "0.2.0",
            ranges(&[&["10.1.2.0/24"], &["10.1.3.0/24"]]),
            1,
            &["0.2.0", "more than 1 address per family"],
        ),
        (
            "0.1.0, two v6 sets",
            "0.1.0",
            ranges(&[&["10.1.2.0/24"], &["2001:db8:1::/64"], &["2001:db8:2::/64"]]),
            1,
            &["0.1.0", "more than 1 address per family"],
        ),
        (
            "0.2.0, legacy subnet plus a v4 set",
            "0.2.0",
            json!({"subnet": "10.5.0.0/24", "ranges": [[r("10.6.0.0/24")]]}),
            1,
            &["more than 1 address per family"],
        ),
    ];
    for (what, version, mut ipam, code, needles) in cases {
        let runtime = ipam.as_object_mut().unwrap().remove("__runtime");
        let mut net = HostLocalNet::new(version, ipam);
        if let Some(ip_ranges) = runtime {
            net = net.with("runtimeConfig", json!({"ipRanges": ip_ranges}));
        }
        let out = net.run("ADD", "c1", "eth0");
        for needle in needles {
            out.err(code, needle);
        }
        assert!(!net.dir().exists(), "{what}: wrote to the dataDir");
    }
}

/// Keys are matched case-insensitively, as Go's encoding/json does.
#[test]
fn config_keys_match_case_insensitively() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({"Ranges": [[{"SUBNET": "10.1.2.0/24", "RangeStart": "10.1.2.40"}]]}),
    );
    assert_eq!(result_ips(&net.add("c1")), ["10.1.2.40"]);
}

/// Routes are copied with every 1.1.0 field into 1.x and 0.3.x/0.4.0 results; 0.1.0/0.2.0
/// keep `dst` and `gw`, sorted by family.
#[test]
fn routes_keep_every_1_1_0_field() {
    let routes = json!([
        {"dst": "0.0.0.0/0", "gw": "10.1.2.1", "mtu": 1400, "advmss": 1360, "priority": 100,
         "table": 50, "scope": 0},
        {"dst": "2001:db8:9::/48", "table": 7, "scope": 253},
        {"dst": "192.168.0.0/16"},
    ]);
    for version in VERSIONS {
        let mut ipam = dual_stack();
        ipam["routes"] = routes.clone();
        let net = HostLocalNet::new(version, ipam);
        let got = net.add("c1");
        if version < "0.3.0" {
            assert_eq!(
                got["ip4"]["routes"],
                json!([{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}, {"dst": "192.168.0.0/16"}]),
                "{version}"
            );
            assert_eq!(got["ip6"]["routes"], json!([{"dst": "2001:db8:9::/48"}]));
        } else {
            assert_eq!(got["routes"], routes, "{version}");
        }
    }
}

/// `resolvConf` that cannot be read fails (code 5, naming the key) before anything is leased.
#[test]
fn unreadable_resolv_conf_fails_before_leasing() {
    let mut ipam = dual_stack();
    ipam["resolvConf"] = "/nonexistent/resolv.conf".into();
    let net = HostLocalNet::new("1.0.0", ipam);
    net.run("ADD", "c1", "eth0").err(5, "ipam.resolvConf");
    assert!(net.leases().is_empty());
}

/// A dataDir that cannot be created fails with code 5 naming the path.
#[test]
fn unusable_data_dir_is_an_io_error() {
    let net = HostLocalNet::new("1.0.0", dual_stack());
    let file = net.data.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let mut conf = net.conf.clone();
    conf["ipam"]["dataDir"] = file.display().to_string().into();
    net.exec("ADD", "c1", "eth0")
        .run(&conf.to_string())
        .err(5, &file.display().to_string());
}

/// The legacy top-level range (subnet, rangeStart, rangeEnd, gateway) comes after
/// `runtimeConfig.ipRanges` and before `ranges`; the position is the set index of
/// `last_reserved_ip.<n>`; the legacy gateway is never handed out.
#[test]
fn legacy_range_and_runtime_ip_ranges_in_order() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({"subnet": "10.5.0.0/24", "rangeStart": "10.5.0.10", "rangeEnd": "10.5.0.12",
               "gateway": "10.5.0.11", "ranges": [[{"subnet": "2001:db8::/64"}]]}),
    )
    .with(
        "runtimeConfig",
        json!({"ipRanges": [[{"subnet": "10.7.0.0/24", "gateway": "10.7.0.254"}]]}),
    );
    let got = net.add("c1");
    assert_eq!(
        got["ips"],
        json!([
            {"address": "10.7.0.1/24", "gateway": "10.7.0.254"},
            {"address": "10.5.0.10/24", "gateway": "10.5.0.11"},
            {"address": "2001:db8::2/64", "gateway": "2001:db8::1"},
        ])
    );
    assert_eq!(net.last_reserved(0).as_deref(), Some("10.7.0.1"));
    assert_eq!(net.last_reserved(1).as_deref(), Some("10.5.0.10"));
    assert_eq!(net.last_reserved(2).as_deref(), Some("2001:db8::2"));
    assert_eq!(result_ips(&net.add("c2"))[1], "10.5.0.12");
    net.run("ADD", "c3", "eth0").err(
        999,
        "no IP addresses available in range set: 10.5.0.10-10.5.0.12",
    );

    // Only the legacy keys, in 0.2.0.
    let legacy = HostLocalNet::new("0.2.0", json!({"subnet": "10.5.0.0/24"}));
    assert_eq!(
        legacy.add("c1"),
        json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.5.0.2/24", "gateway": "10.5.0.1"}, "dns": {}})
    );
}

/// A repeated ADD for an attachment that already holds a lease returns that lease, in every
/// set, and writes nothing (the reference fails instead: deliberate). Another interface of the
/// same container is another attachment.
#[test]
fn repeated_add_returns_the_existing_lease() {
    for version in ["0.2.0", "0.4.0", "1.1.0"] {
        let net = HostLocalNet::new(version, dual_stack());
        let first = net.add("c1");
        net.add("c2");
        let files = dir_files(&net.dir());
        assert_eq!(net.add("c1"), first, "{version}");
        assert_eq!(
            dir_files(&net.dir()),
            files,
            "{version}: repeated ADD wrote"
        );
        let eth1 = net.run("ADD", "c1", "eth1").ok().clone();
        assert_eq!(
            result_ips(&eth1),
            ["10.1.2.4", "2001:db8:1::4"],
            "{version}"
        );
    }
    // A legacy lease (ID only) counts as the container's.
    let net = HostLocalNet::new("1.0.0", ranges(&[&["10.1.2.0/24"]]));
    net.add("c0");
    std::fs::write(net.dir().join("10.1.2.50"), "c9").unwrap();
    assert_eq!(result_ips(&net.add("c9")), ["10.1.2.50"]);
    assert_eq!(net.leases().len(), 2);
}

/// DEL releases exactly the attachment's leases (whitespace around the content is ignored);
/// legacy ID-only files of the container go when it holds no `<id>\r\n<ifname>` lease.
#[test]
fn del_releases_only_the_attachment() {
    let net = HostLocalNet::new("1.0.0", dual_stack());
    net.add("c1");
    net.run("ADD", "c1", "eth1").ok();
    net.add("c2");
    net.del("c1");
    let mut holders: Vec<String> = net.leases().into_values().collect();
    holders.sort();
    holders.dedup();
    assert_eq!(holders, [lease("c1", "eth1"), lease("c2", "eth0")]);

    let write = |ip: &str, content: &str| std::fs::write(net.dir().join(ip), content).unwrap();
    write("10.1.2.100", "c3");
    write("10.1.2.101", " c3 \n");
    write("10.1.2.102", "c33");
    write("10.1.2.110", "c4");
    write("10.1.2.111", "c4\r\neth0");
    write("10.1.2.120", "  c5\r\neth0\n");
    net.del("c3");
    net.del("c5");
    let left = net.leases();
    for gone in ["10.1.2.100", "10.1.2.101", "10.1.2.120"] {
        assert!(!left.contains_key(gone), "{gone} not released");
    }
    assert!(
        left.contains_key("10.1.2.102"),
        "another container's lease released"
    );
    net.del("c4");
    let left = net.leases();
    assert!(!left.contains_key("10.1.2.111") && left.contains_key("10.1.2.110"));
    net.del("c4");
    assert!(!net.leases().contains_key("10.1.2.110"));
}

/// DEL succeeds when nothing is held, when the dataDir does not exist (and does not create
/// it), without CNI_NETNS, twice, and when the config no longer validates (ours: DEL needs only
/// dataDir; the reference fails such a DEL).
#[test]
fn del_needs_little_and_is_idempotent() {
    let net = HostLocalNet::new("1.0.0", dual_stack());
    net.del("nobody");
    net.add("c1");
    net.del("nobody");
    assert_eq!(net.leases().len(), 2);

    for netns in [None, Some("")] {
        net.add("c1");
        let exec = net.exec("DEL", "c1", "eth0");
        let exec = match netns {
            None => exec.unset("CNI_NETNS"),
            Some(v) => exec.env("CNI_NETNS", v),
        };
        exec.run(&net.stdin()).ok();
        assert!(net.leases().is_empty(), "CNI_NETNS={netns:?}");
    }
    net.del("c1");

    net.add("c1");
    let mut broken = net.conf.clone();
    broken["ipam"]["ranges"] = json!([[{"subnet": "10.1.2.5/24"}]]);
    net.exec("DEL", "c1", "eth0").run(&broken.to_string()).ok();
    assert!(net.leases().is_empty());

    let missing = net.data.path().join("missing");
    let mut conf = net.conf.clone();
    conf["ipam"]["dataDir"] = missing.display().to_string().into();
    net.exec("DEL", "c1", "eth0").run(&conf.to_string()).ok();
    assert!(!missing.exists(), "DEL created the dataDir");
}

/// CHECK (0.4.0+) passes when the attachment holds a lease and every prevResult address in
/// our ranges is its own; it fails for a foreign or missing lease; before 0.4.0 it is refused.
#[test]
fn check_matches_leases_against_prev_result() {
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let net = HostLocalNet::new(version, dual_stack());
        let check = |id: &str, ifname: &str, prev: Option<&Value>| {
            let stdin = match prev {
                Some(p) => net.stdin_with("prevResult", p.clone()),
                None => net.stdin(),
            };
            net.exec("CHECK", id, ifname).run(&stdin)
        };
        check("c1", "eth0", None).err(999, "Failed to find address added by container c1");
        let result = net.add("c1");
        net.add("c2");
        let out = check("c1", "eth0", Some(&result));
        out.ok();
        assert!(out.stdout.is_empty());
        check("c1", "eth0", None).ok();

        // An address some other plugin added, outside our ranges, is not ours to judge.
        let mut extra = result.clone();
        extra["ips"]
            .as_array_mut()
            .unwrap()
            .push(json!({"address": "192.168.9.9/24"}));
        check("c1", "eth0", Some(&extra)).ok();

        // An address in our ranges held by someone else, or by no one.
        for foreign in ["10.1.2.3/24", "10.1.2.77/24"] {
            let mut wrong = result.clone();
            wrong["ips"][0]["address"] = foreign.into();
            let ip = foreign.split('/').next().unwrap();
            check("c1", "eth0", Some(&wrong)).err(999, ip);
        }
        check("c1", "eth1", Some(&result)).err(999, "Failed to find address");
        check("c3", "eth0", None).err(999, "c3");
    }
    let net = HostLocalNet::new("0.3.1", dual_stack());
    net.add("c1");
    net.run("CHECK", "c1", "eth0").err(1, "CHECK");
}

/// GC frees every lease whose (containerID, ifname) is not a valid attachment (legacy ID-only
/// leases by container ID), from either key; it keeps the rest and the store's own files.
#[test]
fn gc_frees_leases_of_invalid_attachments() {
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let net = HostLocalNet::new("1.1.0", dual_stack());
        net.add("a");
        net.run("ADD", "a", "eth1").ok();
        net.add("b");
        net.add("d");
        std::fs::write(net.dir().join("10.1.2.200"), "c").unwrap();
        std::fs::write(net.dir().join("10.1.2.201"), "d").unwrap();
        let valid =
            json!([{"containerID": "a", "ifname": "eth0"}, {"containerID": "d", "ifname": "eth9"}]);
        let out = net
            .exec("GC", "", "")
            .unset("CNI_CONTAINERID")
            .unset("CNI_NETNS")
            .unset("CNI_IFNAME")
            .run(&net.stdin_with(key, valid));
        out.ok();
        assert!(out.stdout.is_empty());
        let left = net.leases();
        assert_eq!(
            left,
            BTreeMap::from([
                ("10.1.2.2".to_string(), lease("a", "eth0")),
                ("2001:db8:1::2".to_string(), lease("a", "eth0")),
                ("10.1.2.201".to_string(), "d".to_string()),
            ]),
            "{key}"
        );
        let files = dir_files(&net.dir());
        assert!(files.contains_key("lock") && files.contains_key("last_reserved_ip.0"));
        // Allocation goes on from where it was.
        assert_eq!(result_ips(&net.add("e")), ["10.1.2.6", "2001:db8:1::6"]);

        // GC with nothing valid empties the store.
        net.exec("GC", "", "")
            .run(&net.stdin_with(key, json!([])))
            .ok();
        assert!(net.leases().is_empty(), "{key}");
    }
    // libcni (CRI-O) sends a network without attachments as `null`: an empty list.
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let net = HostLocalNet::new("1.1.0", dual_stack());
        net.add("a");
        net.exec("GC", "", "")
            .run(&net.stdin_with(key, Value::Null))
            .ok();
        assert!(
            net.leases().is_empty(),
            "{key}: null kept {:?}",
            net.leases()
        );
    }
    // No store yet: nothing to do, and nothing created.
    let net = HostLocalNet::new("1.1.0", dual_stack());
    net.exec("GC", "", "")
        .run(&net.stdin_with("cni.dev/valid-attachments", json!([])))
        .ok();
    assert!(!net.dir().exists());
    // Before 1.1.0 GC is refused.
    let net = HostLocalNet::new("1.0.0", dual_stack());
    net.add("a");
    net.exec("GC", "", "")
        .run(&net.stdin_with("cni.dev/valid-attachments", json!([])))
        .err(1, "GC");
    assert_eq!(net.leases().len(), 2);
}
