//! A transaction: NFNL_MSG_BATCH_BEGIN, the messages, NFNL_MSG_BATCH_END, each message asking
//! for an ACK; and the bookkeeping that matches the kernel's replies to the messages.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_APPEND, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL,
    NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, NfTablesMessage, RuleAttribute, RuleMessage, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

use super::error::{Errno, Error, Result};
use super::objects::{Chain, Family, chain_key, checked_name, table_key};
use super::rule::{ListedRule, Rule};
use super::socket::Message;

/// The batch markers name the subsystem in `res_id`.
const NFNL_SUBSYS_NFTABLES: u16 = libc::NFNL_SUBSYS_NFTABLES as u16;
const NFNETLINK_V0: u8 = libc::NFNETLINK_V0 as u8;

struct Entry {
    op: String,
    family: Family,
    flags: u16,
    body: NfTablesMessage,
}

/// Messages applied atomically: all or none.
#[derive(Default)]
pub struct Batch {
    entries: Vec<Entry>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What message `index` does, as `nft` would write it.
    pub fn op(&self, index: usize) -> Option<&str> {
        self.entries.get(index).map(|e| e.op.as_str())
    }

    fn push(&mut self, op: String, family: Family, flags: u16, body: NfTablesMessage) {
        self.entries.push(Entry {
            op,
            family,
            flags,
            body,
        });
    }

    /// `add table`: succeeds when the table already exists.
    pub fn add_table(&mut self, family: Family, name: &str) -> Result<&mut Batch> {
        self.new_table(family, name, NLM_F_CREATE, "add")
    }

    /// `create table`: fails with `Errno::Exists` when the table already exists.
    pub fn create_table(&mut self, family: Family, name: &str) -> Result<&mut Batch> {
        self.new_table(family, name, NLM_F_CREATE | NLM_F_EXCL, "create")
    }

    fn new_table(
        &mut self,
        family: Family,
        name: &str,
        flags: u16,
        verb: &str,
    ) -> Result<&mut Batch> {
        let attributes = table_key(name)?;
        self.push(
            format!("{verb} table {family} {name}"),
            family,
            flags,
            NfTablesMessage::NewTable(TableMessage { attributes }),
        );
        Ok(self)
    }

    /// `delete table`, with everything in it.
    pub fn delete_table(&mut self, family: Family, name: &str) -> Result<&mut Batch> {
        let attributes = table_key(name)?;
        self.push(
            format!("delete table {family} {name}"),
            family,
            0,
            NfTablesMessage::DeleteTable(TableMessage { attributes }),
        );
        Ok(self)
    }

    /// `add chain`: succeeds when the chain already exists with the same hook.
    pub fn add_chain(&mut self, chain: &Chain) -> Result<&mut Batch> {
        self.new_chain(chain, NLM_F_CREATE, "add")
    }

    /// `create chain`: fails with `Errno::Exists` when the chain already exists.
    pub fn create_chain(&mut self, chain: &Chain) -> Result<&mut Batch> {
        self.new_chain(chain, NLM_F_CREATE | NLM_F_EXCL, "create")
    }

    fn new_chain(&mut self, chain: &Chain, flags: u16, verb: &str) -> Result<&mut Batch> {
        let attributes = chain.attributes()?;
        self.push(
            format!(
                "{verb} chain {} {} {}",
                chain.family, chain.table, chain.name
            ),
            chain.family,
            flags,
            NfTablesMessage::NewChain(ChainMessage { attributes }),
        );
        Ok(self)
    }

    /// `delete chain` (it must be empty and not jumped to).
    pub fn delete_chain(&mut self, family: Family, table: &str, chain: &str) -> Result<&mut Batch> {
        let attributes: Vec<ChainAttribute> = chain_key(table, chain)?;
        self.push(
            format!("delete chain {family} {table} {chain}"),
            family,
            0,
            NfTablesMessage::DeleteChain(ChainMessage { attributes }),
        );
        Ok(self)
    }

