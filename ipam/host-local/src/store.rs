//! The lease store, in the reference's on-disk layout so leases survive an upgrade or a
//! downgrade: under `<dataDir>/<network>/`, one file per leased address holding
//! `<containerID>\r\n<ifname>` (legacy files: just the ID), `last_reserved_ip.<set>`, and a
//! `lock` file that every operation holds (flock) from its first read to its last write.
//! File modes are the current reference's (since 1.4.0): leases and markers 0600, as they name
//! which container holds which address (Debian's 1.1.1 makes them 0644), lock 0750.
//! Beside them, `.owners/` (see `owners`) lets a scan learn the owners without reading leases,
//! and its `table` (see `table`) lets an operation skip the scan when nothing else changed the
//! directory since the last one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcni::kernel::lock;
use libcni::{Error, Result};

use crate::ip::canonical;
use crate::leases::{Leases, Owner};
use crate::owners::{self, Owners};
use crate::table::{Stamp, Table};

const LAST_RESERVED: &str = "last_reserved_ip.";
/// Leases and markers: readable by root only.
const FILE_MODE: u32 = 0o600;
const TEMP_MARK: &str = ".tmp.";
/// How long an operation waits for another one on the same network before giving up (code 11).
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// What an operation finds in the store.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub leases: Leases,
    pub last_reserved: HashMap<usize, IpAddr>,
}

/// The network's directory, locked for as long as this value lives.
pub struct Store {
    dir: PathBuf,
    dir_fd: File,
    owners: Owners,
    /// The owner link of each lease this operation has scanned or written.
    links: RefCell<HashMap<IpAddr, String>>,
    /// What the directory holds, as far as this operation knows: `None` before a scan and
    /// after anything it did went wrong, when the table is left untrusted.
    known: RefCell<Option<Known>>,
    _lock: File,
}

struct Known {
    table: Table,
    /// Whether the table on disk no longer says (or never said) what `table` does.
    changed: bool,
    /// False when a lease is named otherwise than we name its address, which the table's
    /// lookups by address would miss: such a store is always scanned.
    trustable: bool,
}

