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

/// `binary`, a reference plugin or the Go cnitool, when it is installed; otherwise the test
/// fails saying how to install it.
pub fn installed(binary: impl Into<PathBuf>) -> PathBuf {
    let binary = binary.into();
    assert!(
        binary.is_file(),
        "reference binary {} missing: Debian's plugins come with `apt-get install \
         containernetworking-plugins`, newer ones with conformance/scripts/fetch-reference.sh, \
         the Go cnitool with conformance/scripts/build-go-cnitool.sh",
        binary.display()
    );
    binary
}

/// Debian's reference plugin `name`, installed.
pub fn reference_plugin(name: &str) -> PathBuf {
    installed(Path::new(REFERENCE_DIR).join(name))
}

/// The reference releases unpacked under `target/reference-<version>/` by
/// `conformance/scripts/fetch-reference.sh`, oldest first.
pub fn fetched_reference_dirs(target: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(target)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("reference-"))
        })
        .collect();
    dirs.sort_by_key(|p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name.trim_start_matches("reference-")
            .split('.')
            .map(|n| n.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    dirs
}

/// The newest fetched reference plugins (the highest version under `target/reference-*`).
pub fn newest_reference_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    fetched_reference_dirs(&target)
        .into_iter()
        .rfind(|d| d.join("portmap").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no reference plugins in {}/reference-*: run conformance/scripts/fetch-reference.sh target",
                target.display()
            )
        })
}
