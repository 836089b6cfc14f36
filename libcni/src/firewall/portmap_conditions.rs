//! Port forwarding for configs with `conditionsV4`/`conditionsV6`: those are nft expression
//! text, so their attachments' rules go through the `nft` tool, as one `nft -f` transaction of
//! the same rules `portmap` makes over netlink with the conditions in front of each forwarding
//! rule of their family. The table and its chains are declared over netlink, as for any ADD.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::portmap::{Attachment, Dnat, NFT, Planned, TABLE, base_objects};
use crate::firewall::error::FirewallError;
use crate::kernel::nf_tables::{Batch, Client};
use crate::protocol::error::{Error, Result};

/// Whether the `nft` tool is installed.
pub fn installed() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("nft").is_file()))
        .unwrap_or(false)
        || std::path::Path::new("/usr/sbin/nft").is_file()
}

/// Adds the `planned` rules of `a` with one `nft -f`; when their table or chain is missing,
/// declares the base objects (a racing ADD that made them first is as good) and tries again.
pub(super) fn add(nft: &mut Client, a: &Attachment<'_>, planned: &[Planned]) -> Result<()> {
    let script = script(a, planned);
    for _ in 0..3 {
        if apply(&script)? == Applied::Done {
            return Ok(());
        }
        let mut batch = Batch::new();
        base_objects(&mut batch)?;
        match nft.commit(&batch) {
            Err(e) if e.is_exists() => {}
            made => made?,
        }
    }
    Err(Error::internal(format!(
        "cannot create the nftables table {NFT} {TABLE}"
    )))
}

/// The `add rule` lines of the planned rules.
fn script(a: &Attachment<'_>, planned: &[Planned]) -> String {
    let comment = a.owner.comment();
    planned
        .iter()
        .map(|p| {
            format!(
                "add rule {NFT} {TABLE} {} {} comment \"{comment}\"\n",
                p.chain(),
                body(a, p)
            )
        })
        .collect()
}

/// A planned rule's matches and statement.
fn body(a: &Attachment<'_>, planned: &Planned) -> String {
    match *planned {
        Planned::Dnat(d) => forward(a, &d),
        Planned::Masquerade { from, to } => {
            let (fam, _) = family_words(&to);
            let from = from.map_or(String::new(), |f| format!(" {fam} saddr {}", addr_text(&f)));
            format!("ct status dnat{from} {fam} daddr {to} masquerade")
        }
    }
}

/// A forwarding rule, after its family's conditions.
fn forward(a: &Attachment<'_>, d: &Dnat) -> String {
    let conditions = if d.to.is_ipv4() {
        a.conditions_v4
    } else {
        a.conditions_v6
    };
    let (fam, nfproto) = family_words(&d.to);
    let destination = match d.host_ip {
        Some(h) => format!("{fam} daddr {h}"),
        None => format!("meta nfproto {nfproto}"),
    };
    let target = match d.to {
        IpAddr::V4(v4) => format!("{v4}:{}", d.port),
        IpAddr::V6(v6) => format!("[{v6}]:{}", d.port),
    };
    let forward = format!(
        "{destination} {} dport {} dnat {fam} to {target}",
        d.protocol.name(),
        d.host_port
    );
    let words: Vec<&str> = conditions.iter().map(String::as_str).collect();
    [words.as_slice(), &[forward.as_str()]].concat().join(" ")
}

/// nft's names of the family of `ip`: its address keyword and its `meta nfproto`.
fn family_words(ip: &IpAddr) -> (&'static str, &'static str) {
    if ip.is_ipv4() {
        ("ip", "ipv4")
    } else {
        ("ip6", "ipv6")
    }
}

/// A network as nft prints it: a host address without its prefix length.
fn addr_text(net: &IpNetwork) -> String {
    let host = if net.is_ipv4() { 32 } else { 128 };
    if net.prefix() == host {
        net.ip().to_string()
    } else {
        net.to_string()
    }
}

/// Outcome of an `nft -f`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Applied {
    Done,
    /// A table or chain the script refers to does not exist.
    Missing,
}

/// Applies an nft script in text syntax as one transaction; a missing table or chain is an
/// outcome, any other failure an error carrying what nft said. Text, not JSON: the conditions
/// are nft text, and nft 1.0.6's JSON parser crashes on some NAT forms that its text parser
/// accepts.
pub(super) fn apply(script: &str) -> Result<Applied> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FirewallError::spawn("nft"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(FirewallError::spawn("nft"))?;
    if out.status.success() {
        return Ok(Applied::Done);
    }
    let refused = FirewallError::refused("nft", &out.stderr);
    if refused.is_not_found() {
        return Ok(Applied::Missing);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Everything but the conditions is ours and known good: they are what nft refused. Its
    // message quotes the offending line, which a huge condition makes huge.
    eprintln!(
        "nft failed: {}\n{}",
        super::truncate_bytes(stderr.trim(), 4096),
        super::truncate_bytes(script, 4096)
    );
    Err(Error::invalid_config(format!(
        "conditionsV4/conditionsV6: nft refused the rules they are part of: {}",
        super::truncate_bytes(stderr.trim(), 1024)
    )))
}

#[cfg(test)]
mod tests {
    use super::super::portmap::plan;
    use super::super::portmap::tests::{attachment, ips, mappings};
    use super::*;

    #[test]
    fn conditions_go_before_the_forwarding_rules_of_their_family() {
        let (mappings, ips) = (mappings(), ips());
        let cond = ["iifname".to_string(), "\"eth0\"".to_string()];
        let a = Attachment {
            conditions_v4: &cond,
            ..attachment(&mappings, &ips)
        };
        let text = script(&a, &plan(&a));
        let comment = a.owner.comment();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(
            lines[0],
            format!(
                "add rule inet rcni_portmap hostports iifname \"eth0\" meta nfproto ipv4 tcp dport 8080 dnat ip to 10.88.0.5:80 comment \"{comment}\""
            )
        );
        let rest = [
            " hostports iifname \"eth0\" ip daddr 192.168.1.5 udp dport 5353 dnat ip to 10.88.0.5:53 ",
            " postrouting ct status dnat ip saddr 10.88.0.0/16 ip daddr 10.88.0.5 masquerade",
            "ct status dnat ip saddr 127.0.0.1 ip daddr 10.88.0.5 masquerade",
            " hostports meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd00::5]:80",
            "ct status dnat ip6 saddr fd00::/64 ip6 daddr fd00::5 masquerade",
        ];
        for (line, want) in lines[1..].iter().zip(rest) {
            assert!(line.contains(want), "{line}");
        }
    }
}
