//! `ipam.resolvConf`: the DNS settings of a resolv.conf file, as the reference reads them.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libcni::protocol::result::Dns;
use libcni::{Error, Result};

/// A resolv.conf is a few lines; anything bigger is not one.
const MAX_SIZE: u64 = 1 << 20;

/// Reads `ipam.resolvConf`: a regular file (symlinks followed, as `/etc/resolv.conf` often is
/// one) of at most 1 MiB. Anything else (a FIFO, a device such as `/dev/zero`) is refused before
/// it is opened, and the file is opened non-blocking and checked again, so nothing can hang the
/// plugin or fill its memory.
pub fn from_resolv_conf(path: &Path) -> Result<Dns> {
    let failed = |why: String| {
        Error::io(format!(
            "ipam.resolvConf: cannot read {}: {why}",
            path.display()
        ))
    };
    let regular = |meta: std::io::Result<std::fs::Metadata>| match meta {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(failed("not a regular file".into())),
        Err(e) => Err(failed(e.to_string())),
    };
    regular(std::fs::metadata(path))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| failed(e.to_string()))?;
    regular(file.metadata())?;
    let mut text = String::new();
    file.take(MAX_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(|e| failed(e.to_string()))?;
    if text.len() as u64 > MAX_SIZE {
        return Err(failed(format!("larger than {MAX_SIZE} bytes")));
    }
    Ok(parse(&text))
}

fn parse(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(key), rest) = (fields.next(), fields.collect::<Vec<_>>()) else {
            continue;
        };
        let Some(first) = rest.first() else { continue };
        match key {
            "nameserver" => dns.nameservers.push(first.to_string()),
            "domain" => dns.domain = first.to_string(),
            "search" => dns.search.extend(rest.iter().map(|s| s.to_string())),
            "options" => dns.options.extend(rest.iter().map(|s| s.to_string())),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_field_and_skips_comments() {
        let dns = parse(
            "# comment\n; other comment\nnameserver 10.0.0.1\nnameserver  2001:db8::1 extra\n\
             domain example.com\nsearch a.example b.example\noptions ndots:5 edns0\nsortlist x\nnameserver\n",
        );
        assert_eq!(dns.nameservers, ["10.0.0.1", "2001:db8::1"]);
        assert_eq!(dns.domain, "example.com");
        assert_eq!(dns.search, ["a.example", "b.example"]);
        assert_eq!(dns.options, ["ndots:5", "edns0"]);
    }
}
