//! `/proc/sys` reads and writes. Network sysctls resolve against the namespace of the calling
//! thread, so container-side keys are written inside `Netns::run`.
//!
//! A lookup under /proc/sys/net walks one entry per network namespace on the node (each
//! namespace has its own `net/ipv4` and `net/ipv6` under the one parent): ~35 µs a path with
//! 250 pods, ~0.4 ms in a namespace whose links just changed. So a key is opened once, and
//! read and written through that one file. In a namespace just made (a container's) the
//! first lookup of each of `net/ipv4` and `net/ipv6` costs 0.3–0.4 ms with 250 pods, against
//! ~40 µs on an empty node: [`private`] looks those keys up in a procfs instance of this
//! process's own, where no other namespace has entries.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

use crate::kernel::deferred_close;
use crate::protocol::error::{Error, Result};

fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.trim_start_matches('/'))
}

/// A `sys` directory of procfs to look keys up in.
pub struct Tree {
    /// `None`: the node's /proc/sys.
    sys: Option<OwnedFd>,
}

/// This process's own procfs instance (mounted nowhere, made on first use, released by the
/// kernel after the process exits), or /proc/sys where procfs cannot be mounted (no
/// CAP_SYS_ADMIN, a kernel before 5.2, a security policy).
pub fn private() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| Tree {
        sys: mount_procfs().ok(),
    })
}

fn mount_procfs() -> std::io::Result<OwnedFd> {
    let fs = rustix::mount::fsopen("proc", FsOpenFlags::FSOPEN_CLOEXEC)?;
    rustix::mount::fsconfig_create(&fs)?;
    let root = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOEXEC
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV,
    )?;
    let sys = rustix::fs::openat(
        &root,
        "sys",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Unmounting at exit waits ~50 µs; the kernel does it in its own time instead.
    deferred_close::release(root.as_fd());
    Ok(sys)
}

impl Tree {
    /// Like the module's [`set_if_present`], looked up in this tree.
    pub fn set_if_present(&self, key: &str, value: &str) -> Result<()> {
        let Some(sys) = &self.sys else {
            return set_if_present(key, value);
        };
        let open = |write: bool| -> std::io::Result<File> {
            let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
            let key = key.trim_start_matches('/');
            let fd = rustix::fs::openat(sys, key, access | OFlags::CLOEXEC, Mode::empty())?;
            Ok(File::from(fd))
        };
        absent_is_fine(write_if_different(open, value), key, value)
    }
}

pub fn read(key: &str) -> Result<String> {
    std::fs::read_to_string(path(key))
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::internal(format!("cannot read sysctl {key}: {e}")))
}

/// Writes `value` unless the key already holds it (writing the same value is not always a
/// no-op: `ip_forward` resets every interface's forwarding, and a read-only `/proc/sys`
/// refuses it).
pub fn set(key: &str, value: &str) -> Result<()> {
    write_if_different(system(key), value)
        .map_err(|e| Error::internal(format!("cannot set sysctl {key}={value}: {e}")))
}

/// Like [`set`], for keys that may legitimately be absent (IPv6 disabled, module not loaded).
pub fn set_if_present(key: &str, value: &str) -> Result<()> {
    absent_is_fine(write_if_different(system(key), value), key, value)
}

fn absent_is_fine(done: std::io::Result<()>, key: &str, value: &str) -> Result<()> {
    match done {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        done => done.map_err(|e| Error::internal(format!("cannot set sysctl {key}={value}: {e}"))),
    }
}

/// Opens `key` under /proc/sys, for writing or only for reading.
fn system(key: &str) -> impl Fn(bool) -> std::io::Result<File> + '_ {
    move |write| File::options().read(true).write(write).open(path(key))
}

fn write_if_different(
    open: impl Fn(bool) -> std::io::Result<File>,
    value: &str,
) -> std::io::Result<()> {
    let mut file = match open(true) {
        Ok(file) => file,
        Err(e) if is_read_only(&e) => {
            // A read-only key or /proc/sys is fine when it already holds the value.
            let mut file = open(false)?;
            return if holds(&mut file, value)? {
                Ok(())
            } else {
                Err(e)
            };
        }
        Err(e) => return Err(e),
    };
    if holds(&mut file, value)? {
        return Ok(());
    }
    file.seek(SeekFrom::Start(0))?;
    file.write_all(value.as_bytes())
}

fn is_read_only(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EROFS | libc::EACCES | libc::EPERM)
    )
}

fn holds(file: &mut File, value: &str) -> std::io::Result<bool> {
    let mut current = String::new();
    file.read_to_string(&mut current)?;
    Ok(current.trim() == value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_key_is_fine_only_where_it_may_be_absent() {
        assert!(set_if_present("net/ipv4/conf/rcni-no-such-if/arp_notify", "1").is_ok());
        let e = set("net/ipv4/conf/rcni-no-such-if/arp_notify", "1").unwrap_err();
        assert!(e.msg.contains("rcni-no-such-if/arp_notify=1"), "{}", e.msg);
    }

    #[test]
    fn the_private_tree_finds_the_same_keys() {
        let tree = private();
        if rustix::process::geteuid().is_root() {
            assert!(tree.sys.is_some(), "root mounts a procfs of its own");
        }
        let current = read("kernel/osrelease").unwrap();
        tree.set_if_present("kernel/osrelease", &current).unwrap();
        assert!(
            tree.set_if_present("kernel/osrelease", "0.0.0-rcni")
                .is_err()
        );
        assert!(
            tree.set_if_present("net/ipv4/conf/rcni-no-such-if/arp_notify", "1")
                .is_ok()
        );
    }

    #[test]
    fn a_read_only_key_holding_the_value_is_set() {
        let current = read("kernel/osrelease").unwrap();
        set("kernel/osrelease", &current).unwrap();
        assert!(set("kernel/osrelease", "0.0.0-rcni").is_err());
    }
}
