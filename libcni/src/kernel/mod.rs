//! The kernel objects the plugins work on: network namespaces, links, addresses and routes
//! (rtnetlink), nf_tables (our client over netlink), sysctls, conntrack entries, and the file
//! locks, temp files and random names the on-disk state needs.

pub mod conntrack;
pub mod deferred_close;
pub mod errno;
pub mod lock;
pub mod netlink;
pub mod netlink_error;
pub mod netns;
pub mod nf_tables;
pub mod random;
pub mod sysctl;
pub mod temp_file;