    /// `flush chain`: deletes every rule of the chain.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) -> Result<&mut Batch> {
        let attributes = vec![
            RuleAttribute::Table(checked_name(table)?),
            RuleAttribute::Chain(checked_name(chain)?),
        ];
        self.push(
            format!("flush chain {family} {table} {chain}"),
            family,
            0,
            NfTablesMessage::DeleteRule(RuleMessage { attributes }),
        );
        Ok(self)
    }

    /// `add rule`: appends at the end of the chain.
    pub fn add_rule(&mut self, rule: &Rule) -> Result<&mut Batch> {
        let attributes = rule.attributes()?;
        self.push(
            rule.describe(),
            rule.family(),
            NLM_F_CREATE | NLM_F_APPEND,
            NfTablesMessage::NewRule(RuleMessage { attributes }),
        );
        Ok(self)
    }

    /// `delete rule … handle <n>`.
    pub fn delete_rule(&mut self, rule: &ListedRule) -> Result<&mut Batch> {
        let ListedRule {
            family,
            table,
            chain,
            handle,
            ..
        } = rule;
        let attributes = vec![
            RuleAttribute::Table(checked_name(table)?),
            RuleAttribute::Chain(checked_name(chain)?),
            RuleAttribute::Handle(*handle),
        ];
        self.push(
            format!("delete rule {family} {table} {chain} handle {handle}"),
            *family,
            0,
            NfTablesMessage::DeleteRule(RuleMessage { attributes }),
        );
        Ok(self)
    }

    /// The wire form: begin marker at `first_seq`, message `i` at `first_seq + 1 + i`, end
    /// marker after them.
    pub(super) fn encode(&self, first_seq: u32) -> Vec<u8> {
        self.encode_with(first_seq, 0)
    }

    /// [`encode`](Self::encode), each added rule echoed back (`NLM_F_ECHO`) with its handle.
    pub(super) fn encode_echoed(&self, first_seq: u32) -> Vec<u8> {
        self.encode_with(first_seq, NLM_F_ECHO)
    }

    fn encode_with(&self, first_seq: u32, new_rule_flags: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let marker = |m: ControlMessage| {
            NetfilterMessage::new(
                NetfilterHeader::new(
                    NetfilterProtoFamily::Unspec,
                    NFNETLINK_V0,
                    NFNL_SUBSYS_NFTABLES,
                ),
                NetfilterMessageInner::None(m),
            )
        };
        append(&mut out, marker(ControlMessage::BatchBegin), first_seq, 0);
        for (i, e) in self.entries.iter().enumerate() {
            let msg = NetfilterMessage::new(
                NetfilterHeader::new(e.family.proto(), NFNETLINK_V0, 0),
                e.body.clone(),
            );
            let echo = match e.body {
                NfTablesMessage::NewRule(_) => new_rule_flags,
                _ => 0,
            };
            append(
                &mut out,
                msg,
                seq_of(first_seq, i),
                e.flags | NLM_F_ACK | echo,
            );
        }
        let end_seq = seq_of(first_seq, self.entries.len());
        append(&mut out, marker(ControlMessage::BatchEnd), end_seq, 0);
        out
    }

    /// How many sequence numbers `encode` uses.
    pub(super) fn seq_count(&self) -> u32 {
        self.entries.len() as u32 + 2
    }
}

fn seq_of(first_seq: u32, index: usize) -> u32 {
    first_seq.wrapping_add(1).wrapping_add(index as u32)
}

/// Serialises one request message onto `out`.
pub(super) fn append(out: &mut Vec<u8>, msg: NetfilterMessage, seq: u32, flags: u16) {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let start = out.len();
    out.resize(start + nl.buffer_len(), 0);
    nl.serialize(&mut out[start..]);
}

/// The replies of one transaction as they come in.
pub struct Acks<'a> {
    batch: &'a Batch,
    first_seq: u32,
    answered: Vec<bool>,
    remaining: usize,
    failure: Option<(usize, Errno, Option<String>)>,
}

impl<'a> Acks<'a> {
    /// For `batch` sent with sequence numbers from `first_seq` on.
    pub fn new(batch: &'a Batch, first_seq: u32) -> Acks<'a> {
        Acks {
            batch,
            first_seq,
            answered: vec![false; batch.len()],
            remaining: batch.len(),
            failure: None,
        }
    }

    pub fn done(&self) -> bool {
        self.remaining == 0
    }

    /// The family of the batch's message sent under `seq`, if one was.
    pub fn family_of(&self, seq: u32) -> Option<Family> {
        let index = seq.wrapping_sub(self.first_seq).wrapping_sub(1) as usize;
        self.batch.entries.get(index).map(|e| e.family)
    }

    /// Takes one reply; a refusal of the batch as a whole ends the transaction at once.
    pub fn record(&mut self, msg: &Message) -> Result<()> {
        let NetlinkPayload::Error(err) = &msg.payload else {
            return Ok(());
        };
        let seq = msg.header.sequence_number;
        let index = seq.wrapping_sub(self.first_seq).wrapping_sub(1) as usize;
        let text = || ext_ack_text(msg.header.flags, &err.header);
        if index >= self.batch.len() {
            // The markers' seqs: a batch-level error (no message was looked at).
            let is_marker = seq == self.first_seq || index == self.batch.len();
            return match err.code {
                Some(code) if is_marker => Err(Error::Batch {
                    errno: Errno::from_code(code.get()),
                    message: text(),
                }),
                _ => Ok(()), // Someone else's reply (a stale request): not ours to count.
            };
        }
        if std::mem::replace(&mut self.answered[index], true) {
            return Ok(());
        }
        self.remaining -= 1;
        if let Some(code) = err.code {
            let first = self.failure.as_ref().is_none_or(|(i, ..)| index < *i);
            if first {
                self.failure = Some((index, Errno::from_code(code.get()), text()));
            }
        }
        Ok(())
    }

    pub fn outcome(self) -> Result<()> {
        match self.failure {
            None => Ok(()),
            Some((index, errno, message)) => Err(Error::Rejected {
                index,
                op: self.batch.op(index).unwrap_or("?").to_string(),
                errno,
                message,
            }),
        }
    }
}

/// `NLMSGERR_ATTR_MSG` (`linux/netlink.h`) in the TLVs of an error reply.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = std::mem::size_of::<libc::nlmsghdr>();

/// The extended-ack text after the echoed request header of an error reply.
pub fn ext_ack_text(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len: [u8; 4] = payload.get(..4)?.try_into().ok()?;
        (u32::from_ne_bytes(len) as usize).next_multiple_of(4)
    };
    let tlvs = payload.get(echoed..)?;
    netlink_packet_core::NlasIterator::new(tlvs)
        .filter_map(|nla| nla.ok())
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .and_then(|nla| {
            let text = nla.value().split(|b| *b == 0).next()?;
            String::from_utf8(text.to_vec()).ok()
        })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use netlink_packet_core::{ErrorMessage, NetlinkBuffer};

