//! The kernel's errno for a refused request, with the ones callers act on named, shared by the
//! rtnetlink and nf_tables clients so both say "not found" the same way.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    /// ENOENT: a table, chain, rule, route or address the request refers to does not exist.
    NotFound,
    /// ENODEV: no such link.
    NoDevice,
    /// EEXIST: an exclusive create found the object already there.
    Exists,
    /// EBUSY: the object is still in use (a chain with rules or jumps to it).
    Busy,
    /// EPERM / EACCES: not allowed in this namespace.
    Denied,
    /// EOPNOTSUPP: this kernel lacks the feature.
    NotSupported,
    Other(i32),
}

impl Errno {
    /// From a netlink error code (negative errno) or a plain errno.
    pub fn from_code(code: i32) -> Errno {
        match code.saturating_abs() {
            libc::ENOENT => Errno::NotFound,
            libc::ENODEV => Errno::NoDevice,
            libc::EEXIST => Errno::Exists,
            libc::EBUSY => Errno::Busy,
            libc::EPERM | libc::EACCES => Errno::Denied,
            libc::EOPNOTSUPP => Errno::NotSupported,
            other => Errno::Other(other),
        }
    }

    pub fn raw(self) -> i32 {
        match self {
            Errno::NotFound => libc::ENOENT,
            Errno::NoDevice => libc::ENODEV,
            Errno::Exists => libc::EEXIST,
            Errno::Busy => libc::EBUSY,
            Errno::Denied => libc::EPERM,
            Errno::NotSupported => libc::EOPNOTSUPP,
            Errno::Other(n) => n,
        }
    }

    /// The object is not there: ENOENT, or ENODEV for a link.
    pub fn is_not_found(self) -> bool {
        matches!(self, Errno::NotFound | Errno::NoDevice)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.raw();
        write!(
            f,
            "{} (errno {raw})",
            std::io::Error::from_raw_os_error(raw)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_codes_callers_act_on_and_keeps_the_rest() {
        assert_eq!(Errno::from_code(-libc::ENOENT), Errno::NotFound);
        assert_eq!(Errno::from_code(libc::EEXIST), Errno::Exists);
        assert_eq!(Errno::from_code(-libc::EACCES), Errno::Denied);
        assert_eq!(Errno::from_code(-libc::EINVAL), Errno::Other(libc::EINVAL));
        assert_eq!(Errno::from_code(i32::MIN), Errno::Other(i32::MAX));
        for code in [
            libc::ENOENT,
            libc::ENODEV,
            libc::EEXIST,
            libc::EBUSY,
            libc::EOPNOTSUPP,
            7,
        ] {
            assert_eq!(Errno::from_code(code).raw(), code);
        }
        assert!(Errno::NoDevice.is_not_found() && !Errno::Denied.is_not_found());
    }
}
