//! portmap's nftables backend at scale and without processes: DEL among 300 pods removes
//! exactly the pod's rules; ADD, CHECK and DEL run no other program (traced with strace), also
//! when they flush a UDP mapping's conntrack entries, and flush only those; DEL
//! removes the rules an earlier version made through `nft` text and those the Go portmap's
//! nftables backend made (`ip`/`ip6 cni_hostport`, comment = container ID); DEL deletes by the
//! handles ADD recorded, never another pod's rule through a stale record; GC drops records.

use std::path::Path;

use conformance::{
    BridgeConf, Call, Netns, Workdir, bin, cnitool_container_id, cnitool_env, executed_programs,
    execve_tracer, portmap_conflist, portmap_plugin, result_ips, run_ok,
};
use libcni::firewall::Owner;
use serde_json::{Value, json};

const NET: &str = "pmtear";

/// A host namespace with `lo` up.
fn host() -> Netns {
    let host = Netns::new("h");
    host.ip(&["link", "set", "lo", "up"]);
    host
}

/// The rules of `table inet rcni_portmap` in `ns` (JSON, handles included).
fn portmap_rules(ns: &Netns) -> Vec<Value> {
    table_rules(ns, "inet", "rcni_portmap")
}

fn table_rules(ns: &Netns, family: &str, table: &str) -> Vec<Value> {
    ns.nft_table_rules(family, table)
}

fn comment(rule: &Value) -> &str {
    rule["comment"].as_str().unwrap_or_default()
}

