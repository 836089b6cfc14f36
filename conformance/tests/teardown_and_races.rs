//! Teardown that must not be blocked, and races between concurrent ADDs of different pods.

use std::path::Path;
use std::thread;

use conformance::{BridgeConf, Call, Netns, bin, unique};
use serde_json::{Value, json};

fn bridge_conf(br: &str, data: &Path, extra: Value) -> Value {
    BridgeConf::new(br)
        .subnets(&["10.57.0.0/24"])
        .data_dir(data)
        .with(&json!({"isGateway": true}))
        .with(&extra)
        .network("1.1.0", &unique("tr"))
}

fn leases(data: &Path, net: &str) -> Vec<String> {
    conformance::lease_files(&data.join(net))
}

/// A config that a runtime can no longer ADD with (a bad MAC, a bad mapping) still lets its
/// pods be deleted: the Go libcni stops a DEL chain at the first plugin that fails.
#[test]
fn del_tolerates_what_only_add_must_reject() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let data = tempfile::tempdir().unwrap();
    let br = unique("br");
    let conf = bridge_conf(&br, data.path(), json!({}));
    let net = conf["name"].as_str().unwrap().to_string();
    Call::new(&host, bin("bridge"), "ADD", &ctr.path)
        .run(&conf.to_string())
        .ok();
    assert_eq!(leases(data.path(), &net).len(), 1);

    let mut broken = conf.clone();
    broken["runtimeConfig"] = json!({"mac": "not-a-mac"});
    broken["vlan"] = json!(9999);
    Call::new(&host, bin("bridge"), "ADD", &ctr.path)
        .run(&broken.to_string())
        .err(7, "vlan");
    Call::new(&host, bin("bridge"), "DEL", &ctr.path)
        .run(&broken.to_string())
        .ok();
    assert!(ctr.link("eth0").is_none(), "the veth survived DEL");
    assert!(
        leases(data.path(), &net).is_empty(),
        "the lease survived DEL"
    );

    let portmap = json!({"cniVersion": "1.0.0", "name": net, "type": "portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "localhost"}]}});
    Call::new(&host, bin("portmap"), "DEL", &ctr.path)
        .run(&portmap.to_string())
        .ok();
}

/// GC without `cni.dev/valid-attachments` is refused instead of freeing everything.
#[test]
fn gc_without_the_attachment_list_is_refused() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let data = tempfile::tempdir().unwrap();
    let conf = bridge_conf(&unique("br"), data.path(), json!({}));
    let net = conf["name"].as_str().unwrap().to_string();
    Call::new(&host, bin("bridge"), "ADD", &ctr.path)
        .run(&conf.to_string())
        .ok();
    for plugin in ["bridge", "host-local", "portmap"] {
        Call::new(&host, bin(plugin), "GC", &ctr.path)
            .run(&conf.to_string())
            .err(7, "cni.dev/valid-attachments");
    }
    assert_eq!(
        leases(data.path(), &net).len(),
        1,
        "a refused GC freed the lease"
    );
    let mut empty = conf.clone();
    empty["cni.dev/valid-attachments"] = json!([]);
    Call::new(&host, bin("host-local"), "GC", &ctr.path)
        .run(&empty.to_string())
        .ok();
    assert!(
        leases(data.path(), &net).is_empty(),
        "an explicit empty list frees everything"
    );
}

