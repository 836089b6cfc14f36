//! Protocol edge cases, through the real loopback binary: every bad input gets its spec code and a
//! message naming the problem, and leaves the container namespace untouched.

use conformance::{Call, Netns, bin, outcome};
use serde_json::json;

const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"lo-net","type":"loopback"}"#;

/// What a case is: its name, environment changes (`None` unsets), stdin, the expected code
/// and a needle of the message.
type Case = (
    &'static str,
    &'static [(&'static str, Option<&'static str>)],
    &'static str,
    u64,
    &'static str,
);

const CASES: &[Case] = &[
    (
        "unknown command",
        &[("CNI_COMMAND", Some("FROB"))],
        GOOD,
        4,
        "FROB",
    ),
    (
        "missing container id and ifname",
        &[("CNI_CONTAINERID", None), ("CNI_IFNAME", None)],
        GOOD,
        4,
        "[CNI_CONTAINERID,CNI_IFNAME]",
    ),
    (
        "missing netns on ADD",
        &[("CNI_NETNS", Some(""))],
        GOOD,
        4,
        "CNI_NETNS",
    ),
    (
        "missing CNI_PATH",
        &[("CNI_PATH", None)],
        GOOD,
        4,
        "CNI_PATH",
    ),
    (
        "invalid container id",
        &[("CNI_CONTAINERID", Some("bad/id"))],
        GOOD,
        4,
        "\"bad/id\"",
    ),
    (
        "ifname too long",
        &[("CNI_IFNAME", Some("eth0123456789012"))],
        GOOD,
        4,
        "CNI_IFNAME",
    ),
    (
        "ifname with slash",
        &[("CNI_IFNAME", Some("a/b"))],
        GOOD,
        4,
        "\"a/b\"",
    ),
    ("bad JSON", &[], "{\"cniVersion\":", 6, "network config"),
    ("empty stdin", &[], "", 6, "network config"),
    (
        "wrong type",
        &[],
        r#"{"cniVersion":"1.0.0","name":["x"]}"#,
        6,
        "\"name\"",
    ),
    (
        "missing name",
        &[],
        r#"{"cniVersion":"1.0.0","type":"loopback"}"#,
        7,
        "name",
    ),
    (
        "invalid name",
        &[],
        r#"{"cniVersion":"1.0.0","name":"a/b"}"#,
        7,
        "\"a/b\"",
    ),
    (
        "unsupported version",
        &[],
        r#"{"cniVersion":"2.0.0","name":"n"}"#,
        1,
        "\"2.0.0\"",
    ),
    (
        "CHECK on 0.3.1",
        &[("CNI_COMMAND", Some("CHECK"))],
        r#"{"cniVersion":"0.3.1","name":"n"}"#,
        1,
        "CHECK",
    ),
    ("GC on 1.0.0", &[("CNI_COMMAND", Some("GC"))], GOOD, 1, "GC"),
    (
        "STATUS on 1.0.0",
        &[("CNI_COMMAND", Some("STATUS"))],
        GOOD,
        1,
        "STATUS",
    ),
];

#[test]
fn bad_inputs_get_their_code_and_touch_nothing() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    for &(what, env, stdin, code, needle) in CASES {
        let mut call = Call::new(&host, bin("loopback"), "ADD", &ctr.path);
        for (k, v) in env {
            call = match v {
                Some(v) => call.env(k, v),
                None => call.unset(k),
            };
        }
        let out = call.run(stdin);
        assert_eq!(out.status, 1, "{}: {out:?}", what);
        out.err(code, needle);
        assert!(
            out.json["cniVersion"].is_string(),
            "{}: error without cniVersion",
            what
        );
        assert!(!ctr.is_up("lo"), "{}: the namespace was changed", what);
    }
}

#[test]
fn error_carries_the_requested_version() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let out = Call::new(&host, bin("loopback"), "CHECK", &ctr.path)
        .run(r#"{"cniVersion":"0.4.0","name":"n"}"#);
    assert_eq!(out.json["cniVersion"], "0.4.0");
}

#[test]
fn own_netns_is_refused_before_anything_changes() {
    // The plugin runs in `host`; pointing CNI_NETNS at `host` itself must not change it.
    let host = Netns::new("h");
    host.ip(&["link", "set", "lo", "down"]);
    let out = Call::new(&host, bin("loopback"), "ADD", &host.path).run(GOOD);
    out.err(8, "own network namespace");
    assert!(!host.is_up("lo"), "the plugin's own lo was set up");
    // /proc paths to the same namespace are recognised too.
    let out = Call::new(&host, bin("loopback"), "ADD", "/proc/self/ns/net".as_ref()).run(GOOD);
    out.err(8, "own network namespace");
    // DEL succeeds (state outside the namespace must still be released) without touching it:
    // a recycled /proc/<pid>/ns/net path means the container's namespace is gone (plugins#714).
    host.ip(&["link", "set", "lo", "up"]);
    let out = Call::new(&host, bin("loopback"), "DEL", &host.path).run(GOOD);
    out.ok();
    assert!(
        out.stderr
            .contains("treating the container's namespace as gone"),
        "{}",
        out.stderr
    );
    assert!(host.is_up("lo"), "the plugin's own lo was set down");
    // The override is honoured, as in the Go skel.
    Call::new(&host, bin("loopback"), "DEL", &host.path)
        .env("CNI_NETNS_OVERRIDE", "1")
        .run(GOOD)
        .ok();
    assert!(!host.is_up("lo"));
}

#[test]
fn version_lists_every_version_and_echoes_the_request() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let out =
        Call::new(&host, bin("loopback"), "VERSION", &ctr.path).run(r#"{"cniVersion":"0.4.0"}"#);
    assert_eq!(
        out.ok(),
        &json!({"cniVersion": "0.4.0", "supportedVersions": ["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
    );
    // VERSION needs no other variable and no usable stdin.
    let mut cmd = host.command(bin("loopback"));
    cmd.env_clear().env("CNI_COMMAND", "VERSION");
    assert_eq!(outcome(&mut cmd, "").ok()["cniVersion"], "1.1.0");
}

#[test]
fn no_command_prints_the_about_text() {
    let host = Netns::new("h");
    let mut cmd = host.command(bin("loopback"));
    cmd.env_clear();
    let out = outcome(&mut cmd, "");
    assert_eq!(out.status, 0);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("CNI loopback plugin"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
        "{}",
        out.stderr
    );
}

#[test]
fn every_about_text_carries_the_built_version() {
    let host = Netns::new("h");
    for name in ["loopback", "bridge", "host-local", "portmap"] {
        let mut cmd = host.command(bin(name));
        cmd.env_clear();
        let out = outcome(&mut cmd, "");
        assert_eq!(out.status, 0);
        let first = out.stderr.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            format!("CNI {name} plugin {} (Rust)", libcni::VERSION),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn keys_match_case_insensitively_like_go() {
    let host = Netns::new("h");
    let ctr = Netns::new("c");
    let out = Call::new(&host, bin("loopback"), "ADD", &ctr.path)
        .run(r#"{"CNIVERSION":"0.3.1","Name":"n","TYPE":"loopback","someUnknownKey":{"x":1}}"#);
    assert_eq!(out.ok()["cniVersion"], "0.3.1");
}
