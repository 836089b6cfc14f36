//! A small blocking NETLINK_NETFILTER socket: send one buffer, read back parsed datagrams with a
//! bounded wait. nf_tables and ctnetlink (`crate::kernel::conntrack`) both speak over it.

use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage};
use netlink_packet_netfilter::NetfilterMessage;
use netlink_sys::{Socket as RawSocket, protocols::NETLINK_NETFILTER};

use super::batch::append;
use super::error::{Error, Result};

/// How long one receive may wait before the request counts as unanswered.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger than any datagram the kernel sends on a netlink socket (dumps fill at most 32 KiB).
const RECV_BUFFER: usize = 64 * 1024;
/// What each queued ACK or error costs in the receive buffer (skb truesize, rounded up).
const ACK_COST: usize = 1024;
const MIN_RCVBUF: usize = 256 * 1024;
const MAX_RCVBUF: usize = 16 * 1024 * 1024;
/// Batches up to this size fit the default send buffer (net.core.wmem_default is 208 KiB).
const DEFAULT_SNDBUF: usize = 128 * 1024;
/// The kernel wants room for the skb's own overhead beside the datagram.
const SEND_SLACK: usize = 4096;

pub type Message = NetlinkMessage<NetfilterMessage>;

pub struct Socket {
    raw: RawSocket,
    next_seq: u32,
    rcvbuf: usize,
    sndbuf: usize,
    buf: Vec<u8>,
}

/// The kernel's flush at close would hold every other nf_tables transaction of the node for a
/// grace period (see `deferred_close`): the socket is released after we exit instead.
impl Drop for Socket {
    fn drop(&mut self) {
        use std::os::fd::AsFd;
        crate::kernel::deferred_close::release(self.raw.as_fd());
    }
}

impl Socket {
    /// Opens the socket in the network namespace of the calling thread.
    pub fn open() -> Result<Socket> {
        let mut raw = RawSocket::new(NETLINK_NETFILTER).map_err(Error::Socket)?;
        raw.bind_auto().map_err(Error::Socket)?;
        // Errors carry only the header of the refused message, plus the kernel's text.
        raw.set_cap_ack(true).map_err(Error::Socket)?;
        raw.set_ext_ack(true).map_err(Error::Socket)?;
        set_receive_timeout(&raw, REPLY_TIMEOUT)?;
        Ok(Socket {
            raw,
            next_seq: initial_seq(),
            rcvbuf: 0,
            sndbuf: 0,
            buf: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// Reserves `count` consecutive sequence numbers and returns the first.
    pub fn reserve_seqs(&mut self, count: u32) -> u32 {
        let first = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(count);
        first
    }

    /// Makes room for `replies` queued ACKs, so a large batch does not overrun the socket.
    pub fn expect_replies(&mut self, replies: usize) -> Result<()> {
        let wanted = replies
            .saturating_mul(ACK_COST)
            .clamp(MIN_RCVBUF, MAX_RCVBUF);
        if wanted <= self.rcvbuf {
            return Ok(());
        }
        set_buffer(&self.raw, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, wanted)?;
        self.rcvbuf = wanted;
        Ok(())
    }

    /// Sends `bytes` in one datagram: the kernel reads a batch from one message only, so the
    /// send buffer grows to fit a large one.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let wanted = bytes.len() + SEND_SLACK;
        if wanted > DEFAULT_SNDBUF && wanted > self.sndbuf {
            set_buffer(&self.raw, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, wanted)?;
            self.sndbuf = wanted;
        }
        let sent = self.raw.send(bytes, 0).map_err(Error::Socket)?;
        if sent != bytes.len() {
            return Err(Error::Socket(std::io::Error::other(format!(
                "short send: {sent} of {} bytes",
                bytes.len()
            ))));
        }
        Ok(())
    }

    /// Sends one request (`NLM_F_REQUEST` and `flags`) under a fresh sequence number, returned.
    pub fn send_message(&mut self, msg: NetfilterMessage, flags: u16) -> Result<u32> {
        let seq = self.reserve_seqs(1);
        let mut bytes = Vec::new();
        append(&mut bytes, msg, seq, flags);
        self.send(&bytes)?;
        Ok(seq)
    }

    /// Reads one datagram and returns the control messages in it (see [`control_messages`]).
    pub fn recv(&mut self) -> Result<Vec<Message>> {
        self.recv_raw()?;
        control_messages(&self.buf)
    }

    /// Reads one datagram and returns its bytes.
    pub fn recv_raw(&mut self) -> Result<&[u8]> {
        self.buf.clear();
        let len = match self.raw.recv(&mut self.buf, libc::MSG_TRUNC) {
            Ok(len) => len,
            Err(e) => return Err(recv_error(e)),
        };
        if len > self.buf.len() {
            return Err(Error::Decode(format!(
                "datagram of {len} bytes exceeds the {RECV_BUFFER}-byte buffer"
            )));
        }
        Ok(&self.buf)
    }
}

fn recv_error(e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Error::Timeout(REPLY_TIMEOUT),
        Some(libc::ENOBUFS) => Error::Overrun,
        _ => Error::Socket(e),
    }
}

/// Every netlink message packed in one datagram (our own requests, in tests).
#[cfg(test)]
pub(super) fn split_datagram(bytes: &[u8]) -> Result<Vec<Message>> {
    frames(bytes)
        .map(|frame| {
            Message::deserialize(frame?.into_inner()).map_err(|e| Error::Decode(e.to_string()))
        })
        .collect()
}

/// Types below it are netlink's own (NOOP, ERROR, DONE, OVERRUN).
const NLMSG_MIN_TYPE: u16 = libc::NLMSG_MIN_TYPE as u16;

/// Whether a frame is one of netlink's control messages rather than an nf_tables object.
pub fn is_control(frame: &NetlinkBuffer<&[u8]>) -> bool {
    frame.message_type() < NLMSG_MIN_TYPE
}

/// The control messages (errors, ACKs, dump ends) of a reply datagram: all a reply to a
/// transaction or a lookup is judged by. Object messages are skipped without being decoded:
/// the crate's parser panics on some malformed ones (unchecked attribute lengths).
pub fn control_messages(bytes: &[u8]) -> Result<Vec<Message>> {
    frames(bytes)
        .filter(|frame| frame.as_ref().map_or(true, is_control))
        .map(|frame| {
            Message::deserialize(frame?.into_inner()).map_err(|e| Error::Decode(e.to_string()))
        })
        .collect()
}

/// The netlink frames of one datagram, each checked to lie within it.
pub fn frames(mut bytes: &[u8]) -> impl Iterator<Item = Result<NetlinkBuffer<&[u8]>>> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let len = match NetlinkBuffer::new_checked(bytes) {
            Ok(frame) => frame.length() as usize,
            Err(e) => {
                bytes = &[];
                return Some(Err(Error::Decode(e.to_string())));
            }
        };
        let (this, rest) = bytes.split_at(len);
        bytes = rest.get(len.next_multiple_of(4) - len..).unwrap_or(&[]);
        Some(Ok(NetlinkBuffer::new(this)))
    })
}

