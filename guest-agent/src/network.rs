//! The guest's interfaces: copies the configuration the host read from the
//! container's network namespace (names, MTUs, addresses, routes) onto the
//! virtio-net devices, matched by MAC address, over rtnetlink.

use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;
use protocol::network::{Interface, NetworkConfig, Route, parse_mac};

/// Most messages one request may answer with (a link dump: the guest has
/// a handful of links).
const MAX_ANSWERS: usize = 64;

/// Errors configuring the guest's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is malformed.
    #[error("invalid network configuration: {0}")]
    Invalid(String),
    /// The rtnetlink socket failed.
    #[error("rtnetlink: {0}")]
    Socket(std::io::Error),
    /// The kernel refused a change.
    #[error("{what}: {source}")]
    Refused {
        /// The change.
        what: String,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The kernel's answer could not be read.
    #[error("rtnetlink answer: {0}")]
    Decode(String),
    /// No virtio-net device has the interface's MAC.
    #[error("{name}: no network device with MAC {mac} in the guest")]
    NoDevice {
        /// The interface.
        name: String,
        /// Its MAC.
        mac: String,
    },
}

/// A request–answer rtnetlink connection.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> Result<Rtnl, NetError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetError::Socket)?;
        socket.bind_auto().map_err(NetError::Socket)?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends `msg` and collects the answers up to the acknowledgement (or
    /// the end of a dump).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: impl Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(NetError::Socket)?;
        let mut answers = Vec::new();
        let mut datagram = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .socket
                .recv(&mut &mut datagram[..], 0)
                .map_err(NetError::Socket)?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..n])
                    .map_err(|e| NetError::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(NetError::Decode("a message of length 0".into()));
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(NetError::Refused {
                            what: what(),
                            source: e.to_io(),
                        });
                    }
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(m) => {
                        if answers.len() == MAX_ANSWERS {
                            return Err(NetError::Decode("too many answers".into()));
                        }
                        answers.push(m);
                    }
                    _ => {}
                }
            }
        }
    }

    /// (index, name, MAC) of every link.
    fn links(&mut self) -> Result<Vec<(u32, String, Vec<u8>)>, NetError> {
        let answers = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            || "list links".into(),
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => {
                    let mut name = String::new();
                    let mut mac = Vec::new();
                    for a in l.attributes {
                        match a {
                            LinkAttribute::IfName(n) => name = n,
                            LinkAttribute::Address(m) => mac = m,
                            _ => {}
                        }
                    }
                    Some((l.header.index, name, mac))
                }
                _ => None,
            })
            .collect())
    }

    /// Renames the (down) link, sets its MTU and brings it up.
    fn set_link(&mut self, index: u32, iface: &Interface, rename: bool) -> Result<(), NetError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if rename {
            msg.attributes
                .push(LinkAttribute::IfName(iface.name.clone()));
        }
        msg.attributes.push(LinkAttribute::Mtu(iface.mtu));
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK, || {
            format!("{}: name and MTU {}", iface.name, iface.mtu)
        })?;
        let mut up = LinkMessage::default();
        up.header.index = index;
        up.header.flags = LinkFlags::Up;
        up.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(up), NLM_F_ACK, || {
            format!("{}: up", iface.name)
        })?;
        Ok(())
    }

    fn add_address(
        &mut self,
        index: u32,
        iface: &Interface,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetError> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix_len;
        msg.header.family = family(ip);
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        if let IpAddr::V4(v4) = ip {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
            let broadcast = std::net::Ipv4Addr::from(u32::from(v4) | host_bits);
            msg.attributes.push(AddressAttribute::Broadcast(broadcast));
        } else {
            // The host already checked the address is unique on its link:
            // no duplicate-address detection delaying its use.
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            || format!("{}: address {ip}/{prefix_len}", iface.name),
        )?;
        Ok(())
    }

    fn add_route(&mut self, index: u32, route: &Route) -> Result<(), NetError> {
        let mut msg = RouteMessage::default();
        let dst = route.destination;
        msg.header.address_family = family(dst.ip);
        msg.header.destination_prefix_length = dst.prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if route.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if dst.prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst.ip)));
        }
        if let Some(g) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            || match route.gateway {
                Some(g) => format!("route to {dst} via {g} dev {}", route.device),
                None => format!("route to {dst} dev {}", route.device),
            },
        )?;
        Ok(())
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// Configures the guest's interfaces as `config` says: each one is found
/// by its MAC, renamed, given its MTU and addresses and brought up; then
/// the routes are added in order. An empty configuration changes nothing
/// (loopback only).
pub fn configure(config: &NetworkConfig) -> Result<(), NetError> {
    config.validate().map_err(NetError::Invalid)?;
    if config.interfaces.is_empty() {
        return Ok(());
    }
    let mut rtnl = Rtnl::open()?;
    let mut indexes = Vec::new();
    for iface in &config.interfaces {
        let Some(mac) = parse_mac(&iface.mac) else {
            return Err(NetError::Invalid(format!("MAC {}", iface.mac)));
        };
        // Read afresh: an earlier rename may have changed names.
        let links = rtnl.links()?;
        let (index, name, _) = links
            .iter()
            .find(|(_, _, m)| m.as_slice() == mac)
            .ok_or_else(|| NetError::NoDevice {
                name: iface.name.clone(),
                mac: iface.mac.clone(),
            })?;
        // A device not configured yet that holds the wanted name (the
        // kernel's eth<N> order need not be the namespace's) is renamed out
        // of the way first.
        let holder = links
            .iter()
            .find(|(i, n, _)| n == &iface.name && i != index)
            .map(|(i, _, _)| *i);
        if let Some(other) = holder {
            let mut msg = LinkMessage::default();
            msg.header.index = other;
            msg.attributes
                .push(LinkAttribute::IfName(format!("husk{other}")));
            rtnl.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK, || {
                format!("{}: rename the device holding the name", iface.name)
            })?;
        }
        rtnl.set_link(*index, iface, name != &iface.name)?;
        for a in &iface.addresses {
            rtnl.add_address(*index, iface, a.ip, a.prefix_len)?;
        }
        indexes.push((iface.name.as_str(), *index));
    }
    for route in &config.routes {
        let index = indexes
            .iter()
            .find(|(n, _)| *n == route.device)
            .map(|(_, i)| *i)
            .ok_or_else(|| NetError::Invalid(format!("route device {}", route.device)))?;
        rtnl.add_route(index, route)?;
    }
    Ok(())
}
