//! Where an attachment's nftables rules are: the handles the kernel echoed when ADD made them,
//! so DEL deletes them by handle instead of listing chains that hold every pod's rules (a
//! listing grows with the node: ~600 KB of dump at 250 pods).
//!
//! One small file per attachment under `/run/cni-rs/nft/`, named for the network namespace
//! and the owner's key (tmpfs: gone after a reboot, like the rules). A handle file is only a
//! hint. It is `complete` only when every rule of the attachment is in it: ADD marks it
//! `pending` before its transaction and completes it after, and keeps it pending when the
//! attachment may have rules the file does not know (an earlier ADD that did not finish, rules
//! made through `nft`). DEL trusts a complete file only after the kernel confirms each rule
//! still carries the owner's comment; anything else, and any failure here, means listing.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::owner::{Owner, network_key};
use crate::kernel::nf_tables::{Client, Family, ListedRule};
use crate::kernel::temp_file;
use crate::protocol::conf::Attachment;

const DIR: &str = "/run/cni-rs/nft";
const COMPLETE: &str = "complete";
const PENDING: &str = "pending";

/// What the handle file said before an ADD.
#[derive(Debug)]
pub enum Before {
    /// No file: the attachment has no rules we made since boot.
    Fresh,
    /// Every rule the attachment has.
    Complete(Vec<ListedRule>),
    /// The attachment may have rules no file knows (or the file cannot be written).
    Unknown,
}

/// Marks the attachment's rules as changing, before a transaction adds to them.
pub fn before_add(owner: &Owner<'_>) -> Before {
    let Some(path) = path(owner) else {
        return Before::Unknown;
    };
    let before = match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Before::Fresh,
        Err(_) => Before::Unknown,
        Ok(text) => parse(&text).map_or(Before::Unknown, Before::Complete),
    };
    match write(&path, PENDING, &[]) {
        Ok(()) => before,
        Err(e) => {
            eprintln!(
                "firewall: cannot mark {} pending ({e}): DEL will list",
                path.display()
            );
            Before::Unknown
        }
    }
}

/// Completes the file with the rules an ADD made, when they and `before` are all there are.
pub fn after_add(owner: &Owner<'_>, before: Before, added: &[ListedRule]) {
    let mut rules = match before {
        Before::Fresh => Vec::new(),
        Before::Complete(rules) => rules,
        Before::Unknown => return,
    };
    // The echo also holds the base objects' rules when this ADD made the table.
    rules.extend(
        added
            .iter()
            .filter(|r| r.comment.as_deref().is_some_and(|c| owner.owns(c)))
            .cloned(),
    );
    if let Some(path) = path(owner)
        && let Err(e) = write(&path, COMPLETE, &rules)
    {
        eprintln!(
            "firewall: cannot record rule handles in {} ({e})",
            path.display()
        );
    }
}

/// The attachment's rules when its file is complete and the kernel still holds each of them
/// with the owner's comment; `None` means they must be found by listing.
pub fn confirmed(nft: &mut Client, owner: &Owner<'_>) -> Option<Vec<ListedRule>> {
    let text = std::fs::read_to_string(path(owner)?).ok()?;
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
pub fn forget(owner: &Owner<'_>) {
    if let Some(path) = path(owner) {
        remove(&path);
    }
}

/// Drops the files of `network`'s attachments in this namespace that are not in `valid` (GC).
pub fn forget_stale(network: &str, valid: &[Attachment]) {
    let Some(prefix) = namespace_prefix() else {
        return;
    };
    let network_part = file_key(&network_key(network));
    let keep: Vec<String> = valid
        .iter()
        .map(|a| {
            let owner = Owner {
                network,
                container_id: &a.container_id,
                ifname: &a.ifname,
            };
            format!("{prefix}{}", file_key(&owner.key()))
        })
        .collect();
    let Ok(entries) = std::fs::read_dir(DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name
            .strip_prefix(&prefix)
            .is_some_and(|rest| rest.starts_with(&network_part));
        if ours && !keep.contains(&name) {
            remove(&entry.path());
        }
    }
}

/// Drops every file of the network namespace at `netns` (an nsfs file such as
/// `/run/netns/<name>`), for whoever deletes the namespace: its rules go with it.
pub fn forget_namespace(netns: &std::path::Path) {
    let Ok(ns) = std::fs::metadata(netns) else {
        return;
    };
    let prefix = format!("{}-", ns.ino());
    let Ok(entries) = std::fs::read_dir(DIR) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            remove(&entry.path());
        }
    }
}

fn remove(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != ErrorKind::NotFound
    {
        eprintln!("firewall: cannot remove {} ({e})", path.display());
    }
}

/// `<netns inode>-`: handles are only meaningful in the namespace they were made in.
fn namespace_prefix() -> Option<String> {
    let ns = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    Some(format!("{}-", ns.ino()))
}

/// `rcni:<network hash>:<attachment hash>` as a file name.
fn file_key(key: &str) -> String {
    key.trim_start_matches("rcni:").replace(':', "-")
}

fn path(owner: &Owner<'_>) -> Option<PathBuf> {
    let prefix = namespace_prefix()?;
    Some(PathBuf::from(DIR).join(format!("{prefix}{}", file_key(&owner.key()))))
}

fn write(path: &std::path::Path, state: &str, rules: &[ListedRule]) -> std::io::Result<()> {
    use std::io::Write;
    let mut text = format!("{state}\n");
    for r in rules {
        text.push_str(&format!(
            "{} {} {} {}\n",
            r.family, r.table, r.chain, r.handle
        ));
    }
    std::fs::create_dir_all(DIR)?;
    let (temp, mut file) = temp_file::create(std::path::Path::new(DIR), "handles", 0o600)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// The rules of a complete file; `None` for a pending or unreadable one.
fn parse(text: &str) -> Option<Vec<ListedRule>> {
    let mut lines = text.lines();
    if lines.next()? != COMPLETE {
        return None;
    }
    lines
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_complete_well_formed_file_names_rules() {
        let rules = parse("complete\ninet rcni_portmap hostports 7\nip6 t c 9\n").unwrap();
        assert_eq!(
            rules,
            vec![
                ListedRule::at(Family::Inet, "rcni_portmap", "hostports", 7),
                ListedRule::at(Family::Ip6, "t", "c", 9),
            ]
        );
        assert_eq!(parse("complete\n"), Some(Vec::new()));
        for bad in [
            "",
            "pending\ninet t c 7\n",
            "complete\ninet t c\n",
            "complete\ninet t c x\n",
            "complete\nbridge t c 7\n",
            "complete\ninet t c 7 8\n",
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
        assert!(key.starts_with(&file_key(&network_key("net"))));
        assert!(!key.contains(['/', ':']));
    }
}