impl Store {
    /// Creates the directory if needed and takes the lock. Fails closed: no lock, no operation.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        // The skel admits only names matching ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$; check again here,
        // since the name becomes a path component.
        if !libcni::protocol::conf::valid_identifier(network) {
            return Err(Error::invalid_config(format!(
                "invalid network name {network:?}"
            )));
        }
        let dir = data_dir.join(network);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| {
                Error::io(format!(
                    "cannot create lease directory {}: {e}",
                    dir.display()
                ))
            })?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o750)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("cannot open lock {}: {e}", lock_path.display())))?;
        lock::lock_within(&lock, lock::Mode::Exclusive, LOCK_WAIT, &lock_path)?;
        let unusable = |e: std::io::Error| {
            Error::io(format!(
                "cannot open lease directory {}: {e}",
                dir.display()
            ))
        };
        let dir_fd = File::open(&dir).map_err(unusable)?;
        let owners = Owners::open(&dir_fd).map_err(unusable)?;
        Ok(Store {
            dir,
            dir_fd,
            owners,
            links: RefCell::default(),
            known: RefCell::default(),
            _lock: lock,
        })
    }

    /// Every lease and last-reserved marker: from the table when it is the directory's (see
    /// `table`), else from a scan of the directory.
    pub fn scan(&self) -> Result<Snapshot> {
        match self.trusted_table() {
            Some(table) => Ok(self.snapshot_of(table)),
            None => self.scan_directory(),
        }
    }

    fn trusted_table(&self) -> Option<Table> {
        let stamp = mtime(&self.dir_fd).ok()?;
        let text = self.owners.read_table().ok()?;
        Table::decode(&text, stamp)
    }

    /// The leases of `table`, and its markers read now.
    fn snapshot_of(&self, table: Table) -> Snapshot {
        let last_reserved = table
            .markers()
            .filter_map(|name| self.read_marker(name))
            .collect();
        *self.known.borrow_mut() = Some(Known {
            table: table.clone(),
            changed: false,
            trustable: true,
        });
        Snapshot {
            leases: Leases::Tabled(table),
            last_reserved,
        }
    }

    /// The range set and address of the last-reserved marker `name`, if it is one and reads.
    fn read_marker(&self, name: &str) -> Option<(usize, IpAddr)> {
        let set = marker_set(name)?;
        let ip = read_small(&self.dir_fd, name)?.trim().parse().ok()?;
        Some((set, canonical(ip)))
    }

    /// What this operation did to the directory, noted for the table; `None` forgets it all
    /// (something failed: the next operation scans).
    fn note(&self, change: Option<impl FnOnce(&mut Table)>) {
        let mut known = self.known.borrow_mut();
        match (known.as_mut(), change) {
            (Some(known), Some(change)) => {
                change(&mut known.table);
                known.changed = true;
            }
            _ => *known = None,
        }
    }

    /// Leaves the table saying what the directory holds, and then the directory's mtime at the
    /// table's stamp: an operation that dies before the stamp (or mid-write) leaves a table
    /// that is not trusted. A file system that keeps coarser times than the stamp's never
    /// trusts its table, and scans as before the table existed.
    fn save_table(&self) {
        let Some(known) = self.known.borrow_mut().take() else {
            return;
        };
        if !known.changed || !known.trustable {
            return;
        }
        let saved = self.owners.open_table().and_then(|file| {
            let stamp = a_second_ago()?;
            overwrite(&file, known.table.encode(stamp).as_bytes())?;
            set_mtime(&self.dir_fd, stamp)
        });
        if let Err(e) = saved {
            eprintln!("host-local: warning: cannot save the lease table: {e}");
        }
    }

    /// Lists every lease and reads every last-reserved marker in one pass, the owners from
    /// their links (see `owners`): only a lease without one is read, and then linked. Removes
    /// temp files left by an operation that died (none can be in progress: we hold the lock)
    /// and links whose lease is gone.
    pub fn scan_directory(&self) -> Result<Snapshot> {
        use std::os::unix::fs::DirEntryExt;
        let mut leases = HashMap::new();
        let mut last_reserved = HashMap::new();
        let mut table = Table::default();
        let mut trustable = true;
        let unreadable = |e: std::io::Error| {
            Error::io(format!(
                "cannot read lease directory {}: {e}",
                self.dir.display()
            ))
        };
        let mut links = self.owners.list().map_err(unreadable)?;
        let mut unlinked: Vec<(String, IpAddr, String)> = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(unreadable)?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.contains(TEMP_MARK) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            // Only regular files are read: never follow a link out of the directory. Anything
            // else named like an address (a planted symlink) keeps that address from being
            // handed out, as the reference's O_EXCL create would.
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                if let Ok(ip) = name.parse::<IpAddr>().map(canonical) {
                    leases.insert(ip, Owner::Legacy(String::new()));
                    table.push_lease(name, None);
                    trustable &= ip.to_string() == name;
                }
                continue;
            }
            if marker_set(name).is_some() {
                if let Some((set, ip)) = self.read_marker(name) {
                    last_reserved.insert(set, ip);
                }
                table.add_marker(name);
            } else if let Ok(ip) = name.parse::<IpAddr>() {
                let ip = canonical(ip);
                trustable &= ip.to_string() == name;
                let link = links.remove(&entry.ino());
                let content = match link.and_then(|link| self.linked_content(ip, name, link)) {
                    Some(content) => Some(content),
                    None => read_small(&self.dir_fd, name).map(|content| {
                        unlinked.push((name.to_owned(), ip, content.clone()));
                        content.into_bytes()
                    }),
                };
                // A lease whose file cannot be read still blocks its address.
                leases.insert(ip, Owner::of_content(content.as_deref()));
                table.push_lease(name, content.as_deref());
            }
        }
        for orphan in links.into_values() {
            self.owners.remove(&orphan);
        }
        for (lease, ip, content) in unlinked {
            if let Some(link) = owners::name(&lease, content.as_bytes())
                && !content.trim().is_empty()
                && self.owners.link(&self.dir_fd, &lease, &link)
            {
                self.links.borrow_mut().insert(ip, link);
            }
        }
        *self.known.borrow_mut() = Some(Known {
            table,
            changed: true,
            trustable,
        });
        Ok(Snapshot {
            leases: Leases::Listed(leases),
            last_reserved,
        })
    }

    /// The lease content that `link` (the owner link with the inode of lease file `lease`)
    /// records; `None`, the link removed, when it is not that lease's.
    fn linked_content(&self, ip: IpAddr, lease: &str, link: String) -> Option<Vec<u8>> {
        let Some(content) = owners::content_for(&link, lease) else {
            self.owners.remove(&link);
            return None;
        };
        self.links.borrow_mut().insert(ip, link);
        Some(content)
    }

    /// Writes the lease for `ip`, complete or not at all: the content goes to a temp file that is
    /// then hard-linked to the address's name, which fails if the address is taken, and then
    /// becomes the lease's owner link.
    pub fn reserve(&self, ip: IpAddr, id: &str, ifname: &str) -> Result<bool> {
        let ip = canonical(ip);
        let content = format!("{}\r\n{ifname}", id.trim());
        let reserved = self.write_lease(ip, &content);
        // An address the allocator took for free was not: the table (or the scan) was wrong.
        self.note(matches!(reserved, Ok(true)).then(|| {
            |table: &mut Table| table.add_lease(&ip.to_string(), Some(content.as_bytes()))
        }));
        reserved
    }

    fn write_lease(&self, ip: IpAddr, content: &str) -> Result<bool> {
        let target = self.lease_path(ip);
        let tmp = self.write_temp(&ip.to_string(), content.as_bytes())?;
        let linked = std::fs::hard_link(&tmp, &target);
        if linked.is_err() || !self.keep_as_owner_link(&tmp, ip, content) {
            let _ = std::fs::remove_file(&tmp);
        }
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(format!(
                "cannot write lease {}: {e}",
                target.display()
            ))),
        }
    }

    /// Moves `tmp`, now also lease `ip`'s file, into the owner links; false when it stays.
    fn keep_as_owner_link(&self, tmp: &Path, ip: IpAddr, content: &str) -> bool {
        let (Some(link), Some(tmp_name)) = (
            owners::name(&ip.to_string(), content.as_bytes()),
            tmp.file_name().and_then(|n| n.to_str()),
        ) else {
            return false;
        };
        let moved = self.owners.adopt(&self.dir_fd, tmp_name, &link);
        if moved {
            self.links.borrow_mut().insert(ip, link);
        }
        moved
    }

    /// Records the round-robin position of range set `set`, over the old one in place: a file
    /// replaced by rename has its blocks freed, which on a `discard` mount waits for the device
    /// (~0.17 ms an ADD here). A torn write leaves a position that reads as another address or
    /// as none, where allocation merely starts (the reference's truncating write risks the
    /// same). Anything there but a regular file is replaced (temp file + rename).
    pub fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<()> {
        let name = format!("{LAST_RESERVED}{set}");
        let content = ip.to_string();
        let cannot = |e: std::io::Error| Error::io(format!("cannot write {name}: {e}"));
        let written = match self.open_marker(&name).map_err(cannot) {
            Ok(Some(file)) => overwrite(&file, content.as_bytes()).map_err(cannot),
            Ok(None) => self.replace(&name, content.as_bytes()),
            Err(e) => Err(e),
        };
        self.note(
            written
                .is_ok()
                .then_some(|table: &mut Table| table.add_marker(&name)),
        );
        written
    }

    /// The marker `name` for writing, made if absent; `None` when something else has the name.
    fn open_marker(&self, name: &str) -> std::io::Result<Option<File>> {
        use std::os::unix::fs::PermissionsExt;
        let opened = OpenOptions::new()
            .write(true)
            .create(true)
            .mode(FILE_MODE)
            // A FIFO must not block the open; a link is not followed out of the directory.
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(self.dir.join(name));
        let file = match opened {
            Ok(file) => file,
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ELOOP | nix::libc::ENXIO)) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(None);
        }
        // One written by Debian's reference (0644) becomes ours (0600).
        if meta.permissions().mode() & 0o777 != FILE_MODE {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
        Ok(Some(file))
    }

    fn replace(&self, name: &str, content: &[u8]) -> Result<()> {
        let tmp = self.write_temp(name, content)?;
        std::fs::rename(&tmp, self.dir.join(name)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("cannot write {name}: {e}"))
        })
    }

    /// The owner link of lease `ip`: as scanned or written, else as the table names its lease.
    fn link_of(&self, ip: IpAddr) -> Option<String> {
        if let Some(link) = self.links.borrow_mut().remove(&ip) {
            return Some(link);
        }
        let known = self.known.borrow();
        let name = ip.to_string();
        let content = known.as_ref()?.table.lease(&name)??;
        owners::name(&name, &content)
    }

    /// Removes the lease of `ip`, then its owner link.
    pub fn release(&self, ip: IpAddr) -> Result<()> {
        let ip = canonical(ip);
        let path = self.lease_path(ip);
        let removed = match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io(format!(
                "cannot remove lease {}: {e}",
                path.display()
            ))),
            _ => {
                if let Some(link) = self.link_of(ip) {
                    self.owners.remove(&link);
                }
                Ok(())
            }
        };
        self.note(
            removed
                .is_ok()
                .then_some(|table: &mut Table| table.remove_lease(&ip.to_string())),
        );
        removed
    }

    /// The one place a lease's file name is made: an IPv4-mapped IPv6 address is its IPv4
    /// address, as `scan` reads names back (and as Go's `net.IP.String` prints them).
    fn lease_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(canonical(ip).to_string())
    }

    fn write_temp(&self, name: &str, content: &[u8]) -> Result<PathBuf> {
        let (tmp, mut file) =
            libcni::kernel::temp_file::create(&self.dir, &format!(".{name}{TEMP_MARK}"), FILE_MODE)
                .map_err(|e| {
                    Error::io(format!("cannot create a temporary file for {name}: {e}"))
                })?;
        match file.write_all(content) {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(Error::io(format!("cannot write {}: {e}", tmp.display())))
            }
        }
    }
}

