//! The plugin side of the protocol: environment and stdin in, one command dispatched to the
//! plugin, the result or error JSON out on stdout.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};

use crate::kernel::netns::{Netns, NetnsError};
use crate::protocol::args::CniArgs;
use crate::protocol::conf::{NetConf, valid_identifier, validate_ifname};
use crate::protocol::error::{Code, Error, Result};
use crate::protocol::result::CniResult;
use crate::protocol::version::Version;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Which `CNI_*` variables must be set (non-empty) for this command.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc | Command::Status => &["CNI_PATH"],
            Command::Version => &[],
        }
    }
}

/// One validated invocation.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    /// Empty for GC and STATUS.
    pub container_id: String,
    /// `None` when `CNI_NETNS` is empty (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` as given; plugins parse it with [`Request::args`].
    pub raw_args: String,
    pub path: Vec<PathBuf>,
    pub version: Version,
    pub conf: NetConf,
    /// The whole config object, for plugin-specific keys and for delegates.
    pub raw: Value,
    pub stdin: Vec<u8>,
}

impl Request {
    pub fn args(&self) -> Result<CniArgs> {
        CniArgs::parse(&self.raw_args)
    }

    /// The plugin's own config type, read with Go's key matching; errors name the bad key.
    pub fn plugin_conf<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        crate::protocol::json::from_value(self.raw.clone())
            .map_err(|e| Error::invalid_config(format!("invalid network config: {e}")))
    }

    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        self.conf.prev_result(self.version)
    }

    /// The container's namespace, for ADD and CHECK: it must exist.
    pub fn netns(&self) -> Result<Netns> {
        let path = self
            .netns
            .as_ref()
            .ok_or_else(|| Error::invalid_env("CNI_NETNS is empty"))?;
        Netns::open(path).map_err(|e| Error::from(e).context("CNI_NETNS"))
    }

    /// The container's namespace for DEL: `None` when there is none to clean up (empty
    /// `CNI_NETNS`, a path that is gone, or one that no longer holds a namespace, as a runtime
    /// leaves behind after unmounting it).
    pub fn netns_if_present(&self) -> Result<Option<Netns>> {
        let Some(path) = &self.netns else {
            return Ok(None);
        };
        match Netns::open(path) {
            Ok(ns) => Ok(Some(ns)),
            Err(NetnsError::NotExist(_) | NetnsError::NotNetns(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

pub trait Plugin {
    fn add(&self, req: &Request) -> Result<CniResult>;
    fn del(&self, req: &Request) -> Result<()>;
    fn check(&self, req: &Request) -> Result<()>;
    fn gc(&self, _req: &Request) -> Result<()> {
        Ok(())
    }
    fn status(&self, _req: &Request) -> Result<()> {
        Ok(())
    }
}

/// Entry point of every plugin binary.
pub fn run(plugin: &impl Plugin, about: &str) -> ExitCode {
    ExitCode::from(run_status(plugin, about))
}

/// [`run`] for [`plugin_main!`](crate::plugin_main): the exit status, everything written.
pub fn run_status(plugin: &impl Plugin, about: &str) -> u8 {
    install_panic_hook();
    let env = |k: &str| std::env::var(k).ok();
    // Buffered, not the locked stdout: a panic hook in a helper thread must be able to write.
    let mut out = Vec::new();
    let code = dispatch(plugin, about, &env, &mut std::io::stdin().lock(), &mut out);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
    code
}

/// What std's start-up does before `main` that a plugin needs: a write to a pipe whose reader
/// is gone (an IPAM plugin that exits without reading its config) is an error, not SIGPIPE.
pub fn start() {
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// A plugin binary's entry point (with `#![cfg_attr(not(test), no_main)]`): the C `main`,
/// without std's runtime start-up. A plugin starts for every pod, and that start-up (reading
/// /proc/self/maps for the main thread's stack guard, its signal handlers) is about a quarter
/// of a plugin's start; a stack overflow is then a plain SIGSEGV.
#[macro_export]
macro_rules! plugin_main {
    ($plugin:expr, $about:expr) => {
        #[cfg(not(test))]
        #[unsafe(no_mangle)]
        extern "C" fn main(
            _argc: ::std::ffi::c_int,
            _argv: *const *const ::std::ffi::c_char,
        ) -> ::std::ffi::c_int {
            $crate::protocol::skel::start();
            ::std::ffi::c_int::from($crate::protocol::skel::run_status($plugin, $about))
        }

        // Unit tests get the test harness's main; this one keeps the plugin in use there.
        #[cfg(test)]
        fn main() -> ::std::process::ExitCode {
            $crate::protocol::skel::run($plugin, $about)
        }
    };
}

/// A panic is a bug; the runtime still gets a CNI error object instead of a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let where_ = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let err = Error::internal(format!("internal error: {msg}{where_}"));
        let _ = std::io::stdout().write_all(&crate::protocol::json::to_pretty(
            &err.to_json(Version::LATEST),
        ));
        let _ = std::io::stdout().flush();
        eprintln!("internal error: {msg}{where_}");
    }));
}

/// The whole protocol with its inputs and output passed in: testable without a process.
/// Returns the exit status.
pub fn dispatch(
    plugin: &impl Plugin,
    about: &str,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
) -> u8 {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let Some(command) = var("CNI_COMMAND") else {
        eprintln!(
            "{about}\nCNI protocol versions supported: {}",
            Version::list()
        );
        return 0;
    };
    let mut version = Version::LATEST;
    let outcome = (|| {
        let cmd = Command::parse(&command)
            .ok_or_else(|| Error::invalid_env(format!("unknown CNI_COMMAND: {command}")))?;
        let mut input = Vec::new();
        stdin
            .read_to_end(&mut input)
            .map_err(|e| Error::io(format!("error reading from stdin: {e}")))?;
        if cmd == Command::Version {
            return Ok(Some(version_info(&input)));
        }
        let req = request(cmd, &var, env, input, &mut version)?;
        execute(plugin, &req)
    })();
    match outcome {
        Ok(Some(out)) => {
            let _ = stdout.write_all(&out);
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = stdout.write_all(&crate::protocol::json::to_pretty(&e.to_json(version)));
            1
        }
    }
}

fn version_info(input: &[u8]) -> Vec<u8> {
    // The spec echoes the request's version; an unusable request gets the newest.
    let asked = serde_json::from_slice::<Value>(input)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str()?.parse::<Version>().ok())
        .unwrap_or(Version::LATEST);
    let all: Vec<&str> = Version::ALL.iter().map(|v| v.as_str()).collect();
    let mut out = serde_json::to_vec(&json!({"cniVersion": asked, "supportedVersions": all}))
        .unwrap_or_default();
    out.push(b'\n');
    out
}

