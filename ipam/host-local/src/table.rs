//! The lease table: what the network's directory held when an operation of this plugin last let
//! go of the lock, so that the next one need not list it (listing an ext4 directory hashes every
//! name in it, and a node of 250 pods has two such directories of 250 names).
//!
//! The table is trusted only while the directory's mtime is the one it records. The operation
//! that writes it sets the directory's mtime to a second before it ran, a value no later change
//! of the directory can give it: a lease created or removed by anyone else (the reference after
//! a rollback, an operator's `rm`, an operation of ours that died) moves the mtime and the next
//! operation lists the directory again. A table torn by a crash fails its checksum, with the
//! same effect. Markers are listed by name only and read on every operation: the reference
//! rewrites them in place, which does not change the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

pub const NAME: &str = "table";
const HEADER: &str = "rcni host-local lease table 1";

/// A directory's modification time, as `fstat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sec: i64,
    pub nsec: i64,
}

/// What a directory held: each lease file by name with its content (`None`: a name that
/// blocks its address but is not a readable lease), and the names of the markers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    pub leases: BTreeMap<String, Option<Vec<u8>>>,
    pub markers: BTreeSet<String>,
}

impl Table {
    pub fn encode(&self, stamp: Stamp) -> String {
        let mut text = format!("{HEADER}\nstamp {} {}\n", stamp.sec, stamp.nsec);
        for marker in &self.markers {
            let _ = writeln!(text, "marker {marker}");
        }
        for (name, content) in &self.leases {
            match content {
                Some(content) => {
                    let _ = write!(text, "lease {name} ");
                    escape(&mut text, content);
                    text.push('\n');
                }
                None => {
                    let _ = writeln!(text, "blocked {name}");
                }
            }
        }
        let sum = checksum(&text);
        let _ = writeln!(text, "sum {sum}");
        text
    }

    /// The table `text` records if it is whole and was written at `stamp`.
    pub fn decode(text: &str, stamp: Stamp) -> Option<Table> {
        let (body, sum) = text
            .strip_suffix('\n')?
            .rsplit_once('\n')
            .map(|(body, last)| (&text[..body.len() + 1], last))?;
        if sum.strip_prefix("sum ")? != checksum(body) {
            return None;
        }
        let mut lines = body.lines();
        if lines.next()? != HEADER || lines.next()? != format!("stamp {} {}", stamp.sec, stamp.nsec)
        {
            return None;
        }
        let mut table = Table::default();
        let mut leases = Vec::new();
        for line in lines {
            match line.split_once(' ')? {
                ("marker", name) => {
                    table.markers.insert(name.to_owned());
                }
                ("blocked", name) => leases.push((name.to_owned(), None)),
                ("lease", rest) => {
                    let (name, content) = rest.split_once(' ')?;
                    leases.push((name.to_owned(), Some(unescape(content)?)));
                }
                _ => return None,
            }
        }
        // Written in order: the map is built without a search per lease.
        table.leases = leases.into_iter().collect();
        Some(table)
    }
}

/// Lease content as written, but for spaces, control characters, `%` and non-ASCII bytes, which
/// are `%` and two hex digits.
fn escape(out: &mut String, content: &[u8]) {
    for &b in content {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b.into());
        } else {
            out.push('%');
            libcni::hash::push_hex(out, &[b]);
        }
    }
}

fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut content = Vec::with_capacity(text.len());
    let mut bytes = text.split('%');
    content.extend_from_slice(bytes.next()?.as_bytes());
    for escaped in bytes {
        let (hex, rest) = escaped.split_at_checked(2)?;
        content.extend(libcni::hash::unhex(hex)?);
        content.extend_from_slice(rest.as_bytes());
    }
    Some(content)
}

/// Only against a torn write: std's hasher may change with the compiler, and a table written by
/// another build of the plugin is then merely not trusted once.
fn checksum(text: &str) -> String {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(text.as_bytes());
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut table = Table::default();
        table
            .leases
            .insert("10.0.0.2".into(), Some(b"c1\r\neth0".to_vec()));
        table.leases.insert(
            "2001:db8::2".into(),
            Some(b"legacy id with spaces\n".to_vec()),
        );
        table.leases.insert("10.0.0.3".into(), None);
        table.markers.insert("last_reserved_ip.0".into());
        table
    }

    #[test]
    fn round_trips_only_at_its_stamp() {
        let stamp = Stamp {
            sec: 1_700_000_000,
            nsec: 123,
        };
        let text = sample().encode(stamp);
        assert_eq!(Table::decode(&text, stamp), Some(sample()));
        assert_eq!(Table::decode(&text, Stamp { nsec: 124, ..stamp }), None);
        assert_eq!(
            Table::decode(&Table::default().encode(stamp), stamp),
            Some(Table::default())
        );
    }

    #[test]
    fn a_torn_or_foreign_table_is_not_trusted() {
        let stamp = Stamp { sec: 5, nsec: 0 };
        let text = sample().encode(stamp);
        for cut in [0, 10, text.len() / 2, text.len() - 1] {
            assert_eq!(Table::decode(&text[..cut], stamp), None, "cut at {cut}");
        }
        let changed = text.replacen("10.0.0.2", "10.0.0.7", 1);
        assert_eq!(Table::decode(&changed, stamp), None);
        let older = Table::default().encode(stamp);
        let spliced = format!("{}{}", &text[..text.len() / 2], &older[older.len() / 2..]);
        assert_eq!(Table::decode(&spliced, stamp), None);
        assert_eq!(Table::decode("garbage\nsum x\n", stamp), None);
        assert_eq!(unescape("a%0d%0ab"), Some(b"a\r\nb".to_vec()));
        for bad in ["%4", "%zz", "a%"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
    }
}
