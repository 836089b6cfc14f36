//! The in-process nf_tables client against the real kernel, in throwaway namespaces. Every rule
//! shape the plugins make is built twice, once with the client and once with `nft` text in a
//! second namespace, and both rulesets must list the same (`nft -j`) and dump the same
//! expressions (our own dump): the client writes the bytecode nft would.

use std::net::IpAddr;
use std::time::Instant;

use conformance::{Netns, nft_batch, run_ok};
use ipnetwork::IpNetwork;
use libcni::kernel::nf_tables::{
    BaseChain, Batch, Chain, ChainType, Client, Errno, Error, Family, Hook, L4, ListedRule, Policy,
    Rule, priority,
};
use serde_json::Value;

/// A client whose socket lives in `ns`.
fn client(ns: &Netns) -> Client {
    let netns = libcni::kernel::netns::Netns::open(&ns.path).unwrap();
    let _inside = netns.enter().unwrap();
    Client::open().unwrap()
}

fn nft(ns: &Netns, script: &str) {
    ns.nft(script);
}

/// `nft -j list chain`, without handles and metainfo (which differ between namespaces).
fn listed_chain(ns: &Netns, family: Family, table: &str, chain: &str) -> Vec<Value> {
    let listing =
        run_ok(
            ns.command("nft")
                .args(["-j", "list", "chain", family.name(), table, chain]),
        );
    let doc: Value = serde_json::from_slice(&listing).unwrap();
    doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o.get("metainfo").is_none())
        .map(|o| {
            let mut o = o.clone();
            for kind in ["table", "chain", "rule"] {
                if let Some(obj) = o.get_mut(kind).and_then(Value::as_object_mut) {
                    obj.remove("handle");
                }
            }
            o
        })
        .collect()
}

/// One base chain (or a regular one) in a fresh table, made by the client in one namespace and
/// by nft text in another.
struct Pair {
    ours: Netns,
    theirs: Netns,
    client: Client,
    family: Family,
    table: String,
    chain: String,
}

impl Pair {
    fn new(family: Family, chain: &str, base: Option<(ChainType, Hook, i32)>) -> Pair {
        let ours = Netns::new("nfo");
        let theirs = Netns::new("nft");
        let table = "rcni_test".to_string();
        let mut client = client(&ours);
        let c = match base {
            Some((kind, hook, prio)) => Chain::base(
                family,
                &table,
                chain,
                BaseChain {
                    kind,
                    hook,
                    priority: prio,
                    policy: Policy::Accept,
                },
            ),
            None => Chain::regular(family, &table, chain),
        };
        let mut batch = Batch::new();
        batch.add_table(family, &table).unwrap();
        batch.add_chain(&c).unwrap();
        client.commit(&batch).unwrap();
        let spec = match base {
            Some((kind, hook, prio)) => format!(
                "type {} hook {} priority {prio}; policy accept;",
                match kind {
                    ChainType::Filter => "filter",
                    ChainType::Nat => "nat",
                    ChainType::Route => "route",
                },
                format!("{hook:?}").to_lowercase()
            ),
            None => String::new(),
        };
        nft(
            &theirs,
            &format!("table {family} {table} {{\n chain {chain} {{ {spec} }}\n}}\n"),
        );
        Pair {
            ours,
            theirs,
            client,
            family,
            table,
            chain: chain.to_string(),
        }
    }

    fn rule(&self) -> Rule {
        Rule::new(self.family, &self.table, &self.chain)
    }

