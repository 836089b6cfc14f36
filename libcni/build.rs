//! Bakes the suite's version into libcni as `RCNI_VERSION` (read through `libcni::VERSION`):
//!
//! - `RCNI_VERSION` from the build environment, if set (a distribution build that knows better);
//! - else the workspace version (`0.x.y`) when HEAD is the tag `v0.x.y`, or when there is no git
//!   checkout (a source tarball) or no git;
//! - else `0.x.y+gitYYYYMMDD.<short hash>` (HEAD's commit date, UTC): a Debian version that
//!   sorts after `0.x.y` and before the next release. Uncommitted changes are not marked.
//!
//! Cargo reruns this only when HEAD moves (the HEAD file, the branch it names, packed refs and
//! the tags change), not on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RCNI_VERSION");
    let base = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let version = match std::env::var("RCNI_VERSION") {
        Ok(v) if !v.is_empty() => v,
        _ => git_version(&base).unwrap_or(base),
    };
    println!("cargo:rustc-env=RCNI_VERSION={version}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("TZ", "UTC")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_version(base: &str) -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent()?;
    // Only our own checkout counts, not a repository the sources happen to be unpacked into.
    let top = PathBuf::from(git(root, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != root.canonicalize().ok()? {
        return None;
    }
    watch(root, "HEAD");
    if let Some(branch) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        watch(root, &branch);
    }
    watch(root, "packed-refs");
    watch(root, "refs/tags");

    let tags = git(root, &["tag", "--points-at", "HEAD"])?;
    if tags.lines().any(|t| t == format!("v{base}")) {
        return Some(base.to_string());
    }
    let stamp = git(
        root,
        &[
            "log",
            "-1",
            "--format=%cd.%h",
            "--abbrev=7",
            "--date=format-local:%Y%m%d",
        ],
    )?;
    (!stamp.is_empty()).then(|| format!("{base}+git{stamp}"))
}

/// Rerun when this git file (or directory) changes; only paths that exist, since Cargo reruns
/// a build script on every build for a path that does not.
fn watch(root: &Path, name: &str) {
    if let Some(p) = git(
        root,
        &["rev-parse", "--path-format=absolute", "--git-path", name],
    ) && Path::new(&p).exists()
    {
        println!("cargo:rerun-if-changed={p}");
    }
}
