//! `cnitool`: run a network configuration against a network namespace, as a runtime would.
//! A drop-in for the Go cnitool (same arguments, environment, container IDs and result cache),
//! plus `gc` and `status`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use libcni::firewall::reference::Release;
use libcni::kernel::netns::{Netns, NetnsError};
use libcni::protocol::args::CniArgs;
use libcni::runtime::{ConfList, Runtime, RuntimeConf, cache, rollback};
use libcni::{Error, Result};
use serde_json::{Map, Value};

const USAGE: &str = "\
usage: cnitool [-i IFNAME] add|check|del NETWORK NETNS_PATH
       cnitool gc NETWORK
       cnitool status NETWORK
       cnitool rollback [--dry-run] [--reference VERSION] [NETWORK...]
       cnitool --version

options (before, between or after the arguments; -- ends them):
  -i IFNAME, --ifname IFNAME, --ifname=IFNAME   interface name in the namespace
  -h, --help                                    this text

  add     attach the namespace to NETWORK and print the result
  check   verify the attachment (configs of version 0.4.0 and later)
  del     detach the namespace
  gc      delete cached attachments whose namespace is gone, then let every plugin
          release state that belongs to no remaining attachment (1.1.0 configs)
  status  fail unless every plugin of NETWORK is ready for ADD (1.1.0 configs)
  rollback  hand every cached attachment (of the NETWORKs, default all) back to the
          reference plugins: make the firewall state they would have made for it
          (masquerade, host ports, spoof check; layout of reference VERSION, default
          1.9.1; 1.1 has no nftables backends), then remove ours. --dry-run prints what
          would change and changes nothing. Attachments that cannot be converted are
          listed with the reason and left as they are (exit status 1)

environment:
  NETCONFPATH   directory of .conflist/.conf/.json files (default /etc/cni/net.d)
  CNI_PATH      plugin directories, ':'-separated
  CNI_IFNAME    interface name in the namespace (default eth0; -i overrides)
  CNI_ARGS      KEY=VALUE;... passed to the plugins
  CAP_ARGS      JSON object of capability arguments, e.g. {\"portMappings\":[...]}
  CNI_CACHE_DIR result cache directory (default /var/lib/cni, shared with the Go tools)

The container ID is cnitool- followed by 20 hex digits of the SHA-512 of the absolute
namespace path, as the Go cnitool derives it.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cnitool: {e} (code {})", e.code);
            ExitCode::FAILURE
        }
    }
}

/// The command line. Options may come anywhere, as the Go cnitool (cobra) takes them.
#[derive(Debug, Default, PartialEq)]
struct Cli {
    ifname: Option<String>,
    help: bool,
    version: bool,
    /// `rollback` only.
    dry_run: bool,
    /// `rollback` only: `--reference VERSION`.
    reference: Option<String>,
    positional: Vec<String>,
}

impl Cli {
    fn parse(args: &[String]) -> Result<Cli> {
        let mut cli = Cli::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--" => {
                    cli.positional.extend(args.by_ref().cloned());
                }
                "-h" | "--help" => cli.help = true,
                "--version" => cli.version = true,
                "--dry-run" => cli.dry_run = true,
                "--reference" => {
                    let version = args.next().ok_or_else(|| {
                        Error::invalid_env(format!("{arg} needs a version\n{USAGE}"))
                    })?;
                    cli.reference = Some(version.clone());
                }
                "-i" | "--ifname" => {
                    let name = args.next().ok_or_else(|| {
                        Error::invalid_env(format!("{arg} needs an interface name\n{USAGE}"))
                    })?;
                    cli.set_ifname(arg, name)?;
                }
                _ => {
                    if let Some(version) = arg.strip_prefix("--reference=") {
                        cli.reference = Some(version.to_string());
                    } else if let Some(name) = arg.strip_prefix("--ifname=") {
                        cli.set_ifname("--ifname", name)?;
                    } else if let Some(name) = arg.strip_prefix("-i") {
                        // `-iNAME` and `-i=NAME`, as pflag reads a shorthand with its value.
                        cli.set_ifname("-i", name.strip_prefix('=').unwrap_or(name))?;
                    } else if arg.starts_with('-') && arg != "-" {
                        return Err(Error::invalid_env(format!(
                            "unknown option {arg:?}\n{USAGE}"
                        )));
                    } else {
                        cli.positional.push(arg.clone());
                    }
                }
            }
        }
        Ok(cli)
    }

    fn set_ifname(&mut self, option: &str, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::invalid_env(format!(
                "{option} needs an interface name"
            )));
        }
        self.ifname = Some(name.to_string());
        Ok(())
    }
}

