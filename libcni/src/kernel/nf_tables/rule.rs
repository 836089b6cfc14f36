//! A rule to append (table, chain, expressions, comment) and a rule as the kernel lists it.

use netlink_packet_core::{
    DecodeError, NLA_TYPE_MASK, NlaBuffer, NlasIterator, Parseable, parse_string, parse_u64_be,
};
use netlink_packet_netfilter::nftables::{
    ExpressionAttribute, Expressions, ListAttribute, RuleAttribute,
};

use super::error::{Error, Result};
use super::expr::{self, Verdict};
use super::objects::{Family, checked_name};
use super::uapi::{self, bitwise, cmp, immediate, rule};
use super::userdata;

/// Which network protocol a rule's matches so far require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum L3 {
    V4,
    V6,
}

/// A rule being composed. Matches are added with the `match_*` methods (see `matches.rs`),
/// which insert the protocol dependencies `nft` would; a mistake (say an interface name that
/// is too long) is reported when the rule is put in a batch.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(super) family: Family,
    pub(super) table: String,
    pub(super) chain: String,
    pub(super) exprs: Vec<Expressions>,
    pub(super) comment: Option<String>,
    pub(super) l3: Option<L3>,
    pub(super) l4: Option<u8>,
    pub(super) problem: Option<String>,
}

impl Rule {
    pub fn new(family: Family, table: &str, chain: &str) -> Rule {
        Rule {
            family,
            table: table.to_string(),
            chain: chain.to_string(),
            exprs: Vec::new(),
            comment: None,
            l3: None,
            l4: None,
            problem: None,
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The expressions so far, in order.
    pub fn expressions(&self) -> &[Expressions] {
        &self.exprs
    }

    /// Appends a raw expression (registers are the caller's business).
    pub fn push(mut self, e: impl Into<Expressions>) -> Rule {
        self.exprs.push(e.into());
        self
    }

    /// The ownership marker `nft list` shows as `comment "..."` (at most 128 bytes).
    pub fn comment(mut self, comment: &str) -> Rule {
        self.comment = Some(comment.to_string());
        self
    }

    pub fn verdict(self, v: Verdict) -> Rule {
        self.push(expr::verdict(&v))
    }

    pub fn accept(self) -> Rule {
        self.verdict(Verdict::Accept)
    }

    pub fn drop(self) -> Rule {
        self.verdict(Verdict::Drop)
    }

    pub fn jump(self, chain: &str) -> Rule {
        self.verdict(Verdict::Jump(chain.to_string()))
    }

    pub fn goto(self, chain: &str) -> Rule {
        self.verdict(Verdict::Goto(chain.to_string()))
    }

    /// `return`.
    pub fn ret(self) -> Rule {
        self.verdict(Verdict::Return)
    }

    pub(super) fn fail(mut self, problem: String) -> Rule {
        self.problem.get_or_insert(problem);
        self
    }

    /// The NEWRULE attributes (append at the end of the chain).
    pub(super) fn attributes(&self) -> Result<Vec<RuleAttribute>> {
        if let Some(p) = &self.problem {
            return Err(Error::Invalid(format!("{}: {p}", self.describe())));
        }
        let mut attrs = vec![
            RuleAttribute::Table(checked_name(&self.table)?),
            RuleAttribute::Chain(checked_name(&self.chain)?),
            RuleAttribute::Expressions(self.exprs.iter().cloned().map(Into::into).collect()),
        ];
        if let Some(c) = &self.comment {
            attrs.push(RuleAttribute::UserData(userdata::encode_comment(c)?));
        }
        Ok(attrs)
    }

    pub(super) fn describe(&self) -> String {
        format!("add rule {} {} {}", self.family, self.table, self.chain)
    }
}

/// A rule as the kernel lists it. Table, chain, handle and comment are read directly; the
/// expressions are kept raw and decoded on request, because the crate's parser formats the
/// whole buffer for every attribute it reads (about 140 µs a rule in a debug build), which
/// would make listing a chain cost in proportion to its expressions rather than its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRule {
    pub family: Family,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    /// The userdata comment, when the rule has a well-formed one.
    pub comment: Option<String>,
    /// The NFTA_RULE_EXPRESSIONS attribute, header included.
    raw_expressions: Option<Vec<u8>>,
}

impl ListedRule {
    /// The rule `handle` of a chain as far as deleting it goes (no comment or expressions).
    pub fn at(family: Family, table: &str, chain: &str, handle: u64) -> ListedRule {
        ListedRule {
            family,
            table: table.to_string(),
            chain: chain.to_string(),
            handle,
            comment: None,
            raw_expressions: None,
        }
    }

