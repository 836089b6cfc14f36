//! Hostile and broken input, black-box: configs, environments and files on disk that once made a
//! plugin or cnitool hang, panic, leak or write where it must not. Each answer must be a clean
//! CNI error with the right code (or success), promptly, with nothing half-done.

use std::time::Duration;

use conformance::{BridgeConf, Call, HostLocalNet, Netns, Outcome, Workdir, bin, cnitool, unique};
use serde_json::{Value, json};

/// Long enough for a debug build on a machine shared by parallel suites (10 MB inputs take
/// seconds there), far below a hang.
const PROMPT: Duration = Duration::from_secs(30);

/// A bridge network with host-local IPAM (its own `dataDir`) on a unique bridge.
fn bridge_conf(data: &std::path::Path, subnet: &str) -> Value {
    BridgeConf::new(&unique("br"))
        .subnets(&[subnet])
        .data_dir(data)
        .network("1.1.0", &unique("hn"))
}

fn lease_count(data: &std::path::Path, conf: &Value) -> usize {
    conformance::lease_files(&data.join(conf["name"].as_str().unwrap())).len()
}

/// An IPv4-mapped IPv6 subnet is refused, naming the key, before any file is written (it used to
/// give a lease that no later ADD or DEL could find under its name).
#[test]
fn host_local_refuses_an_ipv4_mapped_subnet() {
    for (ipam, key) in [
        (json!({"subnet": "::ffff:10.9.0.0/120"}), "ipam.subnet"),
        (
            json!({"ranges": [[{"subnet": "::ffff:10.9.0.0/120"}]]}),
            "ipam.ranges[0][0].subnet",
        ),
    ] {
        let net = HostLocalNet::new("1.0.0", ipam);
        net.run("ADD", "c1", "eth0")
            .err(7, &format!("{key} \"::ffff:10.9.0.0/120\" is IPv4-mapped"));
        assert!(net.leases().is_empty());
        // The same network written as IPv4 works, and DEL finds its lease.
        let v4 = HostLocalNet::new("1.0.0", json!({"subnet": "10.9.0.0/24"}));
        assert_eq!(conformance::result_ips(&v4.add("c1")), ["10.9.0.2"]);
        v4.del("c1");
        assert!(v4.leases().is_empty());
    }
}

/// IPv6 ranges never hand out IPv4-mapped addresses: the walk steps over the whole block.
#[test]
fn host_local_ipv6_range_steps_over_ipv4_mapped_addresses() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({"ranges": [[{"subnet": "::/64", "rangeStart": "::fffe:ffff:fffe", "rangeEnd": "::1:0:0:5"}]]}),
    );
    let got: Vec<String> = ["c1", "c2", "c3"]
        .iter()
        .map(|id| conformance::result_ips(&net.add(id))[0].clone())
        .collect();
    assert_eq!(got, ["::fffe:ffff:fffe", "::fffe:ffff:ffff", "::1:0:0:0"]);
    for id in ["c1", "c2", "c3"] {
        net.del(id);
    }
    assert!(net.leases().is_empty());
}

/// A range of the whole address space (`::/0` from `::`, `0.0.0.0/0` from `0.0.0.0`) allocates
/// and releases; it used to overflow its size (a panic in debug builds, no address in release).
#[test]
fn host_local_whole_address_space_range() {
    for (subnet, start, want) in [
        ("::/0", "::", ["::2", "::3"]),
        ("0.0.0.0/0", "0.0.0.0", ["0.0.0.2", "0.0.0.3"]),
    ] {
        let net = HostLocalNet::new(
            "1.0.0",
            json!({"ranges": [[{"subnet": subnet, "rangeStart": start}]]}),
        );
        assert_eq!(conformance::result_ips(&net.add("c1")), [want[0]]);
        assert_eq!(conformance::result_ips(&net.add("c2")), [want[1]]);
        net.del("c1");
        net.del("c2");
        assert!(net.leases().is_empty());
    }
}

/// A FIFO as `CNI_NETNS` is "not a network namespace" at once, for every plugin and command
/// (opening it used to wait forever for a writer): code 4 where the plugin needs the namespace
/// (ADD, CHECK), success for DEL (nothing of ours can be in it), and host-local and portmap,
/// which never enter it, answer as without it.
#[test]
fn a_fifo_as_netns_is_refused_promptly_by_every_plugin() {
    let host = Netns::new("h");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("netns");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let data = tempfile::tempdir().unwrap();
    let bridge = bridge_conf(data.path(), "10.61.0.0/24");
    let prev = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.61.0.9/24"}]});
    let mut loopback = json!({"cniVersion": "1.1.0", "name": unique("lo"), "type": "loopback"});
    let mut portmap = json!({"cniVersion": "1.1.0", "name": unique("pm"), "type": "portmap"});
    for conf in [&mut loopback, &mut portmap] {
        conf["prevResult"] = prev.clone();
    }
    let mut host_local = json!({
        "cniVersion": "1.1.0", "name": bridge["name"], "type": "host-local", "ipam": bridge["ipam"],
    });
    let call = |plugin: &str, command: &str, conf: &Value| {
        let mut conf = conf.clone();
        if command == "CHECK" && conf.get("prevResult").is_none() {
            conf["prevResult"] = prev.clone();
        }
        Call::new(&host, bin(plugin), command, &fifo)
            .within(PROMPT)
            .run(&conf.to_string())
    };
    for (plugin, conf) in [("bridge", &bridge), ("loopback", &loopback)] {
        for command in ["ADD", "CHECK"] {
            call(plugin, command, conf).err(4, "is not a network namespace");
        }
        call(plugin, "DEL", conf).ok();
    }
    assert_eq!(
        lease_count(data.path(), &bridge),
        0,
        "a refused ADD left a lease"
    );
    call("portmap", "ADD", &portmap).ok();
    call("portmap", "CHECK", &portmap).ok();
    call("portmap", "DEL", &portmap).ok();
    host_local["prevResult"] = call("host-local", "ADD", &host_local).ok().clone();
    call("host-local", "CHECK", &host_local).ok();
    call("host-local", "DEL", &host_local).ok();
    assert_eq!(lease_count(data.path(), &bridge), 0);
}