fn run(args: &[String]) -> Result<Option<String>> {
    let cli = Cli::parse(args)?;
    if cli.help {
        return Ok(Some(USAGE.to_string()));
    }
    if cli.version {
        return Ok(Some(format!("cnitool {}", libcni::VERSION)));
    }
    let (ifname_flag, args) = (cli.ifname.clone(), cli.positional.as_slice());
    let usage = || Error::invalid_env(format!("bad arguments\n{USAGE}"));
    if let [c, networks @ ..] = args
        && c == "rollback"
    {
        return rollback(&cli, networks).map(Some);
    }
    if cli.dry_run || cli.reference.is_some() {
        return Err(Error::invalid_env(format!(
            "--dry-run and --reference are options of rollback\n{USAGE}"
        )));
    }
    let (command, network) = match args {
        [c, n, ..] => (c.as_str(), n.as_str()),
        [c] if c == "help" => return Ok(Some(USAGE.to_string())),
        _ => return Err(usage()),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let list = ConfList::load(&conf_dir(), network)?;
    let path: Vec<PathBuf> = env("CNI_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let runtime = Runtime::new(
        path,
        env("CNI_CACHE_DIR").unwrap_or_else(|| cache::DEFAULT_DIR.into()),
    );

    match command {
        "add" | "check" | "del" => {
            let [_, _, netns, ..] = args else {
                return Err(usage());
            };
            let rt = runtime_conf(netns, ifname_flag, &env)?;
            match command {
                "add" => runtime.add(&list, &rt).map(|r| {
                    Some(
                        String::from_utf8_lossy(&libcni::protocol::json::to_pretty(&r))
                            .into_owned(),
                    )
                }),
                "check" => runtime.check(&list, &rt).map(|()| None),
                _ => runtime.del(&list, &rt).map(|()| None),
            }
        }
        "gc" => runtime
            .gc(&list, |e| e.netns.is_empty() || namespace_remains(&e.netns))
            .map(|()| None),
        "status" => runtime.status(&list).map(|()| None),
        _ => Err(usage()),
    }
}

/// `rollback [--dry-run] [--reference VERSION] [NETWORK...]`: the report; an error after it
/// when an attachment could not be converted.
fn rollback(cli: &Cli, networks: &[String]) -> Result<String> {
    let release = match &cli.reference {
        None => Release::NEWEST,
        Some(version) => Release::parse(version).ok_or_else(|| {
            Error::invalid_env(format!(
                "--reference {version:?}: expected a reference release 1.0 to 1.9 (e.g. 1.1.1)"
            ))
        })?,
    };
    let opts = rollback::Options {
        release,
        dry_run: cli.dry_run,
        networks: networks.to_vec(),
        conf_dir: conf_dir(),
    };
    let cache_dir = std::env::var("CNI_CACHE_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| cache::DEFAULT_DIR.into());
    let report = rollback::rollback(&cache::Cache::new(cache_dir), &opts)?;
    let text = report.lines.join("\n");
    if report.not_converted == 0 {
        return Ok(text);
    }
    println!("{text}");
    Err(Error::internal(format!(
        "{} attachment(s) not converted",
        report.not_converted
    )))
}

/// `NETCONFPATH`, default `/etc/cni/net.d`.
fn conf_dir() -> PathBuf {
    std::env::var_os("NETCONFPATH")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/etc/cni/net.d"), PathBuf::from)
}

/// Whether a cached attachment's namespace may still exist: only "no such path" and "not a
/// network namespace (any more)" say it is gone; any other error (no permission, a symlink
/// loop, another mount namespace's path) keeps the attachment, and is reported.
fn namespace_remains(path: &str) -> bool {
    match Netns::open(path) {
        Ok(_) => true,
        Err(NetnsError::NotExist(_) | NetnsError::NotNetns(_)) => false,
        Err(e) => {
            eprintln!("cnitool: gc keeps the attachment in {path:?}: {e}");
            true
        }
    }
}

fn runtime_conf(
    netns: &str,
    ifname: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RuntimeConf> {
    let netns = absolute(Path::new(netns))?;
    let netns = netns.to_string_lossy().into_owned();
    let capability_args: Map<String, Value> = match env("CAP_ARGS") {
        None => Map::new(),
        Some(raw) => serde_json::from_str(&raw)
            .map_err(|e| Error::invalid_env(format!("CAP_ARGS must be a JSON object: {e}")))?,
    };
    let args = CniArgs::parse(&env("CNI_ARGS").unwrap_or_default())?
        .pairs()
        .to_vec();
    Ok(RuntimeConf {
        container_id: container_id(&netns),
        ifname: ifname
            .or_else(|| env("CNI_IFNAME"))
            .unwrap_or_else(|| "eth0".into()),
        netns,
        args,
        capability_args,
    })
}

/// `cnitool-` + the first 20 hex digits of SHA-512 of the namespace path.
fn container_id(netns: &str) -> String {
    format!("cnitool-{}", libcni::hash::sha512_hex(netns, 20))
}

/// Go's `filepath.Abs`: join with the working directory and clean `.` and `..` lexically.
fn absolute(path: &Path) -> Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io(format!("cannot read working directory: {e}")))?
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for part in joined.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_id_matches_the_go_cnitool() {
        // Computed by the Go cnitool 1.1.2 for this path.
        assert_eq!(
            container_id("/tmp/cniexp/ns1"),
            "cnitool-3867bbbfe58a7e2e1aad"
        );
    }

    fn parse(args: &[&str]) -> Result<Cli> {
        Cli::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_may_come_anywhere_in_every_spelling() {
        let positional = ["add", "net", "/run/netns/x"];
        for line in [
            &["-i", "net1", "add", "net", "/run/netns/x"][..],
            &["add", "net", "/run/netns/x", "-i", "net1"],
            &["add", "--ifname", "net1", "net", "/run/netns/x"],
            &["add", "net", "--ifname=net1", "/run/netns/x"],
            &["add", "net", "/run/netns/x", "-inet1"],
            &["-i=net1", "add", "net", "/run/netns/x"],
            &["-i", "eth9", "add", "net", "/run/netns/x", "--ifname=net1"],
        ] {
            let cli = parse(line).unwrap();
            assert_eq!(cli.ifname.as_deref(), Some("net1"), "{line:?}");
            assert_eq!(cli.positional, positional, "{line:?}");
        }
        let cli = parse(&["add", "net", "--", "-odd-netns-path"]).unwrap();
        assert_eq!(cli.positional, ["add", "net", "-odd-netns-path"]);
        assert_eq!(cli.ifname, None);
        assert!(parse(&["add", "--help"]).unwrap().help);
        assert!(parse(&["--version"]).unwrap().version);
    }

    #[test]
    fn bad_options_are_named() {
        for (line, needle) in [
            (
                &["add", "net", "/x", "-i"][..],
                "-i needs an interface name",
            ),
            (&["add", "net", "/x", "--ifname"], "--ifname needs"),
            (&["--ifname=", "add", "net", "/x"], "--ifname needs"),
            (&["add", "net", "/x", "--frobnicate"], "\"--frobnicate\""),
        ] {
            let e = parse(line).unwrap_err();
            assert_eq!(e.code, libcni::Code::InvalidEnv, "{line:?}");
            assert!(e.msg.contains(needle), "{line:?}: {}", e.msg);
        }
    }

    #[test]
    fn absolute_cleans_like_go() {
        assert_eq!(
            absolute(Path::new("/run/netns/../netns/./x/")).unwrap(),
            PathBuf::from("/run/netns/x")
        );
        assert_eq!(absolute(Path::new("/..")).unwrap(), PathBuf::from("/"));
    }
}
