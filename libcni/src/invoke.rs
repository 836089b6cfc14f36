//! Executing a plugin binary through the protocol: used by the runtime side (`cnitool`) and by
//! plugins that delegate (IPAM).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::skel::Command;

/// The `CNI_*` environment of one invocation. Everything else is inherited from our own
/// environment, as the Go library does.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: Vec<PathBuf>,
}

/// Finds `name` in `path` like the Go library: a plain file name, first directory that has it.
pub fn find_plugin(name: &str, path: &[PathBuf]) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::invalid_config(format!(
            "invalid plugin type {name:?}"
        )));
    }
    if path.is_empty() {
        return Err(Error::invalid_env(format!(
            "cannot find plugin {name:?}: CNI_PATH is empty"
        )));
    }
    path.iter()
        .map(|dir| dir.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file()))
        .ok_or_else(|| {
            let dirs: Vec<String> = path.iter().map(|d| d.display().to_string()).collect();
            Error::invalid_config(format!(
                "failed to find plugin {name:?} in path [{}]",
                dirs.join(" ")
            ))
        })
}

/// Runs `plugin` with `command`, feeding `stdin`; returns its stdout on success, its CNI error
/// otherwise. The plugin's stderr goes to ours.
pub fn exec(plugin: &Path, command: Command, env: &Env, stdin: &[u8]) -> Result<Vec<u8>> {
    let joined = std::env::join_paths(&env.path)
        .map_err(|e| Error::invalid_env(format!("CNI_PATH: {e}")))?;
    let mut attempt = 0;
    let mut child = loop {
        let spawned = Process::new(plugin)
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &env.container_id)
            .env("CNI_NETNS", &env.netns)
            .env("CNI_IFNAME", &env.ifname)
            .env("CNI_ARGS", &env.args)
            .env("CNI_PATH", &joined)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        match spawned {
            Ok(child) => break child,
            // A binary being replaced (an upgrade in progress) is busy for a moment.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 50 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(Error::internal(format!(
                    "cannot execute plugin {}: {e}",
                    plugin.display()
                )));
            }
        }
    };
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading stdin closes the pipe; its exit status tells.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        Error::internal(format!("cannot wait for plugin {}: {e}", plugin.display()))
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Err(match Error::from_plugin_output(&out.stdout) {
        Some(e) => e,
        None if out.stdout.is_empty() => Error::internal(format!(
            "plugin {name:?} failed with no error message ({})",
            out.status
        )),
        None => Error::internal(format!(
            "plugin {name:?} failed ({}) and its output is not a CNI error: {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        )),
    })
}
