//! Fuzzing of the plugin binaries, black-box: each plugin's config (seeded from the configs the
//! suites run, every spec version), `CNI_ARGS` and the other variables, and host-local's lease
//! directory, fed to the real debug binaries inside a private host namespace. The container
//! namespace never exists, so the parsers run but no container is set up; host-local's
//! `dataDir` is always a temporary directory. Whatever the input: exit 0 or 1 with a
//! well-formed answer, no panic, no hang (see `conformance::fuzz` for replaying a failure).

use std::path::Path;
use std::time::Duration;

use conformance::fuzz::{self, Gen, seeds};
use conformance::{Call, Netns, VERSIONS, bin};
use serde_json::{Value, json};

/// One plugin process; far more than any answer takes.
const PROCESS_LIMIT: Duration = Duration::from_secs(10);
/// One case: a few processes.
const CASE_LIMIT: Duration = Duration::from_secs(60);

fn target<'a>(name: &'a str, cases: u64, regressions: &'a [u64]) -> fuzz::Target<'a> {
    fuzz::Target::new(name, cases, regressions, CASE_LIMIT)
}

/// Paths of one test's scratch files: the lease directory, a resolv.conf, a sentinel file
/// that planted symlinks point to (it must never change).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let s = Scratch {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(s.data_dir()).unwrap();
        std::fs::write(s.sentinel(), "sentinel").unwrap();
        s
    }
    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
    fn resolv_conf(&self) -> std::path::PathBuf {
        self.dir.path().join("resolv.conf")
    }
    fn sentinel(&self) -> std::path::PathBuf {
        self.dir.path().join("sentinel")
    }
    fn path_str(p: &Path) -> String {
        p.display().to_string()
    }
}

