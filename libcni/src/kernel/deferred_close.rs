//! Closing a file after the process has exited, in the kernel's own time.
//!
//! Closing a netlink socket of nf_tables makes the closing process wait: the kernel takes the
//! namespace's nf_tables mutex and flushes the destruction of every object deleted since the
//! last RCU grace period (`nft_rcv_nl_event`, for tables a socket owns; we make none). After a
//! DEL's transaction that is one grace period, 10–30 ms, during which the mutex is held, so
//! every other plugin's transaction and every veth removal on the node (which takes the same
//! mutex under the RTNL lock) waits too. Nothing of ours depends on that flush: the deleted
//! rules are gone when the transaction is acknowledged.
//!
//! [`release`] gives the last reference to a process-wide io_uring's file table instead; the
//! ring is torn down by a kernel worker after the process exits, which then releases the file.
//! Where io_uring is unavailable (an old kernel, `kernel.io_uring_disabled`, a seccomp filter)
//! or its table is full, the caller closes the file as usual.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Mutex;

use io_uring::IoUring;

/// More files than any plugin run opens sockets (a rollback of many attachments closes the
/// rest as usual).
const SLOTS: u32 = 16;

struct Ring {
    ring: IoUring,
    used: u32,
}

/// `None` once setting the ring up failed: no second try.
static RING: Mutex<Option<Option<Ring>>> = Mutex::new(None);

/// Whether the kernel now holds a reference to `fd` that it drops only after this process has
/// exited. The caller still closes its own descriptor.
pub fn release(fd: BorrowedFd<'_>) -> bool {
    let mut ring = RING.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ring) = ring.get_or_insert_with(open).as_mut() else {
        return false;
    };
    if ring.used == SLOTS {
        return false;
    }
    let taken = ring
        .ring
        .submitter()
        .register_files_update(ring.used, &[fd.as_raw_fd()]);
    match taken {
        Ok(1) => {
            ring.used += 1;
            true
        }
        _ => false,
    }
}

fn open() -> Option<Ring> {
    let ring = IoUring::new(1).ok()?;
    ring.submitter().register_files_sparse(SLOTS).ok()?;
    Some(Ring { ring, used: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A registered file outlives its descriptor: the pipe's write end stays open (no EOF on
    /// the read end) after the descriptor is closed.
    #[test]
    fn the_ring_keeps_a_released_file_open() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let enabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .is_ok_and(|v| v.trim() == "0");
        assert_eq!(release(write.as_fd()), enabled);
        if !enabled {
            return;
        }
        drop(write);
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut buf = [0u8; 1];
        let got = nix::unistd::read(&read, &mut buf);
        assert_eq!(
            got,
            Err(nix::errno::Errno::EAGAIN),
            "the write end was closed"
        );
    }
}
