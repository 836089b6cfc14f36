//! The client: transactions, existence checks and the dump of one chain, over one socket.

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NetlinkPayload};
use netlink_packet_netfilter::nftables::{
    ChainMessage, NfTablesMessage, RuleAttribute, RuleMessage, TableMessage,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage};

use super::batch::{Acks, Batch};
use super::error::{Errno, Error, Result};
use super::objects::{Chain, Family, chain_key, checked_name, table_key};
use super::rule::{ListedRule, Rule};
use super::socket::{Message, Socket, frames, is_control};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE`: a rule in a dump.
const NEWRULE: u16 = ((libc::NFNL_SUBSYS_NFTABLES << 8) | libc::NFT_MSG_NEWRULE) as u16;
/// `struct nfgenmsg` before a netfilter message's attributes.
const NFGENMSG_LEN: usize = 4;

/// How long a dump is restarted when concurrent changes interrupt it: any commit in the
/// namespace between two parts of a dump interrupts it, and dozens of plugins deleting at once
/// commit back to back, so restarts wait a little, growing and jittered, for a quiet moment.
const DUMP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
const DUMP_PAUSE_MAX_MS: u64 = 16;

/// nf_tables of the network namespace the calling thread was in when `open` ran.
pub struct Client {
    socket: Socket,
}

impl Client {
    pub fn open() -> Result<Client> {
        Ok(Client {
            socket: Socket::open()?,
        })
    }

    /// Applies `batch` as one transaction. On refusal nothing was changed, and the error
    /// names the first refused message and the kernel's errno.
    pub fn commit(&mut self, batch: &Batch) -> Result<()> {
        self.transact(batch, false).map(drop)
    }

    /// Applies `batch` as [`commit`](Self::commit) does, the kernel echoing every rule it
    /// adds: the added rules, with their handles and comments.
    pub fn commit_echoed(&mut self, batch: &Batch) -> Result<Vec<ListedRule>> {
        self.transact(batch, true)
    }

    fn transact(&mut self, batch: &Batch, echo: bool) -> Result<Vec<ListedRule>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // An echoed rule is one more reply per message.
        self.socket
            .expect_replies(batch.len() * if echo { 2 } else { 1 })?;
        let first_seq = self.socket.reserve_seqs(batch.seq_count());
        let wire = match echo {
            true => batch.encode_echoed(first_seq),
            false => batch.encode(first_seq),
        };
        self.socket.send(&wire)?;
        let mut acks = Acks::new(batch, first_seq);
        let mut added = Vec::new();
        while !acks.done() {
            for frame in frames(self.socket.recv_raw()?) {
                let frame = frame?;
                if frame.message_type() == NEWRULE {
                    if let Some(family) = acks.family_of(frame.sequence_number()) {
                        let attributes = frame.payload().get(NFGENMSG_LEN..).unwrap_or_default();
                        added.push(ListedRule::decode(family, attributes)?);
                    }
                } else if is_control(&frame) {
                    let msg = Message::deserialize(frame.into_inner())
                        .map_err(|e| Error::Decode(e.to_string()))?;
                    acks.record(&msg)?;
                }
            }
        }
        acks.outcome().map(|()| added)
    }

    /// The rule `handle` of a chain, or `None` when the table, chain or rule is gone.
    pub fn get_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        handle: u64,
    ) -> Result<Option<ListedRule>> {
        let body = NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(checked_name(table)?),
                RuleAttribute::Chain(checked_name(chain)?),
                RuleAttribute::Handle(handle),
            ],
        });
        let op = format!("get rule {family} {table} {chain} handle {handle}");
        let seq = self.send_request(family, body, NLM_F_ACK)?;
        let mut rule = None;
        loop {
            for frame in frames(self.socket.recv_raw()?) {
                let frame = frame?;
                if frame.sequence_number() != seq {
                    continue;
                }
                if frame.message_type() == NEWRULE {
                    let attributes = frame.payload().get(NFGENMSG_LEN..).unwrap_or_default();
                    rule = Some(ListedRule::decode(family, attributes)?);
                    continue;
                }
                if !is_control(&frame) {
                    continue;
                }
                let msg = Message::deserialize(frame.into_inner())
                    .map_err(|e| Error::Decode(e.to_string()))?;
                if let NetlinkPayload::Error(err) = msg.payload {
                    return match err.code.map(|c| Errno::from_code(c.get())) {
                        None => Ok(rule),
                        Some(errno) if errno.is_not_found() => Ok(None),
                        Some(errno) => Err(Error::Request { op, errno }),
                    };
                }
            }
        }
    }

    pub fn add_table(&mut self, family: Family, name: &str) -> Result<()> {
        self.commit(Batch::new().add_table(family, name)?)
    }

    pub fn create_table(&mut self, family: Family, name: &str) -> Result<()> {
        self.commit(Batch::new().create_table(family, name)?)
    }

    pub fn delete_table(&mut self, family: Family, name: &str) -> Result<()> {
        self.commit(Batch::new().delete_table(family, name)?)
    }

    pub fn add_chain(&mut self, chain: &Chain) -> Result<()> {
        self.commit(Batch::new().add_chain(chain)?)
    }

    pub fn create_chain(&mut self, chain: &Chain) -> Result<()> {
        self.commit(Batch::new().create_chain(chain)?)
    }

    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) -> Result<()> {
        self.commit(Batch::new().flush_chain(family, table, chain)?)
    }

    pub fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        self.commit(Batch::new().add_rule(rule)?)
    }

    pub fn delete_rule(&mut self, rule: &ListedRule) -> Result<()> {
        self.commit(Batch::new().delete_rule(rule)?)
    }

    pub fn table_exists(&mut self, family: Family, name: &str) -> Result<bool> {
        let body = NfTablesMessage::GetTable(TableMessage {
            attributes: table_key(name)?,
        });
        self.exists(family, body, format!("get table {family} {name}"))
    }

    pub fn chain_exists(&mut self, family: Family, table: &str, chain: &str) -> Result<bool> {
        let body = NfTablesMessage::GetChain(ChainMessage {
            attributes: chain_key(table, chain)?,
        });
        self.exists(family, body, format!("get chain {family} {table} {chain}"))
    }

    /// Sends a get request; the kernel answers with the object and an ACK, or ENOENT.
    fn exists(&mut self, family: Family, body: NfTablesMessage, op: String) -> Result<bool> {
        let seq = self.send_request(family, body, NLM_F_ACK)?;
        loop {
            for msg in self.socket.recv()? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(err) = msg.payload {
                    return match err.code.map(|c| Errno::from_code(c.get())) {
                        None => Ok(true),
                        Some(Errno::NotFound) => Ok(false),
                        Some(errno) => Err(Error::Request { op, errno }),
                    };
                }
            }
        }
    }

    /// The rules of one chain, in order, with handles and comments. The kernel filters the
    /// dump by table and chain, so the cost does not grow with the rest of the ruleset; a
    /// missing table or chain lists as empty.
    pub fn list_rules(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<Vec<ListedRule>> {
        let attributes = vec![
            RuleAttribute::Table(checked_name(table)?),
            RuleAttribute::Chain(checked_name(chain)?),
        ];
        let op = format!("list chain {family} {table} {chain}");
        let deadline = std::time::Instant::now() + DUMP_PATIENCE;
        let mut pause_ms = 1;
        loop {
            let body = NfTablesMessage::GetRule(RuleMessage {
                attributes: attributes.clone(),
            });
            let seq = self.send_request(family, body, NLM_F_DUMP)?;
            if let Some(rules) = self.read_rule_dump(family, seq, &op)? {
                return Ok(rules);
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Interrupted);
            }
            std::thread::sleep(std::time::Duration::from_millis(jittered(pause_ms)));
            pause_ms = (pause_ms * 2).min(DUMP_PAUSE_MAX_MS);
        }
    }

    /// The rules of a dump, or `None` when it was interrupted and must be restarted.
    fn read_rule_dump(
        &mut self,
        family: Family,
        seq: u32,
        op: &str,
    ) -> Result<Option<Vec<ListedRule>>> {
        let mut dump = RuleDump::new(family, seq, op);
        loop {
            match dump.read(self.socket.recv_raw()?)? {
                DumpStep::More => {}
                DumpStep::Done(rules) => return Ok(Some(rules)),
                DumpStep::Interrupted => return Ok(None),
            }
        }
    }

    fn send_request(&mut self, family: Family, body: NfTablesMessage, flags: u16) -> Result<u32> {
        let msg = NetfilterMessage::new(NetfilterHeader::new(family.proto(), 0, 0), body);
        self.socket.send_message(msg, flags)
    }
}

/// Between `ms / 2` and `ms` milliseconds, so restarting dumps do not stay in step.
fn jittered(ms: u64) -> u64 {
    let noise = crate::kernel::random::bytes::<1>().map_or(0, |[b]| u64::from(b));
    ms / 2 + noise * (ms - ms / 2) / 255
}

/// The rules of one dump of one chain, read datagram by datagram as the kernel sends them.
/// Rule frames are read directly (see [`ListedRule`]); the rest goes through the crate.
pub struct RuleDump {
    family: Family,
    seq: u32,
    op: String,
    rules: Vec<ListedRule>,
    interrupted: bool,
}

/// Where a dump stands after one datagram.
#[derive(Debug)]
pub enum DumpStep {
    /// The dump goes on in the next datagram.
    More,
    Done(Vec<ListedRule>),
    /// Concurrent changes interrupted it: it must be restarted.
    Interrupted,
}

impl RuleDump {
    /// A dump of `family` requested with sequence number `seq`; `op` names it in errors.
    pub fn new(family: Family, seq: u32, op: &str) -> RuleDump {
        RuleDump {
            family,
            seq,
            op: op.to_string(),
            rules: Vec::new(),
            interrupted: false,
        }
    }

    /// Reads one datagram of the dump's replies (frames of other requests are skipped).
    pub fn read(&mut self, datagram: &[u8]) -> Result<DumpStep> {
        for frame in frames(datagram) {
            let frame = frame?;
            if frame.sequence_number() != self.seq {
                continue;
            }
            self.interrupted |= frame.flags() & NLM_F_DUMP_INTR != 0;
            if frame.message_type() == NEWRULE {
                let attributes = frame.payload().get(NFGENMSG_LEN..).unwrap_or_default();
                self.rules
                    .push(ListedRule::decode(self.family, attributes)?);
                continue;
            }
            if !is_control(&frame) {
                continue;
            }
            let msg = Message::deserialize(frame.into_inner())
                .map_err(|e| Error::Decode(e.to_string()))?;
            let code = match msg.payload {
                NetlinkPayload::Done(done) => done.code,
                NetlinkPayload::Error(err) => match err.code {
                    Some(code) => code.get(),
                    None => continue,
                },
                _ => continue,
            };
            if code != 0 {
                return Err(Error::Request {
                    op: self.op.clone(),
                    errno: Errno::from_code(code),
                });
            }
            return Ok(if self.interrupted {
                DumpStep::Interrupted
            } else {
                DumpStep::Done(std::mem::take(&mut self.rules))
            });
        }
        Ok(DumpStep::More)
    }
}
