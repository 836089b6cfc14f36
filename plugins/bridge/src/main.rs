//! CNI `bridge`: connects the container to a Linux bridge on the host through a veth pair.
//!
//! ADD    ensure the bridge; create the veth pair (container end created directly in the
//!        container's namespace as CNI_IFNAME, host end a port of the bridge); port options and
//!        VLANs; in L3 mode IPAM, addresses, routes and sysctls in the container, gateway
//!        addresses on the bridge, forwarding, masquerade; wait for the port; result.
//!        Any failure undoes what this ADD did (veth, IPAM lease) before it returns.
//! DEL    delete the container's veth (both ends go), release the IPAM lease; also when the
//!        namespace is gone. Never deletes the bridge.
//! CHECK  bridge, veth pair, addresses and routes match prevResult; IPAM CHECK (L3 only); with
//!        ipMasq, the masquerade of the addresses (ours, or the Go bridge's for its pods).
//! GC     forwarded to IPAM.  STATUS: the bridge can be managed; IPAM STATUS.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use ipnetwork::IpNetwork;
use libcni::firewall::{Backend, Owner, check, driver, masquerade, nftables, spoofcheck};
use libcni::kernel::lock::node_lock;
use libcni::kernel::netlink::{Created, Link, Netlink, VethSpec, block_on};
use libcni::kernel::netns::Netns;
use libcni::kernel::sysctl;
use libcni::protocol::ipam;
use libcni::protocol::result::{CniResult, Interface, Route};
use libcni::protocol::skel::{self, Plugin, Request};
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
        block_on(async {
            let host = Netlink::open(None)?;
            let cont = Netlink::open(Some(&ns))?;
            if cont.link_by_name(&req.ifname).await?.is_some() {
                return Err(Error::internal(format!(
                    "interface {:?} already exists in the container",
                    req.ifname
                )));
            }
            let bridge = ensure_bridge(&host, &conf).await?;
            let mut done = Done::default();
            let added = attach(&host, &cont, &ns, &bridge, &conf, req, &mut done).await;
            if added.is_err() {
                done.undo(&host, &conf, req).await;
            }
            added
        })?
    }

    fn del(&self, req: &Request) -> Result<()> {
        let conf = Teardown::load(req)?;
        // Best effort: every step runs, the first failure is reported. The firewall work and
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
        link.and(lease).and(legacy)
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
        let cont_if = block_on(check_attachment(&ns, &conf, req, &prev))??;
        if conf.ipam.is_some() && conf.raw.ip_masq {
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
        masq.and(spoof).and(ipam)
    }

    fn status(&self, req: &Request) -> Result<()> {
        let conf = Conf::load(req)?;
        let existing =
            block_on(async { Netlink::open(None)?.link_by_name(&conf.raw.bridge).await })??;
        if let Some(link) = existing.filter(|l| l.kind != "bridge") {
            return Err(Error::not_available(format!(
                "{:?} exists and is not a bridge (it is a {:?} link)",
                link.name, link.kind
            )));
        }
        match &conf.ipam {
            Some(ipam_type) => ipam::status(req, ipam_type),
            None => Ok(()),
        }
    }
}

/// What a helper thread returned; its panic as an error.
fn joined<T>(outcome: std::thread::Result<Result<T>>, what: &str) -> Result<T> {
    outcome.unwrap_or_else(|_| Err(Error::internal(format!("{what} panicked"))))
}

