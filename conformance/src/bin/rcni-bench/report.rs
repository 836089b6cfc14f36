//! What one run measured, and its three renderings: a markdown table (stdout and
//! `report.md`), the same data as JSON (`report.json`) and the cost-against-pods plot
//! (`pods.svg`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::measure::Usage;

/// The operations in the order the table shows them, with their labels.
pub const OPS: [(&str, &str); 14] = [
    ("chain_add", "chain ADD (our runtime side)"),
    ("chain_check", "chain CHECK (our runtime side)"),
    ("chain_del", "chain DEL (our runtime side)"),
    ("go_cnitool_add", "chain ADD (Go cnitool)"),
    ("go_cnitool_check", "chain CHECK (Go cnitool)"),
    ("go_cnitool_del", "chain DEL (Go cnitool)"),
    ("bridge_add", "bridge + host-local ADD"),
    ("bridge_del", "bridge + host-local DEL"),
    ("portmap_add", "portmap ADD"),
    ("portmap_del", "portmap DEL"),
    ("host-local_add", "host-local ADD"),
    ("host-local_del", "host-local DEL"),
    ("loopback_add", "loopback ADD"),
    ("loopback_del", "loopback DEL"),
];

#[derive(Debug, Default, Clone)]
pub struct Parallel {
    pub add_ms: f64,
    pub del_ms: f64,
    pub duplicate_ips: usize,
    pub leases_match: bool,
    pub leftovers: Vec<String>,
}

/// One churn cycle: when it started among the others, its ADD and DEL (ms), the pod's address.
#[derive(Debug, Clone)]
pub struct Cycle {
    pub seq: usize,
    pub add: f64,
    pub del: f64,
    pub ip: Option<String>,
}

/// The churn phase: the cycles that succeeded, in the order they started.
#[derive(Debug, Default, Clone)]
pub struct Churn {
    pub cycles: Vec<Cycle>,
    pub failures: usize,
    pub first_failure: Option<String>,
    pub wall_s: f64,
    pub leftovers: Vec<String>,
}

impl Churn {
    /// p50 of the first and of the last tenth of `samples` (at least one sample each).
    fn first_last(samples: &[f64]) -> Option<(f64, f64)> {
        let tenth = (samples.len() / 10).max(1);
        let last = samples.len().checked_sub(tenth)?;
        Some((
            percentile(&samples[..tenth], 50.0)?,
            percentile(&samples[last..], 50.0)?,
        ))
    }

    pub fn add(&self) -> Option<(f64, f64)> {
        Churn::first_last(&self.cycles.iter().map(|c| c.add).collect::<Vec<_>>())
    }

    pub fn del(&self) -> Option<(f64, f64)> {
        Churn::first_last(&self.cycles.iter().map(|c| c.del).collect::<Vec<_>>())
    }

    fn to_json(&self) -> Value {
        let mut c = Map::new();
        c.insert("cycles".into(), json!(self.cycles.len()));
        c.insert("failed_cycles".into(), json!(self.failures));
        if let Some(first) = &self.first_failure {
            c.insert("first_failure".into(), json!(first));
        }
        for (op, figures) in [("add", self.add()), ("del", self.del())] {
            if let Some((first, last)) = figures {
                c.insert(format!("{op}_first_p50_ms"), json!(round2(first)));
                c.insert(format!("{op}_last_p50_ms"), json!(round2(last)));
                if first > 0.0 {
                    c.insert(format!("{op}_last_over_first"), json!(round2(last / first)));
                }
            }
        }
        c.insert("wall_s".into(), json!(round2(self.wall_s)));
        c.insert("leftovers".into(), json!(self.leftovers));
        Value::Object(c)
    }
}

#[derive(Debug, Default)]
pub struct Suite {
    pub key: String,
    pub version: String,
    /// op → wall times (ms) of the timed runs.
    pub ops: BTreeMap<String, Vec<f64>>,
    /// op → what each accounted run used.
    pub usage: BTreeMap<String, Vec<Usage>>,
    /// op → (failed runs, the first failure's message).
    pub failures: BTreeMap<String, (usize, String)>,
    /// k → one entry per round.
    pub parallel: BTreeMap<usize, Vec<Parallel>>,
    /// pods on the node → (ADD samples, DEL samples).
    pub pods: BTreeMap<usize, (Vec<f64>, Vec<f64>)>,
    pub churn: Option<Churn>,
}

