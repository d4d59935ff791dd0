//! Container networking, host side. A CNI plugin (or podman, or containerd's
//! CRI plugin) prepares the container's network namespace: usually a veth
//! with a MAC, addresses, routes and an MTU. [`discover`] reads that
//! configuration (what the guest's interface must copy); [`connect`] adds a
//! TAP for the VMM beside each interface, inside the namespace, and joins
//! the two with tc `mirred` redirection both ways, so every frame the veth
//! receives goes to the VM and every frame the VM sends leaves through the
//! veth; [`disconnect`] removes the TAP and the filters and nothing else.
//!
//! The work is done by iproute2's `ip` and `tc` (present on every node
//! that runs CNI) inside the namespace through `nsenter`; their JSON output
//! is parsed and bounded here.

use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::network::{
    Interface, IpPrefix, MAX_ADDRESSES, MAX_INTERFACES, MAX_ROUTES, NetworkConfig, Route, is_mac,
};
use serde::{Deserialize, Serialize};

/// The prefix of the TAPs husk creates; interfaces so named are never
/// taken for the container's own.
pub const TAP_PREFIX: &str = "husk-tap";

/// Most routes per address family the guest copies.
pub const MAX_ROUTES_PER_FAMILY: usize = MAX_ROUTES / 2;

/// Errors of network set-up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace path is unusable.
    #[error("network namespace {path}: {cause}")]
    Namespace {
        /// The path.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// A command failed.
    #[error("{command}: {cause}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output, or why it could not run.
        cause: String,
    },
    /// What a command printed is not what was expected.
    #[error("{what}: {cause}")]
    Parse {
        /// What was read.
        what: String,
        /// Why it is refused.
        cause: String,
    },
}

/// A virtio-net device: a TAP in the VM's network namespace, and the MAC
/// the guest sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The TAP's name.
    pub tap: String,
    /// The guest's MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// A TAP joined to an interface by [`connect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tap {
    /// The TAP's name.
    pub name: String,
    /// The interface it is joined to.
    pub interface: String,
}

