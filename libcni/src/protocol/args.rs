//! `CNI_ARGS`: `KEY=VALUE;KEY2=VALUE2`, with `IgnoreUnknown` deciding whether keys a plugin does
//! not know are an error.

use crate::protocol::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs> {
        let mut pairs = Vec::new();
        // Empty segments (a trailing `;`) carry nothing; the Go parser rejects them, we skip them.
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let mut kv = pair.split('=');
            match (kv.next(), kv.next(), kv.next()) {
                (Some(k), Some(v), None) if !k.is_empty() => {
                    pairs.push((k.to_string(), v.to_string()))
                }
                _ => {
                    return Err(Error::invalid_env(format!(
                        "invalid CNI_ARGS pair {pair:?}: expected KEY=VALUE"
                    )));
                }
            }
        }
        Ok(CniArgs { pairs })
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The last value given for `key` (keys are case-sensitive, as in Go).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Fails on keys outside `known` unless `IgnoreUnknown` is true.
    pub fn check_known(&self, known: &[&str]) -> Result<()> {
        let ignore = match self.get("IgnoreUnknown") {
            None => false,
            Some(value) => parse_bool(value).ok_or_else(|| {
                Error::invalid_env(format!(
                    "invalid CNI_ARGS IgnoreUnknown={value:?}: expected 1, t, true, 0, f or false (any case)"
                ))
            })?,
        };
        let unknown: Vec<&str> = self
            .pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != "IgnoreUnknown" && !known.contains(k))
            .collect();
        if unknown.is_empty() || ignore {
            Ok(())
        } else {
            Err(Error::invalid_env(format!(
                "unknown CNI_ARGS keys {unknown:?} (set IgnoreUnknown=1 to allow them)"
            )))
        }
    }
}

/// What Go's `strconv.ParseBool` accepts (`1`, `t`, `T`, `TRUE`, `true`, `True` and the false
/// counterparts), and every case of `true`/`false`, which libcni's own parser reads.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" => Some(true),
        "0" | "f" | "F" => Some(false),
        v if v.eq_ignore_ascii_case("true") => Some(true),
        v if v.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.9;").unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.9"));
        assert_eq!(a.get("ip"), None);
        assert_eq!(a.pairs().len(), 3);
        assert!(CniArgs::parse("").unwrap().pairs().is_empty());
        assert_eq!(CniArgs::parse("A=").unwrap().get("A"), Some(""));
    }

    #[test]
    fn rejects_malformed_pairs() {
        for bad in ["A", "A=b=c", "=x", "A=1;B"] {
            let e = CniArgs::parse(bad).unwrap_err();
            assert_eq!(e.code, crate::Code::InvalidEnv);
            assert!(e.msg.contains("CNI_ARGS"), "{}", e.msg);
        }
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        let a = CniArgs::parse("MAC=aa:bb:cc:dd:ee:ff;K8S_POD_NAME=x").unwrap();
        let e = a.check_known(&["MAC"]).unwrap_err();
        assert!(e.msg.contains("K8S_POD_NAME"), "{}", e.msg);
        for yes in ["1", "t", "T", "TRUE", "true", "True", "tRuE"] {
            let a = CniArgs::parse(&format!("IgnoreUnknown={yes};X=1")).unwrap();
            assert!(a.check_known(&[]).is_ok(), "{yes}");
        }
        for no in ["0", "f", "F", "FALSE", "false", "False"] {
            let a = CniArgs::parse(&format!("IgnoreUnknown={no};X=1")).unwrap();
            assert!(a.check_known(&[]).unwrap_err().msg.contains("X"), "{no}");
            let a = CniArgs::parse(&format!("IgnoreUnknown={no}")).unwrap();
            assert!(a.check_known(&[]).is_ok(), "{no} without unknown keys");
        }
        for bad in ["yes", "", "2", "tr", "on"] {
            let a = CniArgs::parse(&format!("IgnoreUnknown={bad}")).unwrap();
            let e = a.check_known(&[]).unwrap_err();
            assert!(e.msg.contains("IgnoreUnknown"), "{bad}: {}", e.msg);
            assert_eq!(e.code, crate::Code::InvalidEnv);
        }
    }
}
