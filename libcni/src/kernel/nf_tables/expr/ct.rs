//! `ct`: conntrack state of the packet (`ct status`), from `linux/netfilter/nf_tables.h`.

use netlink_packet_netfilter::nftables::{Expressions, Register};

use super::attrs;

use crate::kernel::nf_tables::uapi::ct;

/// `enum nft_ct_keys` (the ones we read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKey {
    State,
    Direction,
    /// `IPS_*` bits, 4 bytes in host byte order.
    Status,
    Mark,
    Other(u32),
}

impl CtKey {
    fn code(self) -> u32 {
        match self {
            CtKey::State => 0,
            CtKey::Direction => 1,
            CtKey::Status => 2,
            CtKey::Mark => 3,
            CtKey::Other(n) => n,
        }
    }

    fn from_code(code: u32) -> CtKey {
        match code {
            0 => CtKey::State,
            1 => CtKey::Direction,
            2 => CtKey::Status,
            3 => CtKey::Mark,
            n => CtKey::Other(n),
        }
    }
}

/// `IPS_DST_NAT` from `linux/netfilter/nf_conntrack_common.h`: the connection was DNATed.
pub const IPS_DST_NAT: u32 = 1 << 5;

/// `ct state` bits (`NF_CT_STATE_BIT(IP_CT_ESTABLISHED)`, `…(IP_CT_RELATED)`).
pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
pub const CT_STATE_RELATED: u32 = 1 << 2;

/// `ct load <key> => reg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ct {
    pub key: CtKey,
    pub dreg: Register,
}

impl From<Ct> for Expressions {
    fn from(c: Ct) -> Expressions {
        attrs::other(
            "ct",
            vec![
                attrs::reg(ct::DREG, c.dreg),
                attrs::u32_be(ct::KEY, c.key.code()),
            ],
        )
    }
}

impl Ct {
    pub fn parse(expr: &Expressions) -> Option<Ct> {
        let a = attrs::of(expr, "ct")?;
        Some(Ct {
            key: CtKey::from_code(attrs::find_u32(a, ct::KEY)?),
            dreg: attrs::find_reg(a, ct::DREG)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let c = Ct {
            key: CtKey::Status,
            dreg: Register::Reg1,
        };
        assert_eq!(Ct::parse(&c.into()), Some(c));
    }
}
