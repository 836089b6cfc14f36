//! Conntrack entries that would keep sending a mapped port's traffic to an old destination.
//! UDP "connections" live as long as a client keeps sending, so after a port mapping changes
//! they must be dropped for the new rules to apply at once.
//!
//! Spoken in process over ctnetlink, on the same kind of socket as nf_tables: the family's
//! table is dumped, the entries are picked here (kernels differ in which dump filters they
//! honour, so none is relied on), and each is deleted by its exact original tuple. A delete
//! request without a tuple would flush the whole table, so none is ever built.

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_DUMP, NetlinkBuffer, NetlinkPayload, NlasIterator, Parseable,
    parse_u16_be,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use crate::kernel::nf_tables::{self, Errno, Message, Socket, frames, is_control};

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW`: an entry in a dump.
const CT_NEW: u16 = 1 << 8;
const NFGENMSG_LEN: usize = 4;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink: {0}")]
    Netlink(#[from] nf_tables::Error),
    #[error("ctnetlink {op}: {errno}")]
    Refused { op: &'static str, errno: Errno },
    #[error("unreadable conntrack entry: {0}")]
    Decode(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Deletes the UDP entries of one family whose original destination port is one of `ports`.
/// Failures are reported on stderr only: the mapping works regardless, only a client that kept
/// its old flow waits for the entry to expire.
pub fn flush_udp_ports(ports: &[u16], v6: bool) {
    if let Err(e) = delete_udp_entries(ports, v6) {
        let family = if v6 { "IPv6" } else { "IPv4" };
        eprintln!("cannot flush {family} UDP conntrack entries for ports {ports:?}: {e}");
    }
}

/// [`flush_udp_ports`] with its failure; how many entries were deleted.
pub fn delete_udp_entries(ports: &[u16], v6: bool) -> Result<usize> {
    let family = if v6 {
        NetfilterProtoFamily::IPv6
    } else {
        NetfilterProtoFamily::IPv4
    };
    if ports.is_empty() {
        return Ok(0);
    }
    let mut socket = Socket::open()?;
    let stale = stale_entries(&mut socket, family, ports)?;
    for entry in &stale {
        delete(&mut socket, entry)?;
    }
    Ok(stale.len())
}

/// One entry as ctnetlink names it: its original tuple (with both its address and protocol
/// parts) and its zone.
#[derive(Debug, PartialEq)]
struct Entry {
    family: NetfilterProtoFamily,
    tuple: Vec<Tuple>,
    zone: Option<u16>,
}

impl Entry {
    /// From the payload of a dumped entry (nfgenmsg, attributes); `None` for an entry without a
    /// complete original tuple, which cannot be named in a delete. Only the attributes needed
    /// are decoded.
    fn decode(payload: &[u8]) -> Result<Option<Entry>> {
        let decode_error = |e: netlink_packet_core::DecodeError| Error::Decode(e.to_string());
        let family = NetfilterProtoFamily::from(payload.first().copied().unwrap_or_default());
        let mut tuple = None;
        let mut zone = None;
        for nla in NlasIterator::new(payload.get(NFGENMSG_LEN..).unwrap_or_default()) {
            let nla = nla.map_err(decode_error)?;
            match nla.kind() {
                CTA_TUPLE_ORIG => {
                    if let ConntrackAttribute::CtaTupleOrig(parts) =
                        ConntrackAttribute::parse(&nla).map_err(decode_error)?
                    {
                        tuple = Some(parts);
                    }
                }
                CTA_ZONE => zone = Some(parse_u16_be(nla.value()).map_err(decode_error)?),
                _ => {}
            }
        }
        let complete = |parts: &[Tuple]| {
            parts.iter().any(|p| matches!(p, Tuple::Ip(_)))
                && parts.iter().any(|p| matches!(p, Tuple::Proto(_)))
        };
        Ok(tuple.filter(|parts| complete(parts)).map(|tuple| Entry {
            family,
            tuple,
            zone,
        }))
    }

    /// The destination port of a UDP entry.
    fn udp_dport(&self) -> Option<u16> {
        let proto = self.tuple.iter().find_map(|p| match p {
            Tuple::Proto(proto) => Some(proto),
            _ => None,
        })?;
        let udp = proto
            .iter()
            .any(|p| matches!(p, ProtoTuple::Protocol(Protocol::Udp)));
        let dport = proto.iter().find_map(|p| match p {
            ProtoTuple::DestinationPort(port) => Some(*port),
            _ => None,
        });
        dport.filter(|_| udp)
    }

    /// IPCTNL_MSG_CT_DELETE of exactly this entry.
    fn delete_request(&self) -> NetfilterMessage {
        let mut attributes = vec![ConntrackAttribute::CtaTupleOrig(self.tuple.clone())];
        if let Some(zone) = self.zone {
            attributes.push(ConntrackAttribute::Other(DefaultNla::new(
                CTA_ZONE,
                zone.to_be_bytes().to_vec(),
            )));
        }
        request(self.family, ConntrackMessage::Delete(attributes))
    }
}

fn request(family: NetfilterProtoFamily, body: ConntrackMessage) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), body)
}

/// The family's UDP entries to one of `ports`; none when the kernel tracks no connections.
fn stale_entries(
    socket: &mut Socket,
    family: NetfilterProtoFamily,
    ports: &[u16],
) -> Result<Vec<Entry>> {
    let seq = socket.send_message(request(family, ConntrackMessage::Get(vec![])), NLM_F_DUMP)?;
    let mut stale = Vec::new();
    let code = read_reply(socket, seq, |payload| {
        if let Some(entry) = Entry::decode(payload)?
            && entry.family == family
            && entry.udp_dport().is_some_and(|port| ports.contains(&port))
        {
            stale.push(entry);
        }
        Ok(())
    })?;
    if code == 0 {
        return Ok(stale);
    }
    match Errno::from_code(code) {
        // No conntrack in this kernel, or ctnetlink not loadable (nfnetlink answers EINVAL for
        // a subsystem it cannot find): nothing is tracked, nothing is stale.
        Errno::NotFound => Ok(Vec::new()),
        Errno::Other(libc::EOPNOTSUPP | libc::EINVAL | libc::EAFNOSUPPORT) => Ok(Vec::new()),
        errno => Err(Error::Refused { op: "dump", errno }),
    }
}

/// Deletes one entry; one that expired meanwhile (ENOENT) is fine.
fn delete(socket: &mut Socket, entry: &Entry) -> Result<()> {
    let seq = socket.send_message(entry.delete_request(), NLM_F_ACK)?;
    let code = read_reply(socket, seq, |_| Ok(()))?;
    if code == 0 {
        return Ok(());
    }
    match Errno::from_code(code) {
        Errno::NotFound => Ok(()),
        errno => Err(Error::Refused {
            op: "delete",
            errno,
        }),
    }
}

/// Reads the replies to request `seq` until its ACK, error or dump end, whose code (0 or a
/// negative errno) it returns; `on_entry` gets the payload of each entry on the way.
fn read_reply(
    socket: &mut Socket,
    seq: u32,
    mut on_entry: impl FnMut(&[u8]) -> Result<()>,
) -> Result<i32> {
    loop {
        for frame in frames(socket.recv_raw()?) {
            let frame = frame?;
            if frame.sequence_number() != seq {
                continue;
            }
            if frame.message_type() == CT_NEW {
                on_entry(frame.payload())?;
            } else if let Some(code) = final_code(frame)? {
                return Ok(code);
            }
        }
    }
}

/// The code of an ACK, error or dump end; `None` for any other frame.
fn final_code(frame: NetlinkBuffer<&[u8]>) -> Result<Option<i32>> {
    if !is_control(&frame) {
        return Ok(None);
    }
    let msg = Message::deserialize(frame.into_inner())
        .map_err(|e| nf_tables::Error::Decode(e.to_string()))?;
    Ok(match msg.payload {
        NetlinkPayload::Done(done) => Some(done.code),
        NetlinkPayload::Error(err) => Some(err.code.map_or(0, |c| c.get())),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;
    use netlink_packet_netfilter::conntrack::IPTuple;

    use super::*;

    fn udp_entry(dport: u16, zone: Option<u16>) -> Entry {
        Entry {
            family: NetfilterProtoFamily::IPv4,
            tuple: vec![
                Tuple::Ip(vec![
                    IPTuple::SourceAddress("192.0.2.1".parse().unwrap()),
                    IPTuple::DestinationAddress("192.0.2.2".parse().unwrap()),
                ]),
                Tuple::Proto(vec![
                    ProtoTuple::Protocol(Protocol::Udp),
                    ProtoTuple::SourcePort(40000),
                    ProtoTuple::DestinationPort(dport),
                ]),
            ],
            zone,
        }
    }

    fn payload(msg: &NetfilterMessage) -> Vec<u8> {
        let mut bytes = vec![0; msg.buffer_len()];
        msg.emit(&mut bytes);
        bytes
    }

    #[test]
    fn a_delete_names_the_entry_by_its_tuple_and_zone() {
        let entry = udp_entry(53, Some(7));
        let msg = entry.delete_request();
        let bytes = payload(&msg);
        assert_eq!(bytes[0], u8::from(NetfilterProtoFamily::IPv4));
        // What a dump would show of it reads back as the same entry.
        assert_eq!(Entry::decode(&bytes).unwrap(), Some(entry));
    }

    #[test]
    fn only_udp_entries_have_a_udp_destination_port() {
        assert_eq!(udp_entry(53, None).udp_dport(), Some(53));
        let mut tcp = udp_entry(53, None);
        tcp.tuple[1] = Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::Tcp),
            ProtoTuple::DestinationPort(53),
        ]);
        assert_eq!(tcp.udp_dport(), None);
    }

    #[test]
    fn an_entry_without_a_complete_tuple_is_never_picked() {
        let only_proto = request(
            NetfilterProtoFamily::IPv4,
            ConntrackMessage::New(vec![ConntrackAttribute::CtaTupleOrig(vec![Tuple::Proto(
                vec![
                    ProtoTuple::Protocol(Protocol::Udp),
                    ProtoTuple::DestinationPort(53),
                ],
            )])]),
        );
        assert_eq!(Entry::decode(&payload(&only_proto)).unwrap(), None);
        let no_tuple = request(NetfilterProtoFamily::IPv4, ConntrackMessage::New(vec![]));
        assert_eq!(Entry::decode(&payload(&no_tuple)).unwrap(), None);
    }

    #[test]
    fn a_truncated_entry_is_an_error_not_a_panic() {
        let bytes = payload(&udp_entry(53, None).delete_request());
        for len in NFGENMSG_LEN + 1..bytes.len() {
            let _ = Entry::decode(&bytes[..len]);
        }
        assert!(Entry::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
