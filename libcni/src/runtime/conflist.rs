//! Network configuration files as a runtime finds them: `.conflist` lists, and single-plugin
//! `.conf` / `.json` files that are turned into a list of one.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::protocol::error::{Error, Result};
use crate::protocol::version::{Version, highest_supported};

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
    /// Parses a `.conflist` whose plugins are all inline.
    pub fn from_list_bytes(bytes: &[u8]) -> Result<ConfList> {
        parse_list(bytes)?.list.with_plugins()
    }

    /// Reads a `.conflist` file: its inline plugins, then (unless `loadOnlyInlinedPlugins`)
    /// the `*.conf` files of the directory `<its directory>/<network name>/`, in file-name
    /// order, as libcni 1.3 does. A list may leave `plugins` out and have them all there.
    pub fn from_list_file(path: &Path) -> Result<ConfList> {
        let bytes = read(path)?;
        parse_list(&bytes)?.load_plugin_dir(path)
    }

    /// Parses a single-plugin `.conf` and wraps it as a list of one.
    pub fn from_conf_bytes(bytes: &[u8]) -> Result<ConfList> {
        let conf = plugin_conf(bytes)?;
        let list = json!({
            "name": conf.get("name").cloned().unwrap_or(Value::Null),
            "cniVersion": conf.get("cniVersion").cloned().unwrap_or(json!("")),
            "plugins": [conf],
        });
        ConfList::from_list_bytes(&serde_json::to_vec(&list).unwrap_or_default())
    }

    /// Finds network `name` in `dir`: `.conflist` files first, then `.conf` and `.json`, each
    /// group in file-name order. Files that do not parse are skipped but reported if the
    /// network is not found; the plugin directory of the network found must load.
    pub fn load(dir: &Path, name: &str) -> Result<ConfList> {
        let mut broken = Vec::new();
        for file in files(dir, &["conflist"]).map_err(|e| unreadable_dir(dir, e))? {
            match read(&file).and_then(|b| parse_list(&b)) {
                Ok(parsed) if parsed.list.name == name => return parsed.load_plugin_dir(&file),
                Ok(_) => {}
                Err(e) => broken.push(format!("{}: {}", file.display(), e.msg)),
            }
        }
        for file in files(dir, &["conf", "json"]).map_err(|e| unreadable_dir(dir, e))? {
            match read(&file).and_then(|b| ConfList::from_conf_bytes(&b)) {
                Ok(list) if list.name == name => return Ok(list),
                Ok(_) => {}
                Err(e) => broken.push(format!("{}: {}", file.display(), e.msg)),
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

    fn with_plugins(self) -> Result<ConfList> {
        if self.plugins.is_empty() {
            return Err(Error::invalid_config(format!(
                "network {:?}: no plugin configs found (neither in \"plugins\" nor in its plugin directory)",
                self.name
            )));
        }
        Ok(self)
    }
}

/// A `.conflist` as parsed, before its plugin directory is read.
struct ParsedList {
    list: ConfList,
    load_only_inlined_plugins: bool,
}

impl ParsedList {
    fn load_plugin_dir(mut self, list_file: &Path) -> Result<ConfList> {
        if !self.load_only_inlined_plugins {
            let parent = list_file.parent().unwrap_or(Path::new("."));
            let found = plugin_dir_confs(parent, &self.list.name)?;
            self.list.plugins.extend(found);
        }
        self.list.with_plugins()
    }
}

/// Parses a list; `plugins` may be absent (its plugins are then in the plugin directory)
/// unless `loadOnlyInlinedPlugins`, but when present it is a non-empty list, as in libcni.
fn parse_list(bytes: &[u8]) -> Result<ParsedList> {
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
    let load_only_inlined_plugins = flag("loadOnlyInlinedPlugins")?;
    let plugins = match list.get("plugins") {
        None | Some(Value::Null) if load_only_inlined_plugins => {
            return Err(Error::invalid_config(format!(
                "network {name:?}: \"loadOnlyInlinedPlugins\" is true and there is no \"plugins\" list"
            )));
        }
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                Value::Object(m) if has_type(m) => Ok(m.clone()),
                _ => Err(Error::invalid_config(format!(
                    "plugins[{i}] is not an object with a \"type\""
                ))),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(_) => {
            return Err(Error::invalid_config(format!(
                "network {name:?}: \"plugins\" must be a non-empty list"
            )));
        }
    };
    Ok(ParsedList {
        list: ConfList {
            name,
            version,
            disable_check: flag("disableCheck")?,
            disable_gc: flag("disableGC")?,
            plugins,
            bytes: bytes.to_vec(),
        },
        load_only_inlined_plugins,
    })
}

/// One plugin's config (a `.conf` file): a JSON object with a `type`.
fn plugin_conf(bytes: &[u8]) -> Result<Map<String, Value>> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::decode(format!("error parsing configuration: {e}")))?;
    match value {
        Value::Object(conf) if has_type(&conf) => Ok(conf),
        Value::Object(_) => Err(Error::invalid_config(
            "error parsing configuration: missing 'type'",
        )),
        _ => Err(Error::decode("configuration is not a JSON object")),
    }
}

fn has_type(conf: &Map<String, Value>) -> bool {
    conf.get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty())
}

