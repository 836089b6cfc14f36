//! The reference binaries: Debian's plugins, the newest fetched release, the Go cnitool.

use std::path::{Path, PathBuf};

/// Debian's reference Go plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// The reference Go cnitool, built by `conformance/scripts/build-go-cnitool.sh`.
pub fn go_cnitool() -> PathBuf {
    std::env::var_os("GO_CNITOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go-cnitool/cnitool")
        })
}

/// The newest reference plugins, unpacked under `target/reference-<version>/` by
/// `conformance/scripts/fetch-reference.sh` (the highest version there).
pub fn newest_reference_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&target)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("reference-"))
                && p.join("portmap").is_file()
        })
        .collect();
    dirs.sort_by_key(|p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name.trim_start_matches("reference-")
            .split('.')
            .map(|n| n.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    dirs.pop().unwrap_or_else(|| {
        panic!(
            "no reference plugins in {}/reference-*: run conformance/scripts/fetch-reference.sh target",
            target.display()
        )
    })
}
