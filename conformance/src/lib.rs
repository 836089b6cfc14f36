//! Test harness: private network namespaces (a "host" per test plus containers), the built
//! binaries run inside them through the real protocol, and helpers to inspect the kernel.
//!
//! Every object gets a name with a per-process unique prefix and is removed on drop, also when
//! the test fails. Nothing here touches the machine's own network namespace.

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
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Outcome {
        status: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One plugin invocation through the protocol, run inside `host`.
pub struct Call<'a> {
    host: &'a Netns,
    plugin: PathBuf,
    env: Vec<(String, String)>,
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

    pub fn run(self, stdin: &str) -> Outcome {
        let mut cmd = self.host.command(&self.plugin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env);
        outcome(&mut cmd, stdin)
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

    pub fn write_conf(&self, file: &str, conf: &Value) {
        std::fs::write(
            self.net_dir().join(file),
            serde_json::to_vec_pretty(conf).unwrap(),
        )
        .unwrap();
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
