//! The guard that comes with `route_localnet` (CVE-2020-8558). portmap sets `route_localnet`
//! on the interface towards the pods so that `127.0.0.1:hostPort` reaches them; that also lets
//! a pod reach the host's services bound to 127.0.0.1 by routing 127.0.0.1 via its gateway.
//! One rule per node, as kube-proxy's, drops what arrives for 127.0.0.0/8 from elsewhere unless
//! conntrack knows it (established, related, or DNATed: the replies of `127.0.0.1:hostPort`).
//!
//! ```text
//! table inet rcni_localnet {
//!   chain input { type filter hook input priority filter; policy accept;
//!     ip daddr 127.0.0.0/8 ip saddr != 127.0.0.0/8 ct state & (established | related) == 0 ct status & dnat == 0 drop
//!   }
//! }
//! ```
//! iptables: `-A INPUT -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate
//! RELATED,ESTABLISHED,DNAT -j DROP` in the filter table.

use ipnetwork::IpNetwork;

use super::iptables::{self, Family};
use crate::kernel::nf_tables::{self, BaseChain, Batch, Chain, ChainType, Client, Hook, Rule};
use crate::protocol::error::Result;

pub const TABLE: &str = "rcni_localnet";
const CHAIN: &str = "input";
const NFT: nf_tables::Family = nf_tables::Family::Inet;
const COMMENT: &str = "rcni: route_localnet guard (CVE-2020-8558)";

fn loopback() -> IpNetwork {
    IpNetwork::new(std::net::Ipv4Addr::LOCALHOST.into(), 8).unwrap_or(IpNetwork::from(
        std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
    ))
}

fn iptables_rule() -> Vec<String> {
    [
        "-d",
        "127.0.0.0/8",
        "!",
        "-s",
        "127.0.0.0/8",
        "-m",
        "conntrack",
        "!",
        "--ctstate",
        "RELATED,ESTABLISHED,DNAT",
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        "DROP",
    ]
    .map(String::from)
    .to_vec()
}

/// Makes the node's guard (nftables), once: a lookup when it is there (no transaction); the
/// table is created exclusively, so of two racing first mappings one makes it and the other
/// finds it.
pub fn ensure_nft(nft: &mut Client) -> Result<()> {
    if nft.table_exists(NFT, TABLE)? {
        return Ok(());
    }
    let mut batch = Batch::new();
    batch.create_table(NFT, TABLE)?;
    let input = BaseChain::accepting(ChainType::Filter, Hook::Input, 0);
    batch.add_chain(&Chain::base(NFT, TABLE, CHAIN, input))?;
    batch.add_rule(
        &Rule::new(NFT, TABLE, CHAIN)
            .match_daddr(loopback())
            .match_saddr_not(loopback())
            .match_ct_state_not_established_related()
            .match_ct_status_not_dnat()
            .drop()
            .comment(COMMENT),
    )?;
    match nft.commit(&batch) {
        Err(e) if e.is_exists() => Ok(()),
        done => Ok(done?),
    }
}

/// Makes the node's guard (iptables filter INPUT), once.
pub fn ensure_iptables() -> Result<()> {
    let _lock = crate::kernel::lock::node_lock("localnet")?;
    let rule = iptables_rule();
    if iptables::exists(Family::V4, "filter", "INPUT", &rule)? {
        return Ok(());
    }
    let quoted: Vec<String> = rule.iter().map(|a| iptables::quote(a)).collect();
    iptables::restore(
        Family::V4,
        "filter",
        &[format!("-A INPUT {}", quoted.join(" "))],
    )
}
