//! Network namespaces: open a path safely, and enter one on the current thread with a guard
//! that always brings the thread back.

use std::fs::{File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, PROC_SUPER_MAGIC, fstatfs};

use crate::protocol::error::{Code, Error};

/// `/proc/thread-self`, not `/proc/self`: the latter is the thread-group leader's namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";
/// `NS_GET_NSTYPE` from `<linux/nsfs.h>`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("netns path {0:?} does not exist")]
    NotExist(PathBuf),
    #[error("{0:?} is not a network namespace")]
    NotNetns(PathBuf),
    #[error("cannot open netns {0:?}: {1}")]
    Io(PathBuf, io::Error),
    #[error("cannot enter netns {0:?}: {1}")]
    Enter(PathBuf, io::Error),
}

/// The one place a namespace failure gets its spec code.
impl From<NetnsError> for Error {
    fn from(e: NetnsError) -> Error {
        let code = match e {
            NetnsError::NotExist(_) => Code::UnknownContainer,
            NetnsError::NotNetns(_) => Code::InvalidEnv,
            NetnsError::Io(..) | NetnsError::Enter(..) => Code::Internal,
        };
        Error::new(code, e.to_string())
    }
}

#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens a network namespace by path. Only nsfs (bind mounts, `/proc/<pid>/ns/net` links)
    /// and procfs are accepted, and the namespace must be a network namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns, NetnsError> {
        let path = path.as_ref().to_path_buf();
        // O_PATH opens nothing: a FIFO does not wait for a writer, a device node sees no open.
        // Only a file on nsfs or procfs is then opened for real, through its O_PATH handle.
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR) => NetnsError::NotExist(path.clone()),
                _ => NetnsError::Io(path.clone(), e),
            })?;
        let fs = fstatfs(&handle).map_err(|e| NetnsError::Io(path.clone(), e.into()))?;
        if fs.filesystem_type() != NSFS_MAGIC && fs.filesystem_type() != PROC_SUPER_MAGIC {
            return Err(NetnsError::NotNetns(path));
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(format!("/proc/thread-self/fd/{}", handle.as_raw_fd()))
            .map_err(|e| NetnsError::Io(path.clone(), e))?;
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd's namespace type.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(NetnsError::NotNetns(path));
        }
        Ok(Netns { file, path })
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> Result<Netns, NetnsError> {
        Netns::open(THREAD_NETNS)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is the namespace the calling thread runs in.
    pub fn is_current(&self) -> io::Result<bool> {
        let mine = std::fs::metadata(THREAD_NETNS)?;
        let this = self.file.metadata()?;
        Ok(mine.dev() == this.dev() && mine.ino() == this.ino())
    }

    /// Switches the calling thread into this namespace until the guard is dropped.
    /// Never hold the guard across an `.await`.
    pub fn enter(&self) -> Result<NetnsGuard, NetnsError> {
        let cannot = |e: io::Error| NetnsError::Enter(self.path.clone(), e);
        let home = File::open(THREAD_NETNS).map_err(cannot)?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| cannot(e.into()))?;
        Ok(NetnsGuard {
            home,
            _not_send: PhantomData,
        })
    }

    /// Runs `f` with the calling thread inside this namespace; failing to get there is one
    /// more error of the same type as `f`'s.
    pub fn run<T>(&self, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        let _guard = self.enter()?;
        f()
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Returns the thread to the namespace it came from. The guard is `!Send`: a thread can only
/// restore itself.
pub struct NetnsGuard {
    home: File,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
            // A thread stuck in the container namespace would do host work in the wrong place.
            eprintln!("fatal: cannot return to the original network namespace");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_missing_and_non_namespace_paths() {
        assert!(matches!(
            Netns::open("/nonexistent/netns"),
            Err(NetnsError::NotExist(_))
        ));
        assert!(matches!(
            Netns::open("/etc/hostname"),
            Err(NetnsError::NotNetns(_))
        ));
        assert!(matches!(
            Netns::open("/proc/self/ns/uts"),
            Err(NetnsError::NotNetns(_))
        ));
    }

    #[test]
    fn a_fifo_or_directory_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(Netns::open(&fifo), Err(NetnsError::NotNetns(_))));
        assert!(matches!(
            Netns::open(dir.path()),
            Err(NetnsError::NotNetns(_))
        ));
        assert!(matches!(
            Netns::open(dir.path().join("fifo/below")),
            Err(NetnsError::NotExist(_))
        ));
        assert!(matches!(Netns::open("/proc"), Err(NetnsError::NotNetns(_))));
    }

    #[test]
    fn run_returns_what_f_returns_in_one_result() {
        let ns = Netns::current().unwrap();
        assert_eq!(ns.run(|| Ok(ns.is_current().unwrap())), Ok(true));
        let e = ns.run(|| -> Result<(), Error> { Err(Error::io("x")) });
        assert_eq!(e.unwrap_err().code, Code::Io);
    }

    #[test]
    fn current_is_current() {
        let ns = Netns::current().unwrap();
        assert!(ns.is_current().unwrap());
    }
}
