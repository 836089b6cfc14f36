//! Conntrack entries that would keep sending a mapped port's traffic to an old destination.
//! UDP "connections" live as long as a client keeps sending, so after a port mapping changes
//! they must be dropped for the new rules to apply at once.

use std::process::{Command, Stdio};

/// Deletes the UDP entries whose original destination port is `port` (one family). Failures are
/// reported on stderr only: a missing entry or a missing `conntrack` tool is not an error.
pub fn flush_udp_port(port: u16, v6: bool) {
    let run = Command::new("conntrack")
        .arg("-D")
        .args(udp_port_selector(port, v6))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // conntrack exits 1 when nothing matched; only a failure to run it is worth a word.
    if let Err(e) = run {
        eprintln!("cannot flush UDP conntrack entries for port {port}: {e}");
    }
}

/// The `conntrack` arguments that select the UDP entries whose original destination port is
/// `port` (one family).
pub fn udp_port_selector(port: u16, v6: bool) -> [String; 6] {
    let family = if v6 { "ipv6" } else { "ipv4" };
    [
        "-f",
        family,
        "-p",
        "udp",
        "--orig-port-dst",
        &port.to_string(),
    ]
    .map(String::from)
}
