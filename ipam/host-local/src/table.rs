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
//!
//! An operation neither parses nor rewrites the whole table: it looks up the lines it needs in
//! the text and splices its own lines in and out, so its cost is a few passes over a few dozen
//! kilobytes whatever the number of leases.

use std::fmt::Write;

pub const NAME: &str = "table";
const HEADER: &str = "rcni host-local lease table 3";

/// A directory's modification time, as `fstat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sec: i64,
    pub nsec: i64,
}

/// The lines of a table: `marker <name>`, `lease <name> <content, escaped>` and
/// `blocked <name>` (a name that blocks its address but is not a readable lease), after a
/// newline and each ended by one, so that a line or its start is found by searching for it
/// between newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    body: String,
}

impl Default for Table {
    fn default() -> Table {
        Table { body: "\n".into() }
    }
}

impl Table {
    pub fn encode(&self, stamp: Stamp) -> String {
        let mut text = format!("{HEADER}\nstamp {} {}", stamp.sec, stamp.nsec);
        text.push_str(&self.body);
        let sum = checksum(&text);
        let _ = writeln!(text, "sum {sum}");
        text
    }

    /// The table `text` records if it is whole and was written at `stamp`.
    pub fn decode(text: &str, stamp: Stamp) -> Option<Table> {
        let (signed, sum) = text.strip_suffix('\n')?.rsplit_once('\n')?;
        let signed = &text[..signed.len() + 1];
        if sum.strip_prefix("sum ")? != checksum(signed) {
            return None;
        }
        let body = signed
            .strip_prefix(HEADER)?
            .strip_prefix(&format!("\nstamp {} {}", stamp.sec, stamp.nsec))?;
        body.starts_with('\n').then(|| Table { body: body.into() })
    }

    pub fn add_lease(&mut self, name: &str, content: Option<&[u8]>) {
        self.remove_lease(name);
        self.push_lease(name, content);
    }

    /// `add_lease` for a name the table does not hold yet (a directory's listing).
    pub fn push_lease(&mut self, name: &str, content: Option<&[u8]>) {
        match content {
            Some(content) => {
                let _ = write!(self.body, "lease {name} ");
                escape(&mut self.body, content);
                self.body.push('\n');
            }
            None => {
                let _ = writeln!(self.body, "blocked {name}");
            }
        }
    }

    pub fn remove_lease(&mut self, name: &str) {
        for line in [format!("\nlease {name} "), format!("\nblocked {name}\n")] {
            if let Some((start, end)) = self.find_line(&line) {
                let past = (end + 1).min(self.body.len());
                self.body.replace_range(start..past, "");
            }
        }
    }

    pub fn add_marker(&mut self, name: &str) {
        if self.find_line(&format!("\nmarker {name}\n")).is_none() {
            let _ = writeln!(self.body, "marker {name}");
        }
    }

    pub fn markers(&self) -> impl Iterator<Item = &str> {
        self.lines().filter_map(|line| line.strip_prefix("marker "))
    }

    /// The lease named `name`: its content, or `Some(None)` when the name only blocks its
    /// address.
    pub fn lease(&self, name: &str) -> Option<Option<Vec<u8>>> {
        if let Some((start, end)) = self.find_line(&format!("\nlease {name} ")) {
            return Some(parse_lease(&self.body[start..end]).and_then(|(_, content)| content));
        }
        self.find_line(&format!("\nblocked {name}\n")).map(|_| None)
    }

    /// Every lease whose content holds `needle` (as bytes), by name, each once.
    pub fn leases_holding(&self, needle: &[u8]) -> Vec<(&str, Vec<u8>)> {
        let mut needle_text = String::new();
        escape(&mut needle_text, needle);
        let mut found = Vec::new();
        let mut searched = 1;
        while let Some(at) = self.body[searched..].find(&needle_text) {
            let start = self.body[..searched + at]
                .rfind('\n')
                .map_or(0, |nl| nl + 1);
            let end = self.line_end(start);
            if let Some((name, Some(content))) = parse_lease(&self.body[start..end])
                && (needle.is_empty() || content.windows(needle.len()).any(|w| w == needle))
            {
                found.push((name, content));
            }
            searched = end + 1;
            if searched >= self.body.len() {
                break;
            }
        }
        found
    }

