//! A thin typed layer over rtnetlink. Plugins call the synchronous [`Kernel`]; none builds a
//! netlink message itself.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use futures_util::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    BridgeVlanInfoFlags, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage, State,
};
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::kernel::errno::Errno;
use crate::kernel::netlink_error::NetlinkError;
use crate::kernel::netns::Netns;
use crate::protocol::error::{Error, Result};
use crate::protocol::result::Route;

/// Synchronous netlink for plugins: a [`Netlink`] socket in one namespace and the
/// current-thread runtime that drives it (plugins are short-lived and single-threaded, and
/// namespace switches must stay on the one thread). A `Kernel` is bound to the namespace it
/// was opened in for its whole life.
pub struct Kernel {
    netlink: Netlink,
    runtime: tokio::runtime::Runtime,
}

impl Kernel {
    /// Opens a socket in `ns` (the caller's namespace when `None`).
    pub fn open(ns: Option<&Netns>) -> Result<Kernel> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::internal(format!("cannot start the netlink runtime: {e}")))?;
        let netlink = {
            let _inside = runtime.enter();
            Netlink::open(ns)?
        };
        Ok(Kernel { netlink, runtime })
    }
}

/// Each listed method of [`Kernel`] runs the [`Netlink`] method of the same name to completion.
macro_rules! blocking {
    ($($(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $out:ty;)*) => {
        impl Kernel {
            $(
                $(#[$doc])*
                pub fn $name(&self $(, $arg: $ty)*) -> Result<$out> {
                    self.runtime.block_on(self.netlink.$name($($arg),*))
                }
            )*
        }
    };
}

blocking! {
    fn link_by_name(&self, name: &str) -> Option<Link>;
    fn link_by_index(&self, index: u32) -> Option<Link>;
    /// Every link of the namespace (not for the hot path).
    fn links(&self) -> Vec<Link>;
    fn set_up(&self, link: &Link, up: bool) -> ();
    fn set_promisc(&self, link: &Link, on: bool) -> ();
    fn set_mac(&self, link: &Link, mac: &[u8]) -> ();
    /// Bridge `name` (up, with `mtu` and `vlan_filtering` when given, `mac` as its own
    /// address), or `Existed` when a link of that name exists: the caller checks what it is.
    fn add_bridge(&self, name: &str, mtu: u32, vlan_filtering: bool, mac: Option<[u8; 6]>) -> Created;
    /// A veth pair, its peer made directly in the peer's namespace.
    fn add_veth(&self, spec: &VethSpec<'_>) -> Created;
    fn bring_up_bridge_port(&self, port: &Link, hairpin: bool, isolated: bool) -> ();
    fn bridge_vlan_add(&self, port: &Link, vid: u16, pvid_untagged: bool) -> ();
    fn bridge_vlan_del(&self, port: &Link, vid: u16) -> ();
    /// Deletes the link; one already gone is fine.
    fn delete_link(&self, link: &Link) -> ();
    fn addresses(&self, link: &Link) -> Vec<IpNetwork>;
    fn add_address(&self, link: &Link, address: IpNetwork) -> Created;
    fn ipv6_dad(&self, link: &Link) -> Dad;
    fn del_address(&self, link: &Link, address: IpNetwork) -> ();
    /// Appends a route through `link` (beside other gateways' routes to its destination).
    fn add_route(&self, link: &Link, route: &Route, gateway: Option<IpAddr>) -> Created;
    /// The link the kernel would route `dst` through (`ip route get`).
    fn route_get(&self, dst: IpAddr) -> Option<Link>;
    fn forget_neighbour(&self, link: &Link, ip: IpAddr) -> ();
    /// Routes of one family in every table.
    fn routes(&self, v4: bool) -> Vec<KernelRoute>;
}

#[derive(Debug, Clone, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
    pub oper_up: bool,
    pub promisc: bool,
    pub kind: LinkKind,
    pub mac: Vec<u8>,
    pub mtu: u32,
    /// The bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace).
    pub peer: Option<u32>,
}

impl Link {
    /// What a kernel link message says about the link.
    pub fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            up: msg.header.flags.contains(LinkFlags::Up),
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            ..Default::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = a.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::Link(l) => link.peer = Some(*l),
                LinkAttribute::OperState(s) => link.oper_up = matches!(s, State::Up),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = LinkKind::from(kind);
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

/// What sort of device a link is (IFLA_INFO_KIND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LinkKind {
    /// A device without a kind, like `lo`.
    #[default]
    None,
    Bridge,
    Veth,
    Other(String),
}

impl From<&InfoKind> for LinkKind {
    fn from(kind: &InfoKind) -> LinkKind {
        match kind {
            InfoKind::Bridge => LinkKind::Bridge,
            InfoKind::Veth => LinkKind::Veth,
            other => LinkKind::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkKind::None => "",
            LinkKind::Bridge => "bridge",
            LinkKind::Veth => "veth",
            LinkKind::Other(kind) => kind,
        })
    }
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// The async socket [`Kernel`] drives.
struct Netlink {
    handle: Handle,
}

fn kernel(what: impl std::fmt::Display, e: rtnetlink::Error) -> Error {
    NetlinkError::new(what, e).into()
}

/// The errno of a kernel refusal, if the error is one.
pub fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(Errno::from_code(m.raw_code())),
        _ => None,
    }
}

