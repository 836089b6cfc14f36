//! CNI `portmap`: forwards host ports to the container (chained after the interface plugin).
//!
//! ADD    needs prevResult (passed on unchanged); no mappings: nothing to do. Picks the
//!        container's first IPv4 and IPv6 address, adds this attachment's DNAT (and hairpin /
//!        localhost masquerade) rules, lets 127.0.0.1 reach the container (route_localnet),
//!        flushes UDP conntrack entries of the mapped ports.
//! DEL    removes exactly this attachment's rules (and those the Go portmap made for the
//!        container), flushes UDP conntrack entries; works without prevResult or netns.
//! CHECK  every rule of this attachment is there.
//! GC     removes the rules of attachments that are not valid.  STATUS: the backend works.

mod config;

use std::net::IpAddr;
use std::process::ExitCode;

use libcni::firewall::portmap::{self, Attachment};
use libcni::firewall::{Backend, nft};
use libcni::netlink::{Netlink, block_on};
use libcni::result::CniResult;
use libcni::skel::{self, Plugin, Request};
use libcni::{Error, Result, conntrack, sysctl};

use crate::config::Conf;

struct Portmap;

impl Plugin for Portmap {
    fn add(&self, req: &Request) -> Result<CniResult> {
        let conf = Conf::load(req)?;
        let prev = req.prev_result()?.ok_or_else(|| {
            Error::invalid_config(
                "portmap must be called as a chained plugin: prevResult is missing",
            )
        })?;
        if conf.mappings.is_empty() {
            return Ok(prev);
        }
        require_nftables(&conf)?;
        let ips = container_ips(&prev, req);
        if ips.is_empty() {
            return Ok(prev);
        }
        let attachment = attachment(&conf, req, &ips);
        portmap::add(&attachment)?;
        if let Err(e) = after_rules(&conf, &ips) {
            if let Err(undo) = portmap::remove(&req.conf.name, &req.container_id, &req.ifname) {
                eprintln!("portmap: cleanup after failed ADD: {undo}");
            }
            return Err(e);
        }
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<()> {
        let conf = Conf::load(req)?;
        // A runtime that says "no mappings" made no rules; one that says nothing may have.
        if conf.mappings_given && conf.mappings.is_empty() {
            return Ok(());
        }
        std::thread::scope(|scope| {
            let reference = scope.spawn(|| {
                portmap::remove_reference_iptables(&req.conf.name, &req.container_id).and(
                    if nft::installed() {
                        portmap::remove_reference_nft(&req.container_id)
                    } else {
                        Ok(())
                    },
                )
            });
            let ours = if nft::installed() {
                portmap::remove(&req.conf.name, &req.container_id, &req.ifname)
            } else {
                Ok(())
            };
            flush_udp(&conf, &[true, false]);
            let reference = reference
                .join()
                .unwrap_or_else(|_| Err(Error::internal("cleanup panicked")));
            ours.and(reference)
        })
    }

    fn check(&self, req: &Request) -> Result<()> {
        let conf = Conf::load(req)?;
        let prev = req
            .prev_result()?
            .ok_or_else(|| Error::invalid_config("CHECK: prevResult is missing"))?;
        if conf.mappings.is_empty() {
            return Ok(());
        }
        require_nftables(&conf)?;
        let ips = container_ips(&prev, req);
        let expected = portmap::rules(&attachment(&conf, req, &ips));
        let want = |chain: &str| {
            expected
                .lines()
                .filter(|l| l.contains(&format!(" {chain} ")))
                .count()
        };
        let (hostports, postrouting) =
            portmap::count(&req.conf.name, &req.container_id, &req.ifname)?;
        if hostports < want("hostports") || postrouting < want("postrouting") {
            return Err(Error::internal(format!(
                "CHECK: port mapping rules of this container are missing ({hostports} of {} forwarding, {postrouting} of {} masquerade rules)",
                want("hostports"),
                want("postrouting")
            )));
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<()> {
        if !nft::installed() {
            return Ok(());
        }
        portmap::retain(
            &req.conf.name,
            req.conf.gc_attachments().unwrap_or_default(),
        )
    }

    fn status(&self, req: &Request) -> Result<()> {
        let conf = Conf::load(req)?;
        require_nftables(&conf).map_err(|e| Error::not_available(e.msg))?;
        nft::list_table("inet", portmap::TABLE)
            .map(drop)
            .map_err(|e| Error::not_available(format!("nftables is not usable: {}", e.msg)))
    }
}

fn require_nftables(conf: &Conf) -> Result<()> {
    match conf.backend {
        Backend::Nftables if nft::installed() => Ok(()),
        Backend::Nftables => Err(Error::unsupported_field(
            "backend \"nftables\": the nft tool is not installed",
        )),
        Backend::Iptables => Err(Error::unsupported_field(
            "backend \"iptables\" is not available in this build of portmap; use \"nftables\"",
        )),
    }
}

fn attachment<'a>(conf: &'a Conf, req: &'a Request, ips: &'a [IpAddr]) -> Attachment<'a> {
    Attachment {
        network: &req.conf.name,
        container_id: &req.container_id,
        ifname: &req.ifname,
        mappings: &conf.mappings,
        container_ips: ips,
        snat: conf.snat,
        masq_all: conf.masq_all,
        conditions_v4: &conf.conditions_v4,
        conditions_v6: &conf.conditions_v6,
    }
}

/// The first IPv4 and first IPv6 address of the container interface: IPs that name another
/// interface, or one outside a sandbox, are not the container's.
fn container_ips(prev: &CniResult, req: &Request) -> Vec<IpAddr> {
    let ours = |i: Option<usize>| match i {
        None => true,
        Some(i) => prev
            .interfaces
            .get(i)
            .is_some_and(|itf| itf.name == req.ifname && !itf.sandbox.is_empty()),
    };
    let pick = |v4: bool| {
        prev.ips
            .iter()
            .find(|ip| ip.address.is_ipv4() == v4 && ours(ip.interface))
            .map(|ip| ip.address.ip())
    };
    [pick(true), pick(false)].into_iter().flatten().collect()
}

/// Lets 127.0.0.1:hostPort reach an IPv4 container (`route_localnet` on the interface that
/// routes to it), and drops stale UDP conntrack entries for the mapped ports.
fn after_rules(conf: &Conf, ips: &[IpAddr]) -> Result<()> {
    if conf.snat
        && let Some(v4) = ips.iter().find(|ip| ip.is_ipv4())
    {
        let link = block_on(async { Netlink::open(None)?.route_get(*v4).await })??
            .ok_or_else(|| Error::internal(format!("no route to the container address {v4}")))?;
        sysctl::set(&format!("net/ipv4/conf/{}/route_localnet", link.name), "1")?;
    }
    let families: Vec<bool> = ips.iter().map(|ip| ip.is_ipv4()).collect();
    flush_udp(conf, &families);
    Ok(())
}

fn flush_udp(conf: &Conf, v4_families: &[bool]) {
    for m in conf.mappings.iter().filter(|m| m.protocol == "udp") {
        for v4 in v4_families {
            conntrack::flush_udp_port(m.host_port, !v4);
        }
    }
}

fn main() -> ExitCode {
    skel::run(
        &Portmap,
        &format!("CNI portmap plugin {} (Rust)", env!("CARGO_PKG_VERSION")),
    )
}
