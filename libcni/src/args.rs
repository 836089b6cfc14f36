//! `CNI_ARGS`: `KEY=VALUE;KEY2=VALUE2`, with `IgnoreUnknown` deciding whether keys a plugin does
//! not know are an error.

use crate::error::{Error, Result};

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
            Some("1" | "true" | "True") => true,
            Some("0" | "false" | "False") => false,
            Some(other) => {
                return Err(Error::invalid_env(format!(
                    "invalid CNI_ARGS IgnoreUnknown={other:?}: expected 1, true, True, 0, false or False"
                )));
            }
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
            assert_eq!(e.code, 4);
            assert!(e.msg.contains("CNI_ARGS"), "{}", e.msg);
        }
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        let a = CniArgs::parse("MAC=aa:bb:cc:dd:ee:ff;K8S_POD_NAME=x").unwrap();
        let e = a.check_known(&["MAC"]).unwrap_err();
        assert!(e.msg.contains("K8S_POD_NAME"), "{}", e.msg);
        for yes in ["1", "true", "True"] {
            let a = CniArgs::parse(&format!("IgnoreUnknown={yes};X=1")).unwrap();
            assert!(a.check_known(&[]).is_ok());
        }
        let a = CniArgs::parse("IgnoreUnknown=0;X=1").unwrap();
        assert!(a.check_known(&[]).is_err());
        let a = CniArgs::parse("IgnoreUnknown=yes").unwrap();
        assert!(
            a.check_known(&[])
                .unwrap_err()
                .msg
                .contains("IgnoreUnknown")
        );
    }
}
