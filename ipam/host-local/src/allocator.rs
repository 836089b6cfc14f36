//! Choosing addresses: requested ones, the attachment's existing lease, or round-robin after
//! the last reserved address, one per range set. Pure logic over a snapshot of the store.

use std::collections::HashMap;
use std::net::IpAddr;

use libcni::{Error, Result};

use crate::config::{Config, RangeSet};
use crate::ip::{from_u128, to_u128};
use crate::leases::{LeaseView, Owner};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub set: usize,
    /// Which range of the set (for the prefix length and gateway).
    pub range: usize,
    pub ip: IpAddr,
    /// False when the attachment already held this address (a repeated ADD).
    pub new: bool,
}

/// One address per range set for (`id`, `ifname`), given the current leases and the last
/// reserved address of each set.
pub fn allocate(
    cfg: &Config,
    leases: &dyn LeaseView,
    last: &HashMap<usize, IpAddr>,
    id: &str,
    ifname: &str,
) -> Result<Vec<Allocation>> {
    let mine = |ip: &IpAddr| leases.owner(*ip).is_some_and(|o| o.is(id, ifname));
    let mut out = Vec::new();
    let mut used_requests = Vec::new();
    for (s, set) in cfg.sets.iter().enumerate() {
        let request = cfg
            .requested
            .iter()
            .copied()
            .find(|(ip, _)| set.contains(*ip));
        let allocation = match request {
            Some(request) => {
                used_requests.push(request.0);
                requested(s, set, request, leases, &mine)?
            }
            // A repeated ADD (runtimes retry after crashes) gets the lease it already has.
            None => match held(s, set, leases, id, ifname) {
                Some(held) => held,
                None => next_free(s, set, leases, last.get(&s).copied())?,
            },
        };
        out.push(allocation);
    }
    refuse_unused_requests(cfg, &used_requests)?;
    Ok(out)
}

/// The address the runtime asked for in set `s`, unless it is the gateway or someone else's.
fn requested(
    s: usize,
    set: &RangeSet,
    (ip, from): (IpAddr, &str),
    leases: &dyn LeaseView,
    mine: &dyn Fn(&IpAddr) -> bool,
) -> Result<Allocation> {
    let range = set.find(ip).unwrap_or_default();
    if ip == set.ranges[range].gateway {
        return Err(Error::invalid_config(format!(
            "{from}: requested IP {ip} is the gateway of range set {}",
            set.key
        )));
    }
    let new = match leases.owner(ip) {
        None => true,
        Some(_) if mine(&ip) => false,
        Some(owner) => {
            return Err(Error::internal(format!(
                "requested IP address {ip} is not available in range set {} (held by {owner})",
                set.describe()
            )));
        }
    };
    Ok(Allocation {
        set: s,
        range,
        ip,
        new,
    })
}

/// The lowest address of set `s` this attachment already holds.
fn held(
    s: usize,
    set: &RangeSet,
    leases: &dyn LeaseView,
    id: &str,
    ifname: &str,
) -> Option<Allocation> {
    let ip = leases
        .of_container(id)
        .into_iter()
        .filter(|(ip, owner)| set.contains(*ip) && owner.is(id, ifname))
        .map(|(ip, _)| ip)
        .min_by_key(|ip| to_u128(*ip))?;
    Some(Allocation {
        set: s,
        range: set.find(ip).unwrap_or_default(),
        ip,
        new: false,
    })
}

/// The next free address of set `s` after `last`.
fn next_free(
    s: usize,
    set: &RangeSet,
    leases: &dyn LeaseView,
    last: Option<IpAddr>,
) -> Result<Allocation> {
    let free =
        |range: usize, ip: IpAddr| !set.ranges[range].reserved(ip) && leases.owner(ip).is_none();
    let (range, ip) = round_robin(set, last, free).ok_or_else(|| {
        Error::internal(format!(
            "no IP addresses available in range set: {}",
            set.describe()
        ))
    })?;
    Ok(Allocation {
        set: s,
        range,
        ip,
        new: true,
    })
}

