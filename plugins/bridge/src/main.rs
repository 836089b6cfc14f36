//! CNI `bridge`: connects the container to a Linux bridge on the host through a veth pair.
//!
//! ADD    ensure the bridge; create the veth pair (container end created directly in the
//!        container's namespace as CNI_IFNAME, host end a port of the bridge); port options and
//!        VLANs, while IPAM leases (L3 mode); then addresses, routes and sysctls in the
//!        container, gateway addresses on the bridge, forwarding, masquerade; wait for the
//!        port; result.
//!        Any failure undoes what this ADD did (veth, IPAM lease) before it returns.
//! DEL    delete the container's veth (both ends go), release the IPAM lease; also when the
//!        namespace is gone. Never deletes the bridge.
//! CHECK  bridge, veth pair, addresses and routes match prevResult; IPAM CHECK (L3 only); with
//!        ipMasq, the masquerade of the addresses (ours, or the Go bridge's for its pods).
//! GC     forwarded to IPAM.  STATUS: the bridge can be managed; IPAM STATUS.
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;

use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use libcni::firewall::{Backend, Owner, check, driver, masquerade, nftables, spoofcheck};
use libcni::kernel::lock::node_lock;
use libcni::kernel::netlink::{Created, Kernel, Link, LinkKind, VethSpec};
use libcni::kernel::netns::Netns;
use libcni::kernel::sysctl;
use libcni::protocol::error;
use libcni::protocol::ipam;
use libcni::protocol::result::{CniResult, Interface, Route};
use libcni::protocol::skel::{Plugin, Request};
use libcni::{Error, Result};

use crate::config::{Conf, Teardown};

struct Bridge;

/// How long `enabledad` waits for the container's IPv6 addresses to pass duplicate address
/// detection (the reference's bound).
const DAD_WAIT: Duration = Duration::from_secs(5);

impl Plugin for Bridge {
    fn add(&self, req: &Request) -> Result<CniResult> {
        let conf = Conf::load(req)?;
        let ns = req.netns()?;
        let mut add = Add::open(req, &conf, &ns)?;
        let bridge = ensure_bridge(&add.host, &conf)?;
        let added = add.attach(bridge);
        if added.is_err() {
            add.undo();
        }
        added
    }

    fn del(&self, req: &Request) -> Result<()> {
        let conf = Teardown::load(req)?;
        // Best effort: every step runs, every failure is reported. The firewall work and
        // the IPAM release run beside the veth removal, so the kernel waits overlap.
        let (link, lease, firewall) = std::thread::scope(|scope| {
            let firewall = scope.spawn(|| remove_firewall_state(&conf, req));
            let lease = scope.spawn(|| match &conf.ipam {
                Some(ipam_type) => ipam::del(req, ipam_type),
                None => Ok(()),
            });
            let link = delete_container_veth(req);
            (
                link,
                joined(lease.join(), "IPAM release"),
                joined(firewall.join(), "firewall cleanup"),
            )
        });
        let legacy = match firewall {
            Ok(FirewallLeft::NetworkMasquerade) => remove_network_masquerade(&conf, req),
            Ok(FirewallLeft::Nothing) => Ok(()),
            Err(e) => Err(e),
        };
        error::all([link, lease, legacy])
    }

