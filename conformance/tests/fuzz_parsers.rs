//! Fuzzing, in process, of every parser libcni exposes: `CNI_ARGS`, the network config and the
//! whole request (through the plugin skeleton), results of every version and their conversion,
//! the result cache and conflists as cnitool reads them, and the nf_tables and rtnetlink
//! replies we decode. No input may panic or hang; a failure prints its seed and input
//! (see `conformance::fuzz` for replaying and longer runs).

use std::num::NonZeroI32;
use std::time::Duration;

use conformance::VERSIONS;
use conformance::fuzz::{self, Gen, seeds};
use libcni::Version;
use libcni::kernel::nf_tables::expr::{self, CmpOp, PayloadBase, Verdict};
use libcni::kernel::nf_tables::{Acks, Batch, DumpStep, Family, Rule, RuleDump};
use libcni::protocol::args::CniArgs;
use libcni::protocol::result::CniResult;
use libcni::protocol::skel::{Plugin, Request};
use libcni::runtime::{Cache, ConfList, Runtime, RuntimeConf};
use netlink_packet_core::{
    DoneMessage, ErrorMessage, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_netfilter::nftables::{MetaKey, NfTablesMessage, Register, RuleAttribute};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage};
use serde_json::Value;

/// A part of a multipart reply (a dump), as the kernel flags it.
const NLM_F_MULTI: u16 = 2;

/// Generous for one in-process case, even a huge input in a debug build.
const LIMIT: Duration = Duration::from_secs(20);

fn target<'a>(name: &'a str, cases: u64, regressions: &'a [u64]) -> fuzz::Target<'a> {
    fuzz::Target::new(name, cases, regressions, LIMIT)
}

fn version(g: &mut Gen) -> &'static str {
    VERSIONS[g.below(VERSIONS.len())]
}

#[test]
fn fuzz_cni_args() {
    fuzz::run(
        target("fuzz_cni_args", 3000, &[]),
        |g| fuzz::cni_args(g, seeds::CNI_ARGS),
        |raw| {
            let Ok(args) = CniArgs::parse(raw) else {
                return Ok(());
            };
            for (k, v) in args.pairs() {
                if k.is_empty() || k.contains([';', '=']) || v.contains([';', '=']) {
                    return Err(format!("pair ({k:?}, {v:?}) kept a separator"));
                }
            }
            let _ = args.check_known(&["IP", "MAC", "K8S_POD_NAME"]);
            Ok(())
        },
    );
}

/// A plugin that reads, through the skeleton, everything any of ours reads from a request.
struct Probe;

impl Probe {
    fn read_all(req: &Request) -> libcni::Result<Option<CniResult>> {
        req.args()?.check_known(&["IP", "MAC"])?;
        req.conf.dns()?;
        req.plugin_conf::<Value>()?;
        let _ = req.conf.ipam_type();
        let _ = req.conf.runtime("portMappings");
        let _ = req.conf.cni_arg("ips");
        req.prev_result()
    }
}

impl Plugin for Probe {
    fn add(&self, req: &Request) -> libcni::Result<CniResult> {
        Ok(Probe::read_all(req)?.unwrap_or_default())
    }
    fn del(&self, req: &Request) -> libcni::Result<()> {
        Probe::read_all(req).map(drop)
    }
    fn check(&self, req: &Request) -> libcni::Result<()> {
        Probe::read_all(req).map(drop)
    }
    fn gc(&self, req: &Request) -> libcni::Result<()> {
        req.conf.gc_attachments().map(drop)
    }
}

