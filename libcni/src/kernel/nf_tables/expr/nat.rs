//! `nat` (snat/dnat to addresses and ports held in registers) and `masq`, from
//! `linux/netfilter/nf_tables.h` and `linux/netfilter/nf_nat.h`.

use netlink_packet_netfilter::nftables::{Expressions, Register};

use super::attrs;
use crate::kernel::nf_tables::objects::Family;
use crate::kernel::nf_tables::uapi::{masq, nat};

const NFT_NAT_SNAT: u32 = libc::NFT_NAT_SNAT as u32;
const NFT_NAT_DNAT: u32 = libc::NFT_NAT_DNAT as u32;

/// `NF_NAT_RANGE_PROTO_SPECIFIED`: a port (range) is given.
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    Snat,
    Dnat,
}

/// `nat <kind> <family> addr_min reg [proto_min reg]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat {
    pub kind: NatKind,
    /// `Ip` or `Ip6`: the address family of the address register.
    pub family: Family,
    pub addr: Option<Register>,
    pub port: Option<Register>,
}

impl From<Nat> for Expressions {
    fn from(n: Nat) -> Expressions {
        let kind = match n.kind {
            NatKind::Snat => NFT_NAT_SNAT,
            NatKind::Dnat => NFT_NAT_DNAT,
        };
        let family = match n.family {
            Family::Ip6 => Family::Ip6,
            _ => Family::Ip,
        };
        let mut a = vec![
            attrs::u32_be(nat::TYPE, kind),
            attrs::u32_be(nat::FAMILY, family.nfproto().into()),
        ];
        if let Some(r) = n.addr {
            a.push(attrs::reg(nat::REG_ADDR_MIN, r));
        }
        if let Some(r) = n.port {
            a.push(attrs::reg(nat::REG_PROTO_MIN, r));
            // As nft sends it; the kernel sets NF_NAT_RANGE_MAP_IPS itself from the address.
            a.push(attrs::u32_be(nat::FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED));
        }
        attrs::other("nat", a)
    }
}

impl Nat {
    pub fn parse(expr: &Expressions) -> Option<Nat> {
        let a = attrs::of(expr, "nat")?;
        let kind = match attrs::find_u32(a, nat::TYPE)? {
            NFT_NAT_SNAT => NatKind::Snat,
            NFT_NAT_DNAT => NatKind::Dnat,
            _ => return None,
        };
        let nfproto = attrs::find_u32(a, nat::FAMILY)?;
        let family = [Family::Ip, Family::Ip6]
            .into_iter()
            .find(|f| u32::from(f.nfproto()) == nfproto)?;
        // A range (max registers) is not something we build; refuse to misread one.
        if attrs::find_u32(a, nat::REG_ADDR_MAX).is_some()
            || attrs::find_u32(a, nat::REG_PROTO_MAX).is_some()
        {
            return None;
        }
        Some(Nat {
            kind,
            family,
            addr: attrs::find_reg(a, nat::REG_ADDR_MIN),
            port: attrs::find_reg(a, nat::REG_PROTO_MIN),
        })
    }
}

/// `masq`: source NAT to the address of the outgoing interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Masquerade {
    pub flags: u32,
    pub port: Option<Register>,
}

impl From<Masquerade> for Expressions {
    fn from(m: Masquerade) -> Expressions {
        let mut a = Vec::new();
        if m.flags != 0 {
            a.push(attrs::u32_be(masq::FLAGS, m.flags));
        }
        if let Some(r) = m.port {
            a.push(attrs::reg(masq::REG_PROTO_MIN, r));
        }
        attrs::other("masq", a)
    }
}

impl Masquerade {
    pub fn parse(expr: &Expressions) -> Option<Masquerade> {
        let a = attrs::of(expr, "masq")?;
        Some(Masquerade {
            flags: attrs::find_u32(a, masq::FLAGS).unwrap_or(0),
            port: attrs::find_reg(a, masq::REG_PROTO_MIN),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let n = Nat {
            kind: NatKind::Dnat,
            family: Family::Ip6,
            addr: Some(Register::Reg1),
            port: Some(Register::Reg2),
        };
        assert_eq!(Nat::parse(&n.into()), Some(n));
        let m = Masquerade::default();
        assert_eq!(Masquerade::parse(&m.into()), Some(m));
        assert_eq!(Nat::parse(&m.into()), None);
    }
}
