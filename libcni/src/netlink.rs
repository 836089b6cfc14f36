//! A thin typed layer over rtnetlink. Plugins call these functions; none builds a netlink
//! message itself. A `Netlink` is bound to the namespace it was opened in for its whole life.

use std::future::Future;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use crate::error::{Error, Result};
use crate::netns::Netns;

/// Runs `fut` on a current-thread runtime: plugins are short-lived and single-threaded, and
/// namespace switches must stay on the one thread.
pub fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the netlink runtime: {e}")))?;
    Ok(rt.block_on(fut))
}

#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let name = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Link {
            index: msg.header.index,
            name,
            up: msg.header.flags.contains(LinkFlags::Up),
        }
    }
}

pub struct Netlink {
    handle: Handle,
}

fn kernel(what: &str, e: rtnetlink::Error) -> Error {
    Error::internal(format!("{what}: {e}"))
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

impl Netlink {
    /// Opens a socket in `ns` (the caller's namespace when `None`). Must run inside the runtime
    /// of [`block_on`]; the thread enters `ns` only for the `socket()` call.
    pub fn open(ns: Option<&Netns>) -> Result<Netlink> {
        let connect = || rtnetlink::new_connection_with_strict_check();
        let opened = match ns {
            Some(ns) => ns
                .run(connect)
                .map_err(|e| Error::internal(format!("cannot enter netns {:?}: {e}", ns.path())))?,
            None => connect(),
        };
        let (conn, handle, _) =
            opened.map_err(|e| Error::internal(format!("cannot open netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(kernel(&format!("cannot look up link {name:?}"), e)),
        }
    }

    pub async fn set_up(&self, link: &Link, up: bool) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index);
        let msg = if up { msg.up() } else { msg.down() }.build();
        self.handle.link().set(msg).execute().await.map_err(|e| {
            kernel(
                &format!(
                    "cannot set {:?} {}",
                    link.name,
                    if up { "up" } else { "down" }
                ),
                e,
            )
        })
    }

    /// Every address on the link, with its prefix length.
    pub async fn addresses(&self, link: &Link) -> Result<Vec<IpNetwork>> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        let mut out = Vec::new();
        let fail = |e| kernel(&format!("cannot list addresses of {:?}", link.name), e);
        while let Some(msg) = stream.try_next().await.map_err(fail)? {
            let mut local = None;
            let mut address = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.push(network(ip, msg.header.prefix_len)?);
            }
        }
        Ok(out)
    }
}

fn network(ip: IpAddr, prefix: u8) -> Result<IpNetwork> {
    IpNetwork::new(ip, prefix)
        .map_err(|e| Error::internal(format!("kernel reported {ip}/{prefix}: {e}")))
}
