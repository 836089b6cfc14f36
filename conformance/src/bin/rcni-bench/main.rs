//! rcni-bench: our plugins, the reference plugins and the kernel floor, measured side by side in
//! one run, inside private namespaces it makes and removes. Run as root; see `--help`.

mod forks;
mod measure;
mod node;
mod report;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use measure::{Recorder, Result, accounted, timed};
use node::{Kind, Node, Pod};
use report::{Churn, Cycle, Parallel, Report, Suite};

const USAGE: &str = "\
usage: rcni-bench [--ours DIR] [--reference DIR]... [--go-cnitool FILE] [--quick]
                  [--rounds N] [--runs N] [--pods N,N,...] [--parallel K,K,...]
                  [--churn N] [--out DIR]

Measures the chain bridge + host-local + portmap (one hostPort) and each plugin alone for our
plugins (--ours, default the directory of this program), each reference (default /usr/lib/cni
and every target/reference-* directory), and the kernel floor (ip + nft making the same
objects), in alternating rounds. Writes OUT/report.md (also printed), OUT/report.json and OUT/pods.svg
(default OUT: target/bench). --quick: 5 runs, parallel phases in one round, pods up to 100,
40 churn cycles.

--churn N: N chain ADD/DEL cycles per suite, 8 at a time, each with a new pod (default 400,
0 skips); compares the p50 ADD and DEL of the first and the last 10% of the cycles.";

/// Samples of one more pod's ADD and DEL per node size: with 10, the 250-pod p50 moved by a
/// third between runs of the same code, with 20 still by a fifth.
const POD_SAMPLES: usize = 40;

/// How long a node filled to n pods rests before its samples: the last pods' kernel work
/// (IPv6 duplicate address detection and MLD reports run 1–2 s after an interface comes up,
/// RCU callbacks of the fill) is then over, and the samples see a node that holds n pods, not
/// one still bringing its last pods up.
const POD_SETTLE: Duration = Duration::from_secs(3);

struct Options {
    ours: PathBuf,
    references: Vec<PathBuf>,
    go_cnitool: Option<PathBuf>,
    rounds: usize,
    runs: usize,
    pods: Vec<usize>,
    parallel: Vec<usize>,
    churn: usize,
    out: PathBuf,
    quick: bool,
}

/// Pods coming and going at once in the churn phase.
const CHURN_WORKERS: usize = 8;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn numbers(s: &str) -> std::result::Result<Vec<usize>, String> {
    s.split(',')
        .filter(|n| !n.trim().is_empty())
        .map(|n| n.trim().parse().map_err(|_| format!("not a number: {n:?}")))
        .collect()
}

/// The directory of this executable: the plugins built with it (scripts/build.sh).
fn beside_me() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    me.parent().map(Path::to_path_buf)
}

fn parse_options() -> std::result::Result<Options, String> {
    let target = workspace().join("target");
    let mut o = Options {
        ours: beside_me().unwrap_or_else(|| target.join("release")),
        references: Vec::new(),
        go_cnitool: Some(target.join("go-cnitool/cnitool")),
        rounds: 3,
        runs: 10,
        pods: vec![1, 50, 100, 250, 500],
        parallel: vec![20, 64],
        churn: 400,
        out: target.join("bench"),
        quick: false,
    };
    let (mut runs, mut pods, mut churn) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--ours" => o.ours = value()?.into(),
            "--reference" => o.references.push(value()?.into()),
            "--go-cnitool" => o.go_cnitool = Some(value()?.into()),
            "--rounds" => o.rounds = value()?.parse().map_err(|_| "--rounds: not a number")?,
            "--runs" => runs = Some(value()?.parse().map_err(|_| "--runs: not a number")?),
            "--pods" => pods = Some(numbers(&value()?)?),
            "--parallel" => o.parallel = numbers(&value()?)?,
            "--churn" => churn = Some(value()?.parse().map_err(|_| "--churn: not a number")?),
            "--out" => o.out = value()?.into(),
            "--quick" => o.quick = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    if o.quick {
        o.runs = 5;
        o.pods = vec![1, 50, 100];
        o.churn = 40;
    }
    o.churn = churn.unwrap_or(o.churn);
    o.runs = runs.unwrap_or(o.runs).max(1);
    o.pods = pods.unwrap_or(o.pods);
    o.rounds = o.rounds.max(1);
    if o.references.is_empty() {
        o.references = default_references(&target);
    }
    o.go_cnitool = o.go_cnitool.filter(|p| p.is_file());
    Ok(o)
}

