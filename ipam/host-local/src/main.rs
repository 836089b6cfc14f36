//! CNI `host-local` IPAM: one address per range set, leases kept in files on the node.
//!
//! ADD    validate the config; lock the network's store; one scan; per range set take the
//!        requested address, the attachment's existing lease, or the next free one round-robin;
//!        write the leases (undone if any write fails); result with ips, routes and dns.
//! DEL    release every lease of (containerID, ifname) — legacy ID-only leases when there are
//!        none; success when nothing is held or the store does not exist.
//! CHECK  the attachment holds a lease, and every prevResult address in our ranges is its own.
//! GC     release every lease that belongs to no valid attachment.
//! STATUS code 50 when a range set has no free address or the store is unusable.
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod allocator;
mod config;
mod dns;
mod ip;
mod leases;
mod owners;
mod store;
mod table;

use std::net::IpAddr;
use std::path::PathBuf;

use libcni::protocol::result::{CniResult, Dns, IpConfig};
use libcni::protocol::skel::{Plugin, Request};
use libcni::{Error, Result};
use serde::Deserialize;

use crate::config::{Config, DEFAULT_DATA_DIR};
use crate::leases::{LeaseView, Owner};
use crate::store::Store;

struct HostLocal;

impl Plugin for HostLocal {
    fn add(&self, req: &Request) -> Result<CniResult> {
        let cfg = Config::load(req)?;
        let dns = match &cfg.resolv_conf {
            Some(path) => dns::from_resolv_conf(path)?,
            None => Dns::default(),
        };
        let store = Store::open(&cfg.data_dir, &req.conf.name)?;
        let snap = store.scan()?;
        let allocations = allocator::allocate(
            &cfg,
            &snap.leases,
            &snap.last_reserved,
            &req.container_id,
            &req.ifname,
        )?;

        let mut written: Vec<IpAddr> = Vec::new();
        for a in allocations.iter().filter(|a| a.new) {
            let reserved = store
                .reserve(a.ip, &req.container_id, &req.ifname)
                .and_then(|ok| {
                    if ok {
                        written.push(a.ip);
                        store.set_last_reserved(a.set, a.ip)
                    } else {
                        Err(Error::internal(format!(
                            "address {} was taken by another writer",
                            a.ip
                        )))
                    }
                });
            if let Err(e) = reserved {
                for ip in &written {
                    let _ = store.release(*ip);
                }
                return Err(e.context(format!("failed to allocate for {}", cfg.sets[a.set].key)));
            }
        }

        let ips = allocations
            .iter()
            .map(|a| {
                let range = &cfg.sets[a.set].ranges[a.range];
                IpConfig {
                    interface: None,
                    address: range.with_prefix(a.ip),
                    gateway: Some(range.gateway),
                }
            })
            .collect();
        Ok(CniResult {
            interfaces: Vec::new(),
            ips,
            routes: cfg.routes,
            dns,
        })
    }

    fn del(&self, req: &Request) -> Result<()> {
        let Some(store) = existing_store(req)? else {
            return Ok(());
        };
        let snap = store.scan()?;
        let leases = snap.leases.of_container(&req.container_id);
        let owned = |legacy: bool| -> Vec<IpAddr> {
            leases
                .iter()
                .filter(|(_, o)| match o {
                    Owner::Attachment { ifname, .. } => !legacy && *ifname == req.ifname,
                    Owner::Legacy(_) => legacy,
                })
                .map(|(ip, _)| *ip)
                .collect()
        };
        let mut release = owned(false);
        if release.is_empty() {
            release = owned(true);
        }
        release.iter().try_for_each(|ip| store.release(*ip))
    }

    fn check(&self, req: &Request) -> Result<()> {
        let cfg = Config::load(req)?;
        let missing = || {
            Error::internal(format!(
                "host-local: Failed to find address added by container {}",
                req.container_id
            ))
        };
        let Some(store) = existing_store(req)? else {
            return Err(missing());
        };
        let snap = store.scan()?;
        let mine: Vec<IpAddr> = snap
            .leases
            .of_container(&req.container_id)
            .into_iter()
            .filter(|(_, o)| o.is(&req.container_id, &req.ifname))
            .map(|(ip, _)| ip)
            .collect();
        if mine.is_empty() {
            return Err(missing());
        }
        if let Some(prev) = req.prev_result()? {
            for ip in prev.ips.iter().map(|c| c.address.ip()) {
                if cfg.sets.iter().any(|s| s.contains(ip)) && !mine.contains(&ip) {
                    return Err(Error::internal(format!(
                        "host-local: address {ip} of prevResult is not leased to container {} interface {}",
                        req.container_id, req.ifname
                    )));
                }
            }
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let Some(store) = existing_store(req)? else {
            return Ok(());
        };
        let valid = req.conf.gc_attachments()?;
        let keep = |owner: &Owner| match owner {
            Owner::Attachment { id, ifname } => valid
                .iter()
                .any(|a| a.container_id == *id && a.ifname == *ifname),
            Owner::Legacy(id) => valid.iter().any(|a| a.container_id == *id),
        };
        // GC trusts no table: it is also how a store edited in place comes right.
        let snap = store.scan_directory()?;
        let mut first_err = None;
        for (ip, owner) in &snap.leases.all() {
            if !keep(owner)
                && let Err(e) = store.release(*ip)
            {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn status(&self, req: &Request) -> Result<()> {
        let cfg = Config::load(req)?;
        let unusable = |e: Error| Error::not_available(format!("lease store unusable: {}", e.msg));
        // STATUS leaves no trace: a store that does not exist yet holds no lease, and must only
        // be creatable.
        let dir = cfg.data_dir.join(&req.conf.name);
        let snap = if dir.is_dir() {
            Store::open(&cfg.data_dir, &req.conf.name)
                .and_then(|s| s.scan())
                .map_err(unusable)?
        } else {
            creatable(&dir).map_err(unusable)?;
            store::Snapshot::default()
        };
        // A full range set is not "unavailable": a runtime turns a failed STATUS into a node
        // that is not ready (and may evict its pods), while the next DEL makes room again.
        let all = snap.leases.all();
        for full in cfg.sets.iter().filter(|s| !allocator::has_free(s, &all)) {
            eprintln!(
                "host-local: warning: no free addresses left in range set {} ({}): ADD fails until one is released",
                full.key,
                full.describe()
            );
        }
        Ok(())
    }
}

/// Whether `dir` could be made: its nearest existing ancestor is a directory we may write.
fn creatable(dir: &std::path::Path) -> Result<()> {
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(std::path::Path::new("/"));
    let writable = existing.is_dir()
        && nix::unistd::access(
            existing,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_ok();
    if writable {
        Ok(())
    } else {
        Err(Error::io(format!(
            "cannot create {} ({} is not a writable directory)",
            dir.display(),
            existing.display()
        )))
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DataDirOnly {
    ipam: DataDir,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DataDir {
    #[serde(rename = "dataDir")]
    data_dir: Option<String>,
}

/// The store for DEL and GC, which must work even when the rest of the config no longer
/// validates; `None` when the network has no store at all.
fn existing_store(req: &Request) -> Result<Option<Store>> {
    let conf: DataDirOnly = req.plugin_conf()?;
    let data_dir = PathBuf::from(
        conf.ipam
            .data_dir
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
    );
    if !data_dir.join(&req.conf.name).is_dir() {
        return Ok(None);
    }
    Store::open(&data_dir, &req.conf.name).map(Some)
}

libcni::plugin_main!(
    &HostLocal,
    &format!("CNI host-local plugin {} (Rust)", libcni::VERSION)
);
