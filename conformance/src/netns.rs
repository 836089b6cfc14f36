//! Private network namespaces: a "host" per test, containers, and veth-joined peers.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{run_ok, unique};

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

impl Drop for Netns {
    fn drop(&mut self) {
        libcni::firewall::handles::forget_namespace(&self.path);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

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
