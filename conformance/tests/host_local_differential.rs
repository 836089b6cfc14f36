//! host-local against Debian's reference Go plugin (v1.1.1, spec up to 1.0.0): the same
//! results and the same files for the same configs, leases shared both ways through one
//! dataDir, and the deliberate differences.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use conformance::{
    FileState, HostLocalNet, Outcome, VERSIONS, bin, dir_files, owner_links, result_ips, umask,
};
use serde_json::{Value, json};

fn reference() -> PathBuf {
    conformance::reference_plugin("host-local")
}

fn ours() -> PathBuf {
    bin("host-local")
}

/// Versions the reference speaks.
fn shared_versions() -> impl Iterator<Item = &'static str> {
    VERSIONS.into_iter().filter(|v| *v <= "1.0.0")
}

/// Go prints `"dns": {}` in 1.x results where we leave an empty DNS out; runtimes read both
/// the same.
fn without_empty_dns(mut v: Value) -> Value {
    let one_x = v["cniVersion"].as_str().is_some_and(|s| s >= "1.0.0");
    if one_x && v.get("dns") == Some(&json!({})) {
        v.as_object_mut().unwrap().remove("dns");
    }
    v
}

/// The reference's files as ours are: leases and markers 0600, as the reference writes them
/// since 1.4.0 (Debian's 1.1.1 makes them 0644). Names, contents and other modes stay.
fn with_private_leases(mut files: BTreeMap<String, FileState>) -> BTreeMap<String, FileState> {
    let mask = umask();
    for (name, file) in &mut files {
        if name != "lock" && !file.is_dir && file.mode == 0o644 & !mask {
            file.mode = 0o600 & !mask;
        }
    }
    files
}

/// Our store but for its owner links (a deliberate addition), which must match the leases.
fn without_owner_links(network_dir: &Path) -> BTreeMap<String, FileState> {
    owner_links(network_dir);
    let mut files = dir_files(network_dir);
    files.remove(".owners");
    files
}

/// Both outcomes succeed with the same (normalised) result, or both fail. Error codes are not
/// compared: the reference answers 999 for every host-local error, we use the spec's codes.
fn assert_same(what: &str, a: &Outcome, b: &Outcome) {
    assert_eq!(
        a.status == 0,
        b.status == 0,
        "{what}: ours {a:?}\nreference {b:?}"
    );
    if a.status == 0 {
        assert_eq!(
            without_empty_dns(a.json.clone()),
            without_empty_dns(b.json.clone()),
            "{what}"
        );
    }
}

fn resolv_conf(dir: &Path) -> String {
    let path = dir.join("resolv.conf");
    std::fs::write(
        &path,
        "# c\nnameserver 10.1.2.53\nnameserver 2001:db8::53\ndomain example.com\n\
         search a.example b.example\noptions ndots:5 edns0\n",
    )
    .unwrap();
    path.display().to_string()
}

struct Scenario {
    what: &'static str,
    ipam: Value,
    /// Extra top-level keys.
    extra: Value,
    /// Extra top-level keys and CNI_ARGS for the first container only (requested addresses).
    first_extra: Value,
    first_cni_args: &'static str,
}

