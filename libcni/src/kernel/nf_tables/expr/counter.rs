//! `counter`: packets and bytes that reached it, from `linux/netfilter/nf_tables.h`.

use netlink_packet_netfilter::nftables::Expressions;

use super::attrs;

use crate::kernel::nf_tables::uapi::counter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for Expressions {
    fn from(c: Counter) -> Expressions {
        attrs::other(
            "counter",
            vec![
                attrs::u64_be(counter::BYTES, c.bytes),
                attrs::u64_be(counter::PACKETS, c.packets),
            ],
        )
    }
}

impl Counter {
    pub fn parse(expr: &Expressions) -> Option<Counter> {
        let a = attrs::of(expr, "counter")?;
        Some(Counter {
            packets: attrs::find_u64(a, counter::PACKETS).unwrap_or(0),
            bytes: attrs::find_u64(a, counter::BYTES).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let c = Counter {
            packets: 3,
            bytes: 180,
        };
        assert_eq!(Counter::parse(&c.into()), Some(c));
    }
}