#[derive(Debug)]
struct Invocation {
    command: &'static str,
    env: Vec<(&'static str, String)>,
    stdin: String,
    resolv_conf: Vec<u8>,
}

/// Every `ipam` object (under any case of the key) gets our `dataDir` and, when it names one,
/// our resolv.conf: a mutant must never make a plugin write or read elsewhere.
fn confine(conf: &mut Value, data_dir: &str, resolv_conf: &str) {
    let Value::Object(top) = conf else { return };
    for (key, ipam) in top.iter_mut() {
        if !key.eq_ignore_ascii_case("ipam") {
            continue;
        }
        let Value::Object(ipam) = ipam else { continue };
        let had_resolv = ipam.keys().any(|k| k.eq_ignore_ascii_case("resolvConf"));
        ipam.retain(|k, _| {
            !k.eq_ignore_ascii_case("dataDir") && !k.eq_ignore_ascii_case("resolvConf")
        });
        ipam.insert("dataDir".into(), json!(data_dir));
        if had_resolv {
            ipam.insert("resolvConf".into(), json!(resolv_conf));
        }
    }
}

/// What an environment variable can hold: no NUL, and short of the kernel's limit for one
/// string (`MAX_ARG_STRLEN`, 128 KiB); runtimes send far less.
fn env_value(s: String) -> String {
    s.replace('\0', "").chars().take(8192).collect()
}

fn invocation(g: &mut Gen, plugin: &str, scratch: &Scratch) -> Invocation {
    let version = VERSIONS[g.below(VERSIONS.len())];
    let data_dir = Scratch::path_str(&scratch.data_dir());
    let resolv = Scratch::path_str(&scratch.resolv_conf());
    let confs = seeds::plugin_confs(plugin, version, &data_dir, &resolv);
    let seed = g.pick(&confs).clone();
    let mut conf = fuzz::mutate_structure(g, &seed);
    confine(&mut conf, &data_dir, &resolv);
    let command = *g.pick(&[
        "ADD", "ADD", "DEL", "DEL", "CHECK", "GC", "STATUS", "VERSION",
    ]);
    // Never a namespace that exists: the container side is not what is fuzzed here.
    let netns = *g.pick(&["/nonexistent/rcni-fuzz-netns", "", "/dev/null"]);
    let mut env = vec![
        ("CNI_CONTAINERID", "ctr1".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_ARGS", env_value(fuzz::cni_args(g, seeds::CNI_ARGS))),
    ];
    if g.chance(15) {
        let key = *g.pick(&["CNI_CONTAINERID", "CNI_IFNAME"]);
        env.retain(|(k, _)| *k != key);
        env.push((key, env_value(fuzz::odd_string(g))));
    }
    let mut resolv_conf = seeds::RESOLV_CONF.as_bytes().to_vec();
    for _ in 0..g.below(5) {
        fuzz::mutate_bytes(g, &mut resolv_conf);
    }
    let stdin = if g.chance(25) {
        serde_json::to_string_pretty(&conf).unwrap()
    } else {
        conf.to_string()
    };
    Invocation {
        command,
        env,
        stdin,
        resolv_conf,
    }
}

fn run(
    host: &Netns,
    plugin: &str,
    command: &str,
    env: &[(&str, String)],
    stdin: &str,
) -> Result<(), String> {
    let mut call = Call::new(
        host,
        bin(plugin),
        command,
        Path::new("/nonexistent/rcni-fuzz-netns"),
    )
    .within(PROCESS_LIMIT);
    for (k, v) in env {
        call = call.env(k, v);
    }
    let out = call.run(stdin);
    match fuzz::protocol_violation(command, &out) {
        Some(why) => Err(format!("{plugin} {command}: {why}\n{out:#?}")),
        None => Ok(()),
    }
}

fn fuzz_plugin(name: &str, plugin: &str, cases: u64, regressions: &[u64]) {
    let host = Netns::new("fz");
    let scratch = Scratch::new();
    fuzz::run(
        target(name, cases, regressions),
        |g| invocation(g, plugin, &scratch),
        |inv| {
            std::fs::write(scratch.resolv_conf(), &inv.resolv_conf).unwrap();
            run(&host, plugin, inv.command, &inv.env, &inv.stdin)
        },
    );
}

#[test]
fn fuzz_bridge_config() {
    fuzz_plugin("fuzz_bridge_config", "bridge", 250, &[2001224]);
}

#[test]
fn fuzz_host_local_config() {
    fuzz_plugin("fuzz_host_local_config", "host-local", 400, &[]);
}

#[test]
fn fuzz_loopback_config() {
    fuzz_plugin("fuzz_loopback_config", "loopback", 150, &[]);
}

#[test]
fn fuzz_portmap_config() {
    fuzz_plugin("fuzz_portmap_config", "portmap", 250, &[]);
}

/// Found while writing the config fuzzer: bridge with `ipam.type` "bridge" ran itself as its
/// IPAM plugin, which did the same, without end (thousands of processes within seconds).
#[test]
fn bridge_refuses_itself_as_its_ipam_plugin() {
    let host = Netns::new("fz");
    let scratch = Scratch::new();
    for command in ["DEL", "GC", "STATUS"] {
        let conf = json!({"cniVersion": "1.1.0", "name": seeds::NET, "type": "bridge",
                          "bridge": "fz0", "cni.dev/valid-attachments": [],
                          "ipam": {"type": "bridge", "subnet": "10.1.0.0/24",
                                   "dataDir": scratch.data_dir()}});
        Call::new(&host, bin("bridge"), command, Path::new("/nonexistent/x"))
            .within(PROCESS_LIMIT)
            .run(&conf.to_string())
            .err(7, "ipam.type \"bridge\" is this plugin itself");
    }
}

// ---- host-local's lease directory ----------------------------------------------------------

#[derive(Debug)]
enum Entry {
    File(Vec<u8>),
    Dir,
    /// To the sentinel file, which must stay as it is.
    Symlink,
    Fifo,
}

#[derive(Debug)]
struct LeaseCase {
    conf: Value,
    planted: Vec<(String, Entry)>,
    /// Command, container ID, interface.
    steps: Vec<(&'static str, String, &'static str)>,
}

const LEASE_NAMES: &[&str] = &[
    "10.53.0.10",
    "10.53.0.11",
    "10.53.0.12",
    "10.53.0.1",
    "10.99.0.1",
    "2001:db8:1::5",
    "::ffff:10.53.0.11",
    "010.053.000.011",
    "last_reserved_ip.0",
    "last_reserved_ip.1",
    "last_reserved_ip.x",
    "last_reserved_ip.",
    "lock",
    ".10.53.0.10.rcni-tmp",
];

fn lease_name(g: &mut Gen) -> String {
    if g.chance(85) {
        return g.pick(LEASE_NAMES).to_string();
    }
    // A file name is at most 255 bytes.
    let mut name = String::new();
    for c in fuzz::odd_string(g)
        .chars()
        .filter(|c| *c != '/' && *c != '\0')
    {
        if name.len() + c.len_utf8() > 255 {
            break;
        }
        name.push(c);
    }
    match name.as_str() {
        "" | "." | ".." => "x".into(),
        _ => name,
    }
}

fn lease_content(g: &mut Gen) -> Vec<u8> {
    let mut bytes = match g.below(8) {
        0 => vec![b'a'; 1 << 20],
        1 => (0..g.below(512)).map(|_| g.u64() as u8).collect(),
        2 => format!("{}\n", g.pick(LEASE_NAMES)).into_bytes(),
        _ => g.pick(seeds::LEASE_CONTENTS).as_bytes().to_vec(),
    };
    for _ in 0..g.below(3) {
        fuzz::mutate_bytes(g, &mut bytes);
    }
    bytes
}

fn lease_case(g: &mut Gen, scratch: &Scratch) -> LeaseCase {
    let version = *g.pick(&["0.4.0", "1.0.0", "1.1.0"]);
    let data_dir = Scratch::path_str(&scratch.data_dir());
    let ipams = seeds::host_local_ipams(&data_dir, "");
    let mut ipam = g.pick(&ipams).clone();
    ipam.as_object_mut().unwrap().remove("resolvConf");
    let conf = json!({"cniVersion": version, "name": seeds::NET, "type": "host-local",
                      "ipam": ipam, "cni.dev/valid-attachments": [{"containerID": "ctr2", "ifname": "eth1"}]});
    let planted = (0..1 + g.below(6))
        .map(|_| {
            let entry = match g.below(12) {
                0 => Entry::Dir,
                1 => Entry::Symlink,
                2 => Entry::Fifo,
                _ => Entry::File(lease_content(g)),
            };
            (lease_name(g), entry)
        })
        .collect();
    let steps = (0..1 + g.below(3))
        .map(|_| {
            let command = *g.pick(&["ADD", "ADD", "DEL", "CHECK", "GC"]);
            let id = g.pick(&["ctr1", "ctr2", "ctr3"]).to_string();
            (command, id, *g.pick(&["eth0", "eth1"]))
        })
        .collect();
    LeaseCase {
        conf,
        planted,
        steps,
    }
}

fn plant(dir: &Path, name: &str, entry: &Entry, sentinel: &Path) {
    let path = dir.join(name);
    if std::fs::symlink_metadata(&path).is_ok() {
        return; // Planted already under this name (writing to a FIFO would block).
    }
    match entry {
        Entry::File(bytes) => std::fs::write(&path, bytes).unwrap(),
        Entry::Dir => std::fs::create_dir_all(&path).unwrap(),
        Entry::Symlink => std::os::unix::fs::symlink(sentinel, &path).unwrap(),
        Entry::Fifo => {
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()
        }
    }
}

/// Empties a directory (the previous case's leases), entries of any kind.
fn clear(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
}

#[test]
fn fuzz_host_local_lease_files() {
    let host = Netns::new("fz");
    let scratch = Scratch::new();
    fuzz::run(
        target("fuzz_host_local_lease_files", 250, &[2000097]),
        |g| lease_case(g, &scratch),
        |case| {
            let net_dir = scratch.data_dir().join(seeds::NET);
            clear(&net_dir);
            std::fs::create_dir_all(&net_dir).unwrap();
            for (name, entry) in &case.planted {
                plant(&net_dir, name, entry, &scratch.sentinel());
            }
            let stdin = case.conf.to_string();
            for (command, id, ifname) in &case.steps {
                let env = [
                    ("CNI_CONTAINERID", id.clone()),
                    ("CNI_IFNAME", ifname.to_string()),
                ];
                run(&host, "host-local", command, &env, &stdin)?;
            }
            let sentinel = std::fs::read_to_string(scratch.sentinel()).unwrap_or_default();
            if sentinel != "sentinel" {
                return Err(format!(
                    "a write went through a planted symlink: {sentinel:?}"
                ));
            }
            Ok(())
        },
    );
}