fn scenarios(resolv: &str) -> Vec<Scenario> {
    vec![
        Scenario {
            what: "two ranges in a v4 set, a v6 set, routes, resolvConf",
            ipam: json!({
                "ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "10.2.2.0/24"}],
                           [{"subnet": "2001:db8:1::/64"}]],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}, {"dst": "2001:db8:9::/48"},
                           {"dst": "192.168.0.0/16"}],
                "resolvConf": resolv,
            }),
            extra: json!({}),
            first_extra: json!({}),
            first_cni_args: "",
        },
        Scenario {
            what: "legacy top-level range with start, end and gateway",
            ipam: json!({"subnet": "10.5.0.0/24", "rangeStart": "10.5.0.10",
                         "rangeEnd": "10.5.0.12", "gateway": "10.5.0.11"}),
            extra: json!({}),
            first_extra: json!({}),
            first_cni_args: "",
        },
        Scenario {
            what: "runtime ipRanges, legacy range and ranges, in that order",
            ipam: json!({"subnet": "10.5.0.0/24",
                         "ranges": [[{"subnet": "2001:db8::/120", "rangeStart": "2001:db8::f0"}]]}),
            extra: json!({"runtimeConfig": {"ipRanges": [[{"subnet": "10.7.0.0/24", "gateway": "10.7.0.254"}]]}}),
            first_extra: json!({}),
            first_cni_args: "",
        },
        Scenario {
            what: "args.cni.ips in both families",
            ipam: json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8::/64"}]]}),
            extra: json!({}),
            first_extra: json!({"args": {"cni": {"ips": ["10.1.2.40/24", "2001:db8::40"]}}}),
            first_cni_args: "",
        },
        Scenario {
            what: "runtimeConfig.ips",
            ipam: json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8::/64"}]]}),
            extra: json!({}),
            first_extra: json!({"runtimeConfig": {"ips": ["2001:db8::41"]}}),
            first_cni_args: "",
        },
        Scenario {
            what: "CNI_ARGS IP",
            ipam: json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]}),
            extra: json!({}),
            first_extra: json!({}),
            first_cni_args: "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.1.2.42/24",
        },
        Scenario {
            what: "a tiny v4 range that runs out, gateway elsewhere",
            ipam: json!({"ranges": [[{"subnet": "10.9.0.0/29", "rangeStart": "10.9.0.2",
                                      "rangeEnd": "10.9.0.4", "gateway": "10.9.0.3"}]]}),
            extra: json!({}),
            first_extra: json!({}),
            first_cni_args: "",
        },
        Scenario {
            what: "v6 file names where zero compression is ambiguous",
            ipam: json!({"ranges": [
                [{"subnet": "2001:db8:0:0:1::/80", "rangeStart": "2001:db8:0:0:1:0:0:2"}],
                [{"subnet": "2001:db8:0:1::/64", "rangeStart": "2001:db8:0:1:1:1:1:1"}]]}),
            extra: json!({}),
            first_extra: json!({}),
            first_cni_args: "",
        },
        Scenario {
            what: "v6 only, default end",
            ipam: json!({"ranges": [[{"subnet": "2001:db8:5::/64",
                                      "rangeStart": "2001:db8:5::ffff:ffff:ffff:fffe"}]]}),
            extra: json!({}),
            first_extra: json!({}),
            first_cni_args: "",
        },
    ]
}

/// For every scenario and every version both speak: the same sequence of ADD, DEL and CHECK
/// gives the same outcomes and results, and leaves the same files (names, contents, modes)
/// after every step.
#[test]
fn same_results_and_files_for_the_same_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let resolv = resolv_conf(tmp.path());
    // One thread per scenario: the time goes into process start-up, not into the CPU.
    std::thread::scope(|s| {
        for scenario in scenarios(&resolv) {
            s.spawn(move || {
                for version in shared_versions() {
                    compare(&scenario, version);
                }
            });
        }
    });
}

