//! Test harness: private network namespaces (a "host" per test plus containers), the built
//! binaries run inside them through the real protocol, and helpers to inspect the kernel.
//!
//! Every object gets a name with a per-process unique prefix and is removed on drop, also when
//! the test fails. Nothing here touches the machine's own network namespace.

pub mod fuzz;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// Where our built binaries are (`CNI_TEST_BIN_DIR`, else the workspace's debug target).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("CNI_TEST_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"))
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is not built (run cargo build --workspace first)",
        path.display()
    );
    path
}

/// Debian's reference Go plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// The reference Go cnitool, built by `conformance/scripts/build-go-cnitool.sh`.
pub fn go_cnitool() -> PathBuf {
    std::env::var_os("GO_CNITOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go-cnitool/cnitool")
        })
}

/// A name no other test (or test process) uses: `<tag><pid base36><counter>`, short enough
/// for an interface name when `tag` is at most 3 characters.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", base36(std::process::id()))
}

fn base36(mut n: u32) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("rcni-{}", unique(tag));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        Netns {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        }
    }

    /// `ip -n <ns> -j <args>` parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let out = run_ok(Command::new("ip").args(["-n", &self.name, "-j"]).args(args));
        serde_json::from_slice(&out).unwrap_or(Value::Null)
    }

    pub fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// The flags of link `name`, e.g. `["LOOPBACK","UP","LOWER_UP"]`.
    pub fn link_flags(&self, name: &str) -> Vec<String> {
        let links = self.ip_json(&["link", "show", "dev", name]);
        links[0]["flags"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn is_up(&self, name: &str) -> bool {
        self.link_flags(name).iter().any(|f| f == "UP")
    }

    /// Runs `cmd` with its process inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let ns = File::open(&self.path).unwrap();
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe; the fd stays open in the child until exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What a plugin (or tool) did: exit status, stdout parsed when it is JSON, stderr.
#[derive(Debug)]
pub struct Outcome {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: Value,
}

impl Outcome {
    pub fn ok(&self) -> &Value {
        assert_eq!(self.status, 0, "expected success: {self:?}");
        &self.json
    }

    /// Asserts a CNI error with `code` whose message contains `needle`.
    pub fn err(&self, code: u64, needle: &str) {
        assert_ne!(self.status, 0, "expected failure: {self:?}");
        assert_eq!(
            self.json["code"].as_u64(),
            Some(code),
            "wrong code: {self:?}"
        );
        let msg = self.json["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "message {msg:?} does not contain {needle:?}"
        );
    }
}

pub fn outcome(cmd: &mut Command, stdin: &str) -> Outcome {
    outcome_within(cmd, stdin, None)
}

/// As [`outcome`]; with a `limit`, a process still running after it is killed and the test
/// fails (a hang must not hang the suite).
pub fn outcome_within(
    cmd: &mut Command,
    stdin: &str,
    limit: Option<std::time::Duration>,
) -> Outcome {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    // A writer thread: a plugin that stops reading must not block the test before the limit.
    let writer = std::thread::spawn(move || {
        let mut input = input;
        let _ = input.write_all(stdin.as_bytes());
    });
    // Readers too: a plugin printing more than a pipe holds must not block before the limit.
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    if let Some(limit) = limit {
        let deadline = std::time::Instant::now() + limit;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not answer within {limit:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let status = child.wait().unwrap();
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&stdout.join().unwrap()).into_owned();
    Outcome {
        status: status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
    }
}

/// One plugin invocation through the protocol, run inside `host`.
pub struct Call<'a> {
    host: &'a Netns,
    plugin: PathBuf,
    env: Vec<(String, String)>,
    limit: Option<std::time::Duration>,
    wrapper: Vec<String>,
}

impl<'a> Call<'a> {
    /// `command` with a full valid environment; override or remove variables with `env`/`unset`.
    pub fn new(host: &'a Netns, plugin: PathBuf, command: &str, netns: &Path) -> Call<'a> {
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "ctr1"),
            ("CNI_NETNS", &netns.display().to_string()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &bin_dir().display().to_string()),
        ];
        Call {
            host,
            plugin,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            limit: None,
            wrapper: Vec::new(),
        }
    }

    /// Fails the test (after killing the plugin) if it has not answered within `limit`.
    pub fn within(mut self, limit: std::time::Duration) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn unset(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// Runs the plugin as the last argument of `wrapper` (`strace -f -o <file>`,
    /// `prlimit --as=… --`).
    pub fn under(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|w| w.to_string()).collect();
        self
    }

    pub fn run(self, stdin: &str) -> Outcome {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = self.host.command(program);
                cmd.args(args).arg(&self.plugin);
                cmd
            }
            None => self.host.command(&self.plugin),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env);
        outcome_within(&mut cmd, stdin, self.limit)
    }
}

