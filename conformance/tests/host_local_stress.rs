//! host-local under load: many processes on one store at once, and processes killed with
//! SIGKILL in the middle of ADD. The store must stay consistent throughout.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use conformance::{HostLocalNet, dir_files, owner_links, result_ips};
use serde_json::json;

/// Names the store may hold besides lease files.
fn is_store_file(name: &str) -> bool {
    name == "lock" || name == ".owners" || name.starts_with("last_reserved_ip.")
}

/// 64 parallel ADDs of distinct containers into a /25, then 64 parallel DELs: every container
/// gets its own address, the store serialises them into one round-robin run (.2 … .65), the
/// lease files match the results, and nothing but the store's own files is left at the end.
#[test]
fn parallel_adds_then_parallel_dels_in_a_small_range() {
    const N: usize = 64;
    let net = HostLocalNet::new("1.0.0", json!({"ranges": [[{"subnet": "10.4.0.0/25"}]]}));
    let results: Vec<(String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|n| {
                let net = &net;
                s.spawn(move || {
                    let id = format!("c{n}");
                    let ip = result_ips(&net.add(&id))[0].clone();
                    (id, ip)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let handed_out: BTreeSet<Ipv4Addr> =
        results.iter().map(|(_, ip)| ip.parse().unwrap()).collect();
    assert_eq!(
        handed_out.len(),
        N,
        "an address was handed out twice: {results:?}"
    );
    let expected: BTreeSet<Ipv4Addr> = (2..2 + N as u8)
        .map(|n| Ipv4Addr::new(10, 4, 0, n))
        .collect();
    assert_eq!(handed_out, expected);
    let leases = net.leases();
    let from_results: BTreeMap<String, String> = results
        .iter()
        .map(|(id, ip)| (ip.clone(), format!("{id}\r\neth0")))
        .collect();
    assert_eq!(leases, from_results);
    assert_eq!(net.last_reserved(0).as_deref(), Some("10.4.0.65"));

    std::thread::scope(|s| {
        for (id, _) in &results {
            let net = &net;
            s.spawn(move || net.del(id));
        }
    });
    let left: Vec<String> = dir_files(&net.dir()).into_keys().collect();
    assert_eq!(left, [".owners", "last_reserved_ip.0", "lock"]);
    assert!(owner_links(&net.dir()).is_empty());
}

/// A small deterministic generator for the kill delays (no dependency needed).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 200 ADDs (4 workers at once) killed with SIGKILL after a random 0–3 ms. After each kill the
/// worker does what a runtime does: retries the ADD (odd rounds, the container is kept) or DELs
/// (even rounds). Invariants: a retried ADD leaves its container exactly one lease per set, the
/// ones it reports; a DEL leaves it none; after the last operation there are no temp files, no
/// empty or truncated file, every lease is `<id>\r\neth0` of a kept container, and a GC that
/// keeps them changes nothing.
#[test]
fn sigkill_during_add_leaves_a_consistent_store() {
    const WORKERS: u64 = 4;
    const ROUNDS: u64 = 50;
    let net = HostLocalNet::new(
        "1.1.0",
        json!({"ranges": [[{"subnet": "10.6.0.0/24"}], [{"subnet": "2001:db8:6::/64"}]]}),
    );
    let stdin = net.stdin();
    let per_worker: Vec<(BTreeMap<String, Vec<String>>, u32, u32)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (net, stdin) = (&net, &stdin);
                s.spawn(move || {
                    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
                    let mut kept = BTreeMap::new();
                    let (mut killed, mut partial) = (0, 0);
                    for round in 0..ROUNDS {
                        let id = format!("w{w}r{round}");
                        let mut child = net
                            .exec("ADD", &id, "eth0")
                            .command()
                            .stdin(Stdio::piped())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .unwrap();
                        // The config fits in the pipe buffer: this never blocks.
                        child
                            .stdin
                            .take()
                            .unwrap()
                            .write_all(stdin.as_bytes())
                            .unwrap();
                        std::thread::sleep(Duration::from_micros(rng.next() % 3001));
                        let _ = child.kill();
                        if child.wait().unwrap().signal() == Some(9) {
                            killed += 1;
                        }
                        let mine = || -> Vec<String> {
                            let mut v: Vec<String> = net
                                .leases()
                                .into_iter()
                                .filter(|(_, c)| *c == format!("{id}\r\neth0"))
                                .map(|(ip, _)| ip)
                                .collect();
                            v.sort();
                            v
                        };
                        if !mine().is_empty() {
                            partial += 1;
                        }
                        if round % 2 == 1 {
                            let mut ips = result_ips(&net.add(&id));
                            ips.sort();
                            assert_eq!(mine(), ips, "{id}: leases differ from the retried ADD");
                            kept.insert(id, ips);
                        } else {
                            net.del(&id);
                            assert!(mine().is_empty(), "{id}: DEL left {:?}", mine());
                        }
                    }
                    (kept, killed, partial)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let killed: u32 = per_worker.iter().map(|(_, k, _)| k).sum();
    let partial: u32 = per_worker.iter().map(|(_, _, p)| p).sum();
    let kept: BTreeMap<String, Vec<String>> =
        per_worker.into_iter().flat_map(|(k, _, _)| k).collect();
    eprintln!(
        "{killed} of {} ADDs killed before they finished, {partial} of them after leasing",
        WORKERS * ROUNDS
    );
    assert!(killed > 0, "no ADD was killed: the test exercised nothing");

    let expected: BTreeMap<String, String> = kept
        .iter()
        .flat_map(|(id, ips)| {
            ips.iter()
                .map(move |ip| (ip.clone(), format!("{id}\r\neth0")))
        })
        .collect();
    let check_store = |when: &str| {
        let files = dir_files(&net.dir());
        for (name, file) in &files {
            assert!(
                is_store_file(name) || name.parse::<std::net::IpAddr>().is_ok(),
                "{when}: stray file {name:?} ({:?})",
                String::from_utf8_lossy(&file.content)
            );
            if name.starts_with("last_reserved_ip.") {
                let content = String::from_utf8_lossy(&file.content);
                assert!(
                    content.parse::<std::net::IpAddr>().is_ok(),
                    "{when}: {name} holds {content:?}"
                );
            }
        }
        assert_eq!(net.leases(), expected, "{when}");
    };
    check_store("after the last DEL or ADD");

    let valid: Vec<_> = kept
        .keys()
        .map(|id| json!({"containerID": id, "ifname": "eth0"}))
        .collect();
    net.exec("GC", "", "")
        .run(&net.stdin_with("cni.dev/valid-attachments", json!(valid)))
        .ok();
    check_store("after GC");
    owner_links(&net.dir());

    // The store still works: a new container gets an address no one holds.
    let fresh = result_ips(&net.add("fresh"));
    assert!(
        fresh.iter().all(|ip| !expected.contains_key(ip)),
        "{fresh:?}"
    );
}