#[derive(Debug)]
struct Invocation {
    env: Vec<(&'static str, String)>,
    stdin: Vec<u8>,
}

fn invocation(g: &mut Gen) -> Invocation {
    let v = version(g);
    let plugin = *g.pick(&["bridge", "host-local", "loopback", "portmap"]);
    let confs = seeds::plugin_confs(plugin, v, "/nonexistent/rcni-fuzz", "/nonexistent/resolv");
    let seed = g.pick(&confs).clone();
    let command = *g.pick(&[
        "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "add", "BOGUS",
    ]);
    let mut env = vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", "ctr1".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", "/nonexistent/rcni-fuzz-bin".to_string()),
        ("CNI_ARGS", fuzz::cni_args(g, seeds::CNI_ARGS)),
    ];
    let netns = *g.pick(&["/nonexistent/rcni-fuzz-netns", "", "/proc/self/ns/net"]);
    env.push(("CNI_NETNS", netns.to_string()));
    if g.chance(20) {
        let key = *g.pick(&["CNI_CONTAINERID", "CNI_IFNAME"]);
        env.retain(|(k, _)| *k != key);
        env.push((key, fuzz::odd_string(g)));
    }
    Invocation {
        env,
        stdin: fuzz::mutate_json(g, &seed),
    }
}

#[test]
fn fuzz_plugin_request() {
    fuzz::run(
        target("fuzz_plugin_request", 2500, &[]),
        invocation,
        |inv| {
            let env = |k: &str| {
                inv.env
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.clone())
            };
            let mut out = Vec::new();
            let status = libcni::protocol::skel::dispatch(
                &Probe,
                "probe",
                &env,
                &mut &inv.stdin[..],
                &mut out,
            );
            let stdout = String::from_utf8_lossy(&out).into_owned();
            let outcome = conformance::Outcome {
                status: i32::from(status),
                json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
                stdout,
                stderr: String::new(),
            };
            let command = env("CNI_COMMAND").unwrap_or_default();
            match fuzz::protocol_violation(&command, &outcome) {
                Some(why) => Err(format!("{why}: {outcome:?}")),
                None => Ok(()),
            }
        },
    );
}

/// A mutant of a result in any version, read as if sent in `default`.
#[derive(Debug)]
struct ResultCase {
    text: Vec<u8>,
    default: Version,
}

#[test]
fn fuzz_prev_result() {
    fuzz::run(
        target("fuzz_prev_result", 3000, &[]),
        |g| {
            let seed = seeds::result(version(g));
            ResultCase {
                text: fuzz::mutate_json(g, &seed),
                default: *g.pick(&Version::ALL),
            }
        },
        |case| {
            let Ok(value) = serde_json::from_slice::<Value>(&case.text) else {
                return Ok(());
            };
            let Ok((_, result)) = CniResult::parse(&value, case.default) else {
                return Ok(());
            };
            // Every rendering reads back, and renders the same again.
            for v in Version::ALL {
                let Ok(rendered) = result.render(v) else {
                    continue;
                };
                let again = CniResult::parse(&rendered, v)
                    .and_then(|(_, r)| r.render(v))
                    .map_err(|e| format!("{v} rendering does not read back: {e}: {rendered}"))?;
                if again != rendered {
                    return Err(format!(
                        "{v} rendering changes when read back: {rendered} → {again}"
                    ));
                }
            }
            let _ = CniResult::convert(&value, case.default, Version::V0_2_0);
            Ok(())
        },
    );
}

#[derive(Debug)]
struct CacheCase {
    /// Each planted file of `<cacheDir>/results`: name, bytes.
    files: Vec<(String, Vec<u8>)>,
    list: Vec<u8>,
}

fn cache_case(g: &mut Gen) -> CacheCase {
    let v = version(g);
    let names = [
        format!("{}-ctr1-eth0", seeds::NET),
        format!("{}-ctr2-eth0", seeds::NET),
        format!("{}-ctr1-eth0-x", seeds::NET),
        "other-ctr1-eth0".to_string(),
    ];
    let files = (0..1 + g.below(3))
        .map(|i| {
            let cid = if i == 0 { "ctr1" } else { "ctr2" };
            let seed = if g.chance(85) {
                seeds::cache_entry(v, cid)
            } else {
                seeds::result(v)
            };
            (g.pick(&names).clone(), fuzz::mutate_json(g, &seed))
        })
        .collect();
    let list = if g.chance(80) {
        serde_json::to_vec(&seeds::conflists(v)[0]).unwrap()
    } else {
        fuzz::mutate_json(g, &seeds::conflists(v)[0])
    };
    CacheCase { files, list }
}

