//! Rule expressions. The ones `netlink-packet-netfilter` types (meta, payload, cmp, bitwise,
//! immediate) are built here from its types; the ones it lacks (fib, ct, nat, masquerade,
//! counter) are typed wrappers in the submodules, encoded through its `Expressions::Other`.

mod attrs;
pub mod counter;
pub mod ct;
pub mod fib;
pub mod nat;

use netlink_packet_netfilter::nftables::{
    Bitwise, Cmp, DataAttribute, Expressions, Immediate, Meta, MetaKey, Operator, Payload,
    Register, Verdict as VerdictCode, VerdictAttribute,
};

use super::objects::{NF_ACCEPT, NF_DROP};

pub use counter::Counter;
pub use ct::{Ct, CtKey};
pub use fib::{Fib, FibFlags, FibResult};
pub use nat::{Masquerade, Nat, NatKind};

/// Where a payload offset counts from (`enum nft_payload_bases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    LinkLayer,
    Network,
    Transport,
}

impl PayloadBase {
    fn code(self) -> u32 {
        match self {
            PayloadBase::LinkLayer => 0,
            PayloadBase::Network => 1,
            PayloadBase::Transport => 2,
        }
    }
}

/// Comparison of a register with data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
}

/// A rule's final decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Continue,
    Return,
    Jump(String),
    Goto(String),
}

/// `meta load <key> => reg`.
pub fn meta_load(key: MetaKey, dreg: Register) -> Expressions {
    Expressions::Meta(vec![Meta::Key(key), Meta::DestinationRegister(dreg)])
}

/// `payload load <len>b @ <base> + <offset> => reg`.
pub fn payload_load(base: PayloadBase, offset: u32, len: u32, dreg: Register) -> Expressions {
    Expressions::Payload(vec![
        Payload::DestinationRegister(dreg),
        Payload::Base(base.code()),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
}

/// `cmp <op> reg <data>`.
pub fn cmp(op: CmpOp, sreg: Register, data: Vec<u8>) -> Expressions {
    let op = match op {
        CmpOp::Eq => Operator::Equal,
        CmpOp::Neq => Operator::NotEqual,
    };
    Expressions::Cmp(vec![
        Cmp::SourceRegister(sreg),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(data)),
    ])
}

/// `bitwise reg = (reg & mask) ^ 0`, over `mask.len()` bytes.
pub fn bitwise_and(reg: Register, mask: Vec<u8>) -> Expressions {
    let xor = vec![0; mask.len()];
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(reg),
        Bitwise::DestinationRegister(reg),
        Bitwise::Length(mask.len() as u32),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(xor)),
    ])
}

/// `immediate reg <data>`.
pub fn immediate(dreg: Register, data: Vec<u8>) -> Expressions {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(dreg),
        Immediate::Data(DataAttribute::Value(data)),
    ])
}

/// `immediate reg 0 <verdict>`: the crate names the jump codes; accept and drop are the
/// netfilter verdicts `NF_ACCEPT`/`NF_DROP`, which it only carries as `Other`.
pub fn verdict(v: &Verdict) -> Expressions {
    let (code, chain) = match v {
        Verdict::Accept => (VerdictCode::Other(NF_ACCEPT), None),
        Verdict::Drop => (VerdictCode::Other(NF_DROP), None),
        Verdict::Continue => (VerdictCode::Continue, None),
        Verdict::Return => (VerdictCode::Return, None),
        Verdict::Jump(c) => (VerdictCode::Jump, Some(c)),
        Verdict::Goto(c) => (VerdictCode::Goto, Some(c)),
    };
    let mut attrs = vec![VerdictAttribute::Code(code)];
    attrs.extend(chain.map(|c| VerdictAttribute::Chain(c.clone())));
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(attrs)),
    ])
}

/// The verdict of an `immediate` expression, if it is one.
pub fn parse_verdict(expr: &Expressions) -> Option<Verdict> {
    let Expressions::Immediate(attrs) = expr else {
        return None;
    };
    let verdict = attrs.iter().find_map(|a| match a {
        Immediate::Data(DataAttribute::Verdict(v)) => Some(v),
        _ => None,
    })?;
    let code = verdict.iter().find_map(|a| match a {
        VerdictAttribute::Code(c) => Some(*c),
        _ => None,
    })?;
    let chain = || {
        verdict.iter().find_map(|a| match a {
            VerdictAttribute::Chain(c) => Some(c.clone()),
            _ => None,
        })
    };
    Some(match code {
        VerdictCode::Other(NF_ACCEPT) => Verdict::Accept,
        VerdictCode::Other(NF_DROP) => Verdict::Drop,
        VerdictCode::Continue => Verdict::Continue,
        VerdictCode::Return => Verdict::Return,
        VerdictCode::Jump => Verdict::Jump(chain()?),
        VerdictCode::Goto => Verdict::Goto(chain()?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_round_trip() {
        for v in [
            Verdict::Accept,
            Verdict::Drop,
            Verdict::Return,
            Verdict::Continue,
            Verdict::Jump("hostports".into()),
            Verdict::Goto("x".into()),
        ] {
            assert_eq!(parse_verdict(&verdict(&v)), Some(v));
        }
        assert_eq!(
            parse_verdict(&meta_load(MetaKey::Iifname, Register::Reg1)),
            None
        );
    }

    #[test]
    fn bitwise_xor_is_zero_of_mask_length() {
        let Expressions::Bitwise(attrs) = bitwise_and(Register::Reg1, vec![0xff, 0xf0]) else {
            panic!("not bitwise");
        };
        assert!(attrs.contains(&Bitwise::Length(2)));
        assert!(attrs.contains(&Bitwise::Xor(DataAttribute::Value(vec![0, 0]))));
    }
}