    fn check(&self, req: &Request) -> Result<()> {
        let conf = Conf::load(req)?;
        let prev = req
            .prev_result()?
            .ok_or_else(|| Error::invalid_config("CHECK: required prevResult missing"))?;
        // A bad CNI_NETNS is the runtime's error (code 4), reported before any state check.
        let ns = req.netns()?;
        if let Some(ipam_type) = &conf.ipam {
            ipam::check(req, ipam_type)?;
        }
        let cont_if = check_attachment(&ns, &conf, req, &prev)?;
        if conf.ipam.is_some() && conf.ip_masq {
            check_masquerade(req, &prev, cont_if)?;
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let conf = Teardown::load(req)?;
        let valid = req.conf.gc_attachments()?;
        let masq = masquerade::retain(&req.conf.name, valid);
        let spoof = spoofcheck::retain(&req.conf.name, valid);
        let ipam = match &conf.ipam {
            Some(ipam_type) => ipam::gc(req, ipam_type),
            None => Ok(()),
        };
        error::all([masq, spoof, ipam])
    }

    fn status(&self, req: &Request) -> Result<()> {
        let conf = Conf::load(req)?;
        let existing = Kernel::open(None)?.link_by_name(&conf.bridge)?;
        if let Some(link) = existing.filter(|l| l.kind != LinkKind::Bridge) {
            return Err(Error::not_available(format!(
                "{:?} exists and is not a bridge (it is a \"{}\" link)",
                link.name, link.kind
            )));
        }
        match &conf.ipam {
            Some(ipam_type) => ipam::status(req, ipam_type),
            None => Ok(()),
        }
    }
}

fn lease(req: &Request, ipam_type: &str) -> Result<CniResult> {
    let lease = ipam::add(req, ipam_type)?;
    if lease.ips.is_empty() {
        return Err(Error::internal("IPAM plugin returned missing IP config"));
    }
    Ok(lease)
}

/// What a helper thread returned; its panic as an error.
fn joined<T>(outcome: std::thread::Result<Result<T>>, what: &str) -> Result<T> {
    outcome.unwrap_or_else(|_| Err(Error::internal(format!("{what} panicked"))))
}

fn delete_container_veth(req: &Request) -> Result<()> {
    let Some(ns) = req.netns_if_present()? else {
        return Ok(());
    };
    let cont = Kernel::open(Some(&ns))?;
    match cont.link_by_name(&req.ifname)? {
        // Deleting one end of a veth deletes the pair.
        Some(link) => cont.delete_link(&link),
        None => Ok(()),
    }
}

fn owner(req: &Request) -> Owner<'_> {
    Owner {
        network: &req.conf.name,
        container_id: &req.container_id,
        ifname: &req.ifname,
    }
}

/// What DEL may still have to remove once the veth is gone.
enum FirewallLeft {
    Nothing,
    /// An earlier version's per-network masquerade rules: they go with the network's last port.
    NetworkMasquerade,
}

/// This attachment's spoof check and masquerade, and what the Go bridge made for it: one
/// nf_tables socket, one listing of each of our chains, and iptables only where its chains
/// exist.
fn remove_firewall_state(conf: &Teardown, req: &Request) -> Result<FirewallLeft> {
    if !conf.macspoofchk && !conf.ip_masq {
        return Ok(FirewallLeft::Nothing);
    }
    let owner = owner(req);
    let mut nft = nftables::open()?;
    let mut results = Vec::new();
    if conf.macspoofchk {
        results.push(spoofcheck::remove(&mut nft, &owner));
        results.push(spoofcheck::remove_reference(&mut nft, &owner));
    }
    let mut left = FirewallLeft::Nothing;
    if conf.ip_masq {
        match masquerade::remove(&mut nft, &owner) {
            Ok(true) => left = FirewallLeft::NetworkMasquerade,
            Ok(false) => {}
            Err(e) => results.push(Err(e)),
        }
        results.push(masquerade::remove_reference(&mut nft, &owner));
    }
    results.into_iter().collect::<Result<()>>().map(|()| left)
}

/// Removes an earlier version's per-network masquerade rules once the network's bridge has no
/// port left (pods that version made rely on them until then).
fn remove_network_masquerade(conf: &Teardown, req: &Request) -> Result<()> {
    let Some(bridge_name) = &conf.bridge else {
        eprintln!("bridge: no usable \"bridge\" key: per-network masquerade rules are left to GC");
        return Ok(());
    };
    let host = Kernel::open(None)?;
    if let Some(bridge) = host.link_by_name(bridge_name)?
        && host
            .links()?
            .iter()
            .any(|l| l.controller == Some(bridge.index))
    {
        return Ok(());
    }
    masquerade::remove_network_rules(&mut nftables::open()?, &req.conf.name)
}

/// What an ADD has changed so far, to undo on failure.
#[derive(Default)]
struct Done {
    host_veth: Option<Link>,
    ipam: bool,
    spoofcheck: bool,
    masquerade: bool,
}

impl Done {
    fn undo(self, host: &Kernel, conf: &Conf, req: &Request) {
        let owner = owner(req);
        if self.spoofcheck || self.masquerade {
            let removed = nftables::open().and_then(|mut nft| {
                let spoof = match self.spoofcheck {
                    true => spoofcheck::remove(&mut nft, &owner),
                    false => Ok(()),
                };
                let masq = match self.masquerade {
                    true => masquerade::remove(&mut nft, &owner).map(drop),
                    false => Ok(()),
                };
                spoof.and(masq)
            });
            if let Err(e) = removed {
                eprintln!("bridge: cleanup after failed ADD: {e}");
            }
        }
        if let Some(veth) = &self.host_veth
            && let Err(e) = host.delete_link(veth)
        {
            eprintln!("bridge: cleanup after failed ADD: {e}");
        }
        if self.ipam
            && let Some(ipam_type) = &conf.ipam
            && let Err(e) = ipam::del(req, ipam_type)
        {
            eprintln!("bridge: cleanup after failed ADD: IPAM DEL: {e}");
        }
    }
}