/// A private directory of network configs and a result cache, for running a runtime.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn net_dir(&self) -> PathBuf {
        let d = self.dir.path().join("net.d");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Writes `conf` to `file` under the config directory (`file` may name a subdirectory).
    pub fn write_conf(&self, file: &str, conf: &Value) {
        let path = self.net_dir().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec_pretty(conf).unwrap()).unwrap();
    }
}

impl Default for Workdir {
    fn default() -> Self {
        Workdir::new()
    }
}

/// Our cnitool, run inside `host` with this workdir's configs and cache.
pub fn cnitool(host: &Netns, work: &Workdir, args: &[&str]) -> Outcome {
    let mut cmd = host.command(bin("cnitool"));
    cmd.args(args)
        .env("NETCONFPATH", work.net_dir())
        .env("CNI_PATH", bin_dir())
        .env("CNI_CACHE_DIR", work.cache_dir());
    outcome(&mut cmd, "")
}

/// The container ID every cnitool derives for a namespace path.
pub fn cnitool_container_id(netns: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha512::digest(netns.display().to_string().as_bytes());
    digest[..10]
        .iter()
        .fold("cnitool-".to_string(), |s, b| format!("{s}{b:02x}"))
}

pub const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// One invocation of a plugin that needs no namespace (an IPAM plugin such as host-local, which
/// ignores `CNI_NETNS`), run from the test process with a clean environment.
#[derive(Clone)]
pub struct Exec {
    plugin: PathBuf,
    env: Vec<(String, String)>,
}