/// Fails for a requested address no set gave out: a second one for a set, or one outside all.
fn refuse_unused_requests(cfg: &Config, used: &[IpAddr]) -> Result<()> {
    let Some((stray, from)) = cfg.requested.iter().find(|(ip, _)| !used.contains(ip)) else {
        return Ok(());
    };
    Err(Error::invalid_config(
        match cfg.sets.iter().find(|s| s.contains(*stray)) {
            Some(set) => format!(
                "{from}: requested IP {stray} is a second address for range set {}, which gives one address",
                set.key
            ),
            None => format!("{from}: requested IP {stray} is not in any range set"),
        },
    ))
}

/// The first address, after `last` (or from the first range's start), for which `free` holds,
/// walking the set's ranges in order and wrapping around once.
fn round_robin(
    set: &RangeSet,
    last: Option<IpAddr>,
    free: impl Fn(usize, IpAddr) -> bool,
) -> Option<(usize, IpAddr)> {
    let ranges = &set.ranges;
    let next = |(r, n): (usize, u128)| match ranges[r].after(n) {
        Some(n) => (r, n),
        None => {
            let r = (r + 1) % ranges.len();
            (r, to_u128(ranges[r].start))
        }
    };
    let first = match last.and_then(|ip| Some((set.find(ip)?, to_u128(ip)))) {
        Some(pos) => next(pos),
        None => (0, to_u128(ranges[0].start)),
    };
    // The walk is one cycle through every position of the set: back at the first, all are taken.
    let v4 = set.is_ipv4();
    let mut pos = first;
    loop {
        let ip = from_u128(pos.1, v4);
        if free(pos.0, ip) {
            return Some((pos.0, ip));
        }
        pos = next(pos);
        if pos == first {
            return None;
        }
    }
}

