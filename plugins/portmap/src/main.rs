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

use ipnetwork::IpNetwork;
use std::process::ExitCode;

use libcni::firewall::portmap::{self, Attachment};
use libcni::firewall::{Backend, Inventory, iptables, nft, portmap_iptables};
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
        require_backend(&conf)?;
        let ips = container_ips(&prev, req);
        if ips.is_empty() {
            return Ok(prev);
        }
        let attachment = attachment(&conf, req, &ips);
        let added = match conf.backend {
            Backend::Nftables => portmap::add(&attachment),
            Backend::Iptables => portmap_iptables::add(&attachment),
        };
        if let Err(e) = added.and_then(|()| after_rules(&conf, &ips)) {
            if let Err(undo) = remove_rules(req) {
                eprintln!("portmap: cleanup after failed ADD: {undo}");
            }
            return Err(e);
        }
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<()> {
        let conf = Conf::load_for_teardown(req)?;
        // A runtime that says "no mappings" made no rules; one that says nothing may have.
        if conf.mappings_given && conf.mappings.is_empty() {
            return Ok(());
        }
        let removed = remove_rules(req);
        flush_udp(&conf, &[true, false]);
        removed
    }

    fn check(&self, req: &Request) -> Result<()> {
        let conf = Conf::load(req)?;
        let prev = req
            .prev_result()?
            .ok_or_else(|| Error::invalid_config("CHECK: prevResult is missing"))?;
        if conf.mappings.is_empty() {
            return Ok(());
        }
        require_backend(&conf)?;
        let ips = container_ips(&prev, req);
        let a = attachment(&conf, req, &ips);
        let missing = match conf.backend {
            Backend::Nftables => {
                let expected = portmap::rules(&a);
                let want = |chain: &str| {
                    expected
                        .lines()
                        .filter(|l| l.contains(&format!(" {chain} ")))
                        .count()
                };
                let (hostports, postrouting) =
                    portmap::count(&req.conf.name, &req.container_id, &req.ifname)?;
                (hostports < want("hostports") || postrouting < want("postrouting")).then(|| {
                    format!(
                        "{hostports} of {} forwarding and {postrouting} of {} masquerade rules present",
                        want("hostports"),
                        want("postrouting")
                    )
                })
            }
            Backend::Iptables => portmap_iptables::missing(&a)?,
        };
        match missing {
            Some(what) => Err(Error::internal(format!(
                "CHECK: port mapping rules of this container are missing: {what}"
            ))),
            None => Ok(()),
        }
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let valid = req.conf.gc_attachments()?;
        let nft = if nft::installed() {
            portmap::retain(&req.conf.name, valid)
        } else {
            Ok(())
        };
        nft.and(portmap_iptables::retain(&req.conf.name, valid))
    }

    fn status(&self, req: &Request) -> Result<()> {
        let conf = Conf::load(req)?;
        require_backend(&conf).map_err(|e| Error::not_available(e.msg))?;
        let usable = match conf.backend {
            Backend::Nftables => nft::tables().map(drop),
            Backend::Iptables => iptables::list_chain(iptables::Family::V4, "nat", "POSTROUTING")
                .and_then(|c| {
                    c.map(drop)
                        .ok_or_else(|| Error::internal("iptables -t nat does not work"))
                }),
        };
        usable.map_err(|e| {
            Error::not_available(format!(
                "the {:?} backend is not usable: {}",
                conf.backend, e.msg
            ))
        })
    }
}

/// This attachment's rules in both backends (a config may have switched between ADD and DEL),
/// and the Go portmap's rules for the container; the two listings run side by side.
fn remove_rules(req: &Request) -> Result<()> {
    let inv = Inventory::read();
    std::thread::scope(|scope| {
        let iptables = scope.spawn(|| {
            portmap_iptables::remove(&inv, &req.conf.name, &req.container_id, &req.ifname)
        });
        let nft = if nft::installed() {
            portmap::remove_with_reference(&inv, &req.conf.name, &req.container_id, &req.ifname)
        } else {
            Ok(())
        };
        let iptables = iptables
            .join()
            .unwrap_or_else(|_| Err(Error::internal("iptables cleanup panicked")));
        nft.and(iptables)
    })
}

fn require_backend(conf: &Conf) -> Result<()> {
    match conf.backend {
        Backend::Nftables if !nft::installed() => Err(Error::unsupported_field(
            "backend \"nftables\": the nft tool is not installed",
        )),
        _ => Ok(()),
    }
}

fn attachment<'a>(conf: &'a Conf, req: &'a Request, ips: &'a [IpNetwork]) -> Attachment<'a> {
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
        mark_bit: conf.mark_bit,
        external_set_mark_chain: conf.external_set_mark_chain.as_deref(),
    }
}

/// The first IPv4 and first IPv6 address of the container interface: IPs that name another
/// interface, or one outside a sandbox, are not the container's.
fn container_ips(prev: &CniResult, req: &Request) -> Vec<IpNetwork> {
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
            .map(|ip| ip.address)
    };
    [pick(true), pick(false)].into_iter().flatten().collect()
}

/// Lets 127.0.0.1:hostPort reach an IPv4 container (`route_localnet` on the interface that
/// routes to it), and drops stale UDP conntrack entries for the mapped ports.
fn after_rules(conf: &Conf, ips: &[IpNetwork]) -> Result<()> {
    if conf.snat
        && let Some(v4) = ips.iter().find(|ip| ip.is_ipv4())
    {
        let link = block_on(async { Netlink::open(None)?.route_get(v4.ip()).await })??
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
        &format!("CNI portmap plugin {} (Rust)", libcni::VERSION),
    )
}
