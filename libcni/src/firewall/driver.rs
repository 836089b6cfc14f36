//! The packet filter a plugin programs for an attachment, behind one interface: nftables (in
//! process, over netlink) or iptables (the compatibility backend, one `iptables-restore` per
//! family). What the rules say lives in the policy modules (`masquerade`, `portmap`); how they
//! are written, in `nftables` and `iptables`.
//!
//! Teardown (DEL, GC) and CHECK are not per driver: they find what either backend made (a
//! config may have switched between ADD and DEL) and what the reference made, whichever
//! backend the config names now; see `masquerade::remove`, `portmap::remove`,
//! `portmap_iptables::remove` and `check`.

use ipnetwork::IpNetwork;

use super::{Backend, Owner, iptables, localnet, masquerade, nftables, portmap, portmap_iptables};
use crate::kernel::nf_tables::Client;
use crate::protocol::error::{Error, Result};

pub trait Driver {
    /// Masquerades traffic from the attachment's addresses leaving their subnets.
    fn add_masquerade(&mut self, owner: &Owner<'_>, ips: &[IpNetwork]) -> Result<()>;

    /// Forwards the attachment's host ports to it.
    fn add_port_mappings(&mut self, a: &portmap::Attachment<'_>) -> Result<()>;

    /// The node's guard for `route_localnet` (made once; see `localnet`).
    fn ensure_localnet_guard(&mut self) -> Result<()>;

    /// STATUS: whether this backend can be programmed here.
    fn usable(&mut self) -> Result<()>;
}

/// The driver for `backend`, in the calling thread's network namespace.
pub fn open(backend: Backend) -> Result<Box<dyn Driver>> {
    Ok(match backend {
        Backend::Nftables => Box::new(Nftables(nftables::open()?)),
        Backend::Iptables => Box::new(Iptables),
    })
}

pub struct Nftables(Client);

impl Driver for Nftables {
    fn add_masquerade(&mut self, owner: &Owner<'_>, ips: &[IpNetwork]) -> Result<()> {
        masquerade::add_nft(&mut self.0, owner, ips)
    }

    fn add_port_mappings(&mut self, a: &portmap::Attachment<'_>) -> Result<()> {
        portmap::add(&mut self.0, a)
    }

    fn ensure_localnet_guard(&mut self) -> Result<()> {
        localnet::ensure_nft(&mut self.0)
    }

    fn usable(&mut self) -> Result<()> {
        nftables::usable(&mut self.0)
    }
}

pub struct Iptables;

impl Driver for Iptables {
    fn add_masquerade(&mut self, owner: &Owner<'_>, ips: &[IpNetwork]) -> Result<()> {
        masquerade::add_iptables(owner, ips)
    }

    fn add_port_mappings(&mut self, a: &portmap::Attachment<'_>) -> Result<()> {
        portmap_iptables::add(a)
    }

    fn ensure_localnet_guard(&mut self) -> Result<()> {
        localnet::ensure_iptables()
    }

    fn usable(&mut self) -> Result<()> {
        iptables::list_chain(iptables::Family::V4, "nat", "POSTROUTING")?
            .map(drop)
            .ok_or_else(|| Error::internal("iptables -t nat does not work"))
    }
}
