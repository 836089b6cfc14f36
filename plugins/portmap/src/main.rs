//! CNI `portmap`: forwards host ports to the container (chained after the interface plugin).
//!
//! ADD    needs prevResult (passed on unchanged); no mappings: nothing to do. Picks the
//!        container's first IPv4 and IPv6 address, adds this attachment's DNAT (and hairpin /
//!        localhost masquerade) rules, lets 127.0.0.1 reach the container (route_localnet),
//!        flushes UDP conntrack entries of the mapped ports.
//! DEL    removes exactly this attachment's rules (and those the Go portmap made for the
//!        container), flushes UDP conntrack entries; works without prevResult or netns.
//! CHECK  every rule of this attachment is there, in our layout or in the Go portmap's (a pod
//!        it ADDed before the node switched to ours), and nothing of it only in part.
//! GC     removes the rules of attachments that are not valid.  STATUS: the backend works.
#![cfg_attr(not(test), no_main)]

mod config;

use ipnetwork::IpNetwork;

use libcni::firewall::portmap::{self, Attachment, Mapping};
use libcni::firewall::{
    Backend, Owner, check, driver, nftables, portmap_conditions, portmap_iptables,
};
use libcni::kernel::netlink::Kernel;
use libcni::kernel::nf_tables::L4;
use libcni::kernel::{conntrack, sysctl};
use libcni::protocol::error;
use libcni::protocol::result::CniResult;
use libcni::protocol::skel::{Plugin, Request};
use libcni::{Error, Result};

use crate::config::{Conf, Teardown};

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
        let ips = portmap::container_ips(&prev, &req.ifname);
        if ips.is_empty() {
            return Ok(prev);
        }
        let attachment = attachment(&conf, req, &ips);
        let added = driver::open(conf.backend).and_then(|mut firewall| {
            firewall.add_port_mappings(&attachment)?;
            after_rules(&conf, &ips, firewall.as_mut())
        });
        if let Err(e) = added {
            if let Err(undo) = remove_rules(req) {
                eprintln!("portmap: cleanup after failed ADD: {undo}");
            }
            return Err(e);
        }
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<()> {
        let teardown = Teardown::load(req)?;
        // A runtime that says "no mappings" made no rules; one that says nothing may have.
        if teardown.no_mappings {
            return Ok(());
        }
        let removed = remove_rules(req);
        flush_udp(&teardown.mappings, &[true, false]);
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
        let ips = portmap::container_ips(&prev, &req.ifname);
        let a = attachment(&conf, req, &ips);
        match check::port_mappings(&a)? {
            Some(what) => Err(Error::internal(format!(
                "CHECK: port mapping rules of this container are missing: {what}"
            ))),
            None => Ok(()),
        }
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let valid = req.conf.gc_attachments()?;
        let mut nft = nftables::open()?;
        let nf_tables = portmap::retain(&mut nft, &req.conf.name, valid);
        let iptables = portmap_iptables::retain(&mut nft, &req.conf.name, valid);
        error::all([nf_tables, iptables])
    }

    fn status(&self, req: &Request) -> Result<()> {
        let conf = Conf::load(req)?;
        require_backend(&conf).map_err(|e| Error::not_available(e.msg))?;
        let usable = driver::open(conf.backend).and_then(|mut firewall| firewall.usable());
        usable.map_err(|e| {
            Error::not_available(format!(
                "the {:?} backend is not usable: {}",
                conf.backend, e.msg
            ))
        })
    }
}

/// This attachment's rules in both backends (a config may have switched between ADD and DEL),
/// and the Go portmap's rules for the container: one nf_tables socket and one deleting
/// transaction; iptables only in the families where its chains may exist.
fn remove_rules(req: &Request) -> Result<()> {
    let owner = owner(req);
    let mut nft = nftables::open()?;
    let iptables = portmap_iptables::families_to_clean(&mut nft, &owner)
        .and_then(|families| portmap_iptables::remove(&families, &owner));
    error::all([portmap::remove(&mut nft, &owner), iptables])
}

/// nf_tables is spoken over netlink; only conditions, which are nft text, need the tool.
fn require_backend(conf: &Conf) -> Result<()> {
    let conditions = !conf.conditions_v4.is_empty() || !conf.conditions_v6.is_empty();
    if conf.backend == Backend::Nftables && conditions && !portmap_conditions::installed() {
        return Err(Error::unsupported_field(
            "conditionsV4/conditionsV6 are nft expressions: the nft tool is not installed",
        ));
    }
    Ok(())
}

fn owner(req: &Request) -> Owner<'_> {
    Owner {
        network: &req.conf.name,
        container_id: &req.container_id,
        ifname: &req.ifname,
    }
}

fn attachment<'a>(conf: &'a Conf, req: &'a Request, ips: &'a [IpNetwork]) -> Attachment<'a> {
    Attachment {
        owner: owner(req),
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

/// Lets 127.0.0.1:hostPort reach an IPv4 container (`route_localnet` on the interface that
/// routes to it, with the node's guard against pods reaching the host's 127.0.0.1 services),
/// and drops stale UDP conntrack entries for the mapped ports.
fn after_rules(conf: &Conf, ips: &[IpNetwork], firewall: &mut dyn driver::Driver) -> Result<()> {
    if conf.snat
        && let Some(v4) = ips.iter().find(|ip| ip.is_ipv4())
    {
        firewall.ensure_localnet_guard()?;
        let link = Kernel::open(None)?
            .route_get(v4.ip())?
            .ok_or_else(|| Error::internal(format!("no route to the container address {v4}")))?;
        sysctl::set(&format!("net/ipv4/conf/{}/route_localnet", link.name), "1")?;
    }
    let families: Vec<bool> = ips.iter().map(|ip| ip.is_ipv4()).collect();
    flush_udp(&conf.mappings, &families);
    Ok(())
}

/// One dump per family of the container's addresses (`true` for IPv4), for every UDP port.
fn flush_udp(mappings: &[Mapping], v4_families: &[bool]) {
    let ports: Vec<u16> = mappings
        .iter()
        .filter(|m| m.protocol == L4::Udp)
        .map(|m| m.host_port)
        .collect();
    for v4 in [true, false]
        .into_iter()
        .filter(|v4| v4_families.contains(v4))
    {
        conntrack::flush_udp_ports(&ports, !v4);
    }
}

libcni::plugin_main!(
    &Portmap,
    &format!("CNI portmap plugin {} (Rust)", libcni::VERSION)
);
