//! Where an attachment's nftables rules are: the handles the kernel echoed when ADD made them,
//! so DEL deletes them by handle instead of listing chains that hold every pod's rules (a
//! listing grows with the node: ~600 KB of dump at 250 pods).
//!
//! One small file per attachment and [`Kind`] under `/run/cni-rs/nft/`, named for the network
//! namespace and the owner's key (gone after a reboot, like the rules), written after ADD's
//! transaction: `complete <n>` and the n rules. It is only a hint. A missing, torn or
//! unreadable file means listing (an ADD killed after its transaction leaves none), and DEL
//! trusts a file only after the kernel confirms each rule still carries the owner's comment.
//! The spec forbids a second ADD of an attachment without a DEL between; one that happens
//! anyway adds to a complete file and drops any other.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::owner::{Owner, stale};
use crate::kernel::nf_tables::{Client, Family, ListedRule};
use crate::protocol::conf::Attachment;

const DIR: &str = "/run/cni-rs/nft";
const COMPLETE: &str = "complete";

/// Whose rules a file records: portmap's (the name is the owner's key alone, as before kinds)
/// or bridge's masquerade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PortMappings,
    Masquerade,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::PortMappings, Kind::Masquerade];

    fn suffix(self) -> &'static str {
        match self {
            Kind::PortMappings => "",
            Kind::Masquerade => ".masquerade",
        }
    }
}

/// What the handle file said before an ADD.
#[derive(Debug)]
pub enum Before {
    /// No file: no rules of the attachment are known.
    Fresh,
    /// Every rule the attachment has.
    Complete(Vec<ListedRule>),
    /// A file that cannot be trusted.
    Unknown,
}

/// Reads the attachment's file before an ADD adds to its rules.
pub fn before_add(kind: Kind, owner: &Owner<'_>) -> Before {
    let Some(path) = path(kind, owner) else {
        return Before::Unknown;
    };
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Before::Fresh,
        Err(_) => Before::Unknown,
        Ok(text) => parse(&text).map_or(Before::Unknown, Before::Complete),
    }
}

/// Records the rules an ADD made (with those of a complete file before it).
pub fn after_add(kind: Kind, owner: &Owner<'_>, before: Before, added: &[ListedRule]) {
    let Some(path) = path(kind, owner) else {
        return;
    };
    let mut rules = match before {
        Before::Fresh => Vec::new(),
        Before::Complete(rules) => rules,
        Before::Unknown => return remove(&path),
    };
    // The echo also holds the base objects' rules when this ADD made the table.
    rules.extend(
        added
            .iter()
            .filter(|r| r.comment.as_deref().is_some_and(|c| owner.owns(c)))
            .cloned(),
    );
    if let Err(e) = write(&path, &rules) {
        eprintln!(
            "firewall: cannot record rule handles in {} ({e})",
            path.display()
        );
        remove(&path);
    }
}

/// The attachment's rules when its file is complete and the kernel still holds each of them
/// with the owner's comment; `None` means they must be found by listing.
pub fn confirmed(kind: Kind, nft: &mut Client, owner: &Owner<'_>) -> Option<Vec<ListedRule>> {
    let text = std::fs::read_to_string(path(kind, owner)?).ok()?;
    let rules = parse(&text)?;
    for rule in &rules {
        let held = nft
            .get_rule(rule.family, &rule.table, &rule.chain, rule.handle)
            .ok()??;
        if !held.comment.as_deref().is_some_and(|c| owner.owns(c)) {
            return None;
        }
    }
    Some(rules)
}

/// Drops the attachment's file (its rules are gone).
pub fn forget(kind: Kind, owner: &Owner<'_>) {
    if let Some(path) = path(kind, owner) {
        remove(&path);
    }
}

/// Drops the files of `network`'s attachments in this namespace that are not in `valid` (GC).
pub fn forget_stale(network: &str, valid: &[Attachment]) {
    if let Some(prefix) = namespace_prefix() {
        sweep(&prefix, |rest| {
            owner_key(rest).is_some_and(|key| stale(network, valid, &key))
        });
    }
}

/// Drops every file of the network namespace at `netns` (an nsfs file such as
/// `/run/netns/<name>`), for whoever deletes the namespace: its rules go with it.
pub fn forget_namespace(netns: &std::path::Path) {
    if let Some(prefix) = prefix_of(netns) {
        sweep(&prefix, |_| true);
    }
}

const NETWORK_MASQUERADE: &str = ".network-masquerade";

/// Whether an earlier version's per-network masquerade rules of `network` are in this
/// namespace, as last found (`None`: never looked). This version makes no such rules, so once
/// a listing found none, DELs by handle need not look again; when one found some, the DEL of
/// the network's last port removes them.
pub fn network_masquerade(network: &str) -> Option<bool> {
    match std::fs::read_to_string(network_masquerade_path(network)?)
        .ok()?
        .as_str()
    {
        "present" => Some(true),
        "none" => Some(false),
        _ => None,
    }
}

pub fn set_network_masquerade(network: &str, present: bool) {
    let Some(path) = network_masquerade_path(network) else {
        return;
    };
    let text = if present { "present" } else { "none" };
    if let Err(e) = write_text(&path, text) {
        eprintln!("firewall: cannot write {} ({e})", path.display());
        remove(&path);
    }
}