pub struct Report {
    pub machine: Value,
    pub settings: Value,
    pub suites: Vec<Suite>,
}

/// Nearest-rank percentile of `values`.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Suite {
    pub fn p(&self, op: &str, p: f64) -> Option<f64> {
        percentile(self.ops.get(op)?, p)
    }

    fn peak_rss_mib(&self, op: &str) -> Option<f64> {
        let kib = self.usage.get(op)?.iter().map(|u| u.peak_rss_kib).max()?;
        Some(kib as f64 / 1024.0)
    }

    /// The most processes one accounted run of `op` forked (runs of one op fork alike; a
    /// retry would show here).
    fn forks(&self, op: &str) -> Option<usize> {
        self.usage.get(op)?.iter().filter_map(|u| u.forks).max()
    }

    fn parallel_median(&self, k: usize) -> Option<(f64, f64)> {
        let runs = self.parallel.get(&k)?;
        let add = percentile(&runs.iter().map(|r| r.add_ms).collect::<Vec<_>>(), 50.0)?;
        let del = percentile(&runs.iter().map(|r| r.del_ms).collect::<Vec<_>>(), 50.0)?;
        Some((add, del))
    }

    fn pods_p50(&self, n: usize) -> Option<(f64, f64)> {
        let (add, del) = self.pods.get(&n)?;
        Some((percentile(add, 50.0)?, percentile(del, 50.0)?))
    }

    fn to_json(&self) -> Value {
        let mut s = Map::new();
        s.insert("version".into(), json!(self.version));
        for (op, name) in [("chain_add", "chain_add"), ("chain_del", "chain_del")] {
            for p in [50.0, 95.0] {
                if let Some(v) = self.p(op, p) {
                    s.insert(format!("{name}_p{p}_ms"), json!(round2(v)));
                }
            }
        }
        let ops: Map<String, Value> = self
            .ops
            .keys()
            .map(|op| {
                let v = json!({
                    "p50_ms": self.p(op, 50.0).map(round2),
                    "p95_ms": self.p(op, 95.0).map(round2),
                    "runs": self.ops[op].len(),
                });
                (op.clone(), v)
            })
            .collect();
        s.insert("ops".into(), Value::Object(ops));
        let parallel: Vec<Value> = self
            .parallel
            .iter()
            .filter_map(|(k, runs)| {
                let (add, del) = self.parallel_median(*k)?;
                Some(json!({
                    "k": k,
                    "add_wall_ms": round2(add),
                    "del_wall_ms": round2(del),
                    "rounds": runs.len(),
                    "duplicate_ips": runs.iter().map(|r| r.duplicate_ips).sum::<usize>(),
                    "leases_match": runs.iter().all(|r| r.leases_match),
                    "leftovers": runs.iter().flat_map(|r| r.leftovers.clone()).collect::<Vec<_>>(),
                }))
            })
            .collect();
        s.insert("parallel".into(), json!(parallel));
        let pods: Vec<Value> = self
            .pods
            .keys()
            .filter_map(|n| {
                let (add, del) = self.pods_p50(*n)?;
                Some(json!({"n": n, "add_p50_ms": round2(add), "del_p50_ms": round2(del)}))
            })
            .collect();
        s.insert("pods".into(), json!(pods));
        if let Some(churn) = &self.churn {
            s.insert("churn".into(), churn.to_json());
        }
        let rss: Map<String, Value> = self
            .usage
            .keys()
            .filter_map(|op| Some((op.clone(), json!(round2(self.peak_rss_mib(op)?)))))
            .collect();
        s.insert("peak_rss_mib".into(), Value::Object(rss));
        let forks: Map<String, Value> = self
            .usage
            .keys()
            .filter_map(|op| Some((op.clone(), json!(self.forks(op)?))))
            .collect();
        s.insert("forks".into(), Value::Object(forks));
        let failures: Map<String, Value> = self
            .failures
            .iter()
            .map(|(op, (n, msg))| (op.clone(), json!({"runs": n, "first": msg})))
            .collect();
        s.insert("failures".into(), Value::Object(failures));
        Value::Object(s)
    }
}

