//! The one shared library of the suite: the CNI protocol (versions, config, results, errors,
//! the plugin skeleton), the runtime side used by `cnitool`, and the kernel plumbing (netns,
//! netlink) every plugin uses.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod args;
pub mod conf;
pub mod conntrack;
pub mod error;
pub mod firewall;
pub mod flock;
pub mod invoke;
pub mod ipam;
pub mod json;
pub mod netlink;
pub mod netns;
pub mod nf_tables;
pub mod random;
pub mod result;
pub mod runtime;
pub mod skel;
pub mod sysctl;
pub mod temp_file;
pub mod version;

/// The suite's version as built: the workspace version, plus `+gitYYYYMMDD.<hash>` when built
/// from a commit that is not its release tag (see `build.rs`). Every plugin's about text and
/// `cnitool --version` print it.
pub const VERSION: &str = env!("RCNI_VERSION");

pub use error::{Code, Error, Result};
pub use result::CniResult;
pub use version::Version;