fn initial_seq() -> u32 {
    // Distinct per socket so that a late reply to another socket's request cannot match.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(1)
}

fn set_receive_timeout(raw: &RawSocket, timeout: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    setsockopt(raw, libc::SO_RCVTIMEO, &tv)
}

/// Sets a socket buffer size; `force` (root) goes past the sysctl maximum, without the
/// privilege it falls back to what `plain` allows.
fn set_buffer(raw: &RawSocket, force: libc::c_int, plain: libc::c_int, bytes: usize) -> Result<()> {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt(raw, force, &size).or_else(|_| setsockopt(raw, plain, &size))
}

fn setsockopt<T>(raw: &RawSocket, option: libc::c_int, value: &T) -> Result<()> {
    // SAFETY: `value` points to a live T of the size passed; the fd is owned by `raw`.
    let rc = unsafe {
        libc::setsockopt(
            raw.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(Error::Socket(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rejects_a_length_past_the_datagram() {
        // nlmsg_len 64 in a 16-byte datagram.
        let mut bytes = vec![0u8; 16];
        bytes[0] = 64;
        assert!(matches!(split_datagram(&bytes), Err(Error::Decode(_))));
        assert!(split_datagram(&[]).unwrap().is_empty());
    }

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn frame(message_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        out.extend_from_slice(&message_type.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn object_messages_in_a_reply_are_skipped_undecoded() {
        // A NEWRULE whose cmp data claims 1670 bytes: the crate's parser would panic on it.
        const NESTED: u16 = 0x8000;
        let cmp_data = nla(3, &[0x86, 0x06, 1, 0]);
        let element = [nla(1, b"cmp\0"), nla(2 | NESTED, &cmp_data)].concat();
        let expressions = nla(4 | NESTED, &nla(1 | NESTED, &element));
        let rule = frame(
            (10 << 8) | 6,
            &[[1, 0, 0, 0].as_slice(), &expressions].concat(),
        );
        let mut error = frame(2, &(-libc::ENOENT).to_ne_bytes());
        error.extend_from_slice(&[0; 16]); // the echoed request header
        error[..4].copy_from_slice(&36u32.to_ne_bytes());
        let msgs = control_messages(&[rule, error].concat()).unwrap();
        assert_eq!(msgs.len(), 1);
        assert!(matches!(
            msgs[0].payload,
            netlink_packet_core::NetlinkPayload::Error(_)
        ));
    }
}
