//! `fib`: a routing lookup for the packet (`fib daddr type`), from `linux/netfilter/nf_tables.h`.

use netlink_packet_netfilter::nftables::{Expressions, Register};

use super::attrs;

use crate::kernel::nf_tables::uapi::fib;

/// `enum nft_fib_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FibResult {
    Oif,
    Oifname,
    /// The route type (`RTN_*` in host byte order, 4 bytes).
    AddrType,
    Other(u32),
}

impl FibResult {
    fn code(self) -> u32 {
        match self {
            FibResult::Oif => 1,
            FibResult::Oifname => 2,
            FibResult::AddrType => 3,
            FibResult::Other(n) => n,
        }
    }

    fn from_code(code: u32) -> FibResult {
        match code {
            1 => FibResult::Oif,
            2 => FibResult::Oifname,
            3 => FibResult::AddrType,
            n => FibResult::Other(n),
        }
    }
}

/// `enum nft_fib_flags`: which packet fields key the lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FibFlags(pub u32);

impl FibFlags {
    pub const SADDR: FibFlags = FibFlags(1 << 0);
    pub const DADDR: FibFlags = FibFlags(1 << 1);
    pub const MARK: FibFlags = FibFlags(1 << 2);
    pub const IIF: FibFlags = FibFlags(1 << 3);
    pub const OIF: FibFlags = FibFlags(1 << 4);
}

/// `RTN_LOCAL`: the address is one of this host's.
pub const RTN_LOCAL: u32 = libc::RTN_LOCAL as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fib {
    pub result: FibResult,
    pub flags: FibFlags,
    pub dreg: Register,
}

impl From<Fib> for Expressions {
    fn from(f: Fib) -> Expressions {
        attrs::other(
            "fib",
            vec![
                attrs::reg(fib::DREG, f.dreg),
                attrs::u32_be(fib::RESULT, f.result.code()),
                attrs::u32_be(fib::FLAGS, f.flags.0),
            ],
        )
    }
}

impl Fib {
    pub fn parse(expr: &Expressions) -> Option<Fib> {
        let a = attrs::of(expr, "fib")?;
        Some(Fib {
            result: FibResult::from_code(attrs::find_u32(a, fib::RESULT)?),
            flags: FibFlags(attrs::find_u32(a, fib::FLAGS)?),
            dreg: attrs::find_reg(a, fib::DREG)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let f = Fib {
            result: FibResult::AddrType,
            flags: FibFlags::DADDR,
            dreg: Register::Reg1,
        };
        assert_eq!(Fib::parse(&f.into()), Some(f));
    }
}
