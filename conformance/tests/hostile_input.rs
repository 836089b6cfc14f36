//! Hostile and broken input, black-box: configs, environments and files on disk that once made a
//! plugin or cnitool hang, panic, leak or write where it must not. Each answer must be a clean
//! CNI error with the right code (or success), promptly, with nothing half-done.

use std::time::Duration;

use conformance::{Call, HostLocalNet, Netns, Workdir, bin, cnitool, unique};
use serde_json::{Value, json};

/// Long enough for a debug build on a busy machine, far below a hang.
const PROMPT: Duration = Duration::from_secs(10);

/// A bridge network with host-local IPAM (its own `dataDir`) on a unique bridge.
fn bridge_conf(data: &std::path::Path, subnet: &str) -> Value {
    json!({
        "cniVersion": "1.1.0", "name": unique("hn"), "type": "bridge", "bridge": unique("br"),
        "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": subnet}]]},
    })
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

/// One hostile request: the plugin, environment overrides, stdin, and the answer it must give
/// (`None`: success; `Some((code, text in msg))`).
type Row = (
    &'static str,
    Vec<(&'static str, String)>,
    Value,
    Option<(u64, &'static str)>,
);

/// Bad names, huge and mistyped values, a directory as netns: each a clean, prompt answer with
/// the right code, and nothing outside the attachment changes (host links, leases).
#[test]
fn hostile_requests_get_clean_answers() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let data = tempfile::tempdir().unwrap();
    let good = bridge_conf(data.path(), "10.68.0.0/24");
    let with = |key: &str, value: Value| {
        let mut conf = good.clone();
        conf[key] = value;
        conf
    };
    let host_local = json!({"cniVersion": "1.1.0", "name": good["name"], "type": "host-local",
        "ipam": good["ipam"], "padding": "x".repeat(10 << 20)});
    let dir_ns = data.path().join("a-directory");
    std::fs::create_dir(&dir_ns).unwrap();
    let rows: Vec<Row> = vec![
        (
            "bridge",
            vec![],
            with("name", json!("a/b")),
            Some((7, "\"a/b\"")),
        ),
        (
            "bridge",
            vec![],
            with("name", json!("..")),
            Some((7, "\"..\"")),
        ),
        ("bridge", vec![], with("name", json!(7)), Some((6, "name"))),
        (
            "bridge",
            vec![],
            with("mtu", json!(-1)),
            Some((7, "key \"mtu\"")),
        ),
        (
            "bridge",
            vec![],
            with("mtu", json!("9000")),
            Some((7, "key \"mtu\"")),
        ),
        (
            "bridge",
            vec![],
            with(
                "ipam",
                json!({"type": "host-local", "dataDir": data.path(), "ranges": "x"}),
            ),
            Some((7, "ipam.ranges")),
        ),
        (
            "bridge",
            vec![],
            with("bridge", json!("x".repeat(16))),
            Some((7, "bridge name")),
        ),
        (
            "bridge",
            vec![("CNI_NETNS", dir_ns.display().to_string())],
            good.clone(),
            Some((4, "is not a network namespace")),
        ),
        (
            "bridge",
            vec![("CNI_IFNAME", "../x".into())],
            good.clone(),
            Some((4, "CNI_IFNAME")),
        ),
        (
            "bridge",
            vec![("CNI_CONTAINERID", "a/b".into())],
            good.clone(),
            Some((4, "CNI_CONTAINERID")),
        ),
        (
            "loopback",
            vec![("CNI_NETNS", dir_ns.display().to_string())],
            good.clone(),
            Some((4, "is not a network namespace")),
        ),
        // 10 MB of an unknown key: read, ignored, answered.
        ("host-local", vec![], host_local.clone(), None),
        (
            "host-local",
            vec![("CNI_COMMAND", "DEL".into())],
            host_local,
            None,
        ),
    ];
    // The network's bridge may stay after an ADD that fails past creating it (IPAM refused
    // its config), as with the reference; it is the network's, not the attachment's.
    let br = good["bridge"].as_str().unwrap();
    let host_links =
        || -> Vec<String> { host.link_names().into_iter().filter(|l| l != br).collect() };
    let links_before = host_links();
    for (plugin, env, stdin, want) in rows {
        let mut call = Call::new(&host, bin(plugin), "ADD", &ctr.path).within(PROMPT);
        for (key, value) in &env {
            call = call.env(key, value);
        }
        let out = call.run(&stdin.to_string());
        match want {
            None => assert_eq!(out.status, 0, "{plugin} {env:?}: {out:?}"),
            Some((code, needle)) => out.err(code, needle),
        }
        assert!(
            !out.stderr.contains("panicked"),
            "{plugin} {env:?}: {out:?}"
        );
        if want.is_some() {
            assert_eq!(
                lease_count(data.path(), &good),
                0,
                "{plugin} {env:?} left a lease"
            );
        }
        assert_eq!(
            host_links(),
            links_before,
            "{plugin} {env:?} changed host links"
        );
        assert!(ctr.link("eth0").is_none(), "{plugin} {env:?} left eth0");
    }
    assert_eq!(
        lease_count(data.path(), &good),
        0,
        "the 10 MB config's DEL left its lease"
    );
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