fn refused_with(e: &rtnetlink::Error, errno: Errno) -> bool {
    self::errno(e) == Some(errno)
}

/// Outcome of creating something that may already exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existed,
}

impl Netlink {
    /// Opens a socket in `ns` (the caller's namespace when `None`). Must run inside the
    /// runtime of a [`Kernel`]; the thread enters `ns` only for the `socket()` call.
    pub fn open(ns: Option<&Netns>) -> Result<Netlink> {
        // Strict checking (kernel dump filters) needs Linux 4.20; older kernels get the plain socket.
        let connect = || {
            rtnetlink::new_connection_with_strict_check()
                .or_else(|_| rtnetlink::new_connection())
                .map_err(|e| Error::internal(format!("cannot open netlink socket: {e}")))
        };
        let (conn, handle, _) = match ns {
            Some(ns) => ns.run(connect)?,
            None => connect()?,
        };
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let request = self.handle.link().get().match_name(name.to_string());
        first_link(request, &format!("{name:?}")).await
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        first_link(
            self.handle.link().get().match_index(index),
            &index.to_string(),
        )
        .await
    }

    /// Every link of the namespace (for CHECK; not for the hot path).
    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut stream = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| kernel("cannot list links", e))?
        {
            out.push(Link::from_message(&msg));
        }
        Ok(out)
    }

    pub async fn set_up(&self, link: &Link, up: bool) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index);
        let msg = if up { msg.up() } else { msg.down() }.build();
        self.handle.link().set(msg).execute().await.map_err(|e| {
            kernel(
                format_args!(
                    "cannot set {:?} {}",
                    link.name,
                    if up { "up" } else { "down" }
                ),
                e,
            )
        })
    }

    pub async fn set_promisc(&self, link: &Link, on: bool) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index)
            .promiscuous(on)
            .build();
        self.set_link(msg, format_args!("cannot set promisc on {:?}", link.name))
            .await
    }

    pub async fn set_mac(&self, link: &Link, mac: &[u8]) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index)
            .address(mac.to_vec())
            .build();
        self.set_link(msg, format_args!("cannot set the MAC of {:?}", link.name))
            .await
    }

    async fn set_link(&self, msg: LinkMessage, what: std::fmt::Arguments<'_>) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| kernel(what, e))
    }

    /// Creates bridge `name` (up, with `mtu` and `vlan_filtering` when given) or reports that a
    /// link of that name exists; the caller checks what it is.
    /// `mac`, when given, is the bridge's own address: it then never follows its ports'.
    pub async fn add_bridge(
        &self,
        name: &str,
        mtu: u32,
        vlan_filtering: bool,
        mac: Option<[u8; 6]>,
    ) -> Result<Created> {
        let mut msg = LinkBridge::new(name).up();
        if let Some(mac) = mac {
            msg = msg.address(mac.to_vec());
        }
        if mtu > 0 {
            msg = msg.mtu(mtu);
        }
        if vlan_filtering {
            msg = msg.vlan_filtering(true);
        }
        match self.handle.link().add(msg.build()).execute().await {
            Ok(()) => Ok(Created::New),
            Err(e) if refused_with(&e, Errno::Exists) => Ok(Created::Existed),
            Err(e) if vlan_filtering && refused_with(&e, Errno::NotSupported) => {
                Err(Error::unsupported_field(format!(
                    "cannot create bridge {name:?} with VLAN filtering: this kernel has no bridge VLAN support \
                 (CONFIG_BRIDGE_VLAN_FILTERING)"
                )))
            }
            Err(e) => Err(kernel(format_args!("cannot create bridge {name:?}"), e)),
        }
    }

    /// Creates a veth pair: `host` in this namespace, down, a port of `controller`; `peer`
    /// created directly in `peer_ns` (never visible here). A name already taken (either end) is
    /// `Created::Existed`.
    pub async fn add_veth(&self, spec: &VethSpec<'_>) -> Result<Created> {
        let mut peer = single_queue(
            LinkUnspec::new_with_name(spec.peer).setns_by_fd(spec.peer_ns.as_fd().as_raw_fd()),
        );
        if spec.mtu > 0 {
            peer = peer.mtu(spec.mtu);
        }
        if let Some(mac) = spec.peer_mac {
            peer = peer.address(mac.to_vec());
        }
        let mut msg = single_queue(LinkVeth::new(spec.host, spec.peer))
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .controller(spec.controller);
        if spec.mtu > 0 {
            msg = msg.mtu(spec.mtu);
        }
        match self.handle.link().add(msg.build()).execute().await {
            Ok(()) => Ok(Created::New),
            Err(e) if refused_with(&e, Errno::Exists) => Ok(Created::Existed),
            Err(e) => Err(kernel(
                format_args!("cannot create veth {:?}/{:?}", spec.host, spec.peer),
                e,
            )),
        }
    }

    /// Writes the bridge-port flags of `port` (on or off) and sets it up, in one request.
    pub async fn bring_up_bridge_port(
        &self,
        port: &Link,
        hairpin: bool,
        isolated: bool,
    ) -> Result<()> {
        let msg = LinkBridgePort::new(port.index)
            .hairpin(hairpin)
            .isolated(isolated)
            .up()
            .build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| {
                kernel(
                    format_args!("cannot set bridge port options of {:?}", port.name),
                    e,
                )
            })
    }

    /// `bridge vlan add dev <port> vid <vid> [pvid untagged] master`.
    pub async fn bridge_vlan_add(&self, port: &Link, vid: u16, pvid_untagged: bool) -> Result<()> {
        let flags = if pvid_untagged {
            BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged
        } else {
            BridgeVlanInfoFlags::empty()
        };
        let msg = LinkBridgeVlan::new(port.index).vlan(vid, flags).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| match errno(&e) {
                Some(Errno::NotSupported) => Error::unsupported_field(format!(
                    "cannot add vlan {vid} to {:?}: this kernel has no bridge VLAN support (CONFIG_BRIDGE_VLAN_FILTERING)",
                    port.name
                )),
                _ => kernel(format_args!("cannot add vlan {vid} to {:?}", port.name), e),
            })
    }

    /// `bridge vlan del dev <port> vid <vid> master`; absent VLANs are fine.
    pub async fn bridge_vlan_del(&self, port: &Link, vid: u16) -> Result<()> {
        let msg = LinkBridgeVlan::new(port.index)
            .vlan(vid, BridgeVlanInfoFlags::empty())
            .build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if refused_with(&e, Errno::NotFound) => Ok(()),
            Err(e) if refused_with(&e, Errno::NotSupported) => {
                Err(Error::unsupported_field(format!(
                    "cannot remove vlan {vid} from {:?}: this kernel has no bridge VLAN support (CONFIG_BRIDGE_VLAN_FILTERING)",
                    port.name
                )))
            }
            Err(e) => Err(kernel(
                format_args!("cannot remove vlan {vid} from {:?}", port.name),
                e,
            )),
        }
    }

    pub async fn delete_link(&self, link: &Link) -> Result<()> {
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if refused_with(&e, Errno::NoDevice) => Ok(()),
            Err(e) => Err(kernel(format_args!("cannot delete {:?}", link.name), e)),
        }
    }

    /// Every address on the link, with its prefix length.
    pub async fn addresses(&self, link: &Link) -> Result<Vec<IpNetwork>> {
        Ok(self
            .address_messages(link)
            .await?
            .iter()
            .filter_map(address_of)
            .collect())
    }

    /// The link's IPv4 then IPv6 addresses: one dump per family, because the kernel (6.10 on)
    /// serves those without RTNL, while an AF_UNSPEC dump waits for RTNL, which kernel workers
    /// hold for milliseconds after a port joins a bridge of a few hundred ports.
    async fn address_messages(&self, link: &Link) -> Result<Vec<AddressMessage>> {
        use rtnetlink::packet_route::AddressFamily;
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = self
                .handle
                .address()
                .get()
                .set_link_index_filter(link.index);
            // With strict checking the kernel dumps only this link's addresses (a bridge's
            // host namespace holds one link-local address per pod); the filter above covers
            // older kernels.
            let header = &mut request.message_mut().header;
            header.index = link.index;
            header.family = family;
            let mut stream = request.execute();
            let fail = |e| kernel(format_args!("cannot list addresses of {:?}", link.name), e);
            while let Some(msg) = stream.try_next().await.map_err(fail)? {
                // Without IPv6 in the kernel an AF_INET6 dump is served as AF_UNSPEC (all).
                if msg.header.family == family {
                    out.push(msg);
                }
            }
        }
        Ok(out)
    }

    /// Adds `address` to the link; an identical address already there is fine.
    pub async fn add_address(&self, link: &Link, address: IpNetwork) -> Result<Created> {
        let req = self
            .handle
            .address()
            .add(link.index, address.ip(), address.prefix());
        match req.execute().await {
            Ok(()) => Ok(Created::New),
            Err(e) if refused_with(&e, Errno::Exists) => Ok(Created::Existed),
            Err(e) => Err(kernel(
                format_args!("cannot add {address} to {:?}", link.name),
                e,
            )),
        }
    }

    /// Where duplicate address detection stands for the link's IPv6 addresses.
    pub async fn ipv6_dad(&self, link: &Link) -> Result<Dad> {
        Ok(dad_state(&self.address_messages(link).await?))
    }

    pub async fn del_address(&self, link: &Link, address: IpNetwork) -> Result<()> {
        let msgs = self.address_messages(link).await?;
        for msg in msgs.into_iter().filter(|m| address_of(m) == Some(address)) {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if refused_with(&e, Errno::Other(libc::EADDRNOTAVAIL)) => {}
                Err(e) => {
                    return Err(kernel(
                        format_args!("cannot remove {address} from {:?}", link.name),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Adds a route through `link`, with every 1.1.0 route field. It is appended, as the
    /// reference does (`RouteAddEcmp`): a route to a destination that already has one via
    /// another gateway is installed beside it (IPv6 makes them one multipath route), not
    /// refused. An identical route already there is fine.
    pub async fn add_route(
        &self,
        link: &Link,
        route: &Route,
        gateway: Option<IpAddr>,
    ) -> Result<Created> {
        use rtnetlink::packet_core::{
            NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
        };
        use rtnetlink::packet_route::RouteNetlinkMessage;
        let fail = |e| {
            kernel(
                format_args!(
                    "cannot add route {} via {:?} dev {:?}",
                    route.dst, gateway, link.name
                ),
                e,
            )
        };
        let msg = route_message(link, route, gateway)?;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewRoute(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let mut answers = self.handle.clone().request(req).map_err(fail)?;
        let mut created = Created::New;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(e) = answer.payload {
                let e = rtnetlink::Error::NetlinkError(e);
                if !refused_with(&e, Errno::Exists) {
                    return Err(fail(e));
                }
                created = Created::Existed;
            }
        }
        Ok(created)
    }

    /// The link the kernel would route `dst` through (`ip route get`).
    pub async fn route_get(&self, dst: IpAddr) -> Result<Option<Link>> {
        let prefix = if dst.is_ipv4() { 32 } else { 128 };
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, prefix)
            .map_err(|e| Error::internal(format!("route lookup of {dst}: {e}")))?
            .build();
        let mut answers = self.handle.route().get(any_route(msg)).execute();
        let found = match answers.try_next().await {
            Ok(found) => found,
            Err(e)
                if matches!(
                    errno(&e),
                    Some(Errno::Other(libc::ENETUNREACH | libc::EHOSTUNREACH))
                ) =>
            {
                None
            }
            Err(e) => return Err(kernel(format_args!("cannot look up the route to {dst}"), e)),
        };
        let oif = found.and_then(|m| {
            m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })
        });
        match oif {
            Some(index) => self.link_by_index(index).await,
            None => Ok(None),
        }
    }

    /// Forgets what this namespace knows about `ip`'s link-layer address on `link`, so a reused
    /// address is resolved again at once instead of after the stale entry times out.
    pub async fn forget_neighbour(&self, link: &Link, ip: IpAddr) -> Result<()> {
        use rtnetlink::packet_route::AddressFamily;
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage,
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.ifindex = link.index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        // Usually there is nothing to forget. The lookup does not take the RTNL lock, which a
        // node's kernel workers hold for milliseconds while ports come and go; the delete does.
        if !self.neighbour_exists(msg.clone()).await? {
            return Ok(());
        }
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(Errno::NotFound | Errno::Other(libc::ESRCH))) => {
                Ok(())
            }
            Err(e) => Err(kernel(
                format_args!(
                    "cannot remove the neighbour entry of {ip} on {:?}",
                    link.name
                ),
                e,
            )),
        }
    }

    /// Whether the neighbour entry `msg` names (link and destination) exists: RTM_GETNEIGH for
    /// that one entry, not a dump.
    async fn neighbour_exists(
        &self,
        msg: rtnetlink::packet_route::neighbour::NeighbourMessage,
    ) -> Result<bool> {
        use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
        let mut request = NetlinkMessage::from(
            rtnetlink::packet_route::RouteNetlinkMessage::GetNeighbour(msg),
        );
        request.header.flags = NLM_F_REQUEST;
        let mut replies = self
            .handle
            .clone()
            .request(request)
            .map_err(|e| kernel(format_args!("cannot look up a neighbour entry"), e))?;
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(_) => return Ok(true),
                NetlinkPayload::Error(e) => {
                    return match e.code.map(|c| Errno::from_code(c.get())) {
                        None => Ok(true),
                        Some(Errno::NotFound) => Ok(false),
                        // Kernels without single-entry lookups: delete as before.
                        Some(_) => Ok(true),
                    };
                }
                _ => {}
            }
        }
        Ok(false)
    }

    /// Routes of one family in every table (for CHECK).
    pub async fn routes(&self, v4: bool) -> Result<Vec<KernelRoute>> {
        let filter = if v4 {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        };
        let mut stream = self.handle.route().get(any_route(filter)).execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| kernel("cannot list routes", e))?
        {
            out.extend(KernelRoute::from_message(&msg));
        }
        Ok(out)
    }
}