fn request(
    command: Command,
    var: &dyn Fn(&str) -> Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: Vec<u8>,
    version: &mut Version,
) -> Result<Request> {
    let (container_id, ifname) = identity(command, var)?;
    let (raw, conf) = parse_conf(&stdin)?;
    let version = negotiate(command, &conf, version)?;
    Ok(Request {
        command,
        container_id,
        netns: container_netns(command, var, env)?,
        ifname,
        raw_args: var("CNI_ARGS").unwrap_or_default(),
        path: cni_path(var),
        version,
        conf,
        raw,
        stdin,
    })
}

/// The required `CNI_*` variables are set; the container ID and interface name are valid.
fn identity(command: Command, var: &dyn Fn(&str) -> Option<String>) -> Result<(String, String)> {
    let missing: Vec<&str> = command
        .required()
        .iter()
        .copied()
        .filter(|k| var(k).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(Error::invalid_env(format!(
            "required env variables [{}] missing",
            missing.join(",")
        )));
    }
    let container_id = var("CNI_CONTAINERID").unwrap_or_default();
    let ifname = var("CNI_IFNAME").unwrap_or_default();
    if command.required().contains(&"CNI_CONTAINERID") && !valid_identifier(&container_id) {
        return Err(Error::invalid_env(format!(
            "invalid characters in CNI_CONTAINERID {container_id:?}"
        ))
        .with_details("must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"));
    }
    if command.required().contains(&"CNI_IFNAME") {
        validate_ifname(&ifname)?;
    }
    Ok((container_id, ifname))
}

