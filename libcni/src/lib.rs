//! The one shared library of the suite: the CNI protocol as plugins speak it ([`protocol`]),
//! the kernel objects they work on ([`kernel`]), the firewall drivers built on them
//! ([`firewall`]), the names and keys they derive by hashing ([`hash`]), and the runtime side
//! that `cnitool` uses ([`runtime`]).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod firewall;
pub mod hash;
pub mod kernel;
pub mod protocol;
pub mod runtime;

/// The suite's version as built: the workspace version, plus `+gitYYYYMMDD.<hash>` when built
/// from a commit that is not its release tag (see `build.rs`). Every plugin's about text and
/// `cnitool --version` print it.
pub const VERSION: &str = env!("RCNI_VERSION");

pub use protocol::error::{Code, Error, Result};
pub use protocol::result::CniResult;
pub use protocol::version::Version;