/// `msg` with table, protocol, type and scope zero: strict checking filters route dumps by
/// these header fields (zero = any) and refuses a lookup that sets them.
fn any_route(mut msg: RouteMessage) -> RouteMessage {
    msg.header.table = 0;
    msg.header.protocol = RouteProtocol::Unspec;
    msg.header.kind = rtnetlink::packet_route::route::RouteType::Unspec;
    msg.header.scope = RouteScope::Universe;
    msg
}

async fn first_link(request: rtnetlink::LinkGetRequest, what: &str) -> Result<Option<Link>> {
    match request.execute().try_next().await {
        Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
        Err(e) if refused_with(&e, Errno::NoDevice) => Ok(None),
        Err(e) => Err(kernel(format_args!("cannot look up link {what}"), e)),
    }
}

pub struct VethSpec<'a> {
    pub host: &'a str,
    pub peer: &'a str,
    pub peer_ns: &'a Netns,
    pub mtu: u32,
    pub peer_mac: Option<[u8; 6]>,
    pub controller: u32,
}

/// Duplicate address detection of a link's IPv6 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dad {
    /// No IPv6 address is tentative.
    Done,
    /// These are still being checked.
    Tentative(Vec<IpNetwork>),
    /// Another host on the link has this one (IFA_F_DADFAILED).
    Failed(IpNetwork),
}