fn network_masquerade_path(network: &str) -> Option<PathBuf> {
    let key = file_key(&super::owner::network_key(network));
    Some(PathBuf::from(DIR).join(format!("{}{key}{NETWORK_MASQUERADE}", namespace_prefix()?)))
}

/// The file that records `owner`'s rules of `kind` made in the network namespace at `netns`.
pub fn file_in(netns: &std::path::Path, kind: Kind, owner: &Owner<'_>) -> Option<PathBuf> {
    Some(PathBuf::from(DIR).join(format!(
        "{}{}{}",
        prefix_of(netns)?,
        file_key(&owner.key()),
        kind.suffix()
    )))
}

/// Removes the files of one namespace (`prefix`) whose name after the prefix `pick` accepts.
fn sweep(prefix: &str, pick: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.strip_prefix(prefix).is_some_and(&pick) {
            remove(&entry.path());
        }
    }
}

/// The owner key a handle file's name (after the namespace prefix) stands for, whatever its
/// kind; `None` for other files (the per-network notes).
fn owner_key(rest: &str) -> Option<String> {
    let file_key = Kind::ALL.iter().rev().find_map(|k| match k.suffix() {
        "" => (!rest.contains('.')).then_some(rest),
        suffix => rest.strip_suffix(suffix),
    })?;
    Some(format!("rcni:{}", file_key.replacen('-', ":", 1)))
}

fn remove(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != ErrorKind::NotFound
    {
        eprintln!("firewall: cannot remove {} ({e})", path.display());
    }
}

/// `<netns inode>-`: handles are only meaningful in the namespace they were made in.
fn prefix_of(netns: &std::path::Path) -> Option<String> {
    Some(format!("{}-", std::fs::metadata(netns).ok()?.ino()))
}

fn namespace_prefix() -> Option<String> {
    prefix_of(std::path::Path::new("/proc/thread-self/ns/net"))
}

/// `rcni:<network hash>:<attachment hash>` as a file name (the hashes are hex).
fn file_key(key: &str) -> String {
    key.trim_start_matches("rcni:").replace(':', "-")
}

/// The attachment's file in the namespace the calling thread is in.
fn path(kind: Kind, owner: &Owner<'_>) -> Option<PathBuf> {
    file_in(
        std::path::Path::new("/proc/thread-self/ns/net"),
        kind,
        owner,
    )
}

/// Written in place (a rename costs a journal commit where /run is not tmpfs): the count in
/// the first line tells a torn file.
fn write(path: &std::path::Path, rules: &[ListedRule]) -> std::io::Result<()> {
    let mut text = format!("{COMPLETE} {}\n", rules.len());
    for r in rules {
        text.push_str(&format!(
            "{} {} {} {}\n",
            r.family, r.table, r.chain, r.handle
        ));
    }
    write_text(path, &text)
}

fn write_text(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let open = || {
        std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    let mut file = match open() {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir_all(DIR)?;
            open()?
        }
        opened => opened?,
    };
    file.write_all(text.as_bytes())
}

/// The rules of a complete file; `None` for a torn or malformed one.
fn parse(text: &str) -> Option<Vec<ListedRule>> {
    let mut lines = text.lines();
    let count: usize = lines.next()?.strip_prefix("complete ")?.parse().ok()?;
    let rules: Vec<ListedRule> = lines
        .map(|line| {
            let mut fields = line.split(' ');
            let family = match fields.next()? {
                "inet" => Family::Inet,
                "ip" => Family::Ip,
                "ip6" => Family::Ip6,
                _ => return None,
            };
            let (table, chain) = (fields.next()?, fields.next()?);
            let handle = fields.next()?.parse().ok()?;
            fields
                .next()
                .is_none()
                .then(|| ListedRule::at(family, table, chain, handle))
        })
        .collect::<Option<_>>()?;
    (rules.len() == count).then_some(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_complete_well_formed_file_names_rules() {
        let rules = parse("complete 2\ninet rcni_portmap hostports 7\nip6 t c 9\n").unwrap();
        assert_eq!(
            rules,
            vec![
                ListedRule::at(Family::Inet, "rcni_portmap", "hostports", 7),
                ListedRule::at(Family::Ip6, "t", "c", 9),
            ]
        );
        assert_eq!(parse("complete 0\n"), Some(Vec::new()));
        for bad in [
            "",
            "complete\ninet t c 7\n",
            "complete 2\ninet t c 7\n",
            "complete 1\ninet t c 7\nip t c 8\n",
            "complete 1\ninet t c\n",
            "complete 1\ninet t c x\n",
            "complete 1\nbridge t c 7\n",
            "complete 1\ninet t c 7 8\n",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn file_names_keep_network_and_attachment_apart() {
        let owner = Owner {
            network: "net",
            container_id: "c1",
            ifname: "eth0",
        };
        let key = file_key(&owner.key());
        assert!(key.starts_with(&file_key(&crate::firewall::owner::network_key("net"))));
        assert!(!key.contains(['/', ':']));
        // What `sweep` reads back is the owner's key again, whatever the file's kind.
        assert_eq!(format!("rcni:{}", key.replacen('-', ":", 1)), owner.key());
        for kind in Kind::ALL {
            assert_eq!(
                owner_key(&format!("{key}{}", kind.suffix())),
                Some(owner.key())
            );
        }
        let network = file_key(&crate::firewall::owner::network_key("net"));
        assert_eq!(owner_key(&format!("{network}{NETWORK_MASQUERADE}")), None);
    }
}
