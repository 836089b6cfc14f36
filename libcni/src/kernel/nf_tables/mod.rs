//! nf_tables over netlink, in process: no `nft` on the hot path (DESIGN §3).
//!
//! Built on `netlink-packet-netfilter` (messages, objects, the expressions it types) with a
//! small blocking socket. A [`Client`] works in the network namespace the calling thread was
//! in when it was opened; enter the target namespace (`crate::kernel::netns::Netns::enter`) first.
//!
//! ```text
//! let mut nft = Client::open()?;
//! let rule = Rule::new(Family::Inet, "rcni_portmap", "hostports")
//!     .match_nfproto_v4()
//!     .match_dport(L4::Tcp, 8080)
//!     .dnat_to(container_ip, Some(80))
//!     .comment(&key);
//! match nft.add_rule(&rule) {
//!     Err(e) if e.is_not_found() => { /* create the table and chains, then retry */ }
//!     other => other?,
//! }
//! ```

mod batch;
mod client;
mod error;
pub mod expr;
mod matches;
mod objects;
mod rule;
mod socket;
mod uapi;
mod userdata;

pub use batch::{Acks, Batch, ext_ack_text};
pub use client::{Client, DumpStep, RuleDump};
pub use error::{Errno, Error, Result};
pub use matches::L4;
pub use objects::{BaseChain, Chain, ChainType, Family, Hook, Policy, priority};
pub use rule::{ListedRule, Rule};
pub use socket::{Message, Socket, control_messages, frames, is_control};
pub use userdata::COMMENT_MAX;