/// One queue each way, given explicitly. Left out, the kernel makes a veth end with a queue per
/// CPU, then cuts the real count back to one, each cut an RCU grace period waited under RTNL
/// (which every other ADD on the node then waits for). The real count is one either way.
fn single_queue<T>(link: LinkMessageBuilder<T>) -> LinkMessageBuilder<T> {
    link.append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
}

fn dad_state(msgs: &[AddressMessage]) -> Dad {
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::packet_route::address::AddressFlags;
    let mut tentative = Vec::new();
    for msg in msgs
        .iter()
        .filter(|m| m.header.family == AddressFamily::Inet6)
    {
        // IFA_FLAGS has all 32 bits; the header's byte holds the ones we need when it is absent.
        let flags = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                AddressAttribute::Flags(f) => Some(*f),
                _ => None,
            })
            .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits())));
        let Some(address) = address_of(msg) else {
            continue;
        };
        if flags.contains(AddressFlags::Dadfailed) {
            return Dad::Failed(address);
        }
        if flags.contains(AddressFlags::Tentative) {
            tentative.push(address);
        }
    }
    if tentative.is_empty() {
        Dad::Done
    } else {
        Dad::Tentative(tentative)
    }
}

/// The address of a kernel address message (IFA_LOCAL, else IFA_ADDRESS) with its prefix.
pub fn address_of(msg: &AddressMessage) -> Option<IpNetwork> {
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    IpNetwork::new(local.or(address)?, msg.header.prefix_len).ok()
}

