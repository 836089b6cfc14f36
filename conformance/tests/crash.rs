//! Crash safety: our cnitool and the plugins it runs are SIGKILLed at random points of ADD and
//! DEL — the whole process group (the runtime and every plugin, as a node losing power or an
//! OOM kill of the runtime's cgroup), or one plugin alone — round after round, each with a
//! fresh container namespace. A DEL through the runtime afterwards (in some rounds after the
//! namespace is gone, or a GC instead, or without the capability arguments) must leave the
//! node as it was: no link, lease, nft or iptables rule, chain or set element, result-cache
//! entry or temp file. On both firewall backends, with a conflist like containerd's default.
//!
//! Delays are drawn uniformly from [0, 1.2 × one ADD's (or DEL's) duration] measured first, so
//! the kills spread over every stage of the chain. The seed is printed first; set
//! `RCNI_CRASH_SEED` to replay a run (the same rounds, and delays as the same fractions of the
//! durations measured then, printed too) and `RCNI_CRASH_ROUNDS` for more rounds per backend
//! (default 50; the fresh-node tests run a quarter of that).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conformance::{
    Netns, Outcome, Workdir, cnitool_command, cnitool_container_id, containerd_conflist,
    files_under, node_with_uplink, outcome_within,
};
use serde_json::json;
use tempfile::TempDir;

const NET: &str = "crashnet";
/// Every node is a namespace of its own: one bridge name for all, so that their states compare.
const BRIDGE: &str = "crash0";
/// A hang guard for every process the test waits for.
const LIMIT: Duration = Duration::from_secs(60);

/// A node with the network `NET` on `backend`, and its state when no pod is attached.
struct Node {
    host: Netns,
    /// The host's links before any CNI operation (lo and the uplink).
    own_links: Vec<String>,
    _ext: Netns,
    work: Workdir,
    data: TempDir,
    caps: String,
}

/// What the node holds; equal to the node's empty state when nothing leaked.
#[derive(Debug, PartialEq, Eq)]
struct State {
    /// The host's links but its own: the bridge and veths.
    host_links: Vec<String>,
    container_links: Vec<String>,
    /// Files in the network's lease directory other than `lock` and the round-robin markers:
    /// leases, and temp files nobody removed.
    lease_dir: Vec<String>,
    /// Files in the result cache other than its lock: entries and temp files.
    cache: Vec<String>,
    firewall: String,
}