fn has_plugins(dir: &Path) -> bool {
    ["bridge", "host-local", "portmap", "loopback"]
        .iter()
        .all(|p| dir.join(p).is_file())
}

/// Debian's reference, then every newer one unpacked under target/ (fetch-reference.sh).
fn default_references(target: &Path) -> Vec<PathBuf> {
    let mut refs = vec![PathBuf::from(conformance::REFERENCE_DIR)];
    refs.extend(conformance::fetched_reference_dirs(target));
    refs.into_iter().filter(|d| has_plugins(d)).collect()
}

struct Bench {
    opts: Options,
    watch: Option<forks::Watch>,
}

fn main() {
    let opts = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rcni-bench: {e}");
            std::process::exit(2);
        }
    };
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        node::remove_everything();
        default_hook(info);
    }));
    let code = match run(opts) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rcni-bench: {e}");
            1
        }
    };
    node::remove_everything();
    std::process::exit(code);
}

fn run(opts: Options) -> Result<()> {
    if !has_plugins(&opts.ours) {
        return Err(format!(
            "our plugins are not built in {} (scripts/build.sh)",
            opts.ours.display()
        ));
    }
    let watch = forks::Watch::start()
        .map_err(|e| eprintln!("rcni-bench: cannot count forks ({e}); counts left out"))
        .ok();
    let mut suites = suites(&opts);
    let bench = Bench { opts, watch };
    let started = Instant::now();

    bench.measure(&mut suites)?;

    let report = Report {
        machine: machine(),
        settings: json!({
            "rounds": bench.opts.rounds, "runs_per_round": bench.opts.runs,
            "pods": bench.opts.pods, "parallel": bench.opts.parallel, "churn": bench.opts.churn,
            "go_cnitool": bench.opts.go_cnitool.is_some(),
            "wall_s": started.elapsed().as_secs(),
        }),
        suites: suites.into_iter().map(|(s, _)| s).collect(),
    };
    write_outputs(&report, &bench.opts.out)
}

/// Ours, each reference, then the floor: the order every phase runs them in.
fn suites(opts: &Options) -> Vec<(Suite, Kind)> {
    let mut suites: Vec<(Suite, Kind)> = vec![(
        Suite {
            key: "ours".into(),
            version: about(&opts.ours),
            ..Default::default()
        },
        Kind::Plugins(opts.ours.clone()),
    )];
    for (i, dir) in opts.references.iter().enumerate() {
        let key = if i == 0 {
            "reference".to_string()
        } else {
            dir.file_name()
                .map_or(dir.display().to_string(), |n| n.to_string_lossy().into())
        };
        let version = std::fs::read_to_string(dir.join("VERSION"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| about(dir));
        suites.push((
            Suite {
                key,
                version: format!("{version}, {}", dir.display()),
                ..Default::default()
            },
            Kind::Plugins(dir.clone()),
        ));
    }
    suites.push((
        Suite {
            key: "floor".into(),
            version: "ip -batch + nft".into(),
            ..Default::default()
        },
        Kind::Floor,
    ));
    suites
}

fn write_outputs(report: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let md = report.markdown();
    print!("{md}");
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(out.join(name), bytes).map_err(|e| format!("{name}: {e}"))
    };
    write("report.md", md.as_bytes())?;
    let json = serde_json::to_vec_pretty(&report.to_json()).map_err(|e| e.to_string())?;
    write("report.json", &json)?;
    report.plot(&out.join("pods.svg"))?;
    eprintln!("wrote {}/report.md, report.json, pods.svg", out.display());
    Ok(())
}