    /// Reads the attributes of a NEWRULE message (after its nfgenmsg header) of a dump of
    /// `family`.
    pub(super) fn decode(family: Family, attributes: &[u8]) -> Result<ListedRule> {
        let bad = |e: DecodeError| Error::Decode(format!("listed rule: {e}"));
        let mut table = None;
        let mut chain = None;
        let mut handle = None;
        let mut comment = None;
        let mut raw_expressions = None;
        for nla in NlasIterator::new(attributes) {
            let nla = nla.map_err(bad)?;
            let len = usize::from(nla.length());
            match nla.kind() & NLA_TYPE_MASK {
                rule::TABLE => table = Some(parse_string(nla.value()).map_err(bad)?),
                rule::CHAIN => chain = Some(parse_string(nla.value()).map_err(bad)?),
                rule::HANDLE => handle = Some(parse_u64_be(nla.value()).map_err(bad)?),
                rule::USERDATA => comment = userdata::decode_comment(nla.value()),
                rule::EXPRESSIONS => {
                    raw_expressions = nla.into_inner().get(..len).map(<[u8]>::to_vec)
                }
                _ => {}
            }
        }
        let missing = |what: &str| Error::Decode(format!("listed rule without {what}"));
        Ok(ListedRule {
            family,
            table: table.ok_or_else(|| missing("table"))?,
            chain: chain.ok_or_else(|| missing("chain"))?,
            handle: handle.ok_or_else(|| missing("handle"))?,
            comment,
            raw_expressions,
        })
    }