    use super::*;
    use crate::kernel::nf_tables::socket::split_datagram;

    fn sample() -> Batch {
        let mut b = Batch::new();
        b.add_table(Family::Inet, "t").unwrap();
        b.add_chain(&Chain::regular(Family::Inet, "t", "c"))
            .unwrap();
        b.add_rule(&Rule::new(Family::Inet, "t", "c").accept())
            .unwrap();
        b
    }

    #[test]
    fn encodes_markers_around_acked_messages() {
        let bytes = sample().encode(100);
        let msgs = split_datagram(&bytes).unwrap();
        assert_eq!(msgs.len(), 5);
        let seqs: Vec<u32> = msgs.iter().map(|m| m.header.sequence_number).collect();
        assert_eq!(seqs, [100, 101, 102, 103, 104]);
        // BATCH_BEGIN/END are subsystem 0 type 16/17; nf_tables messages subsystem 10.
        let types: Vec<u16> = msgs.iter().map(|m| m.header.message_type).collect();
        assert_eq!(types, [0x10, 0x0a00, 0x0a03, 0x0a06, 0x11]);
        assert_eq!(msgs[0].header.flags, NLM_F_REQUEST);
        assert_eq!(
            msgs[3].header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND
        );
        // res_id of the markers is the subsystem, big-endian.
        let begin = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(&begin.payload()[2..4], &[0, 10]);
    }

    fn reply(seq: u32, code: i32) -> Message {
        let mut err = ErrorMessage::default();
        err.code = NonZeroI32::new(code);
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        NetlinkMessage::new(header, NetlinkPayload::Error(err))
    }

    #[test]
    fn first_failing_message_is_reported() {
        let batch = sample();
        let mut acks = Acks::new(&batch, 100);
        acks.record(&reply(101, 0)).unwrap();
        acks.record(&reply(103, -libc::ENOENT)).unwrap();
        assert!(!acks.done());
        acks.record(&reply(102, -libc::ENOENT)).unwrap();
        acks.record(&reply(102, 0)).unwrap(); // duplicate, ignored
        assert!(acks.done());
        match acks.outcome() {
            Err(Error::Rejected {
                index, op, errno, ..
            }) => {
                assert_eq!(index, 1);
                assert_eq!(op, "add chain inet t c");
                assert_eq!(errno, Errno::NotFound);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_on_a_marker_fails_the_batch_and_strangers_are_ignored() {
        let batch = sample();
        let mut acks = Acks::new(&batch, 100);
        acks.record(&reply(7, -libc::EINVAL)).unwrap();
        assert!(matches!(
            acks.record(&reply(100, -libc::EPERM)),
            Err(Error::Batch {
                errno: Errno::Denied,
                ..
            })
        ));
    }

    #[test]
    fn ext_ack_text_is_read_after_the_capped_header() {
        let mut payload = vec![0u8; NLMSG_HDRLEN];
        // NLA: len 4 + 6 ("oops\0" + pad), type 1.
        payload.extend_from_slice(&[9, 0, 1, 0, b'o', b'o', b'p', b's', 0, 0, 0, 0]);
        assert_eq!(
            ext_ack_text(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("oops")
        );
        assert_eq!(ext_ack_text(NLM_F_CAPPED, &payload), None);
        assert_eq!(ext_ack_text(NLM_F_ACK_TLVS, &[1, 2]), None);
    }
}
