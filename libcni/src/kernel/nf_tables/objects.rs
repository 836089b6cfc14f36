//! Tables and chains: what they are called and how they hook in, as nf_tables attributes.

use std::fmt;

use netlink_packet_netfilter::NetfilterProtoFamily;
use netlink_packet_netfilter::nftables::{
    ChainAttribute, Hook as HookAttribute, HookNumber, InetHookNumber, TableAttribute,
};

use super::error::{Error, Result};

/// The families our tables live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet,
    Ip,
    Ip6,
    Bridge,
}

impl Family {
    pub fn proto(self) -> NetfilterProtoFamily {
        match self {
            Family::Inet => NetfilterProtoFamily::Inet,
            Family::Ip => NetfilterProtoFamily::IPv4,
            Family::Ip6 => NetfilterProtoFamily::IPv6,
            Family::Bridge => NetfilterProtoFamily::Bridge,
        }
    }

    /// The `NFPROTO_*` number.
    pub fn nfproto(self) -> u8 {
        self.proto().into()
    }

    /// The name `nft` uses.
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Bridge => "bridge",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
    Route,
}

impl ChainType {
    fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
}

/// Hook points; the bridge family numbers its hooks the same way as inet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    fn number(self) -> InetHookNumber {
        match self {
            Hook::Prerouting => InetHookNumber::PreRouting,
            Hook::Input => InetHookNumber::LocalIn,
            Hook::Forward => InetHookNumber::Forward,
            Hook::Output => InetHookNumber::LocalOut,
            Hook::Postrouting => InetHookNumber::PostRouting,
        }
    }
}

/// Priorities `nft` names (`dstnat`, `srcnat`) in the ip/ip6/inet families.
pub mod priority {
    pub const DSTNAT: i32 = -100;
    pub const SRCNAT: i32 = 100;
    pub const FILTER: i32 = 0;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

impl Policy {
    pub(super) fn verdict_code(self) -> u32 {
        match self {
            Policy::Drop => NF_DROP,
            Policy::Accept => NF_ACCEPT,
        }
    }
}

/// Verdict codes from `linux/netfilter.h`.
pub(super) const NF_DROP: u32 = libc::NF_DROP as u32;
pub(super) const NF_ACCEPT: u32 = libc::NF_ACCEPT as u32;

/// What makes a chain a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
    pub policy: Policy,
}

impl BaseChain {
    /// A base chain whose packets go on when no rule decides: every chain we hook.
    pub fn accepting(kind: ChainType, hook: Hook, priority: i32) -> BaseChain {
        BaseChain {
            kind,
            hook,
            priority,
            policy: Policy::Accept,
        }
    }
}

/// A chain: regular (`base: None`, only reached by jumps) or hooked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub family: Family,
    pub table: String,
    pub name: String,
    pub base: Option<BaseChain>,
}

impl Chain {
    pub fn regular(family: Family, table: &str, name: &str) -> Chain {
        Chain {
            family,
            table: table.to_string(),
            name: name.to_string(),
            base: None,
        }
    }

    pub fn base(family: Family, table: &str, name: &str, base: BaseChain) -> Chain {
        Chain {
            base: Some(base),
            ..Chain::regular(family, table, name)
        }
    }

    /// Attributes naming the chain (for get, delete, flush).
    pub(super) fn key_attributes(&self) -> Result<Vec<ChainAttribute>> {
        chain_key(&self.table, &self.name)
    }

    /// Attributes declaring the chain (for add/create).
    pub(super) fn attributes(&self) -> Result<Vec<ChainAttribute>> {
        let mut attrs = self.key_attributes()?;
        if let Some(base) = self.base {
            attrs.push(ChainAttribute::Hook(vec![
                HookAttribute::Number(HookNumber::Inet(base.hook.number())),
                // The kernel reads the priority as a signed 32-bit value.
                HookAttribute::Priority(base.priority as u32),
            ]));
            attrs.push(ChainAttribute::Policy(base.policy.verdict_code()));
            attrs.push(ChainAttribute::Type(base.kind.name().to_string()));
        }
        Ok(attrs)
    }
}

pub(super) fn chain_key(table: &str, chain: &str) -> Result<Vec<ChainAttribute>> {
    Ok(vec![
        ChainAttribute::Table(checked_name(table)?),
        ChainAttribute::Name(checked_name(chain)?),
    ])
}

pub(super) fn table_key(name: &str) -> Result<Vec<TableAttribute>> {
    Ok(vec![TableAttribute::Name(checked_name(name)?)])
}

/// `NFT_NAME_MAXLEN` counts the terminating NUL.
const NAME_MAX: usize = 255;

/// A name as the kernel stores it: non-empty, at most 255 bytes, no NUL inside (the kernel
/// would cut it there).
pub(super) fn checked_name(name: &str) -> Result<String> {
    if name.is_empty() || name.len() > NAME_MAX || name.contains('\0') {
        return Err(Error::Invalid(format!(
            "{name:?} is not a valid nf_tables name (1..={NAME_MAX} bytes, no NUL)"
        )));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(checked_name("hostports").is_ok());
        assert!(checked_name("").is_err());
        assert!(checked_name("a\0b").is_err());
        assert!(checked_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn base_chain_carries_hook_priority_policy_and_type() {
        let chain = Chain::base(
            Family::Inet,
            "t",
            "prerouting",
            BaseChain {
                kind: ChainType::Nat,
                hook: Hook::Prerouting,
                priority: priority::DSTNAT,
                policy: Policy::Accept,
            },
        );
        let attrs = chain.attributes().unwrap();
        assert!(attrs.contains(&ChainAttribute::Hook(vec![
            HookAttribute::Number(HookNumber::Inet(InetHookNumber::PreRouting)),
            HookAttribute::Priority((-100i32) as u32),
        ])));
        assert!(attrs.contains(&ChainAttribute::Policy(NF_ACCEPT)));
        assert!(attrs.contains(&ChainAttribute::Type("nat".into())));
        assert_eq!(
            Chain::regular(Family::Inet, "t", "c")
                .attributes()
                .unwrap()
                .len(),
            2
        );
    }
}
