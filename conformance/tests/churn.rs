//! Churn: ADD/DEL cycles through our cnitool, 8 at a time (8 worker threads, each cycle with a
//! container namespace of its own), on one dual-stack network with a hostPort per worker, as
//! a busy node's pods come and go. No address is ever held twice at once (checked against the
//! live results), at every checkpoint the lease files and cache entries are exactly the live
//! attachments', and at the end nothing is left: no link, lease, cache entry, rule, chain or
//! set element beyond what an empty node holds.
//!
//! `RCNI_CHURN_CYCLES` sets the number of cycles: 1,000 by default (about 50 s on an idle
//! 2-vCPU machine with the debug binaries, twice that on a busy one; most of it is the
//! kernel's work on veth pairs and namespaces). The per-operation cost over the cycles is
//! measured by the benchmark (`--churn`), not here.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Duration;

use conformance::{
    Netns, Outcome, Workdir, cnitool_command, cnitool_container_id, containerd_conflist,
    files_under, node_with_uplink, outcome_within, result_ips, unique,
};
use serde_json::json;
use tempfile::TempDir;

const NET: &str = "churnnet";
const WORKERS: usize = 8;
/// Each worker stops for a checkpoint after this many of its cycles, holding an attachment.
const CHECK_EVERY: usize = 5;
const FIRST_HOST_PORT: u16 = 9100;
/// A hang guard for each cnitool run.
const LIMIT: Duration = Duration::from_secs(60);

struct Node {
    host: Netns,
    _ext: Netns,
    work: Workdir,
    data: TempDir,
}

/// What a worker holds now: address → the attachment's container ID.
type Live = Mutex<HashMap<IpAddr, String>>;

impl Node {
    fn new() -> Node {
        let (host, ext) = node_with_uplink();
        let data = tempfile::tempdir().unwrap();
        let work = Workdir::new();
        let conflist = containerd_conflist(
            NET,
            &unique("ch"),
            data.path(),
            &["10.67.0.0/24", "fd67::/64"],
            "nftables",
        );
        work.write_conf("10-churn.conflist", &conflist);
        Node {
            host,
            _ext: ext,
            work,
            data,
        }
    }

    /// cnitool `verb` for `ctr`, whose pod maps host port `port` to its port 80.
    fn tool(&self, verb: &str, ctr: &Netns, port: u16) -> Outcome {
        let caps = json!({"portMappings": [
            {"hostPort": port, "containerPort": 80, "protocol": "tcp"},
        ]});
        let mut cmd = cnitool_command(
            &self.host,
            &self.work,
            &[verb, NET, ctr.path.to_str().unwrap()],
            &[("CAP_ARGS", &caps.to_string())],
        );
        outcome_within(&mut cmd, "", Some(LIMIT))
    }

    /// Lease files: address → content.
    fn leases(&self) -> BTreeMap<String, String> {
        conformance::dir_files(&self.data.path().join(NET))
            .into_iter()
            .filter(|(name, _)| name.parse::<IpAddr>().is_ok())
            .map(|(name, f)| (name, String::from_utf8_lossy(&f.content).into_owned()))
            .collect()
    }

    /// Cache entries and temp files (everything but the lock).
    fn cache_files(&self) -> Vec<String> {
        files_under(&self.work.cache_dir(), &|f| f == "results/.lock")
    }

    /// The checkpoint: what disagrees between the lease files and cache entries on one side
    /// and the live attachments on the other.
    fn mismatches(&self, live: &HashMap<IpAddr, String>) -> Vec<String> {
        let want: BTreeMap<String, String> = live
            .iter()
            .map(|(ip, id)| (ip.to_string(), format!("{id}\r\neth0")))
            .collect();
        let mut wrong = Vec::new();
        let leases = self.leases();
        if leases != want {
            wrong.push(format!("leases {leases:?}, live {want:?}"));
        }
        let mut ids: Vec<&String> = live.values().collect();
        ids.sort();
        ids.dedup();
        let mut entries: Vec<String> = ids
            .iter()
            .map(|id| format!("results/{NET}-{id}-eth0"))
            .collect();
        entries.sort();
        let cached = self.cache_files();
        if cached != entries {
            wrong.push(format!("cache {cached:?}, live {entries:?}"));
        }
        wrong
    }
}