impl Drop for Store {
    /// Before the lock goes.
    fn drop(&mut self) {
        self.save_table();
    }
}

/// The range set a last-reserved marker named `name` is for.
fn marker_set(name: &str) -> Option<usize> {
    name.strip_prefix(LAST_RESERVED)?.parse().ok()
}

fn mtime(dir: &File) -> std::io::Result<Stamp> {
    let stat = rustix::fs::fstat(dir)?;
    Ok(Stamp {
        sec: stat.st_mtime,
        nsec: stat.st_mtime_nsec as i64,
    })
}

/// A time no change of a directory made from now on gives it.
fn a_second_ago() -> std::io::Result<Stamp> {
    let ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(std::io::Error::other)?
        .saturating_sub(Duration::from_secs(1));
    Ok(Stamp {
        sec: ago.as_secs() as i64,
        nsec: ago.subsec_nanos().into(),
    })
}

fn set_mtime(dir: &File, stamp: Stamp) -> std::io::Result<()> {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: stamp.sec,
            tv_nsec: stamp.nsec,
        },
    };
    Ok(rustix::fs::futimens(dir, &times)?)
}

/// `content` from the start of `file`, its length cut to it.
fn overwrite(file: &File, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(content, 0)?;
    file.set_len(content.len() as u64)
}