impl Bench {
    /// The rounds (alternating suites, every other round in reverse order, so no suite
    /// always follows the same one and pays for the kernel's cleanup of its node), then pods
    /// on the node and churn, suite after suite.
    fn measure(&self, suites: &mut [(Suite, Kind)]) -> Result<()> {
        let n = suites.len();
        for round in 1..=self.opts.rounds {
            for i in 0..n {
                let index = if round % 2 == 1 { i } else { n - 1 - i };
                let (suite, kind) = &mut suites[index];
                eprintln!("round {round}/{}: {}", self.opts.rounds, suite.key);
                self.round(suite, kind)
                    .map_err(|e| format!("{} (round {round}): {e}", suite.key))?;
                // The node just removed is torn down by kernel workers: let them finish.
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        }
        for (suite, kind) in suites.iter_mut() {
            eprintln!("pods on the node: {}", suite.key);
            self.pods(suite, kind)
                .map_err(|e| format!("{} (pods): {e}", suite.key))?;
        }
        if self.opts.churn > 0 {
            for (suite, kind) in suites.iter_mut() {
                eprintln!("churn, {} cycles: {}", self.opts.churn, suite.key);
                suite.churn = Some(
                    self.churn(kind)
                        .map_err(|e| format!("{} (churn): {e}", suite.key))?,
                );
            }
        }
        Ok(())
    }

    /// One step of a pod's life (the pod is made, untimed, by the caller): timed, or, in a
    /// round's first run, accounted. Whether it succeeded. A failure is counted with its
    /// message and the run goes on: a reference plugin's known bug (the Go portmap's CHECK of
    /// an IPv4-only pod) is a result too.
    fn step(
        &self,
        suite: &mut Suite,
        run: usize,
        op: &str,
        step: impl FnOnce(&mut Recorder) -> Result<()>,
    ) -> bool {
        let outcome = if run == 0 {
            accounted(self.watch.as_ref(), step).map(|((), usage)| {
                suite.usage.entry(op.to_string()).or_default().push(usage);
            })
        } else {
            timed(step).map(|((), ms)| suite.ops.entry(op.to_string()).or_default().push(ms))
        };
        match outcome {
            Ok(()) => true,
            Err(e) => {
                let failed = suite.failures.entry(op.to_string()).or_insert((0, e));
                failed.0 += 1;
                false
            }
        }
    }

    /// One round of a suite on a fresh node whose base objects a first, untimed attachment
    /// has made: every operation once accounted, then `runs` times timed; then the parallel
    /// phases.
    fn round(&self, suite: &mut Suite, kind: &Kind) -> Result<()> {
        let node = Node::new(kind)?;
        let mut warm = node.pod();
        untimed(|r| node.add(r, &mut warm))?;
        untimed(|r| node.del(r, &warm))?;

        for run in 0..=self.opts.runs {
            let mut pod = node.pod();
            if self.step(suite, run, "chain_add", |r| node.add(r, &mut pod)) {
                if !node.is_floor() {
                    self.step(suite, run, "chain_check", |r| node.check(r, &pod));
                }
                self.step(suite, run, "chain_del", |r| node.del(r, &pod));
            }
        }
        if node.is_floor() {
            return self.parallel_phases(suite, &node);
        }
        if let Some(tool) = &self.opts.go_cnitool {
            for run in 0..=self.opts.runs {
                let mut pod = node.pod();
                if self.step(suite, run, "go_cnitool_add", |r| {
                    node.go_cnitool(r, tool, "add", &mut pod)
                }) {
                    self.step(suite, run, "go_cnitool_check", |r| {
                        node.go_cnitool(r, tool, "check", &mut pod)
                    });
                    self.step(suite, run, "go_cnitool_del", |r| {
                        node.go_cnitool(r, tool, "del", &mut pod)
                    });
                }
            }
        }
        for run in 0..=self.opts.runs {
            let mut pod = node.pod();
            if self.step(suite, run, "bridge_add", |r| {
                node.bridge(r, "ADD", &mut pod)
            }) {
                if self.step(suite, run, "portmap_add", |r| node.portmap(r, "ADD", &pod)) {
                    self.step(suite, run, "portmap_del", |r| node.portmap(r, "DEL", &pod));
                }
                self.step(suite, run, "bridge_del", |r| {
                    node.bridge(r, "DEL", &mut pod)
                });
            }
            if self.step(suite, run, "host-local_add", |r| {
                node.host_local(r, "ADD", &pod)
            }) {
                self.step(suite, run, "host-local_del", |r| {
                    node.host_local(r, "DEL", &pod)
                });
            }
            if self.step(suite, run, "loopback_add", |r| {
                node.loopback(r, "ADD", &pod)
            }) {
                self.step(suite, run, "loopback_del", |r| {
                    node.loopback(r, "DEL", &pod)
                });
            }
        }
        self.parallel_phases(suite, &node)
    }

    /// The parallel phases, in every round (`--quick`: the first only).
    fn parallel_phases(&self, suite: &mut Suite, node: &Node) -> Result<()> {
        if self.opts.quick && suite.parallel.values().any(|rounds| !rounds.is_empty()) {
            return Ok(());
        }
        for &k in &self.opts.parallel {
            let outcome = parallel(node, k)?;
            suite.parallel.entry(k).or_default().push(outcome);
        }
        Ok(())
    }

    /// ADD and DEL of one more pod when the node holds n pods, for each n of `--pods`,
    /// `POD_SAMPLES` times.
    fn pods(&self, suite: &mut Suite, kind: &Kind) -> Result<()> {
        let node = Node::new(kind)?;
        let mut held: Vec<Pod> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(if self.opts.quick { 60 } else { 240 });
        for &n in &self.opts.pods {
            if Instant::now() > deadline {
                eprintln!("  {}: stopping before {n} pods (time budget)", suite.key);
                break;
            }
            fill(&node, &mut held, n)?;
            std::thread::sleep(POD_SETTLE);
            let (mut add, mut del) = (Vec::new(), Vec::new());
            for _ in 0..POD_SAMPLES {
                let mut pod = node.pod();
                add.push(timed(|r| node.add(r, &mut pod))?.1);
                del.push(timed(|r| node.del(r, &pod))?.1);
            }
            suite.pods.insert(n, (add, del));
        }
        Ok(())
    }
}

impl Bench {
    /// `--churn` chain ADD/DEL cycles, `CHURN_WORKERS` at a time, each cycle with a new pod,
    /// on a node whose base objects a first, untimed attachment has made; every ADD and DEL
    /// timed, in the order the cycles started. A failed cycle is counted (and its pod deleted
    /// again); no cycle starts after a time budget.
    fn churn(&self, kind: &Kind) -> Result<Churn> {
        let node = Node::new(kind)?;
        let mut warm = node.pod();
        untimed(|r| node.add(r, &mut warm))?;
        untimed(|r| node.del(r, &warm))?;
        let budget = Duration::from_secs(if self.opts.quick { 60 } else { 300 });
        let start = Instant::now();
        let next = AtomicUsize::new(0);
        let churn = Mutex::new(Churn::default());
        let record = |outcome: Result<Cycle>| {
            let mut churn = churn.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok(cycle) => churn.cycles.push(cycle),
                Err(e) => {
                    churn.failures += 1;
                    churn.first_failure.get_or_insert(e);
                }
            }
        };
        let cycle = |seq: usize| -> Result<Cycle> {
            let mut pod = node.pod();
            let added = timed(|r| node.add(r, &mut pod));
            let ((), add) = added.inspect_err(|_| drop(untimed(|r| node.del(r, &pod))))?;
            let ((), del) = timed(|r| node.del(r, &pod))?;
            Ok(Cycle {
                seq,
                add,
                del,
                ip: pod.ip(),
            })
        };
        std::thread::scope(|s| {
            for _ in 0..CHURN_WORKERS {
                s.spawn(|| {
                    loop {
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if seq >= self.opts.churn || start.elapsed() > budget {
                            break;
                        }
                        record(cycle(seq));
                    }
                });
            }
        });
        let mut churn = churn.into_inner().unwrap_or_else(|e| e.into_inner());
        churn.wall_s = start.elapsed().as_secs_f64();
        churn.cycles.sort_by_key(|c| c.seq);
        let ips: Vec<String> = churn
            .cycles
            .iter()
            .filter_map(|c| c.ip.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        churn.leftovers = node.leftovers(&ips);
        Ok(churn)
    }
}

fn untimed(step: impl FnOnce(&mut Recorder) -> Result<()>) -> Result<()> {
    step(&mut Recorder::default())
}

/// Adds pods (a few at a time, untimed) until the node holds `n`.
fn fill(node: &Node, held: &mut Vec<Pod>, n: usize) -> Result<()> {
    while held.len() < n {
        let batch = (n - held.len()).min(4);
        let mut pods: Vec<Pod> = (0..batch).map(|_| node.pod()).collect();
        add_at_once(node, &mut pods)?;
        held.extend(pods);
    }
    Ok(())
}

/// The chain ADD of every pod, each on a thread of its own, all at once.
fn add_at_once(node: &Node, pods: &mut [Pod]) -> Result<()> {
    std::thread::scope(|s| {
        let runs: Vec<_> = pods
            .iter_mut()
            .map(|p| s.spawn(|| untimed(|r| node.add(r, p))))
            .collect();
        runs.into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err("ADD panicked".into())))
    })
}

