//! `/proc/sys` reads and writes. Network sysctls resolve against the namespace of the calling
//! thread, so container-side keys are written inside `Netns::run`.
//!
//! A lookup under /proc/sys/net walks one entry per network namespace on the node (each
//! namespace has its own `net/ipv4` and `net/ipv6` under the one parent): ~35 µs a path with
//! 250 pods, ~0.4 ms in a namespace whose links just changed. So a key is opened once, and
//! read and written through that one file.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};

use crate::protocol::error::{Error, Result};

fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.trim_start_matches('/'))
}

pub fn read(key: &str) -> Result<String> {
    std::fs::read_to_string(path(key))
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::internal(format!("cannot read sysctl {key}: {e}")))
}

/// Writes `value` unless the key already holds it (writing the same value is not always a
/// no-op: `ip_forward` resets every interface's forwarding, and a read-only `/proc/sys`
/// refuses it).
pub fn set(key: &str, value: &str) -> Result<()> {
    write_if_different(key, value)
        .map_err(|e| Error::internal(format!("cannot set sysctl {key}={value}: {e}")))
}

/// Like [`set`], for keys that may legitimately be absent (IPv6 disabled, module not loaded).
pub fn set_if_present(key: &str, value: &str) -> Result<()> {
    match write_if_different(key, value) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        done => done.map_err(|e| Error::internal(format!("cannot set sysctl {key}={value}: {e}"))),
    }
}

fn write_if_different(key: &str, value: &str) -> std::io::Result<()> {
    let mut file = match File::options().read(true).write(true).open(path(key)) {
        Ok(file) => file,
        Err(e) if is_read_only(&e) => {
            // A read-only key or /proc/sys is fine when it already holds the value.
            let mut file = File::open(path(key))?;
            return if holds(&mut file, value)? {
                Ok(())
            } else {
                Err(e)
            };
        }
        Err(e) => return Err(e),
    };
    if holds(&mut file, value)? {
        return Ok(());
    }
    file.seek(SeekFrom::Start(0))?;
    file.write_all(value.as_bytes())
}

fn is_read_only(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EROFS | libc::EACCES | libc::EPERM)
    )
}

fn holds(file: &mut File, value: &str) -> std::io::Result<bool> {
    let mut current = String::new();
    file.read_to_string(&mut current)?;
    Ok(current.trim() == value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_key_is_fine_only_where_it_may_be_absent() {
        assert!(set_if_present("net/ipv4/conf/rcni-no-such-if/arp_notify", "1").is_ok());
        let e = set("net/ipv4/conf/rcni-no-such-if/arp_notify", "1").unwrap_err();
        assert!(e.msg.contains("rcni-no-such-if/arp_notify=1"), "{}", e.msg);
    }

    #[test]
    fn a_read_only_key_holding_the_value_is_set() {
        let current = read("kernel/osrelease").unwrap();
        set("kernel/osrelease", &current).unwrap();
        assert!(set("kernel/osrelease", "0.0.0-rcni").is_err());
    }
}
