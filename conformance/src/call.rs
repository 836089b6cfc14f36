//! Plugin calls through the CNI protocol and what they answered.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{Netns, bin_dir};

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

/// One plugin invocation through the protocol with a clean environment: inside a `host`
/// namespace ([`Call::new`]) or, for a plugin that needs none, from the test process
/// ([`Call::outside`]).
pub struct Call<'a> {
    host: Option<&'a Netns>,
    plugin: PathBuf,
    env: Vec<(String, String)>,
    limit: Option<std::time::Duration>,
    wrapper: Vec<String>,
}

impl<'a> Call<'a> {
    /// `command` with a full valid environment; override or remove variables with `env`/`unset`.
    pub fn new(host: &'a Netns, plugin: PathBuf, command: &str, netns: &Path) -> Call<'a> {
        Call::with_netns(Some(host), plugin, command, &netns.display().to_string())
    }

    /// A plugin that needs no namespace (an IPAM plugin such as host-local, which ignores
    /// `CNI_NETNS`), run from the test process: `CNI_NETNS=/dev/null`.
    pub fn outside(plugin: impl Into<PathBuf>, command: &str) -> Call<'a> {
        Call::with_netns(None, plugin.into(), command, "/dev/null")
    }

    /// Container `ctr1`, `eth0`, our binaries as `CNI_PATH`.
    fn with_netns(host: Option<&'a Netns>, plugin: PathBuf, command: &str, netns: &str) -> Self {
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "ctr1"),
            ("CNI_NETNS", netns),
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
    pub fn under(mut self, wrapper: &[impl AsRef<str>]) -> Self {
        self.wrapper = wrapper.iter().map(|w| w.as_ref().to_string()).collect();
        self
    }

    /// The process, not yet started (for tests that signal it).
    pub fn command(&self) -> Command {
        let program = |p: &dyn AsRef<std::ffi::OsStr>| match self.host {
            Some(host) => host.command(p),
            None => Command::new(p),
        };
        let mut cmd = match self.wrapper.split_first() {
            Some((wrapper, args)) => {
                let mut cmd = program(wrapper);
                cmd.args(args).arg(&self.plugin);
                cmd
            }
            None => program(&self.plugin),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn run(&self, stdin: &str) -> Outcome {
        outcome_within(&mut self.command(), stdin, self.limit)
    }
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

/// The wrapper (`strace`) that logs to `trace` every program started under it; read the log
/// with [`executed_programs`].
pub fn execve_tracer(trace: &Path) -> Vec<String> {
    let args = ["strace", "-f", "-qq", "-e", "trace=execve", "-o"];
    let mut tracer: Vec<String> = args.map(String::from).into();
    tracer.push(trace.display().to_string());
    tracer
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