/// The chain DEL of every pod, all at once.
fn del_at_once(node: &Node, pods: &[Pod]) -> Result<()> {
    std::thread::scope(|s| {
        let runs: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(|| untimed(|r| node.del(r, p))))
            .collect();
        runs.into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err("DEL panicked".into())))
    })
}

/// k ADDs at once, then k DELs at once: wall times, and what the node holds in between and
/// after.
fn parallel(node: &Node, k: usize) -> Result<Parallel> {
    let mut pods: Vec<Pod> = (0..k).map(|_| node.pod()).collect();
    let start = Instant::now();
    add_at_once(node, &mut pods)?;
    let add_ms = start.elapsed().as_secs_f64() * 1000.0;

    let ips: Vec<String> = pods.iter().filter_map(Pod::ip).collect();
    let distinct: HashSet<&String> = ips.iter().collect();
    let duplicate_ips = ips.len() - distinct.len();
    let leases_match = node.is_floor() || {
        let leases = node.leases();
        leases.len() == pods.len()
            && pods
                .iter()
                .all(|p| p.ip().is_some_and(|ip| leases.get(&ip) == Some(&p.id())))
    };

    let start = Instant::now();
    del_at_once(node, &pods)?;
    let del_ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok(Parallel {
        add_ms,
        del_ms,
        duplicate_ips,
        leases_match,
        leftovers: node.leftovers(&ips),
    })
}

/// The first line of a plugin's about text (`bridge` without `CNI_COMMAND`).
fn about(dir: &Path) -> String {
    Command::new(dir.join("bridge"))
        .env_clear()
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stderr).into_owned();
            text.lines().next().map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".into(), |m| m.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or("unknown".into(), |v| v.trim_matches('"').to_string());
    let revision = first_line(
        Command::new("git")
            .arg("-C")
            .arg(workspace())
            .args(["describe", "--always", "--dirty"]),
    );
    json!({
        "os": os,
        "kernel": first_line(Command::new("uname").arg("-r")),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_mib": memory_mib,
        "nft": first_line(Command::new("nft").arg("--version")),
        "ip": first_line(Command::new("ip").arg("-V")),
        "iptables": first_line(Command::new("iptables").arg("--version")),
        "rcni_revision": format!("rcni {revision}"),
        "date": first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
    })
}
