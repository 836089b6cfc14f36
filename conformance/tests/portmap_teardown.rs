//! portmap's nftables backend at scale and without processes: DEL among 300 pods removes
//! exactly the pod's rules; ADD, CHECK and DEL run no other program (traced with strace); DEL
//! removes the rules an earlier version made through `nft` text and those the Go portmap's
//! nftables backend made (`ip`/`ip6 cni_hostport`, comment = container ID).

use std::path::Path;

use conformance::{
    BridgeConf, Call, Netns, Workdir, bin, cnitool_container_id, cnitool_env, executed_programs,
    execve_tracer, portmap_conflist, portmap_plugin, result_ips,
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
    let conf = portmap_conf(json!({}), &ctr.path, "10.96.0.5/24", 8080);
    let trace_dir = tempfile::tempdir().unwrap();
    for verb in ["ADD", "CHECK", "DEL"] {
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
        assert_eq!(rules, if verb == "DEL" { 0 } else { 3 }, "after {verb}");
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
