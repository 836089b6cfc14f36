//! The runtime side: our cnitool runs chains in real namespaces, keeps the Go libcni's result
//! cache, and interoperates with the Go cnitool in both directions.

use std::path::{Path, PathBuf};

use conformance::{
    Netns, VERSIONS, Workdir, bin, bin_dir, cnitool, cnitool_container_id, go_cnitool, installed,
    outcome, unique,
};
use serde_json::{Value, json};

fn loopback_list(name: &str, version: &str) -> Value {
    json!({"cniVersion": version, "name": name, "plugins": [{"type": "loopback"}]})
}

#[test]
fn add_check_del_in_every_version() {
    let host = Netns::new("h");
    let work = Workdir::new();
    for version in VERSIONS {
        let net = format!("lo-{}", version.replace('.', ""));
        work.write_conf(&format!("{net}.conflist"), &loopback_list(&net, version));
        let ctr = Netns::new("c");
        let ns = ctr.path.to_str().unwrap();

        let add = cnitool(&host, &work, &["add", &net, ns]);
        assert_eq!(add.ok()["cniVersion"], version, "{add:?}");
        assert!(ctr.is_up("lo"));
        let cid = cnitool_container_id(&ctr.path);
        let cached = work.cache_dir().join(format!("results/{net}-{cid}-eth0"));
        assert!(
            cached.is_file(),
            "{version}: no cache entry {}",
            cached.display()
        );

        let check = cnitool(&host, &work, &["check", &net, ns]);
        if version >= "0.4.0" {
            check.ok();
        } else {
            assert_ne!(check.status, 0, "{version}: CHECK must be refused");
            assert!(check.stderr.contains("CHECK"), "{}", check.stderr);
        }

        cnitool(&host, &work, &["del", &net, ns]).ok();
        assert!(!ctr.is_up("lo"));
        assert!(!cached.exists(), "{version}: cache entry left after DEL");
        cnitool(&host, &work, &["del", &net, ns]).ok();
    }
}

