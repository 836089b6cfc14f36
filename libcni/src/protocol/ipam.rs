//! IPAM delegation (the same stdin and environment, `CNI_COMMAND` replaced) and applying an IPAM
//! result to an interface inside the container.

use std::net::IpAddr;
use std::time::Duration;

use crate::kernel::netlink::{Dad, Kernel, Link};
use crate::kernel::netns::Netns;
use crate::kernel::sysctl;
use crate::protocol::error::{Error, Result};
use crate::protocol::result::{CniResult, IpConfig, Route};
use crate::protocol::skel::{Command, Request};
use crate::runtime::invoke::{self, Env};

fn delegate(req: &Request, ipam_type: &str, command: Command) -> Result<Vec<u8>> {
    let plugin = invoke::find_plugin(ipam_type, &req.path)?;
    if is_this_program(&plugin) {
        // It would get the same config and delegate again, without end (a chain of processes).
        return Err(Error::invalid_config(format!(
            "ipam.type {ipam_type:?} is this plugin itself: it cannot be its own IPAM plugin"
        )));
    }
    let env = Env {
        container_id: req.container_id.clone(),
        netns: req
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        ifname: req.ifname.clone(),
        args: req.raw_args.clone(),
        path: req.path.clone(),
    };
    invoke::exec(&plugin, command, &env, &req.stdin)
}

/// Whether `path` is the executable of this process (the same file, under any name).
fn is_this_program(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(this), Ok(that)) = (std::fs::metadata("/proc/self/exe"), std::fs::metadata(path))
    else {
        return false;
    };
    (this.dev(), this.ino()) == (that.dev(), that.ino())
}

/// IPAM ADD: the abbreviated result (addresses, routes, DNS).
pub fn add(req: &Request, ipam_type: &str) -> Result<CniResult> {
    let out = delegate(req, ipam_type, Command::Add)?;
    let value: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        Error::decode(format!(
            "IPAM plugin {ipam_type:?} printed an invalid result: {e}"
        ))
    })?;
    Ok(CniResult::parse(&value, req.version)?.1)
}

pub fn del(req: &Request, ipam_type: &str) -> Result<()> {
    delegate(req, ipam_type, Command::Del).map(drop)
}

pub fn check(req: &Request, ipam_type: &str) -> Result<()> {
    delegate(req, ipam_type, Command::Check).map(drop)
}

pub fn gc(req: &Request, ipam_type: &str) -> Result<()> {
    delegate(req, ipam_type, Command::Gc).map(drop)
}

pub fn status(req: &Request, ipam_type: &str) -> Result<()> {
    delegate(req, ipam_type, Command::Status).map(drop)
}

/// Puts `ips` on `link` in the container, brings it up, waits up to `dad_wait` (when given
/// and there is an IPv6 address) for duplicate address detection, and adds `routes` (a route
/// without a gateway uses the first gateway of its family, as the reference does). IPv6 is
/// enabled on the interface first when an IPv6 address is configured.
pub fn configure_iface(
    nl: &Kernel,
    ns: &Netns,
    link: &Link,
    ips: &[IpConfig],
    routes: &[Route],
    dad_wait: Option<Duration>,
) -> Result<()> {
    if ips.iter().any(|ip| ip.address.is_ipv6()) {
        let sys = sysctl::private();
        ns.run(|| -> Result<()> {
            sys.set_if_present("net/ipv6/conf/lo/disable_ipv6", "0")?;
            sys.set_if_present(&format!("net/ipv6/conf/{}/disable_ipv6", link.name), "0")?;
            sys.set_if_present(
                &format!("net/ipv6/conf/{}/keep_addr_on_down", link.name),
                "1",
            )
        })?;
    }
    for ip in ips {
        nl.add_address(link, ip.address)?;
    }
    nl.set_up(link, true)?;
    if let Some(limit) = dad_wait
        && ips.iter().any(|ip| ip.address.is_ipv6())
    {
        wait_dad(nl, link, limit)?;
    }
    for route in routes {
        let gateway = route.gw.or_else(|| first_gateway(ips, route.dst.is_ipv4()));
        nl.add_route(link, route, gateway)?;
    }
    Ok(())
}

/// How often duplicate address detection is looked at (the reference's interval).
const DAD_POLL: Duration = Duration::from_millis(50);

/// Waits until no IPv6 address of `link` is tentative, so the container can use them when ADD
/// returns; fails at once when another host has one of them, and after `limit` when some are
/// still tentative.
fn wait_dad(nl: &Kernel, link: &Link, limit: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match nl.ipv6_dad(link)? {
            Dad::Done => return Ok(()),
            Dad::Failed(address) => {
                return Err(Error::internal(format!(
                    "duplicate address detection failed for {address} on {:?}: another host on the link has that address",
                    link.name
                )));
            }
            Dad::Tentative(pending) if std::time::Instant::now() >= deadline => {
                let pending: Vec<String> = pending.iter().map(ToString::to_string).collect();
                return Err(Error::internal(format!(
                    "{:?} still has tentative addresses after {} s of duplicate address detection: {}",
                    link.name,
                    limit.as_secs_f32(),
                    pending.join(", ")
                )));
            }
            Dad::Tentative(_) => std::thread::sleep(DAD_POLL),
        }
    }
}

fn first_gateway(ips: &[IpConfig], v4: bool) -> Option<IpAddr> {
    ips.iter()
        .filter(|ip| ip.address.is_ipv4() == v4)
        .find_map(|ip| ip.gateway)
}
