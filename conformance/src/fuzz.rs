//! Fuzzing on stable: seeded cases, structure-aware and raw mutators, and a driver that
//! turns a panic, a protocol violation or a hang into a reproducer.
//!
//! Every case is made from its seed alone (proptest's ChaCha RNG and strategies), so a
//! failure replays exactly: the report names `RCNI_FUZZ_SEED=<seed>`. Environment:
//! - `RCNI_FUZZ_SEED=<n>`: run only the case with seed `n` (replay).
//! - `RCNI_FUZZ_CASES=<n>`: cases per target instead of the CI default (longer local runs).
//! - `RCNI_FUZZ_BASE=<n>`: first seed (default 0), to explore other cases than CI's.

use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

use proptest::prelude::Rng;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

use crate::Outcome;

pub mod seeds;

/// The randomness of one case.
pub struct Gen {
    runner: TestRunner,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
        Gen {
            runner: TestRunner::new_with_rng(Config::default(), rng),
        }
    }

    /// A value of a proptest strategy.
    pub fn draw<S: Strategy>(&mut self, strategy: S) -> S::Value {
        strategy
            .new_tree(&mut self.runner)
            .expect("strategies used here never reject")
            .current()
    }

    /// `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.runner.rng().next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn u64(&mut self) -> u64 {
        self.runner.rng().next_u64()
    }
}

/// Strings that parsers of this suite treat specially, or that break naive ones.
pub const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "0",
    "-1",
    "1e999",
    "true",
    "null",
    "10.1.0.0/24",
    "10.1.0.1",
    "10.1.0.300",
    "0.0.0.0/0",
    "255.255.255.255/32",
    "::/0",
    "::",
    "::ffff:10.9.0.0/120",
    "fe80::1%eth0",
    "2001:db8::/64",
    "10.1.0.0/33",
    "eth0",
    "cni0",
    "lo",
    "../x",
    "/",
    ".",
    "..",
    "host-local",
    "bridge",
    "loopback",
    "portmap",
    "nftables",
    "iptables",
    "tcp",
    "udp",
    "sctp",
    "RETURN",
    "0.1.0",
    "0.4.0",
    "1.1.0",
    "9.9.9",
    "IgnoreUnknown=1",
    "a=b;c",
    ";",
    "=",
    "\n",
    "\r\n",
    "\t",
    "\\",
    "\"",
    "'",
    "#",
    "\u{0}",
    "\u{7f}",
    "é",
    "\u{202e}",
    "\u{feff}",
    "🙂",
    "aa:bb:cc:dd:ee:ff",
    "ctr1",
];

/// A string from the dictionary, a random unicode one, or a long repetition.
pub fn odd_string(g: &mut Gen) -> String {
    match g.below(6) {
        0..=2 => g.pick(ODD_STRINGS).to_string(),
        3 => g.draw(proptest::arbitrary::any::<String>()),
        4 => {
            let unit = g.pick(ODD_STRINGS).to_string();
            let unit = if unit.is_empty() { "a".into() } else { unit };
            let most = if g.chance(10) { 70_000 } else { 300 };
            unit.repeat(1 + g.below(most))
        }
        _ => {
            let a = g.pick(ODD_STRINGS).to_string();
            let b = g.pick(ODD_STRINGS).to_string();
            format!("{a}{b}")
        }
    }
}

/// Numbers at the edges of every integer type the configs use, and floats JSON allows.
pub fn odd_number(g: &mut Gen) -> Value {
    match g.below(12) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(u32::MAX as u64 + 1),
        5 => json!(65536),
        6 => json!(4095),
        7 => json!(1.5),
        8 => json!(1e300),
        9 => json!(-0.0),
        10 => json!(9007199254740993u64),
        _ => json!(g.u64() as i64),
    }
}

/// Any JSON value, nested at most `depth` levels.
pub fn odd_value(g: &mut Gen, depth: usize) -> Value {
    let kinds = if depth == 0 { 4 } else { 6 };
    match g.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(g.chance(50)),
        2 => odd_number(g),
        3 => Value::String(odd_string(g)),
        4 => Value::Array((0..g.below(4)).map(|_| odd_value(g, depth - 1)).collect()),
        _ => Value::Object(
            (0..g.below(4))
                .map(|_| (odd_string(g), odd_value(g, depth - 1)))
                .collect(),
        ),
    }
}

