//! A tiny traffic helper for the port-mapping tests (std only).
//!
//! ```text
//! rcni-echo serve tcp|udp <bind-addr:port> <reply-text>
//!     answers every TCP connection / UDP datagram with <reply-text>, until killed
//! rcni-echo ask tcp|udp <addr:port> [timeout-ms]
//!     prints the reply and exits 0; exits 1 when no reply came within the timeout (default
//!     1000 ms) or the peer refused
//! rcni-echo ask-loop udp <addr:port> <duration-ms>
//!     one UDP socket (one source port) sends a datagram every 50 ms for <duration-ms> and
//!     prints every reply on its own line as it arrives; exits 0
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn usage() -> ExitCode {
    eprintln!(
        "usage: rcni-echo serve tcp|udp <bind-addr:port> <reply-text>\n       \
         rcni-echo ask tcp|udp <addr:port> [timeout-ms]\n       \
         rcni-echo ask-loop udp <addr:port> <duration-ms>"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let addr = |s: &str| -> Option<SocketAddr> { s.parse().ok() };
    let ms = |s: Option<&&str>, default: u64| -> Option<Duration> {
        match s {
            None => Some(Duration::from_millis(default)),
            Some(s) => s.parse().ok().map(Duration::from_millis),
        }
    };
    match args.as_slice() {
        ["serve", proto, a, reply] => match (addr(a), *proto) {
            (Some(a), "tcp") => serve_tcp(a, reply),
            (Some(a), "udp") => serve_udp(a, reply),
            _ => usage(),
        },
        ["ask", proto, a, rest @ ..] if rest.len() <= 1 => {
            let (Some(a), Some(timeout)) = (addr(a), ms(rest.first(), 1000)) else {
                return usage();
            };
            let reply = match *proto {
                "tcp" => ask_tcp(a, timeout),
                "udp" => ask_udp(a, timeout),
                _ => return usage(),
            };
            match reply {
                Some(r) => {
                    println!("{r}");
                    ExitCode::SUCCESS
                }
                None => ExitCode::from(1),
            }
        }
        ["ask-loop", "udp", a, duration] => match (addr(a), ms(Some(duration), 0)) {
            (Some(a), Some(d)) => ask_loop(a, d),
            _ => usage(),
        },
        _ => usage(),
    }
}

fn fail(what: &str, e: std::io::Error) -> ExitCode {
    eprintln!("rcni-echo: {what}: {e}");
    ExitCode::from(2)
}

fn serve_tcp(addr: SocketAddr, reply: &str) -> ExitCode {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => return fail(&format!("bind tcp {addr}"), e),
    };
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.write_all(reply.as_bytes());
        let _ = conn.shutdown(std::net::Shutdown::Write);
    }
    ExitCode::SUCCESS
}

fn serve_udp(addr: SocketAddr, reply: &str) -> ExitCode {
    let sock = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => return fail(&format!("bind udp {addr}"), e),
    };
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(reply.as_bytes(), peer);
        }
    }
}

fn ask_tcp(addr: SocketAddr, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut conn = TcpStream::connect_timeout(&addr, timeout).ok()?;
    let left = deadline.checked_duration_since(Instant::now())?;
    conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).ok()?;
    (!reply.is_empty()).then_some(reply)
}

fn unspecified_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        SocketAddr::V6(_) => "[::]:0".parse().unwrap(),
    }
}

/// A connected socket: an ICMP "port unreachable" ends the wait at once (refused).
fn ask_udp(addr: SocketAddr, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let sock = UdpSocket::bind(unspecified_for(addr)).ok()?;
    sock.connect(addr).ok()?;
    let mut buf = [0u8; 2048];
    // Re-send every 100 ms in case a datagram is lost; the first reply wins.
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        sock.send(b"?").ok()?;
        sock.set_read_timeout(Some(
            left.min(Duration::from_millis(100))
                .max(Duration::from_millis(1)),
        ))
        .ok()?;
        match sock.recv(&mut buf) {
            Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
}

/// One source port for the whole run; errors (ICMP unreachable while nothing answers) are
/// ignored, the client keeps sending.
fn ask_loop(addr: SocketAddr, duration: Duration) -> ExitCode {
    let deadline = Instant::now() + duration;
    let sock = match UdpSocket::bind(unspecified_for(addr)) {
        Ok(s) => s,
        Err(e) => return fail("bind udp", e),
    };
    let mut buf = [0u8; 2048];
    let mut out = std::io::stdout().lock();
    let mut next_send = Instant::now();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let now = Instant::now();
        if now >= next_send {
            let _ = sock.send_to(b"?", addr);
            next_send = now + Duration::from_millis(50);
        }
        let wait = next_send
            .saturating_duration_since(Instant::now())
            .min(left)
            .max(Duration::from_millis(1));
        let _ = sock.set_read_timeout(Some(wait));
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let _ = writeln!(out, "{}", String::from_utf8_lossy(&buf[..n]));
            let _ = out.flush();
        }
    }
    ExitCode::SUCCESS
}