/// A lease or marker file of the directory, opened relative to it and never through a link
/// (a name swapped for a symlink after the listing is not followed). Such files hold a few
/// dozen bytes: one read usually ends them, with no size lookup first (a scan reads hundreds).
fn read_small(dir: &File, name: &str) -> Option<String> {
    use nix::fcntl::{OFlag, openat};
    use std::io::Read;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = openat(dir, name, flags, nix::sys::stat::Mode::empty()).ok()?;
    let mut file = File::from(fd);
    let mut content = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if n < buf.len() && content.is_empty() => {
                content.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(n) => content.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(String::from_utf8_lossy(&content).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::LeaseView;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reserve_scan_release() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(store.reserve(ip, "c1", "eth0").unwrap());
        assert!(!store.reserve(ip, "c2", "eth0").unwrap(), "taken");
        store.set_last_reserved(0, ip).unwrap();
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(store.reserve(v6, "c1", "eth0").unwrap());
        std::fs::write(dir.path().join("net/.10.0.0.9.tmp.1"), "junk").unwrap();
        std::fs::write(dir.path().join("net/10.0.0.7"), "legacy-id").unwrap();

        assert_eq!(
            std::fs::read(dir.path().join("net/10.0.0.2")).unwrap(),
            b"c1\r\neth0"
        );
        assert_eq!(
            std::fs::read(dir.path().join("net/2001:db8::2")).unwrap(),
            b"c1\r\neth0"
        );
        assert_eq!(
            std::fs::read(dir.path().join("net/last_reserved_ip.0")).unwrap(),
            b"10.0.0.2"
        );
        for written in ["10.0.0.2", "2001:db8::2", "last_reserved_ip.0"] {
            let mode = std::fs::metadata(dir.path().join("net").join(written))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{written}: {mode:o}");
        }
        let snap = store.scan().unwrap();
        assert_eq!(snap.leases.all().len(), 3);
        assert_eq!(
            snap.leases.all()[&"10.0.0.7".parse::<IpAddr>().unwrap()],
            Owner::Legacy("legacy-id".into())
        );
        assert_eq!(snap.last_reserved[&0], ip);
        assert!(
            !dir.path().join("net/.10.0.0.9.tmp.1").exists(),
            "stale temp file removed"
        );
        store.release(ip).unwrap();
        store.release(ip).unwrap();
        assert_eq!(store.scan().unwrap().leases.all().len(), 2);
    }

    #[test]
    fn owners_come_from_links_and_a_lease_without_one_is_read_then_linked() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("net");
        let ino = |name: &str| std::fs::metadata(net.join(name)).unwrap().ino();
        let owner = |id: &str| Owner::Attachment {
            id: id.into(),
            ifname: "eth0".into(),
        };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let store = Store::open(dir.path(), "net").unwrap();
        assert!(store.reserve(a, "c1", "eth0").unwrap());
        assert_eq!(ino("10.0.0.2"), ino(".owners/10.0.0.2=63310d0a65746830"));
        assert_eq!(
            std::fs::read_dir(&net).unwrap().count(),
            3,
            "no temp file left"
        );
        drop(store);

        // The reference's lease: read once, then linked.
        std::fs::write(net.join("10.0.0.3"), "c2\r\neth0").unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        assert_eq!(store.scan().unwrap().leases.all()[&b], owner("c2"));
        assert_eq!(ino("10.0.0.3"), ino(".owners/10.0.0.3=63320d0a65746830"));
        drop(store);

        // Its address released by name only and leased again: the old link matches no lease's
        // inode, so the new lease is read, and the old link goes.
        std::fs::remove_file(net.join("10.0.0.3")).unwrap();
        std::fs::write(net.join("10.0.0.3"), "c3\r\neth0").unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        let snap = store.scan().unwrap();
        assert_eq!(
            (&snap.leases.all()[&a], &snap.leases.all()[&b]),
            (&owner("c1"), &owner("c3"))
        );
        let links: Vec<String> = std::fs::read_dir(net.join(".owners"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != crate::table::NAME)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            links,
            ["10.0.0.2=63310d0a65746830", "10.0.0.3=63330d0a65746830"]
        );

        store.release(a).unwrap();
        store.release(b).unwrap();
        assert_eq!(link_count(&net), 0);
        drop(store);

        // A lease named otherwise than we name addresses keeps one link, named for its file.
        std::fs::write(net.join("::ffff:10.0.0.9"), "c4\r\neth0").unwrap();
        for _ in 0..2 {
            let store = Store::open(dir.path(), "net").unwrap();
            let v4: IpAddr = "10.0.0.9".parse().unwrap();
            assert_eq!(store.scan().unwrap().leases.all()[&v4], owner("c4"));
        }
        let link = "::ffff:10.0.0.9=63340d0a65746830";
        assert_eq!(ino("::ffff:10.0.0.9"), ino(&format!(".owners/{link}")));
        assert_eq!(link_count(&net), 1);
    }

    fn link_count(net: &Path) -> usize {
        std::fs::read_dir(net.join(".owners"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != crate::table::NAME)
            .count()
    }

    /// Sets the directory's mtime back to what the table records, as if nothing had changed.
    fn hide_change(net: &Path, stamp: Stamp) {
        set_mtime(&File::open(net).unwrap(), stamp).unwrap();
    }

    #[test]
    fn the_table_is_trusted_only_while_the_directory_is_as_it_left_it() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("net");
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let store = Store::open(dir.path(), "net").unwrap();
        store.scan().unwrap();
        assert!(store.reserve(ip("10.0.0.2"), "c1", "eth0").unwrap());
        store.set_last_reserved(0, ip("10.0.0.2")).unwrap();
        drop(store);
        let stamp = mtime(&File::open(&net).unwrap()).unwrap();
        let text = std::fs::read_to_string(net.join(".owners/table")).unwrap();
        assert!(Table::decode(&text, stamp).is_some(), "{text}");

        // A leftover a scan would remove, hidden from the mtime: the table is used, not a scan.
        std::fs::write(net.join(".10.0.0.9.tmp.1"), "junk").unwrap();
        hide_change(&net, stamp);
        let store = Store::open(dir.path(), "net").unwrap();
        let snap = store.scan().unwrap();
        assert_eq!(snap.leases.all().len(), 1);
        assert_eq!(snap.last_reserved[&0], ip("10.0.0.2"));
        assert!(net.join(".10.0.0.9.tmp.1").exists(), "no scan");
        // What the operation does goes into the table: the next one knows it without a scan.
        assert!(store.reserve(ip("10.0.0.3"), "c2", "eth0").unwrap());
        store.release(ip("10.0.0.2")).unwrap();
        drop(store);
        let stamp = mtime(&File::open(&net).unwrap()).unwrap();
        std::fs::write(net.join(".10.0.0.8.tmp.1"), "junk").unwrap();
        hide_change(&net, stamp);
        let store = Store::open(dir.path(), "net").unwrap();
        let leases = store.scan().unwrap().leases.all();
        assert_eq!(leases.keys().collect::<Vec<_>>(), [&ip("10.0.0.3")]);
        assert!(net.join(".10.0.0.8.tmp.1").exists(), "no scan");
        drop(store);

        // A lease another writer adds, or removes, moves the mtime: the next operation scans.
        std::fs::write(net.join("10.0.0.4"), "c3\r\neth0").unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        assert_eq!(store.scan().unwrap().leases.all().len(), 2);
        assert!(!net.join(".10.0.0.8.tmp.1").exists(), "scanned");
        drop(store);
        std::fs::remove_file(net.join("10.0.0.4")).unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        assert_eq!(store.scan().unwrap().leases.all().len(), 1);
        drop(store);

        // A torn table is not trusted either.
        let stamp = mtime(&File::open(&net).unwrap()).unwrap();
        let text = std::fs::read_to_string(net.join(".owners/table")).unwrap();
        std::fs::write(net.join(".10.0.0.7.tmp.1"), "junk").unwrap();
        std::fs::write(net.join(".owners/table"), &text[..text.len() - 3]).unwrap();
        hide_change(&net, stamp);
        let store = Store::open(dir.path(), "net").unwrap();
        assert_eq!(store.scan().unwrap().leases.all().len(), 1);
        assert!(!net.join(".10.0.0.7.tmp.1").exists(), "scanned");
    }

    #[test]
    fn a_trusted_table_answers_as_the_listing_does() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("net");
        std::fs::create_dir_all(&net).unwrap();
        for (name, content) in [
            ("10.0.0.2", "c1\r\neth0"),
            ("10.0.0.3", "c1\r\neth1"),
            ("10.0.0.4", "c10\r\neth0"),
            ("10.0.0.5", "c1"),
            ("10.0.0.6", " c1 \r\n eth0 \n"),
            ("2001:db8::2", "c1\r\neth0"),
        ] {
            std::fs::write(net.join(name), content).unwrap();
        }
        std::os::unix::fs::symlink("/nonexistent", net.join("10.0.0.7")).unwrap();
        let listed = Store::open(dir.path(), "net").unwrap().scan().unwrap();
        assert!(matches!(listed.leases, Leases::Listed(_)));
        let tabled = Store::open(dir.path(), "net").unwrap().scan().unwrap();
        assert!(matches!(tabled.leases, Leases::Tabled(_)));

        assert_eq!(listed.leases.all(), tabled.leases.all());
        for n in 1..=8 {
            let ip: IpAddr = format!("10.0.0.{n}").parse().unwrap();
            assert_eq!(listed.leases.owner(ip), tabled.leases.owner(ip), "{ip}");
        }
        for id in ["c1", "c10", "c", "1", "eth0", ""] {
            let sorted = |leases: &Leases| {
                let mut found = leases.of_container(id);
                found.sort_by_key(|(ip, _)| crate::ip::to_u128(*ip));
                found
            };
            assert_eq!(sorted(&listed.leases), sorted(&tabled.leases), "{id}");
        }
        assert_eq!(tabled.leases.of_container("c1").len(), 5);
    }

    #[test]
    fn an_operation_that_fails_leaves_the_table_untrusted() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("net");
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        drop(Store::open(dir.path(), "net").map(|s| s.scan().map(|_| ())));
        // A lease the table does not know, the change hidden: the reserve finds it taken.
        let stamp = mtime(&File::open(&net).unwrap()).unwrap();
        std::fs::write(net.join("10.0.0.2"), "c9\r\neth0").unwrap();
        hide_change(&net, stamp);
        let store = Store::open(dir.path(), "net").unwrap();
        assert!(
            store.scan().unwrap().leases.all().is_empty(),
            "table trusted"
        );
        assert!(!store.reserve(ip, "c1", "eth0").unwrap());
        drop(store);
        let store = Store::open(dir.path(), "net").unwrap();
        assert_eq!(
            store.scan().unwrap().leases.all()[&ip],
            Owner::parse("c9\r\neth0"),
            "scanned"
        );
    }

    #[test]
    fn the_last_reserved_marker_is_written_in_place_and_anything_else_replaced() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "net").unwrap();
        let marker = dir.path().join("net/last_reserved_ip.0");
        std::fs::write(&marker, "10.0.0.100").unwrap();
        std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o644)).unwrap();
        let inode = std::fs::metadata(&marker).unwrap().ino();
        store
            .set_last_reserved(0, "10.0.0.9".parse().unwrap())
            .unwrap();
        let meta = std::fs::metadata(&marker).unwrap();
        assert_eq!(std::fs::read(&marker).unwrap(), b"10.0.0.9");
        assert_eq!((meta.ino(), meta.mode() & 0o777), (inode, 0o600));

        let outside = dir.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        std::fs::remove_file(&marker).unwrap();
        std::os::unix::fs::symlink(&outside, &marker).unwrap();
        store
            .set_last_reserved(0, "10.0.0.10".parse().unwrap())
            .unwrap();
        assert_eq!(
            std::fs::read(&outside).unwrap(),
            b"keep",
            "no link followed"
        );
        assert!(std::fs::symlink_metadata(&marker).unwrap().is_file());

        std::fs::remove_file(&marker).unwrap();
        nix::unistd::mkfifo(&marker, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        store
            .set_last_reserved(0, "10.0.0.11".parse().unwrap())
            .unwrap();
        assert_eq!(
            std::fs::read(&marker).unwrap(),
            b"10.0.0.11",
            "FIFO replaced"
        );
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = Store::open(dir.path(), "net").unwrap();
        let other = File::open(dir.path().join("net/lock")).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(held);
        assert!(other.try_lock().is_ok());
    }

    #[test]
    fn refuses_names_that_leave_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "a/b", ".hidden", ""] {
            assert!(Store::open(dir.path(), bad).is_err(), "{bad}");
        }
    }
}