/// The paths (object keys and array indexes) of every node of `v`, the root first.
fn node_paths(v: &Value) -> Vec<Vec<PathStep>> {
    let mut out = vec![Vec::new()];
    let mut i = 0;
    while i < out.len() {
        let path = out[i].clone();
        match at(v, &path) {
            Some(Value::Object(m)) => {
                out.extend(m.keys().map(|k| extend(&path, PathStep::Key(k.clone()))));
            }
            Some(Value::Array(a)) => {
                out.extend((0..a.len()).map(|n| extend(&path, PathStep::Index(n))));
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn extend(path: &[PathStep], step: PathStep) -> Vec<PathStep> {
    let mut p = path.to_vec();
    p.push(step);
    p
}

fn at<'a>(v: &'a Value, path: &[PathStep]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, step| match step {
        PathStep::Key(k) => v.get(k),
        PathStep::Index(i) => v.get(i),
    })
}

fn at_mut<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, step| match step {
        PathStep::Key(k) => v.get_mut(k),
        PathStep::Index(i) => v.get_mut(*i),
    })
}

/// Key names in `v`, anywhere.
fn keys_of(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                out.push(k.clone());
                keys_of(child, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| keys_of(c, out)),
        _ => {}
    }
}

/// A case variant of `key` (Go matches keys case-insensitively).
fn case_variant(g: &mut Gen, key: &str) -> String {
    match g.below(3) {
        0 => key.to_uppercase(),
        1 => key.to_lowercase(),
        _ => {
            let mut c = key.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        }
    }
}

/// One structure-aware change somewhere in `v`: another type, a dropped or added key, a
/// renamed (case-changed) key, deep nesting, a huge or odd value, a value moved elsewhere.
pub fn mutate_value(g: &mut Gen, v: &mut Value) {
    let paths = node_paths(v);
    let path = g.pick(&paths).clone();
    let mut keys = Vec::new();
    keys_of(v, &mut keys);
    let donor = at(v, &paths[g.below(paths.len())])
        .cloned()
        .unwrap_or(Value::Null);
    let Some(node) = at_mut(v, &path) else { return };
    match g.below(10) {
        0 | 1 => *node = odd_value(g, 2),
        2 => drop_entry(g, node),
        3 => add_entry(g, node, &keys, donor),
        4 => recase_key(g, node),
        5 => nest(g, node),
        6 => *node = Value::String(odd_string(g)),
        7 => *node = odd_number(g),
        8 => *node = donor,
        _ => {
            // A number as a string and back, a string as a number.
            *node = match node.take() {
                Value::Number(n) => Value::String(n.to_string()),
                Value::String(s) => s
                    .parse::<serde_json::Number>()
                    .map(Value::Number)
                    .unwrap_or(Value::String(s)),
                Value::Bool(b) => Value::String(b.to_string()),
                other => other,
            }
        }
    }
}

/// Removes one key of an object or one item of an array.
fn drop_entry(g: &mut Gen, node: &mut Value) {
    if let Value::Object(m) = node
        && !m.is_empty()
    {
        let k = m.keys().nth(g.below(m.len())).cloned().unwrap_or_default();
        m.remove(&k);
    } else if let Value::Array(a) = node
        && !a.is_empty()
    {
        a.remove(g.below(a.len()));
    }
}

/// Adds a key (known elsewhere in the document or odd) to an object, or an item (maybe many
/// copies) to an array.
fn add_entry(g: &mut Gen, node: &mut Value, keys: &[String], donor: Value) {
    if let Value::Object(m) = node {
        let key = if keys.is_empty() || g.chance(30) {
            odd_string(g)
        } else {
            g.pick(keys).clone()
        };
        let value = if g.chance(50) { donor } else { odd_value(g, 2) };
        m.insert(key, value);
    } else if let Value::Array(a) = node {
        let at = g.below(a.len() + 1);
        let item = if g.chance(60) && !a.is_empty() {
            a[g.below(a.len())].clone()
        } else {
            odd_value(g, 2)
        };
        let copies = if g.chance(10) { 1 + g.below(2000) } else { 1 };
        for _ in 0..copies {
            a.insert(at, item.clone());
        }
    }
}

/// Gives one key of an object another case, keeping or dropping the original.
fn recase_key(g: &mut Gen, node: &mut Value) {
    if let Value::Object(m) = node
        && !m.is_empty()
    {
        let k = m.keys().nth(g.below(m.len())).cloned().unwrap_or_default();
        let variant = case_variant(g, &k);
        let value = m[&k].clone();
        if g.chance(50) {
            m.remove(&k);
        }
        m.insert(variant, value);
    }
}

/// Wraps `node` in up to 300 arrays or objects.
fn nest(g: &mut Gen, node: &mut Value) {
    let most = if g.chance(20) { 300 } else { 40 };
    let depth = 1 + g.below(most);
    let mut inner = node.take();
    for _ in 0..depth {
        inner = if g.chance(50) {
            Value::Array(vec![inner])
        } else {
            json!({ "a": inner })
        };
    }
    *node = inner;
}