fn compare(scenario: &Scenario, version: &str) {
    let mk = || {
        let mut net = HostLocalNet::new(version, scenario.ipam.clone());
        for (k, v) in scenario.extra.as_object().unwrap() {
            net = net.with(k, v.clone());
        }
        net
    };
    let (a, b) = (mk(), mk());
    let steps: &[(&str, &str, &str)] = &[
        ("ADD", "c1", "eth0"),
        ("ADD", "c2", "eth1"),
        ("DEL", "c1", "eth0"),
        ("ADD", "c3", "eth0"),
        ("ADD", "c4", "eth0"),
        ("CHECK", "c3", "eth0"),
        ("DEL", "c2", "eth1"),
        ("DEL", "c2", "eth1"),
        ("ADD", "c5", "eth0"),
    ];
    let mut results = std::collections::HashMap::new();
    for (n, (cmd, id, ifname)) in steps.iter().enumerate() {
        let what = format!("{} / {version} / step {n} {cmd} {id}", scenario.what);
        if *cmd == "CHECK" && version < "0.4.0" {
            continue;
        }
        let run = |net: &HostLocalNet, plugin: &Path| {
            let mut conf = net.conf.clone();
            let mut cni_args = "";
            if *id == "c1" {
                for (k, v) in scenario.first_extra.as_object().unwrap() {
                    conf[k] = v.clone();
                }
                cni_args = scenario.first_cni_args;
            }
            if let (Some(prev), "CHECK") = (results.get(id), *cmd) {
                conf["prevResult"] = Value::clone(prev);
            }
            net.exec_as(plugin, cmd, id, ifname)
                .env("CNI_ARGS", cni_args)
                .run(&conf.to_string())
        };
        let (oa, ob) = (run(&a, &ours()), run(&b, &reference()));
        assert_same(&what, &oa, &ob);
        if *cmd == "ADD" && oa.status == 0 {
            results.insert(*id, oa.json.clone());
        }
        assert_eq!(
            without_owner_links(&a.dir()),
            with_private_leases(dir_files(&b.dir())),
            "{what}"
        );
        if n == 0 && oa.status != 0 {
            // A config this version cannot express: the rest would only show that our DEL does
            // not need a valid config (see deliberate_differences).
            break;
        }
    }
    // The network directory itself (mode), when there is one.
    assert_eq!(
        dir_files(a.data.path()).get(HostLocalNet::NAME),
        dir_files(b.data.path()).get(HostLocalNet::NAME)
    );
}

/// Configs the reference rejects we reject too (with the spec's code rather than 999), and
/// neither leaves a lease behind.
#[test]
fn both_reject_the_same_invalid_configs() {
    let cases: &[(&str, Value, Value)] = &[
        (
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.0.0/16"}]]}),
            json!({}),
        ),
        (
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.2.128/25"}]]}),
            json!({}),
        ),
        (
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.5/24"}]]}),
            json!({}),
        ),
        (
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/31"}]]}),
            json!({}),
        ),
        (
            "1.0.0",
            json!({"ranges": [[{"subnet": "2001:db8::/128"}]]}),
            json!({}),
        ),
        (
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}]]}),
            json!({}),
        ),
        (
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24", "rangeEnd": "10.1.3.1"}]]}),
            json!({}),
        ),
        (
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "2001:db8::/64"}]]}),
            json!({}),
        ),
        ("1.0.0", json!({}), json!({})),
        (
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]}),
            json!({"args": {"cni": {"ips": ["10.1.2.1"]}}}),
        ),
        (
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]}),
            json!({"args": {"cni": {"ips": ["10.9.2.1"]}}}),
        ),
        (
            "0.2.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]]}),
            json!({}),
        ),
    ];
    for (version, ipam, extra) in cases {
        let mk = || {
            let mut net = HostLocalNet::new(version, ipam.clone());
            for (k, v) in extra.as_object().unwrap() {
                net = net.with(k, v.clone());
            }
            net
        };
        let (a, b) = (mk(), mk());
        let oa = a.run("ADD", "c1", "eth0");
        let ob = b.exec_as(&reference(), "ADD", "c1", "eth0").run(&b.stdin());
        assert!(oa.status != 0 && ob.status != 0, "{ipam}: {oa:?} {ob:?}");
        assert_ne!(oa.json["code"], 999, "{ipam}: ours should use a spec code");
        assert!(a.leases().is_empty() && b.leases().is_empty(), "{ipam}");
    }
}

fn dual_stack(version: &str) -> HostLocalNet {
    HostLocalNet::new(
        version,
        json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]}),
    )
}