fn cycles() -> usize {
    std::env::var("RCNI_CHURN_CYCLES").map_or(1000, |s| {
        s.parse().expect("RCNI_CHURN_CYCLES must be a number")
    })
}

/// Shared by the workers: who holds which address, what went wrong, the checkpoints.
struct Churn<'a> {
    node: &'a Node,
    live: Live,
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
    checkpoint: Barrier,
}

impl Churn<'_> {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    /// One worker's `cycles` ADD/DEL cycles. Never panics (a panic would leave the others
    /// waiting at a checkpoint): failures are collected, and every worker stops at the first
    /// checkpoint after one.
    fn worker(&self, w: usize, cycles: usize) {
        let port = FIRST_HOST_PORT + w as u16;
        for cycle in 0..cycles {
            let ctr = Netns::new("c");
            let id = cnitool_container_id(&ctr.path);
            let ips = self.guarded(&format!("worker {w} cycle {cycle} ADD"), || {
                self.add(&ctr, port, &id)
            });
            if (cycle + 1) % CHECK_EVERY == 0 || cycle + 1 == cycles {
                self.check();
                if self.stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            {
                let mut live = self.live.lock().unwrap();
                for ip in ips.iter().flatten() {
                    live.remove(ip);
                }
            }
            self.guarded(&format!("worker {w} cycle {cycle} DEL"), || {
                let del = self.node.tool("del", &ctr, port);
                if del.status != 0 {
                    self.fail(format!("DEL failed: {del:?}"));
                }
            });
        }
    }

    /// ADD, then the result's addresses enter the live set: none may be held already.
    fn add(&self, ctr: &Netns, port: u16, id: &str) -> Vec<IpAddr> {
        let add = self.node.tool("add", ctr, port);
        if add.status != 0 {
            self.fail(format!("ADD failed: {add:?}"));
            return Vec::new();
        }
        let ips: Vec<IpAddr> = result_ips(&add.json)
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        let mut live = self.live.lock().unwrap();
        for ip in &ips {
            if let Some(holder) = live.insert(*ip, id.to_string()) {
                self.fail(format!("{ip} handed to {id} while {holder} holds it"));
            }
        }
        ips
    }

    /// Runs `step`; a panic inside (a hang guard firing) becomes a failure.
    fn guarded<T>(&self, what: &str, step: impl FnOnce() -> T) -> Option<T> {
        std::panic::catch_unwind(AssertUnwindSafe(step))
            .map_err(|e| {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.fail(format!("{what} panicked: {msg}"));
            })
            .ok()
    }

    /// Every worker holds its attachment (or failed to make it): one of them compares the
    /// node's leases and cache with the live set while the others wait.
    fn check(&self) {
        if self.checkpoint.wait().is_leader() {
            let live = self.live.lock().unwrap().clone();
            for wrong in self.node.mismatches(&live) {
                self.fail(format!("checkpoint: {wrong}"));
            }
            let failed = !self.failures.lock().unwrap().is_empty();
            self.stop.store(failed, Ordering::SeqCst);
        }
        self.checkpoint.wait();
    }
}

#[test]
fn add_del_cycles_eight_at_a_time_hold_no_address_twice_and_leave_nothing() {
    let node = Node::new();
    // One whole cycle first: the node's shared objects (bridge, tables, hooks) then exist.
    let first = Netns::new("c");
    node.tool("add", &first, FIRST_HOST_PORT).ok();
    node.tool("del", &first, FIRST_HOST_PORT).ok();
    let (links, firewall) = (node.host.link_names(), node.host.firewall_state());

    let cycles = cycles();
    let per_worker = cycles.div_ceil(WORKERS);
    let churn = Churn {
        node: &node,
        live: Mutex::new(HashMap::new()),
        failures: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        checkpoint: Barrier::new(WORKERS),
    };
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let churn = &churn;
            s.spawn(move || churn.worker(w, per_worker));
        }
    });
    let failures = churn.failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures in {} cycles, the first ones:\n{}",
        failures.len(),
        per_worker * WORKERS,
        failures[..failures.len().min(10)].join("\n")
    );

    assert_eq!(node.leases(), BTreeMap::new(), "leases left");
    assert_eq!(
        node.cache_files(),
        Vec::<String>::new(),
        "cache entries left"
    );
    assert_eq!(node.host.link_names(), links, "links left");
    assert_eq!(node.host.firewall_state(), firewall, "firewall state left");
}