impl Exec {
    /// `command` with a full valid environment: container `ctr1`, `eth0`, `CNI_NETNS=/dev/null`.
    pub fn new(plugin: impl Into<PathBuf>, command: &str) -> Exec {
        let env = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", "ctr1".to_string()),
            ("CNI_NETNS", "/dev/null".to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", bin_dir().display().to_string()),
        ];
        Exec {
            plugin: plugin.into(),
            env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn unset(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// The process, not yet started (for tests that signal it).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.plugin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn run(&self, stdin: &str) -> Outcome {
        outcome(&mut self.command(), stdin)
    }
}

/// A host-local network for black-box tests: the config (`name`, `type`, `ipam.type` filled in)
/// with its own temporary `ipam.dataDir`, which goes away with the value.
pub struct HostLocalNet {
    pub data: tempfile::TempDir,
    /// The whole stdin config; tests may change it.
    pub conf: Value,
}

impl HostLocalNet {
    pub const NAME: &'static str = "hl-net";

    pub fn new(version: &str, mut ipam: Value) -> HostLocalNet {
        let data = tempfile::tempdir().unwrap();
        ipam["type"] = "host-local".into();
        ipam["dataDir"] = data.path().display().to_string().into();
        let conf = serde_json::json!({
            "cniVersion": version, "name": Self::NAME, "type": "host-local", "ipam": ipam,
        });
        HostLocalNet { data, conf }
    }

    /// Sets a top-level key of the config (`runtimeConfig`, `args`, …).
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.conf[key] = value;
        self
    }

    pub fn stdin(&self) -> String {
        self.conf.to_string()
    }

    /// The config with one more top-level key (`prevResult`, `cni.dev/valid-attachments`, …).
    pub fn stdin_with(&self, key: &str, value: Value) -> String {
        let mut conf = self.conf.clone();
        conf[key] = value;
        conf.to_string()
    }

    /// The network's lease directory, `<dataDir>/<name>`.
    pub fn dir(&self) -> PathBuf {
        self.data.path().join(Self::NAME)
    }

    /// Our host-local, for container `id` and interface `ifname`.
    pub fn exec(&self, command: &str, id: &str, ifname: &str) -> Exec {
        self.exec_as(&bin("host-local"), command, id, ifname)
    }

    /// Another host-local binary (the reference) on the same config.
    pub fn exec_as(&self, plugin: &Path, command: &str, id: &str, ifname: &str) -> Exec {
        Exec::new(plugin, command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_IFNAME", ifname)
    }

    pub fn run(&self, command: &str, id: &str, ifname: &str) -> Outcome {
        self.exec(command, id, ifname).run(&self.stdin())
    }

    /// A successful ADD for (`id`, eth0); its result.
    pub fn add(&self, id: &str) -> Value {
        self.run("ADD", id, "eth0").ok().clone()
    }

    /// A successful DEL for (`id`, eth0).
    pub fn del(&self, id: &str) {
        let out = self.run("DEL", id, "eth0");
        out.ok();
        assert!(out.stdout.is_empty(), "DEL prints nothing: {out:?}");
    }

    /// Lease files: address (file name) → content.
    pub fn leases(&self) -> std::collections::BTreeMap<String, String> {
        dir_files(&self.dir())
            .into_iter()
            .filter(|(name, _)| name.parse::<std::net::IpAddr>().is_ok())
            .map(|(name, f)| (name, String::from_utf8_lossy(&f.content).into_owned()))
            .collect()
    }

    /// The content of `last_reserved_ip.<set>`, if the file exists.
    pub fn last_reserved(&self, set: usize) -> Option<String> {
        std::fs::read_to_string(self.dir().join(format!("last_reserved_ip.{set}"))).ok()
    }
}

/// One directory entry as `dir_files` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub content: Vec<u8>,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub is_dir: bool,
}

/// Every entry of `dir` (not recursive) by name; empty when `dir` does not exist. An entry
/// removed while we read (another process at work) is left out.
pub fn dir_files(dir: &Path) -> std::collections::BTreeMap<String, FileState> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Default::default();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let meta = std::fs::symlink_metadata(e.path()).ok()?;
            let content = if meta.is_file() {
                std::fs::read(e.path()).ok()?
            } else {
                Vec::new()
            };
            let state = FileState {
                content,
                mode: meta.permissions().mode() & 0o7777,
                is_dir: meta.is_dir(),
            };
            Some((e.file_name().to_string_lossy().into_owned(), state))
        })
        .collect()
}

/// This process's umask, read without changing it (`Umask:` in /proc/self/status).
pub fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

/// The addresses of a result in any version (`ip4`/`ip6` for 0.1.0/0.2.0, else `ips`), without
/// their prefix length.
pub fn result_ips(result: &Value) -> Vec<String> {
    let with_prefix: Vec<&str> = match result.get("ips") {
        Some(ips) => ips
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| ip["address"].as_str().unwrap())
            .collect(),
        None => ["ip4", "ip6"]
            .iter()
            .filter_map(|k| result.get(*k)?["ip"].as_str())
            .collect(),
    };
    with_prefix
        .iter()
        .map(|a| a.split_once('/').map_or(*a, |(ip, _)| ip).to_string())
        .collect()
}

// ---- Kernel-state helpers for the bridge suites (bridge.rs, bridge_differential.rs) ----------