/// Concurrent ADDs on a fresh gateway bridge agree on its MAC: every result names the MAC the
/// bridge keeps, so CHECK passes for all of them.
#[test]
fn concurrent_adds_agree_on_the_bridge_mac() {
    let host = Netns::new("h");
    let data = tempfile::tempdir().unwrap();
    let conf = bridge_conf(&unique("br"), data.path(), json!({}));
    let ctrs: Vec<Netns> = (0..8).map(|_| Netns::new("c")).collect();
    let results: Vec<Value> = thread::scope(|s| {
        let handles: Vec<_> = ctrs
            .iter()
            .enumerate()
            .map(|(i, ctr)| {
                let (host, conf) = (&host, &conf);
                s.spawn(move || {
                    Call::new(host, bin("bridge"), "ADD", &ctr.path)
                        .env("CNI_CONTAINERID", &format!("ctr{i}"))
                        .run(&conf.to_string())
                        .ok()
                        .clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let macs: Vec<&str> = results
        .iter()
        .map(|r| r["interfaces"][0]["mac"].as_str().unwrap())
        .collect();
    assert!(
        macs.iter().all(|m| *m == macs[0]),
        "results disagree on the bridge MAC: {macs:?}"
    );
    for (i, (ctr, result)) in ctrs.iter().zip(&results).enumerate() {
        let mut check = conf.clone();
        check["prevResult"] = result.clone();
        Call::new(&host, bin("bridge"), "CHECK", &ctr.path)
            .env("CNI_CONTAINERID", &format!("ctr{i}"))
            .run(&check.to_string())
            .ok();
    }
}

/// Concurrent first ADDs with the iptables portmap backend neither wipe each other's entry
/// rules nor duplicate the shared hooks, and DEL leaves no chain behind.
#[test]
fn concurrent_iptables_portmap_adds_keep_every_mapping() {
    let host = Netns::new("h");
    // The containers' subnet is routed somewhere (portmap looks up the route for route_localnet).
    host.ip(&["link", "add", "rt0", "type", "veth", "peer", "name", "rt1"]);
    host.ip(&["addr", "add", "10.58.0.1/24", "dev", "rt0"]);
    host.ip(&["link", "set", "rt0", "up"]);
    let net = unique("pm");
    let conf = |port: u16, ip: &str| {
        json!({"cniVersion": "1.0.0", "name": net, "type": "portmap", "backend": "iptables",
            "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": format!("{ip}/24")}]}})
        .to_string()
    };
    let ctr = Netns::new("c");
    thread::scope(|s| {
        for i in 0..4u16 {
            let (host, ctr, conf) = (&host, &ctr, &conf);
            s.spawn(move || {
                Call::new(host, bin("portmap"), "ADD", &ctr.path)
                    .env("CNI_CONTAINERID", &format!("ctr{i}"))
                    .run(&conf(9000 + i, &format!("10.58.0.{}", i + 2)))
                    .ok();
            });
        }
    });
    let save = || {
        let out = host
            .command("iptables-save")
            .args(["-t", "nat"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rules = save();
    for i in 0..4 {
        assert!(
            rules.contains(&format!("--dport {} ", 9000 + i)),
            "mapping {i} lost:\n{rules}"
        );
    }
    let hooks = rules
        .lines()
        .filter(|l| l.starts_with("-A PREROUTING") && l.contains("CNI-HOSTPORT-DNAT"))
        .count();
    assert_eq!(hooks, 1, "{rules}");
    for i in 0..4u16 {
        Call::new(&host, bin("portmap"), "DEL", &ctr.path)
            .env("CNI_CONTAINERID", &format!("ctr{i}"))
            .run(&conf(9000 + i, &format!("10.58.0.{}", i + 2)))
            .ok();
    }
    let rules = save();
    assert!(!rules.contains("RCNI-DN-"), "{rules}");
}

/// Names that are not ASCII (the kernel accepts them) do not crash the spoof check.
#[test]
fn non_ascii_names_do_not_panic() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let data = tempfile::tempdir().unwrap();
    let mut conf = bridge_conf(&unique("br"), data.path(), json!({"macspoofchk": true}));
    conf["name"] = json!(format!("{}-{}", unique("n"), "x".repeat(70)));
    let out = Call::new(&host, bin("bridge"), "ADD", &ctr.path)
        .env("CNI_IFNAME", "éééééé")
        .run(&conf.to_string());
    out.ok();
    Call::new(&host, bin("bridge"), "DEL", &ctr.path)
        .env("CNI_IFNAME", "éééééé")
        .run(&conf.to_string())
        .ok();
    assert!(ctr.link("éééééé").is_none());
}

/// A DEL whose steps fail in two places reports both, not only the first: the container's
/// namespace path cannot be opened (a symlink loop) and the IPAM plugin is missing. The code
/// is the first failure's.
#[test]
fn del_reports_every_failed_step() {
    let host = Netns::new("h");
    let dir = tempfile::tempdir().unwrap();
    let looped = dir.path().join("netns");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let br = unique("br");
    let mut conf = bridge_conf(&br, dir.path(), json!({}));
    conf["ipam"] = json!({"type": "rcni-no-such-ipam"});
    let out = Call::new(&host, bin("bridge"), "DEL", &looped).run(&conf.to_string());
    out.err(999, "Too many levels of symbolic links");
    let msg = out.json["msg"].as_str().unwrap();
    assert!(msg.contains("rcni-no-such-ipam"), "{out:?}");
    let details = out.json["details"].as_str().unwrap();
    assert_eq!(details.lines().count(), 2, "{out:?}");
}
