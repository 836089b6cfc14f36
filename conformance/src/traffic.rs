//! Traffic between namespaces: echo servers, questions to them, pings.

use std::process::Stdio;

use crate::{Netns, bin};

/// A background process, killed and reaped on drop.
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Netns {
    /// `rcni-echo serve <proto> <addr> <reply>` in this namespace, until the guard is dropped.
    pub fn serve(&self, proto: &str, addr: &str, reply: &str) -> Background {
        let child = self
            .command(bin("rcni-echo"))
            .args(["serve", proto, addr, reply])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Background(child)
    }

    /// `rcni-echo ask <proto> <addr> <timeout_ms>` from this namespace: the reply, if any.
    pub fn ask(&self, proto: &str, addr: &str, timeout_ms: u64) -> Option<String> {
        let out = self
            .command(bin("rcni-echo"))
            .args(["ask", proto, addr, &timeout_ms.to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Asks until the reply is `want`, for at most `within` (servers starting up); whether it
    /// came.
    pub fn answers(
        &self,
        proto: &str,
        addr: &str,
        want: &str,
        within: std::time::Duration,
    ) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.ask(proto, addr, 200).as_deref() == Some(want) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether one of up to `tries` single pings from this namespace to `addr` is answered.
    pub fn ping(&self, addr: &str, tries: u32) -> bool {
        (0..tries).any(|_| {
            self.command("ping")
                .args(["-n", "-q", "-c", "1", "-W", "1", addr])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        })
    }
}
