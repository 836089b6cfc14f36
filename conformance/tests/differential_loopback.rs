//! loopback against Debian's reference Go plugin: same kernel effect, same result where the
//! reference's result is well-formed, and the deliberate difference where it is not.

use std::path::PathBuf;

use conformance::{Call, Netns, bin, reference_plugin};
use serde_json::{Value, json};

fn reference() -> PathBuf {
    reference_plugin("loopback")
}

fn conf(version: &str) -> String {
    json!({"cniVersion": version, "name": "lo-diff", "type": "loopback"}).to_string()
}

/// Go prints `"dns": {}` where 1.x leaves an empty DNS out; runtimes read both the same.
fn without_empty_dns(mut v: Value) -> Value {
    if v.get("dns") == Some(&json!({})) {
        v.as_object_mut().unwrap().remove("dns");
    }
    v
}

#[test]
fn same_kernel_state_and_result_for_1_0_0() {
    let host = Netns::new("h");
    let (ours, theirs) = (Netns::new("c"), Netns::new("c"));
    let a = Call::new(&host, bin("loopback"), "ADD", &ours.path)
        .run(&conf("1.0.0"))
        .ok()
        .clone();
    let b = Call::new(&host, reference(), "ADD", &theirs.path)
        .run(&conf("1.0.0"))
        .ok()
        .clone();
    let mut b = without_empty_dns(b);
    b["interfaces"][0]["sandbox"] = json!(ours.path.display().to_string());
    assert_eq!(without_empty_dns(a), b);
    assert_eq!(ours.link_flags("lo"), theirs.link_flags("lo"));
    assert_eq!(
        ours.ip_json(&["addr", "show", "dev", "lo"])[0]["addr_info"],
        theirs.ip_json(&["addr", "show", "dev", "lo"])[0]["addr_info"]
    );

    // Each DELs what the other ADDed.
    Call::new(&host, reference(), "DEL", &ours.path)
        .run(&conf("1.0.0"))
        .ok();
    Call::new(&host, bin("loopback"), "DEL", &theirs.path)
        .run(&conf("1.0.0"))
        .ok();
    assert!(!ours.is_up("lo") && !theirs.is_up("lo"));
}

#[test]
fn legacy_versions_get_their_own_layout_where_the_reference_prints_a_1x_one() {
    let host = Netns::new("h");
    for version in ["0.2.0", "0.3.1", "0.4.0"] {
        let (ours, theirs) = (Netns::new("c"), Netns::new("c"));
        let a = Call::new(&host, bin("loopback"), "ADD", &ours.path)
            .run(&conf(version))
            .ok()
            .clone();
        let b = Call::new(&host, reference(), "ADD", &theirs.path)
            .run(&conf(version))
            .ok()
            .clone();
        // The reference labels a 1.x-shaped object with the old version.
        assert_eq!(b["cniVersion"], version);
        assert!(
            b["ips"][0].get("version").is_none(),
            "reference changed: {b}"
        );
        // Ours is in the old version's own layout.
        if version == "0.2.0" {
            assert_eq!(a["ip4"]["ip"], "127.0.0.1/8");
        } else {
            assert_eq!(a["ips"][0]["version"], "4");
        }
        assert_eq!(ours.link_flags("lo"), theirs.link_flags("lo"));
    }
}