impl Netns {
    /// `ip -d -j link show dev <name>` in this namespace: the link's object, `None` when there
    /// is no such link.
    pub fn link(&self, name: &str) -> Option<Value> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-d", "-j", "link", "show", "dev", name])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        links.get(0).cloned()
    }

    /// The names of every link in this namespace.
    pub fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .map(|links| {
                links
                    .iter()
                    .filter_map(|l| l["ifname"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The addresses on `dev` as `address/prefix`, link-local (`scope link`) ones left out.
    pub fn global_addrs(&self, dev: &str) -> Vec<String> {
        self.addr_info(dev)
            .iter()
            .filter(|a| a["scope"] != "link")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    /// The `addr_info` objects of `dev` (every family and scope).
    pub fn addr_info(&self, dev: &str) -> Vec<Value> {
        let v = self.ip_json(&["addr", "show", "dev", dev]);
        v[0]["addr_info"].as_array().cloned().unwrap_or_default()
    }

    /// Sets `/proc/sys/<key>` (slash-separated) inside this namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        run_ok(
            self.command("sysctl")
                .args(["-qw", &format!("{key}={value}")]),
        );
    }

    /// `/proc/sys/<key>` (slash-separated) as read from inside this namespace.
    pub fn sysctl(&self, key: &str) -> String {
        let out = run_ok(self.command("cat").arg(format!("/proc/sys/{key}")));
        String::from_utf8_lossy(&out).trim().to_string()
    }

    /// Waits (up to 5 s) until no global address on `dev` is tentative (IPv6 duplicate address
    /// detection is over), so that traffic to it is answered.
    pub fn wait_dad(&self, dev: &str) {
        for _ in 0..100 {
            let info = self.addr_info(dev);
            if !info
                .iter()
                .any(|a| a["tentative"] == true && a["scope"] != "link")
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{dev} in {} still has tentative addresses", self.name);
    }

    /// Whether one of up to `tries` single pings from this namespace to `addr` is answered.
    pub fn ping(&self, addr: &str, tries: u32) -> bool {
        (0..tries).any(|_| {
            self.command("ping")
                .args(["-n", "-q", "-c", "1", "-W", "1", addr])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        })
    }

    /// The rules of nftables table `family table` as `nft -j` lists them; none when the table
    /// does not exist.
    pub fn nft_table_rules(&self, family: &str, table: &str) -> Vec<Value> {
        let out = self
            .command("nft")
            .args(["-j", "list", "table", family, table])
            .output()
            .unwrap();
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("rule").cloned())
            .collect()
    }

    /// Applies `script` with `nft -f -` in this namespace; fails the test if nft refuses it.
    pub fn nft(&self, script: &str) {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `nft -j list ruleset` in this namespace: the `nftables` array.
    pub fn nft_ruleset(&self) -> Vec<Value> {
        let out = run_ok(self.command("nft").args(["-j", "list", "ruleset"]));
        let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        v["nftables"].as_array().cloned().unwrap_or_default()
    }
}

/// Whether this kernel has bridge VLAN filtering (`CONFIG_BRIDGE_VLAN_FILTERING`): probed once
/// by creating a filtering bridge in a throwaway namespace.
pub fn bridge_vlan_filtering_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let ns = Netns::new("v");
        Command::new("ip")
            .args(["-n", &ns.name, "link", "add", "probe0", "type", "bridge"])
            .args(["vlan_filtering", "1"])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    })
}

