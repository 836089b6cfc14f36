//! Valid inputs the mutators start from: the configs the conformance suites run (every key
//! each plugin reads), results in every spec version, cache entries and conflists.

use serde_json::{Value, json};

/// The network name every seed uses.
pub const NET: &str = "fuzznet";

/// A result as `version` prints it, with every field that version has.
pub fn result(version: &str) -> Value {
    let dns = json!({"nameservers": ["10.1.0.1", "2001:db8::1"], "domain": "cluster.local",
                     "search": ["svc", "ns.svc"], "options": ["ndots:5"]});
    match version {
        "0.1.0" | "0.2.0" => json!({
            "cniVersion": version,
            "ip4": {"ip": "10.1.0.5/24", "gateway": "10.1.0.1",
                    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "10.9.0.0/16"}]},
            "ip6": {"ip": "2001:db8::5/64", "gateway": "2001:db8::1", "routes": [{"dst": "::/0"}]},
            "dns": dns,
        }),
        "0.3.0" | "0.3.1" | "0.4.0" => json!({
            "cniVersion": version,
            "interfaces": [{"name": "fz0", "mac": "0a:58:0a:01:00:01"},
                           {"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/run/netns/x"}],
            "ips": [{"version": "4", "interface": 1, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                    {"version": "6", "interface": 1, "address": "2001:db8::5/64"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0"}],
            "dns": dns,
        }),
        _ => json!({
            "cniVersion": version,
            "interfaces": [{"name": "fz0", "mac": "0a:58:0a:01:00:01", "mtu": 1500},
                           {"name": "eth0", "mac": "0a:58:0a:01:00:05", "mtu": 1400,
                            "sandbox": "/run/netns/x", "socketPath": "/run/x.sock",
                            "pciID": "0000:00:01.0"}],
            "ips": [{"interface": 1, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                    {"interface": 1, "address": "2001:db8::5/64", "gateway": "2001:db8::1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1300, "advmss": 1260,
                        "priority": 5, "table": 100, "scope": 0},
                       {"dst": "::/0"}],
            "dns": dns,
        }),
    }
}

/// The `ipam` section of host-local seeds, with `data_dir` (and `resolv_conf` when given).
pub fn host_local_ipams(data_dir: &str, resolv_conf: &str) -> Vec<Value> {
    vec![
        json!({"type": "host-local", "dataDir": data_dir, "resolvConf": resolv_conf,
               "ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "10.2.2.0/24"}],
                          [{"subnet": "2001:db8:1::/64"}]],
               "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}, {"dst": "2001:db8:2::/64"}]}),
        json!({"type": "host-local", "dataDir": data_dir,
               "subnet": "10.54.0.0/24", "rangeStart": "10.54.0.9", "rangeEnd": "10.54.0.20",
               "gateway": "10.54.0.1", "routes": [{"dst": "0.0.0.0/0"}]}),
        json!({"type": "host-local", "dataDir": data_dir,
               "ranges": [[{"subnet": "10.53.0.0/24", "rangeStart": "10.53.0.10",
                            "rangeEnd": "10.53.0.12", "gateway": "10.53.0.1"}]]}),
    ]
}

/// Configs for `plugin` in `version`; host-local sections use `data_dir` and `resolv_conf`.
pub fn plugin_confs(plugin: &str, version: &str, data_dir: &str, resolv_conf: &str) -> Vec<Value> {
    let ipams = host_local_ipams(data_dir, resolv_conf);
    let base = |extra: Value| {
        let mut conf = json!({"cniVersion": version, "name": NET, "type": plugin});
        for (k, v) in extra.as_object().into_iter().flatten() {
            conf[k] = v.clone();
        }
        conf
    };
    let prev = result(version);
    match plugin {
        "bridge" => vec![
            base(json!({"bridge": "fz0", "isGateway": true, "isDefaultGateway": true,
                        "ipMasq": true, "hairpinMode": true, "mtu": 1400, "ipam": ipams[0],
                        "dns": {"nameservers": ["10.0.0.10"], "search": ["svc"]}})),
            base(json!({"bridge": "fz1", "vlan": 100,
                        "vlanTrunk": [{"minID": 5, "maxID": 9}, {"id": 101}],
                        "preserveDefaultVlan": true, "macspoofchk": true, "enabledad": true,
                        "promiscMode": true, "portIsolation": true, "forceAddress": true,
                        "ipMasq": true, "ipMasqBackend": "iptables",
                        "disableContainerInterface": false,
                        "runtimeConfig": {"mac": "0a:58:0a:01:00:05"},
                        "args": {"cni": {"mac": "0a:58:0a:01:00:06"}},
                        "ipam": ipams[1]})),
            base(json!({"bridge": "fz2", "isGateway": true, "ipam": ipams[2], "prevResult": prev})),
            base(json!({"bridge": "fz3", "ipam": {}})),
        ],
        "host-local" => ipams
            .iter()
            .map(|ipam| base(json!({"ipam": ipam})))
            .chain([
                base(json!({"ipam": ipams[2], "runtimeConfig": {"ips": ["10.53.0.11/24"]}})),
                base(json!({"ipam": ipams[2], "args": {"cni": {"ips": ["10.53.0.12"]}}})),
                base(json!({"ipam": ipams[0], "runtimeConfig": {"ipRanges":
                            [[{"subnet": "10.77.0.0/24", "rangeStart": "10.77.0.5"}]]}})),
                base(json!({"ipam": ipams[0], "prevResult": prev,
                            "cni.dev/valid-attachments": [{"containerID": "ctr1", "ifname": "eth0"}]})),
            ])
            .collect(),
        "loopback" => vec![base(json!({})), base(json!({"prevResult": prev}))],
        "portmap" => {
            let maps = json!([
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
                {"hostPort": 9090, "containerPort": 90, "protocol": "sctp", "hostIP": "2001:db8::9"}]);
            vec![
                base(json!({"backend": "nftables", "snat": true, "masqAll": true,
                            "conditionsV4": ["ip saddr 10.0.0.0/8"],
                            "conditionsV6": ["ip6 saddr fd00::/8"],
                            "runtimeConfig": {"portMappings": maps}, "prevResult": prev})),
                base(json!({"backend": "iptables", "snat": false, "markMasqBit": 13,
                            "externalSetMarkChain": "KUBE-MARK-MASQ",
                            "conditionsV4": ["-s", "10.0.0.0/8"],
                            "runtimeConfig": {"portMappings": maps}, "prevResult": prev})),
                base(json!({"capabilities": {"portMappings": true},
                            "runtimeConfig": {"portMappings": [{"hostPort": 8081, "containerPort": 81}]},
                            "prevResult": prev,
                            "cni.dev/valid-attachments": [{"containerID": "ctr1", "ifname": "eth0"}]})),
            ]
        }
        other => panic!("no seeds for plugin {other:?}"),
    }
}

/// `CNI_ARGS` strings the runtimes send.
pub const CNI_ARGS: &[&str] = &[
    "",
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=ctr1",
    "IgnoreUnknown=true;IP=10.53.0.11",
    "IP=10.1.2.9,2001:db8:1::9",
    "MAC=0a:58:0a:01:00:09",
    "K8S_POD_UID=0b7b0f47-8f9b-4b1b-9d5b-52b0c5e1c1f1;IgnoreUnknown=1",
];

/// A conflist for each chain shape the suites use.
pub fn conflists(version: &str) -> Vec<Value> {
    vec![
        json!({"cniVersion": version, "name": NET, "disableCheck": false, "disableGC": "false",
               "plugins": [
                   {"type": "loopback"},
                   {"type": "bridge", "bridge": "fz0", "isDefaultGateway": true,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.33.0.0/16"}]]}},
                   {"type": "portmap", "capabilities": {"portMappings": true}}]}),
        json!({"cniVersions": ["0.4.0", version, "9.9.9"], "name": NET, "plugins": [
                   {"type": "bridge", "ipam": {}}]}),
    ]
}

/// A single-plugin `.conf`.
pub fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": NET, "type": "bridge", "bridge": "fz0",
           "ipam": {"type": "host-local", "subnet": "10.33.0.0/16"}})
}

/// A result cache entry (`cniCacheV1`) as either cnitool writes it.
pub fn cache_entry(version: &str, container_id: &str) -> Value {
    use base64::Engine;
    let config = serde_json::to_vec(&conflists(version)[0]).unwrap();
    json!({
        "kind": "cniCacheV1",
        "containerId": container_id,
        "config": base64::engine::general_purpose::STANDARD.encode(config),
        "ifName": "eth0",
        "networkName": NET,
        "netns": "/run/netns/fuzz",
        "cniArgs": [["K8S_POD_NAME", "web-0"], ["IgnoreUnknown", "1"]],
        "capabilityArgs": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]},
        "result": result(version),
    })
}

/// The contents a host-local lease file may have, and odd ones.
pub const LEASE_CONTENTS: &[&str] = &[
    "ctr1\neth0",
    "ctr1\r\neth0",
    "ctr1\r\neth0\r\n",
    "ctr1\neth0\n",
    "ctr1",
    "ctr2\neth1",
    "\n",
    "",
    "ctr1\neth0\nextra\nlines",
    "10.53.0.11",
    "2001:db8:1::5",
];

/// A resolv.conf as `ipam.resolvConf` reads it.
pub const RESOLV_CONF: &str = "# generated\nnameserver 10.0.0.10\nnameserver 2001:db8::53\n\
     search svc.cluster.local cluster.local\ndomain cluster.local\noptions ndots:5 timeout:1\n";
