//! Network configuration files as a runtime finds them: `.conflist` lists, and single-plugin
//! `.conf` / `.json` files that are turned into a list of one.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::version::{Version, highest_supported};

#[derive(Debug, Clone)]
pub struct ConfList {
    pub name: String,
    pub version: Version,
    pub disable_check: bool,
    pub disable_gc: bool,
    /// Each plugin's config object as written in the file.
    pub plugins: Vec<Map<String, Value>>,
    /// The list's bytes as loaded (kept in the result cache, as the Go library does).
    pub bytes: Vec<u8>,
}

impl ConfList {
    /// Parses a `.conflist`.
    pub fn from_list_bytes(bytes: &[u8]) -> Result<ConfList> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::decode(format!("error parsing configuration list: {e}")))?;
        let Value::Object(list) = value else {
            return Err(Error::decode("configuration list is not a JSON object"));
        };
        let name = match list.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(Error::invalid_config("configuration list has no \"name\"")),
        };
        let version = list_version(&list)?;
        let flag = |key: &str| match list.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            // libcni also reads the strings "true" and "false", in any case.
            Some(Value::String(b)) if b.eq_ignore_ascii_case("true") => Ok(true),
            Some(Value::String(b)) if b.eq_ignore_ascii_case("false") => Ok(false),
            Some(other) => Err(Error::invalid_config(format!(
                "{key:?} must be a boolean, not {other}"
            ))),
        };
        let plugins = match list.get("plugins") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(m)
                        if m.get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|t| !t.is_empty()) =>
                    {
                        Ok(m.clone())
                    }
                    _ => Err(Error::invalid_config(format!(
                        "plugins[{i}] is not an object with a \"type\""
                    ))),
                })
                .collect::<Result<Vec<_>>>()?,
            _ => {
                return Err(Error::invalid_config(format!(
                    "network {name:?}: \"plugins\" must be a non-empty list"
                )));
            }
        };
        Ok(ConfList {
            name,
            version,
            disable_check: flag("disableCheck")?,
            disable_gc: flag("disableGC")?,
            plugins,
            bytes: bytes.to_vec(),
        })
    }

    /// Parses a single-plugin `.conf` and wraps it as a list of one.
    pub fn from_conf_bytes(bytes: &[u8]) -> Result<ConfList> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::decode(format!("error parsing configuration: {e}")))?;
        let Value::Object(conf) = &value else {
            return Err(Error::decode("configuration is not a JSON object"));
        };
        if conf
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(Error::invalid_config(
                "error parsing configuration: missing 'type'",
            ));
        }
        let list = json!({
            "name": conf.get("name").cloned().unwrap_or(Value::Null),
            "cniVersion": conf.get("cniVersion").cloned().unwrap_or(json!("")),
            "plugins": [value],
        });
        ConfList::from_list_bytes(&serde_json::to_vec(&list).unwrap_or_default())
    }

    /// Finds network `name` in `dir`: `.conflist` files first, then `.conf` and `.json`, each
    /// group in file-name order. Files that do not parse are skipped but reported if the
    /// network is not found.
    pub fn load(dir: &Path, name: &str) -> Result<ConfList> {
        let mut broken = Vec::new();
        for (exts, parse) in [
            (
                &["conflist"][..],
                ConfList::from_list_bytes as fn(&[u8]) -> Result<ConfList>,
            ),
            (&["conf", "json"][..], ConfList::from_conf_bytes),
        ] {
            for file in files(dir, exts)? {
                let loaded = std::fs::read(&file)
                    .map_err(Error::from)
                    .and_then(|b| parse(&b));
                match loaded {
                    Ok(list) if list.name == name => return Ok(list),
                    Ok(_) => {}
                    Err(e) => broken.push(format!("{}: {}", file.display(), e.msg)),
                }
            }
        }
        let mut err = Error::invalid_config(format!(
            "no net configuration with name {name:?} in {}",
            dir.display()
        ));
        if !broken.is_empty() {
            err = err.with_details(format!("unreadable files: {}", broken.join("; ")));
        }
        Err(err)
    }
}

fn list_version(list: &Map<String, Value>) -> Result<Version> {
    // 1.1.0: `cniVersions` lists every version the file can be read as; take the highest we speak.
    if let Some(Value::Array(all)) = list.get("cniVersions") {
        let strs: Vec<&str> = all.iter().filter_map(Value::as_str).collect();
        if let Some(v) = highest_supported(strs.iter().copied()) {
            return Ok(v);
        }
    }
    match list.get("cniVersion") {
        None | Some(Value::Null) => Ok(Version::DEFAULT),
        Some(Value::String(s)) if s.is_empty() => Ok(Version::DEFAULT),
        Some(Value::String(s)) => s.parse().map_err(|_| {
            Error::incompatible(format!("unsupported cniVersion {s:?}"))
                .with_details(format!("supported: {}", Version::list()))
        }),
        Some(other) => Err(Error::invalid_config(format!(
            "\"cniVersion\" must be a string, not {other}"
        ))),
    }
}

fn files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::invalid_config(format!(
            "cannot read network config directory {}: {e}",
            dir.display()
        ))
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| exts.contains(&e))
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lists_before_confs_and_wraps_confs() {
        let dir = tempfile::tempdir().unwrap();
        let w = |n: &str, s: &str| std::fs::write(dir.path().join(n), s).unwrap();
        w(
            "10-a.conflist",
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"loopback"}]}"#,
        );
        w(
            "20-a.conf",
            r#"{"cniVersion":"0.4.0","name":"a","type":"bridge"}"#,
        );
        w(
            "30-b.json",
            r#"{"cniVersion":"0.3.1","name":"b","type":"bridge","bridge":"x"}"#,
        );
        w("40-broken.conflist", "{oops");
        w("README", "not a config");
        let a = ConfList::load(dir.path(), "a").unwrap();
        assert_eq!(
            (a.version, a.plugins[0]["type"].as_str()),
            (Version::V1_0_0, Some("loopback"))
        );
        let b = ConfList::load(dir.path(), "b").unwrap();
        assert_eq!(b.version, Version::V0_3_1);
        assert_eq!(b.plugins[0]["bridge"], "x");
        let e = ConfList::load(dir.path(), "c").unwrap_err();
        assert!(e.msg.contains("\"c\""), "{}", e.msg);
        assert!(e.details.contains("40-broken.conflist"), "{}", e.details);
    }

    #[test]
    fn cni_versions_pick_the_highest_supported() {
        let l = ConfList::from_list_bytes(
            br#"{"cniVersion":"0.4.0","cniVersions":["0.4.0","1.1.0","2.0.0"],"name":"n","plugins":[{"type":"t"}]}"#,
        )
        .unwrap();
        assert_eq!(l.version, Version::V1_1_0);
    }

    #[test]
    fn rejects_bad_lists() {
        for (bad, needle) in [
            (r#"{"name":"n","plugins":[]}"#, "plugins"),
            (r#"{"name":"n","plugins":[{"x":1}]}"#, "plugins[0]"),
            (r#"{"plugins":[{"type":"t"}]}"#, "name"),
            (
                r#"{"name":"n","cniVersion":"5.0.0","plugins":[{"type":"t"}]}"#,
                "5.0.0",
            ),
            (
                r#"{"name":"n","disableCheck":"maybe","plugins":[{"type":"t"}]}"#,
                "disableCheck",
            ),
        ] {
            let e = ConfList::from_list_bytes(bad.as_bytes()).unwrap_err();
            assert!(e.msg.contains(needle), "{bad}: {}", e.msg);
        }
    }
}