/// A route the kernel has: its destination and every gateway (its own, or its next hops' for
/// a multipath route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: IpNetwork,
    pub gateways: Vec<IpAddr>,
}

impl KernelRoute {
    /// What a kernel route message says; `None` for a family other than IPv4 and IPv6.
    pub fn from_message(msg: &RouteMessage) -> Option<KernelRoute> {
        use rtnetlink::packet_route::AddressFamily;
        let mut dst = match msg.header.address_family {
            AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        let mut gateways = Vec::new();
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = route_addr(a).unwrap_or(dst),
                RouteAttribute::Gateway(a) => gateways.extend(route_addr(a)),
                RouteAttribute::MultiPath(hops) => {
                    gateways.extend(hops.iter().flat_map(|h| &h.attributes).filter_map(
                        |a| match a {
                            RouteAttribute::Gateway(a) => route_addr(a),
                            _ => None,
                        },
                    ));
                }
                _ => {}
            }
        }
        let dst = IpNetwork::new(dst, msg.header.destination_prefix_length).ok()?;
        Some(KernelRoute { dst, gateways })
    }

    /// Whether this is `route`: its destination, and its gateway when it names one.
    pub fn matches(&self, route: &Route) -> bool {
        self.dst.ip() == route.dst.network()
            && self.dst.prefix() == route.dst.prefix()
            && route.gw.is_none_or(|want| self.gateways.contains(&want))
    }
}

