//! `/proc/sys` reads and writes. Network sysctls resolve against the namespace of the calling
//! thread, so container-side keys are written inside `Netns::run`.

use std::io::ErrorKind;

use crate::protocol::error::{Error, Result};

fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.trim_start_matches('/'))
}

pub fn read(key: &str) -> Result<String> {
    std::fs::read_to_string(path(key))
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::internal(format!("cannot read sysctl {key}: {e}")))
}

/// Writes `value` unless the key already holds it (a write can be refused on a read-only
/// `/proc/sys` even when it would change nothing).
pub fn set(key: &str, value: &str) -> Result<()> {
    if read(key).is_ok_and(|v| v == value) {
        return Ok(());
    }
    std::fs::write(path(key), value)
        .map_err(|e| Error::internal(format!("cannot set sysctl {key}={value}: {e}")))
}

/// Like [`set`], for keys that may legitimately be absent (IPv6 disabled, module not loaded).
pub fn set_if_present(key: &str, value: &str) -> Result<()> {
    match set(key, value) {
        Err(_) if std::fs::metadata(path(key)).is_err_and(|e| e.kind() == ErrorKind::NotFound) => {
            Ok(())
        }
        other => other,
    }
}