fn delete_container_veth(req: &Request) -> Result<()> {
    let Some(ns) = req.netns_if_present()? else {
        return Ok(());
    };
    block_on(async {
        let cont = Netlink::open(Some(&ns))?;
        match cont.link_by_name(&req.ifname).await? {
            // Deleting one end of a veth deletes the pair.
            Some(link) => cont.delete_link(&link).await,
            None => Ok(()),
        }
    })?
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
    let in_use = block_on(async {
        let host = Netlink::open(None)?;
        let Some(bridge) = host.link_by_name(bridge_name).await? else {
            return Ok(false);
        };
        let links = host.links().await?;
        Ok::<_, Error>(links.iter().any(|l| l.controller == Some(bridge.index)))
    })??;
    if in_use {
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
    async fn undo(self, host: &Netlink, conf: &Conf, req: &Request) {
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
            && let Err(e) = host.delete_link(veth).await
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

/// Creates the bridge, or checks that the existing link of that name is one; promisc, no
/// router advertisements, up.
/// Creates the bridge (with a MAC of its own, so it never follows its ports'), or checks that
/// the existing link of that name is one; promisc, no router advertisements, up. A gateway
/// bridge made elsewhere gets its current MAC pinned before our port joins, under the node
/// lock so concurrent ADDs agree on it.
async fn ensure_bridge(host: &Netlink, conf: &Conf) -> Result<Link> {
    let name = &conf.raw.bridge;
    let created = host
        .add_bridge(name, conf.raw.mtu, conf.has_vlans(), Some(random_mac()?))
        .await?;
    let lookup = async || {
        host.link_by_name(name).await?.ok_or_else(|| {
            Error::internal(format!("bridge {name:?} vanished after it was created"))
        })
    };
    let mut bridge = lookup().await?;
    if bridge.kind != "bridge" {
        return Err(Error::internal(format!(
            "{name:?} already exists but is not a bridge"
        )));
    }
    if conf.is_gateway && created == Created::Existed {
        let _lock = node_lock("bridge-mac")?;
        bridge = lookup().await?;
        // A bridge whose last port left has no address (all zeros).
        let mac = if bridge.mac.iter().any(|b| *b != 0) {
            bridge.mac.clone()
        } else {
            random_mac()?.to_vec()
        };
        host.set_mac(&bridge, &mac).await?;
        bridge.mac = mac;
    }
    if conf.raw.promisc_mode && !bridge.promisc {
        host.set_promisc(&bridge, true).await?;
    }
    let _ = sysctl::set_if_present(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
    if !bridge.up {
        host.set_up(&bridge, true).await?;
    }
    Ok(bridge)
}

async fn attach(
    host: &Netlink,
    cont: &Netlink,
    ns: &Netns,
    bridge: &Link,
    conf: &Conf,
    req: &Request,
    done: &mut Done,
) -> Result<CniResult> {
    let (host_veth, cont_veth) = create_veth(host, cont, ns, bridge, conf, req, done).await?;
    let _ = sysctl::set_if_present(&format!("net/ipv6/conf/{}/accept_ra", host_veth.name), "0");
    host.set_bridge_port(&host_veth, conf.raw.hairpin_mode, conf.raw.port_isolation)
        .await?;
    if conf.has_vlans() {
        set_port_vlans(host, &host_veth, conf).await?;
    }

    let mut result = CniResult {
        interfaces: vec![
            Interface {
                name: bridge.name.clone(),
                ..Default::default()
            },
            Interface {
                name: host_veth.name.clone(),
                ..Default::default()
            },
            Interface {
                name: cont_veth.name.clone(),
                mac: cont_veth.mac_string(),
                sandbox: ns.path().display().to_string(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    if conf.raw.macspoofchk {
        done.spoofcheck = true;
        spoofcheck::add(
            &mut nftables::open()?,
            &owner(req),
            &host_veth.name,
            &cont_veth.mac_string(),
        )?;
    }

    if let Some(ipam_type) = &conf.ipam {
        // Set first: an IPAM that leased but printed garbage is still released (DEL is idempotent).
        done.ipam = true;
        let lease = ipam::add(req, ipam_type)?;
        if lease.ips.is_empty() {
            return Err(Error::internal("IPAM plugin returned missing IP config"));
        }
        result.ips = lease.ips;
        result.routes = lease.routes;
        result.dns = lease.dns;
        let gateways = calc_gateways(&mut result, conf);
        set_container_sysctls(ns, &req.ifname, conf.raw.enabledad)?;
        // With `enabledad`, addresses are usable when ADD returns, or ADD fails (as the
        // reference: up to 5 s).
        let dad_wait = conf.raw.enabledad.then_some(DAD_WAIT);
        libcni::protocol::ipam::configure_iface(
            cont,
            ns,
            &cont_veth,
            &result.ips,
            &result.routes,
            dad_wait,
        )
        .await?;
        // The host may still know a previous owner of a reused address: forget it.
        for ip in &result.ips {
            host.forget_neighbour(bridge, ip.address.ip()).await?;
        }
        if conf.is_gateway {
            // With a VLAN the gateway lives on `<bridge>.<vlan>`, a port in that VLAN.
            let gateway_link = if conf.vlan != 0 {
                let link = ensure_vlan_gateway_link(host, bridge, conf).await?;
                result.interfaces.push(Interface {
                    name: link.name.clone(),
                    ..Default::default()
                });
                link
            } else {
                bridge.clone()
            };
            ensure_gateway_addresses(host, &gateway_link, &gateways, conf.raw.force_address)
                .await?;
            enable_forwarding(&gateways)?;
        }
        if conf.raw.ip_masq {
            let ips: Vec<IpNetwork> = result.ips.iter().map(|ip| ip.address).collect();
            done.masquerade = true;
            driver::open(Backend::choose(conf.raw.ip_masq_backend.as_deref()))?
                .add_masquerade(&owner(req), &ips)?;
        }
    } else if !conf.raw.disable_container_interface {
        cont.set_up(&cont_veth, true).await?;
    }

    if !conf.raw.disable_container_interface {
        wait_port_up(host, &host_veth).await?;
    }
    // The bridge's MAC may have changed when the port joined; report what it is now.
    let bridge_now = host
        .link_by_index(bridge.index)
        .await?
        .unwrap_or_else(|| bridge.clone());
    let veth_now = host
        .link_by_index(host_veth.index)
        .await?
        .unwrap_or(host_veth);
    result.interfaces[0].mac = bridge_now.mac_string();
    result.interfaces[1].mac = veth_now.mac_string();
    if let Some(gateway_if) = result.interfaces.get_mut(3)
        && let Some(link) = host.link_by_name(&gateway_if.name).await?
    {
        gateway_if.mac = link.mac_string();
    }
    if let Some(dns) = req.conf.dns()?.filter(|d| !d.is_empty()) {
        result.dns = dns.clone();
    }
    Ok(result)
}

async fn create_veth(
    host: &Netlink,
    cont: &Netlink,
    ns: &Netns,
    bridge: &Link,
    conf: &Conf,
    req: &Request,
    done: &mut Done,
) -> Result<(Link, Link)> {
    let in_container = async || Ok(cont.link_by_name(&req.ifname).await?.is_some());
    let host_veth = add_port_veth(
        host,
        bridge,
        &req.ifname,
        ns,
        conf.raw.mtu,
        conf.mac,
        in_container,
    )
    .await?
    .ok_or_else(|| {
        Error::internal(format!(
            "interface {:?} already exists in the container",
            req.ifname
        ))
    })?;
    done.host_veth = Some(host_veth.clone());
    let cont_veth = cont
        .link_by_name(&req.ifname)
        .await?
        .ok_or_else(|| Error::internal(format!("container interface {:?} vanished", req.ifname)))?;
    Ok((host_veth, cont_veth))
}

/// A veth pair whose host end (named `veth` + random hex, as the reference does) is a port of
/// `bridge` and whose other end is `peer` in `peer_ns`. `None` when `peer` turns out to exist
/// already (`peer_exists` tells, after a clash); a clash of the random name is retried.
async fn add_port_veth(
    host: &Netlink,
    bridge: &Link,
    peer: &str,
    peer_ns: &Netns,
    mtu: u32,
    peer_mac: Option<[u8; 6]>,
    peer_exists: impl AsyncFn() -> Result<bool>,
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
        if !host.add_veth(&spec).await? {
            if peer_exists().await? {
                return Ok(None);
            }
            continue;
        }
        return host
            .link_by_name(&host_name)
            .await?
            .map(Some)
            .ok_or_else(|| Error::internal(format!("veth {host_name:?} vanished")));
    }
    Err(Error::internal(
        "cannot find a free host veth name after 10 tries",
    ))
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

async fn set_port_vlans(host: &Netlink, port: &Link, conf: &Conf) -> Result<()> {
    port_vlans(
        host,
        port,
        conf.vlan,
        &conf.trunk,
        conf.raw.preserve_default_vlan,
    )
    .await
}

/// The port's VLANs: `vlan` as PVID untagged, `trunk` tagged (VID 1 as PVID when there is a
/// trunk and no `vlan`); the default VID 1 goes unless `preserve_default`.
async fn port_vlans(
    host: &Netlink,
    port: &Link,
    vlan: u16,
    trunk: &[u16],
    preserve_default: bool,
) -> Result<()> {
    if !preserve_default {
        host.bridge_vlan_del(port, 1).await?;
    }
    if vlan != 0 {
        host.bridge_vlan_add(port, vlan, true).await?;
    }
    for vid in trunk {
        host.bridge_vlan_add(port, *vid, false).await?;
    }
    if vlan == 0 && !trunk.is_empty() {
        host.bridge_vlan_add(port, 1, true).await?;
    }
    Ok(())
}

/// `<bridge>.<vlan>`: a veth in the host namespace whose peer is a bridge port in the VLAN,
/// carrying the gateway addresses for that VLAN. Made once, shared by the VLAN's containers.
async fn ensure_vlan_gateway_link(host: &Netlink, bridge: &Link, conf: &Conf) -> Result<Link> {
    let name = format!("{}.{}", bridge.name, conf.vlan);
    if name.len() > 15 {
        return Err(Error::invalid_config(format!(
            "the VLAN gateway interface name {name:?} is longer than 15 bytes; use a shorter \"bridge\" name"
        )));
    }
    if let Some(link) = host.link_by_name(&name).await? {
        return Ok(link);
    }
    let here = Netns::current().map_err(|e| Error::internal(e.to_string()))?;
    let made_meanwhile = async || Ok(host.link_by_name(&name).await?.is_some());
    let Some(port) =
        add_port_veth(host, bridge, &name, &here, bridge.mtu, None, made_meanwhile).await?
    else {
        // Another ADD made it meanwhile.
        return host
            .link_by_name(&name)
            .await?
            .ok_or_else(|| Error::internal(format!("{name:?} vanished")));
    };
    let configured = async {
        port_vlans(host, &port, conf.vlan, &[], conf.raw.preserve_default_vlan).await?;
        let link = host
            .link_by_name(&name)
            .await?
            .ok_or_else(|| Error::internal(format!("{name:?} vanished")))?;
        host.set_up(&link, true).await?;
        Ok(link)
    }
    .await;
    if configured.is_err() {
        // A half-made pair would be taken as ready by the next ADD.
        let _ = host.delete_link(&port).await;
    }
    configured
}

/// Every IP belongs to the container interface (index 2); a missing gateway is the subnet's
/// first address when the bridge is the gateway; `isDefaultGateway` adds a default route per
/// family unless IPAM returned one with a gateway. Returns the gateway addresses per family.
fn calc_gateways(result: &mut CniResult, conf: &Conf) -> Vec<IpNetwork> {
    let mut gateways = Vec::new();
    let mut default_found = [false, false];
    for i in 0..result.ips.len() {
        let ip = &mut result.ips[i];
        ip.interface = Some(2);
        let v4 = ip.address.is_ipv4();
        if ip.gateway.is_none() && conf.is_gateway {
            ip.gateway = first_host(ip.address);
        }
        let gateway = ip.gateway;
        let prefix = ip.address.prefix();
        let fam = usize::from(!v4);
        if conf.raw.is_default_gateway && !default_found[fam] {
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

fn set_container_sysctls(ns: &Netns, ifname: &str, enabledad: bool) -> Result<()> {
    ns.run(|| -> Result<()> {
        if enabledad {
            sysctl::set_if_present(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1")?;
            sysctl::set_if_present(&format!("net/ipv6/conf/{ifname}/accept_dad"), "1")?;
        } else {
            sysctl::set_if_present(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        }
        // Announce the addresses when the interface comes up (gratuitous ARP, unsolicited NA).
        sysctl::set_if_present(&format!("net/ipv6/conf/{ifname}/ndisc_notify"), "1")?;
        sysctl::set_if_present(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")
    })
    .map_err(|e| Error::internal(format!("cannot enter the container namespace: {e}")))?
}

/// Puts each gateway address on the bridge. An address of the same family that is not one of
/// this network's gateways conflicts (IPv4: any; IPv6: an overlapping one) unless
/// `forceAddress`, which replaces it.
async fn ensure_gateway_addresses(
    host: &Netlink,
    bridge: &Link,
    gateways: &[IpNetwork],
    force: bool,
) -> Result<()> {
    let existing = host.addresses(bridge).await?;
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
            host.del_address(bridge, *old).await?;
        }
        host.add_address(bridge, *gw).await?;
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
async fn wait_port_up(host: &Netlink, veth: &Link) -> Result<()> {
    let mut state = String::from("unknown");
    for pause_ms in [0u64, 50, 500, 1000, 1000] {
        libcni::kernel::netlink::pause(Duration::from_millis(pause_ms)).await;
        match host.link_by_index(veth.index).await? {
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

/// CHECK of the container's interface, addresses and routes; the index of the container
/// interface in `prev`.
async fn check_attachment(
    ns: &Netns,
    conf: &Conf,
    req: &Request,
    prev: &CniResult,
) -> Result<usize> {
    let host = Netlink::open(None)?;
    let cont = Netlink::open(Some(ns))?;
    let fail = |msg: String| Error::internal(format!("CHECK: {msg}"));

    let bridge_if = prev.interfaces.iter().find(|i| i.name == conf.raw.bridge);
    let bridge = host
        .link_by_name(&conf.raw.bridge)
        .await?
        .ok_or_else(|| fail(format!("bridge {:?} does not exist", conf.raw.bridge)))?;
    if bridge.kind != "bridge" {
        return Err(fail(format!("{:?} is not a bridge", bridge.name)));
    }
    if let Some(i) = bridge_if
        && !i.mac.is_empty()
        && !i.mac.eq_ignore_ascii_case(&bridge.mac_string())
    {
        return Err(fail(format!(
            "bridge {:?} has MAC {}, expected {}",
            bridge.name,
            bridge.mac_string(),
            i.mac
        )));
    }
    if bridge.promisc != conf.raw.promisc_mode {
        return Err(fail(format!(
            "bridge {:?} promiscuous mode is {}, expected {}",
            bridge.name, bridge.promisc, conf.raw.promisc_mode
        )));
    }

    let sandbox = req
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let cont_if = prev
        .interfaces
        .iter()
        .position(|i| i.name == req.ifname && i.sandbox == sandbox)
        .ok_or_else(|| {
            fail(format!(
                "prevResult has no interface {:?} in {sandbox:?}",
                req.ifname
            ))
        })?;
    let expected_mac = &prev.interfaces[cont_if].mac;
    let cont_veth = cont.link_by_name(&req.ifname).await?.ok_or_else(|| {
        fail(format!(
            "interface {:?} is missing in the container",
            req.ifname
        ))
    })?;
    if cont_veth.kind != "veth" {
        return Err(fail(format!(
            "container interface {:?} is not a veth",
            req.ifname
        )));
    }
    if !expected_mac.is_empty() && !expected_mac.eq_ignore_ascii_case(&cont_veth.mac_string()) {
        return Err(fail(format!(
            "container interface has MAC {}, expected {expected_mac}",
            cont_veth.mac_string()
        )));
    }
    let peer = cont_veth
        .peer
        .ok_or_else(|| fail("container veth has no peer".into()))?;
    let host_veth = host
        .link_by_index(peer)
        .await?
        .filter(|l| l.kind == "veth" && l.peer == Some(cont_veth.index))
        .ok_or_else(|| fail(format!("the host end of {:?} is missing", req.ifname)))?;
    if host_veth.controller != Some(bridge.index) {
        return Err(fail(format!(
            "{:?} is not a port of bridge {:?}",
            host_veth.name, bridge.name
        )));
    }

    let addresses = cont.addresses(&cont_veth).await?;
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(cont_if)) {
        if !addresses.contains(&ip.address) {
            return Err(fail(format!(
                "address {} is missing on {:?}",
                ip.address, req.ifname
            )));
        }
    }
    for v4 in [true, false] {
        let wanted: Vec<&Route> = prev
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv4() == v4)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let present = cont.routes(v4).await?;
        for route in wanted {
            if !present
                .iter()
                .any(|m| libcni::kernel::netlink::route_matches(m, route))
            {
                return Err(fail(format!(
                    "route to {} is missing in the container",
                    route.dst
                )));
            }
        }
    }
    Ok(cont_if)
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

fn main() -> ExitCode {
    skel::run(
        &Bridge,
        &format!("CNI bridge plugin {} (Rust)", libcni::VERSION),
    )
}