/// The lease files (file names that are IP addresses) in a host-local network directory.
pub fn lease_files(network_dir: &Path) -> Vec<String> {
    dir_files(network_dir)
        .into_keys()
        .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

// ---- end of the bridge suites' helpers ---------------------------------------------------------

// ---- Port-mapping suites' helpers (portmap.rs, portmap_differential.rs) ----------------------

/// Our cnitool as `cnitool()` runs it, with extra environment (`CAP_ARGS`, `CNI_PATH`, …).
pub fn cnitool_env(host: &Netns, work: &Workdir, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut cmd = host.command(bin("cnitool"));
    cmd.args(args)
        .env("NETCONFPATH", work.net_dir())
        .env("CNI_PATH", bin_dir())
        .env("CNI_CACHE_DIR", work.cache_dir())
        .envs(env.iter().copied());
    outcome(&mut cmd, "")
}

/// A background process, killed and reaped on drop.
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Netns {
    /// `rcni-echo serve <proto> <addr> <reply>` in this namespace, until the guard is dropped.
    pub fn serve(&self, proto: &str, addr: &str, reply: &str) -> Background {
        let child = self
            .command(bin("rcni-echo"))
            .args(["serve", proto, addr, reply])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Background(child)
    }

    /// `rcni-echo ask <proto> <addr> <timeout_ms>` from this namespace: the reply, if any.
    pub fn ask(&self, proto: &str, addr: &str, timeout_ms: u64) -> Option<String> {
        let out = self
            .command(bin("rcni-echo"))
            .args(["ask", proto, addr, &timeout_ms.to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Asks until the reply is `want`, for at most `within` (servers starting up); whether it
    /// came.
    pub fn answers(
        &self,
        proto: &str,
        addr: &str,
        want: &str,
        within: std::time::Duration,
    ) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.ask(proto, addr, 200).as_deref() == Some(want) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A new namespace joined to this one by a veth pair: `local` addresses (`addr/prefix`) on
    /// this end, `remote` on the new end, which gets a default route per family via the first
    /// local address of that family. IPv6 addresses skip duplicate address detection.
    pub fn veth_peer(&self, tag: &str, local: &[&str], remote: &[&str]) -> Netns {
        let peer = Netns::new(tag);
        let (here, there) = (unique("vp"), unique("vq"));
        self.ip(&[
            "link", "add", &here, "type", "veth", "peer", "name", &there, "netns", &peer.name,
        ]);
        let add = |ns: &Netns, dev: &str, addr: &str| {
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
            } else {
                ns.ip(&["addr", "add", addr, "dev", dev]);
            }
        };
        local.iter().for_each(|a| add(self, &here, a));
        remote.iter().for_each(|a| add(&peer, &there, a));
        self.ip(&["link", "set", &here, "up"]);
        peer.ip(&["link", "set", &there, "up"]);
        for v6 in [false, true] {
            if let Some(gw) = local.iter().find(|a| a.contains(':') == v6) {
                let gw = gw.split('/').next().unwrap();
                let fam = if v6 { "-6" } else { "-4" };
                peer.ip(&[fam, "route", "add", "default", "via", gw]);
            }
        }
        peer
    }
}

// ---- end of the port-mapping suites' helpers ---------------------------------------------------

/// A "node" for chain tests: a host namespace with `lo` up, IPv6 DAD off (gateway addresses
/// usable at once), and an uplink to an "external" namespace: the host is 192.168.77.1 and .3,
/// fd77::1 and ::3; the external side .2 and ::2.
pub fn node_with_uplink() -> (Netns, Netns) {
    let host = Netns::new("h");
    host.ip(&["link", "set", "lo", "up"]);
    let dad = host
        .command("sysctl")
        .args(["-qw", "net.ipv6.conf.default.accept_dad=0"])
        .status()
        .unwrap();
    assert!(dad.success());
    let ext = host.veth_peer(
        "e",
        &[
            "192.168.77.1/24",
            "192.168.77.3/24",
            "fd77::1/64",
            "fd77::3/64",
        ],
        &["192.168.77.2/24", "fd77::2/64"],
    );
    (host, ext)
}

// ---- Reference-state helpers (reference_check.rs) ------------------------------------------

/// The newest reference plugins, unpacked under `target/reference-<version>/` by
/// `conformance/scripts/fetch-reference.sh` (the highest version there).
pub fn newest_reference_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&target)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("reference-"))
                && p.join("portmap").is_file()
        })
        .collect();
    dirs.sort_by_key(|p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name.trim_start_matches("reference-")
            .split('.')
            .map(|n| n.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    dirs.pop().unwrap_or_else(|| {
        panic!(
            "no reference plugins in {}/reference-*: run conformance/scripts/fetch-reference.sh target",
            target.display()
        )
    })
}

// ---- Crash and churn suites' helpers (crash.rs, churn.rs) -------------------------------------

/// Our cnitool for `args` inside `host` with this workdir's configs and cache and extra
/// environment, not yet started (for tests that signal it or bound its time).
pub fn cnitool_command(
    host: &Netns,
    work: &Workdir,
    args: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = host.command(bin("cnitool"));
    cmd.args(args)
        .env("NETCONFPATH", work.net_dir())
        .env("CNI_PATH", bin_dir())
        .env("CNI_CACHE_DIR", work.cache_dir())
        .envs(env.iter().copied());
    cmd
}

/// A conflist like containerd's default: loopback, bridge `bridge` (gateway, masquerade,
/// hairpin, spoof check) with host-local on `subnets` (one range set each) in `data`, and
/// portmap with the `portMappings` capability; `backend` `"iptables"` puts both bridge's
/// masquerade and portmap on iptables.
pub fn containerd_conflist(
    network: &str,
    bridge: &str,
    data: &Path,
    subnets: &[&str],
    backend: &str,
) -> Value {
    let ranges: Vec<Value> = subnets
        .iter()
        .map(|s| serde_json::json!([{ "subnet": s }]))
        .collect();
    let routes: Vec<Value> = subnets
        .iter()
        .map(|s| serde_json::json!({"dst": if s.contains(':') { "::/0" } else { "0.0.0.0/0" }}))
        .collect();
    serde_json::json!({
        "cniVersion": "1.1.0", "name": network,
        "plugins": [
            {"type": "loopback"},
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
             "ipMasqBackend": backend, "hairpinMode": true, "macspoofchk": true,
             "ipam": {"type": "host-local", "dataDir": data, "ranges": ranges,
                      "routes": routes}},
            {"type": "portmap", "backend": backend, "capabilities": {"portMappings": true}},
        ],
    })
}