fn parse_conf(stdin: &[u8]) -> Result<(Value, NetConf)> {
    let raw: Value = serde_json::from_slice(stdin)
        .map_err(|e| Error::decode(format!("error parsing network config from stdin: {e}")))?;
    if !raw.is_object() {
        return Err(Error::decode(
            "network config on stdin is not a JSON object",
        ));
    }
    let conf = NetConf::parse(&raw)
        .map_err(|e| Error::decode(format!("error parsing network config: {e}")))?;
    Ok((raw, conf))
}

/// The config's version, supported and allowing `command`. From here on errors are labelled
/// (`label`) with the version the runtime asked for, when known.
fn negotiate(command: Command, conf: &NetConf, label: &mut Version) -> Result<Version> {
    let asked = conf
        .cni_version
        .as_deref()
        .unwrap_or(Version::DEFAULT.as_str());
    let parsed = asked.parse::<Version>();
    if let Ok(v) = parsed {
        *label = v;
    }
    if conf.name.is_empty() {
        return Err(Error::invalid_config("missing network name (key \"name\")"));
    }
    if !valid_identifier(&conf.name) {
        return Err(Error::invalid_config(format!(
            "invalid characters in network name {:?}",
            conf.name
        ))
        .with_details("must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"));
    }
    let version = parsed.map_err(|_| {
        Error::incompatible(format!(
            "incompatible CNI versions: cniVersion {asked:?} is not supported"
        ))
        .with_details(format!("plugin supports {}", Version::list()))
    })?;
    match command {
        Command::Check if !version.has_check() => Err(Error::incompatible(format!(
            "config version {version} does not allow CHECK (needs 0.4.0)"
        ))),
        Command::Gc | Command::Status if !version.has_gc_and_status() => {
            Err(Error::incompatible(format!(
                "config version {version} does not allow {} (needs 1.1.0)",
                command.as_str()
            )))
        }
        _ => Ok(version),
    }
}