/// Leases made by one are seen, kept and released by the other: each continues the other's
/// round-robin, CHECKs the other's lease, and DELs it.
#[test]
fn leases_are_shared_both_ways() {
    let net = dual_stack("1.0.0");
    let run =
        |plugin: &Path, cmd: &str, id: &str| net.exec_as(plugin, cmd, id, "eth0").run(&net.stdin());
    let theirs_c1 = run(&reference(), "ADD", "c1").ok().clone();
    assert_eq!(result_ips(&theirs_c1), ["10.1.2.2", "2001:db8:1::2"]);
    assert_eq!(
        result_ips(run(&ours(), "ADD", "c2").ok()),
        ["10.1.2.3", "2001:db8:1::3"]
    );
    assert_eq!(
        result_ips(run(&reference(), "ADD", "c3").ok()),
        ["10.1.2.4", "2001:db8:1::4"]
    );
    // Ours recognises the reference's lease: CHECK passes and a repeated ADD returns it.
    net.exec("CHECK", "c1", "eth0")
        .run(&net.stdin_with("prevResult", theirs_c1.clone()))
        .ok();
    assert_eq!(
        without_empty_dns(net.add("c1")),
        without_empty_dns(theirs_c1)
    );
    // And the reference recognises ours.
    let ours_c4 = run(&ours(), "ADD", "c4").ok().clone();
    net.exec_as(&reference(), "CHECK", "c4", "eth0")
        .run(&net.stdin_with("prevResult", ours_c4))
        .ok();
    // Each releases the other's.
    run(&ours(), "DEL", "c1").ok();
    run(&reference(), "DEL", "c2").ok();
    run(&reference(), "DEL", "c4").ok();
    let holders: BTreeSet<String> = net.leases().into_values().collect();
    assert_eq!(holders, BTreeSet::from(["c3\r\neth0".to_string()]));
    // Ours linked the reference's c3 when it read it; the reference's DELs took our links of c2
    // and c4 with their leases.
    assert_eq!(
        owner_links(&net.dir()).into_keys().collect::<Vec<_>>(),
        ["10.1.2.4", "2001:db8:1::4"]
    );
    // A legacy ID-only file (reference before 0.7) is released by both.
    for (plugin, ip) in [(reference(), "10.1.2.100"), (ours(), "10.1.2.101")] {
        std::fs::write(net.dir().join(ip), "c9").unwrap();
        run(&plugin, "DEL", "c9").ok();
        assert!(!net.leases().contains_key(ip), "{}", plugin.display());
    }
    run(&ours(), "DEL", "c3").ok();
    assert!(net.leases().is_empty());
    assert!(owner_links(&net.dir()).is_empty());
}