    /// Every lease and blocked name, with its content.
    pub fn all(&self) -> Vec<(&str, Option<Vec<u8>>)> {
        self.lines().filter_map(parse_lease).collect()
    }

    fn lines(&self) -> impl Iterator<Item = &str> {
        self.body[1..].split_terminator('\n')
    }

    /// The first and the ending newline's index of the line that `line` (a newline and the
    /// line's start, or the whole line between newlines) finds.
    fn find_line(&self, line: &str) -> Option<(usize, usize)> {
        let start = self.body.find(line)? + 1;
        Some((start, self.line_end(start)))
    }

    /// The index of the newline that ends the line starting at `start`.
    fn line_end(&self, start: usize) -> usize {
        self.body[start..]
            .find('\n')
            .map_or(self.body.len(), |at| start + at)
    }
}

/// A `lease` or `blocked` line's name and content; `None` for any other line. A lease line
/// whose content does not decode blocks its address.
fn parse_lease(line: &str) -> Option<(&str, Option<Vec<u8>>)> {
    if let Some(name) = line.strip_prefix("blocked ") {
        return Some((name, None));
    }
    let (name, content) = line.strip_prefix("lease ")?.split_once(' ')?;
    Some((name, unescape(content)))
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
        table.add_lease("10.0.0.2", Some(b"c1\r\neth0"));
        table.add_lease("2001:db8::2", Some(b"legacy id with spaces\n"));
        table.add_lease("10.0.0.3", None);
        table.add_lease("10.0.0.4", Some("100% é\r\n%41".as_bytes()));
        table.add_marker("last_reserved_ip.0");
        table.add_marker("last_reserved_ip.0");
        table
    }

    #[test]
    fn lines_are_found_added_and_removed_by_name() {
        let mut table = sample();
        assert_eq!(table.lease("10.0.0.2"), Some(Some(b"c1\r\neth0".to_vec())));
        assert_eq!(table.lease("10.0.0.3"), Some(None));
        assert_eq!(
            table.lease("10.0.0.4"),
            Some(Some("100% é\r\n%41".as_bytes().to_vec()))
        );
        assert_eq!(table.lease("10.0.0.20"), None, "not a prefix match");
        assert_eq!(table.lease("10.0.0.1"), None);
        assert_eq!(table.markers().collect::<Vec<_>>(), ["last_reserved_ip.0"]);
        assert_eq!(table.all().len(), 4);

        table.add_lease("10.0.0.20", Some(b"c2\r\neth0"));
        table.remove_lease("10.0.0.2");
        table.remove_lease("10.0.0.3");
        assert_eq!(
            (table.lease("10.0.0.2"), table.lease("10.0.0.3")),
            (None, None)
        );
        assert_eq!(table.lease("10.0.0.20"), Some(Some(b"c2\r\neth0".to_vec())));
        table.add_lease("10.0.0.20", Some(b"c3\r\neth0"));
        assert_eq!(table.all().len(), 3, "replaced, not added");
    }

    #[test]
    fn leases_are_found_by_what_they_hold() {
        let mut table = sample();
        table.add_lease("10.0.0.5", Some(b"c1\r\neth1"));
        table.add_lease("10.0.0.1", Some(b"c11\r\neth0"));
        let names = |needle: &[u8]| -> Vec<String> {
            let mut names: Vec<String> = table
                .leases_holding(needle)
                .into_iter()
                .map(|(name, _)| name.to_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(b"c1"), ["10.0.0.1", "10.0.0.2", "10.0.0.5"]);
        assert_eq!(names(b"c1\r\neth0"), ["10.0.0.2"]);
        assert_eq!(
            names(b"10.0.0"),
            Vec::<String>::new(),
            "names are not content"
        );
        assert_eq!(names(b"with spaces"), ["2001:db8::2"]);
        assert_eq!(names(b"%"), ["10.0.0.4"]);
        assert_eq!(
            table.leases_holding(b"").len(),
            5,
            "every lease with content"
        );
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
        assert_eq!(Table::decode(&text, Stamp { nsec: 12, ..stamp }), None);
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
