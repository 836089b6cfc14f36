//! Hostile and broken input, black-box: configs, environments and files on disk that once made a
//! plugin or cnitool hang, panic, leak or write where it must not. Each answer must be a clean
//! CNI error with the right code (or success), promptly, with nothing half-done.

use conformance::HostLocalNet;
use serde_json::json;

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