impl Report {
    pub fn to_json(&self) -> Value {
        let suites: Map<String, Value> = self
            .suites
            .iter()
            .map(|s| (s.key.clone(), s.to_json()))
            .collect();
        json!({"machine": self.machine, "settings": self.settings, "suites": suites})
    }

    fn ours(&self) -> Option<&Suite> {
        self.suites.iter().find(|s| s.key == "ours")
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from("# rcni benchmark\n\n");
        md.push_str(&machine_line(&self.machine));
        md.push_str(&format!("\nSettings: {}\n", settings_line(&self.settings)));
        md.push_str(&format!(
            "\nSuites: {}.\n",
            self.suites
                .iter()
                .map(|s| format!("`{}` ({})", s.key, s.version))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        md.push_str(&self.ops_table());
        md.push_str(&self.ratios());
        md.push_str(&self.parallel_table());
        md.push_str(&self.pods_table());
        md.push_str(&self.churn_table());
        md.push_str(&self.resources_table());
        md
    }

    fn header(&self, first: &str) -> String {
        let keys: Vec<&str> = self.suites.iter().map(|s| s.key.as_str()).collect();
        format!(
            "| {first} | {} |\n|---|{}\n",
            keys.join(" | "),
            "---:|".repeat(keys.len())
        )
    }

    fn ops_table(&self) -> String {
        let mut md = String::from(
            "\n## Operations: p50 / p95 ms\n\nThe chain is bridge + host-local + portmap with \
             one hostPort (containerd's default conflist), on a node without other pods.\n\n",
        );
        md.push_str(&self.header("operation"));
        for (op, label) in OPS {
            if self
                .suites
                .iter()
                .all(|s| !s.ops.contains_key(op) && !s.failures.contains_key(op))
            {
                continue;
            }
            let cells: Vec<String> = self
                .suites
                .iter()
                .map(|s| {
                    let time = match (s.p(op, 50.0), s.p(op, 95.0)) {
                        (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
                        _ => "–".into(),
                    };
                    match s.failures.get(op) {
                        Some((n, _)) => format!("{time} (failed {n}×)"),
                        None => time,
                    }
                })
                .collect();
            md.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
        }
        for s in &self.suites {
            for (op, (n, msg)) in &s.failures {
                let msg: String = msg.split_whitespace().collect::<Vec<_>>().join(" ");
                md.push_str(&format!("\n- `{}` {op} failed {n}×: {msg}\n", s.key));
            }
        }
        md
    }

    fn ratios(&self) -> String {
        let Some(ours) = self.ours() else {
            return String::new();
        };
        let mut md =
            String::from("\n## Ratios (p50, same run)\n\n| | ADD | DEL |\n|---|---:|---:|\n");
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "–".into(),
        };
        for other in self.suites.iter().filter(|s| s.key != "ours") {
            if other.key == "floor" {
                md.push_str(&format!(
                    "| ours raw chain / floor | {} | {} |\n",
                    ratio(ours.p("chain_add", 50.0), other.p("chain_add", 50.0)),
                    ratio(ours.p("chain_del", 50.0), other.p("chain_del", 50.0)),
                ));
                continue;
            }
            for (via, add, del) in [
                ("our runtime side", "chain_add", "chain_del"),
                ("Go cnitool", "go_cnitool_add", "go_cnitool_del"),
            ] {
                if ours.p(add, 50.0).is_some() && other.p(add, 50.0).is_some() {
                    md.push_str(&format!(
                        "| {} / ours, {via} | {} | {} |\n",
                        other.key,
                        ratio(other.p(add, 50.0), ours.p(add, 50.0)),
                        ratio(other.p(del, 50.0), ours.p(del, 50.0)),
                    ));
                }
            }
        }
        md
    }

    fn parallel_table(&self) -> String {
        let ks: Vec<usize> = self
            .suites
            .iter()
            .flat_map(|s| s.parallel.keys().copied())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if ks.is_empty() {
            return String::new();
        }
        let mut md = String::from(
            "\n## Parallel: k ADDs at once into one network, then k DELs (wall ms, median of \
             rounds, ADD / DEL)\n\n",
        );
        md.push_str(&self.header("k"));
        let mut problems = Vec::new();
        for k in ks {
            let cells: Vec<String> = self
                .suites
                .iter()
                .map(|s| {
                    for r in s.parallel.get(&k).into_iter().flatten() {
                        if r.duplicate_ips > 0 || !r.leases_match || !r.leftovers.is_empty() {
                            problems.push(format!(
                                "{} k={k}: {} duplicate IPs, leases {}, left: {}",
                                s.key,
                                r.duplicate_ips,
                                if r.leases_match {
                                    "match"
                                } else {
                                    "DO NOT match"
                                },
                                r.leftovers.join("; ")
                            ));
                        }
                    }
                    s.parallel_median(k)
                        .map_or("–".into(), |(a, d)| format!("{a:.0} / {d:.0}"))
                })
                .collect();
            md.push_str(&format!("| {k} | {} |\n", cells.join(" | ")));
        }
        if problems.is_empty() {
            md.push_str(
                "\nEvery round: no duplicate IP, every lease matches a result, nothing left \
                 after the DELs (links, leases, rules naming a pod's address).\n",
            );
        } else {
            md.push_str("\n**Problems:**\n");
            problems
                .iter()
                .for_each(|p| md.push_str(&format!("- {p}\n")));
        }
        md
    }

    fn pods_table(&self) -> String {
        let ns: Vec<usize> = self
            .suites
            .iter()
            .flat_map(|s| s.pods.keys().copied())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if ns.is_empty() {
            return String::new();
        }
        let mut md = format!(
            "\n## Pods on the node: one more pod's ADD / DEL, p50 ms, when the node already \
             holds n pods with a hostPort each ({} samples, after the filled node rested {} s)\n\n",
            crate::POD_SAMPLES,
            crate::POD_SETTLE.as_secs()
        );
        md.push_str(&self.header("n"));
        for n in ns {
            let cells: Vec<String> = self
                .suites
                .iter()
                .map(|s| {
                    s.pods_p50(n)
                        .map_or("–".into(), |(a, d)| format!("{a:.1} / {d:.1}"))
                })
                .collect();
            md.push_str(&format!("| {n} | {} |\n", cells.join(" | ")));
        }
        md
    }

    fn churn_table(&self) -> String {
        let with: Vec<(&str, &Churn)> = self
            .suites
            .iter()
            .filter_map(|s| Some((s.key.as_str(), s.churn.as_ref()?)))
            .collect();
        let Some(cycles) = with.iter().map(|(_, c)| c.cycles.len() + c.failures).max() else {
            return String::new();
        };
        let mut md = format!(
            "\n## Churn: {cycles} chain ADD/DEL cycles, 8 at a time, each with a new pod: p50 ms \
             of the first and the last 10% of the cycles\n\n"
        );
        md.push_str(&self.header(""));
        let cell = |f: &dyn Fn(&Churn) -> Option<String>| -> String {
            self.suites
                .iter()
                .map(|s| s.churn.as_ref().and_then(f).unwrap_or_else(|| "–".into()))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        type Pick = fn(&Churn) -> Option<(f64, f64)>;
        for (op, pick) in [("ADD", Churn::add as Pick), ("DEL", Churn::del as Pick)] {
            md.push_str(&format!(
                "| {op}, first 10% | {} |\n",
                cell(&|c| pick(c).map(|(first, _)| format!("{first:.1}")))
            ));
            md.push_str(&format!(
                "| {op}, last 10% | {} |\n",
                cell(&|c| pick(c).map(|(_, last)| format!("{last:.1}")))
            ));
            md.push_str(&format!(
                "| {op}, last / first | {} |\n",
                cell(&|c| pick(c)
                    .filter(|(first, _)| *first > 0.0)
                    .map(|(first, last)| format!("{:.2}×", last / first)))
            ));
        }
        md.push_str(&format!(
            "| cycles (wall s) | {} |\n",
            cell(&|c| Some(format!("{} ({:.0})", c.cycles.len(), c.wall_s)))
        ));
        for (key, c) in &with {
            if let Some(first) = &c.first_failure {
                let msg: String = first.split_whitespace().collect::<Vec<_>>().join(" ");
                md.push_str(&format!(
                    "\n- `{key}`: {} cycles failed, the first: {msg}\n",
                    c.failures
                ));
            }
        }
        if cycles < 200 {
            md.push_str(&format!(
                "\nA tenth of {cycles} cycles is too few samples for the ratios to mean much.\n"
            ));
        }
        let left: Vec<String> = with
            .iter()
            .filter(|(_, c)| !c.leftovers.is_empty())
            .map(|(key, c)| format!("- `{key}` left: {}\n", c.leftovers.join("; ")))
            .collect();
        if left.is_empty() {
            md.push_str(
                "\nNothing left after the cycles (links, leases, rules naming a pod's address).\n",
            );
        } else {
            md.push_str("\n**Left after the cycles:**\n");
            left.iter().for_each(|l| md.push_str(l));
        }
        md
    }

    fn resources_table(&self) -> String {
        let mut md = String::from(
            "\n## Peak RSS of the operation's process tree (MiB) / processes forked\n\n",
        );
        md.push_str(&self.header("operation"));
        for (op, label) in OPS {
            if self.suites.iter().all(|s| !s.usage.contains_key(op)) {
                continue;
            }
            let cells: Vec<String> = self
                .suites
                .iter()
                .map(|s| match (s.peak_rss_mib(op), s.forks(op)) {
                    (Some(m), Some(f)) => format!("{m:.1} / {f}"),
                    (Some(m), None) => format!("{m:.1} / ?"),
                    _ => "–".into(),
                })
                .collect();
            md.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
        }
        md
    }

    /// ADD and DEL p50 against the number of pods, one line per suite.
    pub fn plot(&self, path: &Path) -> Result<(), String> {
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(550);
        let max_n = self
            .suites
            .iter()
            .flat_map(|s| s.pods.keys().copied())
            .max()
            .unwrap_or(1)
            .max(1);
        for (area, (title, pick)) in [left, right]
            .iter()
            .zip([("ADD p50 (ms)", 0usize), ("DEL p50 (ms)", 1usize)])
        {
            let series: Vec<(&str, Vec<(f64, f64)>)> = self
                .suites
                .iter()
                .map(|s| {
                    let pts = s
                        .pods
                        .keys()
                        .filter_map(|n| {
                            let (a, d) = s.pods_p50(*n)?;
                            Some((*n as f64, if pick == 0 { a } else { d }))
                        })
                        .collect();
                    (s.key.as_str(), pts)
                })
                .collect();
            let max_y = series
                .iter()
                .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
                .fold(1.0f64, f64::max)
                * 1.1;
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(52)
                .build_cartesian_2d(0f64..max_n as f64 * 1.02, 0f64..max_y)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("pods on the node")
                .y_desc("ms")
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, (key, pts)) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(*key)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())
    }
}

fn machine_line(m: &Value) -> String {
    let get = |k: &str| m[k].as_str().unwrap_or("?").to_string();
    format!(
        "Machine: {}, {} CPUs ({}), {} MiB, kernel {}, {}; {}, {}, {}. Taken {}.\n",
        get("os"),
        m["cpus"],
        get("cpu"),
        m["memory_mib"],
        get("kernel"),
        get("rcni_revision"),
        get("nft"),
        get("ip"),
        get("iptables"),
        get("date"),
    )
}

fn settings_line(s: &Value) -> String {
    s.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 95.0), Some(5.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
        assert_eq!(percentile(&ten, 95.0), Some(10.0));
    }

    #[test]
    fn churn_compares_the_first_and_last_tenth() {
        let c = Churn {
            cycles: (1..=20)
                .map(|n| Cycle {
                    seq: n,
                    add: f64::from(n as u32),
                    del: 4.0,
                    ip: None,
                })
                .collect(),
            ..Default::default()
        };
        assert_eq!(c.add(), Some((1.0, 19.0)));
        assert_eq!(c.del(), Some((4.0, 4.0)));
        assert_eq!(Churn::default().add(), None);
        let json = c.to_json();
        assert_eq!(json["cycles"], 20);
        assert_eq!(json["add_last_over_first"], 19.0);
    }
}