impl Netns {
    /// Deletes the first rule of nat `chain` (`program`: iptables or ip6tables) whose
    /// `-L -n` line contains `needle`; fails the test if there is none.
    pub fn delete_nat_rule(&self, program: &str, chain: &str, needle: &str) {
        let listing = run_ok(self.command(program).args([
            "-w",
            "-t",
            "nat",
            "-L",
            chain,
            "-n",
            "--line-numbers",
        ]));
        let listing = String::from_utf8_lossy(&listing).into_owned();
        let number = listing
            .lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no rule with {needle:?} in {program} {chain}:\n{listing}"))
            .to_string();
        run_ok(
            self.command(program)
                .args(["-w", "-t", "nat", "-D", chain, &number]),
        );
    }

    /// Deletes the rules of nftables chain `family table chain` whose comment `pick` accepts;
    /// how many there were.
    pub fn nft_delete_rules(
        &self,
        family: &str,
        table: &str,
        chain: &str,
        pick: impl Fn(&str) -> bool,
    ) -> usize {
        let script: Vec<String> = self
            .nft_table_rules(family, table)
            .iter()
            .filter(|r| r["chain"] == chain && r["comment"].as_str().is_some_and(&pick))
            .map(|r| {
                format!(
                    "delete rule {family} {table} {chain} handle {}",
                    r["handle"]
                )
            })
            .collect();
        if !script.is_empty() {
            self.nft(&script.join("\n"));
        }
        script.len()
    }
}

// ---- Node-global paths (crio_conflists.rs) ---------------------------------------------------

/// `program` to run in `host`, in a private mount namespace where `var_lib` (a directory of
/// the test) is bind-mounted over /var/lib: node-global paths such as /var/lib/cni
/// (host-local's default `dataDir`, libcni's result cache) are the test's own, and the
/// machine's are never touched. The mount lives and dies with the process.
pub fn command_with_private_var_lib(host: &Netns, var_lib: &Path, program: &Path) -> Command {
    let mut cmd = host.command("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /var/lib && exec "$@""#)
        .arg(var_lib)
        .arg(program);
    cmd
}

/// The program names in an `strace -f -e trace=execve` log (see `Call::under`).
pub fn executed_programs(trace: &Path) -> Vec<String> {
    std::fs::read_to_string(trace)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once("execve(\"")?.1.split_once('"'))
        .map(|(program, _)| program.rsplit('/').next().unwrap().to_string())
        .collect()
}

impl Netns {
    /// Every firewall rule, chain, set and element in this namespace as text that compares
    /// equal when nothing changed: `nft -j list ruleset` without handles and counter values,
    /// then `iptables-save` and `ip6tables-save` without comments and counters.
    pub fn firewall_state(&self) -> String {
        fn strip(v: &mut Value) {
            match v {
                Value::Object(o) => {
                    o.remove("handle");
                    for (key, value) in o.iter_mut() {
                        if key == "packets" || key == "bytes" {
                            *value = Value::Null;
                        } else {
                            strip(value);
                        }
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let mut nft = Value::Array(self.nft_ruleset());
        strip(&mut nft);
        let mut state = serde_json::to_string_pretty(&nft).unwrap();
        for save in ["iptables-save", "ip6tables-save"] {
            let out = run_ok(&mut self.command(save));
            for line in String::from_utf8_lossy(&out).lines() {
                if line.starts_with('#') {
                    continue;
                }
                let line = match line.rsplit_once(" [") {
                    Some((chain, counters)) if line.starts_with(':') && counters.ends_with(']') => {
                        chain.to_string()
                    }
                    _ => line.to_string(),
                };
                state.push_str(&format!("\n{save}: {line}"));
            }
        }
        state
    }
}

/// Every entry under `dir` (recursively), as paths relative to it, except those `keep`
/// accepts; empty when `dir` does not exist.
pub fn files_under(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            } else if !keep(&rel) {
                found.push(rel);
            }
        }
    }
    found.sort();
    found
}