/// The plugin configs in `<dir>/<network>/*.conf`, in file-name order; none when that
/// directory does not exist. Any file there that does not load fails the whole list.
fn plugin_dir_confs(dir: &Path, network: &str) -> Result<Vec<Map<String, Value>>> {
    // The name becomes a path component: never one that leaves `dir`.
    if !crate::protocol::conf::valid_identifier(network) {
        return Err(Error::invalid_config(format!(
            "invalid network name {network:?}: cannot look for its plugin directory"
        )));
    }
    let plugin_dir = dir.join(network);
    let found = match files(&plugin_dir, &["conf"]) {
        Ok(found) => found,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::invalid_config(format!(
                "failed to read plugin config files in {}: {e}",
                plugin_dir.display()
            )));
        }
    };
    found
        .iter()
        .map(|file| {
            read(file)
                .and_then(|b| plugin_conf(&b))
                .map_err(|e| Error::invalid_config(format!("{}: {}", file.display(), e.msg)))
        })
        .collect()
}

fn read(file: &Path) -> Result<Vec<u8>> {
    std::fs::read(file)
        .map_err(|e| Error::invalid_config(format!("error reading {}: {e}", file.display())))
}

fn unreadable_dir(dir: &Path, e: std::io::Error) -> Error {
    Error::invalid_config(format!(
        "cannot read network config directory {}: {e}",
        dir.display()
    ))
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

/// The files of `dir` (not directories) with one of `exts`, in file-name order.
fn files(dir: &Path, exts: &[&str]) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
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

    fn types(list: &ConfList) -> Vec<&str> {
        list.plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn plugins_come_from_the_network_directory_in_file_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let w = |n: &str, s: &str| std::fs::write(dir.path().join(n), s).unwrap();
        std::fs::create_dir_all(dir.path().join("net/sub.conf")).unwrap();
        w("10-net.conflist", r#"{"cniVersion":"1.0.0","name":"net"}"#);
        w("net/20-portmap.conf", r#"{"type":"portmap"}"#);
        w("net/10-bridge.conf", r#"{"type":"bridge","bridge":"b0"}"#);
        w("net/30-other.json", r#"{"type":"ignored"}"#);
        w("net/40-list.conflist", r#"{"type":"ignored"}"#);
        let list = ConfList::load(dir.path(), "net").unwrap();
        assert_eq!(types(&list), ["bridge", "portmap"]);
        assert_eq!(list.plugins[0]["bridge"], "b0");
        // The list's own bytes are what the cache keeps, as libcni does.
        assert_eq!(list.bytes, br#"{"cniVersion":"1.0.0","name":"net"}"#);
    }

    #[test]
    fn inline_plugins_come_first_unless_only_they_count() {
        let dir = tempfile::tempdir().unwrap();
        let w = |n: &str, s: &str| std::fs::write(dir.path().join(n), s).unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        w("net/1.conf", r#"{"type":"portmap"}"#);
        let list_file = dir.path().join("net.conflist");
        w(
            "net.conflist",
            r#"{"name":"net","plugins":[{"type":"bridge"}]}"#,
        );
        let list = ConfList::from_list_file(&list_file).unwrap();
        assert_eq!(types(&list), ["bridge", "portmap"]);
        for only in [r#"true"#, r#""TRUE""#] {
            w(
                "net.conflist",
                &format!(
                    r#"{{"name":"net","loadOnlyInlinedPlugins":{only},"plugins":[{{"type":"bridge"}}]}}"#
                ),
            );
            let list = ConfList::from_list_file(&list_file).unwrap();
            assert_eq!(types(&list), ["bridge"], "{only}");
        }
        w(
            "net.conflist",
            r#"{"name":"net","loadOnlyInlinedPlugins":true}"#,
        );
        let e = ConfList::from_list_file(&list_file).unwrap_err();
        assert!(e.msg.contains("loadOnlyInlinedPlugins"), "{}", e.msg);
        // An empty inline list stays an error, whatever the directory holds.
        w("net.conflist", r#"{"name":"net","plugins":[]}"#);
        let e = ConfList::from_list_file(&list_file).unwrap_err();
        assert!(e.msg.contains("non-empty"), "{}", e.msg);
    }

    #[test]
    fn a_list_without_plugins_anywhere_or_with_a_broken_plugin_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let w = |n: &str, s: &str| std::fs::write(dir.path().join(n), s).unwrap();
        w("10-net.conflist", r#"{"name":"net"}"#);
        let e = ConfList::load(dir.path(), "net").unwrap_err();
        assert!(e.msg.contains("no plugin configs found"), "{}", e.msg);
        std::fs::create_dir(dir.path().join("net")).unwrap();
        let e = ConfList::load(dir.path(), "net").unwrap_err();
        assert!(e.msg.contains("no plugin configs found"), "{}", e.msg);
        for (bad, needle) in [("{oops", "error parsing"), (r#"{"x":1}"#, "'type'")] {
            w("net/2.conf", r#"{"type":"bridge"}"#);
            w("net/1.conf", bad);
            let e = ConfList::load(dir.path(), "net").unwrap_err();
            assert!(
                e.msg.contains("1.conf") && e.msg.contains(needle),
                "{}",
                e.msg
            );
        }
        // Another network's broken plugin directory does not hide this one.
        w(
            "20-other.conflist",
            r#"{"name":"other","plugins":[{"type":"loopback"}]}"#,
        );
        assert_eq!(
            types(&ConfList::load(dir.path(), "other").unwrap()),
            ["loopback"]
        );
    }

    #[test]
    fn a_network_name_never_leaves_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        let list_file = dir.path().join("net.conflist");
        std::fs::write(&list_file, r#"{"name":"../x"}"#).unwrap();
        let e = ConfList::from_list_file(&list_file).unwrap_err();
        assert!(e.msg.contains("invalid network name"), "{}", e.msg);
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
