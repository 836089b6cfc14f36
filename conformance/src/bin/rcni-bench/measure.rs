//! One measured operation. Timed runs spawn the operation's processes directly and measure
//! wall time. Accounted runs (not timed) measure what the operation's process tree uses: each
//! process is started under GNU `time`, whose `%M` is the `wait4` peak RSS of the process and
//! every descendant it waited for. A process spawned by the benchmark itself would report the
//! benchmark's own size (the kernel counts the pre-exec image), `time` is small. The processes
//! forked are counted from the kernel's process events.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use libcni::kernel::netns::Netns;

use crate::forks::Watch;

pub type Result<T> = std::result::Result<T, String>;

const GNU_TIME: &str = "/usr/bin/time";

#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub peak_rss_kib: u64,
    pub forks: Option<usize>,
}

/// Runs the processes of one operation and remembers what the measurement needs.
#[derive(Default)]
pub struct Recorder {
    /// Accounted runs: where `time` writes each process's figure.
    scratch: Option<PathBuf>,
    roots: Vec<i32>,
    peak_rss_kib: u64,
}

impl Recorder {
    /// Runs `cmd` with `stdin`, started from inside `ns` when given (a process inherits the
    /// namespace of the thread that starts it); its stdout when it exits 0, else an error with
    /// what it said.
    pub fn run_in(&mut self, ns: &Netns, cmd: &mut Command, stdin: &[u8]) -> Result<Vec<u8>> {
        let _inside = ns
            .enter()
            .map_err(|e| format!("enter {}: {e}", ns.path().display()))?;
        self.run(cmd, stdin)
    }

    pub fn run(&mut self, cmd: &mut Command, stdin: &[u8]) -> Result<Vec<u8>> {
        let what = format!("{:?}", cmd.get_program());
        let figure = self
            .scratch
            .as_ref()
            .map(|d| d.join(format!("rss{}", self.roots.len())));
        let mut wrapped = figure.as_ref().map(|f| under_time(cmd, f));
        let cmd = wrapped.as_mut().unwrap_or(cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        let pid = child.id() as i32;
        self.roots.push(pid);
        if let Some(mut input) = child.stdin.take() {
            // A process that does not read its stdin may close it early: not an error here.
            let _ = input.write_all(stdin);
        }
        let mut stderr = child.stderr.take();
        let mut stdout = Vec::new();
        let mut errors = Vec::new();
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                if let Some(e) = stderr.as_mut() {
                    let _ = e.read_to_end(&mut errors);
                }
            });
            if let Some(mut out) = child.stdout.take() {
                let _ = out.read_to_end(&mut stdout);
            }
            let _ = reader.join();
        });
        let status = wait(pid).map_err(|e| format!("wait for {what}: {e}"))?;
        if let Some(f) = figure {
            self.peak_rss_kib = self.peak_rss_kib.max(read_figure(&f)?);
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            return Err(format!(
                "{what} failed ({status:#x}): {}{}",
                String::from_utf8_lossy(&stdout).trim(),
                String::from_utf8_lossy(&errors).trim()
            ));
        }
        Ok(stdout)
    }
}

/// `cmd` started by GNU `time`, which writes the peak RSS in KiB to `figure`.
fn under_time(cmd: &Command, figure: &std::path::Path) -> Command {
    let mut wrapped = Command::new(GNU_TIME);
    wrapped
        .args([OsStr::new("-f"), OsStr::new("%M"), OsStr::new("-o")])
        .arg(figure)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

/// The last line of what `time` wrote (a failing command gets a line about its status first).
fn read_figure(path: &std::path::Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("time wrote {text:?}"))
}

fn wait(pid: i32) -> std::io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: pid is our own child, not reaped by anyone else (std's Child is never waited).
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Times `op`, which runs its processes through the recorder it is given.
pub fn timed<T>(op: impl FnOnce(&mut Recorder) -> Result<T>) -> Result<(T, f64)> {
    let mut rec = Recorder::default();
    let start = Instant::now();
    let value = op(&mut rec)?;
    Ok((value, start.elapsed().as_secs_f64() * 1000.0))
}

/// Runs `op` once for what its process tree uses: peak RSS and, with a watch, the number of
/// processes (`time` itself left out).
pub fn accounted<T>(
    watch: Option<&Watch>,
    op: impl FnOnce(&mut Recorder) -> Result<T>,
) -> Result<(T, Usage)> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mark = watch
        .map(|w| w.mark())
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut rec = Recorder {
        scratch: Some(scratch.path().to_path_buf()),
        ..Default::default()
    };
    let value = op(&mut rec)?;
    let forks = watch
        .zip(mark.as_ref())
        .and_then(|(w, m)| w.count(m, &rec.roots))
        .map(|n| n - rec.roots.len());
    Ok((
        value,
        Usage {
            peak_rss_kib: rec.peak_rss_kib,
            forks,
        },
    ))
}
