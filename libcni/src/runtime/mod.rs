//! The runtime side of the protocol, as CRI-O, containerd or `cnitool` drive plugins: build each
//! plugin's config, run a chain, keep the final result in the cache.

pub mod cache;
pub mod conflist;
pub mod invoke;
pub mod rollback;

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::kernel::lock::Mode;
use crate::protocol::conf::Attachment;
use crate::protocol::error::{Error, Result};
use crate::protocol::result::CniResult;
use crate::protocol::skel::Command;
pub use cache::{Cache, Entry};
pub use conflist::ConfList;
use invoke::Env;

/// One attachment as the runtime describes it.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `ips`, `mac`, …) offered to plugins.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    fn env(&self, path: &[PathBuf]) -> Env {
        Env {
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            args: self
                .args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
            path: path.to_vec(),
        }
    }
}

pub struct Runtime {
    pub path: Vec<PathBuf>,
    pub cache: Cache,
}

impl Runtime {
    pub fn new(path: Vec<PathBuf>, cache_dir: impl Into<PathBuf>) -> Runtime {
        Runtime {
            path,
            cache: Cache::new(cache_dir),
        }
    }

    /// ADD every plugin in order, each getting the previous result; caches and returns the final
    /// result in the list's version. If a plugin fails, the plugins already run are deleted
    /// again (in reverse) before the error is returned, so a failed ADD leaves nothing behind.
    pub fn add(&self, list: &ConfList, rt: &RuntimeConf) -> Result<Value> {
        let _lock = self.cache.lock(Mode::Shared)?;
        let mut prev: Option<Value> = None;
        for (i, plugin) in list.plugins.iter().enumerate() {
            let ran = self
                .call(list, plugin, Command::Add, rt, prev.as_ref())
                .and_then(|out| {
                    let value: Value = serde_json::from_slice(&out).map_err(|e| {
                        Error::decode(format!(
                            "plugin {} printed an invalid result: {e}",
                            plugin_type(plugin)
                        ))
                    })?;
                    Ok(as_list_version(value, list.version))
                });
            match ran {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    let undo = ConfList {
                        plugins: list.plugins[..=i].to_vec(),
                        ..list.clone()
                    };
                    if let Err(undo_err) = self.del_plugins(&undo, rt, prev.as_ref()) {
                        eprintln!("cleanup after failed ADD: {undo_err}");
                    }
                    return Err(e.context(format!("plugin {} failed (add)", plugin_type(plugin))));
                }
            }
        }
        let result = prev.unwrap_or_else(|| json!({"cniVersion": list.version}));
        // Without its cache entry nobody could CHECK the attachment or keep it through a GC:
        // undo it as if the last plugin had failed.
        let cached = self.cache.write(&Entry {
            kind: String::new(),
            container_id: rt.container_id.clone(),
            config: list.bytes.clone(),
            ifname: rt.ifname.clone(),
            network: list.name.clone(),
            netns: rt.netns.clone(),
            cni_args: rt.args.clone(),
            capability_args: rt.capability_args.clone(),
            result: Some(result.clone()),
        });
        if let Err(e) = cached {
            if let Err(undo_err) = self.del_plugins(list, rt, Some(&result)) {
                eprintln!("cleanup after failed cache write: {undo_err}");
            }
            return Err(e);
        }
        Ok(result)
    }

    /// CHECK every plugin with the cached result.
    pub fn check(&self, list: &ConfList, rt: &RuntimeConf) -> Result<()> {
        if !list.version.has_check() {
            return Err(Error::incompatible(format!(
                "configuration version {} does not support the CHECK command",
                list.version
            )));
        }
        if list.disable_check {
            return Ok(());
        }
        let cached = self.cached_result(list, rt)?.ok_or_else(|| {
            Error::new(
                crate::Code::UnknownContainer,
                format!(
                    "no cached result for network {:?}, container {:?}, interface {:?}: it was not added",
                    list.name, rt.container_id, rt.ifname
                ),
            )
        })?;
        for plugin in &list.plugins {
            self.call(list, plugin, Command::Check, rt, Some(&cached))?;
        }
        Ok(())
    }

    /// DEL every plugin in reverse order with the cached result, then drop the cache entry.
    /// Every plugin is called even when one fails; the entry stays until a DEL fully succeeds.
    /// An unusable cache entry does not block the DEL: it is reported and ignored.
    pub fn del(&self, list: &ConfList, rt: &RuntimeConf) -> Result<()> {
        // A DEL must work even where the cache cannot be created; only a held lock stops it.
        let _lock = match self.cache.lock(Mode::Shared) {
            Ok(lock) => Some(lock),
            Err(e) if e.code == crate::Code::TryAgainLater => return Err(e),
            Err(e) => {
                eprintln!("deleting without the cache lock: {e}");
                None
            }
        };
        self.del_unlocked(list, rt)
    }

    fn del_unlocked(&self, list: &ConfList, rt: &RuntimeConf) -> Result<()> {
        let cached = if list.version.has_check() {
            self.cached_result(list, rt).unwrap_or_else(|e| {
                eprintln!("ignoring the cached result: {e}");
                None
            })
        } else {
            None
        };
        self.del_plugins(list, rt, cached.as_ref())?;
        self.cache.remove(&list.name, &rt.container_id, &rt.ifname)
    }

    fn del_plugins(&self, list: &ConfList, rt: &RuntimeConf, prev: Option<&Value>) -> Result<()> {
        let mut first_err = None;
        for plugin in list.plugins.iter().rev() {
            if let Err(e) = self.call(list, plugin, Command::Del, rt, prev) {
                eprintln!("plugin {} failed (delete): {e}", plugin_type(plugin));
                first_err.get_or_insert(
                    e.context(format!("plugin {} failed (delete)", plugin_type(plugin))),
                );
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// GC, with the cache locked against ADD and DEL: the cached attachments for which `keep`
    /// holds are the valid ones; DEL the others, then (1.1.0) let every plugin drop whatever
    /// belongs to no valid attachment. Nothing at all when the list sets `disableGC`.
    pub fn gc(&self, list: &ConfList, keep: impl Fn(&Entry) -> bool) -> Result<()> {
        if list.disable_gc {
            return Ok(());
        }
        let _lock = self.cache.lock(Mode::Exclusive)?;
        self.cache.remove_stale_temp_files();
        let (kept, gone): (Vec<Entry>, Vec<Entry>) =
            self.cache.entries(&list.name).into_iter().partition(keep);
        let valid: Vec<Attachment> = kept
            .into_iter()
            .map(|e| Attachment {
                container_id: e.container_id,
                ifname: e.ifname,
            })
            .collect();
        let mut first_err = None;
        for entry in gone {
            let rt = RuntimeConf {
                container_id: entry.container_id,
                netns: entry.netns,
                ifname: entry.ifname,
                args: entry.cni_args,
                capability_args: entry.capability_args,
            };
            if let Err(e) = self.del_unlocked(list, &rt) {
                first_err.get_or_insert(e);
            }
        }
        if list.version.has_gc_and_status() {
            let rt = RuntimeConf::default();
            for plugin in &list.plugins {
                let mut conf = plugin.clone();
                conf.insert("cni.dev/valid-attachments".into(), json!(&valid));
                // libcni ≥ 1.2 sends the legacy key too; plugins built on older libraries read only it.
                conf.insert("cni.dev/attachments".into(), json!(&valid));
                if let Err(e) = self.call(list, &conf, Command::Gc, &rt, None) {
                    first_err.get_or_insert(
                        e.context(format!("plugin {} failed (gc)", plugin_type(plugin))),
                    );
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// STATUS (1.1.0): every plugin must be ready.
    pub fn status(&self, list: &ConfList) -> Result<()> {
        if !list.version.has_gc_and_status() {
            return Err(Error::incompatible(format!(
                "configuration version {} does not support STATUS",
                list.version
            )));
        }
        for plugin in &list.plugins {
            self.call(list, plugin, Command::Status, &RuntimeConf::default(), None)
                .map_err(|e| e.context(format!("plugin {} not ready", plugin_type(plugin))))?;
        }
        Ok(())
    }

    fn cached_result(&self, list: &ConfList, rt: &RuntimeConf) -> Result<Option<Value>> {
        let Some(entry) = self.cache.read(&list.name, &rt.container_id, &rt.ifname)? else {
            return Ok(None);
        };
        entry
            .result
            .map(|r| CniResult::convert(&r, list.version, list.version))
            .transpose()
            .map_err(|e| e.context("cached result"))
    }

    fn call(
        &self,
        list: &ConfList,
        plugin: &Map<String, Value>,
        command: Command,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>> {
        let binary = invoke::find_plugin(plugin_type(plugin), &self.path)?;
        let stdin = plugin_stdin(list, plugin, rt, prev);
        invoke::exec(&binary, command, &rt.env(&self.path), &stdin)
    }
}

/// A plugin's result as the next plugin and the cache get it: in the list's version when it can
/// be expressed there, else as the plugin printed it (as the Go library passes every result).
fn as_list_version(value: Value, version: crate::Version) -> Value {
    if value.get("cniVersion").and_then(Value::as_str) == Some(version.as_str()) {
        return value;
    }
    CniResult::convert(&value, version, version).unwrap_or(value)
}

fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// What a plugin reads on stdin: its own object, with the list's `name` and `cniVersion`,
/// `runtimeConfig` built from the capabilities it declares, and `prevResult`.
pub fn plugin_stdin(
    list: &ConfList,
    plugin: &Map<String, Value>,
    rt: &RuntimeConf,
    prev: Option<&Value>,
) -> Vec<u8> {
    let mut conf = plugin.clone();
    conf.insert("name".into(), json!(list.name));
    conf.insert("cniVersion".into(), json!(list.version));
    let runtime_config: Map<String, Value> = plugin
        .get("capabilities")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, on)| on.as_bool() == Some(true))
        .filter_map(|(cap, _)| Some((cap.clone(), rt.capability_args.get(cap)?.clone())))
        .collect();
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    serde_json::to_vec(&conf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_gets_name_version_capabilities_and_prev_result() {
        let list = ConfList::from_list_bytes(
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[
                {"type":"portmap","name":"ignored","capabilities":{"portMappings":true,"ips":false},
                 "runtimeConfig":{"stale":1}}]}"#,
        )
        .unwrap();
        let mut rt = RuntimeConf::default();
        rt.capability_args
            .insert("portMappings".into(), json!([{"hostPort": 8080}]));
        rt.capability_args.insert("ips".into(), json!(["10.0.0.2"]));
        let prev = json!({"cniVersion": "1.0.0"});
        let v: Value =
            serde_json::from_slice(&plugin_stdin(&list, &list.plugins[0], &rt, Some(&prev)))
                .unwrap();
        assert_eq!(v["name"], "net");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]})
        );
        assert_eq!(v["prevResult"], prev);
        // Without matching capability args the file's own runtimeConfig stays, as in Go.
        let v: Value = serde_json::from_slice(&plugin_stdin(
            &list,
            &list.plugins[0],
            &RuntimeConf::default(),
            None,
        ))
        .unwrap();
        assert_eq!(v["runtimeConfig"], json!({"stale": 1}));
        assert!(v.get("prevResult").is_none());
    }
}
