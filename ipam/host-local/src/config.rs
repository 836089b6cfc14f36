//! The `ipam` section and the runtime's requests, validated with the reference's rules; every
//! error names the key it is about.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use libcni::protocol::args::CniArgs;
use libcni::protocol::result::Route;
use libcni::protocol::skel::Request;
use libcni::{Error, Result};
use serde::Deserialize;

use crate::ip::{canonical, from_u128, parse_ip_maybe_cidr, to_u128};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConf {
    ipam: RawIpam,
    #[serde(rename = "runtimeConfig")]
    runtime_config: RawRuntime,
    args: RawArgs,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawIpam {
    ranges: Vec<Vec<RawRange>>,
    // The legacy single range, at the top level of `ipam`.
    subnet: Option<String>,
    #[serde(rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd")]
    range_end: Option<String>,
    gateway: Option<String>,
    routes: Vec<Route>,
    #[serde(rename = "dataDir")]
    data_dir: Option<String>,
    #[serde(rename = "resolvConf")]
    resolv_conf: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct RawRange {
    subnet: String,
    #[serde(rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd")]
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRuntime {
    #[serde(rename = "ipRanges")]
    ip_ranges: Vec<Vec<RawRange>>,
    ips: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawArgs {
    cni: RawCniArgs,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCniArgs {
    ips: Option<Vec<String>>,
}

/// `::ffff:0.0.0.0` to `::ffff:255.255.255.255`.
const MAPPED_V4: std::ops::RangeInclusive<u128> = 0xffff_0000_0000..=0xffff_ffff_ffff;

/// One range of a range set, canonical: every field filled in and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet, host bits clear.
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    /// Inside the subnet and between start and end (inclusive).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.subnet.contains(ip)
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && (self.contains(other.start)
                || self.contains(other.end)
                || other.contains(self.start)
                || other.contains(self.end))
    }

    /// Addresses a range never hands out on its own: its gateway, the subnet's network address
    /// and (IPv4) broadcast address.
    pub fn reserved(&self, ip: IpAddr) -> bool {
        ip == self.gateway
            || ip == self.subnet.network()
            || (self.is_ipv4() && ip == self.subnet.broadcast())
    }

    /// The number of addresses from start to end; a range of all 2^128 IPv6 addresses
    /// (`::/0` from `::`) counts as `u128::MAX`.
    pub fn size(&self) -> u128 {
        (to_u128(self.end) - to_u128(self.start)).saturating_add(1)
    }

    /// The position after `n` in this range, `None` past its end. An IPv6 range steps over
    /// the IPv4-mapped block: those addresses are the IPv4 ones (their lease files too).
    pub fn after(&self, n: u128) -> Option<u128> {
        let mut next = n.checked_add(1)?;
        if !self.is_ipv4() && MAPPED_V4.contains(&next) {
            next = MAPPED_V4.end() + 1;
        }
        (next <= to_u128(self.end)).then_some(next)
    }

    /// The address as the result reports it: with the subnet's prefix length.
    pub fn with_prefix(&self, ip: IpAddr) -> IpNetwork {
        // The prefix comes from a valid network of the same family.
        IpNetwork::new(ip, self.subnet.prefix()).unwrap_or(self.subnet)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// Where the set came from, for messages (`ipam.ranges[1]`, `runtimeConfig.ipRanges[0]`).
    pub key: String,
    pub ranges: Vec<Range>,
}

impl RangeSet {
    pub fn is_ipv4(&self) -> bool {
        self.ranges[0].is_ipv4()
    }

    pub fn find(&self, ip: IpAddr) -> Option<usize> {
        self.ranges.iter().position(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.find(ip).is_some()
    }

    /// `10.1.2.2-10.1.2.254,10.2.2.1-10.2.2.254`, as the reference prints a set.
    pub fn describe(&self) -> String {
        self.ranges
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub sets: Vec<RangeSet>,
    /// Addresses the runtime asked for, each to be given out by the set that contains it, with
    /// the key it came from (for messages).
    pub requested: Vec<(IpAddr, &'static str)>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

impl Config {
    pub fn load(req: &Request) -> Result<Config> {
        let raw: RawConf = req.plugin_conf()?;
        let ipam = raw.ipam;
        let mut sets = Vec::new();
        for (i, set) in raw.runtime_config.ip_ranges.iter().enumerate() {
            sets.push(range_set(&format!("runtimeConfig.ipRanges[{i}]"), set)?);
        }
        if let Some(subnet) = ipam.subnet.as_deref().filter(|s| !s.is_empty()) {
            let legacy = RawRange {
                subnet: subnet.to_string(),
                range_start: ipam.range_start.clone(),
                range_end: ipam.range_end.clone(),
                gateway: ipam.gateway.clone(),
            };
            sets.push(range_set_with_keys(
                "ipam",
                &[(String::from("ipam"), legacy)],
            )?);
        }
        for (i, set) in ipam.ranges.iter().enumerate() {
            sets.push(range_set(&format!("ipam.ranges[{i}]"), set)?);
        }
        if sets.is_empty() {
            return Err(Error::invalid_config(
                "no IP ranges specified: set ipam.ranges (or ipam.subnet)",
            ));
        }
        for (i, a) in sets.iter().enumerate() {
            for b in &sets[i + 1..] {
                if a.ranges
                    .iter()
                    .any(|ra| b.ranges.iter().any(|rb| ra.overlaps(rb)))
                {
                    return Err(Error::invalid_config(format!(
                        "range set {} overlaps with range set {}",
                        b.key, a.key
                    )));
                }
            }
        }
        if req.version.one_address_per_family() {
            let v4 = sets.iter().filter(|s| s.is_ipv4()).count();
            if v4 > 1 || sets.len() - v4 > 1 {
                return Err(Error::incompatible(format!(
                    "CNI version {} does not support more than 1 address per family (ipam has {} range sets)",
                    req.version,
                    sets.len()
                )));
            }
        }
        Ok(Config {
            sets,
            requested: requested_ips(req, raw.runtime_config.ips, raw.args.cni.ips)?,
            routes: ipam.routes,
            data_dir: PathBuf::from(
                ipam.data_dir
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            ),
            resolv_conf: ipam
                .resolv_conf
                .filter(|r| !r.is_empty())
                .map(PathBuf::from),
        })
    }
}

/// `args.cni.ips` and `runtimeConfig.ips`; `CNI_ARGS IP=` only when `args` does not carry
/// the key (the conventions' rule). Prefixes are ignored.
fn requested_ips(
    req: &Request,
    runtime: Vec<String>,
    args: Option<Vec<String>>,
) -> Result<Vec<(IpAddr, &'static str)>> {
    let cni_args = CniArgs::parse(&req.raw_args)?;
    cni_args.check_known(&["IP"])?;
    let mut out = Vec::new();
    if args.is_none()
        && let Some(ip) = cni_args.get("IP").filter(|s| !s.is_empty())
    {
        let parsed = parse_ip_maybe_cidr(ip).ok_or_else(|| {
            Error::invalid_env(format!("CNI_ARGS IP={ip:?} is not an IP address"))
        })?;
        out.push((parsed, "CNI_ARGS IP"));
    }
    for (key, list) in [
        ("args.cni.ips", args.unwrap_or_default()),
        ("runtimeConfig.ips", runtime),
    ] {
        for s in list {
            let ip = parse_ip_maybe_cidr(&s).ok_or_else(|| {
                Error::invalid_config(format!("{key}: {s:?} is not an IP address"))
            })?;
            if !out.iter().any(|(seen, _)| *seen == ip) {
                out.push((ip, key));
            }
        }
    }
    Ok(out)
}

fn range_set(key: &str, raw: &[RawRange]) -> Result<RangeSet> {
    let keyed: Vec<(String, RawRange)> = raw
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("{key}[{i}]"), r.clone()))
        .collect();
    range_set_with_keys(key, &keyed)
}

fn range_set_with_keys(key: &str, raw: &[(String, RawRange)]) -> Result<RangeSet> {
    if raw.is_empty() {
        return Err(Error::invalid_config(format!("{key}: empty range set")));
    }
    let ranges = raw
        .iter()
        .map(|(k, r)| range(k, r))
        .collect::<Result<Vec<_>>>()?;
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            if a.is_ipv4() != b.is_ipv4() {
                return Err(Error::invalid_config(format!(
                    "{key}: mixed address families in one range set"
                )));
            }
            if a.overlaps(b) {
                return Err(Error::invalid_config(format!(
                    "{key}: ranges {}-{} and {}-{} overlap",
                    a.start, a.end, b.start, b.end
                )));
            }
        }
    }
    Ok(RangeSet {
        key: key.to_string(),
        ranges,
    })
}

fn range(key: &str, raw: &RawRange) -> Result<Range> {
    let bad = |msg: String| Error::invalid_config(format!("{key}.{msg}"));
    let given: IpNetwork = raw
        .subnet
        .parse()
        .map_err(|_| bad(format!("subnet {:?} is not a CIDR subnet", raw.subnet)))?;
    if let IpNetwork::V6(v6) = given
        && let Some(v4) = v6.ip().to_ipv4_mapped()
    {
        // Go's ParseCIDR keeps such a subnet IPv6 with an IPv4 address, which the reference
        // then rejects ("IPNet IP and Mask version mismatch"): say what to write instead.
        let hint = match given.prefix().checked_sub(96) {
            Some(p) => format!("write the IPv4 subnet {v4}/{p}"),
            None => "it is neither an IPv4 nor an IPv6 subnet".into(),
        };
        return Err(bad(format!(
            "subnet {:?} is IPv4-mapped IPv6 (::ffff:a.b.c.d); {hint}",
            raw.subnet
        )));
    }
    let bits = if given.is_ipv4() { 32 } else { 128 };
    if given.prefix() > bits - 2 {
        return Err(bad(format!("subnet {given} is too small to allocate from")));
    }
    if given.ip() != given.network() {
        return Err(bad(format!(
            "subnet {given} has host bits set (the network address is {}/{})",
            given.network(),
            given.prefix()
        )));
    }
    let subnet = given;
    let v4 = subnet.is_ipv4();
    let addr = |name: &str, value: &Option<String>| -> Result<Option<IpAddr>> {
        match value.as_deref().filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => {
                let ip = s
                    .parse::<IpAddr>()
                    .map(canonical)
                    .map_err(|_| bad(format!("{name} {s:?} is not an IP address")))?;
                if !subnet.contains(ip) {
                    return Err(bad(format!("{name} {ip} is not in subnet {subnet}")));
                }
                Ok(Some(ip))
            }
        }
    };
    let network = to_u128(subnet.network());
    let last = to_u128(subnet.broadcast()) - u128::from(v4);
    let start = addr("rangeStart", &raw.range_start)?.unwrap_or(from_u128(network + 1, v4));
    let end = addr("rangeEnd", &raw.range_end)?.unwrap_or(from_u128(last, v4));
    if to_u128(end) < to_u128(start) {
        return Err(bad(format!("rangeEnd {end} is before rangeStart {start}")));
    }
    let gateway = match raw.gateway.as_deref().filter(|s| !s.is_empty()) {
        None => from_u128(network + 1, v4),
        Some(s) => s
            .parse::<IpAddr>()
            .map(canonical)
            .ok()
            .filter(|g| g.is_ipv4() == v4)
            .ok_or_else(|| {
                bad(format!(
                    "gateway {s:?} is not an IP address of the subnet's family"
                ))
            })?,
    };
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(subnet: &str, start: Option<&str>, end: Option<&str>, gw: Option<&str>) -> Result<Range> {
        range(
            "ipam.ranges[0][0]",
            &RawRange {
                subnet: subnet.into(),
                range_start: start.map(String::from),
                range_end: end.map(String::from),
                gateway: gw.map(String::from),
            },
        )
    }

    #[test]
    fn defaults_for_v4_and_v6() {
        let v4 = r("10.1.2.0/24", None, None, None).unwrap();
        assert_eq!(
            (v4.start, v4.end, v4.gateway),
            (
                "10.1.2.1".parse().unwrap(),
                "10.1.2.254".parse().unwrap(),
                "10.1.2.1".parse().unwrap()
            )
        );
        let v6 = r("2001:db8:1::/64", None, None, None).unwrap();
        assert_eq!(v6.start, "2001:db8:1::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            v6.end,
            "2001:db8:1::ffff:ffff:ffff:ffff".parse::<IpAddr>().unwrap()
        );
        let small = r("192.168.1.0/29", None, None, None).unwrap();
        assert_eq!(
            format!("{}-{}", small.start, small.end),
            "192.168.1.1-192.168.1.6"
        );
        let smallest = r("10.0.0.0/30", None, None, None).unwrap();
        assert_eq!(smallest.size(), 2);
    }

    #[test]
    fn validation_errors_name_the_key() {
        let cases = [
            (
                r("10.0.0.0/31", None, None, None),
                "subnet 10.0.0.0/31 is too small",
            ),
            (r("2001:db8::/127", None, None, None), "too small"),
            (
                r("10.0.0.1/24", None, None, None),
                "host bits set (the network address is 10.0.0.0/24)",
            ),
            (r("nonsense", None, None, None), "is not a CIDR"),
            (
                r("10.0.0.0/24", Some("10.0.1.5"), None, None),
                "rangeStart 10.0.1.5 is not in subnet 10.0.0.0/24",
            ),
            (
                r("10.0.0.0/24", None, Some("10.1.0.5"), None),
                "rangeEnd 10.1.0.5 is not in subnet",
            ),
            (
                r("10.0.0.0/24", Some("10.0.0.50"), Some("10.0.0.40"), None),
                "rangeEnd 10.0.0.40 is before",
            ),
            (
                r("10.0.0.0/24", Some("x"), None, None),
                "rangeStart \"x\" is not an IP",
            ),
            (
                r("10.0.0.0/24", None, None, Some("2001:db8::1")),
                "gateway \"2001:db8::1\"",
            ),
        ];
        for (got, needle) in cases {
            let e = got.unwrap_err();
            assert_eq!(e.code, libcni::Code::InvalidConfig);
            assert!(e.msg.starts_with("ipam.ranges[0][0]."), "{}", e.msg);
            assert!(
                e.msg.contains(needle),
                "{} does not contain {needle}",
                e.msg
            );
        }
    }

    #[test]
    fn ipv4_mapped_subnets_are_refused_with_the_ipv4_spelling() {
        let e = r("::ffff:10.9.0.0/120", None, None, None).unwrap_err();
        assert_eq!(e.code, libcni::Code::InvalidConfig);
        assert_eq!(
            e.msg,
            "ipam.ranges[0][0].subnet \"::ffff:10.9.0.0/120\" is IPv4-mapped IPv6 \
             (::ffff:a.b.c.d); write the IPv4 subnet 10.9.0.0/24"
        );
        let e = r("::ffff:10.9.0.0/24", None, None, None).unwrap_err();
        assert!(e.msg.contains("neither"), "{}", e.msg);
        // A mapped rangeStart in an IPv4 subnet is that IPv4 address, as in Go.
        let ok = r("10.9.0.0/24", Some("::ffff:10.9.0.5"), None, None).unwrap();
        assert_eq!(ok.start, "10.9.0.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn whole_address_space_ranges_do_not_overflow() {
        let all = r("::/0", Some("::"), None, None).unwrap();
        assert_eq!(all.size(), u128::MAX);
        assert_eq!(all.after(u128::MAX), None);
        let v4 = r("0.0.0.0/0", Some("0.0.0.0"), None, None).unwrap();
        assert_eq!(v4.size(), (1 << 32) - 1);
        assert_eq!(v4.after(0xffff_fffe), None);
    }

    #[test]
    fn ipv6_ranges_step_over_the_ipv4_mapped_block() {
        let v6 = r("::/64", Some("::fffe:ffff:ffff"), Some("::1:0:0:5"), None).unwrap();
        let at = |s: &str| to_u128(s.parse().unwrap());
        assert_eq!(v6.after(at("::fffe:ffff:ffff")), Some(at("::1:0:0:0")));
        let v4 = r("10.0.0.0/8", None, None, None).unwrap();
        assert_eq!(v4.after(at("10.0.0.1")), Some(at("10.0.0.2")));
    }

    #[test]
    fn sets_reject_mixed_families_and_overlaps() {
        let raw = |s: &str| RawRange {
            subnet: s.into(),
            ..Default::default()
        };
        let e = range_set(
            "ipam.ranges[0]",
            &[raw("10.0.0.0/24"), raw("2001:db8::/64")],
        )
        .unwrap_err();
        assert!(e.msg.contains("mixed address families"), "{}", e.msg);
        let e = range_set("ipam.ranges[0]", &[raw("10.0.0.0/16"), raw("10.0.5.0/24")]).unwrap_err();
        assert!(e.msg.contains("overlap"), "{}", e.msg);
        let ok = range_set("ipam.ranges[0]", &[raw("10.0.0.0/24"), raw("10.0.1.0/24")]).unwrap();
        assert_eq!(ok.describe(), "10.0.0.1-10.0.0.254,10.0.1.1-10.0.1.254");
    }

    #[test]
    fn overlap_rules() {
        let a = r("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.20"), None).unwrap();
        let b = r("10.0.0.0/24", Some("10.0.0.21"), Some("10.0.0.30"), None).unwrap();
        let c = r("10.0.0.0/24", Some("10.0.0.15"), Some("10.0.0.25"), None).unwrap();
        let d = r("2001:db8::/64", None, None, None).unwrap();
        assert!(!a.overlaps(&b), "same subnet, disjoint start/end");
        assert!(a.overlaps(&c) && c.overlaps(&b));
        assert!(!a.overlaps(&d));
        assert!(a.overlaps(&a));
    }

    #[test]
    fn reserved_addresses() {
        let v4 = r(
            "10.0.0.0/24",
            Some("10.0.0.0"),
            Some("10.0.0.255"),
            Some("10.0.0.7"),
        )
        .unwrap();
        for ip in ["10.0.0.0", "10.0.0.255", "10.0.0.7"] {
            assert!(v4.reserved(ip.parse().unwrap()), "{ip}");
        }
        assert!(!v4.reserved("10.0.0.1".parse().unwrap()));
        let v6 = r("2001:db8::/120", None, None, None).unwrap();
        assert!(
            !v6.reserved("2001:db8::ff".parse().unwrap()),
            "IPv6 has no broadcast"
        );
    }
}
