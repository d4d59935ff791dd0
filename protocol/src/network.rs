//! The guest's network configuration: what the host read from the
//! container's network namespace, for the agent to copy onto the guest's
//! interfaces. The host bounds it when it reads it and the agent checks it
//! again ([`NetworkConfig::validate`]) before it touches an interface.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Most interfaces one sandbox may have.
pub const MAX_INTERFACES: usize = 8;

/// Most addresses one interface may have.
pub const MAX_ADDRESSES: usize = 16;

/// Most routes one sandbox may have.
pub const MAX_ROUTES: usize = 128;

/// Longest interface name (Linux's IFNAMSIZ less the NUL).
pub const MAX_IFNAME: usize = 15;

/// An address with a prefix length: an interface's address, or a route's
/// destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpPrefix {
    /// The address, IPv4 or IPv6.
    pub ip: IpAddr,
    /// The prefix length (at most 32 or 128).
    pub prefix_len: u8,
}

impl IpPrefix {
    /// Whether the prefix length fits the address family.
    pub fn is_valid(&self) -> bool {
        self.prefix_len <= if self.ip.is_ipv4() { 32 } else { 128 }
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

/// One interface of the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Its name (the name it has in the container's namespace).
    pub name: String,
    /// Its MAC address, `aa:bb:cc:dd:ee:ff`: the guest's virtio-net device
    /// with this MAC is the one configured.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses.
    #[serde(default)]
    pub addresses: Vec<IpPrefix>,
}

/// A route that is not implied by an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The destination (`0.0.0.0/0` or `::/0` for a default route).
    pub destination: IpPrefix,
    /// The next hop; none for a route straight onto the link.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// The interface it leaves through (one of the config's).
    pub device: String,
}

/// The guest's interfaces and routes; empty: loopback only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Routes through them, in order (a gateway must be reachable by an
    /// address or an earlier route).
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// Whether `s` is a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn is_mac(s: &str) -> bool {
    s.len() == 17
        && s.split(':').count() == 6
        && s.split(':')
            .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// The six bytes of a MAC address written `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    if !is_mac(s) {
        return None;
    }
    let mut out = [0u8; 6];
    for (b, part) in out.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    Some(out)
}

/// Whether `s` can name a Linux network interface.
pub fn is_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IFNAME
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl NetworkConfig {
    /// Checks bounds and consistency; the error names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.interfaces.len() > MAX_INTERFACES {
            return Err(format!("more than {MAX_INTERFACES} interfaces"));
        }
        if self.routes.len() > MAX_ROUTES {
            return Err(format!("more than {MAX_ROUTES} routes"));
        }
        for (n, i) in self.interfaces.iter().enumerate() {
            if !is_ifname(&i.name) {
                return Err(format!("interface name {:?}", i.name));
            }
            if self.interfaces[..n].iter().any(|o| o.name == i.name) {
                return Err(format!("interface {} named twice", i.name));
            }
            if !is_mac(&i.mac) {
                return Err(format!("{}: MAC address {:?}", i.name, i.mac));
            }
            if self.interfaces[..n]
                .iter()
                .any(|o| o.mac.eq_ignore_ascii_case(&i.mac))
            {
                return Err(format!("{}: MAC address {} used twice", i.name, i.mac));
            }
            if !(68..=65535).contains(&i.mtu) {
                return Err(format!("{}: MTU {}", i.name, i.mtu));
            }
            if i.addresses.len() > MAX_ADDRESSES {
                return Err(format!("{}: more than {MAX_ADDRESSES} addresses", i.name));
            }
            if let Some(a) = i.addresses.iter().find(|a| !a.is_valid()) {
                return Err(format!("{}: address {a}", i.name));
            }
        }
        for r in &self.routes {
            if !r.destination.is_valid() {
                return Err(format!("route destination {}", r.destination));
            }
            if let Some(g) = r
                .gateway
                .filter(|g| g.is_ipv4() != r.destination.ip.is_ipv4())
            {
                return Err(format!(
                    "route to {}: gateway {g} is of another family",
                    r.destination
                ));
            }
            if !self.interfaces.iter().any(|i| i.name == r.device) {
                return Err(format!(
                    "route to {}: no interface {:?}",
                    r.destination, r.device
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> NetworkConfig {
        NetworkConfig {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:42:0a:d6:00:02".into(),
                mtu: 1450,
                addresses: vec![
                    IpPrefix {
                        ip: "10.214.0.2".parse().unwrap(),
                        prefix_len: 24,
                    },
                    IpPrefix {
                        ip: "fd00::2".parse().unwrap(),
                        prefix_len: 64,
                    },
                ],
            }],
            routes: vec![Route {
                destination: IpPrefix {
                    ip: "0.0.0.0".parse().unwrap(),
                    prefix_len: 0,
                },
                gateway: Some("10.214.0.1".parse().unwrap()),
                device: "eth0".into(),
            }],
        }
    }

    #[test]
    fn a_good_config_passes_and_round_trips() {
        let c = good();
        c.validate().unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<NetworkConfig>(&text).unwrap(), c);
        assert_eq!(NetworkConfig::default().validate(), Ok(()));
    }

    #[test]
    fn bad_configs_name_the_fault() {
        let check = |f: &dyn Fn(&mut NetworkConfig), want: &str| {
            let mut c = good();
            f(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        };
        check(&|c| c.interfaces[0].name = "a/b".into(), "interface name");
        check(&|c| c.interfaces[0].name = "x".repeat(16), "interface name");
        check(&|c| c.interfaces[0].mac = "02:42".into(), "MAC address");
        check(&|c| c.interfaces[0].mtu = 10, "MTU 10");
        check(
            &|c| c.interfaces[0].addresses[0].prefix_len = 33,
            "10.214.0.2/33",
        );
        check(&|c| c.routes[0].device = "eth9".into(), "no interface");
        check(
            &|c| c.routes[0].gateway = Some("fd00::1".parse().unwrap()),
            "another family",
        );
        check(
            &|c| {
                let i = c.interfaces[0].clone();
                c.interfaces.push(i);
            },
            "named twice",
        );
        check(
            &|c| {
                c.interfaces[0].addresses = vec![c.interfaces[0].addresses[0]; MAX_ADDRESSES + 1];
            },
            "more than",
        );
        check(
            &|c| c.routes = vec![c.routes[0].clone(); MAX_ROUTES + 1],
            "more than",
        );
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:42:0A:d6:00:ff"),
            Some([2, 0x42, 0x0a, 0xd6, 0, 0xff])
        );
        assert_eq!(parse_mac("02:42:0a:d6:00"), None);
        assert_eq!(parse_mac("02:42:0a:d6:00:fg"), None);
    }
}
