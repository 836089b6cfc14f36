//! Our cnitool, run with a private config directory and cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{Netns, Outcome, bin, bin_dir, outcome};

/// A private directory of network configs and a result cache, for running a runtime.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn net_dir(&self) -> PathBuf {
        let d = self.dir.path().join("net.d");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Writes `conf` to `file` under the config directory (`file` may name a subdirectory).
    pub fn write_conf(&self, file: &str, conf: &Value) {
        let path = self.net_dir().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec_pretty(conf).unwrap()).unwrap();
    }
}

impl Default for Workdir {
    fn default() -> Self {
        Workdir::new()
    }
}

/// Our cnitool, run inside `host` with this workdir's configs and cache.
pub fn cnitool(host: &Netns, work: &Workdir, args: &[&str]) -> Outcome {
    cnitool_env(host, work, args, &[])
}

/// Our cnitool as `cnitool()` runs it, with extra environment (`CAP_ARGS`, `CNI_PATH`, …).
pub fn cnitool_env(host: &Netns, work: &Workdir, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    outcome(&mut cnitool_command(host, work, args, env), "")
}

/// The container ID every cnitool derives for a namespace path.
pub fn cnitool_container_id(netns: &Path) -> String {
    format!(
        "cnitool-{}",
        libcni::hash::sha512_hex(&netns.display().to_string(), 20)
    )
}

/// Our cnitool for `args` inside `host` with this workdir's configs and cache and extra
/// environment, not yet started (for tests that signal it or bound its time).
pub fn cnitool_command(
    host: &Netns,
    work: &Workdir,
    args: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = host.command(bin("cnitool"));
    cmd.args(args)
        .env("NETCONFPATH", work.net_dir())
        .env("CNI_PATH", bin_dir())
        .env("CNI_CACHE_DIR", work.cache_dir())
        .envs(env.iter().copied());
    cmd
}