/// Runs `program args` inside the network namespace at `netns`.
fn run_in(netns: &Path, program: &str, args: &[&str]) -> Result<String, NetworkError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .map_err(|e| NetworkError::Command {
            command: command.clone(),
            cause: format!("cannot run nsenter: {e}"),
        })?;
    if !out.status.success() {
        return Err(NetworkError::Command {
            command,
            cause: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check_namespace(netns: &Path) -> Result<(), NetworkError> {
    let err = |cause: String| NetworkError::Namespace {
        path: netns.to_path_buf(),
        cause,
    };
    let meta = std::fs::metadata(netns).map_err(|e| err(e.to_string()))?;
    if meta.is_dir() {
        return Err(err("is a directory, not a namespace".into()));
    }
    Ok(())
}

/// Reads the interfaces (Ethernet ones not made by husk, at most
/// [`MAX_INTERFACES`] with [`MAX_ADDRESSES`] each) and routes (at most
/// [`MAX_ROUTES`] per family) of the namespace at `netns`; more is refused.
/// A namespace with loopback only gives an empty configuration.
pub fn discover(netns: &Path) -> Result<NetworkConfig, NetworkError> {
    check_namespace(netns)?;
    let links = run_in(netns, "ip", &["-j", "addr", "show"])?;
    let interfaces = parse_addresses(&links)?;
    let mut routes = Vec::new();
    for v6 in [false, true] {
        let family = if v6 { "-6" } else { "-4" };
        let text = run_in(netns, "ip", &["-j", family, "route", "show"])?;
        routes.extend(parse_routes(&text, &interfaces, v6)?);
    }
    let config = NetworkConfig { interfaces, routes };
    config.validate().map_err(|cause| NetworkError::Parse {
        what: format!("network namespace {}", netns.display()),
        cause,
    })?;
    Ok(config)
}

/// Parses `ip -j addr show`.
pub fn parse_addresses(json: &str) -> Result<Vec<Interface>, NetworkError> {
    let bad = |cause: &str| NetworkError::Parse {
        what: "ip -j addr show".into(),
        cause: cause.into(),
    };
    let links: Vec<serde_json::Value> =
        serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let mut found = Vec::new();
    for link in links {
        let name = link["ifname"]
            .as_str()
            .ok_or_else(|| bad("a link without ifname"))?;
        if link["link_type"].as_str() != Some("ether") || name.starts_with(TAP_PREFIX) {
            continue;
        }
        if found.len() == MAX_INTERFACES {
            return Err(bad(&format!("more than {MAX_INTERFACES} interfaces")));
        }
        let mac = link["address"]
            .as_str()
            .filter(|m| is_mac(m))
            .ok_or_else(|| bad(&format!("{name}: no MAC address")))?;
        let mtu = link["mtu"]
            .as_u64()
            .filter(|m| (68..=65535).contains(m))
            .ok_or_else(|| bad(&format!("{name}: no usable MTU")))?;
        let mut addresses = Vec::new();
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if a["scope"].as_str() != Some("global") {
                continue;
            }
            if addresses.len() == MAX_ADDRESSES {
                return Err(bad(&format!("{name}: more than {MAX_ADDRESSES} addresses")));
            }
            let ip = a["local"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(&format!("{name}: an address without local")))?;
            let prefix_len = a["prefixlen"]
                .as_u64()
                .filter(|p| *p <= 128)
                .ok_or_else(|| bad(&format!("{name}: an address without prefixlen")))?;
            let a = IpPrefix {
                ip,
                prefix_len: prefix_len as u8,
            };
            if !a.is_valid() {
                return Err(bad(&format!("{name}: address {a}")));
            }
            addresses.push(a);
        }
        found.push(Interface {
            name: name.to_string(),
            mac: mac.to_string(),
            mtu: mtu as u32,
            addresses,
        });
    }
    Ok(found)
}

/// Parses `ip -j route show` (of IPv6 routes if `v6`), keeping the routes
/// through `interfaces` that adding the addresses does not create (those of
/// protocol `kernel`).
pub fn parse_routes(
    json: &str,
    interfaces: &[Interface],
    v6: bool,
) -> Result<Vec<Route>, NetworkError> {
    let bad = |cause: &str| NetworkError::Parse {
        what: "ip -j route show".into(),
        cause: cause.into(),
    };
    let all: Vec<serde_json::Value> =
        serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let mut routes = Vec::new();
    for r in all {
        let Some(device) = r["dev"].as_str() else {
            continue;
        };
        if r["protocol"].as_str() == Some("kernel") || !interfaces.iter().any(|i| i.name == device)
        {
            continue;
        }
        let dst = r["dst"]
            .as_str()
            .ok_or_else(|| bad("a route without dst"))?;
        let destination =
            parse_destination(dst, v6).ok_or_else(|| bad(&format!("destination {dst:?}")))?;
        if routes.len() == MAX_ROUTES_PER_FAMILY {
            return Err(bad(&format!("more than {MAX_ROUTES_PER_FAMILY} routes")));
        }
        let gateway: Option<std::net::IpAddr> = match r["gateway"].as_str() {
            Some(g) => Some(g.parse().map_err(|_| bad(&format!("gateway {g:?}")))?),
            None => None,
        };
        if gateway.is_some_and(|g| g.is_ipv6() != v6) {
            return Err(bad(&format!("route to {dst}: gateway of another family")));
        }
        routes.push(Route {
            destination,
            gateway,
            device: device.to_string(),
        });
    }
    Ok(routes)
}

/// `default`, an address (a host route), or an address with a prefix
/// length that fits it, of the family asked for.
fn parse_destination(s: &str, v6: bool) -> Option<IpPrefix> {
    let any: std::net::IpAddr = if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    if s == "default" {
        return Some(IpPrefix {
            ip: any,
            prefix_len: 0,
        });
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    if ip.is_ipv6() != v6 {
        return None;
    }
    let prefix_len = match len {
        Some(l) => l.parse().ok()?,
        None if v6 => 128,
        None => 32,
    };
    let p = IpPrefix { ip, prefix_len };
    p.is_valid().then_some(p)
}

/// Creates TAP `husk-tap<index>` in the namespace at `netns`, with the MTU
/// of `interface`, and redirects all traffic between the two both ways.
/// On failure, what was made is removed.
pub fn connect(netns: &Path, interface: &Interface, index: usize) -> Result<Tap, NetworkError> {
    check_namespace(netns)?;
    let tap = Tap {
        name: format!("{TAP_PREFIX}{index}"),
        interface: interface.name.clone(),
    };
    let mtu = interface.mtu.to_string();
    let (t, i) = (tap.name.as_str(), interface.name.as_str());
    let steps: [(&str, Vec<&str>); 6] = [
        ("ip", vec!["tuntap", "add", "dev", t, "mode", "tap"]),
        ("ip", vec!["link", "set", "dev", t, "mtu", &mtu, "up"]),
        ("tc", vec!["qdisc", "add", "dev", i, "ingress"]),
        ("tc", redirect(i, t)),
        ("tc", vec!["qdisc", "add", "dev", t, "ingress"]),
        ("tc", redirect(t, i)),
    ];
    for (program, args) in &steps {
        if let Err(e) = run_in(netns, program, args) {
            let _ = disconnect(netns, &tap);
            return Err(e);
        }
    }
    Ok(tap)
}

/// A filter sending everything that arrives on `from` out of `to`.
fn redirect<'a>(from: &'a str, to: &'a str) -> Vec<&'a str> {
    vec![
        "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u8",
        "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
    ]
}

/// Removes the TAP and the interface's ingress filters. Parts already gone
/// are not an error; the namespace itself being gone is not either.
pub fn disconnect(netns: &Path, tap: &Tap) -> Result<(), NetworkError> {
    if !netns.exists() {
        return Ok(());
    }
    let _ = run_in(
        netns,
        "tc",
        &["qdisc", "del", "dev", &tap.interface, "ingress"],
    );
    match run_in(netns, "ip", &["link", "del", "dev", &tap.name]) {
        Err(NetworkError::Command { cause, .. })
            if cause.contains("Cannot find device") || cause.contains("does not exist") =>
        {
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// The TAPs husk joined in a container's namespace, recorded so that
/// delete (even after a crash) removes them again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The namespace.
    pub netns: PathBuf,
    /// The TAPs, in the order of the configuration's interfaces.
    pub taps: Vec<Tap>,
}

impl Attachment {
    /// Reads the namespace at `netns` and joins a TAP to each of its
    /// interfaces; returns them with what the guest must copy. On failure
    /// the TAPs made so far are removed.
    pub fn create(netns: &Path) -> Result<(Attachment, NetworkConfig), NetworkError> {
        let config = discover(netns)?;
        let mut this = Attachment {
            netns: netns.to_path_buf(),
            taps: Vec::new(),
        };
        for (n, iface) in config.interfaces.iter().enumerate() {
            match connect(netns, iface, n) {
                Ok(tap) => this.taps.push(tap),
                Err(e) => {
                    this.release();
                    return Err(e);
                }
            }
        }
        Ok((this, config))
    }

    /// The guest's NICs: each TAP with the MAC of its interface.
    pub fn nics(&self, config: &NetworkConfig) -> Vec<Nic> {
        self.taps
            .iter()
            .zip(&config.interfaces)
            .map(|(t, i)| Nic {
                tap: t.name.clone(),
                mac: i.mac.clone(),
            })
            .collect()
    }

    /// Removes the TAPs and their filters; what is already gone is skipped.
    pub fn release(&self) {
        for t in &self.taps {
            if let Err(e) = disconnect(&self.netns, t) {
                log::warn!("removing {}: {e}", t.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = r#"[
      {"ifindex":1,"ifname":"lo","link_type":"loopback","address":"00:00:00:00:00:00","mtu":65536,
       "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifindex":2,"ifname":"eth0","link_type":"ether","address":"02:42:0a:d6:00:02","mtu":1450,
       "addr_info":[{"family":"inet","local":"10.214.0.2","prefixlen":24,"scope":"global"},
                    {"family":"inet6","local":"fd00::2","prefixlen":64,"scope":"global"},
                    {"family":"inet6","local":"fe80::42:aff:fed6:2","prefixlen":64,"scope":"link"}]},
      {"ifindex":3,"ifname":"husk-tap0","link_type":"ether","address":"02:00:00:00:00:09","mtu":1450,"addr_info":[]}
    ]"#;

    #[test]
    fn addresses_of_ethernet_interfaces_only() {
        let found = parse_addresses(ADDR).unwrap();
        assert_eq!(found.len(), 1);
        let eth = &found[0];
        assert_eq!(
            (eth.name.as_str(), eth.mac.as_str(), eth.mtu),
            ("eth0", "02:42:0a:d6:00:02", 1450)
        );
        assert_eq!(
            eth.addresses,
            vec![
                IpPrefix {
                    ip: "10.214.0.2".parse().unwrap(),
                    prefix_len: 24
                },
                IpPrefix {
                    ip: "fd00::2".parse().unwrap(),
                    prefix_len: 64
                },
            ]
        );
    }

    #[test]
    fn routes_the_addresses_do_not_imply() {
        let ifs = parse_addresses(ADDR).unwrap();
        let json = r#"[
          {"dst":"default","gateway":"10.214.0.1","dev":"eth0"},
          {"dst":"10.214.0.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.214.0.2"},
          {"dst":"10.99.0.0/16","gateway":"10.214.0.254","dev":"eth0"},
          {"dst":"10.1.0.0/16","dev":"other0"}
        ]"#;
        let routes = parse_routes(json, &ifs, false).unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].destination.to_string(), "0.0.0.0/0");
        assert_eq!(routes[0].gateway, Some("10.214.0.1".parse().unwrap()));
        assert_eq!(routes[1].destination.to_string(), "10.99.0.0/16");
        let v6 = r#"[{"dst":"default","gateway":"fd00::1","dev":"eth0"}]"#;
        let routes = parse_routes(v6, &ifs, true).unwrap();
        assert_eq!(routes[0].destination.to_string(), "::/0");
        assert!(parse_routes(v6, &ifs, false).is_err());
    }

    #[test]
    fn bad_output_is_refused() {
        assert!(parse_addresses("not json").is_err());
        let no_mac = r#"[{"ifname":"eth0","link_type":"ether","address":"zz","mtu":1500}]"#;
        assert!(
            parse_addresses(no_mac)
                .unwrap_err()
                .to_string()
                .contains("eth0: no MAC")
        );
        let tiny_mtu =
            r#"[{"ifname":"eth0","link_type":"ether","address":"02:00:00:00:00:01","mtu":10}]"#;
        assert!(parse_addresses(tiny_mtu).is_err());
        let many: Vec<String> = (0..=MAX_INTERFACES)
            .map(|n| format!(r#"{{"ifname":"e{n}","link_type":"ether","address":"02:00:00:00:00:01","mtu":1500}}"#))
            .collect();
        assert!(parse_addresses(&format!("[{}]", many.join(","))).is_err());
        let bad_gw = r#"[{"dst":"default","gateway":"nope","dev":"eth0"}]"#;
        let ifs = parse_addresses(ADDR).unwrap();
        assert!(parse_routes(bad_gw, &ifs, false).is_err());
        let bad_dst = r#"[{"dst":"10.0.0.0/33","dev":"eth0"}]"#;
        assert!(
            parse_routes(bad_dst, &ifs, false)
                .unwrap_err()
                .to_string()
                .contains("10.0.0.0/33")
        );
        let host = r#"[{"dst":"10.9.9.9","dev":"eth0"},{"dst":"10.8.0.0/16","dev":"eth0"}]"#;
        let routes = parse_routes(host, &ifs, false).unwrap();
        assert_eq!(routes[0].destination.to_string(), "10.9.9.9/32");
        let routes: Vec<String> = (0..=MAX_ROUTES_PER_FAMILY)
            .map(|n| format!(r#"{{"dst":"10.{n}.0.0/16","dev":"eth0"}}"#))
            .collect();
        assert!(parse_routes(&format!("[{}]", routes.join(",")), &ifs, false).is_err());
        let addrs: Vec<String> = (0..=MAX_ADDRESSES)
            .map(|n| format!(r#"{{"local":"10.0.0.{n}","prefixlen":24,"scope":"global"}}"#))
            .collect();
        let many_addrs = format!(
            r#"[{{"ifname":"eth0","link_type":"ether","address":"02:00:00:00:00:01","mtu":1500,"addr_info":[{}]}}]"#,
            addrs.join(",")
        );
        assert!(parse_addresses(&many_addrs).is_err());
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let e = discover(Path::new("/no/such/netns"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("network namespace /no/such/netns"), "{e}");
    }
}
