//! The matches and actions the plugins compose rules from, encoded the way `nft` encodes the
//! same text (same loads, same protocol dependencies), so `nft list` prints them back as that
//! text. Callers never see registers.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_netfilter::nftables::{MetaKey, Register};

use super::expr::{
    self, CmpOp, Counter, Ct, CtKey, Fib, FibFlags, FibResult, Masquerade, Nat, NatKind,
    PayloadBase,
    ct::{CT_STATE_ESTABLISHED, CT_STATE_RELATED, IPS_DST_NAT},
    fib::RTN_LOCAL,
};
use super::objects::Family;
use super::rule::{L3, Rule};

/// Interface names are compared as `IFNAMSIZ` (16) zero-padded bytes.
const IFNAMSIZ: usize = libc::IFNAMSIZ;
const ETH_P_IP: u16 = libc::ETH_P_IP as u16;
const ETH_P_IPV6: u16 = libc::ETH_P_IPV6 as u16;

/// Transport protocols with a destination port at offset 2 of their header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    Sctp,
}

impl L4 {
    pub fn number(self) -> u8 {
        match self {
            L4::Tcp => 6,
            L4::Udp => 17,
            L4::Sctp => 132,
        }
    }

    /// `tcp`, `udp` or `sctp`.
    pub fn name(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
            L4::Sctp => "sctp",
        }
    }

    pub fn from_name(name: &str) -> Option<L4> {
        match name {
            "tcp" => Some(L4::Tcp),
            "udp" => Some(L4::Udp),
            "sctp" => Some(L4::Sctp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrField {
    Saddr,
    Daddr,
}

const R1: Register = Register::Reg1;
const R2: Register = Register::Reg2;

impl Rule {
    /// `meta nfproto ipv4|ipv6`.
    pub fn match_nfproto_v4(self) -> Rule {
        self.match_nfproto(L3::V4)
    }

    pub fn match_nfproto_v6(self) -> Rule {
        self.match_nfproto(L3::V6)
    }

    fn match_nfproto(mut self, l3: L3) -> Rule {
        if self.l3.is_some_and(|had| had != l3) {
            return self.fail("matches both IPv4 and IPv6".into());
        }
        self.l3 = Some(l3);
        let proto = match l3 {
            L3::V4 => Family::Ip,
            L3::V6 => Family::Ip6,
        }
        .nfproto();
        self.push(expr::meta_load(MetaKey::Nfproto, R1))
            .push(expr::cmp(CmpOp::Eq, R1, vec![proto]))
    }

    /// `meta l4proto <proto>`.
    pub fn match_l4proto(mut self, l4: L4) -> Rule {
        if self.l4.is_some_and(|had| had != l4.number()) {
            return self.fail("matches two transport protocols".into());
        }
        self.l4 = Some(l4.number());
        self.push(expr::meta_load(MetaKey::L4Proto, R1))
            .push(expr::cmp(CmpOp::Eq, R1, vec![l4.number()]))
    }

    /// `tcp|udp|sctp dport <port>` (with its `meta l4proto` dependency).
    pub fn match_dport(self, l4: L4, port: u16) -> Rule {
        let rule = if self.l4 == Some(l4.number()) {
            self
        } else {
            self.match_l4proto(l4)
        };
        rule.match_th_dport(port)
    }

    /// `th dport <port>`: any transport header, no protocol check.
    pub fn match_th_dport(self, port: u16) -> Rule {
        self.push(expr::payload_load(PayloadBase::Transport, 2, 2, R1))
            .push(expr::cmp(CmpOp::Eq, R1, port.to_be_bytes().to_vec()))
    }

    /// `iifname "<name>"`.
    pub fn match_iifname(self, name: &str) -> Rule {
        self.match_ifname(MetaKey::Iifname, name)
    }

    /// `oifname "<name>"`.
    pub fn match_oifname(self, name: &str) -> Rule {
        self.match_ifname(MetaKey::Oifname, name)
    }

    fn match_ifname(self, key: MetaKey, name: &str) -> Rule {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
            return self.fail(format!("{name:?} is not an interface name"));
        }
        let mut padded = name.as_bytes().to_vec();
        padded.resize(IFNAMSIZ, 0);
        self.push(expr::meta_load(key, R1))
            .push(expr::cmp(CmpOp::Eq, R1, padded))
    }

    /// `ip|ip6 saddr <net>` (a host address is a /32 or /128).
    pub fn match_saddr(self, net: impl Into<IpNetwork>) -> Rule {
        self.match_addr(AddrField::Saddr, CmpOp::Eq, net.into())
    }

    /// `ip|ip6 saddr != <net>`.
    pub fn match_saddr_not(self, net: impl Into<IpNetwork>) -> Rule {
        self.match_addr(AddrField::Saddr, CmpOp::Neq, net.into())
    }

    /// `ip|ip6 daddr <net>`.
    pub fn match_daddr(self, net: impl Into<IpNetwork>) -> Rule {
        self.match_addr(AddrField::Daddr, CmpOp::Eq, net.into())
    }

    /// `ip|ip6 daddr != <net>`.
    pub fn match_daddr_not(self, net: impl Into<IpNetwork>) -> Rule {
        self.match_addr(AddrField::Daddr, CmpOp::Neq, net.into())
    }

    /// Like nft: a byte-aligned prefix loads only its bytes, any other prefix loads the whole
    /// address and masks it; /0 matches every packet of the family.
    fn match_addr(self, field: AddrField, op: CmpOp, net: IpNetwork) -> Rule {
        let l3 = if net.is_ipv4() { L3::V4 } else { L3::V6 };
        let (network, mask) = (octets(net.network()), octets(net.mask()));
        let full = network.len();
        let offset = match (l3, field) {
            (L3::V4, AddrField::Saddr) => 12,
            (L3::V4, AddrField::Daddr) => 16,
            (L3::V6, AddrField::Saddr) => 8,
            (L3::V6, AddrField::Daddr) => 24,
        };
        let prefix = usize::from(net.prefix());
        let rule = self.require_l3(l3);
        if prefix == 0 {
            return rule;
        }
        if prefix % 8 == 0 {
            let len = prefix / 8;
            return rule
                .push(expr::payload_load(
                    PayloadBase::Network,
                    offset,
                    len as u32,
                    R1,
                ))
                .push(expr::cmp(op, R1, network[..len].to_vec()));
        }
        rule.push(expr::payload_load(
            PayloadBase::Network,
            offset,
            full as u32,
            R1,
        ))
        .push(expr::bitwise_and(R1, mask))
        .push(expr::cmp(op, R1, network))
    }

    /// The dependency nft puts before the first IPv4/IPv6 header match of a rule.
    fn require_l3(self, l3: L3) -> Rule {
        match (self.l3, self.family) {
            (Some(had), _) if had == l3 => self,
            (Some(_), _) => self.fail("matches both IPv4 and IPv6".into()),
            (None, Family::Inet) => self.match_nfproto(l3),
            (None, Family::Bridge) => {
                let ethertype = match l3 {
                    L3::V4 => ETH_P_IP,
                    L3::V6 => ETH_P_IPV6,
                };
                // nft's dependency here is `meta protocol`, not `ether type`.
                let mut rule = self
                    .push(expr::meta_load(MetaKey::EtherTypeProtocol, R1))
                    .push(expr::cmp(CmpOp::Eq, R1, ethertype.to_be_bytes().to_vec()));
                rule.l3 = Some(l3);
                rule
            }
            (None, Family::Ip) if l3 == L3::V6 => self.fail("IPv6 match in an ip table".into()),
            (None, Family::Ip6) if l3 == L3::V4 => self.fail("IPv4 match in an ip6 table".into()),
            (None, _) => {
                let mut rule = self;
                rule.l3 = Some(l3);
                rule
            }
        }
    }

    /// `ether saddr <mac>` (bridge family).
    pub fn match_ether_saddr(self, mac: [u8; 6]) -> Rule {
        self.match_ether_saddr_op(CmpOp::Eq, mac)
    }

    /// `ether saddr != <mac>` (bridge family).
    pub fn match_ether_saddr_not(self, mac: [u8; 6]) -> Rule {
        self.match_ether_saddr_op(CmpOp::Neq, mac)
    }

    fn match_ether_saddr_op(self, op: CmpOp, mac: [u8; 6]) -> Rule {
        if self.family != Family::Bridge {
            return self.fail("ether matches are only built for the bridge family".into());
        }
        self.push(expr::payload_load(PayloadBase::LinkLayer, 6, 6, R1))
            .push(expr::cmp(op, R1, mac.to_vec()))
    }

    /// `fib daddr type local`: the destination is an address of this host.
    pub fn match_fib_daddr_local(self) -> Rule {
        self.push(Fib {
            result: FibResult::AddrType,
            flags: FibFlags::DADDR,
            dreg: R1,
        })
        .push(expr::cmp(CmpOp::Eq, R1, RTN_LOCAL.to_ne_bytes().to_vec()))
    }

    /// `ct status dnat`: the connection was destination-NATed.
    pub fn match_ct_status_dnat(self) -> Rule {
        self.match_ct_bits(CtKey::Status, IPS_DST_NAT, CmpOp::Neq)
    }

    /// `ct status & dnat == 0`: the connection was not destination-NATed.
    pub fn match_ct_status_not_dnat(self) -> Rule {
        self.match_ct_bits(CtKey::Status, IPS_DST_NAT, CmpOp::Eq)
    }

    /// `ct state & (established | related) == 0`: a new, invalid or untracked packet.
    pub fn match_ct_state_not_established_related(self) -> Rule {
        self.match_ct_bits(
            CtKey::State,
            CT_STATE_ESTABLISHED | CT_STATE_RELATED,
            CmpOp::Eq,
        )
    }

    /// Loads a conntrack key, masks it with `bits` and compares the result with 0.
    fn match_ct_bits(self, key: CtKey, bits: u32, op: CmpOp) -> Rule {
        self.push(Ct { key, dreg: R1 })
            .push(expr::bitwise_and(R1, bits.to_ne_bytes().to_vec()))
            .push(expr::cmp(op, R1, 0u32.to_ne_bytes().to_vec()))
    }

    /// `dnat ip|ip6 to <addr>[:<port>]`.
    pub fn dnat_to(self, addr: IpAddr, port: Option<u16>) -> Rule {
        let (family, bytes) = match addr {
            IpAddr::V4(a) => (Family::Ip, a.octets().to_vec()),
            IpAddr::V6(a) => (Family::Ip6, a.octets().to_vec()),
        };
        let mut rule = self.push(expr::immediate(R1, bytes));
        if let Some(p) = port {
            rule = rule.push(expr::immediate(R2, p.to_be_bytes().to_vec()));
        }
        rule.push(Nat {
            kind: NatKind::Dnat,
            family,
            addr: Some(R1),
            port: port.map(|_| R2),
        })
    }

    pub fn masquerade(self) -> Rule {
        self.push(Masquerade::default())
    }

    pub fn counter(self) -> Rule {
        self.push(Counter::default())
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_netfilter::nftables::Expressions;

    use super::*;

    fn exprs(rule: Rule) -> Vec<Expressions> {
        assert!(rule.problem.is_none(), "{:?}", rule.problem);
        rule.exprs
    }

    #[test]
    fn aligned_prefix_loads_only_its_bytes_after_one_nfproto() {
        let net: IpNetwork = "10.88.0.5/16".parse().unwrap();
        let got = exprs(
            Rule::new(Family::Inet, "t", "c")
                .match_saddr(net)
                .match_daddr_not(net),
        );
        assert_eq!(
            got,
            vec![
                expr::meta_load(MetaKey::Nfproto, R1),
                expr::cmp(CmpOp::Eq, R1, vec![2]),
                expr::payload_load(PayloadBase::Network, 12, 2, R1),
                expr::cmp(CmpOp::Eq, R1, vec![10, 88]),
                expr::payload_load(PayloadBase::Network, 16, 2, R1),
                expr::cmp(CmpOp::Neq, R1, vec![10, 88]),
            ]
        );
    }

    #[test]
    fn unaligned_prefix_is_masked_and_ip_family_needs_no_dependency() {
        let net: IpNetwork = "224.0.0.0/4".parse().unwrap();
        let got = exprs(Rule::new(Family::Ip, "t", "c").match_daddr_not(net));
        assert_eq!(
            got,
            vec![
                expr::payload_load(PayloadBase::Network, 16, 4, R1),
                expr::bitwise_and(R1, vec![0xf0, 0, 0, 0]),
                expr::cmp(CmpOp::Neq, R1, vec![224, 0, 0, 0]),
            ]
        );
    }

    #[test]
    fn dport_brings_l4proto_once() {
        let got = exprs(
            Rule::new(Family::Inet, "t", "c")
                .match_l4proto(L4::Tcp)
                .match_dport(L4::Tcp, 8080),
        );
        assert_eq!(got.len(), 4);
        assert_eq!(got[3], expr::cmp(CmpOp::Eq, R1, vec![0x1f, 0x90]));
    }

    #[test]
    fn mistakes_are_kept_for_later() {
        let r = Rule::new(Family::Inet, "t", "c").match_iifname("0123456789abcdef");
        assert!(r.problem.is_some());
        let v4: IpNetwork = "10.0.0.1/32".parse().unwrap();
        let v6: IpNetwork = "fd00::1/128".parse().unwrap();
        let r = Rule::new(Family::Inet, "t", "c")
            .match_saddr(v4)
            .match_daddr(v6);
        assert!(r.problem.is_some());
        let r = Rule::new(Family::Ip, "t", "c").match_daddr(v6);
        assert!(r.problem.is_some());
        let r = Rule::new(Family::Inet, "t", "c").match_ether_saddr([0; 6]);
        assert!(r.problem.is_some());
    }

    #[test]
    fn bridge_family_depends_on_meta_protocol() {
        let v4: IpNetwork = "10.0.0.1/32".parse().unwrap();
        let got = exprs(Rule::new(Family::Bridge, "t", "c").match_saddr(v4));
        assert_eq!(got[0], expr::meta_load(MetaKey::EtherTypeProtocol, R1));
        assert_eq!(got[1], expr::cmp(CmpOp::Eq, R1, vec![0x08, 0x00]));
    }

    #[test]
    fn iifname_is_padded_to_ifnamsiz() {
        let got = exprs(Rule::new(Family::Inet, "t", "c").match_iifname("eth0"));
        let mut want = b"eth0".to_vec();
        want.resize(16, 0);
        assert_eq!(got[1], expr::cmp(CmpOp::Eq, R1, want));
    }
}
