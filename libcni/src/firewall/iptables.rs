//! iptables, for configs that ask for it and for cleaning up what the Go plugins created:
//! list one chain with `-S`, change anything with one `iptables-restore --noflush` per family.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::firewall::error::FirewallError;
use crate::protocol::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `ip`.
    pub fn of(ip: std::net::IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// `iptables` or `ip6tables`.
    pub fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn restore_program(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// Whether `chain` of `table` may exist, without an iptables process: iptables-nft keeps its
/// chains as nftables chains of table `ip <table>` / `ip6 <table>`, asked for over netlink;
/// with the legacy backend loaded (its table listed in /proc) only a listing can tell. The
/// list is read through /proc/thread-self: /proc/net follows the thread-group leader, which
/// may be in another namespace than this thread.
pub fn chain_may_exist(
    nft: &mut crate::kernel::nf_tables::Client,
    family: Family,
    table: &str,
    chain: &str,
) -> Result<bool> {
    let (nft_family, legacy) = match family {
        Family::V4 => (
            crate::kernel::nf_tables::Family::Ip,
            "/proc/thread-self/net/ip_tables_names",
        ),
        Family::V6 => (
            crate::kernel::nf_tables::Family::Ip6,
            "/proc/thread-self/net/ip6_tables_names",
        ),
    };
    let legacy_loaded =
        std::fs::read_to_string(legacy).is_ok_and(|names| names.lines().any(|n| n == table));
    Ok(legacy_loaded || nft.chain_exists(nft_family, table, chain)?)
}

/// The exit codes of `iptables -S` for an absent chain and an absent table.
const CHAIN_MISSING: i32 = 1;
const TABLE_MISSING: i32 = 3;

/// The rules of `chain` in `table` as `-A …` lines, or `None` when the chain (or iptables)
/// does not exist.
pub fn list_chain(family: Family, table: &str, chain: &str) -> Result<Option<Vec<String>>> {
    let out = match Command::new(family.program())
        .args(["-w", "-t", table, "-S", chain])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FirewallError::spawn(family.program())(source).into());
        }
    };
    match out.status.code() {
        Some(0) => {}
        // 1: no such chain (iptables-nft 1.8.9 words it "incompatible, use 'nft' tool"),
        // 3: no such table. Anything else (2 a bad request, 4 a resource problem such as
        // permission or the lock) is a failure, not an absent chain.
        Some(CHAIN_MISSING | TABLE_MISSING) => return Ok(None),
        _ => return Err(FirewallError::refused(family.program(), &out.stderr).into()),
    }
    Ok(Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect(),
    ))
}

/// Whether `rule` (a `-A CHAIN …` line, or its spec) is in `table`.
pub fn exists(family: Family, table: &str, chain: &str, spec: &[String]) -> Result<bool> {
    let status = Command::new(family.program())
        .args(["-w", "-t", table, "-C", chain])
        .args(spec)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(FirewallError::spawn(family.program()))?;
    Ok(status.success())
}

/// Applies `lines` to `table` in one `iptables-restore --noflush` transaction.
pub fn restore(family: Family, table: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut script = format!("*{table}\n");
    for line in lines {
        script.push_str(line);
        script.push('\n');
    }
    script.push_str("COMMIT\n");
    let program = family.restore_program();
    let mut child = Command::new(program)
        .args(["--noflush", "-w"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FirewallError::spawn(program))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(FirewallError::spawn(program))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::from(FirewallError::refused(program, &out.stderr)).with_details(script))
    }
}

/// Splits an `iptables -S` line into arguments, honouring the double quotes iptables prints
/// around comments (with `\"` inside).
pub fn split_rule(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    let mut in_arg = false;
    while let Some(c) = chars.next() {
        match c {
            // iptables-save escapes `"`, `\` and `'` inside quotes.
            '\\' if quoted && matches!(chars.peek(), Some('"' | '\\' | '\'')) => {
                cur.extend(chars.next());
            }
            '"' => {
                quoted = !quoted;
                in_arg = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_arg {
                    args.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            c => {
                cur.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        args.push(cur);
    }
    args
}

/// The restore line that deletes a rule listed by `-S` (split with [`split_rule`]).
pub fn delete_line(args: &[String]) -> String {
    let spec: Vec<String> = args.iter().skip(1).map(|a| quote(a)).collect();
    format!("-D {}", spec.join(" "))
}

/// Quotes one argument for an iptables-restore line.
pub fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:!=,".contains(c))
    {
        arg.to_string()
    } else {
        let escaped = arg
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\'', "\\'");
        format!("\"{escaped}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip_as_iptables_save_prints_them() {
        // iptables -S escapes `"`, `\` and `'` inside quotes.
        let line = r#"-A X -m comment --comment "a'b \"c\" d\\e" -j RETURN"#;
        let args = split_rule(line);
        assert_eq!(args[5], r#"a'b "c" d\e"#);
        assert_eq!(quote(&args[5]), r#""a\'b \"c\" d\\e""#);
        assert_eq!(
            split_rule(&format!("-A X --comment {}", quote(&args[5])))[3],
            args[5]
        );
    }

    #[test]
    fn splits_quoted_comments() {
        let line = r#"-A POSTROUTING -s 10.1.0.2/32 -m comment --comment "name: \"n\" id: \"c\"" -j CNI-abc"#;
        assert_eq!(
            split_rule(line),
            [
                "-A",
                "POSTROUTING",
                "-s",
                "10.1.0.2/32",
                "-m",
                "comment",
                "--comment",
                r#"name: "n" id: "c""#,
                "-j",
                "CNI-abc"
            ]
        );
        assert_eq!(quote(r#"name: "n""#), r#""name: \"n\"""#);
        assert_eq!(quote("10.0.0.0/8"), "10.0.0.0/8");
        let round: Vec<String> = split_rule(line).iter().map(|a| quote(a)).collect();
        assert_eq!(split_rule(&round.join(" ")), split_rule(line));
    }
}
