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

