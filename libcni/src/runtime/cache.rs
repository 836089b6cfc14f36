//! The result cache under `<cacheDir>/results/<network>-<containerID>-<ifname>`, in the Go
//! libcni's `cniCacheV1` format, so that either tool can CHECK and DEL what the other ADDed.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::protocol::error::{Error, Result};

pub const DEFAULT_DIR: &str = "/var/lib/cni";
const KIND: &str = "cniCacheV1";
/// In the results directory; Go's libcni reads only `<network>-…` entries there.
const LOCK: &str = ".lock";
/// Temp files of an entry are `.<entry>.tmp<pid>.<random>`.
const TEMP_MARK: &str = ".tmp";
/// How long an operation waits for the cache lock before failing with code 11.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The network configuration list's bytes, base64 (Go's encoding of `[]byte`).
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    #[serde(rename = "ifName")]
    pub ifname: String,
    #[serde(rename = "networkName")]
    pub network: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<(String, String)>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Cache {
        Cache {
            dir: cache_dir.into().join("results"),
        }
    }

    fn path(&self, network: &str, container_id: &str, ifname: &str) -> Result<PathBuf> {
        for (what, part) in [
            ("network name", network),
            ("container ID", container_id),
            ("interface name", ifname),
        ] {
            if part.is_empty() || part.contains('/') || part == "." || part == ".." {
                return Err(Error::invalid_config(format!(
                    "cannot cache result: invalid {what} {part:?}"
                )));
            }
        }
        Ok(self.dir.join(format!("{network}-{container_id}-{ifname}")))
    }

    /// The lock that orders the runtime's operations on this cache: ADD and DEL hold it
    /// shared, GC exclusive, so a GC never runs between a chain ADD and its cache write.
    /// Held until the file is dropped.
    pub fn lock(&self, mode: crate::kernel::lock::Mode) -> Result<std::fs::File> {
        self.create_dir()?;
        let path = self.dir.join(LOCK);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}: {e}", path.display())))?;
        crate::kernel::lock::lock_within(&file, mode, LOCK_WAIT, &path)?;
        Ok(file)
    }

    fn create_dir(&self) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Error::io(format!("cannot create {}: {e}", self.dir.display())))
    }

    /// Writes the entry atomically (temp file + rename): a crash never leaves half a file.
    pub fn write(&self, entry: &Entry) -> Result<()> {
        let path = self.path(&entry.network, &entry.container_id, &entry.ifname)?;
        self.create_dir()?;
        let data = serde_json::to_vec(&Entry {
            kind: KIND.into(),
            ..entry.clone()
        })
        .unwrap_or_default();
        let failed = |e: std::io::Error| {
            Error::io(format!(
                "cannot write cached result {}: {e}",
                path.display()
            ))
        };
        let (tmp, mut file) = crate::kernel::temp_file::create(&self.dir, &temp_stem(&path), 0o600)
            .map_err(failed)?;
        file.write_all(&data)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                failed(e)
            })
    }

    /// The cached entry, if any. A file in the pre-v1 format (a bare result) comes back as an
    /// entry holding just that result.
    pub fn read(&self, network: &str, container_id: &str, ifname: &str) -> Result<Option<Entry>> {
        let path = self.path(network, container_id, ifname)?;
        // Never through a symlink: the entry is ours, written by rename.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        let bytes = match opened.and_then(|mut f| {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut b).map(|_| b)
        }) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::io(format!(
                    "cannot read cached result {}: {e}",
                    path.display()
                )));
            }
        };
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Error::decode(format!("cached result {} is not JSON: {e}", path.display()))
        })?;
        if value.get("kind").and_then(Value::as_str) == Some(KIND) {
            return serde_json::from_value(value)
                .map(Some)
                .map_err(|e| Error::decode(format!("cached result {}: {e}", path.display())));
        }
        Ok(Some(Entry {
            kind: KIND.into(),
            container_id: container_id.into(),
            config: Vec::new(),
            ifname: ifname.into(),
            network: network.into(),
            netns: String::new(),
            cni_args: Vec::new(),
            capability_args: Map::new(),
            result: Some(value),
        }))
    }

    /// Removes the entry, and the temp files of writes of it that were killed before their
    /// rename.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(network, container_id, ifname)?;
        self.remove_temp_files(|name| {
            crate::kernel::temp_file::is_made_under(name, &temp_stem(&path))
        });
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(format!(
                "cannot remove cached result {}: {e}",
                path.display()
            ))),
            _ => Ok(()),
        }
    }

    /// Removes every temp file a killed write left. Only with the lock held exclusive (GC),
    /// when no write can be under way.
    pub fn remove_stale_temp_files(&self) {
        self.remove_temp_files(|name| {
            name.rfind(TEMP_MARK).is_some_and(|at| {
                crate::kernel::temp_file::is_made_under(name, &name[..at + TEMP_MARK.len()])
            })
        });
    }

    fn remove_temp_files(&self, is_stale: impl Fn(&str) -> bool) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.starts_with('.') && is_stale(n))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Every v1 entry of `network` (the attachments a runtime knows about).
    pub fn entries(&self, network: &str) -> Vec<Entry> {
        let prefix = format!("{network}-");
        self.entries_where(|name| name.starts_with(&prefix))
            .into_iter()
            .filter(|e| e.network == network)
            .collect()
    }

    /// Every v1 entry of every network.
    pub fn all_entries(&self) -> Vec<Entry> {
        self.entries_where(|name| !name.starts_with('.'))
    }

    fn entries_where(&self, file_name: impl Fn(&str) -> bool) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter(|e| file_name(&e.file_name().to_string_lossy()))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Entry>(&b).ok())
            .filter(|e| e.kind == KIND)
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The stem of the temp files `write` makes for the entry at `path`.
fn temp_stem(path: &Path) -> String {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    format!(".{name}{TEMP_MARK}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(cid: &str) -> Entry {
        Entry {
            kind: String::new(),
            container_id: cid.into(),
            config: b"{\"name\":\"n\"}\n".to_vec(),
            ifname: "eth0".into(),
            network: "n".into(),
            netns: "/run/netns/x".into(),
            cni_args: vec![("A".into(), "1".into())],
            capability_args: Map::new(),
            result: Some(json!({"cniVersion": "1.0.0"})),
        }
    }

    #[test]
    fn writes_the_go_layout() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        cache.write(&entry("c1")).unwrap();
        let raw: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("results/n-c1-eth0")).unwrap())
                .unwrap();
        assert_eq!(raw["kind"], "cniCacheV1");
        assert_eq!(raw["containerId"], "c1");
        assert_eq!(raw["config"], "eyJuYW1lIjoibiJ9Cg==");
        assert_eq!(raw["cniArgs"], json!([["A", "1"]]));
        assert!(raw.get("capabilityArgs").is_none());
        let back = cache.read("n", "c1", "eth0").unwrap().unwrap();
        assert_eq!(back.result, Some(json!({"cniVersion": "1.0.0"})));
        assert_eq!(cache.entries("n").len(), 1);
        assert!(cache.entries("m").is_empty());
        assert_eq!(cache.all_entries().len(), 1);
        cache.remove("n", "c1", "eth0").unwrap();
        cache.remove("n", "c1", "eth0").unwrap();
        assert!(cache.read("n", "c1", "eth0").unwrap().is_none());
    }

    /// A write killed between creating its temp file and the rename leaves the temp file:
    /// the entry's DEL removes it (not another entry's), GC removes every one.
    #[test]
    fn temp_files_of_killed_writes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        cache.write(&entry("c1")).unwrap();
        cache.write(&entry("c2")).unwrap();
        let killed = |cid: &str| {
            crate::kernel::temp_file::create(&cache.dir, &format!(".n-{cid}-eth0.tmp"), 0o600)
                .unwrap()
                .0
        };
        let (c1, c2, c3) = (killed("c1"), killed("c2"), killed("c3"));
        cache.remove("n", "c1", "eth0").unwrap();
        assert!(!c1.exists(), "the entry's temp file survived its DEL");
        assert!(
            c2.exists() && c3.exists(),
            "another entry's temp file removed"
        );
        cache.remove_stale_temp_files();
        assert!(!c2.exists() && !c3.exists());
        let names: Vec<_> = std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["n-c2-eth0"]);
    }

    #[test]
    fn reads_legacy_bare_results_and_refuses_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        std::fs::write(
            dir.path().join("results/n-c2-eth0"),
            r#"{"cniVersion":"0.3.1","ips":[]}"#,
        )
        .unwrap();
        let cache = Cache::new(dir.path());
        let e = cache.read("n", "c2", "eth0").unwrap().unwrap();
        assert_eq!(e.result.unwrap()["cniVersion"], "0.3.1");
        assert!(cache.read("n", "../x", "eth0").is_err());
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "untouched").unwrap();
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        let entry_path = dir.path().join("results/n-c1-eth0");
        std::os::unix::fs::symlink(&target, &entry_path).unwrap();
        let cache = Cache::new(dir.path());
        assert!(
            cache.read("n", "c1", "eth0").is_err(),
            "read through a symlink"
        );
        cache.write(&entry("c1")).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert!(std::fs::symlink_metadata(&entry_path).unwrap().is_file());
        let names: Vec<_> = std::fs::read_dir(dir.path().join("results"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["n-c1-eth0"], "temp file left behind");
    }
}
