//! MAC spoof check for bridge ports (`macspoofchk`): frames entering the bridge from a
//! container's host veth must carry the container's MAC.
//!
//! One rule per attachment in a base chain of our own (not a chain per attachment, which
//! costs a kernel grace period on every ADD and DEL):
//!
//! ```text
//! table bridge rcni_spoofcheck {
//!   chain prerouting { type filter hook prerouting priority -300; policy accept;
//!     iifname "veth1a2b3c4d" ether saddr != 0a:58:0a:01:00:05 drop comment "<owner>"
//!   }
//! }
//! ```
//!
//! [`remove_reference`] deletes the Go bridge's per-attachment chains in `bridge nat`.

use super::nftables;
use super::owner::{Owner, stale};
use crate::kernel::nf_tables::{self, BaseChain, Batch, Chain, ChainType, Client, Hook, Rule};
use crate::protocol::error::{Error, Result};

pub const TABLE: &str = "rcni_spoofcheck";
pub const CHAIN: &str = "prerouting";
const BRIDGE: nf_tables::Family = nf_tables::Family::Bridge;

fn base_objects(batch: &mut Batch) -> nf_tables::Result<()> {
    batch.create_table(BRIDGE, TABLE)?;
    let prerouting = BaseChain::accepting(ChainType::Filter, Hook::Prerouting, -300);
    batch.add_chain(&Chain::base(BRIDGE, TABLE, CHAIN, prerouting))?;
    Ok(())
}

/// Adds the check for the port `host_veth`, whose container end has `mac`.
pub fn add(nft: &mut Client, owner: &Owner<'_>, host_veth: &str, mac: &str) -> Result<()> {
    let mac = crate::kernel::netlink::parse_mac(mac)
        .ok_or_else(|| Error::internal(format!("{mac:?} is not a MAC address")))?;
    let rule = Rule::new(BRIDGE, TABLE, CHAIN)
        .match_iifname(host_veth)
        .match_ether_saddr_not(mac)
        .drop()
        .comment(&owner.comment());
    nftables::add_rules(nft, &[rule], base_objects)
}

/// Removes the check of one attachment.
pub fn remove(nft: &mut Client, owner: &Owner<'_>) -> Result<()> {
    nftables::remove_where(nft, BRIDGE, TABLE, &[CHAIN], |c| owner.owns(c))
}

/// How many rules the attachment has in our table (0 or 1).
pub fn own_rule_count(nft: &mut Client, owner: &Owner<'_>) -> Result<usize> {
    Ok(nftables::rules_where(nft, BRIDGE, TABLE, &[CHAIN], |c| owner.owns(c))?.len())
}

/// GC: removes the checks of `network`'s attachments that are not in `valid`.
pub fn retain(network: &str, valid: &[crate::protocol::conf::Attachment]) -> Result<()> {
    nftables::remove_where(&mut nftables::open()?, BRIDGE, TABLE, &[CHAIN], |c| {
        stale(network, valid, c)
    })
}

/// Deletes what the Go bridge made for one attachment in `bridge nat`: the PREROUTING jump
/// (comment `macspoofchk-<cid>-<ifname>`) and the chains `cni-br-iface-<cid>-<ifname>[-mac]`.
pub fn remove_reference(nft: &mut Client, owner: &Owner<'_>) -> Result<()> {
    let comment = format!("macspoofchk-{}-{}", owner.container_id, owner.ifname);
    let jumps = nftables::rules_where(nft, BRIDGE, "nat", &["PREROUTING"], |c| c == comment)?;
    if jumps.is_empty() {
        return Ok(());
    }
    let chain = format!("cni-br-iface-{}-{}", owner.container_id, owner.ifname);
    let chains = [chain.clone(), format!("{chain}-mac")];
    let mut batch = Batch::new();
    for r in &jumps {
        batch.delete_rule(r)?;
    }
    // The iface chain jumps to the -mac chain: empty both before deleting them.
    for name in &chains {
        batch.flush_chain(BRIDGE, "nat", name)?;
    }
    for name in &chains {
        batch.delete_chain(BRIDGE, "nat", name)?;
    }
    Ok(nft.commit(&batch)?)
}
