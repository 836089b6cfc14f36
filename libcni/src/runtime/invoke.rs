//! Executing a plugin binary through the protocol: used by the runtime side (`cnitool`) and by
//! plugins that delegate (IPAM).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitStatus, Stdio};
use std::time::Duration;

use crate::protocol::error::{Error, Result};
use crate::protocol::skel::Command;

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
/// otherwise. What the plugin wrote on stderr goes to ours when it succeeds, and into the
/// error when it fails (as the Go library's message when stdout is empty, else in `details`),
/// so a runtime that logs only the error still sees it.
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
            .stderr(Stdio::piped())
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
        // Informational only: a closed stderr must not fail the call.
        let _ = std::io::stderr().write_all(&out.stderr);
        return Ok(out.stdout);
    }
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Err(failure(&name, out.status, &out.stdout, &out.stderr))
}

/// The most of a failing plugin's stderr kept in its error (the end, where the reason is).
const STDERR_KEPT: usize = 16 * 1024;

/// The error of a plugin that exited with `status`, from what it printed.
fn failure(name: &str, status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> Error {
    let stderr = stderr_text(stderr);
    let error = match Error::from_plugin_output(stdout) {
        Some(e) => e,
        None if stdout.is_empty() => {
            return match stderr {
                // Go's wording, so logs read the same whichever library ran the plugin.
                Some(text) => Error::internal(format!("netplugin failed: {text:?}"))
                    .with_details(format!("plugin {name:?} exited with {status}")),
                None => Error::internal(format!(
                    "plugin {name:?} failed with no error message ({status})"
                )),
            };
        }
        None => Error::internal(format!(
            "plugin {name:?} failed ({status}) and its output is not a CNI error: {:?}",
            String::from_utf8_lossy(stdout)
        )),
    };
    match stderr {
        Some(text) => {
            let details = match error.details.as_str() {
                "" => format!("stderr of {name:?}: {text:?}"),
                given => format!("{given}; stderr of {name:?}: {text:?}"),
            };
            error.with_details(details)
        }
        None => error,
    }
}

/// Stderr as text without surrounding whitespace, its end only when long; `None` when empty.
fn stderr_text(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let cut = text.len().saturating_sub(STDERR_KEPT);
    Some(match text.char_indices().find(|(i, _)| *i >= cut) {
        Some((0, _)) | None => text.to_string(),
        Some((i, _)) => format!("…{}", &text[i..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exit(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn stderr_is_the_message_when_stdout_is_empty() {
        let e = failure("bridge", exit(1), b"", b"panic: boom\n\tat main.go:1\n");
        assert_eq!(e.msg, r#"netplugin failed: "panic: boom\n\tat main.go:1""#);
        assert!(e.details.contains("\"bridge\""), "{}", e.details);
        assert!(e.details.contains("exit status: 1"), "{}", e.details);
        let e = failure("bridge", exit(2), b"", b" \n");
        assert!(e.msg.contains("no error message"), "{}", e.msg);
    }

    #[test]
    fn stderr_joins_the_details_of_a_cni_error() {
        let stdout = br#"{"code":7,"msg":"bad mtu","details":"must be a number"}"#;
        let e = failure("bridge", exit(1), stdout, b"warning: x\n");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (crate::Code::InvalidConfig, "bad mtu")
        );
        assert_eq!(
            e.details,
            r#"must be a number; stderr of "bridge": "warning: x""#
        );
        let e = failure("bridge", exit(1), br#"{"code":7,"msg":"m"}"#, b"");
        assert_eq!(e.details, "");
        let e = failure("bridge", exit(1), b"garbage", b"why");
        assert!(
            e.msg.contains("garbage") && e.details.contains("why"),
            "{e}"
        );
    }

    #[test]
    fn long_stderr_keeps_its_end() {
        let long = format!("{}the reason", "é".repeat(STDERR_KEPT));
        let text = stderr_text(long.as_bytes()).unwrap();
        assert!(
            text.starts_with('…') && text.ends_with("the reason"),
            "{text}"
        );
        assert!(text.len() <= STDERR_KEPT + '…'.len_utf8() + 1);
    }
}