#[test]
fn cache_entry_has_the_go_layout() {
    let host = Netns::new("h");
    let work = Workdir::new();
    let ctr = Netns::new("c");
    work.write_conf("10-lo.conflist", &loopback_list("lo-cache", "1.0.0"));
    let mut cmd = host.command(bin("cnitool"));
    cmd.args(["add", "lo-cache", ctr.path.to_str().unwrap()])
        .env("NETCONFPATH", work.net_dir())
        .env("CNI_PATH", bin_dir())
        .env("CNI_CACHE_DIR", work.cache_dir())
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web")
        .env("CNI_IFNAME", "net1")
        .env(
            "CAP_ARGS",
            r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#,
        );
    let result = outcome(&mut cmd, "").ok().clone();
    let cid = cnitool_container_id(&ctr.path);
    let file = work
        .cache_dir()
        .join(format!("results/lo-cache-{cid}-net1"));
    let entry: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(entry["kind"], "cniCacheV1");
    assert_eq!(entry["containerId"], cid);
    assert_eq!(entry["ifName"], "net1");
    assert_eq!(entry["networkName"], "lo-cache");
    assert_eq!(
        entry["cniArgs"],
        json!([["IgnoreUnknown", "1"], ["K8S_POD_NAME", "web"]])
    );
    assert_eq!(entry["capabilityArgs"]["portMappings"][0]["hostPort"], 8080);
    assert_eq!(entry["result"], result);
    let config = std::fs::read(work.net_dir().join("10-lo.conflist")).unwrap();
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry["config"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, config);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn failed_add_undoes_the_plugins_that_ran() {
    let host = Netns::new("h");
    let work = Workdir::new();
    let ctr = Netns::new("c");
    work.write_conf(
        "fail.conflist",
        &json!({"cniVersion": "1.0.0", "name": "lo-fail",
                "plugins": [{"type": "loopback"}, {"type": "rcni-no-such-plugin"}]}),
    );
    let add = cnitool(
        &host,
        &work,
        &["add", "lo-fail", ctr.path.to_str().unwrap()],
    );
    assert_ne!(add.status, 0);
    assert!(add.stderr.contains("rcni-no-such-plugin"), "{}", add.stderr);
    assert!(!ctr.is_up("lo"), "loopback's ADD was not undone");
    assert!(
        !work
            .cache_dir()
            .join("results")
            .read_dir()
            .is_ok_and(|d| d.flatten().any(|e| e.file_name() != ".lock")),
        "a failed ADD left a cache entry"
    );
}

#[test]
fn single_plugin_conf_files_work() {
    let host = Netns::new("h");
    let work = Workdir::new();
    let ctr = Netns::new("c");
    work.write_conf(
        "99-lo.conf",
        &json!({"cniVersion": "0.4.0", "name": "lo-conf", "type": "loopback"}),
    );
    let add = cnitool(
        &host,
        &work,
        &["add", "lo-conf", ctr.path.to_str().unwrap()],
    );
    assert_eq!(add.ok()["ips"][0]["version"], "4");
    cnitool(
        &host,
        &work,
        &["check", "lo-conf", ctr.path.to_str().unwrap()],
    )
    .ok();
    cnitool(
        &host,
        &work,
        &["del", "lo-conf", ctr.path.to_str().unwrap()],
    )
    .ok();
    assert!(!ctr.is_up("lo"));
}

/// libcni 1.3: a list may leave out `plugins` and keep them in `<dir>/<network name>/*.conf`,
/// run after any inline ones in file-name order (other files there are not plugins);
/// `loadOnlyInlinedPlugins` turns that off.
#[test]
fn plugins_load_from_the_network_directory() {
    let host = Netns::new("h");
    let work = Workdir::new();
    let ctr = Netns::new("c");
    let ns = ctr.path.to_str().unwrap();
    let net = "lo-dir";
    work.write_conf(
        "10-lo-dir.conflist",
        &json!({"cniVersion": "1.0.0", "name": net}),
    );
    work.write_conf(&format!("{net}/20-lo.conf"), &json!({"type": "loopback"}));
    let missing = json!({"type": "rcni-no-such-plugin"});
    work.write_conf(&format!("{net}/10-not-a-plugin.json"), &missing);
    assert_eq!(
        cnitool(&host, &work, &["add", net, ns]).ok()["cniVersion"],
        "1.0.0"
    );
    assert!(ctr.is_up("lo"));
    cnitool(&host, &work, &["check", net, ns]).ok();
    cnitool(&host, &work, &["del", net, ns]).ok();
    assert!(!ctr.is_up("lo"));

    // A plugin after loopback's file: loopback runs first, and is undone when it fails.
    work.write_conf(&format!("{net}/30-missing.conf"), &missing);
    let add = cnitool(&host, &work, &["add", net, ns]);
    assert_ne!(add.status, 0, "{add:?}");
    assert!(add.stderr.contains("rcni-no-such-plugin"), "{}", add.stderr);
    assert!(!ctr.is_up("lo"), "loopback's ADD was not undone");

    work.write_conf(
        "10-lo-dir.conflist",
        &json!({"cniVersion": "1.0.0", "name": net, "loadOnlyInlinedPlugins": true,
                "plugins": [{"type": "loopback"}]}),
    );
    cnitool(&host, &work, &["add", net, ns]).ok();
    assert!(ctr.is_up("lo"));
    cnitool(&host, &work, &["del", net, ns]).ok();

    work.write_conf(
        "10-lo-dir.conflist",
        &json!({"cniVersion": "1.0.0", "name": net, "loadOnlyInlinedPlugins": true}),
    );
    let add = cnitool(&host, &work, &["add", net, ns]);
    assert_ne!(add.status, 0, "{add:?}");
    assert!(
        add.stderr.contains("loadOnlyInlinedPlugins"),
        "{}",
        add.stderr
    );
}

/// `-i NAME`, `--ifname NAME` and `--ifname=NAME`, before or after the positional arguments,
/// as the Go cnitool (cobra) takes them: each names the interface of the attachment.
#[test]
fn options_anywhere_name_the_interface() {
    let host = Netns::new("h");
    let work = Workdir::new();
    let ctr = Netns::new("c");
    let ns = ctr.path.to_str().unwrap();
    work.write_conf("lo.conflist", &loopback_list("lo-opts", "1.0.0"));
    let entry = |ifname: &str| {
        work.cache_dir().join(format!(
            "results/lo-opts-{}-{ifname}",
            cnitool_container_id(&ctr.path)
        ))
    };
    cnitool(&host, &work, &["add", "lo-opts", ns, "--ifname=net1"]).ok();
    assert!(entry("net1").is_file());
    assert!(!entry("eth0").exists());
    cnitool(&host, &work, &["check", "lo-opts", ns, "-i", "net1"]).ok();
    cnitool(&host, &work, &["--ifname", "net1", "del", "lo-opts", ns]).ok();
    assert!(
        !entry("net1").exists(),
        "DEL with --ifname missed the entry"
    );
    let bad = cnitool(&host, &work, &["add", "lo-opts", ns, "--ifnam=x"]);
    assert_ne!(bad.status, 0);
    assert!(bad.stderr.contains("--ifnam=x"), "{}", bad.stderr);
    assert!(!ctr.is_up("lo"));
}

/// A plugin in a temporary CNI_PATH directory: a shell script with `body`.
fn script_plugin(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What a failing plugin wrote on stderr is in the error cnitool reports: as the message when
/// the plugin printed nothing on stdout (the Go library's "netplugin failed: …"), in the
/// details of the CNI error it printed otherwise.
#[test]
fn a_failing_plugins_stderr_is_in_the_error() {
    let host = Netns::new("h");
    let work = Workdir::new();
    let ctr = Netns::new("c");
    let ns = ctr.path.to_str().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    script_plugin(
        plugins.path(),
        "rcni-test-crash",
        "echo 'panic: the reason' >&2; exit 2",
    );
    script_plugin(
        plugins.path(),
        "rcni-test-refuse",
        r#"echo 'warning: the context' >&2; echo '{"code":7,"msg":"refused"}'; exit 1"#,
    );
    let path = format!("{}:{}", plugins.path().display(), bin_dir().display());
    let error_line = |plugin: &str| {
        let net = format!("lo-{plugin}");
        work.write_conf(
            &format!("{net}.conflist"),
            &json!({"cniVersion": "1.0.0", "name": net,
                    "plugins": [{"type": "loopback"}, {"type": plugin}]}),
        );
        let add =
            conformance::cnitool_env(&host, &work, &["add", &net, ns], &[("CNI_PATH", &path)]);
        assert_ne!(add.status, 0, "{add:?}");
        assert!(!ctr.is_up("lo"), "loopback's ADD was not undone");
        add.stderr
            .lines()
            .find(|l| l.starts_with("cnitool: "))
            .unwrap_or_else(|| panic!("no error line in {:?}", add.stderr))
            .to_string()
    };
    let crash = error_line("rcni-test-crash");
    assert!(
        crash.contains(r#"netplugin failed: "panic: the reason""#),
        "{crash}"
    );
    let refuse = error_line("rcni-test-refuse");
    assert!(
        refuse.contains("refused") && refuse.contains("warning: the context"),
        "{refuse}"
    );
    assert!(refuse.contains("(code 7)"), "{refuse}");
}

#[test]
fn gc_deletes_attachments_whose_namespace_is_gone_and_status_works() {
    let host = Netns::new("h");
    let work = Workdir::new();
    work.write_conf("lo.conflist", &loopback_list("lo-gc", "1.1.0"));
    let alive = Netns::new("c");
    let dead = Netns::new("c");
    let dead_path = dead.path.clone();
    for ns in [&alive.path, &dead.path] {
        cnitool(&host, &work, &["add", "lo-gc", ns.to_str().unwrap()]).ok();
    }
    drop(dead);
    cnitool(&host, &work, &["gc", "lo-gc"]).ok();
    let entry = |ns: &Path| {
        work.cache_dir()
            .join(format!("results/lo-gc-{}-eth0", cnitool_container_id(ns)))
    };
    assert!(entry(&alive.path).is_file(), "GC removed a live attachment");
    assert!(
        !entry(&dead_path).exists(),
        "GC kept an attachment whose namespace is gone"
    );
    assert!(alive.is_up("lo"));
    cnitool(&host, &work, &["status", "lo-gc"]).ok();
}

#[test]
fn a_damaged_cache_entry_does_not_block_del() {
    let host = Netns::new("h");
    let work = Workdir::new();
    let ctr = Netns::new("c");
    let ns = ctr.path.to_str().unwrap();
    work.write_conf("lo.conflist", &loopback_list("lo-dmg", "1.0.0"));
    cnitool(&host, &work, &["add", "lo-dmg", ns]).ok();
    let entry = work.cache_dir().join(format!(
        "results/lo-dmg-{}-eth0",
        cnitool_container_id(&ctr.path)
    ));
    std::fs::write(&entry, r#"{"kind":"cniCa"#).unwrap();
    let del = cnitool(&host, &work, &["del", "lo-dmg", ns]);
    del.ok();
    assert!(
        del.stderr.contains("ignoring the cached result"),
        "{}",
        del.stderr
    );
    assert!(!ctr.is_up("lo"));
    assert!(!entry.exists());
}

#[test]
fn results_a_list_version_cannot_express_are_kept_as_printed() {
    // The reference loopback prints an IP-less 1.x-shaped result under 0.2.0; the Go tools
    // accept it, so ours must too.
    let host = Netns::new("h");
    let work = Workdir::new();
    let ctr = Netns::new("c");
    let ns = ctr.path.to_str().unwrap();
    work.write_conf("lo.conflist", &loopback_list("lo-ref", "0.2.0"));
    let mut cmd = host.command(bin("cnitool"));
    cmd.args(["add", "lo-ref", ns])
        .env("NETCONFPATH", work.net_dir())
        .env("CNI_PATH", conformance::REFERENCE_DIR)
        .env("CNI_CACHE_DIR", work.cache_dir());
    assert_eq!(outcome(&mut cmd, "").ok()["cniVersion"], "0.2.0");
    assert!(ctr.is_up("lo"));
}

#[test]
fn reports_unknown_networks_and_bad_arguments() {
    let host = Netns::new("h");
    let work = Workdir::new();
    let out = cnitool(&host, &work, &["add", "nope", "/run/netns/x"]);
    assert_ne!(out.status, 0);
    assert!(
        out.stderr
            .contains("no net configuration with name \"nope\""),
        "{}",
        out.stderr
    );
    let out = cnitool(&host, &work, &["add"]);
    assert_ne!(out.status, 0);
    assert!(out.stderr.contains("usage"), "{}", out.stderr);
}

#[test]
fn version_prints_the_built_version() {
    let host = Netns::new("h");
    let work = Workdir::new();
    let out = cnitool(&host, &work, &["--version"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim_end(),
        format!("cnitool {}", libcni::VERSION)
    );
}

/// The Go cnitool keeps its cache in /var/lib/cni; remove this network's entries on drop.
struct GoCache(String);

impl Drop for GoCache {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/var/lib/cni/results") else {
            return;
        };
        for e in dir.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{}-", self.0))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn go(host: &Netns, work: &Workdir, args: &[&str]) -> conformance::Outcome {
    let tool = installed(go_cnitool());
    let mut cmd = host.command(tool);
    cmd.args(args)
        .env("NETCONFPATH", work.net_dir())
        .env("CNI_PATH", bin_dir());
    outcome(&mut cmd, "")
}

fn ours_default_cache(host: &Netns, work: &Workdir, args: &[&str]) -> conformance::Outcome {
    let mut cmd = host.command(bin("cnitool"));
    cmd.args(args)
        .env("NETCONFPATH", work.net_dir())
        .env("CNI_PATH", bin_dir())
        .env_remove("CNI_CACHE_DIR");
    outcome(&mut cmd, "")
}

#[test]
fn go_cnitool_and_ours_delete_what_the_other_added() {
    let host = Netns::new("h");
    let work = Workdir::new();
    let net = unique("goi");
    let _cleanup = GoCache(net.clone());
    // The Go cnitool (libcni 1.1.2) converts cached results up to 1.0.0 only.
    for version in ["0.4.0", "1.0.0"] {
        work.write_conf("lo.conflist", &loopback_list(&net, version));
        let cache = |ns: &PathBuf| {
            PathBuf::from(format!(
                "/var/lib/cni/results/{net}-{}-eth0",
                cnitool_container_id(ns)
            ))
        };

        let ctr = Netns::new("c");
        let ns = ctr.path.to_str().unwrap();
        go(&host, &work, &["add", &net, ns]).ok();
        assert!(ctr.is_up("lo") && cache(&ctr.path).is_file());
        ours_default_cache(&host, &work, &["check", &net, ns]).ok();
        ours_default_cache(&host, &work, &["del", &net, ns]).ok();
        assert!(
            !ctr.is_up("lo"),
            "{version}: our DEL did not undo the Go ADD"
        );
        assert!(!cache(&ctr.path).exists());

        let ctr = Netns::new("c");
        let ns = ctr.path.to_str().unwrap();
        ours_default_cache(&host, &work, &["add", &net, ns]).ok();
        assert!(ctr.is_up("lo") && cache(&ctr.path).is_file());
        let check = go(&host, &work, &["check", &net, ns]);
        assert_eq!(check.status, 0, "{version}: Go CHECK of our ADD: {check:?}");
        let del = go(&host, &work, &["del", &net, ns]);
        assert_eq!(del.status, 0, "{version}: Go DEL of our ADD: {del:?}");
        assert!(!ctr.is_up("lo"));
        assert!(
            !cache(&ctr.path).exists(),
            "{version}: Go DEL left our cache entry"
        );
    }
}
