//! Advisory locks (flock) waited for a bounded time: an operation that cannot get one in time
//! fails with code 11 ("try again later") instead of hanging or running unprotected. The
//! node's locks for shared firewall objects live here; host-local and the result cache lock
//! files of their own.

use std::fs::{File, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::protocol::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Many holders at once (operations that may run side by side).
    Shared,
    /// One holder, no shared ones.
    Exclusive,
}

/// Takes the lock on `file` (named `path` in messages), retrying with a growing pause for at
/// most `wait`.
pub fn lock_within(file: &File, mode: Mode, wait: Duration, path: &Path) -> Result<()> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(1);
    loop {
        let tried = match mode {
            Mode::Shared => file.try_lock_shared(),
            Mode::Exclusive => file.try_lock(),
        };
        match tried {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                // Locks are held for milliseconds: a waiter never sleeps much past a release.
                pause = (pause * 2).min(Duration::from_millis(4));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(Error::try_again(format!(
                    "{} is locked by another operation for over {:.1}s",
                    path.display(),
                    wait.as_secs_f64()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}: {e}", path.display())));
            }
        }
    }
}

/// Serialises check-then-create of shared objects (a network's masquerade rule, the shared
/// iptables chains, a bridge's MAC) across concurrent plugin runs on the node: the exclusive
/// lock of `/run/cni-rs/<name>.lock`, held only for those few milliseconds.
pub fn node_lock(name: &str) -> Result<File> {
    const DIR: &str = "/run/cni-rs";
    const WAIT: Duration = Duration::from_secs(30);
    std::fs::create_dir_all(DIR).map_err(|e| Error::io(format!("cannot create {DIR}: {e}")))?;
    let path = Path::new(DIR).join(format!("{name}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::io(format!("cannot open {}: {e}", path.display())))?;
    lock_within(&file, Mode::Exclusive, WAIT, &path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_holders_coexist_and_an_exclusive_one_times_out_with_code_11() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let open = || File::create(&path).unwrap();
        let (a, b, c) = (open(), open(), open());
        let short = Duration::from_millis(30);
        lock_within(&a, Mode::Shared, short, &path).unwrap();
        lock_within(&b, Mode::Shared, short, &path).unwrap();
        let e = lock_within(&c, Mode::Exclusive, short, &path).unwrap_err();
        assert_eq!(e.code, crate::Code::TryAgainLater);
        assert!(e.msg.contains("locked by another operation"), "{}", e.msg);
        drop((a, b));
        lock_within(&c, Mode::Exclusive, short, &path).unwrap();
    }
}
