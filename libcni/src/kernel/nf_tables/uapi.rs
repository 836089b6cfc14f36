//! The attribute numbers of `linux/netfilter/nf_tables.h` that neither `libc` nor
//! `netlink-packet-netfilter` exports. The header declares each attribute set as an enum whose
//! first member (`NFTA_*_UNSPEC`) is 0, so each module here lists the names after it in header
//! order, numbered from 1; a name is listed even where we never send it, to keep the count.

macro_rules! numbered {
    ($n:expr;) => {};
    ($n:expr; $name:ident $(, $rest:ident)*) => {
        pub const $name: u16 = $n;
        numbered!($n + 1; $($rest),*);
    };
}

macro_rules! attribute_sets {
    ($($(#[$doc:meta])* $set:ident: $($name:ident),+;)+) => {
        // Names kept only for the count are never used.
        $($(#[$doc])* #[allow(dead_code)] pub mod $set { numbered!(1; $($name),+); })+
    };
}

attribute_sets! {
    /// `enum nft_rule_attributes`.
    rule: TABLE, CHAIN, HANDLE, EXPRESSIONS, COMPAT, POSITION, USERDATA;
    /// `enum nft_expr_attributes`: one element of NFTA_RULE_EXPRESSIONS.
    expr: NAME, DATA;
    /// `enum nft_cmp_attributes`.
    cmp: SREG, OP, DATA;
    /// `enum nft_bitwise_attributes`.
    bitwise: SREG, DREG, LEN, MASK, XOR, OP, DATA;
    /// `enum nft_immediate_attributes`.
    immediate: DREG, DATA;
    /// `enum nft_ct_attributes`.
    ct: DREG, KEY;
    /// `enum nft_fib_attributes`.
    fib: DREG, RESULT, FLAGS;
    /// `enum nft_nat_attributes`.
    nat: TYPE, FAMILY, REG_ADDR_MIN, REG_ADDR_MAX, REG_PROTO_MIN, REG_PROTO_MAX, FLAGS;
    /// `enum nft_masq_attributes`.
    masq: FLAGS, REG_PROTO_MIN;
    /// `enum nft_counter_attributes`.
    counter: BYTES, PACKETS;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_header() {
        assert_eq!((rule::TABLE, rule::EXPRESSIONS, rule::USERDATA), (1, 4, 7));
        assert_eq!((bitwise::MASK, bitwise::XOR, bitwise::DATA), (4, 5, 7));
        assert_eq!((cmp::DATA, immediate::DATA, expr::DATA), (3, 2, 2));
        assert_eq!(
            (nat::REG_ADDR_MIN, nat::FLAGS, masq::REG_PROTO_MIN),
            (3, 7, 2)
        );
        assert_eq!((fib::FLAGS, ct::KEY, counter::PACKETS), (3, 2, 2));
    }
}