#[test]
fn fuzz_result_cache() {
    fuzz::run(target("fuzz_result_cache", 800, &[]), cache_case, |case| {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results");
        std::fs::create_dir_all(&results).unwrap();
        for (name, bytes) in &case.files {
            std::fs::write(results.join(name), bytes).unwrap();
        }
        let cache = Cache::new(dir.path());
        if let Ok(Some(entry)) = cache.read(seeds::NET, "ctr1", "eth0") {
            let _ = ConfList::from_list_bytes(&entry.config);
            if let Some(result) = &entry.result {
                let _ = CniResult::convert(result, Version::V1_1_0, Version::V0_4_0);
            }
        }
        for entry in cache.entries(seeds::NET) {
            let _ = ConfList::from_list_bytes(&entry.config);
        }
        // The runtime reading the cache for CHECK, DEL and GC: no plugin can run (empty
        // plugin directory), so only our reading of the entries is exercised.
        let Ok(list) = ConfList::from_list_bytes(&case.list) else {
            return Ok(());
        };
        let no_plugins = dir.path().join("bin");
        std::fs::create_dir_all(&no_plugins).unwrap();
        let runtime = Runtime::new(vec![no_plugins], dir.path());
        let rt = RuntimeConf {
            container_id: "ctr1".into(),
            netns: "/nonexistent/rcni-fuzz-netns".into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        let _ = runtime.check(&list, &rt);
        let _ = runtime.del(&list, &rt);
        let _ = runtime.gc(&list, |e| e.container_id == "ctr2");
        Ok(())
    });
}

#[derive(Debug)]
struct ConflistCase {
    /// Files of a network config directory: name, bytes.
    files: Vec<(&'static str, Vec<u8>)>,
}

#[test]
fn fuzz_conflist() {
    fuzz::run(
        target("fuzz_conflist", 1500, &[]),
        |g| {
            let v = version(g);
            let lists = seeds::conflists(v);
            let names = ["10-a.conflist", "20-b.conflist", "30-c.conf", "40-d.json"];
            let files = (0..1 + g.below(3))
                .map(|_| {
                    let name = *g.pick(&names);
                    let seed = if name.ends_with("conflist") {
                        g.pick(&lists).clone()
                    } else {
                        seeds::conf(v)
                    };
                    (name, fuzz::mutate_json(g, &seed))
                })
                .collect();
            ConflistCase { files }
        },
        |case| {
            for (name, bytes) in &case.files {
                let parsed = if name.ends_with("conflist") {
                    ConfList::from_list_bytes(bytes)
                } else {
                    ConfList::from_conf_bytes(bytes)
                };
                if let Ok(list) = parsed {
                    for plugin in &list.plugins {
                        let stdin = libcni::runtime::plugin_stdin(
                            &list,
                            plugin,
                            &RuntimeConf::default(),
                            Some(&seeds::result(list.version.as_str())),
                        );
                        serde_json::from_slice::<Value>(&stdin)
                            .map_err(|e| format!("plugin stdin is not JSON: {e}"))?;
                    }
                }
            }
            let dir = tempfile::tempdir().unwrap();
            for (name, bytes) in &case.files {
                std::fs::write(dir.path().join(name), bytes).unwrap();
            }
            let _ = ConfList::load(dir.path(), seeds::NET);
            Ok(())
        },
    );
}

// ---- netlink replies ------------------------------------------------------------------------

fn frame<T: NetlinkSerializable>(payload: NetlinkPayload<T>, seq: u32, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.sequence_number = seq;
    header.flags = flags;
    let mut msg = NetlinkMessage::new(header, payload);
    msg.finalize();
    let mut out = vec![0; msg.buffer_len()];
    msg.serialize(&mut out);
    out
}

fn rule_frame(seq: u32, handle: u64, comment: &[u8]) -> Vec<u8> {
    let attributes = vec![
        RuleAttribute::Table("rcni_portmap".into()),
        RuleAttribute::Chain("hostports".into()),
        RuleAttribute::Handle(handle),
        RuleAttribute::UserData(comment.to_vec()),
        RuleAttribute::Expressions(vec![
            expr::meta_load(MetaKey::L4Proto, Register::Reg1).into(),
            expr::cmp(CmpOp::Eq, Register::Reg1, vec![6]).into(),
            expr::payload_load(PayloadBase::Transport, 2, 2, Register::Reg1).into(),
            expr::cmp(CmpOp::Neq, Register::Reg1, vec![0x1f, 0x90]).into(),
            expr::bitwise_and(Register::Reg1, vec![0xff, 0]).into(),
            expr::immediate(Register::Reg2, vec![10, 1, 0, 5]).into(),
            expr::verdict(&Verdict::Jump("pod-chain".into())).into(),
        ]),
    ];
    let msg = NetfilterMessage::new(
        NetfilterHeader::new(Family::Inet.proto(), 0, 0),
        NfTablesMessage::NewRule(netlink_packet_netfilter::nftables::RuleMessage { attributes }),
    );
    frame(NetlinkPayload::InnerMessage(msg), seq, NLM_F_MULTI)
}

fn done_frame(seq: u32, code: i32) -> Vec<u8> {
    let mut done = DoneMessage::default();
    done.code = code;
    frame::<NetfilterMessage>(NetlinkPayload::Done(done), seq, NLM_F_MULTI)
}

/// An error reply with the kernel's extended-ack text (`NLM_F_CAPPED | NLM_F_ACK_TLVS`).
fn error_frame(seq: u32, code: i32, text: &str) -> Vec<u8> {
    let mut err = ErrorMessage::default();
    err.code = NonZeroI32::new(code);
    let mut header = vec![0u8; 16];
    header[0] = 16;
    header[8..12].copy_from_slice(&seq.to_ne_bytes());
    let mut value = text.as_bytes().to_vec();
    value.push(0);
    let len = 4 + value.len();
    header.extend_from_slice(&(len as u16).to_ne_bytes());
    header.extend_from_slice(&1u16.to_ne_bytes());
    header.extend_from_slice(&value);
    header.resize(header.len().next_multiple_of(4), 0);
    err.header = header;
    frame::<NetfilterMessage>(NetlinkPayload::Error(err), seq, 0x100 | 0x200)
}

/// A dump's datagrams (the seed), mutated.
fn dump_datagrams(g: &mut Gen) -> Vec<Vec<u8>> {
    let mut first = [
        rule_frame(7, 3, b"\x00\x05key1\x00"),
        rule_frame(7, 4, b"\x07\x02xy\x00\x03k\x00"),
    ]
    .concat();
    let mut second = [
        rule_frame(9, 5, b""),
        rule_frame(7, 6, b"\x00\x00"),
        done_frame(7, 0),
    ]
    .concat();
    if g.chance(10) {
        second = done_frame(7, -libc::ENOENT);
    }
    for _ in 0..1 + g.below(6) {
        let which = if g.chance(50) {
            &mut first
        } else {
            &mut second
        };
        fuzz::mutate_bytes(g, which);
    }
    vec![first, second]
}

#[test]
fn fuzz_nf_tables_rule_dump() {
    fuzz::run(
        target("fuzz_nf_tables_rule_dump", 3000, &[92]),
        dump_datagrams,
        |datagrams| {
            let mut dump = RuleDump::new(Family::Inet, 7, "list chain inet rcni_portmap hostports");
            for d in datagrams {
                match dump.read(d) {
                    Ok(DumpStep::More) => continue,
                    Ok(DumpStep::Done(rules)) => {
                        for rule in rules {
                            let _ = rule.expressions();
                        }
                    }
                    Ok(DumpStep::Interrupted) | Err(_) => {}
                }
                break;
            }
            let _ = libcni::kernel::nf_tables::control_messages(&datagrams.concat());
            Ok(())
        },
    );
}

fn transaction() -> Batch {
    conformance::nft_batch(&["c"], [Rule::new(Family::Inet, "t", "c").accept()])
}

#[test]
fn fuzz_nf_tables_errors() {
    fuzz::run(
        target("fuzz_nf_tables_errors", 3000, &[]),
        |g| {
            let mut d = [
                error_frame(101, 0, ""),
                error_frame(102, -libc::ENOENT, "No such file or directory"),
                error_frame(103, -libc::EINVAL, &fuzz::odd_string(g)),
                error_frame(100, -libc::EPERM, "Operation not permitted"),
            ]
            .concat();
            for _ in 0..1 + g.below(6) {
                fuzz::mutate_bytes(g, &mut d);
            }
            d
        },
        |datagram| {
            let batch = transaction();
            let mut acks = Acks::new(&batch, 100);
            let mut refused = false;
            if let Ok(msgs) = libcni::kernel::nf_tables::control_messages(datagram) {
                for msg in &msgs {
                    if let NetlinkPayload::Error(err) = &msg.payload {
                        let _ =
                            libcni::kernel::nf_tables::ext_ack_text(msg.header.flags, &err.header);
                    }
                    refused |= acks.record(msg).is_err();
                }
            }
            if !refused && acks.done() {
                let _ = acks
                    .outcome()
                    .map_err(|e: libcni::kernel::nf_tables::Error| e.to_string());
            }
            for flags in [0x200, 0x300] {
                let _ = libcni::kernel::nf_tables::ext_ack_text(flags, datagram);
            }
            Ok(())
        },
    );
}

#[derive(Debug)]
enum RtKind {
    Link,
    Address,
    Route,
}

fn rtnetlink_seed(kind: &RtKind) -> Vec<u8> {
    use netlink_packet_route::RouteNetlinkMessage as M;
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, State};
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
    let msg = match kind {
        RtKind::Link => {
            let mut m = LinkMessage::default();
            m.header.index = 7;
            m.attributes = vec![
                LinkAttribute::IfName("veth1234".into()),
                LinkAttribute::Address(vec![0x0a, 0x58, 0x0a, 1, 0, 5]),
                LinkAttribute::Mtu(1400),
                LinkAttribute::Controller(3),
                LinkAttribute::Link(9),
                LinkAttribute::OperState(State::Up),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
            ];
            M::NewLink(m)
        }
        RtKind::Address => {
            let mut m = AddressMessage::default();
            m.header.prefix_len = 24;
            m.attributes = vec![
                AddressAttribute::Address("10.1.0.5".parse().unwrap()),
                AddressAttribute::Local("10.1.0.5".parse().unwrap()),
                AddressAttribute::Label("eth0".into()),
            ];
            M::NewAddress(m)
        }
        RtKind::Route => {
            let mut m = RouteMessage::default();
            m.header.destination_prefix_length = 16;
            m.attributes = vec![
                RouteAttribute::Destination(RouteAddress::Inet("10.9.0.0".parse().unwrap())),
                RouteAttribute::Gateway(RouteAddress::Inet("10.1.0.1".parse().unwrap())),
                RouteAttribute::Oif(7),
            ];
            M::NewRoute(m)
        }
    };
    frame(NetlinkPayload::InnerMessage(msg), 1, NLM_F_MULTI)
}

#[test]
fn fuzz_rtnetlink_replies() {
    use netlink_packet_route::RouteNetlinkMessage as M;
    fuzz::run(
        target("fuzz_rtnetlink_replies", 3000, &[]),
        |g| {
            let kind = match g.below(3) {
                0 => RtKind::Link,
                1 => RtKind::Address,
                _ => RtKind::Route,
            };
            let mut bytes = rtnetlink_seed(&kind);
            for _ in 0..1 + g.below(6) {
                fuzz::mutate_bytes(g, &mut bytes);
            }
            (kind, bytes)
        },
        |(_, bytes)| {
            let Ok(msg) = NetlinkMessage::<M>::deserialize(bytes) else {
                return Ok(());
            };
            let route = libcni::protocol::result::Route::new("10.9.0.0/16".parse().unwrap(), None);
            match msg.payload {
                NetlinkPayload::InnerMessage(M::NewLink(m)) => {
                    let _ = libcni::kernel::netlink::Link::from_message(&m).mac_string();
                }
                NetlinkPayload::InnerMessage(M::NewAddress(m)) => {
                    let _ = libcni::kernel::netlink::address_of(&m);
                }
                NetlinkPayload::InnerMessage(M::NewRoute(m)) => {
                    let _ = libcni::kernel::netlink::KernelRoute::from_message(&m)
                        .map(|r| r.matches(&route));
                }
                _ => {}
            }
            Ok(())
        },
    );
}