/// Interleaved ADDs from both, sequential and then all at once, never hand out an address
/// twice; every lease file matches a result; each DELs the other's containers to empty.
#[test]
fn interleaved_adds_never_duplicate() {
    let net = HostLocalNet::new("1.0.0", json!({"ranges": [[{"subnet": "10.3.0.0/26"}]]}));
    let plugin = |n: usize| {
        if n.is_multiple_of(2) {
            ours()
        } else {
            reference()
        }
    };
    let add = |n: usize| {
        let out = net
            .exec_as(&plugin(n), "ADD", &format!("c{n}"), "eth0")
            .run(&net.stdin());
        result_ips(out.ok())[0].clone()
    };
    // Sequential alternation follows one round-robin.
    for n in 0..8 {
        assert_eq!(add(n), format!("10.3.0.{}", n + 2));
    }
    // 40 at once, half each.
    let ips: Vec<(usize, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (8..48).map(|n| s.spawn(move || (n, add(n)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<&String> = ips.iter().map(|(_, ip)| ip).collect();
    assert_eq!(
        distinct.len(),
        ips.len(),
        "an address was handed out twice: {ips:?}"
    );
    let leases = net.leases();
    assert_eq!(leases.len(), 48);
    for (n, ip) in &ips {
        assert_eq!(leases[ip], format!("c{n}\r\neth0"));
    }
    // Each DELs what the other ADDed, all at once.
    std::thread::scope(|s| {
        for n in 0..48 {
            let net = &net;
            s.spawn(move || {
                net.exec_as(&plugin(n + 1), "DEL", &format!("c{n}"), "eth0")
                    .run(&net.stdin())
                    .ok();
            });
        }
    });
    assert!(net.leases().is_empty(), "{:?}", net.leases());
}

/// Where we differ on purpose, both sides of the difference: a repeated ADD returns the lease
/// (the reference fails); CHECK compares prevResult with the leases (the reference only looks for
/// any lease); DEL needs only dataDir (the reference fails on an invalid config); network and
/// broadcast addresses are never handed out; a failed ADD does not move the round-robin
/// position; CNI_ARGS IP is ignored beside args.cni.ips (the reference merges them).
#[test]
fn deliberate_differences() {
    // Repeated ADD.
    let net = dual_stack("1.0.0");
    let first = net
        .exec_as(&reference(), "ADD", "c1", "eth0")
        .run(&net.stdin())
        .ok()
        .clone();
    net.exec_as(&reference(), "ADD", "c1", "eth0")
        .run(&net.stdin())
        .err(999, "duplicate allocation is not allowed");
    assert_eq!(
        without_empty_dns(net.add("c1")),
        without_empty_dns(first.clone())
    );

    // CHECK with a prevResult the leases do not match.
    let mut wrong = first.clone();
    wrong["ips"][0]["address"] = "10.1.2.99/24".into();
    let stdin = net.stdin_with("prevResult", wrong);
    net.exec_as(&reference(), "CHECK", "c1", "eth0")
        .run(&stdin)
        .ok();
    net.exec("CHECK", "c1", "eth0")
        .run(&stdin)
        .err(999, "10.1.2.99");

    // DEL with a config that no longer validates.
    let mut broken = net.conf.clone();
    broken["ipam"]["ranges"] = json!([[{"subnet": "10.1.2.5/24"}]]);
    net.exec_as(&reference(), "DEL", "c1", "eth0")
        .run(&broken.to_string())
        .err(999, "host bits");
    assert_eq!(net.leases().len(), 2);
    net.exec("DEL", "c1", "eth0").run(&broken.to_string()).ok();
    assert!(net.leases().is_empty());

    // A range that includes the network and broadcast addresses.
    let ipam = json!({"ranges": [[{"subnet": "10.1.2.0/30", "rangeStart": "10.1.2.0", "rangeEnd": "10.1.2.3"}]]});
    let (a, b) = (
        HostLocalNet::new("1.0.0", ipam.clone()),
        HostLocalNet::new("1.0.0", ipam),
    );
    let drain = |net: &HostLocalNet, plugin: &Path| {
        (0..4)
            .map_while(|n| {
                let out = net
                    .exec_as(plugin, "ADD", &format!("c{n}"), "eth0")
                    .run(&net.stdin());
                (out.status == 0).then(|| result_ips(&out.json)[0].clone())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(drain(&a, &ours()), ["10.1.2.2"]);
    assert_eq!(
        drain(&b, &reference()),
        ["10.1.2.0", "10.1.2.2", "10.1.2.3"]
    );

    // A failed ADD (here: a requested address already taken) leaves the round-robin position
    // alone; the reference has already advanced it in the sets it did before failing.
    let mk = || {
        HostLocalNet::new(
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]]}),
        )
    };
    let (a, b) = (mk(), mk());
    for (net, plugin) in [(&a, ours()), (&b, reference())] {
        let taken = net.stdin_with("runtimeConfig", json!({"ips": ["10.1.3.9"]}));
        net.exec_as(&plugin, "ADD", "c1", "eth0").run(&taken).ok();
        let out = net.exec_as(&plugin, "ADD", "c2", "eth0").run(&taken);
        assert_ne!(out.status, 0);
    }
    assert_eq!(a.last_reserved(0).as_deref(), Some("10.1.2.2"));
    assert_eq!(b.last_reserved(0).as_deref(), Some("10.1.2.3"));
    assert_eq!(a.leases().len(), 2);
    assert_eq!(b.leases().len(), 2);

    // CNI_ARGS IP beside args.cni.ips.
    let mk = || {
        HostLocalNet::new(
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]]}),
        )
        .with("args", json!({"cni": {"ips": ["10.1.3.9"]}}))
    };
    let (a, b) = (mk(), mk());
    let with_ip = |net: &HostLocalNet, plugin: &Path| {
        let out = net
            .exec_as(plugin, "ADD", "c1", "eth0")
            .env("CNI_ARGS", "IP=10.1.2.77")
            .run(&net.stdin());
        result_ips(out.ok())
    };
    assert_eq!(with_ip(&a, &ours()), ["10.1.2.2", "10.1.3.9"]);
    assert_eq!(with_ip(&b, &reference()), ["10.1.2.77", "10.1.3.9"]);
}