/// Creates the bridge (with a MAC of its own, so it never follows its ports'), or checks that
/// the existing link of that name is one; promisc, no router advertisements, up. A gateway
/// bridge made elsewhere gets its current MAC pinned before our port joins, under the node
/// lock so concurrent ADDs agree on it.
fn ensure_bridge(host: &Kernel, conf: &Conf) -> Result<Link> {
    let name = &conf.bridge;
    let created = host.add_bridge(name, conf.mtu, conf.has_vlans(), Some(random_mac()?))?;
    let lookup = || {
        host.link_by_name(name)?.ok_or_else(|| {
            Error::internal(format!("bridge {name:?} vanished after it was created"))
        })
    };
    let mut bridge = lookup()?;
    if bridge.kind != LinkKind::Bridge {
        return Err(Error::internal(format!(
            "{name:?} already exists but is not a bridge"
        )));
    }
    if conf.is_gateway && created == Created::Existed {
        let _lock = node_lock("bridge-mac")?;
        bridge = lookup()?;
        // A bridge whose last port left has no address (all zeros).
        let mac = if bridge.mac.iter().any(|b| *b != 0) {
            bridge.mac.clone()
        } else {
            random_mac()?.to_vec()
        };
        host.set_mac(&bridge, &mac)?;
        bridge.mac = mac;
    }
    if conf.promisc_mode && !bridge.promisc {
        host.set_promisc(&bridge, true)?;
    }
    let _ = sysctl::set_if_present(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
    if !bridge.up {
        host.set_up(&bridge, true)?;
    }
    Ok(bridge)
}

/// One ADD in progress: where it works, and what it has changed so far.
struct Add<'a> {
    req: &'a Request,
    conf: &'a Conf,
    ns: &'a Netns,
    host: Kernel,
    cont: Kernel,
    done: Done,
}

/// The two ends of the container's veth.
struct Port {
    host_veth: Link,
    container: Link,
}

/// The links an ADD reports, in the order of the result's interfaces: bridge, host veth,
/// container interface, VLAN gateway.
struct Attached {
    bridge: Link,
    port: Port,
    /// `<bridge>.<vlan>`, when it carries the gateway addresses.
    vlan_gateway: Option<Link>,
}

impl Attached {
    /// The container interface's position in the result (what `ips[].interface` names).
    const CONTAINER: usize = 2;
}

fn ifname_taken(req: &Request) -> Error {
    Error::internal(format!(
        "interface {:?} already exists in the container",
        req.ifname
    ))
}

