//! Test harness: private network namespaces (a "host" per test plus containers), the built
//! binaries run inside them through the real protocol, and helpers to inspect the kernel.
//!
//! Every object gets a name with a per-process unique prefix and is removed on drop, also when
//! the test fails. Nothing here touches the machine's own network namespace.

pub mod fuzz;

mod call;
mod cnitool;
mod files;
mod kernel;
mod netns;
mod network;
mod reference;
mod traffic;

pub use call::{
    Call, Outcome, command_with_private_var_lib, executed_programs, execve_tracer, outcome,
    outcome_within, result_ips,
};
pub use cnitool::{Workdir, cnitool, cnitool_command, cnitool_container_id, cnitool_env};
pub use files::{FileState, dir_files, files_under, lease_files, owner_links, umask};
pub use kernel::{bridge_vlan_filtering_supported, nft_batch};
pub use netns::{Netns, node_with_uplink};
pub use network::{
    BridgeConf, HostLocalNet, containerd_conflist, portmap_conflist, portmap_plugin,
};
pub use reference::{
    REFERENCE_DIR, fetched_reference_dirs, go_cnitool, installed, newest_reference_dir,
    reference_plugin,
};
pub use traffic::Background;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where our built binaries are (`CNI_TEST_BIN_DIR`, else the workspace's debug target).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("CNI_TEST_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"))
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is not built (run cargo build --workspace first)",
        path.display()
    );
    path
}

/// A name no other test (or test process) uses: `<tag><pid base36><counter>`, short enough
/// for an interface name when `tag` is at most 3 characters.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", base36(std::process::id()))
}

fn base36(mut n: u32) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap()
}

pub const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
