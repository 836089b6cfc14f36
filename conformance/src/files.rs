//! Files as tests inspect them: directory entries, leases, the umask.

use std::path::Path;

/// One directory entry as `dir_files` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub content: Vec<u8>,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub is_dir: bool,
}

/// Every entry of `dir` (not recursive) by name; empty when `dir` does not exist. An entry
/// removed while we read (another process at work) is left out.
pub fn dir_files(dir: &Path) -> std::collections::BTreeMap<String, FileState> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Default::default();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let meta = std::fs::symlink_metadata(e.path()).ok()?;
            let content = if meta.is_file() {
                std::fs::read(e.path()).ok()?
            } else {
                Vec::new()
            };
            let state = FileState {
                content,
                mode: meta.permissions().mode() & 0o7777,
                is_dir: meta.is_dir(),
            };
            Some((e.file_name().to_string_lossy().into_owned(), state))
        })
        .collect()
}

/// This process's umask, read without changing it (`Umask:` in /proc/self/status).
pub fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

/// The lease files (file names that are IP addresses) in a host-local network directory.
pub fn lease_files(network_dir: &Path) -> Vec<String> {
    dir_files(network_dir)
        .into_keys()
        .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

/// host-local's owner links (`<network_dir>/.owners/`) by lease name, each checked to be a hard
/// link of its lease (same inode) named `<lease>=<the lease's content in hex>`. Panics on a
/// link without its lease or a lease without its link.
pub fn owner_links(network_dir: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let inode = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.ino()).ok();
    let mut links = std::collections::BTreeMap::new();
    for (name, link) in dir_files(&network_dir.join(".owners")) {
        // The lease table beside the links (host-local's `table`).
        if name == "table" {
            continue;
        }
        let (lease, hex) = name
            .split_once('=')
            .unwrap_or_else(|| panic!("owner link {name:?} is not <address>=<hex>"));
        let content: String = link.content.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex, content,
            "owner link {name:?} does not name its content"
        );
        let lease_path = network_dir.join(lease);
        assert!(
            inode(&lease_path).is_some()
                && inode(&lease_path) == inode(&network_dir.join(".owners").join(&name)),
            "owner link {name:?} is not a link of lease {lease}"
        );
        links.insert(lease.to_owned(), name);
    }
    for lease in lease_files(network_dir) {
        assert!(
            links.contains_key(&lease),
            "lease {lease} has no owner link"
        );
    }
    links
}

/// Every entry under `dir` (recursively), as paths relative to it, except those `keep`
/// accepts; empty when `dir` does not exist.
pub fn files_under(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            } else if !keep(&rel) {
                found.push(rel);
            }
        }
    }
    found.sort();
    found
}