/// The portmap plugin's stdin for one container at `ip` (a synthetic prevResult, as the
/// bridge plugin would pass it), forwarding TCP `host_port` to its port 80.
fn portmap_conf(extra: Value, netns: &Path, ip: &str, host_port: u16) -> String {
    let mut conf = json!({
        "cniVersion": "1.1.0", "name": NET, "type": "portmap", "backend": "nftables",
        "runtimeConfig": {"portMappings": [
            {"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": {
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": netns}],
            "ips": [{"address": ip, "interface": 0}],
        },
    });
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    conf.to_string()
}

fn owner_comment(container_id: &str) -> String {
    Owner {
        network: NET,
        container_id,
        ifname: "eth0",
    }
    .comment()
}

/// 300 pods with a hostPort each on one bridge network (299 through portmap ADD with their
/// prevResult, one through the whole chain loopback + bridge + host-local + portmap): DEL of
/// the chain's pod removes its three rules (DNAT, hairpin and localhost masquerade) and leaves
/// every other rule as it was, handles included.
#[test]
fn del_among_300_pods_removes_exactly_its_rules() {
    let host = host();
    let data = tempfile::tempdir().unwrap();
    let work = Workdir::new();
    work.write_conf(
        "10-pm.conflist",
        &portmap_conflist(
            "1.1.0",
            NET,
            BridgeConf::new(&conformance::unique("pt"))
                .ranges(
                    json!([[{"subnet": "10.97.0.0/22", "rangeStart": "10.97.0.2",
                                 "rangeEnd": "10.97.0.9"}]]),
                )
                .data_dir(data.path())
                .with(&json!({"isGateway": true})),
            portmap_plugin(&json!({"backend": "nftables"})),
        ),
    );
    // The chain's pod makes the bridge (and the route to the pods' subnet portmap looks up).
    let pod = Netns::new("c");
    let caps = json!({"portMappings": [
        {"hostPort": 9000, "containerPort": 80, "protocol": "tcp"}]})
    .to_string();
    let chain = |verb: &str| {
        cnitool_env(
            &host,
            &work,
            &[verb, NET, pod.path.to_str().unwrap()],
            &[("CAP_ARGS", &caps)],
        )
    };
    let result = chain("add").ok().clone();
    assert!(
        result_ips(&result)
            .iter()
            .any(|ip| ip.starts_with("10.97.0."))
    );
    let others = Netns::new("c");
    for i in 1..300u16 {
        let ip = format!("10.97.{}.{}/22", 1 + i / 250, i % 250 + 1);
        let conf = portmap_conf(json!({}), &others.path, &ip, 9000 + i);
        Call::new(&host, bin("portmap"), "ADD", &others.path)
            .env("CNI_CONTAINERID", &format!("other{i}"))
            .run(&conf)
            .ok();
    }
    let cid = cnitool_container_id(&pod.path);
    let before = portmap_rules(&host);
    // Two hook jumps, then DNAT, hairpin and localhost masquerade per pod.
    assert_eq!(before.len(), 2 + 300 * 3);
    let theirs: Vec<Value> = before
        .iter()
        .filter(|r| !comment(r).contains(&cid))
        .cloned()
        .collect();
    assert_eq!(theirs.len(), before.len() - 3);

    let started = std::time::Instant::now();
    chain("del").ok();
    eprintln!("DEL among 300 pods: {:?}", started.elapsed());

    let mut after = portmap_rules(&host);
    let mut theirs = theirs;
    let key = |r: &Value| r["handle"].as_u64();
    after.sort_by_key(key);
    theirs.sort_by_key(key);
    assert_eq!(after, theirs);
}

/// With the nftables backend and no conditions, ADD, CHECK and DEL (with rules to remove, on a
/// node whose iptables has nat chains of its own) execute nothing but the plugin: no `nft`,
/// no `iptables`.
#[test]
fn add_check_and_del_run_no_other_program() {
    let host = host();
    // The route to the container's address, for route_localnet.
    let _peer = host.veth_peer("p", &["10.96.0.1/24"], &["10.96.0.2/24"]);
    // iptables-nft's nat table exists, without any chain of ours or of the Go portmap.
    host.use_iptables_nat();
    let ctr = Netns::new("c");
    let conf = portmap_conf(
        json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]}}),
        &ctr.path,
        "10.96.0.5/24",
        8080,
    );
    let stale = [Flow::udp("192.0.2.10", "10.96.0.5", 40000, 8080, None)];
    let trace_dir = tempfile::tempdir().unwrap();
    for verb in ["ADD", "CHECK", "DEL"] {
        track(&host, &stale);
        let trace = trace_dir.path().join(verb);
        Call::new(&host, bin("portmap"), verb, &ctr.path)
            .under(&execve_tracer(&trace))
            .run(&conf)
            .ok();
        assert_eq!(executed_programs(&trace), ["portmap"], "{verb}");
        let rules = portmap_rules(&host)
            .iter()
            .filter(|r| comment(r) == owner_comment("ctr1"))
            .count();
        assert_eq!(rules, if verb == "DEL" { 0 } else { 4 }, "after {verb}");
        // ADD and DEL flushed the UDP port's entry (in process); CHECK leaves it.
        let left = if verb == "CHECK" {
            vec![("udp", 8080)]
        } else {
            vec![]
        };
        assert_eq!(tracked(&host), left, "after {verb}");
        if verb == "CHECK" {
            untrack(&host, &stale);
        }
    }
}

/// A conntrack entry as `conntrack -I` makes it: protocol, addresses, ports and zone.
struct Flow {
    proto: &'static str,
    src: &'static str,
    dst: &'static str,
    sport: u16,
    dport: u16,
    zone: Option<u16>,
}

impl Flow {
    fn udp(
        src: &'static str,
        dst: &'static str,
        sport: u16,
        dport: u16,
        zone: Option<u16>,
    ) -> Flow {
        Flow {
            proto: "udp",
            src,
            dst,
            sport,
            dport,
            zone,
        }
    }

    fn tcp(src: &'static str, dst: &'static str, sport: u16, dport: u16) -> Flow {
        Flow {
            proto: "tcp",
            ..Flow::udp(src, dst, sport, dport, None)
        }
    }

    /// `conntrack` arguments naming the flow.
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["-p", self.proto, "-s", self.src, "-d", self.dst, "--sport"]
            .map(String::from)
            .to_vec();
        args.extend([
            self.sport.to_string(),
            "--dport".into(),
            self.dport.to_string(),
        ]);
        if let Some(zone) = self.zone {
            args.extend(["--zone".into(), zone.to_string()]);
        }
        args
    }
}