/// DEL reads only the keys it needs, each leniently: a config with keys of the wrong type
/// (which ADD rejects) still deletes the pod and releases its lease, in bridge, host-local and
/// loopback.
#[test]
fn del_survives_keys_of_the_wrong_type() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let data = tempfile::tempdir().unwrap();
    let conf = bridge_conf(data.path(), "10.62.0.0/24");
    Call::new(&host, bin("bridge"), "ADD", &ctr.path)
        .run(&conf.to_string())
        .ok();
    assert_eq!(lease_count(data.path(), &conf), 1);

    let mut broken = conf.clone();
    for (key, value) in [
        ("mtu", json!("1500")),
        ("vlan", json!("x")),
        ("hairpinMode", json!("yes")),
        ("dns", json!("none")),
        ("ipMasq", json!("maybe")),
    ] {
        broken[key] = value;
    }
    broken["ipam"]["routes"] = json!("none");
    Call::new(&host, bin("bridge"), "ADD", &ctr.path)
        .env("CNI_CONTAINERID", "other")
        .run(&broken.to_string())
        .err(7, "invalid network config: key");
    Call::new(&host, bin("bridge"), "DEL", &ctr.path)
        .run(&broken.to_string())
        .ok();
    assert!(ctr.link("eth0").is_none(), "the veth survived DEL");
    assert_eq!(lease_count(data.path(), &conf), 0, "the lease survived DEL");

    let loopback = json!({"cniVersion": "1.1.0", "name": "lo", "type": "loopback", "dns": "x"});
    Call::new(&host, bin("loopback"), "ADD", &ctr.path)
        .run(&json!({"cniVersion": "1.1.0", "name": "lo", "type": "loopback"}).to_string())
        .ok();
    Call::new(&host, bin("loopback"), "DEL", &ctr.path)
        .run(&loopback.to_string())
        .ok();
    assert!(!ctr.is_up("lo"), "loopback DEL did not run");
}

/// `vlanTrunk` is de-duplicated into a set of at most 4094 IDs without expanding duplicates:
/// 300,000 entries are refused at once (they used to be expanded into ~10 GB of IDs), and 4094
/// copies of the full range answer promptly in bounded memory (with code 2 where the kernel
/// has no bridge VLAN filtering).
#[test]
fn a_huge_vlan_trunk_is_bounded() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let data = tempfile::tempdir().unwrap();
    let limited = ["prlimit", "--as=1073741824", "--"];
    let full = json!({"minID": 1, "maxID": 4094});
    let mut conf = bridge_conf(data.path(), "10.63.0.0/24");
    conf["vlanTrunk"] = Value::Array(vec![full.clone(); 300_000]);
    Call::new(&host, bin("bridge"), "ADD", &ctr.path)
        .under(&limited)
        .within(PROMPT)
        .run(&conf.to_string())
        .err(7, "vlanTrunk: 300000 entries, at most 4094");
    assert!(host.link(conf["bridge"].as_str().unwrap()).is_none());
    assert_eq!(lease_count(data.path(), &conf), 0);

    conf["vlanTrunk"] = Value::Array(vec![full; 4094]);
    let out = Call::new(&host, bin("bridge"), "ADD", &ctr.path)
        .under(&limited)
        .within(PROMPT)
        .run(&conf.to_string());
    if conformance::bridge_vlan_filtering_supported() {
        out.ok();
    } else {
        out.err(2, "VLAN");
    }
    Call::new(&host, bin("bridge"), "DEL", &ctr.path)
        .within(PROMPT)
        .run(&conf.to_string())
        .ok();
    assert_eq!(lease_count(data.path(), &conf), 0);
}

/// Symlinks planted in the lease directory are never followed: one at a lease's name keeps
/// that address from being handed out (the ADD takes the next), one at `lock` fails the
/// operation with code 5; the files they point at stay untouched. (Temporary files are made
/// with O_EXCL|O_NOFOLLOW under random names: libcni temp_file's unit tests.)
#[test]
fn host_local_never_writes_through_a_planted_symlink() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("precious");
    std::fs::write(&target, "untouched").unwrap();
    let net = HostLocalNet::new("1.1.0", json!({"subnet": "10.64.0.0/24"}));
    std::fs::create_dir_all(net.dir()).unwrap();
    std::os::unix::fs::symlink(&target, net.dir().join("10.64.0.2")).unwrap();
    assert_eq!(conformance::result_ips(&net.add("c1")), ["10.64.0.3"]);
    net.del("c1");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    assert!(
        net.dir().join("10.64.0.2").is_symlink(),
        "DEL removed a foreign entry"
    );

    let lock = net.dir().join("lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(outside.path().join("created"), &lock).unwrap();
    net.run("ADD", "c2", "eth0").err(5, "cannot open lock");
    assert!(
        !outside.path().join("created").exists(),
        "the lock symlink was followed"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    let names: Vec<String> = net.leases().into_keys().collect();
    assert_eq!(names, ["10.64.0.2"], "only the planted link is left");
}

/// The bridge + host-local chain as a conflist, for cnitool.
fn bridge_list(data: &std::path::Path, subnet: &str) -> Value {
    let plugin = bridge_conf(data, subnet);
    json!({"cniVersion": "1.1.0", "name": plugin["name"], "plugins": [plugin]})
}

/// `cnitool add` whose result cannot be cached (here: a directory sits at the entry's path)
/// fails and deletes the chain again: no veth, no lease that a later GC could not account for.
#[test]
fn cnitool_add_undoes_the_chain_when_the_cache_write_fails() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let work = Workdir::new();
    let data = tempfile::tempdir().unwrap();
    let list = bridge_list(data.path(), "10.65.0.0/24");
    let net = list["name"].as_str().unwrap();
    work.write_conf("10-net.conflist", &list);
    let cid = conformance::cnitool_container_id(&ctr.path);
    let entry = work.cache_dir().join(format!("results/{net}-{cid}-eth0"));
    std::fs::create_dir_all(entry.join("blocker")).unwrap();

    let add = cnitool(&host, &work, &["add", net, ctr.path.to_str().unwrap()]);
    assert_ne!(add.status, 0, "{add:?}");
    assert!(
        add.stderr.contains("cannot write cached result") && add.stderr.contains("(code 5)"),
        "{add:?}"
    );
    assert!(ctr.link("eth0").is_none(), "the veth was left behind");
    assert_eq!(
        lease_count(data.path(), &list),
        0,
        "the lease was left behind"
    );
}

