//! Attribute plumbing for the expressions built over `Expressions::Other`.

use netlink_packet_core::{DefaultNla, NLA_TYPE_MASK, Nla};
use netlink_packet_netfilter::nftables::{Expressions, Register};

pub fn u32_be(kind: u16, value: u32) -> DefaultNla {
    DefaultNla::new(kind, value.to_be_bytes().to_vec())
}

pub fn u64_be(kind: u16, value: u64) -> DefaultNla {
    DefaultNla::new(kind, value.to_be_bytes().to_vec())
}

pub fn reg(kind: u16, reg: Register) -> DefaultNla {
    u32_be(kind, reg.into())
}

pub fn other(name: &str, attributes: Vec<DefaultNla>) -> Expressions {
    Expressions::Other {
        expression_type: name.to_string(),
        attributes,
    }
}

/// The attributes of an `Other` expression named `name`.
pub fn of<'a>(expr: &'a Expressions, name: &str) -> Option<&'a [DefaultNla]> {
    match expr {
        Expressions::Other {
            expression_type,
            attributes,
        } if expression_type == name => Some(attributes),
        _ => None,
    }
}

fn value(attrs: &[DefaultNla], kind: u16) -> Option<Vec<u8>> {
    let nla = attrs.iter().find(|a| a.kind() & NLA_TYPE_MASK == kind)?;
    let mut buf = vec![0; nla.value_len()];
    nla.emit_value(&mut buf);
    Some(buf)
}

pub fn find_u32(attrs: &[DefaultNla], kind: u16) -> Option<u32> {
    let bytes: [u8; 4] = value(attrs, kind)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

pub fn find_u64(attrs: &[DefaultNla], kind: u16) -> Option<u64> {
    let bytes: [u8; 8] = value(attrs, kind)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

pub fn find_reg(attrs: &[DefaultNla], kind: u16) -> Option<Register> {
    find_u32(attrs, kind).map(Register::from)
}
