//! loopback in every spec version, run raw through the protocol in real namespaces.

use conformance::{Call, Netns, VERSIONS, bin};
use serde_json::{Value, json};

fn conf(version: &str) -> String {
    json!({"cniVersion": version, "name": "lo-net", "type": "loopback"}).to_string()
}

#[test]
fn add_check_del_in_every_version() {
    let host = Netns::new("h");
    for version in VERSIONS {
        let ctr = Netns::new("c");
        assert!(!ctr.is_up("lo"), "a new namespace starts with lo down");
        let result = Call::new(&host, bin("loopback"), "ADD", &ctr.path)
            .run(&conf(version))
            .ok()
            .clone();
        assert!(ctr.is_up("lo"), "{version}: lo not up after ADD");
        assert_eq!(result["cniVersion"], version);
        assert_result_shape(version, &result, &ctr);

        let check = Call::new(&host, bin("loopback"), "CHECK", &ctr.path).run(&conf(version));
        if version >= "0.4.0" {
            check.ok();
            assert!(check.stdout.is_empty(), "CHECK prints nothing");
        } else {
            check.err(1, "CHECK");
        }

        let del = Call::new(&host, bin("loopback"), "DEL", &ctr.path).run(&conf(version));
        del.ok();
        assert!(del.stdout.is_empty(), "DEL prints nothing");
        assert!(!ctr.is_up("lo"), "{version}: lo still up after DEL");
        // DEL is idempotent.
        Call::new(&host, bin("loopback"), "DEL", &ctr.path)
            .run(&conf(version))
            .ok();
    }
}

/// Each version's own layout, parseable by a runtime of that version.
fn assert_result_shape(version: &str, result: &Value, ctr: &Netns) {
    match version {
        "0.1.0" | "0.2.0" => {
            assert_eq!(result["ip4"], json!({"ip": "127.0.0.1/8"}), "{result}");
            assert_eq!(result["ip6"], json!({"ip": "::1/128"}), "{result}");
            assert_eq!(result["dns"], json!({}));
            assert!(result.get("interfaces").is_none() && result.get("ips").is_none());
        }
        _ => {
            let sandbox = ctr.path.display().to_string();
            assert_eq!(
                result["interfaces"],
                json!([{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": sandbox}])
            );
            let mut v4 = json!({"interface": 0, "address": "127.0.0.1/8"});
            let mut v6 = json!({"interface": 0, "address": "::1/128"});
            if version < "1.0.0" {
                v4["version"] = json!("4");
                v6["version"] = json!("6");
                assert_eq!(result["dns"], json!({}));
            }
            assert_eq!(result["ips"], json!([v4, v6]));
        }
    }
}

#[test]
fn add_passes_prev_result_through_converted() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let prev =
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.2/24", "gateway": "10.9.0.1"}]});
    let stdin = json!({"cniVersion": "0.4.0", "name": "n", "type": "loopback", "prevResult": prev})
        .to_string();
    let out = Call::new(&host, bin("loopback"), "ADD", &ctr.path).run(&stdin);
    assert_eq!(
        out.ok(),
        &json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.9.0.2/24", "gateway": "10.9.0.1"}], "dns": {}})
    );
    assert!(ctr.is_up("lo"));
}

#[test]
fn add_rejects_a_broken_prev_result_before_touching_the_namespace() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let stdin = json!({"cniVersion": "1.0.0", "name": "n", "type": "loopback", "prevResult": {"ips": [{"address": 5}]}});
    Call::new(&host, bin("loopback"), "ADD", &ctr.path)
        .run(&stdin.to_string())
        .err(6, "prevResult");
    assert!(!ctr.is_up("lo"));
}

#[test]
fn check_fails_when_lo_is_down() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    Call::new(&host, bin("loopback"), "CHECK", &ctr.path)
        .run(&conf("1.0.0"))
        .err(999, "down");
}

#[test]
fn del_succeeds_without_a_namespace() {
    let host = Netns::new("h");
    let gone = Netns::new("c");
    let path = gone.path.clone();
    drop(gone);
    Call::new(&host, bin("loopback"), "DEL", &path)
        .run(&conf("1.0.0"))
        .ok();
    Call::new(&host, bin("loopback"), "DEL", &path)
        .env("CNI_NETNS", "")
        .run(&conf("1.0.0"))
        .ok();
}

#[test]
fn add_fails_cleanly_for_missing_or_non_namespace_paths() {
    let host = Netns::new("h");
    Call::new(
        &host,
        bin("loopback"),
        "ADD",
        "/run/netns/rcni-does-not-exist".as_ref(),
    )
    .run(&conf("1.0.0"))
    .err(3, "does not exist");
    Call::new(&host, bin("loopback"), "ADD", "/etc/hostname".as_ref())
        .run(&conf("1.0.0"))
        .err(4, "CNI_NETNS");
}

#[test]
fn gc_and_status_succeed_on_1_1_0() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    for cmd in ["GC", "STATUS"] {
        let out = Call::new(&host, bin("loopback"), cmd, &ctr.path)
            .unset("CNI_CONTAINERID")
            .unset("CNI_NETNS")
            .unset("CNI_IFNAME")
            .run(&conf("1.1.0"));
        out.ok();
        assert!(out.stdout.is_empty());
    }
}