impl<'a> Add<'a> {
    fn open(req: &'a Request, conf: &'a Conf, ns: &'a Netns) -> Result<Add<'a>> {
        let host = Kernel::open(None)?;
        let cont = Kernel::open(Some(ns))?;
        if cont.link_by_name(&req.ifname)?.is_some() {
            return Err(ifname_taken(req));
        }
        Ok(Add {
            req,
            conf,
            ns,
            host,
            cont,
            done: Done::default(),
        })
    }

    /// Undoes what this ADD changed (after a failure).
    fn undo(self) {
        self.done.undo(&self.host, self.conf, self.req);
    }

    /// Plugs the container into `bridge`, configures L3 when there is IPAM, and reports.
    fn attach(&mut self, bridge: Link) -> Result<CniResult> {
        let (port, lease) = self.plug_port_and_lease(&bridge);
        let port = port?;
        let (lease, vlan_gateway) = match lease {
            Some(lease) => self.configure_l3(lease?, &bridge, &port.container)?,
            None => {
                if !self.conf.disable_container_interface {
                    self.cont.set_up(&port.container, true)?;
                }
                (CniResult::default(), None)
            }
        };
        if !self.conf.disable_container_interface {
            wait_port_up(&self.host, &port.host_veth)?;
        }
        let attached = Attached {
            bridge,
            port,
            vlan_gateway,
        };
        self.result(&attached, lease)
    }

    /// The port and, when there is IPAM, the lease, at once: the IPAM plugin (a process that
    /// reads the network's leases) runs while the kernel makes the veth pair. Both outcomes
    /// are returned, so a failure of either undoes both.
    fn plug_port_and_lease(&mut self, bridge: &Link) -> (Result<Port>, Option<Result<CniResult>>) {
        let Some(ipam_type) = self.conf.ipam.as_deref() else {
            return (self.plug_port(bridge), None);
        };
        // Set first: an IPAM that leased but printed garbage is still released (DEL is idempotent).
        self.done.ipam = true;
        let req = self.req;
        std::thread::scope(|scope| {
            let lease = scope.spawn(move || lease(req, ipam_type));
            let port = self.plug_port(bridge);
            (port, Some(joined(lease.join(), "IPAM")))
        })
    }

    /// The veth pair, its host end a port of `bridge` with the port options, VLANs and spoof
    /// check.
    fn plug_port(&mut self, bridge: &Link) -> Result<Port> {
        let port = self.create_veth(bridge)?;
        let host_veth = &port.host_veth;
        self.host.bring_up_bridge_port(
            host_veth,
            self.conf.hairpin_mode,
            self.conf.port_isolation,
        )?;
        if self.conf.has_vlans() {
            set_port_vlans(&self.host, host_veth, self.conf)?;
        }
        if self.conf.macspoofchk {
            self.done.spoofcheck = true;
            spoofcheck::add(
                &mut nftables::open()?,
                &owner(self.req),
                &host_veth.name,
                &port.container.mac_string(),
            )?;
        }
        Ok(port)
    }

    fn create_veth(&mut self, bridge: &Link) -> Result<Port> {
        let ifname = &self.req.ifname;
        let in_container = || Ok(self.cont.link_by_name(ifname)?.is_some());
        let host_veth = add_port_veth(
            &self.host,
            bridge,
            ifname,
            self.ns,
            self.conf.mtu,
            self.conf.mac,
            in_container,
        )?
        .ok_or_else(|| ifname_taken(self.req))?;
        self.done.host_veth = Some(host_veth.clone());
        let container = self
            .cont
            .link_by_name(ifname)?
            .ok_or_else(|| Error::internal(format!("container interface {ifname:?} vanished")))?;
        Ok(Port {
            host_veth,
            container,
        })
    }

    /// The IPAM lease on the container interface; the bridge (or the VLAN's gateway link)
    /// as the gateway; masquerade. Returns the lease as the result reports it, and the VLAN
    /// gateway link when there is one.
    fn configure_l3(
        &mut self,
        mut lease: CniResult,
        bridge: &Link,
        container: &Link,
    ) -> Result<(CniResult, Option<Link>)> {
        let gateways = calc_gateways(&mut lease, self.conf);
        self.address_container(bridge, container, &lease)?;
        let vlan_gateway = match self.conf.is_gateway {
            true => self.serve_as_gateway(bridge, &gateways)?,
            false => None,
        };
        if self.conf.ip_masq {
            let ips: Vec<IpNetwork> = lease.ips.iter().map(|ip| ip.address).collect();
            self.done.masquerade = true;
            driver::open(Backend::choose(self.conf.ip_masq_backend.as_deref()))?
                .add_masquerade(&owner(self.req), &ips)?;
        }
        Ok((lease, vlan_gateway))
    }

    /// The lease's addresses and routes on the container interface, which comes up.
    fn address_container(&self, bridge: &Link, container: &Link, lease: &CniResult) -> Result<()> {
        let ipv4_only = !lease.ips.is_empty() && lease.ips.iter().all(|ip| ip.address.is_ipv4());
        set_container_sysctls(self.ns, &self.req.ifname, self.conf.enabledad, ipv4_only)?;
        // With `enabledad`, addresses are usable when ADD returns, or ADD fails (as the
        // reference: up to 5 s).
        let dad_wait = self.conf.enabledad.then_some(DAD_WAIT);
        ipam::configure_iface(
            &self.cont,
            self.ns,
            container,
            &lease.ips,
            &lease.routes,
            dad_wait,
        )?;
        // The host may still know a previous owner of a reused address: forget it.
        for ip in &lease.ips {
            self.host.forget_neighbour(bridge, ip.address.ip())?;
        }
        Ok(())
    }

    /// The gateway addresses on the bridge, or with a VLAN on `<bridge>.<vlan>` (a port in
    /// that VLAN, returned); forwarding on.
    fn serve_as_gateway(&self, bridge: &Link, gateways: &[IpNetwork]) -> Result<Option<Link>> {
        let vlan_gateway = match self.conf.vlan {
            0 => None,
            _ => Some(ensure_vlan_gateway_link(&self.host, bridge, self.conf)?),
        };
        let link = vlan_gateway.as_ref().unwrap_or(bridge);
        ensure_gateway_addresses(&self.host, link, gateways, self.conf.force_address)?;
        enable_forwarding(gateways)?;
        Ok(vlan_gateway)
    }

    /// The links as they are now (the bridge's MAC may have changed when the port joined), the
    /// lease, and the config's DNS over the lease's.
    fn result(&self, attached: &Attached, lease: CniResult) -> Result<CniResult> {
        let dns = match self.req.conf.dns()?.filter(|d| !d.is_empty()) {
            Some(dns) => dns.clone(),
            None => lease.dns,
        };
        Ok(CniResult {
            interfaces: self.interfaces(attached)?,
            ips: lease.ips,
            routes: lease.routes,
            dns,
        })
    }

    fn interfaces(&self, attached: &Attached) -> Result<Vec<Interface>> {
        let now = |link: &Link| -> Result<Interface> {
            let mac = match self.host.link_by_index(link.index)? {
                Some(current) => current.mac_string(),
                None => link.mac_string(),
            };
            Ok(Interface {
                name: link.name.clone(),
                mac,
                ..Default::default()
            })
        };
        let container = &attached.port.container;
        let mut interfaces = vec![
            now(&attached.bridge)?,
            now(&attached.port.host_veth)?,
            Interface {
                name: container.name.clone(),
                mac: container.mac_string(),
                sandbox: self.ns.path().display().to_string(),
                ..Default::default()
            },
        ];
        if let Some(link) = &attached.vlan_gateway {
            interfaces.push(now(link)?);
        }
        Ok(interfaces)
    }
}

/// A veth pair whose host end (named `veth` + random hex, as the reference does) is a port of
/// `bridge` and whose other end is `peer` in `peer_ns`. `None` when `peer` turns out to exist
/// already (`peer_exists` tells, after a clash); a clash of the random name is retried.
fn add_port_veth(
    host: &Kernel,
    bridge: &Link,
    peer: &str,
    peer_ns: &Netns,
    mtu: u32,
    peer_mac: Option<[u8; 6]>,
    peer_exists: impl Fn() -> Result<bool>,
) -> Result<Option<Link>> {
    for _ in 0..10 {
        let host_name = random_veth_name()?;
        let spec = VethSpec {
            host: &host_name,
            peer,
            peer_ns,
            mtu,
            peer_mac,
            controller: bridge.index,
        };
        if host.add_veth(&spec)? == Created::Existed {
            if peer_exists()? {
                return Ok(None);
            }
            continue;
        }
        let port = host
            .link_by_name(&host_name)?
            .ok_or_else(|| Error::internal(format!("veth {host_name:?} vanished")))?;
        quiet_ipv6(&port.name);
        return Ok(Some(port));
    }
    Err(Error::internal(
        "cannot find a free host veth name after 10 tries",
    ))
}

/// A bridge port (still down) gets no IPv6 of its own: traffic through it is bridged, never
/// its own. Left on, each port adds a link-local address, its routes and multicast
/// memberships to the host, and every later link change on the node walks the host's IPv6
/// routes (three per pod). Router advertisements stay ignored, as the reference sets.
/// Best effort, as the reference treats `accept_ra`: IPv6 may be absent, /proc/sys read-only.
fn quiet_ipv6(port: &str) {
    let _ = sysctl::set_if_present(&format!("net/ipv6/conf/{port}/accept_ra"), "0");
    let _ = sysctl::set_if_present(&format!("net/ipv6/conf/{port}/disable_ipv6"), "1");
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    libcni::kernel::random::bytes()
        .map_err(|e| Error::internal(format!("cannot read random bytes: {e}")))
}

/// A random unicast, locally administered MAC.
fn random_mac() -> Result<[u8; 6]> {
    let mut mac = random_bytes::<6>()?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// `veth` + 8 random hex digits, as the reference names host ends.
fn random_veth_name() -> Result<String> {
    Ok(format!("veth{}", libcni::hash::hex(&random_bytes::<4>()?)))
}

fn set_port_vlans(host: &Kernel, port: &Link, conf: &Conf) -> Result<()> {
    port_vlans(
        host,
        port,
        conf.vlan,
        &conf.trunk,
        conf.preserve_default_vlan,
    )
}

/// The port's VLANs: `vlan` as PVID untagged, `trunk` tagged (VID 1 as PVID when there is a
/// trunk and no `vlan`); the default VID 1 goes unless `preserve_default`.
fn port_vlans(
    host: &Kernel,
    port: &Link,
    vlan: u16,
    trunk: &[u16],
    preserve_default: bool,
) -> Result<()> {
    if !preserve_default {
        host.bridge_vlan_del(port, 1)?;
    }
    if vlan != 0 {
        host.bridge_vlan_add(port, vlan, true)?;
    }
    for vid in trunk {
        host.bridge_vlan_add(port, *vid, false)?;
    }
    if vlan == 0 && !trunk.is_empty() {
        host.bridge_vlan_add(port, 1, true)?;
    }
    Ok(())
}

/// `<bridge>.<vlan>`: a veth in the host namespace whose peer is a bridge port in the VLAN,
/// carrying the gateway addresses for that VLAN. Made once, shared by the VLAN's containers.
fn ensure_vlan_gateway_link(host: &Kernel, bridge: &Link, conf: &Conf) -> Result<Link> {
    let name = format!("{}.{}", bridge.name, conf.vlan);
    if name.len() > 15 {
        return Err(Error::invalid_config(format!(
            "the VLAN gateway interface name {name:?} is longer than 15 bytes; use a shorter \"bridge\" name"
        )));
    }
    if let Some(link) = host.link_by_name(&name)? {
        return Ok(link);
    }
    let here = Netns::current().map_err(|e| Error::internal(e.to_string()))?;
    let made_meanwhile = || Ok(host.link_by_name(&name)?.is_some());
    let Some(port) = add_port_veth(host, bridge, &name, &here, bridge.mtu, None, made_meanwhile)?
    else {
        // Another ADD made it meanwhile.
        return existing(host, &name);
    };
    let configured = port_vlans(host, &port, conf.vlan, &[], conf.preserve_default_vlan)
        .and_then(|()| host.set_up(&port, true))
        .and_then(|()| existing(host, &name))
        .and_then(|link| host.set_up(&link, true).map(|()| link));
    if configured.is_err() {
        // A half-made pair would be taken as ready by the next ADD.
        let _ = host.delete_link(&port);
    }
    configured
}

/// The link `name`, which this ADD made or saw.
fn existing(host: &Kernel, name: &str) -> Result<Link> {
    host.link_by_name(name)?
        .ok_or_else(|| Error::internal(format!("{name:?} vanished")))
}

/// Every IP belongs to the container interface; a missing gateway is the subnet's
/// first address when the bridge is the gateway; `isDefaultGateway` adds a default route per
/// family unless IPAM returned one with a gateway. Returns the gateway addresses per family.
fn calc_gateways(result: &mut CniResult, conf: &Conf) -> Vec<IpNetwork> {
    let mut gateways = Vec::new();
    let mut default_found = [false, false];
    for i in 0..result.ips.len() {
        let ip = &mut result.ips[i];
        ip.interface = Some(Attached::CONTAINER);
        let v4 = ip.address.is_ipv4();
        if ip.gateway.is_none() && conf.is_gateway {
            ip.gateway = first_host(ip.address);
        }
        let gateway = ip.gateway;
        let prefix = ip.address.prefix();
        let fam = usize::from(!v4);
        if conf.is_default_gateway && !default_found[fam] {
            let default = default_route(v4);
            if !result
                .routes
                .iter()
                .any(|r| r.gw.is_some() && r.dst == default)
            {
                result.routes.push(Route::new(default, gateway));
            }
            default_found[fam] = true;
        }
        if conf.is_gateway
            && let Some(gw) = gateway
            && let Ok(net) = IpNetwork::new(gw, prefix)
        {
            gateways.push(net);
        }
    }
    gateways
}

fn default_route(v4: bool) -> IpNetwork {
    let any = if v4 {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    };
    IpNetwork::new(any, 0)
        .unwrap_or_else(|_| unreachable!("a /0 prefix is valid for both families"))
}

fn first_host(address: IpNetwork) -> Option<IpAddr> {
    Some(match address.network() {
        IpAddr::V4(n) => IpAddr::V4((u32::from(n).checked_add(1)?).into()),
        IpAddr::V6(n) => IpAddr::V6((u128::from(n).checked_add(1)?).into()),
    })
}

/// `ipv4_only`: the lease has addresses, none of them IPv6. Then IPv6 is off on the interface
/// before it comes up (as Docker does on an IPv4-only network): its link-local address would
/// send MLD reports and neighbour solicitations that the bridge floods to every other pod.
fn set_container_sysctls(ns: &Netns, ifname: &str, enabledad: bool, ipv4_only: bool) -> Result<()> {
    let sys = sysctl::private();
    ns.run(|| -> Result<()> {
        if ipv4_only {
            sys.set_if_present(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1")?;
        }
        if enabledad {
            sys.set_if_present(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1")?;
            sys.set_if_present(&format!("net/ipv6/conf/{ifname}/accept_dad"), "1")?;
        } else {
            sys.set_if_present(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        }
        // Announce the addresses when the interface comes up (gratuitous ARP, unsolicited NA).
        sys.set_if_present(&format!("net/ipv6/conf/{ifname}/ndisc_notify"), "1")?;
        sys.set_if_present(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")
    })
}

/// Puts each gateway address on the bridge. An address of the same family that is not one of
/// this network's gateways conflicts (IPv4: any; IPv6: an overlapping one) unless
/// `forceAddress`, which replaces it.
fn ensure_gateway_addresses(
    host: &Kernel,
    bridge: &Link,
    gateways: &[IpNetwork],
    force: bool,
) -> Result<()> {
    let existing = host.addresses(bridge)?;
    for gw in gateways {
        if existing.contains(gw) {
            continue;
        }
        for old in existing
            .iter()
            .filter(|a| a.is_ipv4() == gw.is_ipv4() && !gateways.contains(a))
        {
            let conflicts = gw.is_ipv4() || old.contains(gw.ip()) || gw.contains(old.ip());
            if !conflicts || matches!(old.ip(), IpAddr::V6(v6) if v6.is_unicast_link_local()) {
                continue;
            }
            if !force {
                return Err(Error::internal(format!(
                    "{:?} already has an IP address different from {gw} ({old}); set \"forceAddress\" to replace it",
                    bridge.name
                )));
            }
            host.del_address(bridge, *old)?;
        }
        host.add_address(bridge, *gw)?;
    }
    Ok(())
}

fn enable_forwarding(gateways: &[IpNetwork]) -> Result<()> {
    if gateways.iter().any(|g| g.is_ipv4()) {
        sysctl::set("net/ipv4/ip_forward", "1")?;
    }
    if gateways.iter().any(|g| g.is_ipv6()) {
        sysctl::set("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Waits until the host end of the veth is operationally up, as the reference does.
fn wait_port_up(host: &Kernel, veth: &Link) -> Result<()> {
    let mut state = String::from("unknown");
    for pause_ms in [0u64, 50, 500, 1000, 1000] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        match host.link_by_index(veth.index)? {
            Some(l) if l.oper_up => return Ok(()),
            Some(l) => {
                state = if l.up {
                    "down (lower layer)".into()
                } else {
                    "down".into()
                }
            }
            None => state = "gone".into(),
        }
    }
    Err(Error::internal(format!(
        "bridge port in error state: {state}"
    )))
}

/// CHECK of the bridge, the container's veth, its addresses and routes; the index of the
/// container interface in `prev`.
fn check_attachment(ns: &Netns, conf: &Conf, req: &Request, prev: &CniResult) -> Result<usize> {
    let host = Kernel::open(None)?;
    let cont = Kernel::open(Some(ns))?;
    let bridge = check_bridge(&host, conf, prev)?;
    let cont_if = container_position(req, prev)?;
    let cont_veth = check_container_veth(&cont, &req.ifname, &prev.interfaces[cont_if].mac)?;
    check_host_veth(&host, &cont_veth, &bridge, &req.ifname)?;
    check_addresses(&cont, &cont_veth, prev, cont_if)?;
    check_routes(&cont, prev)?;
    Ok(cont_if)
}

fn check_failed(msg: impl std::fmt::Display) -> Error {
    Error::internal(format!("CHECK: {msg}"))
}

/// The bridge exists, with the MAC `prev` reports and the configured promiscuous mode.
fn check_bridge(host: &Kernel, conf: &Conf, prev: &CniResult) -> Result<Link> {
    let bridge = host
        .link_by_name(&conf.bridge)?
        .ok_or_else(|| check_failed(format!("bridge {:?} does not exist", conf.bridge)))?;
    if bridge.kind != LinkKind::Bridge {
        return Err(check_failed(format!("{:?} is not a bridge", bridge.name)));
    }
    if let Some(i) = prev.interfaces.iter().find(|i| i.name == conf.bridge)
        && !i.mac.is_empty()
        && !i.mac.eq_ignore_ascii_case(&bridge.mac_string())
    {
        return Err(check_failed(format!(
            "bridge {:?} has MAC {}, expected {}",
            bridge.name,
            bridge.mac_string(),
            i.mac
        )));
    }
    if bridge.promisc != conf.promisc_mode {
        return Err(check_failed(format!(
            "bridge {:?} promiscuous mode is {}, expected {}",
            bridge.name, bridge.promisc, conf.promisc_mode
        )));
    }
    Ok(bridge)
}

/// Where `prev` lists this attachment's container interface.
fn container_position(req: &Request, prev: &CniResult) -> Result<usize> {
    let sandbox = req
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    prev.interfaces
        .iter()
        .position(|i| i.name == req.ifname && i.sandbox == sandbox)
        .ok_or_else(|| {
            check_failed(format!(
                "prevResult has no interface {:?} in {sandbox:?}",
                req.ifname
            ))
        })
}

/// The container's `ifname` is a veth with the MAC `prev` reports (when it reports one).
fn check_container_veth(cont: &Kernel, ifname: &str, expected_mac: &str) -> Result<Link> {
    let cont_veth = cont
        .link_by_name(ifname)?
        .ok_or_else(|| check_failed(format!("interface {ifname:?} is missing in the container")))?;
    if cont_veth.kind != LinkKind::Veth {
        return Err(check_failed(format!(
            "container interface {ifname:?} is not a veth"
        )));
    }
    if !expected_mac.is_empty() && !expected_mac.eq_ignore_ascii_case(&cont_veth.mac_string()) {
        return Err(check_failed(format!(
            "container interface has MAC {}, expected {expected_mac}",
            cont_veth.mac_string()
        )));
    }
    Ok(cont_veth)
}

/// The container veth's peer is on the host, a port of `bridge`.
fn check_host_veth(host: &Kernel, cont_veth: &Link, bridge: &Link, ifname: &str) -> Result<()> {
    let peer = cont_veth
        .peer
        .ok_or_else(|| check_failed("container veth has no peer"))?;
    let host_veth = host
        .link_by_index(peer)?
        .filter(|l| l.kind == LinkKind::Veth && l.peer == Some(cont_veth.index))
        .ok_or_else(|| check_failed(format!("the host end of {ifname:?} is missing")))?;
    if host_veth.controller != Some(bridge.index) {
        return Err(check_failed(format!(
            "{:?} is not a port of bridge {:?}",
            host_veth.name, bridge.name
        )));
    }
    Ok(())
}

/// Every address `prev` gives the container interface is on it.
fn check_addresses(
    cont: &Kernel,
    cont_veth: &Link,
    prev: &CniResult,
    cont_if: usize,
) -> Result<()> {
    let addresses = cont.addresses(cont_veth)?;
    match prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(cont_if))
        .find(|ip| !addresses.contains(&ip.address))
    {
        Some(ip) => Err(check_failed(format!(
            "address {} is missing on {:?}",
            ip.address, cont_veth.name
        ))),
        None => Ok(()),
    }
}

/// Every route of `prev` is in the container.
fn check_routes(cont: &Kernel, prev: &CniResult) -> Result<()> {
    for v4 in [true, false] {
        let wanted: Vec<&Route> = prev
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv4() == v4)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let present = cont.routes(v4)?;
        if let Some(route) = wanted
            .into_iter()
            .find(|route| !present.iter().any(|r| r.matches(route)))
        {
            return Err(check_failed(format!(
                "route to {} is missing in the container",
                route.dst
            )));
        }
    }
    Ok(())
}

/// CHECK of `ipMasq`: the masquerade of the container's addresses, ours or what the Go bridge
/// made for a pod it ADDed.
fn check_masquerade(req: &Request, prev: &CniResult, cont_if: usize) -> Result<()> {
    let ips: Vec<IpNetwork> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(cont_if))
        .map(|ip| ip.address)
        .collect();
    match check::masquerade(&owner(req), &ips)? {
        Some(what) => Err(Error::internal(format!(
            "CHECK: masquerade rules of this container are missing: {what}"
        ))),
        None => Ok(()),
    }
}

libcni::plugin_main!(
    &Bridge,
    &format!("CNI bridge plugin {} (Rust)", libcni::VERSION)
);