/// Whether the set still has an address to give (for STATUS).
pub fn has_free(set: &RangeSet, leases: &HashMap<IpAddr, Owner>) -> bool {
    set.ranges.iter().any(|r| {
        let mut unusable: Vec<IpAddr> = leases
            .keys()
            .copied()
            .filter(|ip| r.contains(*ip))
            .collect();
        for ip in [
            Some(r.gateway),
            Some(r.subnet.network()),
            r.is_ipv4().then(|| r.subnet.broadcast()),
        ]
        .into_iter()
        .flatten()
        {
            if r.contains(ip) && !unusable.contains(&ip) {
                unusable.push(ip);
            }
        }
        r.size() > unusable.len() as u128
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Range;
    use ipnetwork::IpNetwork;
    use std::path::PathBuf;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(subnet: &str, start: &str, end: &str) -> Range {
        let subnet: IpNetwork = subnet.parse().unwrap();
        let gw = from_u128(to_u128(subnet.network()) + 1, subnet.is_ipv4());
        Range {
            subnet,
            start: ip(start),
            end: ip(end),
            gateway: gw,
        }
    }

    fn config(sets: Vec<Vec<Range>>, requested: &[&str]) -> Config {
        Config {
            sets: sets
                .into_iter()
                .enumerate()
                .map(|(i, ranges)| RangeSet {
                    key: format!("ipam.ranges[{i}]"),
                    ranges,
                })
                .collect(),
            requested: requested.iter().map(|s| (ip(s), "args.cni.ips")).collect(),
            routes: vec![],
            data_dir: PathBuf::new(),
            resolv_conf: None,
        }
    }

    fn other(id: &str) -> Owner {
        Owner::Attachment {
            id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn starts_at_range_start_and_skips_the_gateway() {
        let cfg = config(
            vec![vec![range("10.0.0.0/29", "10.0.0.1", "10.0.0.6")]],
            &[],
        );
        let got = allocate(&cfg, &HashMap::new(), &HashMap::new(), "c1", "eth0").unwrap();
        assert_eq!(
            got,
            vec![Allocation {
                set: 0,
                range: 0,
                ip: ip("10.0.0.2"),
                new: true
            }]
        );
    }

    #[test]
    fn round_robin_continues_after_the_last_reserved_and_wraps() {
        let cfg = config(
            vec![vec![range("10.0.0.0/29", "10.0.0.1", "10.0.0.6")]],
            &[],
        );
        let last = HashMap::from([(0, ip("10.0.0.5"))]);
        let got = allocate(&cfg, &HashMap::new(), &last, "c1", "eth0").unwrap();
        assert_eq!(got[0].ip, ip("10.0.0.6"));
        let last = HashMap::from([(0, ip("10.0.0.6"))]);
        let got = allocate(&cfg, &HashMap::new(), &last, "c1", "eth0").unwrap();
        assert_eq!(got[0].ip, ip("10.0.0.2"), "wraps past the gateway");
        // A last-reserved address outside the set (config changed) starts from the beginning.
        let last = HashMap::from([(0, ip("192.168.0.9"))]);
        assert_eq!(
            allocate(&cfg, &HashMap::new(), &last, "c1", "eth0").unwrap()[0].ip,
            ip("10.0.0.2")
        );
    }

    #[test]
    fn moves_to_the_next_range_of_the_set() {
        let cfg = config(
            vec![vec![
                range("10.0.0.0/29", "10.0.0.1", "10.0.0.6"),
                range("10.0.1.0/29", "10.0.1.1", "10.0.1.6"),
            ]],
            &[],
        );
        let last = HashMap::from([(0, ip("10.0.0.6"))]);
        let got = allocate(&cfg, &HashMap::new(), &last, "c1", "eth0").unwrap();
        assert_eq!((got[0].range, got[0].ip), (1, ip("10.0.1.2")));
    }

    #[test]
    fn exhaustion_is_reported_with_the_set() {
        let cfg = config(
            vec![vec![range("10.0.0.0/29", "10.0.0.1", "10.0.0.6")]],
            &[],
        );
        let leases: HashMap<_, _> = (2..=6)
            .map(|n| (ip(&format!("10.0.0.{n}")), other(&format!("x{n}"))))
            .collect();
        assert!(!has_free(&cfg.sets[0], &leases));
        let e = allocate(&cfg, &leases, &HashMap::new(), "c1", "eth0").unwrap_err();
        assert_eq!(
            e.msg,
            "no IP addresses available in range set: 10.0.0.1-10.0.0.6"
        );
        let mut fewer = leases.clone();
        fewer.remove(&ip("10.0.0.4"));
        assert!(has_free(&cfg.sets[0], &fewer));
        assert_eq!(
            allocate(&cfg, &fewer, &HashMap::new(), "c1", "eth0").unwrap()[0].ip,
            ip("10.0.0.4")
        );
    }

    #[test]
    fn never_hands_out_network_broadcast_or_gateway() {
        let cfg = config(
            vec![vec![range("10.0.0.0/30", "10.0.0.0", "10.0.0.3")]],
            &[],
        );
        let got = allocate(&cfg, &HashMap::new(), &HashMap::new(), "c1", "eth0").unwrap();
        assert_eq!(got[0].ip, ip("10.0.0.2"));
        let leases = HashMap::from([(ip("10.0.0.2"), other("x"))]);
        assert!(allocate(&cfg, &leases, &HashMap::new(), "c1", "eth0").is_err());
    }

    #[test]
    fn repeated_add_returns_the_existing_lease() {
        let cfg = config(
            vec![vec![range("10.0.0.0/24", "10.0.0.1", "10.0.0.254")]],
            &[],
        );
        let leases = HashMap::from([(ip("10.0.0.9"), other("c1")), (ip("10.0.0.2"), other("c2"))]);
        let got = allocate(&cfg, &leases, &HashMap::new(), "c1", "eth0").unwrap();
        assert_eq!(
            got,
            vec![Allocation {
                set: 0,
                range: 0,
                ip: ip("10.0.0.9"),
                new: false
            }]
        );
        // A legacy lease (ID only) counts as the attachment's too.
        let legacy = HashMap::from([(ip("10.0.0.7"), Owner::Legacy("c1".into()))]);
        assert_eq!(
            allocate(&cfg, &legacy, &HashMap::new(), "c1", "eth0").unwrap()[0].ip,
            ip("10.0.0.7")
        );
        // Another interface of the same container gets its own address.
        assert_eq!(
            allocate(&cfg, &leases, &HashMap::new(), "c1", "eth1").unwrap()[0].ip,
            ip("10.0.0.3")
        );
    }

    #[test]
    fn requested_ips() {
        let cfg = config(
            vec![
                vec![range("10.0.0.0/24", "10.0.0.1", "10.0.0.254")],
                vec![range("2001:db8::/64", "2001:db8::1", "2001:db8::ff")],
            ],
            &["10.0.0.50", "2001:db8::50"],
        );
        let got = allocate(&cfg, &HashMap::new(), &HashMap::new(), "c1", "eth0").unwrap();
        assert_eq!(
            got.iter().map(|a| a.ip).collect::<Vec<_>>(),
            vec![ip("10.0.0.50"), ip("2001:db8::50")]
        );

        let taken = HashMap::from([(ip("10.0.0.50"), other("c9"))]);
        let e = allocate(&cfg, &taken, &HashMap::new(), "c1", "eth0").unwrap_err();
        assert!(
            e.msg
                .contains("requested IP address 10.0.0.50 is not available"),
            "{}",
            e.msg
        );

        let gw = config(
            vec![vec![range("10.0.0.0/24", "10.0.0.1", "10.0.0.254")]],
            &["10.0.0.1"],
        );
        let e = allocate(&gw, &HashMap::new(), &HashMap::new(), "c1", "eth0").unwrap_err();
        assert_eq!(e.code, libcni::Code::InvalidConfig);
        assert!(e.msg.contains("gateway"), "{}", e.msg);

        let outside = config(
            vec![vec![range("10.0.0.0/24", "10.0.0.1", "10.0.0.254")]],
            &["10.9.0.1"],
        );
        let e = allocate(&outside, &HashMap::new(), &HashMap::new(), "c1", "eth0").unwrap_err();
        assert_eq!(
            e.msg,
            "args.cni.ips: requested IP 10.9.0.1 is not in any range set"
        );
    }

    #[test]
    fn whole_address_space_allocates() {
        let cfg = config(
            vec![vec![range(
                "::/0",
                "::",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            )]],
            &[],
        );
        let got = allocate(&cfg, &HashMap::new(), &HashMap::new(), "c1", "eth0").unwrap();
        assert_eq!(got[0].ip, ip("::2"));
        let last = HashMap::from([(0, ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))]);
        let got = allocate(&cfg, &HashMap::new(), &last, "c1", "eth0").unwrap();
        assert_eq!(got[0].ip, ip("::2"), "wraps from the last address");
        assert!(has_free(&cfg.sets[0], &HashMap::new()));
    }

    #[test]
    fn ipv6_allocation_skips_ipv4_mapped_addresses() {
        let cfg = config(
            vec![vec![range("::/64", "::fffe:ffff:ffff", "::1:0:0:5")]],
            &[],
        );
        let leases = HashMap::from([(ip("::fffe:ffff:ffff"), other("x"))]);
        let got = allocate(&cfg, &leases, &HashMap::new(), "c1", "eth0").unwrap();
        assert_eq!(got[0].ip, ip("::1:0:0:0"));
    }

    #[test]
    fn a_full_set_is_reported_after_one_cycle() {
        let cfg = config(
            vec![vec![
                range("10.0.0.0/30", "10.0.0.1", "10.0.0.2"),
                range("10.0.1.0/30", "10.0.1.1", "10.0.1.2"),
            ]],
            &[],
        );
        let leases = HashMap::from([(ip("10.0.0.2"), other("x")), (ip("10.0.1.2"), other("y"))]);
        let last = HashMap::from([(0, ip("10.0.1.1"))]);
        assert!(allocate(&cfg, &leases, &last, "c1", "eth0").is_err());
    }

    #[test]
    fn large_v6_ranges_do_not_walk_everything() {
        let cfg = config(
            vec![vec![range(
                "2001:db8::/64",
                "2001:db8::1",
                "2001:db8::ffff:ffff:ffff:ffff",
            )]],
            &[],
        );
        let got = allocate(&cfg, &HashMap::new(), &HashMap::new(), "c1", "eth0").unwrap();
        assert_eq!(got[0].ip, ip("2001:db8::2"));
        assert!(has_free(&cfg.sets[0], &HashMap::new()));
    }
}