/// Raw changes to a document's bytes: flips, inserts, deletions, truncation, repeated spans
/// and tokens that matter to a JSON parser.
pub fn mutate_bytes(g: &mut Gen, data: &mut Vec<u8>) {
    const TOKENS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b"\\",
        b",",
        b":",
        b"\\u0000",
        b"\\ud800",
        b"1e999",
        b"-0",
        b"\xef\xbb\xbf",
        b"\r\n",
        b"\x00",
        b"\xff",
        b"null",
        b"\"\":",
        b"//",
    ];
    let pos = g.below(data.len() + 1);
    match g.below(7) {
        0 if !data.is_empty() => {
            let i = g.below(data.len());
            data[i] ^= 1 << g.below(8);
        }
        1 => {
            let token = *g.pick(TOKENS);
            data.splice(pos..pos, token.iter().copied());
        }
        2 if !data.is_empty() => {
            let end = (pos + 1 + g.below(16)).min(data.len());
            data.drain(pos.min(end)..end);
        }
        3 => data.truncate(pos),
        4 if !data.is_empty() => {
            let start = g.below(data.len());
            let end = (start + 1 + g.below(64)).min(data.len());
            let span = data[start..end].to_vec();
            data.splice(pos..pos, span);
        }
        5 => {
            let byte = g.u64() as u8;
            data.insert(pos, byte);
        }
        _ => {
            if let Some(i) = data.iter().position(|b| *b == b'\n') {
                data.splice(i..=i, b"\r\n".iter().copied());
            } else {
                data.extend_from_slice(b"\n");
            }
        }
    }
}

