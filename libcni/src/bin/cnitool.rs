//! `cnitool`: run a network configuration against a network namespace, as a runtime would.
//! A drop-in for the Go cnitool (same arguments, environment, container IDs and result cache),
//! plus `gc` and `status`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use libcni::args::CniArgs;
use libcni::firewall::reference::Release;
use libcni::netns::{Netns, NetnsError};
use libcni::runtime::{ConfList, Runtime, RuntimeConf, cache, rollback};
use libcni::{Error, Result};
use serde_json::{Map, Value};
use sha2::{Digest, Sha512};

const USAGE: &str = "\
usage: cnitool [-i IFNAME] add|check|del NETWORK NETNS_PATH
       cnitool gc NETWORK
       cnitool status NETWORK
       cnitool rollback [--dry-run] [--reference VERSION] [NETWORK...]
       cnitool --version

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

fn run(args: &[String]) -> Result<Option<String>> {
    let (ifname_flag, args) = match args {
        [flag, name, rest @ ..] if flag == "-i" || flag == "--ifname" => (Some(name.clone()), rest),
        _ => (None, args),
    };
    let usage = || Error::invalid_env(format!("bad arguments\n{USAGE}"));
    if let [c, rest @ ..] = args
        && c == "rollback"
    {
        return rollback(rest).map(Some);
    }
    let (command, network) = match args {
        [c, n, ..] => (c.as_str(), n.as_str()),
        [c] if c == "-h" || c == "--help" || c == "help" => return Ok(Some(USAGE.to_string())),
        [c] if c == "--version" => return Ok(Some(format!("cnitool {}", libcni::VERSION))),
        _ => return Err(usage()),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let dir = PathBuf::from(env("NETCONFPATH").unwrap_or_else(|| "/etc/cni/net.d".into()));
    let list = ConfList::load(&dir, network)?;
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
                    Some(String::from_utf8_lossy(&libcni::json::to_pretty(&r)).into_owned())
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
fn rollback(args: &[String]) -> Result<String> {
    let mut opts = rollback::Options {
        release: Release::NEWEST,
        dry_run: false,
        networks: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dry-run" => opts.dry_run = true,
            "--reference" => {
                let version = args.next().map(String::as_str).unwrap_or_default();
                opts.release = Release::parse(version).ok_or_else(|| {
                    Error::invalid_env(format!(
                        "--reference {version:?}: expected a reference release 1.0 to 1.9 (e.g. 1.1.1)"
                    ))
                })?;
            }
            flag if flag.starts_with('-') => {
                return Err(Error::invalid_env(format!(
                    "rollback: unknown option {flag:?}\n{USAGE}"
                )));
            }
            network => opts.networks.push(network.to_string()),
        }
    }
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

/// `cnitool-` + the first 10 bytes of SHA-512 of the namespace path, in hex.
fn container_id(netns: &str) -> String {
    let digest = Sha512::digest(netns.as_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("cnitool-{hex}")
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

    #[test]
    fn absolute_cleans_like_go() {
        assert_eq!(
            absolute(Path::new("/run/netns/../netns/./x/")).unwrap(),
            PathBuf::from("/run/netns/x")
        );
        assert_eq!(absolute(Path::new("/..")).unwrap(), PathBuf::from("/"));
    }
}