/// `CNI_NETNS`, refused when it is the plugin's own namespace (unless overridden).
fn container_netns(
    command: Command,
    var: &dyn Fn(&str) -> Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<PathBuf>> {
    let netns = var("CNI_NETNS").map(PathBuf::from);
    if let Some(path) = &netns
        && matches!(command, Command::Add | Command::Check | Command::Del)
        && !netns_override(env)
        && let Err(e) = refuse_own_netns(path)
    {
        if command != Command::Del || e.code != Code::InvalidNetns {
            return Err(e);
        }
        // A DEL must still release what lives outside the namespace (IPAM leases, rules); the
        // path was recycled (plugins#714), so the container's namespace is gone.
        eprintln!("{}; treating the container's namespace as gone", e.msg);
        return Ok(None);
    }
    Ok(netns)
}

fn cni_path(var: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    var("CNI_PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn netns_override(env: &dyn Fn(&str) -> Option<String>) -> bool {
    env("CNI_NETNS_OVERRIDE").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The guard runs before the plugin touches anything (the Go skel checks after the fact).
fn refuse_own_netns(path: &std::path::Path) -> Result<()> {
    // A path that cannot be opened is the plugin's to report (or, for DEL, to accept).
    let Ok(ns) = Netns::open(path) else {
        return Ok(());
    };
    match ns.is_current() {
        Ok(false) => Ok(()),
        Ok(true) => Err(Error::new(
            Code::InvalidNetns,
            format!(
                "CNI_NETNS {path:?} is the plugin's own network namespace; refusing to act on it"
            ),
        )
        .with_details("set CNI_NETNS_OVERRIDE=1 if this is intended")),
        Err(e) => Err(Error::internal(format!(
            "cannot compare CNI_NETNS {path:?} with our own namespace: {e}"
        ))),
    }
}

fn execute(plugin: &impl Plugin, req: &Request) -> Result<Option<Vec<u8>>> {
    match req.command {
        Command::Add => {
            let result = plugin.add(req)?;
            match result.render(req.version) {
                Ok(rendered) => Ok(Some(crate::protocol::json::to_pretty(&rendered))),
                Err(e) => {
                    // The version cannot express what was set up (e.g. no IP for 0.2.0): the ADD
                    // fails, so it must not leave anything behind.
                    if let Err(undo) = plugin.del(req) {
                        eprintln!("cleanup after an ADD whose result cannot be expressed: {undo}");
                    }
                    Err(e)
                }
            }
        }
        Command::Del => plugin.del(req).map(|()| None),
        Command::Check => plugin.check(req).map(|()| None),
        Command::Gc => plugin.gc(req).map(|()| None),
        Command::Status => plugin.status(req).map(|()| None),
        Command::Version => unreachable!("answered before the request is built"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<Command>>,
    }

    impl Plugin for Recorder {
        fn add(&self, req: &Request) -> Result<CniResult> {
            self.calls.borrow_mut().push(req.command);
            Ok(serde_json::from_value(json!({"ips": [{"address": "10.0.0.2/24"}]})).unwrap())
        }
        fn del(&self, req: &Request) -> Result<()> {
            self.calls.borrow_mut().push(req.command);
            Ok(())
        }
        fn check(&self, req: &Request) -> Result<()> {
            self.calls.borrow_mut().push(req.command);
            Err(Error::new(Code::UnknownContainer, "no such container"))
        }
    }

    fn call(env: &[(&str, &str)], stdin: &str) -> (u8, Value, Vec<Command>) {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let plugin = Recorder::default();
        let mut out = Vec::new();
        let code = dispatch(
            &plugin,
            "about",
            &|k| env.get(k).cloned(),
            &mut stdin.as_bytes(),
            &mut out,
        );
        let value = if out.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out).unwrap()
        };
        (code, value, plugin.calls.into_inner())
    }

    const BASE: &[(&str, &str)] = &[
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/nonexistent/ns"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    fn with(
        cmd: &str,
        extra: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        let mut env: Vec<_> = BASE.to_vec();
        env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        env.extend_from_slice(extra);
        env.push(("CNI_COMMAND", Box::leak(cmd.to_string().into_boxed_str())));
        env
    }

    #[test]
    fn add_renders_in_the_requested_version() {
        let (code, out, calls) = call(
            &with("ADD", &[]),
            r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#,
        );
        assert_eq!((code, calls), (0, vec![Command::Add]));
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["ips"][0]["version"], "4");
    }

    struct NoIp;

    impl Plugin for NoIp {
        fn add(&self, _: &Request) -> Result<CniResult> {
            Ok(CniResult::default())
        }
        fn del(&self, _: &Request) -> Result<()> {
            Err(Error::internal("undone"))
        }
        fn check(&self, _: &Request) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_add_whose_result_the_version_cannot_express_is_undone() {
        let env: HashMap<String, String> = with("ADD", &[])
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut out = Vec::new();
        let stdin = r#"{"cniVersion":"0.2.0","name":"n"}"#;
        let code = dispatch(
            &NoIp,
            "about",
            &|k| env.get(k).cloned(),
            &mut stdin.as_bytes(),
            &mut out,
        );
        assert_eq!(code, 1);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["code"], 1, "{v}");
    }

    #[test]
    fn missing_version_means_010() {
        let (code, out, _) = call(&with("ADD", &[]), r#"{"name":"n","type":"t"}"#);
        assert_eq!(code, 0);
        assert_eq!(out["ip4"]["ip"], "10.0.0.2/24");
    }

    #[test]
    fn missing_env_listed_together() {
        let env = [("CNI_COMMAND", "ADD"), ("CNI_NETNS", "")];
        let (code, out, calls) = call(&env, "{}");
        assert_eq!(code, 1);
        assert!(calls.is_empty());
        assert_eq!(out["code"], 4);
        assert_eq!(
            out["msg"],
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
        );
        // DEL does not need a netns; GC only CNI_PATH.
        let (code, _, _) = call(
            &with("DEL", &[("CNI_NETNS", "")]),
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
        );
        assert_eq!(code, 0);
        let (code, _, _) = call(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
            r#"{"cniVersion":"1.1.0","name":"n"}"#,
        );
        assert_eq!(code, 0);
    }

    /// Environment, stdin, expected code, text the message must contain.
    type Case = (
        Vec<(&'static str, &'static str)>,
        &'static str,
        u32,
        &'static str,
    );

    #[test]
    fn bad_inputs_get_their_codes() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n"}"#;
        let cases: Vec<Case> = vec![
            (with("BOGUS", &[]), conf, 4, "BOGUS"),
            (
                with("ADD", &[("CNI_CONTAINERID", "-bad")]),
                conf,
                4,
                "CNI_CONTAINERID",
            ),
            (
                with("ADD", &[("CNI_IFNAME", "way-too-long-name0")]),
                conf,
                4,
                "CNI_IFNAME",
            ),
            (with("ADD", &[]), "{not json", 6, "network config"),
            (with("ADD", &[]), "[1]", 6, "not a JSON object"),
            (with("ADD", &[]), r#"{"cniVersion":"1.0.0"}"#, 7, "name"),
            (
                with("ADD", &[]),
                r#"{"cniVersion":"1.0.0","name":"a b"}"#,
                7,
                "\"a b\"",
            ),
            (
                with("ADD", &[]),
                r#"{"cniVersion":"1.0.0","name":7}"#,
                6,
                "name",
            ),
            (
                with("ADD", &[]),
                r#"{"cniVersion":"9.9.9","name":"n"}"#,
                1,
                "\"9.9.9\"",
            ),
            (
                with("CHECK", &[]),
                r#"{"cniVersion":"0.3.1","name":"n"}"#,
                1,
                "CHECK",
            ),
            (with("GC", &[]), conf, 1, "GC"),
            (
                with("STATUS", &[]),
                r#"{"cniVersion":"0.4.0","name":"n"}"#,
                1,
                "STATUS",
            ),
        ];
        for (env, stdin, want, needle) in cases {
            let (code, out, calls) = call(&env, stdin);
            assert_eq!(code, 1, "{env:?} {stdin}");
            assert!(calls.is_empty(), "plugin ran for {env:?} {stdin}");
            assert_eq!(out["code"], want, "{env:?} {stdin}: {out}");
            assert!(out["msg"].as_str().unwrap().contains(needle), "{out}");
        }
    }

    #[test]
    fn errors_carry_the_requested_version() {
        let (_, out, _) = call(&with("CHECK", &[]), r#"{"cniVersion":"0.4.0","name":"n"}"#);
        assert_eq!(
            out,
            json!({"cniVersion":"0.4.0","code":3,"msg":"no such container"})
        );
    }

    #[test]
    fn version_echoes_and_lists_all() {
        let (code, out, _) = call(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(code, 0);
        assert_eq!(out["cniVersion"], "0.3.1");
        assert_eq!(out["supportedVersions"].as_array().unwrap().len(), 7);
        let (_, out, _) = call(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(out["cniVersion"], "1.1.0");
    }

    #[test]
    fn own_netns_refused_before_the_plugin_runs() {
        let me = "/proc/thread-self/ns/net";
        let conf = r#"{"cniVersion":"1.0.0","name":"n"}"#;
        let (code, out, calls) = call(&with("ADD", &[("CNI_NETNS", me)]), conf);
        assert_eq!((code, out["code"].as_u64()), (1, Some(8)));
        assert!(calls.is_empty());
        let (code, _, calls) = call(
            &with("DEL", &[("CNI_NETNS", me), ("CNI_NETNS_OVERRIDE", "true")]),
            conf,
        );
        assert_eq!((code, calls), (0, vec![Command::Del]));
    }

    #[test]
    fn no_command_prints_about_and_succeeds() {
        let (code, out, calls) = call(&[], "");
        assert_eq!((code, out, calls), (0, Value::Null, vec![]));
    }
}
