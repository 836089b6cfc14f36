//! The owner links, so that a scan need not read every lease: each lease this plugin writes or
//! reads also gets a hard link in `<network>/.owners/`, named `<ip>=<its content in hex>`.
//! A lease and its link share an inode, so one listing of each directory tells every lease's
//! owner; only leases without a link (written by the reference or by a release before this
//! index) are read, and are then linked.
//!
//! The reference reads the links as it reads the leases, and stays right: its walks descend
//! into `.owners`, its duplicate check skips names that are not addresses, and its DEL removes
//! every file holding the attachment's content, the link with its lease. A link whose lease is
//! gone (removed by a release of the reference that took only the address's name) matches no
//! lease's inode and is removed by the next scan.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

pub const DIR: &str = ".owners";
const NAME_MAX: usize = 255;

/// The link name for the lease file `lease` holding `content`; `None` when it would be longer
/// than a file name may be (such a lease is read on every scan, as the reference reads all).
pub fn name(lease: &str, content: &[u8]) -> Option<String> {
    let mut name = format!("{lease}=");
    if name.len() + 2 * content.len() > NAME_MAX {
        return None;
    }
    libcni::hash::push_hex(&mut name, content);
    Some(name)
}

/// The lease content the link `name` records if it is the link of lease `lease`.
pub fn content_for(name: &str, lease: &str) -> Option<Vec<u8>> {
    libcni::hash::unhex(name.strip_prefix(lease)?.strip_prefix('=')?)
}

/// The `.owners` directory of one network's store, opened without following a link.
pub struct Owners {
    dir: OwnedFd,
}

impl Owners {
    /// The index of the store whose directory is `store`, made if absent.
    pub fn open(store: impl AsFd) -> std::io::Result<Owners> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = match rustix::fs::openat(&store, DIR, flags, Mode::empty()) {
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&store, DIR, Mode::RWXU) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                rustix::fs::openat(&store, DIR, flags, Mode::empty())?
            }
            other => other?,
        };
        Ok(Owners { dir })
    }

    /// The name of every link by its inode.
    pub fn list(&self) -> std::io::Result<HashMap<u64, String>> {
        let mut links = HashMap::new();
        let mut listing = Dir::read_from(&self.dir)?;
        while let Some(entry) = listing.read() {
            let entry = entry?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "."
                || name == ".."
                || name == crate::table::NAME
                || !matches!(entry.file_type(), FileType::RegularFile | FileType::Unknown)
            {
                continue;
            }
            links.insert(entry.ino(), name.to_owned());
        }
        Ok(links)
    }

    /// Links `lease` (a name in `store`) as `name`; false when it could not be.
    pub fn link(&self, store: impl AsFd, lease: &str, name: &str) -> bool {
        rustix::fs::linkat(store, lease, &self.dir, name, AtFlags::empty()).is_ok()
    }

    /// Moves the file `from` of `store` (a lease's other name) here as `name`.
    pub fn adopt(&self, store: impl AsFd, from: &str, name: &str) -> bool {
        rustix::fs::renameat(store, from, &self.dir, name).is_ok()
    }

    /// The text of the lease table (see `table`); anything larger than a table of 100 000
    /// leases is not one of ours, and is not read to its end.
    pub fn read_table(&self) -> std::io::Result<String> {
        use std::io::Read;
        const MOST: u64 = 16 << 20;
        let mut text = String::new();
        std::fs::File::from(self.open_at(crate::table::NAME, OFlags::RDONLY)?)
            .take(MOST + 1)
            .read_to_string(&mut text)?;
        if text.len() as u64 > MOST {
            return Err(std::io::Error::other("the lease table is too large"));
        }
        Ok(text)
    }

    /// The lease table for writing, made if absent; an error when something else has its name.
    pub fn open_table(&self) -> std::io::Result<std::fs::File> {
        let file =
            std::fs::File::from(self.open_at(crate::table::NAME, OFlags::RDWR | OFlags::CREATE)?);
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other(
                "the lease table is not a regular file",
            ));
        }
        Ok(file)
    }

    /// A file of this directory, never through a link, and without waiting on a FIFO.
    fn open_at(&self, name: &str, flags: OFlags) -> std::io::Result<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        Ok(rustix::fs::openat(
            &self.dir,
            name,
            flags,
            Mode::RUSR | Mode::WUSR,
        )?)
    }

    pub fn remove(&self, name: &str) {
        let _ = rustix::fs::unlinkat(&self.dir, name, AtFlags::empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_stay_file_names() {
        let v6 = "2001:db8::1";
        let name = name(v6, b"c1\r\neth0").unwrap();
        assert_eq!(name, "2001:db8::1=63310d0a65746830");
        assert_eq!(
            content_for(&name, "2001:db8::1"),
            Some(b"c1\r\neth0".to_vec())
        );
        assert_eq!(content_for(&name, "2001:db8::"), None, "another lease's");
        assert_eq!(super::name(v6, &[b'x'; 130]), None, "too long for a name");
        assert!(super::name(v6, &[b'x'; 100]).is_some_and(|n| n.len() <= NAME_MAX));
        for bad in [
            "10.0.0.1",
            "10.0.0.1=6",
            "10.0.0.1=zz",
            "10.0.0.1=é0",
            "10.0.0.1=+f",
        ] {
            assert_eq!(content_for(bad, "10.0.0.1"), None, "{bad}");
        }
    }
}