    /// The rule's expressions, decoded by `netlink-packet-netfilter`.
    pub fn expressions(&self) -> Result<Vec<Expressions>> {
        let Some(raw) = &self.raw_expressions else {
            return Ok(Vec::new());
        };
        if !crate_parses_safely(raw) {
            return Err(Error::Decode(format!(
                "rule {} expressions: a malformed data attribute",
                self.handle
            )));
        }
        let nla = NlaBuffer::new_checked(raw.as_slice())
            .and_then(|b| RuleAttribute::parse(&b))
            .map_err(|e| Error::Decode(format!("rule {} expressions: {e}", self.handle)))?;
        match nla {
            RuleAttribute::Expressions(list) => {
                Ok(list.into_iter().filter_map(expression_of).collect())
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// Whether `netlink-packet-netfilter` (0.4) can parse this NFTA_RULE_EXPRESSIONS attribute
/// without panicking. It reads the NFTA_DATA_* attribute inside the data of `cmp`, `bitwise`
/// and `immediate` without checking its length against the bytes there, and slices past them
/// (or underflows) when it is wrong; everything else it reads through checked iterators.
fn crate_parses_safely(raw: &[u8]) -> bool {
    let Ok(list) = NlaBuffer::new_checked(raw) else {
        return true; // The crate reports it.
    };
    attributes(value_of(list)).all(|element| {
        let attrs = || attributes(value_of(element));
        let names: Vec<&[u8]> = attrs()
            .filter(|a| a.kind() & NLA_TYPE_MASK == uapi::expr::NAME)
            .map(|a| value_of(a).split(|b| *b == 0).next().unwrap_or_default())
            .collect();
        let holds_data = |kind: u16| {
            names.iter().any(|name| match *name {
                b"cmp" => kind == cmp::DATA,
                b"bitwise" => [bitwise::MASK, bitwise::XOR, bitwise::DATA].contains(&kind),
                b"immediate" => kind == immediate::DATA,
                _ => false,
            })
        };
        attrs()
            .filter(|a| a.kind() & NLA_TYPE_MASK == uapi::expr::DATA)
            .flat_map(|data| attributes(value_of(data)))
            .filter(|a| holds_data(a.kind() & NLA_TYPE_MASK))
            .all(|a| NlaBuffer::new_checked(value_of(a)).is_ok())
    })
}

/// The well-formed attributes at the start of `bytes` (the crate reports the others).
fn attributes(bytes: &[u8]) -> impl Iterator<Item = NlaBuffer<&[u8]>> {
    NlasIterator::new(bytes).map_while(|a| a.ok())
}

/// An attribute's value, borrowed from the message (not from the buffer view).
fn value_of(nla: NlaBuffer<&[u8]>) -> &[u8] {
    let len = usize::from(nla.length());
    nla.into_inner().get(4..len).unwrap_or_default()
}

fn expression_of(elem: ListAttribute<ExpressionAttribute>) -> Option<Expressions> {
    let ListAttribute::Element(attrs) = elem else {
        return None;
    };
    attrs.into_iter().find_map(|a| match a {
        ExpressionAttribute::Data(e) => Some(e),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;
    use netlink_packet_netfilter::nftables::Register;

    use super::*;

    #[test]
    fn a_rule_with_a_problem_is_refused_when_encoded() {
        let rule = Rule::new(Family::Inet, "t", "c")
            .fail("bad".into())
            .fail("worse".into());
        let err = rule.attributes().unwrap_err().to_string();
        assert!(err.contains("add rule inet t c: bad"), "{err}");
    }

    #[test]
    fn comment_becomes_userdata() {
        let attrs = Rule::new(Family::Ip, "t", "c")
            .comment("x")
            .accept()
            .attributes()
            .unwrap();
        assert!(attrs.contains(&RuleAttribute::UserData(b"\x00\x02x\x00".to_vec())));
    }

    #[test]
    fn listed_rule_needs_table_chain_and_handle() {
        let attrs = [
            RuleAttribute::Table("t".into()),
            RuleAttribute::Chain("c".into()),
            RuleAttribute::Handle(7),
            RuleAttribute::UserData(b"\x00\x02x\x00".to_vec()),
            RuleAttribute::Expressions(vec![expr::verdict(&Verdict::Accept).into()]),
        ];
        let listed = ListedRule::decode(Family::Ip, &emit(&attrs)).unwrap();
        assert_eq!((listed.family, listed.handle), (Family::Ip, 7));
        assert_eq!(listed.comment.as_deref(), Some("x"));
        assert_eq!(
            listed.expressions().unwrap(),
            vec![expr::verdict(&Verdict::Accept)]
        );
        assert!(ListedRule::decode(Family::Ip, &emit(&attrs[..1])).is_err());
        assert!(ListedRule::decode(Family::Ip, &[1, 2, 3]).is_err());
    }

    #[test]
    fn a_data_attribute_longer_than_its_bytes_is_an_error_not_a_panic() {
        // Found by fuzz_nf_tables_rule_dump: `cmp` data whose NFTA_DATA_VALUE claims 1670 bytes.
        let attrs = [
            RuleAttribute::Table("t".into()),
            RuleAttribute::Chain("c".into()),
            RuleAttribute::Handle(7),
            RuleAttribute::Expressions(vec![
                expr::cmp(expr::CmpOp::Eq, Register::Reg1, vec![6]).into(),
            ]),
        ];
        let mut bytes = emit(&attrs);
        // The NFTA_DATA_VALUE header is the 8 bytes before the compared value.
        let value = bytes.len() - 8;
        assert_eq!(&bytes[value..value + 5], &[5, 0, 1, 0, 6]);
        bytes[value..value + 2].copy_from_slice(&1670u16.to_ne_bytes());
        let listed = ListedRule::decode(Family::Ip, &bytes).unwrap();
        let err = listed.expressions().unwrap_err().to_string();
        assert!(err.contains("malformed data attribute"), "{err}");
        // Too short to hold an attribute header at all.
        bytes[value..value + 2].copy_from_slice(&2u16.to_ne_bytes());
        let listed = ListedRule::decode(Family::Ip, &bytes).unwrap();
        assert!(listed.expressions().is_err());
    }

    fn emit(attrs: &[RuleAttribute]) -> Vec<u8> {
        let mut buf = vec![0; attrs.buffer_len()];
        attrs.emit(&mut buf);
        buf
    }
}