/// Makes the entries of `flows` in `ns` (a TCP one established), as traffic would have.
fn track(ns: &Netns, flows: &[Flow]) {
    for flow in flows {
        let mut cmd = ns.command("conntrack");
        cmd.arg("-I").args(flow.args()).args(["--timeout", "300"]);
        if flow.proto == "tcp" {
            cmd.args(["--state", "ESTABLISHED"]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Deletes the entries of `flows` in `ns` (the test's own cleanup between steps).
fn untrack(ns: &Netns, flows: &[Flow]) {
    for flow in flows {
        run_ok(ns.command("conntrack").arg("-D").args(flow.args()));
    }
}

/// The (protocol, original destination port) of every conntrack entry in `ns`, both families,
/// sorted.
fn tracked(ns: &Netns) -> Vec<(&'static str, u16)> {
    let mut entries = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let listing = run_ok(ns.command("conntrack").args(["-L", "-f", family]));
        for line in String::from_utf8_lossy(&listing).lines() {
            let proto = ["udp", "tcp"].into_iter().find(|p| line.starts_with(p));
            // The first dport= is the original direction's.
            let dport = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("dport="))
                .and_then(|p| p.parse().ok());
            entries.push((proto.unwrap_or("other"), dport.unwrap_or(0)));
        }
    }
    entries.sort();
    entries
}

/// ADD and DEL of a UDP mapping delete exactly the UDP entries to its host port, in both
/// families and every zone: entries to another port, and TCP ones to the same port, stay.
#[test]
fn udp_mapping_flushes_only_its_ports_conntrack_entries() {
    let host = host();
    let ctr = Netns::new("c");
    let conf = portmap_conf(
        json!({"snat": false,
               "runtimeConfig": {"portMappings": [
                   {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
                   {"hostPort": 5353, "containerPort": 53, "protocol": "tcp"}]},
               "prevResult": {
                   "cniVersion": "1.1.0",
                   "interfaces": [{"name": "eth0", "sandbox": ctr.path}],
                   "ips": [{"address": "10.96.0.5/24", "interface": 0},
                           {"address": "fd96::5/64", "interface": 0}]}}),
        &ctr.path,
        "10.96.0.5/24",
        5353,
    );
    let stale = [
        Flow::udp("192.0.2.10", "10.96.0.5", 40000, 5353, None),
        Flow::udp("192.0.2.11", "10.96.0.5", 40001, 5353, Some(7)),
        Flow::udp("2001:db8::10", "fd96::5", 40000, 5353, None),
        Flow::udp("2001:db8::11", "fd96::5", 40001, 5353, Some(7)),
    ];
    let others = [
        Flow::udp("192.0.2.10", "10.96.0.5", 40002, 5354, None),
        Flow::udp("2001:db8::10", "fd96::5", 40002, 5354, None),
        Flow::tcp("192.0.2.10", "10.96.0.5", 40003, 5353),
        Flow::tcp("2001:db8::10", "fd96::5", 40003, 5353),
    ];
    track(&host, &others);
    let kept = vec![("tcp", 5353), ("tcp", 5353), ("udp", 5354), ("udp", 5354)];
    for verb in ["ADD", "DEL"] {
        track(&host, &stale);
        assert_eq!(tracked(&host).len(), 8, "before {verb}");
        Call::new(&host, bin("portmap"), verb, &ctr.path)
            .env("CNI_CONTAINERID", "ctr1")
            .run(&conf)
            .ok();
        assert_eq!(tracked(&host), kept, "after {verb}");
    }
}

/// Rules an earlier version made through `nft` text (same table, chains and comments) are
/// removed by DEL, and only the attachment's.
#[test]
fn del_removes_rules_made_through_nft_text() {
    let host = host();
    let (mine, theirs) = (owner_comment("old1"), owner_comment("old2"));
    let mut script = "create table inet rcni_portmap
        add chain inet rcni_portmap prerouting { type nat hook prerouting priority dstnat; policy accept; }
        add chain inet rcni_portmap output { type nat hook output priority -100; policy accept; }
        add chain inet rcni_portmap postrouting { type nat hook postrouting priority srcnat; policy accept; }
        add chain inet rcni_portmap hostports
        add rule inet rcni_portmap prerouting fib daddr type local jump hostports
        add rule inet rcni_portmap output fib daddr type local jump hostports
    "
    .to_string();
    for (comment, v4, v6) in [
        (&mine, "10.95.0.5", "fd95::5"),
        (&theirs, "10.95.0.6", "fd95::6"),
    ] {
        script.push_str(&format!(
            "add rule inet rcni_portmap hostports meta nfproto ipv4 tcp dport 8080 dnat ip to {v4}:80 comment \"{comment}\"
             add rule inet rcni_portmap hostports meta nfproto ipv6 tcp dport 8080 dnat ip6 to [{v6}]:80 comment \"{comment}\"
             add rule inet rcni_portmap postrouting ct status dnat ip saddr 10.95.0.0/24 ip daddr {v4} masquerade comment \"{comment}\"
             add rule inet rcni_portmap postrouting ct status dnat ip saddr 127.0.0.1 ip daddr {v4} masquerade comment \"{comment}\"
             add rule inet rcni_portmap postrouting ct status dnat ip6 saddr fd95::/64 ip6 daddr {v6} masquerade comment \"{comment}\"
            "
        ));
    }
    host.nft(&script);
    let before = portmap_rules(&host);
    assert_eq!(before.len(), 2 + 2 * 5);
    let ctr = Netns::new("c");
    // DEL as a runtime sends it after the container is gone: no prevResult.
    let conf = json!({"cniVersion": "1.1.0", "name": NET, "type": "portmap",
                      "runtimeConfig": {"portMappings": [
                          {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}});
    Call::new(&host, bin("portmap"), "DEL", &ctr.path)
        .env("CNI_CONTAINERID", "old1")
        .run(&conf.to_string())
        .ok();
    let kept: Vec<Value> = before.into_iter().filter(|r| comment(r) != mine).collect();
    assert_eq!(portmap_rules(&host), kept);
}

/// What the Go portmap's nftables backend makes for a container, as its test dump shows.
fn go_portmap_state(family: &str, cid: &str, ip: &str, target: &str) -> String {
    let localhost = if family == "ip" {
        format!(
            "add rule ip cni_hostport masquerading ip saddr 127.0.0.1 ip daddr {ip} masquerade comment \"{cid}\"\n"
        )
    } else {
        String::new()
    };
    format!(
        "add table {family} cni_hostport {{ comment \"CNI portmap plugin\" ; }}
         add chain {family} cni_hostport hostip_hostports
         add chain {family} cni_hostport hostports
         add chain {family} cni_hostport hostports_all
         add chain {family} cni_hostport masquerading {{ type nat hook postrouting priority 100 ; }}
         add chain {family} cni_hostport output {{ type nat hook output priority -100 ; }}
         add chain {family} cni_hostport prerouting {{ type nat hook prerouting priority -100 ; }}
         add rule {family} cni_hostport hostports tcp dport 8080 dnat to {target}:80 comment \"{cid}\"
         add rule {family} cni_hostport hostports {family} daddr {ip} tcp dport 8083 dnat to {target}:83 comment \"{cid}\"
         add rule {family} cni_hostport masquerading {family} saddr {ip} {family} daddr {ip} masquerade comment \"{cid}\"
         {localhost}"
    )
}

/// DEL removes the Go portmap's nftables rules of the container in both families and leaves
/// its tables, chains and the other containers' rules.
#[test]
fn del_removes_what_the_go_portmap_made_in_nftables() {
    let host = host();
    let mut script = String::new();
    for (cid, n) in [("goctr1", 5), ("goctr2", 6)] {
        script.push_str(&go_portmap_state(
            "ip",
            cid,
            &format!("10.94.0.{n}"),
            &format!("10.94.0.{n}"),
        ));
        script.push_str(&go_portmap_state(
            "ip6",
            cid,
            &format!("fd94::{n}"),
            &format!("[fd94::{n}]"),
        ));
    }
    script.push_str(
        "add rule ip cni_hostport hostports_all jump hostports
         add rule ip cni_hostport prerouting fib daddr type local jump hostports_all\n",
    );
    host.nft(&script);
    let before: Vec<Value> = ["ip", "ip6"]
        .iter()
        .flat_map(|f| table_rules(&host, f, "cni_hostport"))
        .collect();
    assert_eq!(before.len(), 2 * (4 + 3) + 2);
    let ctr = Netns::new("c");
    let conf = portmap_conf(json!({}), &ctr.path, "10.94.0.5/24", 8080);
    Call::new(&host, bin("portmap"), "DEL", &ctr.path)
        .env("CNI_CONTAINERID", "goctr1")
        .run(&conf)
        .ok();
    let after: Vec<Value> = ["ip", "ip6"]
        .iter()
        .flat_map(|f| table_rules(&host, f, "cni_hostport"))
        .collect();
    let kept: Vec<Value> = before
        .into_iter()
        .filter(|r| comment(r) != "goctr1")
        .collect();
    assert_eq!(after, kept);
}

/// The handle file ADD leaves for the attachment `container_id` of `host` (see
/// libcni::firewall::handles), and its text if it is there.
fn handle_file(host: &Netns, container_id: &str) -> (std::path::PathBuf, Option<String>) {
    let owner = Owner {
        network: NET,
        container_id,
        ifname: "eth0",
    };
    let path = libcni::firewall::handles::file_in(
        &host.path,
        libcni::firewall::handles::Kind::PortMappings,
        &owner,
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).ok();
    (path, text)
}

/// The handles of the rules in our table whose comment is the attachment's.
fn handles_of(host: &Netns, container_id: &str) -> Vec<u64> {
    let comment_of = owner_comment(container_id);
    let mut handles: Vec<u64> = portmap_rules(host)
        .iter()
        .filter(|r| comment(r) == comment_of)
        .filter_map(|r| r["handle"].as_u64())
        .collect();
    handles.sort();
    handles
}

/// A host namespace with a link towards the pods' subnet 10.96.0.0/24 (the hairpin rule
/// needs the route).
fn host_with_pod_route() -> Netns {
    let host = host();
    host.ip(&[
        "link",
        "add",
        "pods",
        "type",
        "veth",
        "peer",
        "name",
        "pods-peer",
    ]);
    host.ip(&["addr", "add", "10.96.0.1/24", "dev", "pods"]);
    host.ip(&["link", "set", "pods", "up"]);
    host.ip(&["link", "set", "pods-peer", "up"]);
    host
}

fn raw_portmap(host: &Netns, pod: &Netns, cid: &str, command: &str, conf: &str) {
    Call::new(host, bin("portmap"), command, &pod.path)
        .env("CNI_CONTAINERID", cid)
        .run(conf)
        .ok();
}

/// ADD records the handles the kernel gave its rules (a second ADD of the attachment adds to
/// them), DEL deletes exactly those and drops the file; without a trustworthy file (gone, as a
/// killed ADD leaves it, or torn) DEL lists and still removes every rule.
#[test]
fn del_deletes_by_the_handles_add_recorded() {
    let host = host_with_pod_route();
    let pod = Netns::new("c");
    let cid = conformance::unique("hd");
    let first = portmap_conf(json!({}), &pod.path, "10.96.0.2/24", 9100);
    let second = portmap_conf(json!({}), &pod.path, "10.96.0.2/24", 9101);
    raw_portmap(&host, &pod, &cid, "ADD", &first);
    let (path, text) = handle_file(&host, &cid);
    let recorded = |text: &str| -> Vec<u64> {
        let mut h: Vec<u64> = text
            .lines()
            .skip(1)
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        h.sort();
        h
    };
    let text = text.expect("ADD leaves a handle file");
    assert!(text.starts_with("complete 3\n"), "{text}");
    assert_eq!(recorded(&text), handles_of(&host, &cid));
    assert_eq!(handles_of(&host, &cid).len(), 3);

    raw_portmap(&host, &pod, &cid, "ADD", &second);
    let text = handle_file(&host, &cid).1.unwrap();
    assert_eq!(recorded(&text), handles_of(&host, &cid));
    assert_eq!(handles_of(&host, &cid).len(), 6);
    raw_portmap(&host, &pod, &cid, "DEL", &second);
    assert_eq!(handles_of(&host, &cid), Vec::<u64>::new());
    assert_eq!(handle_file(&host, &cid).1, None);

    for damage in ["complete 4\ninet rcni_portmap hostports 1\n", ""] {
        raw_portmap(&host, &pod, &cid, "ADD", &first);
        if damage.is_empty() {
            std::fs::remove_file(&path).unwrap();
        } else {
            std::fs::write(&path, damage).unwrap();
        }
        raw_portmap(&host, &pod, &cid, "DEL", &first);
        assert_eq!(handles_of(&host, &cid), Vec::<u64>::new(), "{damage:?}");
        assert_eq!(handle_file(&host, &cid).1, None);
    }
}

/// Handles restart when the table is made again: a pod's recorded handles then name another
/// pod's rules, and its DEL must see that (the comment) and delete nothing of theirs.
#[test]
fn stale_handles_never_delete_another_pods_rules() {
    let host = host_with_pod_route();
    let pod = Netns::new("c");
    let (a, b) = (conformance::unique("ha"), conformance::unique("hb"));
    let conf_a = portmap_conf(json!({}), &pod.path, "10.96.0.2/24", 9200);
    let conf_b = portmap_conf(json!({}), &pod.path, "10.96.0.3/24", 9201);
    raw_portmap(&host, &pod, &a, "ADD", &conf_a);
    let handles_a = handles_of(&host, &a);
    run_ok(
        host.command("nft")
            .args(["delete", "table", "inet", "rcni_portmap"]),
    );
    raw_portmap(&host, &pod, &b, "ADD", &conf_b);
    assert_eq!(
        handles_of(&host, &b),
        handles_a,
        "the handles were given out again"
    );
    let before = portmap_rules(&host);

    raw_portmap(&host, &pod, &a, "DEL", &conf_a);
    assert_eq!(portmap_rules(&host), before);
    assert_eq!(handle_file(&host, &a).1, None);
    raw_portmap(&host, &pod, &b, "DEL", &conf_b);
    assert_eq!(handles_of(&host, &b), Vec::<u64>::new());
}

/// GC drops the handle files of the attachments it removes and keeps the valid ones'.
#[test]
fn gc_drops_the_handle_files_of_what_it_removes() {
    let host = host_with_pod_route();
    let pod = Netns::new("c");
    let (a, b) = (conformance::unique("ga"), conformance::unique("gb"));
    raw_portmap(
        &host,
        &pod,
        &a,
        "ADD",
        &portmap_conf(json!({}), &pod.path, "10.96.0.2/24", 9300),
    );
    raw_portmap(
        &host,
        &pod,
        &b,
        "ADD",
        &portmap_conf(json!({}), &pod.path, "10.96.0.3/24", 9301),
    );
    assert!(handle_file(&host, &a).1.is_some() && handle_file(&host, &b).1.is_some());
    let gc = json!({"cniVersion": "1.1.0", "name": NET, "type": "portmap",
                    "cni.dev/valid-attachments": [{"containerID": b, "ifname": "eth0"}]});
    Call::new(&host, bin("portmap"), "GC", &pod.path)
        .unset("CNI_CONTAINERID")
        .unset("CNI_NETNS")
        .unset("CNI_IFNAME")
        .run(&gc.to_string())
        .ok();
    assert_eq!(handles_of(&host, &a), Vec::<u64>::new());
    assert_eq!(handle_file(&host, &a).1, None);
    assert_eq!(handles_of(&host, &b).len(), 3);
    assert!(handle_file(&host, &b).1.is_some());
}
