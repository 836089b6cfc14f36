//! CNI `loopback`: brings `lo` up in the container's network namespace.
//!
//! ADD   lo up; every address on it must be a loopback address; result: prevResult unchanged,
//!       else `lo` with its first v4 and first v6 address, in the requested version.
//! DEL   lo down; success when there is no namespace left to act on.
//! CHECK lo is up.
//! GC, STATUS: no state, nothing to do.
#![cfg_attr(not(test), no_main)]

use libcni::kernel::netlink::Kernel;
use libcni::kernel::netns::Netns;
use libcni::protocol::result::{CniResult, Interface, IpConfig};
use libcni::protocol::skel::{Plugin, Request};
use libcni::{Error, Result};

const LO: &str = "lo";

struct Loopback;

impl Plugin for Loopback {
    fn add(&self, req: &Request) -> Result<CniResult> {
        let prev = req.prev_result()?;
        let ns = req.netns()?;
        let nl = Kernel::open(Some(&ns))?;
        let lo = nl
            .link_by_name(LO)?
            .ok_or_else(|| Error::internal("no lo in the container"))?;
        nl.set_up(&lo, true)?;
        let addresses = nl.addresses(&lo)?;
        if let Some(bad) = addresses.iter().find(|a| !a.ip().is_loopback()) {
            return Err(Error::internal(format!(
                "loopback interface found with non-loopback address {bad}"
            )));
        }
        if let Some(prev) = prev {
            return Ok(prev);
        }
        let first = |v4: bool| addresses.iter().find(|a| a.is_ipv4() == v4);
        Ok(CniResult {
            interfaces: vec![Interface {
                name: LO.into(),
                mac: "00:00:00:00:00:00".into(),
                sandbox: ns.path().display().to_string(),
                ..Default::default()
            }],
            ips: [first(true), first(false)]
                .into_iter()
                .flatten()
                .map(|a| IpConfig {
                    interface: Some(0),
                    address: *a,
                    gateway: None,
                })
                .collect(),
            ..Default::default()
        })
    }

    fn del(&self, req: &Request) -> Result<()> {
        match req.netns_if_present()? {
            Some(ns) => set_lo(&ns, false),
            None => Ok(()),
        }
    }

    fn check(&self, req: &Request) -> Result<()> {
        let ns = req.netns()?;
        let lo = Kernel::open(Some(&ns))?.link_by_name(LO)?;
        if lo.is_some_and(|lo| lo.up) {
            Ok(())
        } else {
            Err(Error::internal("loopback interface is down"))
        }
    }
}

fn set_lo(ns: &Netns, up: bool) -> Result<()> {
    let nl = Kernel::open(Some(ns))?;
    match nl.link_by_name(LO)? {
        Some(lo) => nl.set_up(&lo, up),
        None => Ok(()),
    }
}

libcni::plugin_main!(
    &Loopback,
    &format!("CNI loopback plugin {} (Rust)", libcni::VERSION)
);