/// `cnitool gc` counts an attachment as gone only when its namespace path does not exist or
/// holds no network namespace; a path it cannot open for another reason (here a symlink loop,
/// ELOOP) keeps the attachment and its lease, and is reported.
#[test]
fn cnitool_gc_keeps_an_attachment_whose_netns_cannot_be_opened() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let work = Workdir::new();
    let data = tempfile::tempdir().unwrap();
    let list = bridge_list(data.path(), "10.66.0.0/24");
    let net = list["name"].as_str().unwrap();
    work.write_conf("10-net.conflist", &list);
    let links = tempfile::tempdir().unwrap();
    let ns = links.path().join("ns");
    std::os::unix::fs::symlink(&ctr.path, &ns).unwrap();
    cnitool(&host, &work, &["add", net, ns.to_str().unwrap()]).ok();
    let entry = work.cache_dir().join(format!(
        "results/{net}-{}-eth0",
        conformance::cnitool_container_id(&ns)
    ));
    assert!(entry.is_file());

    std::fs::remove_file(&ns).unwrap();
    std::os::unix::fs::symlink(links.path().join("loop"), &ns).unwrap();
    std::os::unix::fs::symlink(&ns, links.path().join("loop")).unwrap();
    let gc = cnitool(&host, &work, &["gc", net]);
    gc.ok();
    assert!(gc.stderr.contains("gc keeps the attachment"), "{gc:?}");
    assert!(
        entry.is_file(),
        "gc dropped an attachment it could not check"
    );
    assert_eq!(lease_count(data.path(), &list), 1, "gc freed a live lease");

    // A path that no longer exists is gone: gc deletes the attachment.
    std::fs::remove_file(&ns).unwrap();
    cnitool(&host, &work, &["gc", net]).ok();
    assert!(!entry.exists());
    assert_eq!(lease_count(data.path(), &list), 0);
}

/// `cnitool gc` waits for the cache lock that add and del hold shared, so it cannot run
/// between a chain ADD and its cache write.
#[test]
fn cnitool_gc_waits_for_an_add_holding_the_cache_lock() {
    let host = Netns::new("h");
    let work = Workdir::new();
    let data = tempfile::tempdir().unwrap();
    let list = bridge_list(data.path(), "10.67.0.0/24");
    let net = list["name"].as_str().unwrap();
    work.write_conf("10-net.conflist", &list);
    let results = work.cache_dir().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let lock = std::fs::File::create(results.join(".lock")).unwrap();
    lock.lock_shared().unwrap();
    let held = Duration::from_millis(1500);
    let start = std::time::Instant::now();
    let release = std::thread::spawn(move || {
        std::thread::sleep(held);
        drop(lock);
    });
    cnitool(&host, &work, &["gc", net]).ok();
    assert!(start.elapsed() >= held, "gc ran while the lock was held");
    release.join().unwrap();
}

/// `conditionsV4/V6` and `externalSetMarkChain` reach an `nft -f` or `iptables-restore` script:
/// a value that could end its rule, start another command or section, or comment out the rest
/// is refused with code 7 naming the key, before anything is written. The tables and chains the
/// values tried to delete or create are untouched.
#[test]
fn portmap_refuses_values_that_would_escape_their_rule() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    host.nft("add table inet victim\n");
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": ctr.path}],
        "ips": [{"address": "10.37.0.2/24", "interface": 0}]});
    let mappings =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    for (extra, key) in [
        (
            json!({"conditionsV4": ["meta l4proto tcp; delete table inet victim; #"]}),
            "conditionsV4",
        ),
        (
            json!({"conditionsV6": ["iifname \"eth0\"\ndelete table inet victim"]}),
            "conditionsV6",
        ),
        (
            json!({"conditionsV4": ["iifname \"eth0\" # the rest is a comment"]}),
            "conditionsV4",
        ),
        (
            json!({"backend": "iptables",
                "conditionsV4": ["-i eth0\nCOMMIT\n*filter\n:RCNIX - [0:0]"]}),
            "conditionsV4",
        ),
        (
            json!({"externalSetMarkChain": "RETURN\nCOMMIT\n*filter\n:RCNIX - [0:0]\nCOMMIT\n*nat\n#"}),
            "externalSetMarkChain",
        ),
        (
            json!({"externalSetMarkChain": "-j ACCEPT"}),
            "externalSetMarkChain",
        ),
    ] {
        let mut conf = json!({"cniVersion": "1.0.0", "name": unique("pm"), "type": "portmap",
                              "runtimeConfig": mappings, "prevResult": prev});
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        Call::new(&host, bin("portmap"), "ADD", &ctr.path)
            .within(PROMPT)
            .run(&conf.to_string())
            .err(7, key);
    }
    let tables = host
        .command("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(tables.contains("inet victim"), "{tables}");
    assert!(
        !tables.contains("rcni_portmap"),
        "a refused ADD made state: {tables}"
    );
    let filter = host
        .command("iptables-save")
        .args(["-t", "filter"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&filter.stdout).contains("RCNIX"));
}

/// A portmap attachment of network `net` for container `cid` (eth0) in `ctr`, at the host's
/// uplink subnets (192.168.77.0/24, fd77::/64, routed by `node_with_uplink`'s host).
fn portmap_conf(net: &str, ctr: &Netns, ips: &[&str], extra: Value) -> Value {
    let ips: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"address": ip, "interface": 0}))
        .collect();
    let mut conf = json!({
        "cniVersion": "1.1.0", "name": net, "type": "portmap",
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8081, "containerPort": 81, "protocol": "udp"}]},
        "prevResult": {"cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": ctr.path}], "ips": ips},
    });
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    conf
}