fn route_addr(a: &rtnetlink::packet_route::route::RouteAddress) -> Option<IpAddr> {
    use rtnetlink::packet_route::route::RouteAddress;
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_message(link: &Link, route: &Route, gateway: Option<IpAddr>) -> Result<RouteMessage> {
    let bad = |e: String| Error::invalid_config(format!("invalid route {}: {e}", route.dst));
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix())
        .map_err(|e| bad(e.to_string()))?
        .output_interface(link.index)
        .protocol(RouteProtocol::Boot);
    if let Some(gw) = gateway {
        b = b.gateway(gw).map_err(|e| bad(e.to_string()))?;
    }
    if route.priority > 0 {
        b = b.priority(route.priority);
    }
    if let Some(table) = route.table {
        b = b.table_id(table);
    }
    if let Some(scope) = route.scope {
        b = b.scope(RouteScope::from(scope));
    } else if gateway.is_none() && route.dst.is_ipv4() {
        b = b.scope(RouteScope::Link);
    }
    let mut msg = b.build();
    let mut metrics = Vec::new();
    if route.mtu > 0 {
        metrics.push(RouteMetric::Mtu(route.mtu));
    }
    if route.advmss > 0 {
        metrics.push(RouteMetric::Advmss(route.advmss));
    }
    if !metrics.is_empty() {
        msg.attributes.push(RouteAttribute::Metrics(metrics));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dad_state_reads_the_flags_of_ipv6_addresses() {
        use rtnetlink::packet_route::AddressFamily;
        use rtnetlink::packet_route::address::{AddressFlags, AddressHeaderFlags};
        let addr = |ip: &str, flags: Option<AddressFlags>, header: AddressHeaderFlags| {
            let ip: IpAddr = ip.parse().unwrap();
            let mut m = AddressMessage::default();
            m.header.family = if ip.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            m.header.prefix_len = 64;
            m.header.flags = header;
            m.attributes.push(AddressAttribute::Address(ip));
            m.attributes.extend(flags.map(AddressAttribute::Flags));
            m
        };
        let none = AddressHeaderFlags::empty();
        let done = addr("fd::2", Some(AddressFlags::Permanent), none);
        let v4 = addr("10.0.0.2", Some(AddressFlags::Tentative), none);
        let tentative = addr("fe80::1", Some(AddressFlags::Tentative), none);
        let header_only = addr("fd::3", None, AddressHeaderFlags::Tentative);
        let failed = addr(
            "fd::4",
            Some(AddressFlags::Tentative | AddressFlags::Dadfailed),
            none,
        );
        assert_eq!(dad_state(&[done.clone(), v4.clone()]), Dad::Done);
        assert_eq!(
            dad_state(&[done.clone(), tentative.clone(), header_only.clone()]),
            Dad::Tentative(vec![
                "fe80::1/64".parse().unwrap(),
                "fd::3/64".parse().unwrap()
            ])
        );
        assert_eq!(
            dad_state(&[tentative, failed, done]),
            Dad::Failed("fd::4/64".parse().unwrap())
        );
    }

    #[test]
    fn a_route_matches_by_its_gateway_or_a_next_hops() {
        use rtnetlink::packet_route::route::{RouteAddress, RouteNextHop};
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        let typed = |msg: &RouteMessage| KernelRoute::from_message(msg).unwrap();
        let mut msg = RouteMessageBuilder::<std::net::Ipv6Addr>::new().build();
        let hop = |gw: &str| {
            let mut hop = RouteNextHop::default();
            hop.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet6(v6(gw)))];
            hop
        };
        msg.attributes
            .push(RouteAttribute::MultiPath(vec![hop("fd::1"), hop("fd::fe")]));
        let route = |gw: Option<&str>| {
            let mut r = Route::new("::/0".parse().unwrap(), None);
            r.gw = gw.map(|g| IpAddr::V6(v6(g)));
            r
        };
        assert!(typed(&msg).matches(&route(Some("fd::fe"))));
        assert!(typed(&msg).matches(&route(Some("fd::1"))));
        assert!(typed(&msg).matches(&route(None)));
        assert!(!typed(&msg).matches(&route(Some("fd::2"))));
        let mut single = RouteMessageBuilder::<std::net::Ipv6Addr>::new().build();
        single
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(v6("fd::1"))));
        assert!(typed(&single).matches(&route(Some("fd::1"))));
        assert!(!typed(&single).matches(&route(Some("fd::fe"))));
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("0a:58:0A:01:00:05"),
            Some([0x0a, 0x58, 0x0a, 1, 0, 5])
        );
        assert_eq!(
            parse_mac("0a-58-0a-01-00-05"),
            Some([0x0a, 0x58, 0x0a, 1, 0, 5])
        );
        for bad in [
            "",
            "0a:58:0a:01:00",
            "0a:58:0a:01:00:05:06",
            "zz:58:0a:01:00:05",
            "a:58:0a:01:00:05",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0, 0, 0, 0xff]),
            "0a:58:00:00:00:ff"
        );
    }
}