/// A duplicate of one of the document's keys, inserted before it in the text (serde_json
/// values cannot hold duplicates; Go and serde disagree about which one wins).
fn duplicate_key(g: &mut Gen, v: &Value, text: &mut Vec<u8>) {
    let mut keys = Vec::new();
    keys_of(v, &mut keys);
    if keys.is_empty() {
        return;
    }
    let key = g.pick(&keys).clone();
    let needle = format!("{}:", Value::String(key.clone()));
    let Some(i) = find(text, needle.as_bytes()) else {
        return;
    };
    let name = if g.chance(50) {
        key
    } else {
        case_variant(g, &key)
    };
    let dup = format!("{}:{},", Value::String(name), odd_value(g, 1));
    text.splice(i..i, dup.bytes());
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A mutant of `seed`: one to four structure-aware changes.
pub fn mutate_structure(g: &mut Gen, seed: &Value) -> Value {
    let mut v = seed.clone();
    for _ in 0..1 + g.below(4) {
        mutate_value(g, &mut v);
    }
    v
}

/// A mutant of `seed` as document text: mostly structure-aware changes, sometimes a
/// duplicated key, sometimes raw byte damage on top.
pub fn mutate_json(g: &mut Gen, seed: &Value) -> Vec<u8> {
    let v = mutate_structure(g, seed);
    let mut text = if g.chance(30) {
        serde_json::to_vec_pretty(&v).unwrap()
    } else {
        serde_json::to_vec(&v).unwrap()
    };
    if g.chance(15) {
        duplicate_key(g, &v, &mut text);
    }
    if g.chance(25) {
        for _ in 0..1 + g.below(4) {
            mutate_bytes(g, &mut text);
        }
    }
    text
}

/// A `KEY=VALUE;…` string: a mutant of one of `seeds` or random pieces.
pub fn cni_args(g: &mut Gen, seeds: &[&str]) -> String {
    let mut s = g.pick(seeds).to_string();
    for _ in 0..g.below(4) {
        match g.below(4) {
            0 => s.push_str(&format!(";{}={}", odd_string(g), odd_string(g))),
            1 => s.push_str(&odd_string(g)),
            2 => {
                let cut = g.below(s.len() + 1);
                s = s.chars().take(cut).collect();
            }
            _ => {
                let mut bytes = s.into_bytes();
                mutate_bytes(g, &mut bytes);
                s = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    // Environment variables cannot hold NUL.
    s.replace('\0', "")
}

/// How a plugin must answer anything: exit 0 or 1 (101 is a Rust panic, a signal an abort),
/// nothing "panicked" on stderr, an error object with `code` and `msg` on failure, and on
/// success the output `command` prints. `None` when the answer is well-formed.
pub fn protocol_violation(command: &str, out: &Outcome) -> Option<String> {
    if out.stderr.contains("panicked") {
        return Some("stderr says it panicked".into());
    }
    let msg = out.json["msg"].as_str().unwrap_or_default();
    if msg.starts_with("internal error: ") && msg.contains(".rs:") {
        return Some(format!("the panic hook answered: {msg}"));
    }
    match out.status {
        0 => success_violation(command, out),
        1 => {
            let ok = out.json["code"].is_u64() && out.json["msg"].is_string();
            (!ok).then(|| "a failure without a CNI error object (code, msg) on stdout".into())
        }
        101 => Some("exit status 101: a panic".into()),
        -1 => Some("killed by a signal (an abort: a panic in a release build)".into()),
        n => Some(format!("exit status {n}")),
    }
}

fn success_violation(command: &str, out: &Outcome) -> Option<String> {
    match command {
        "ADD" if out.json.get("cniVersion").is_none_or(|v| !v.is_string()) => {
            Some("ADD succeeded without a result (cniVersion) on stdout".into())
        }
        "VERSION" if !out.json["supportedVersions"].is_array() => {
            Some("VERSION without supportedVersions".into())
        }
        "DEL" | "CHECK" | "GC" | "STATUS" if !out.stdout.trim().is_empty() => {
            Some(format!("{command} succeeded but printed something"))
        }
        _ => None,
    }
}

/// The seeds this run tries: the regressions (seeds that once failed), then the range.
fn seeds(regressions: &[u64], default_cases: u64) -> Vec<u64> {
    let var = |k: &str| {
        std::env::var(k)
            .ok()
            .map(|v| v.parse::<u64>().unwrap_or_else(|_| panic!("{k}={v:?}")))
    };
    if let Some(seed) = var("RCNI_FUZZ_SEED") {
        return vec![seed];
    }
    let base = var("RCNI_FUZZ_BASE").unwrap_or(0);
    let cases = var("RCNI_FUZZ_CASES").unwrap_or(default_cases);
    regressions
        .iter()
        .copied()
        .chain(base..base.saturating_add(cases))
        .collect()
}

/// Shortened for the report when huge (the seed replays it whole).
fn shown(input: &impl Debug) -> String {
    const MAX: usize = 16 * 1024;
    let s = format!("{input:#?}");
    if s.len() <= MAX {
        return s;
    }
    let cut = (0..=MAX)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}… ({} bytes in all)", &s[..cut], s.len())
}

fn report(target: &str, seed: u64, why: &str, input: &str) -> String {
    format!(
        "fuzz target {target}: case seed {seed} failed: {why}\n\
         replay: RCNI_FUZZ_SEED={seed} cargo nextest run --workspace -E 'test(={target})'\n\
         input: {input}"
    )
}

/// What one fuzz target runs: `cases` seeds from `RCNI_FUZZ_BASE` on, after the
/// `regressions` (seeds of bugs found and fixed, kept forever), each within `limit`.
pub struct Target<'a> {
    pub name: &'a str,
    pub cases: u64,
    pub regressions: &'a [u64],
    pub limit: Duration,
}

impl<'a> Target<'a> {
    pub fn new(name: &'a str, cases: u64, regressions: &'a [u64], limit: Duration) -> Self {
        Target {
            name,
            cases,
            regressions,
            limit,
        }
    }
}

/// Runs `check` on the input `generate` makes from each seed of this run. A panic or an
/// `Err` fails the test with the seed and the input; so does a case still running after
/// `limit` (the process exits then: the stuck case cannot be stopped).
pub fn run<I, G, C>(target: Target, generate: G, check: C)
where
    I: Debug,
    G: Fn(&mut Gen) -> I + Sync,
    C: Fn(&I) -> Result<(), String> + Sync,
{
    let Target {
        name: target,
        cases,
        regressions,
        limit,
    } = target;
    let seeds = seeds(regressions, cases);
    // The worker reports each seed as it starts; the watchdog remakes the input of a stuck one.
    let (progress, watch) = mpsc::channel::<Option<u64>>();
    let (generate, check) = (&generate, &check);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for seed in seeds {
                let _ = progress.send(Some(seed));
                let input = generate(&mut Gen::new(seed));
                let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
                let why = match outcome {
                    Ok(Ok(())) => continue,
                    Ok(Err(why)) => why,
                    Err(panic) => format!("panicked: {}", panic_text(&*panic)),
                };
                panic!("{}", report(target, seed, &why, &shown(&input)));
            }
            let _ = progress.send(None);
        });
        let mut current = None;
        loop {
            match watch.recv_timeout(limit) {
                Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(Some(seed)) => current = Some(seed),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let seed = current.unwrap_or_default();
                    let input = shown(&generate(&mut Gen::new(seed)));
                    let why = format!("still running after {limit:?} (a hang)");
                    eprintln!("{}", report(target, seed, &why, &input));
                    std::process::exit(1);
                }
            }
        }
    });
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into())
}
