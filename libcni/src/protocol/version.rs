//! CNI specification versions and what each one allows.

use std::fmt;
use std::str::FromStr;

/// Every spec version this suite speaks, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_1_0,
    V0_2_0,
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// The result layouts; versions within one family share a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// 0.1.0 and 0.2.0: `ip4` / `ip6` objects.
    Legacy020,
    /// 0.3.x and 0.4.0: `interfaces`, `ips` with a `version` field.
    Legacy040,
    /// 1.0.0 and 1.1.0.
    Current,
}

impl Version {
    pub const ALL: [Version; 7] = [
        Version::V0_1_0,
        Version::V0_2_0,
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];
    pub const LATEST: Version = Version::V1_1_0;
    /// A configuration without `cniVersion` is a 0.1.0 configuration.
    pub const DEFAULT: Version = Version::V0_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_1_0 => "0.1.0",
            Version::V0_2_0 => "0.2.0",
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Version::V0_1_0 | Version::V0_2_0 => Family::Legacy020,
            Version::V0_3_0 | Version::V0_3_1 | Version::V0_4_0 => Family::Legacy040,
            Version::V1_0_0 | Version::V1_1_0 => Family::Current,
        }
    }

    /// CHECK arrived in 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS arrived in 1.1.0.
    pub fn has_gc_and_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// 0.1.0 and 0.2.0 results carry one address per family.
    pub fn one_address_per_family(self) -> bool {
        self.family() == Family::Legacy020
    }

    /// `"0.1.0", "0.2.0", …` for messages.
    pub fn list() -> String {
        Version::ALL
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CNI version {0:?}")]
pub struct UnknownVersion(pub String);

impl FromStr for Version {
    type Err = UnknownVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVersion(s.to_string()))
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Picks the highest version of `candidates` that this suite speaks (the 1.1.0 `cniVersions` rule).
pub fn highest_supported<'a>(candidates: impl IntoIterator<Item = &'a str>) -> Option<Version> {
    candidates.into_iter().filter_map(|s| s.parse().ok()).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_version_and_nothing_else() {
        for v in Version::ALL {
            assert_eq!(v.as_str().parse::<Version>(), Ok(v));
        }
        for bad in ["", "1.1", "0.3", "1.2.0", "v1.0.0", " 1.0.0"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn gates_and_families() {
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_gc_and_status());
        assert!(Version::V1_1_0.has_gc_and_status());
        assert_eq!(Version::V0_2_0.family(), Family::Legacy020);
        assert_eq!(Version::V0_3_0.family(), Family::Legacy040);
        assert_eq!(Version::V1_0_0.family(), Family::Current);
    }

    #[test]
    fn highest_supported_ignores_unknown() {
        assert_eq!(
            highest_supported(["0.4.0", "9.9.9", "1.0.0", "0.3.1"]),
            Some(Version::V1_0_0)
        );
        assert_eq!(highest_supported(["2.0.0"]), None);
    }
}
