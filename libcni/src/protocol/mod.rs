//! The CNI protocol as a plugin speaks it: spec versions, network configuration, `CNI_ARGS`,
//! results and their conversion between versions, errors with their spec codes, the plugin
//! skeleton (environment, commands, the netns guard) and delegation to an IPAM plugin.

pub mod args;
pub mod conf;
pub mod error;
pub mod ipam;
pub mod json;
pub mod result;
pub mod skel;
pub mod version;