impl Node {
    fn new(backend: &str) -> Node {
        let (host, ext) = node_with_uplink();
        let data = tempfile::tempdir().unwrap();
        let work = Workdir::new();
        let conflist = containerd_conflist(
            NET,
            BRIDGE,
            data.path(),
            &["10.66.0.0/24", "fd66::/64"],
            backend,
        );
        work.write_conf("10-crash.conflist", &conflist);
        let caps = json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8053, "containerPort": 53, "protocol": "udp"},
        ]});
        Node {
            own_links: host.link_names(),
            host,
            _ext: ext,
            work,
            data,
            caps: caps.to_string(),
        }
    }

    /// cnitool `verb` for the container namespace at `ctr`.
    fn tool(&self, verb: &str, ctr: &Path) -> Command {
        cnitool_command(
            &self.host,
            &self.work,
            &[verb, NET, ctr.to_str().unwrap()],
            &[("CAP_ARGS", &self.caps)],
        )
    }

    /// cnitool `verb` to its end: what it did, and how long it took.
    fn run(&self, verb: &str, ctr: &Path) -> (Outcome, Duration) {
        let start = Instant::now();
        let out = outcome_within(&mut self.tool(verb, ctr), "", Some(LIMIT));
        (out, start.elapsed())
    }

    /// Starts cnitool `verb` as a process group of its own and after `delay` SIGKILLs `victim`;
    /// returns once every process of the group is gone.
    fn kill_during(&self, verb: &str, ctr: &Path, delay: Duration, victim: Victim) {
        let mut cmd = self.tool(verb, ctr);
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let pid = cmd.spawn().unwrap().id() as i32;
        std::thread::sleep(delay);
        match victim {
            // SAFETY: kill(2) on the process group we just made.
            Victim::Group => unsafe {
                libc::kill(-pid, libc::SIGKILL);
            },
            Victim::Plugin => kill_a_child(pid),
        }
        reap_group(pid);
    }

    /// Waits (up to 10 s) until the host has exactly `links`: the kernel removes a veth whose
    /// peer's namespace is gone in the background.
    fn wait_for_links(&self, links: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cni_links() == links {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The host's links that CNI made (sorted).
    fn cni_links(&self) -> Vec<String> {
        let mut links: Vec<String> = self
            .host
            .link_names()
            .into_iter()
            .filter(|l| !self.own_links.contains(l))
            .collect();
        links.sort();
        links
    }

    /// The node's state, and the container's links while its namespace exists.
    fn state(&self, ctr: Option<&Netns>) -> State {
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        State {
            host_links: self.cni_links(),
            container_links: sorted(ctr.map_or(vec!["lo".into()], Netns::link_names)),
            lease_dir: files_under(&self.data.path().join(NET), &|f| {
                f == "lock" || f.starts_with("last_reserved_ip.") || f == ".owners/table"
            }),
            cache: files_under(&self.work.cache_dir(), &|f| f == "results/.lock"),
            firewall: self.host.firewall_state(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Victim {
    /// The runtime and every plugin it runs.
    Group,
    /// The first plugin running at that moment (the runtime sees it fail and undoes the chain).
    Plugin,
}

/// What one round does before the final DEL.
#[derive(Debug, Clone, Copy)]
enum Kill {
    Add,
    PluginDuringAdd,
    Del,
    AddThenDel,
}

/// SIGKILLs the first child of `pid` seen from now on (a plugin it runs); nothing if `pid`
/// ends first.
fn kill_a_child(pid: i32) {
    let deadline = Instant::now() + LIMIT;
    let children = format!("/proc/{pid}/task/{pid}/children");
    while Instant::now() < deadline {
        let listed = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(child) = listed.split_whitespace().next() {
            // SAFETY: kill(2) on a process of the group we made.
            unsafe { libc::kill(child.parse().unwrap(), libc::SIGKILL) };
            return;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with('Z'))
        {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Waits for every process of group `pgid` (the test process is their subreaper, so plugins
/// orphaned by the runtime's death are reaped here too); kills the group and fails the test if
/// it is not gone within `LIMIT`.
fn reap_group(pgid: i32) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) on our own process group's children.
        let r = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        if r < 0 {
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::ECHILD)
            );
            return;
        }
        if r == 0 {
            if Instant::now() >= deadline {
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                panic!("process group {pgid} still running after {LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn become_subreaper() {
    // SAFETY: prctl(2) with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

fn seed() -> u64 {
    match std::env::var("RCNI_CRASH_SEED") {
        Ok(s) => s.parse().expect("RCNI_CRASH_SEED must be a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

fn rounds() -> usize {
    std::env::var("RCNI_CRASH_ROUNDS").map_or(50, |s| {
        s.parse().expect("RCNI_CRASH_ROUNDS must be a number")
    })
}

/// The lines of `b` that `a` does not have, and the other way round.
fn diff(a: &str, b: &str) -> String {
    let only = |x: &str, y: &str, mark: char| {
        x.lines()
            .filter(|l| !y.lines().any(|m| m == *l))
            .map(|l| format!("{mark} {l}\n"))
            .collect::<String>()
    };
    format!("{}{}", only(a, b, '-'), only(b, a, '+'))
}

/// Which kinds of state a killed operation left for the DEL to remove.
fn left_over(state: &State, empty: &State) -> String {
    let kinds = [
        ("veth", state.host_links != empty.host_links),
        ("ctr-if", state.container_links != empty.container_links),
        ("lease", !state.lease_dir.is_empty()),
        ("cache", !state.cache.is_empty()),
        ("rules", state.firewall != empty.firewall),
    ];
    let left: Vec<&str> = kinds.iter().filter(|k| k.1).map(|k| k.0).collect();
    if left.is_empty() {
        "nothing".into()
    } else {
        left.join("+")
    }
}

fn assert_clean(state: &State, empty: &State, context: &str) {
    assert_eq!(
        state.firewall,
        empty.firewall,
        "{context}: firewall state left:\n{}",
        diff(&empty.firewall, &state.firewall)
    );
    let without_rules = |s: &State| State {
        firewall: String::new(),
        host_links: s.host_links.clone(),
        container_links: s.container_links.clone(),
        lease_dir: s.lease_dir.clone(),
        cache: s.cache.clone(),
    };
    assert_eq!(
        without_rules(state),
        without_rules(empty),
        "{context}: state left"
    );
}

fn crash_rounds(backend: &str) {
    become_subreaper();
    let seed = seed();
    let rounds = rounds();
    eprintln!("crash ({backend}): seed {seed}, {rounds} rounds (replay: RCNI_CRASH_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let node = Node::new(backend);

    // Three whole cycles: the node's shared objects (bridge, tables, hook chains, guard) exist
    // from the first, and the later ones time an ADD and a DEL.
    let (mut add_time, mut del_time) = (Duration::ZERO, Duration::ZERO);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let ctr = Netns::new("c");
        let (add, took_add) = node.run("add", &ctr.path);
        add.ok();
        let (del, took_del) = node.run("del", &ctr.path);
        del.ok();
        (add_time, del_time) = (took_add, took_del);
        ids.push(cnitool_container_id(&ctr.path));
    }
    let empty = node.state(None);
    for id in &ids {
        assert!(
            !empty.firewall.contains(id.as_str()),
            "a whole ADD/DEL left rules of {id}:\n{}",
            empty.firewall
        );
    }
    assert!(
        empty.lease_dir.is_empty() && empty.cache.is_empty(),
        "{empty:?}"
    );
    eprintln!("crash ({backend}): ADD {add_time:?}, DEL {del_time:?}");

    let draw = |rng: &mut fastrand::Rng, op: Duration| op.mul_f64(1.2 * rng.f64());
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..rounds {
        let ctr = Netns::new("c");
        let kind = match rng.u32(0..10) {
            0..4 => Kill::Add,
            4..6 => Kill::PluginDuringAdd,
            6..8 => Kill::Del,
            _ => Kill::AddThenDel,
        };
        let (d_add, d_del) = (draw(&mut rng, add_time), draw(&mut rng, del_time));
        let context = format!(
            "seed {seed} round {round} (kill {kind:?}, kill after {d_add:?} in ADD / {d_del:?} in DEL)"
        );
        let path = ctr.path.clone();
        match kind {
            Kill::Add => node.kill_during("add", &path, d_add, Victim::Group),
            Kill::PluginDuringAdd => node.kill_during("add", &path, d_add, Victim::Plugin),
            Kill::Del => {
                let add = node.run("add", &path).0;
                assert_eq!(add.status, 0, "{context}: ADD failed: {add:?}");
                node.kill_during("del", &path, d_del, Victim::Group);
            }
            Kill::AddThenDel => {
                node.kill_during("add", &path, d_add, Victim::Group);
                node.kill_during("del", &path, d_del, Victim::Group);
            }
        }
        let left = left_over(&node.state(Some(&ctr)), &empty);
        *seen.entry(format!("kill {kind:?}: {left}")).or_default() += 1;
        // Now and then the pod's namespace is gone by the time the runtime cleans up (it
        // restarted after the sandbox was torn down); then now and then it runs a GC instead of
        // the DEL (it forgot the pod). And now and then it does not repeat the capability
        // arguments.
        let ctr = (rng.u32(0..4) != 0).then_some(ctr);
        let verb = if ctr.is_none() && rng.bool() {
            "gc"
        } else {
            "del"
        };
        let mut context = format!(
            "{context}, namespace {}, then {verb}",
            if ctr.is_some() { "kept" } else { "gone" }
        );
        let mut cleanup = node.tool(verb, &path);
        if rng.u32(0..4) == 0 {
            cleanup.env_remove("CAP_ARGS");
            context.push_str(" without CAP_ARGS");
        }
        let cleanup = outcome_within(&mut cleanup, "", Some(LIMIT));
        assert_eq!(
            cleanup.status, 0,
            "{context}: {verb} after the kill failed: {cleanup:?}"
        );
        if ctr.is_none() {
            node.wait_for_links(&empty.host_links);
        }
        assert_clean(&node.state(ctr.as_ref()), &empty, &context);
    }
    eprintln!("crash ({backend}): what the kills left for the DEL: {seen:#?}");
}

/// The first ADD on a fresh node also makes what every pod shares (bridge, tables, hook chains,
/// the shared iptables chains and jumps, the localnet guard): killed at a random point of it,
/// the next pod's ADD (checked) must complete them, and once both pods are deleted the node
/// must hold exactly what a node that never crashed holds.
fn first_add_killed(backend: &str) {
    become_subreaper();
    let seed = seed();
    let rounds = rounds().div_ceil(4);
    eprintln!(
        "crash ({backend}, fresh nodes): seed {seed}, {rounds} rounds (replay: RCNI_CRASH_SEED={seed})"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let clean = Node::new(backend);
    let ctr = Netns::new("c");
    let (add, first_add) = clean.run("add", &ctr.path);
    add.ok();
    clean.run("del", &ctr.path).0.ok();
    let clean = clean.state(None);

    for round in 0..rounds {
        let node = Node::new(backend);
        let (crashed, next) = (Netns::new("c"), Netns::new("c"));
        let delay = first_add.mul_f64(1.2 * rng.f64());
        let context = format!("seed {seed} round {round} (first ADD killed after {delay:?})");
        node.kill_during("add", &crashed.path, delay, Victim::Group);
        let add = node.run("add", &next.path).0;
        assert_eq!(add.status, 0, "{context}: the next ADD failed: {add:?}");
        let check = node.run("check", &next.path).0;
        assert_eq!(check.status, 0, "{context}: its CHECK failed: {check:?}");
        for ctr in [&next, &crashed] {
            let del = node.run("del", &ctr.path).0;
            assert_eq!(del.status, 0, "{context}: DEL failed: {del:?}");
        }
        assert_clean(&node.state(None), &clean, &context);
    }
}

#[test]
fn sigkill_during_a_fresh_nodes_first_add_is_repaired_nftables() {
    first_add_killed("nftables");
}

#[test]
fn sigkill_during_a_fresh_nodes_first_add_is_repaired_iptables() {
    first_add_killed("iptables");
}

#[test]
fn sigkill_anywhere_then_del_leaves_nothing_nftables() {
    crash_rounds("nftables");
}

#[test]
fn sigkill_anywhere_then_del_leaves_nothing_iptables() {
    crash_rounds("iptables");
}
