//! Counting the processes an operation forks: the kernel's process events connector
//! (`NETLINK_CONNECTOR`, `CN_IDX_PROC`) reports every fork on the machine; an operation's
//! processes are its root children and everything they fork, transitively. Threads (the Go
//! runtime starts several per process) are not processes and are left out.

use std::io;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, constants::NETLINK_CONNECTOR};

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 1;
const NLMSG_DONE: u16 = 3;
/// `struct nlmsghdr` (16 bytes) then `struct cn_msg` (20 bytes), then `struct proc_event`.
const EVENT_OFFSET: usize = 16 + 20;

/// A process created by `parent` (both thread-group ids).
#[derive(Debug, Clone, Copy)]
struct Fork {
    parent: i32,
    child: i32,
}

#[derive(Default)]
struct Log {
    forks: Vec<Fork>,
    /// The kernel dropped events (socket buffer overrun): counts since then are unknown.
    lost: bool,
}

pub struct Watch {
    log: Arc<(Mutex<Log>, Condvar)>,
}

/// A position in the event log: counting starts there.
pub struct Mark(usize);

impl Watch {
    /// Subscribes to process events (root, in the initial namespaces) and collects them on a
    /// thread of its own.
    pub fn start() -> io::Result<Watch> {
        let mut socket = Socket::new(NETLINK_CONNECTOR)?;
        socket.bind(&SocketAddr::new(0, CN_IDX_PROC))?;
        force_receive_buffer(&socket, 16 << 20);
        socket.send(&listen_message(), 0)?;
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let shared = Arc::clone(&log);
        std::thread::spawn(move || collect(socket, &shared));
        Ok(Watch { log })
    }

    pub fn mark(&self) -> io::Result<Mark> {
        self.sync()?;
        Ok(Mark(self.lock().forks.len()))
    }

    /// How many processes `roots` and their descendants are, counting events since `mark`.
    /// `None` when events were lost.
    pub fn count(&self, mark: &Mark, roots: &[i32]) -> Option<usize> {
        self.sync().ok()?;
        let log = self.lock();
        if log.lost {
            return None;
        }
        let mut tree: Vec<i32> = roots.to_vec();
        for fork in &log.forks[mark.0..] {
            if tree.contains(&fork.parent) && !tree.contains(&fork.child) {
                tree.push(fork.child);
            }
        }
        Some(tree.len())
    }

    /// Waits until every event that happened before this call has been collected: events of
    /// one socket arrive in order, so once a fresh child's fork is in, all earlier ones are.
    fn sync(&self) -> io::Result<()> {
        let mut child = Command::new("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let pid = child.id() as i32;
        child.wait()?;
        let (log, arrived) = &*self.log;
        let guard = log.lock().unwrap_or_else(|e| e.into_inner());
        let (_guard, timeout) = arrived
            .wait_timeout_while(guard, Duration::from_secs(5), |l| {
                !l.lost && !l.forks.iter().rev().take(4096).any(|f| f.child == pid)
            })
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            return Err(io::Error::other("process events stopped arriving"));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn listen_message() -> Vec<u8> {
    let mut msg = Vec::with_capacity(EVENT_OFFSET + 4);
    msg.extend_from_slice(&((EVENT_OFFSET + 4) as u32).to_ne_bytes());
    msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id
    for word in [CN_IDX_PROC, CN_VAL_PROC, 0, 0] {
        msg.extend_from_slice(&word.to_ne_bytes()); // cb_id, seq, ack
    }
    msg.extend_from_slice(&4u16.to_ne_bytes()); // len
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    msg
}

/// The socket buffer holds events while the collector is off the CPU; as root it may exceed
/// `rmem_max`. If it cannot, the default stays and a burst may be reported as lost.
fn force_receive_buffer(socket: &Socket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain setsockopt on a socket we own, with a correctly sized int.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn collect(socket: Socket, log: &(Mutex<Log>, Condvar)) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                log.0.lock().unwrap_or_else(|e| e.into_inner()).lost = true;
                log.1.notify_all();
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if let Some(fork) = parse_fork(&buf[..n]) {
            log.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forks
                .push(fork);
            log.1.notify_all();
        }
    }
}

/// A fork event that made a new process (not a thread), from one datagram.
fn parse_fork(msg: &[u8]) -> Option<Fork> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(msg.get(at..at + 4)?.try_into().ok()?))
    };
    if word(EVENT_OFFSET)? != PROC_EVENT_FORK {
        return None;
    }
    // what, cpu, timestamp_ns (u64), then parent_pid, parent_tgid, child_pid, child_tgid.
    let data = EVENT_OFFSET + 16;
    let parent_tgid = word(data + 4)? as i32;
    let child_pid = word(data + 8)? as i32;
    let child_tgid = word(data + 12)? as i32;
    (child_pid == child_tgid).then_some(Fork {
        parent: parent_tgid,
        child: child_tgid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(what: u32, parent_tgid: i32, child_pid: i32, child_tgid: i32) -> Vec<u8> {
        let mut msg = vec![0u8; EVENT_OFFSET + 16];
        msg[EVENT_OFFSET..EVENT_OFFSET + 4].copy_from_slice(&what.to_ne_bytes());
        for v in [parent_tgid, parent_tgid, child_pid, child_tgid] {
            msg.extend_from_slice(&v.to_ne_bytes());
        }
        msg
    }

    #[test]
    fn fork_events_of_processes_only() {
        let fork = parse_fork(&event(PROC_EVENT_FORK, 10, 11, 11)).unwrap();
        assert_eq!((fork.parent, fork.child), (10, 11));
        // A thread: its thread-group id is its creator's.
        assert!(parse_fork(&event(PROC_EVENT_FORK, 10, 12, 10)).is_none());
        // An exec event, and a datagram cut short.
        assert!(parse_fork(&event(2, 10, 11, 11)).is_none());
        assert!(parse_fork(&event(PROC_EVENT_FORK, 10, 11, 11)[..50]).is_none());
    }

    /// The kernel's connector, live: a shell that runs two programs is three processes.
    #[test]
    fn counts_a_process_tree() {
        let watch = Watch::start().expect("process events need root");
        let mark = watch.mark().unwrap();
        let mut child = Command::new("/bin/sh")
            .args(["-c", "/bin/true; /bin/true; exit 0"])
            .spawn()
            .unwrap();
        let root = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(watch.count(&mark, &[root]), Some(3));
    }
}