    /// Adds `rule` with the client and `text` with nft, then compares both ways.
    fn same(&mut self, rule: Rule, text: &str) {
        self.client.add_rule(&rule).unwrap();
        let (f, t, c) = (self.family, &self.table, &self.chain);
        nft(&self.theirs, &format!("add rule {f} {t} {c} {text}\n"));
        let ours = listed_chain(&self.ours, f, t, c);
        let theirs = listed_chain(&self.theirs, f, t, c);
        assert_eq!(
            serde_json::to_string_pretty(&ours).unwrap(),
            serde_json::to_string_pretty(&theirs).unwrap(),
            "nft lists our rule differently from `{text}`"
        );
        let our_dump = self.client.list_rules(f, t, c).unwrap();
        let their_dump = client(&self.theirs).list_rules(f, t, c).unwrap();
        let exprs = |d: &[ListedRule]| {
            d.iter()
                .map(|r| r.expressions().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            exprs(&our_dump),
            exprs(&their_dump),
            "bytecode differs for `{text}`"
        );
        let comments = |d: &[ListedRule]| d.iter().map(|r| r.comment.clone()).collect::<Vec<_>>();
        assert_eq!(comments(&our_dump), comments(&their_dump));
    }
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `n` accept rules in `inet t chain`, commented with their number.
fn numbered_rules(chain: &str, n: u16) -> impl Iterator<Item = Rule> {
    (0..n).map(move |i| {
        Rule::new(Family::Inet, "t", chain)
            .accept()
            .comment(&i.to_string())
    })
}

const NAT_PRE: Option<(ChainType, Hook, i32)> =
    Some((ChainType::Nat, Hook::Prerouting, priority::DSTNAT));
const NAT_OUT: Option<(ChainType, Hook, i32)> = Some((ChainType::Nat, Hook::Output, -100));
const NAT_POST: Option<(ChainType, Hook, i32)> =
    Some((ChainType::Nat, Hook::Postrouting, priority::SRCNAT));

#[test]
fn portmap_hook_chains_jump_only_for_local_destinations() {
    for (name, base) in [("prerouting", NAT_PRE), ("output", NAT_OUT)] {
        let mut p = Pair::new(Family::Inet, name, base);
        let hostports = Chain::regular(Family::Inet, &p.table, "hostports");
        p.client.add_chain(&hostports).unwrap();
        nft(&p.theirs, "add chain inet rcni_test hostports\n");
        p.same(
            p.rule().match_fib_daddr_local().jump("hostports"),
            "fib daddr type local jump hostports",
        );
    }
}

#[test]
fn portmap_dnat_rules() {
    let mut p = Pair::new(Family::Inet, "hostports", None);
    let comment = "rcni:0123456789abcdef:fedcba9876543210 net=net if=eth0 id=c1";
    p.same(
        p.rule()
            .match_iifname("eth0")
            .match_nfproto_v4()
            .match_dport(L4::Tcp, 8080)
            .dnat_to(ip("10.88.0.5"), Some(80))
            .comment(comment),
        &format!(
            "iifname \"eth0\" meta nfproto ipv4 tcp dport 8080 dnat ip to 10.88.0.5:80 comment \"{comment}\""
        ),
    );
    p.same(
        p.rule()
            .match_daddr(ip("192.168.1.5"))
            .match_dport(L4::Udp, 5353)
            .dnat_to(ip("10.88.0.5"), Some(53))
            .comment(comment),
        &format!(
            "ip daddr 192.168.1.5 udp dport 5353 dnat ip to 10.88.0.5:53 comment \"{comment}\""
        ),
    );
    p.same(
        p.rule()
            .match_nfproto_v6()
            .match_dport(L4::Tcp, 8080)
            .dnat_to(ip("fd00::5"), Some(80)),
        "meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd00::5]:80",
    );
    p.same(
        p.rule()
            .match_daddr(ip("fd00::1"))
            .match_dport(L4::Sctp, 9)
            .dnat_to(ip("fd00::5"), Some(19)),
        "ip6 daddr fd00::1 sctp dport 9 dnat ip6 to [fd00::5]:19",
    );
    p.same(
        p.rule().match_th_dport(7).dnat_to(ip("10.88.0.5"), None),
        "th dport 7 dnat ip to 10.88.0.5",
    );
}

#[test]
fn portmap_hairpin_and_localhost_masquerade() {
    let mut p = Pair::new(Family::Inet, "postrouting", NAT_POST);
    let cases = [
        (
            Some("10.88.0.0/16"),
            "10.88.0.5",
            Some("hairpin"),
            "ip saddr 10.88.0.0/16 ip daddr 10.88.0.5",
        ),
        (
            Some("127.0.0.1/32"),
            "10.88.0.5",
            None,
            "ip saddr 127.0.0.1 ip daddr 10.88.0.5",
        ),
        (
            Some("fd00::5/64"),
            "fd00::5",
            None,
            "ip6 saddr fd00::/64 ip6 daddr fd00::5",
        ),
        (None, "10.88.0.5", None, "ip daddr 10.88.0.5"),
    ];
    for (saddr, daddr, comment, matches) in cases {
        let mut rule = p.rule().match_ct_status_dnat();
        if let Some(saddr) = saddr {
            rule = rule.match_saddr(net(saddr));
        }
        rule = rule.match_daddr(ip(daddr)).masquerade();
        let mut text = format!("ct status dnat {matches} masquerade");
        if let Some(comment) = comment {
            rule = rule.comment(comment);
            text += &format!(" comment \"{comment}\"");
        }
        p.same(rule, &text);
    }
}

#[test]
fn bridge_masquerade_per_subnet() {
    let mut p = Pair::new(Family::Inet, "postrouting", NAT_POST);
    let cases = [
        ("10.88.0.0/16", "224.0.0.0/4", "ip"),
        ("10.88.16.0/20", "224.0.0.0/4", "ip"),
        ("fd00::/64", "ff00::/8", "ip6"),
        ("fd00:1:2::/60", "ff00::/8", "ip6"),
    ];
    for (subnet, multicast, fam) in cases {
        let comment = format!("rcni:0123456789abcdef net=n subnet={subnet}");
        p.same(
            p.rule()
                .match_saddr(net(subnet))
                .match_daddr_not(net(subnet))
                .match_daddr_not(net(multicast))
                .masquerade()
                .comment(&comment),
            &format!(
                "{fam} saddr {subnet} {fam} daddr != {subnet} {fam} daddr != {multicast} masquerade comment \"{comment}\""
            ),
        );
    }
}

#[test]
fn spoof_check_in_the_bridge_family() {
    let mut p = Pair::new(
        Family::Bridge,
        "prerouting",
        Some((ChainType::Filter, Hook::Prerouting, -300)),
    );
    p.same(
        p.rule()
            .match_iifname("veth1a2b3c4d")
            .match_ether_saddr_not([0x0a, 0x58, 0x0a, 0x01, 0x00, 0x05])
            .drop()
            .comment("rcni:spoof"),
        "iifname \"veth1a2b3c4d\" ether saddr != 0a:58:0a:01:00:05 drop comment \"rcni:spoof\"",
    );
    p.same(
        p.rule().match_saddr(net("10.1.0.0/16")).accept(),
        "ip saddr 10.1.0.0/16 accept",
    );
}

#[test]
fn verdicts_counter_and_other_families() {
    for (family, addr) in [(Family::Ip, "10.0.0.0/8"), (Family::Ip6, "fd00::/16")] {
        let mut p = Pair::new(
            family,
            "forward",
            Some((ChainType::Filter, Hook::Forward, priority::FILTER)),
        );
        p.client
            .add_chain(&Chain::regular(family, &p.table, "other"))
            .unwrap();
        nft(&p.theirs, &format!("add chain {family} rcni_test other\n"));
        let fam = family.name();
        p.same(
            p.rule().match_oifname("eth0").counter().accept(),
            "oifname \"eth0\" counter accept",
        );
        p.same(
            p.rule().match_saddr(net(addr)).goto("other"),
            &format!("{fam} saddr {addr} goto other"),
        );
        p.same(
            p.rule().match_l4proto(L4::Udp).ret(),
            "meta l4proto udp return",
        );
        p.same(
            p.rule().match_daddr_not(net(addr)).drop(),
            &format!("{fam} daddr != {addr} drop"),
        );
    }
}

#[test]
fn dump_returns_one_chain_with_handles_and_comments() {
    let ns = Netns::new("nfd");
    let mut c = client(&ns);
    let mut batch = Batch::new();
    batch.add_table(Family::Inet, "a").unwrap();
    batch.add_table(Family::Ip, "a").unwrap();
    for (family, chain) in [
        (Family::Inet, "one"),
        (Family::Inet, "two"),
        (Family::Ip, "one"),
    ] {
        batch
            .add_chain(&Chain::regular(family, "a", chain))
            .unwrap();
        for i in 0..3 {
            let comment = format!("{family} {chain} {i}");
            batch
                .add_rule(&Rule::new(family, "a", chain).counter().comment(&comment))
                .unwrap();
        }
    }
    c.commit(&batch).unwrap();
    let rules = c.list_rules(Family::Inet, "a", "one").unwrap();
    let comments: Vec<_> = rules.iter().map(|r| r.comment.clone().unwrap()).collect();
    assert_eq!(comments, ["inet one 0", "inet one 1", "inet one 2"]);
    assert!(rules.iter().all(|r| r.table == "a" && r.chain == "one"));
    // The handles are the ones nft shows, and nft shows our comments.
    let out = ns
        .command("nft")
        .args(["-j", "list", "chain", "inet", "a", "one"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<(u64, String)> = doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| {
            let r = o.get("rule")?;
            Some((r["handle"].as_u64()?, r["comment"].as_str()?.to_string()))
        })
        .collect();
    let ours: Vec<(u64, String)> = rules
        .iter()
        .map(|r| (r.handle, r.comment.clone().unwrap()))
        .collect();
    assert_eq!(ours, listed);
    // A missing chain or table lists as empty.
    assert!(c.list_rules(Family::Inet, "a", "none").unwrap().is_empty());
    assert!(c.list_rules(Family::Ip6, "a", "one").unwrap().is_empty());
}

#[test]
fn delete_by_handle_removes_exactly_one_rule() {
    let ns = Netns::new("nfx");
    let mut c = client(&ns);
    c.commit(&nft_batch(&["c"], numbered_rules("c", 3)))
        .unwrap();
    let before = c.list_rules(Family::Inet, "t", "c").unwrap();
    c.delete_rule(&before[1]).unwrap();
    let after = c.list_rules(Family::Inet, "t", "c").unwrap();
    assert_eq!(after, [before[0].clone(), before[2].clone()]);
    // Again: the handle is gone.
    let err = c.delete_rule(&before[1]).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    c.flush_chain(Family::Inet, "t", "c").unwrap();
    assert!(c.list_rules(Family::Inet, "t", "c").unwrap().is_empty());
    c.delete_table(Family::Inet, "t").unwrap();
    assert!(!c.table_exists(Family::Inet, "t").unwrap());
    assert!(ns.nft_ruleset().iter().all(|o| o.get("table").is_none()));
}

#[test]
fn batch_error_names_the_failing_message_and_changes_nothing() {
    let ns = Netns::new("nfe");
    let mut c = client(&ns);
    let batch = nft_batch(
        &["c"],
        [
            Rule::new(Family::Inet, "t", "missing").accept(),
            Rule::new(Family::Inet, "t", "c").accept(),
        ],
    );
    match c.commit(&batch) {
        Err(Error::Rejected {
            index, op, errno, ..
        }) => {
            assert_eq!(index, 2);
            assert_eq!(op, "add rule inet t missing");
            assert_eq!(errno, Errno::NotFound);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !c.table_exists(Family::Inet, "t").unwrap(),
        "the batch must be atomic"
    );
    // Other errnos come through as they are: a jump to a chain that is not there.
    c.add_table(Family::Inet, "t").unwrap();
    c.add_chain(&Chain::regular(Family::Inet, "t", "c"))
        .unwrap();
    let err = c
        .add_rule(
            &Rule::new(Family::Inet, "t", "c")
                .match_fib_daddr_local()
                .jump("nowhere"),
        )
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn fast_path_first_then_base_objects_when_the_kernel_says_they_are_missing() {
    let ns = Netns::new("nff");
    let mut c = client(&ns);
    let rule = Rule::new(Family::Inet, "rcni_portmap", "hostports")
        .match_nfproto_v4()
        .match_dport(L4::Tcp, 8080)
        .dnat_to(ip("10.88.0.5"), Some(80))
        .comment("k");
    let err = c.add_rule(&rule).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let mut base = Batch::new();
    base.add_table(Family::Inet, "rcni_portmap").unwrap();
    base.add_chain(&Chain::regular(Family::Inet, "rcni_portmap", "hostports"))
        .unwrap();
    base.add_rule(&rule).unwrap();
    c.commit(&base).unwrap();
    c.add_rule(&rule).unwrap();
    assert_eq!(
        c.list_rules(Family::Inet, "rcni_portmap", "hostports")
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn add_is_idempotent_and_create_is_exclusive() {
    let ns = Netns::new("nfc");
    let mut c = client(&ns);
    for family in [Family::Inet, Family::Ip, Family::Ip6, Family::Bridge] {
        assert!(!c.table_exists(family, "t").unwrap());
        c.create_table(family, "t").unwrap();
        c.add_table(family, "t").unwrap();
        let err = c.create_table(family, "t").unwrap_err();
        assert!(err.is_exists(), "{err}");
        assert!(c.table_exists(family, "t").unwrap());
        let chain = Chain::base(
            family,
            "t",
            "pre",
            BaseChain {
                kind: ChainType::Filter,
                hook: Hook::Prerouting,
                priority: -300,
                policy: Policy::Accept,
            },
        );
        assert!(!c.chain_exists(family, "t", "pre").unwrap());
        c.create_chain(&chain).unwrap();
        c.add_chain(&chain).unwrap();
        assert!(c.create_chain(&chain).unwrap_err().is_exists());
        assert!(c.chain_exists(family, "t", "pre").unwrap());
    }
    let mut tables: Vec<String> = ns
        .nft_ruleset()
        .iter()
        .filter_map(|o| Some(o.get("table")?["family"].as_str()?.to_string()))
        .collect();
    tables.sort();
    assert_eq!(tables, ["bridge", "inet", "ip", "ip6"]);
}

#[test]
fn invalid_requests_never_reach_the_kernel() {
    let mut batch = Batch::new();
    let long = "x".repeat(129);
    let rule = Rule::new(Family::Inet, "t", "c").accept().comment(&long);
    assert!(matches!(batch.add_rule(&rule), Err(Error::Invalid(_))));
    let rule = Rule::new(Family::Inet, "t", "c").match_iifname("this-is-too-long0");
    assert!(matches!(batch.add_rule(&rule), Err(Error::Invalid(_))));
    assert!(matches!(
        batch.add_table(Family::Ip, ""),
        Err(Error::Invalid(_))
    ));
    assert!(batch.is_empty());
}

#[test]
fn a_large_batch_gets_all_its_acks() {
    let ns = Netns::new("nfl");
    let mut c = client(&ns);
    let rules = (0..3000u16).map(|i| {
        Rule::new(Family::Inet, "t", "c")
            .match_dport(L4::Tcp, i)
            .accept()
            .comment(&format!("r{i}"))
    });
    c.commit(&nft_batch(&["c"], rules)).unwrap();
    let rules = c.list_rules(Family::Inet, "t", "c").unwrap();
    assert_eq!(rules.len(), 3000);
    assert_eq!(rules[2999].comment.as_deref(), Some("r2999"));
}

/// Not a timed assertion: prints what one transaction and one dump cost here.
#[test]
fn cost_of_add_rule_and_of_a_chain_dump() {
    const N: u32 = 1000;
    let ns = Netns::new("nfp");
    let mut c = client(&ns);
    c.commit(&nft_batch(&["big", "small"], numbered_rules("small", 10)))
        .unwrap();
    let start = Instant::now();
    for i in 0..N {
        let rule = Rule::new(Family::Inet, "t", "big")
            .match_nfproto_v4()
            .match_dport(L4::Tcp, (i % 60000) as u16)
            .dnat_to(ip("10.88.0.5"), Some(80))
            .comment(&format!("rcni:{i:016x}"));
        c.add_rule(&rule).unwrap();
    }
    let add = start.elapsed() / N;
    let start = Instant::now();
    for _ in 0..N {
        assert_eq!(c.list_rules(Family::Inet, "t", "small").unwrap().len(), 10);
    }
    let dump_small = start.elapsed() / N;
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            c.list_rules(Family::Inet, "t", "big").unwrap().len(),
            N as usize
        );
    }
    let dump_big = start.elapsed() / 20;
    let handles: Vec<ListedRule> = c
        .list_rules(Family::Inet, "t", "big")
        .unwrap()
        .into_iter()
        .take(100)
        .collect();
    let start = Instant::now();
    for h in &handles {
        c.delete_rule(h).unwrap();
    }
    let delete = start.elapsed() / handles.len() as u32;
    // The kernel finishes deferred destruction when the socket closes.
    let start = Instant::now();
    drop(c);
    let close = start.elapsed();
    println!(
        "nf_tables client: add-rule transaction {add:?}; dump of a 10-rule chain beside a \
         {N}-rule one {dump_small:?}; dump of the {N}-rule chain {dump_big:?}; \
         delete-rule transaction {delete:?} (one socket); closing that socket {close:?}"
    );
}