/// The `iptables-save -t nat` / `ip6tables-save -t nat` lines of `host` that contain `needle`.
fn nat_lines(host: &Netns, save: &str, needle: &str) -> Vec<String> {
    let out = host.command(save).args(["-t", "nat"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(|l| format!("{save}: {l}"))
        .collect()
}

/// Every rule and chain of one portmap attachment in `host`, on both backends: nftables rules
/// whose comment carries its key, iptables lines naming its key or its `RCNI-DN-…` chain.
fn portmap_state(host: &Netns, net: &str, cid: &str) -> Vec<String> {
    let owner = libcni::firewall::Owner {
        network: net,
        container_id: cid,
        ifname: "eth0",
    };
    let mut state: Vec<String> = host
        .nft_table_rules("inet", "rcni_portmap")
        .iter()
        .filter(|r| owner.owns(r["comment"].as_str().unwrap_or_default()))
        .map(Value::to_string)
        .collect();
    let chain = libcni::firewall::portmap_iptables::chain(&owner);
    for save in ["iptables-save", "ip6tables-save"] {
        state.extend(nat_lines(host, save, &chain));
        state.extend(
            nat_lines(host, save, &owner.key())
                .into_iter()
                .filter(|l| !l.contains(&chain)),
        );
    }
    state
}

/// portmap DEL and GC read only what they need (DEL: `runtimeConfig.portMappings`; GC: the
/// valid attachments), leniently: keys of the wrong type that ADD rejects, a malformed
/// `portMappings` and an unreadable `backend` do not fail them, and they remove the
/// attachment's rules from both backends (DEL never reads `backend`). A neighbour attachment's
/// rules stay.
#[test]
fn portmap_del_and_gc_survive_keys_of_the_wrong_type() {
    let (host, _ext) = conformance::node_with_uplink();
    let ctr = Netns::new("c");
    let net = unique("pm");
    let ips = ["192.168.77.50/24", "fd77::50/64"];
    let add = |cid: &str, backend: &str| {
        let conf = portmap_conf(&net, &ctr, &ips, json!({"backend": backend}));
        Call::new(&host, bin("portmap"), "ADD", &ctr.path)
            .env("CNI_CONTAINERID", cid)
            .within(PROMPT)
            .run(&conf.to_string())
            .ok();
        assert!(
            !portmap_state(&host, &net, cid).is_empty(),
            "{cid}: no rules"
        );
    };
    add("neighbour4", "nftables");
    add("neighbour6", "iptables");
    let neighbours = |host: &Netns| {
        [
            portmap_state(host, &net, "neighbour4"),
            portmap_state(host, &net, "neighbour6"),
        ]
    };
    let before = neighbours(&host);
    let rows: Vec<(&str, &str, Value)> = vec![
        ("DEL", "nftables", json!({"snat": "yes"})),
        (
            "DEL",
            "iptables",
            json!({"conditionsV4": 5, "conditionsV6": {"a": 1}}),
        ),
        (
            "DEL",
            "iptables",
            json!({"markMasqBit": "13", "masqAll": "no", "externalSetMarkChain": 7}),
        ),
        (
            "DEL",
            "nftables",
            json!({"runtimeConfig": {"portMappings": "8080:80"}}),
        ),
        (
            "DEL",
            "iptables",
            json!({"runtimeConfig": {"portMappings": [{"hostPort": "8080"}, 7]}}),
        ),
        ("DEL", "nftables", json!({"runtimeConfig": 5})),
        ("DEL", "iptables", json!({"backend": 7})),
        ("DEL", "nftables", json!({"backend": "pf"})),
        (
            "GC",
            "iptables",
            json!({"snat": "yes", "backend": 7, "runtimeConfig": 5}),
        ),
        (
            "GC",
            "nftables",
            json!({"conditionsV4": 5, "backend": "pf"}),
        ),
    ];
    for (i, (command, backend, broken)) in rows.into_iter().enumerate() {
        let cid = format!("c{i}");
        add(&cid, backend);
        let mut conf = portmap_conf(&net, &ctr, &ips, broken.clone());
        let call = Call::new(&host, bin("portmap"), command, &ctr.path)
            .env("CNI_CONTAINERID", &cid)
            .within(PROMPT);
        if command == "GC" {
            conf["cni.dev/valid-attachments"] = json!([
                {"containerID": "neighbour4", "ifname": "eth0"},
                {"containerID": "neighbour6", "ifname": "eth0"}]);
        }
        call.run(&conf.to_string()).ok();
        assert_eq!(
            portmap_state(&host, &net, &cid),
            Vec::<String>::new(),
            "{command} {broken} after an ADD on {backend} left rules"
        );
        assert_eq!(
            neighbours(&host),
            before,
            "{command} {broken} touched a neighbour"
        );
    }
}

/// iptables backend, dual-stack pod, every mapping with an IPv4 `hostIP`: no IPv6 chain is
/// made (nothing would jump to it), and DEL leaves nothing in either family. A chain left
/// empty without a jump (as earlier versions declared it) is found by name and removed.
#[test]
fn iptables_dual_stack_pod_with_an_ipv4_host_ip_leaves_no_ipv6_chain() {
    let (host, _ext) = conformance::node_with_uplink();
    let ctr = Netns::new("c");
    let net = unique("pm");
    let owner = libcni::firewall::Owner {
        network: &net,
        container_id: "ctr1",
        ifname: "eth0",
    };
    let chain = libcni::firewall::portmap_iptables::chain(&owner);
    let conf = portmap_conf(
        &net,
        &ctr,
        &["192.168.77.50/24", "fd77::50/64"],
        json!({"backend": "iptables", "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "192.168.77.1"}]}}),
    );
    let call = |command: &str| {
        Call::new(&host, bin("portmap"), command, &ctr.path)
            .within(PROMPT)
            .run(&conf.to_string())
    };
    call("ADD").ok();
    assert!(!nat_lines(&host, "iptables-save", &chain).is_empty());
    assert_eq!(
        nat_lines(&host, "ip6tables-save", &chain),
        Vec::<String>::new()
    );
    call("CHECK").ok();
    call("DEL").ok();
    assert_eq!(portmap_state(&host, &net, "ctr1"), Vec::<String>::new());

    // An empty chain of the attachment that nothing jumps to, in each family.
    for program in ["iptables", "ip6tables"] {
        let made = host
            .command(program)
            .args(["-t", "nat", "-N", &chain])
            .status()
            .unwrap();
        assert!(made.success());
    }
    call("DEL").ok();
    assert_eq!(portmap_state(&host, &net, "ctr1"), Vec::<String>::new());
}

// ---- The hostile-input table: every input × every plugin it applies to × commands ----------

const ALL: &[&str] = &["bridge", "host-local", "loopback", "portmap"];
/// The plugins that enter the container's namespace.
const IN_NETNS: &[&str] = &["bridge", "loopback"];
/// The plugins that write leases.
const LEASES: &[&str] = &["bridge", "host-local"];

/// What a call must answer: `None` success, else (code, text in `msg`).
type Want = Option<(u64, &'static str)>;

fn fails(code: u64, needle: &'static str) -> Want {
    Some((code, needle))
}

/// Files a row plants before its calls (given the network's lease directory and a directory
/// outside `dataDir`), returning what to remove afterwards.
type Plant = Box<dyn Fn(&std::path::Path, &std::path::Path) -> Vec<std::path::PathBuf>>;

/// One hostile input: the plugins it applies to, what it changes in the environment and the
/// config, files it plants, and per command the answer each of those plugins must give.
struct Row {
    what: String,
    plugins: &'static [&'static str],
    env: Vec<(&'static str, String)>,
    /// Keys set on the plugin's config: `key` at the top, `ipam.key` inside `ipam`, `-key`
    /// removes it.
    keys: Vec<(&'static str, Value)>,
    plant: Option<Plant>,
    /// Replaces the whole stdin (text that is not a config object).
    stdin: Option<String>,
    answers: Vec<(&'static str, Want)>,
}

fn row(what: impl Into<String>, plugins: &'static [&'static str]) -> Row {
    Row {
        what: what.into(),
        plugins,
        env: Vec::new(),
        keys: Vec::new(),
        plant: None,
        stdin: None,
        answers: Vec::new(),
    }
}

impl Row {
    fn env(mut self, key: &'static str, value: impl Into<String>) -> Row {
        self.env.push((key, value.into()));
        self
    }

    fn key(mut self, key: &'static str, value: Value) -> Row {
        self.keys.push((key, value));
        self
    }

    fn plant(
        mut self,
        f: impl Fn(&std::path::Path, &std::path::Path) -> Vec<std::path::PathBuf> + 'static,
    ) -> Row {
        self.plant = Some(Box::new(f));
        self
    }

    fn stdin(mut self, text: impl Into<String>) -> Row {
        self.stdin = Some(text.into());
        self
    }

    fn on(mut self, command: &'static str, want: Want) -> Row {
        self.answers.push((command, want));
        self
    }

    /// ADD and DEL both answer `want`.
    fn add_del(self, want: Want) -> Row {
        self.on("ADD", want).on("DEL", want)
    }
}

/// A node with a neighbour attachment on every plugin and both portmap backends; a row's
/// calls are for container `ctr1` in `ctr`.
struct Table {
    host: Netns,
    _ext: Netns,
    ctr: Netns,
    neighbour: Netns,
    root: tempfile::TempDir,
    net: String,
    br: String,
}

/// Everything outside the row's attachment that a row could change.
#[derive(Debug, PartialEq)]
struct State {
    host_links: Vec<String>,
    ctr_links: Vec<String>,
    neighbour_links: Vec<String>,
    /// Every path under the sandbox root (dataDir inside it) with its content; the lock and
    /// round-robin markers left out (successful calls rewrite them).
    files: std::collections::BTreeMap<String, String>,
    nft: String,
    iptables: Vec<String>,
}

impl Table {
    fn new() -> Table {
        let (host, ext) = conformance::node_with_uplink();
        let t = Table {
            ctr: Netns::new("c"),
            neighbour: Netns::new("n"),
            root: tempfile::tempdir().unwrap(),
            net: unique("hn"),
            br: unique("br"),
            host,
            _ext: ext,
        };
        std::fs::create_dir_all(t.data()).unwrap();
        std::fs::write(t.outside().join("precious"), "untouched").unwrap();
        let neighbour = |plugin: &str, conf: &Value, id: &str| {
            Call::new(&t.host, bin(plugin), "ADD", &t.neighbour.path)
                .env("CNI_CONTAINERID", id)
                .run(&conf.to_string())
                .ok();
        };
        for plugin in ALL {
            neighbour(plugin, &t.conf(plugin), "neighbour");
        }
        let mut iptables = t.conf("portmap");
        iptables["backend"] = json!("iptables");
        neighbour("portmap", &iptables, "neighbour6");
        t
    }

    fn data(&self) -> std::path::PathBuf {
        self.root.path().join("x/data")
    }

    fn outside(&self) -> std::path::PathBuf {
        self.root.path().to_path_buf()
    }

    /// The plugin's valid config for this network.
    fn conf(&self, plugin: &str) -> Value {
        let ipam = json!({"type": "host-local", "dataDir": self.data(),
                          "ranges": [[{"subnet": "10.70.0.0/27"}]]});
        let prev = json!({"cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": self.ctr.path}],
            "ips": [{"address": "192.168.77.50/24", "interface": 0},
                    {"address": "fd77::50/64", "interface": 0}]});
        let mut conf = json!({"cniVersion": "1.1.0", "name": self.net, "type": plugin});
        match plugin {
            "bridge" => {
                conf["bridge"] = json!(self.br);
                conf["ipMasq"] = json!(true);
                conf["ipam"] = ipam;
            }
            "host-local" => conf["ipam"] = ipam,
            "portmap" => {
                conf["runtimeConfig"] = json!({"portMappings": [
                    {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                    {"hostPort": 8081, "containerPort": 81, "protocol": "udp"}]});
                conf["prevResult"] = prev;
            }
            _ => {}
        }
        conf
    }

    /// The row's stdin for `plugin` and `command`: the valid config (with a `prevResult` for
    /// CHECK and the neighbours as valid attachments for GC), then the row's keys.
    fn stdin(&self, plugin: &str, command: &str, row: &Row) -> String {
        if let Some(text) = &row.stdin {
            return text.clone();
        }
        let mut conf = self.conf(plugin);
        if command == "CHECK" && conf.get("prevResult").is_none() {
            conf["prevResult"] = json!({"cniVersion": "1.1.0",
                "ips": [{"address": "10.70.0.9/27"}]});
        }
        if command == "GC" {
            conf["cni.dev/valid-attachments"] = json!([
                {"containerID": "neighbour", "ifname": "eth0"},
                {"containerID": "neighbour6", "ifname": "eth0"}]);
        }
        for (key, value) in &row.keys {
            let (remove, key) = match key.strip_prefix('-') {
                Some(key) => (true, key),
                None => (false, *key),
            };
            let (object, key) = match key.strip_prefix("ipam.") {
                Some(key) => (&mut conf["ipam"], key),
                None => (&mut conf, key),
            };
            let Some(object) = object.as_object_mut() else {
                continue;
            };
            if remove {
                object.remove(key);
            } else {
                object.insert(key.to_string(), value.clone());
            }
        }
        conf.to_string()
    }

    /// One call of the row for container `ctr1` in the row's namespace.
    fn call(&self, plugin: &str, command: &str, row: &Row) -> Outcome {
        let mut call = Call::new(&self.host, bin(plugin), command, &self.ctr.path).within(PROMPT);
        for (key, value) in &row.env {
            call = call.env(key, value);
        }
        call.run(&self.stdin(plugin, command, row))
    }

    fn state(&self) -> State {
        let strip = |text: Vec<u8>| -> Vec<String> {
            String::from_utf8_lossy(&text)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split(" [").next().unwrap().to_string())
                .collect()
        };
        let mut iptables = Vec::new();
        for save in ["iptables-save", "ip6tables-save"] {
            iptables.extend(strip(self.host.command(save).output().unwrap().stdout));
        }
        let nft = self
            .host
            .command("nft")
            .args(["-s", "list", "ruleset"])
            .output()
            .unwrap();
        State {
            host_links: self
                .host
                .link_names()
                .into_iter()
                .filter(|l| *l != self.br)
                .collect(),
            ctr_links: self.ctr.link_names(),
            neighbour_links: self.neighbour.link_names(),
            files: tree(self.root.path()),
            nft: String::from_utf8_lossy(&nft.stdout).into_owned(),
            iptables,
        }
    }
}

/// Every path under `dir` (relative) with its content, or `dir/`, `-> target`, `fifo`; not
/// host-local's bookkeeping, which every operation on a network rewrites.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            let file = entry.file_name().to_string_lossy().into_owned();
            if file == "lock"
                || file.starts_with("last_reserved_ip.")
                || name.ends_with(".owners/table")
            {
                continue;
            }
            let kind = entry.file_type().unwrap();
            let what = if kind.is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if kind.is_dir() {
                todo.push(path.clone());
                "dir/".into()
            } else if kind.is_file() {
                String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()
            } else {
                "special".into()
            };
            out.insert(name, what);
        }
    }
    out
}

/// Plants `make(path)` at every address of the network's range but its last (10.70.0.30), so
/// the ADD of a row must step over all of them.
fn at_every_address_but_one(
    make: fn(&std::path::Path, &std::path::Path),
) -> impl Fn(&std::path::Path, &std::path::Path) -> Vec<std::path::PathBuf> {
    move |dir, outside| {
        std::fs::create_dir_all(dir).unwrap();
        (3..30)
            .map(|i| {
                let path = dir.join(format!("10.70.0.{i}"));
                make(&path, outside);
                path
            })
            .collect()
    }
}

fn remove_any(path: &std::path::Path) {
    if path.is_dir() && !path.is_symlink() {
        std::fs::remove_dir_all(path).unwrap();
    } else {
        std::fs::remove_file(path).unwrap();
    }
}

/// One call of a row and, after a successful ADD, the DEL that undoes it: what went wrong.
fn answer(t: &Table, plugin: &str, command: &str, row: &Row, want: Want) -> Option<String> {
    let out = t.call(plugin, command, row);
    if out.stderr.contains("panicked") {
        return Some(format!("panicked: {out:?}"));
    }
    let msg = out.json["msg"].as_str().unwrap_or_default();
    match want {
        None if out.status != 0 => return Some(format!("expected success: {out:?}")),
        Some((code, _)) if out.status == 0 || out.json["code"].as_u64() != Some(code) => {
            return Some(format!("expected code {code}: {out:?}"));
        }
        Some((_, needle)) if !msg.contains(needle) => {
            return Some(format!("{msg:?} does not name {needle:?}"));
        }
        _ => {}
    }
    if command == "ADD" && want.is_none() {
        let undo = t.call(plugin, "DEL", row);
        if undo.status != 0 {
            return Some(format!("the DEL after it failed: {undo:?}"));
        }
    }
    None
}

/// The hostile inputs of issue 14 and more: each row runs for every plugin it applies to and
/// each of its commands; every answer must be the row's (a CNI error with the right code and a
/// message naming the problem, or success), prompt, without a panic, and nothing outside the
/// row's attachment may change: host and container links, the neighbour attachments' links,
/// leases and rules (both backends), every file under the sandbox (dataDir inside it). A call
/// that succeeds is followed by the DEL that must undo it.
#[test]
fn hostile_input_table() {
    let t = Table::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a namespace").unwrap();
    let fifo = dir.path().join("a-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let path = |p: &std::path::Path| p.display().to_string();
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mb = "a".repeat(1 << 20);
    let rows: Vec<Row> = vec![
        // Bad interface names.
        row("ifname of 16 bytes", ALL)
            .env("CNI_IFNAME", "x".repeat(16))
            .add_del(fails(4, "longer than 15"))
            .on("CHECK", fails(4, "CNI_IFNAME")),
        row("ifname with /", ALL)
            .env("CNI_IFNAME", "a/b")
            .add_del(fails(4, "CNI_IFNAME")),
        row("ifname .", ALL)
            .env("CNI_IFNAME", ".")
            .add_del(fails(4, "CNI_IFNAME")),
        row("ifname ..", ALL)
            .env("CNI_IFNAME", "..")
            .add_del(fails(4, "CNI_IFNAME")),
        row("empty ifname", ALL)
            .env("CNI_IFNAME", "")
            .add_del(fails(4, "CNI_IFNAME")),
        row("ifname with a space", ALL)
            .env("CNI_IFNAME", "a b")
            .add_del(fails(4, "CNI_IFNAME")),
        row("ifname with a colon", ALL)
            .env("CNI_IFNAME", "a:b")
            .add_del(fails(4, "CNI_IFNAME")),
        row("ifname with an apostrophe", ALL)
            .env("CNI_IFNAME", "e'th0")
            .on("ADD", None),
        row("ifname with an apostrophe, iptables backend", &["portmap"])
            .env("CNI_IFNAME", "e'th0")
            .key("backend", json!("iptables"))
            .on("ADD", None),
        // Bad bridge names.
        row("bridge name of 16 bytes", &["bridge"])
            .key("bridge", json!("b".repeat(16)))
            .on("ADD", fails(7, "bridge name"))
            .on("DEL", None),
        row("bridge name with /", &["bridge"])
            .key("bridge", json!("a/b"))
            .on("ADD", fails(7, "bridge name"))
            .on("DEL", None),
        row("empty bridge name", &["bridge"])
            .key("bridge", json!(""))
            .on("ADD", fails(7, "bridge name"))
            .on("DEL", None),
        row("bridge name of 1 MB", &["bridge"])
            .key("bridge", json!(mb))
            .on("ADD", fails(7, "bridge name"))
            .on("DEL", None),
        // Bad network names (host-local makes a directory of it).
        row("network name with /", ALL)
            .key("name", json!("a/b"))
            .add_del(fails(7, "\"a/b\"")),
        row("network name ..", ALL)
            .key("name", json!(".."))
            .add_del(fails(7, "\"..\"")),
        row("network name ../x", ALL)
            .key("name", json!("../x"))
            .add_del(fails(7, "\"../x\"")),
        row("network name .", ALL)
            .key("name", json!("."))
            .add_del(fails(7, "network name")),
        row("empty network name", ALL)
            .key("name", json!(""))
            .add_del(fails(7, "missing network name")),
        row("no network name", ALL)
            .key("-name", json!(null))
            .add_del(fails(7, "missing network name")),
        row("network name too long for a file name", LEASES)
            .key("name", json!("n".repeat(300)))
            .on("ADD", fails(5, "lease directory"))
            .on("DEL", None),
        row(
            "network name too long for a file name",
            &["loopback", "portmap"],
        )
        .key("name", json!("n".repeat(300)))
        .on("ADD", None),
        // Container IDs with odd characters, and a long one.
        row("container ID with /", ALL)
            .env("CNI_CONTAINERID", "a/b")
            .add_del(fails(4, "CNI_CONTAINERID")),
        row("container ID ..", ALL)
            .env("CNI_CONTAINERID", "..")
            .add_del(fails(4, "CNI_CONTAINERID")),
        row("container ID starting with -", ALL)
            .env("CNI_CONTAINERID", "-x")
            .add_del(fails(4, "CNI_CONTAINERID")),
        row("container ID with a newline", ALL)
            .env("CNI_CONTAINERID", "a\nb")
            .add_del(fails(4, "CNI_CONTAINERID")),
        row("container ID with a quote", ALL)
            .env("CNI_CONTAINERID", "a\"b")
            .add_del(fails(4, "CNI_CONTAINERID")),
        row("non-ASCII container ID", ALL)
            .env("CNI_CONTAINERID", "é")
            .add_del(fails(4, "CNI_CONTAINERID")),
        row("container ID of 10,000 characters", ALL)
            .env("CNI_CONTAINERID", "c".repeat(10_000))
            .on("ADD", None),
        // Huge values.
        row("mtu 2^40", &["bridge"])
            .key("mtu", json!(1u64 << 40))
            .on("ADD", fails(7, "mtu"))
            .on("DEL", None),
        row("mtu -1", &["bridge"])
            .key("mtu", json!(-1))
            .on("ADD", fails(7, "key \"mtu\""))
            .on("DEL", None),
        row("10 MB of an unknown key", ALL)
            .key("padding", json!("x".repeat(10 << 20)))
            .on("ADD", None),
        row("mtu 1,000,000", &["bridge"])
            .key("mtu", json!(1_000_000))
            .on("ADD", fails(7, "mtu"))
            .on("DEL", None),
        row("vlan 5000", &["bridge"])
            .key("vlan", json!(5000))
            .on("ADD", fails(7, "vlan"))
            .on("DEL", None),
        row("vlan -1", &["bridge"])
            .key("vlan", json!(-1))
            .on("ADD", fails(7, "vlan"))
            .on("DEL", None),
        row("hostPort 70000", &["portmap"])
            .key(
                "runtimeConfig",
                json!({"portMappings": [
                {"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}]}),
            )
            .on("ADD", fails(7, "hostPort 70000"))
            .on("DEL", None),
        row("containerPort 0", &["portmap"])
            .key(
                "runtimeConfig",
                json!({"portMappings": [
                {"hostPort": 80, "containerPort": 0, "protocol": "tcp"}]}),
            )
            .on("ADD", fails(7, "containerPort 0"))
            .on("DEL", None),
        row("hostPort 1e20", &["portmap"])
            .key(
                "runtimeConfig",
                json!({"portMappings": [
                {"hostPort": 1e20, "containerPort": 80, "protocol": "tcp"}]}),
            )
            .on("ADD", fails(7, "hostPort"))
            .on("DEL", None),
        row("markMasqBit 32", &["portmap"])
            .key("backend", json!("iptables"))
            .key("markMasqBit", json!(32))
            .on("ADD", fails(7, "markMasqBit"))
            .on("DEL", None),
        row("externalSetMarkChain of 29 characters", &["portmap"])
            .key("externalSetMarkChain", json!("C".repeat(29)))
            .on("ADD", fails(7, "externalSetMarkChain"))
            .on("DEL", None),
        row("a 1 MB condition", &["portmap"])
            .key("conditionsV4", json!([mb]))
            .on("ADD", fails(7, "conditionsV4"))
            .on("DEL", None),
        row("JSON nested 100,000 deep", ALL)
            .stdin(format!(
                r#"{{"cniVersion": "1.1.0", "name": "n", "args": {nested}}}"#
            ))
            .add_del(fails(6, "recursion limit")),
        row("a 1 MB dataDir", LEASES)
            .key("ipam.dataDir", json!(format!("/{mb}")))
            .on("ADD", fails(5, "lease directory"))
            .on("DEL", None),
        row("100 KB of CNI_ARGS", ALL)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K={}", "v".repeat(100_000)),
            )
            .on("ADD", None),
        // Wrong types.
        row("cniVersion a number", ALL)
            .key("cniVersion", json!(1.1))
            .add_del(fails(6, "cniVersion")),
        row("name a number", ALL)
            .key("name", json!(7))
            .add_del(fails(6, "name")),
        row("ipam a string", ALL)
            .key("ipam", json!("host-local"))
            .add_del(fails(6, "ipam")),
        row("mtu a string", &["bridge"])
            .key("mtu", json!("1500"))
            .on("ADD", fails(7, "key \"mtu\""))
            .on("DEL", None),
        row("hairpinMode a string", &["bridge"])
            .key("hairpinMode", json!("yes"))
            .on("ADD", fails(7, "hairpinMode"))
            .on("DEL", None),
        row("ranges a string", LEASES)
            .key("ipam.ranges", json!("10.70.0.0/27"))
            .on("ADD", fails(7, "ipam.ranges"))
            .on("DEL", None),
        row("portMappings a string", &["portmap"])
            .key("runtimeConfig", json!({"portMappings": "8080:80"}))
            .on("ADD", fails(7, "portMappings"))
            .on("DEL", None),
        row("snat a string", &["portmap"])
            .key("snat", json!("yes"))
            .on("ADD", fails(7, "snat"))
            .on("DEL", None),
        // loopback reads no prevResult.
        row("prevResult a string", &["portmap", "bridge"])
            .key("prevResult", json!("none"))
            .on("CHECK", fails(6, "prevResult")),
        row(
            "valid-attachments a string",
            &["bridge", "host-local", "portmap"],
        )
        .key("cni.dev/valid-attachments", json!("all"))
        .on("GC", fails(6, "valid-attachments")),
        row("stdin a JSON array", ALL)
            .stdin("[]")
            .add_del(fails(6, "not a JSON object")),
        row("stdin cut short", ALL)
            .stdin(r#"{"cniVersion": "1.1.0", "name": "#)
            .add_del(fails(6, "error parsing")),
        row("empty stdin", ALL)
            .stdin("")
            .add_del(fails(6, "error parsing")),
        // Missing keys.
        row("no prevResult", &["portmap"])
            .key("-prevResult", json!(null))
            .on("ADD", fails(7, "prevResult"))
            .on("DEL", None),
        row("no ranges", LEASES)
            .key("ipam.ranges", json!(null))
            .on("ADD", fails(7, "ranges"))
            .on("DEL", None),
        row(
            "GC without valid-attachments",
            &["bridge", "host-local", "portmap"],
        )
        .key("-cni.dev/valid-attachments", json!(null))
        .on("GC", fails(7, "valid-attachments")),
        row("no CNI_PATH", ALL)
            .env("CNI_PATH", "")
            .add_del(fails(4, "CNI_PATH")),
        row("unknown CNI_COMMAND", ALL)
            .env("CNI_COMMAND", "FROB")
            .on("ADD", fails(4, "FROB")),
        // Unknown versions.
        row("cniVersion 9.9.9", ALL)
            .key("cniVersion", json!("9.9.9"))
            .add_del(fails(1, "9.9.9"))
            .on("CHECK", fails(1, "9.9.9")),
        row("empty cniVersion", ALL)
            .key("cniVersion", json!(""))
            .add_del(fails(1, "cniVersion")),
        row("cniVersion 1.1.0-rc1", ALL)
            .key("cniVersion", json!("1.1.0-rc1"))
            .add_del(fails(1, "1.1.0-rc1")),
        row("CHECK under 0.3.1", ALL)
            .key("cniVersion", json!("0.3.1"))
            .on("CHECK", fails(1, "CHECK")),
        row("GC under 1.0.0", &["bridge", "host-local", "portmap"])
            .key("cniVersion", json!("1.0.0"))
            .on("GC", fails(1, "GC")),
        // Namespaces that are not the container's network namespace.
        row("a directory as CNI_NETNS", IN_NETNS)
            .env("CNI_NETNS", path(dir.path()))
            .on("ADD", fails(4, "is not a network namespace"))
            .on("CHECK", fails(4, "is not a network namespace"))
            .on("DEL", None),
        row("a regular file as CNI_NETNS", IN_NETNS)
            .env("CNI_NETNS", path(&file))
            .on("ADD", fails(4, "is not a network namespace"))
            .on("DEL", None),
        row("a mount namespace as CNI_NETNS", IN_NETNS)
            .env("CNI_NETNS", "/proc/self/ns/mnt")
            .on("ADD", fails(4, "is not a network namespace"))
            .on("DEL", None),
        row("a FIFO as CNI_NETNS", IN_NETNS)
            .env("CNI_NETNS", path(&fifo))
            .on("ADD", fails(4, "is not a network namespace"))
            .on("DEL", None),
        row("a missing CNI_NETNS", IN_NETNS)
            .env("CNI_NETNS", path(&dir.path().join("gone")))
            .on("ADD", fails(3, "does not exist"))
            .on("DEL", None),
        row("the plugin's own namespace as CNI_NETNS", ALL)
            .env("CNI_NETNS", "/proc/self/ns/net")
            .on("ADD", fails(8, "own network namespace"))
            .on("DEL", None),
        row("a directory as CNI_NETNS", &["host-local", "portmap"])
            .env("CNI_NETNS", path(dir.path()))
            .on("ADD", None),
        // The lease directory's entries as something else.
        row("a directory at every address but one", LEASES)
            .plant(at_every_address_but_one(|p, _| {
                std::fs::create_dir(p).unwrap()
            }))
            .on("ADD", None),
        row("a symlink at every address but one", LEASES)
            .plant(at_every_address_but_one(|p, outside| {
                std::os::unix::fs::symlink(outside.join("precious"), p).unwrap()
            }))
            .on("ADD", None),
        row("a FIFO at every address but one", LEASES)
            .plant(at_every_address_but_one(|p, _| {
                nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap()
            }))
            .on("ADD", None),
        row("the round-robin marker a symlink", LEASES)
            .plant(|dir, outside| {
                let marker = dir.join("last_reserved_ip.0");
                let _ = std::fs::remove_file(&marker);
                std::os::unix::fs::symlink(outside.join("precious"), &marker).unwrap();
                vec![]
            })
            .on("ADD", None),
        row("the round-robin marker a directory", LEASES)
            .plant(|dir, _| {
                let marker = dir.join("last_reserved_ip.0");
                let _ = std::fs::remove_file(&marker);
                std::fs::create_dir(&marker).unwrap();
                vec![marker]
            })
            .on("ADD", fails(5, "last_reserved_ip.0")),
        row("the lock a directory", LEASES)
            .plant(|dir, _| {
                let lock = dir.join("lock");
                let _ = std::fs::remove_file(&lock);
                std::fs::create_dir(&lock).unwrap();
                vec![lock]
            })
            .add_del(fails(5, "lock")),
        row("the network's lease directory a file", LEASES)
            .key("ipam.dataDir", json!(t.outside().join("plain")))
            .plant({
                let net = t.net.clone();
                move |_, outside| {
                    let dir = outside.join("plain");
                    std::fs::create_dir(&dir).unwrap();
                    std::fs::write(dir.join(&net), "x").unwrap();
                    vec![dir]
                }
            })
            .on("ADD", fails(5, "lease directory"))
            .on("DEL", None),
        row("dataDir a file", LEASES)
            .key("ipam.dataDir", json!(t.outside().join("precious")))
            .on("ADD", fails(5, "lease directory"))
            .on("DEL", None),
        row("resolvConf a directory", LEASES)
            .key("ipam.resolvConf", json!(dir.path()))
            .on("ADD", fails(5, "resolvConf")),
        row("resolvConf a FIFO", LEASES)
            .key("ipam.resolvConf", json!(fifo))
            .on("ADD", fails(5, "resolvConf")),
        row("resolvConf an endless device", LEASES)
            .key("ipam.resolvConf", json!("/dev/zero"))
            .on("ADD", fails(5, "resolvConf")),
    ];
    let before = t.state();
    let mut failures = Vec::new();
    for row in &rows {
        for plugin in row.plugins {
            let planted = row
                .plant
                .as_ref()
                .map(|plant| plant(&t.data().join(&t.net), &t.outside()));
            let before_row = t.state();
            for (command, want) in &row.answers {
                let label = format!("{} ({plugin} {command})", row.what);
                eprintln!("{label}");
                failures.extend(
                    answer(&t, plugin, command, row, *want).map(|e| format!("{label}: {e}")),
                );
                if t.state() != before_row {
                    failures.push(format!(
                        "{label}: changed what is not its own: {:#?} -> {:#?}",
                        before_row,
                        t.state()
                    ));
                }
            }
            for path in planted.into_iter().flatten() {
                remove_any(&path);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(t.state(), before);
}
