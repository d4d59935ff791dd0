//! Container networking, host side (`husk_host::network`), on real network
//! namespaces: a veth as the CNI bridge plugin leaves it is read, a TAP is
//! joined to it with tc redirection, frames cross both ways, and removal
//! leaves the namespace as it was.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use husk_host::network;
use integration_tests::netns::VethNamespace;
use protocol::network::{IpPrefix, Route};
use vmm::devices::virtio::net::Tap;

/// The 12-byte virtio-net header the TAP's frames carry.
const VNET_HDR: usize = 12;

/// Opens TAP `name` of the namespace at `path` (from a thread that enters
/// the namespace; the descriptor works from anywhere).
fn open_tap_in(path: &std::path::Path, name: &str) -> Tap {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(path).expect("open the namespace");
            // SAFETY: setns(2) on a namespace descriptor; it changes only
            // this short-lived thread's network namespace.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            Tap::open(name).expect("open the TAP")
        })
        .join()
        .expect("tap thread")
    })
}

/// The peer interface's MAC.
fn peer_mac(v: &VethNamespace) -> [u8; 6] {
    let out = v
        .peer_command("cat")
        .arg("/sys/class/net/peer0/address")
        .output()
        .expect("read the peer's MAC");
    mac_bytes(String::from_utf8_lossy(&out.stdout).trim())
}

fn mac_bytes(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).expect("MAC");
    }
    m
}

fn ipv4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().expect("IPv4").octets()
}

#[test]
fn a_tap_joined_to_the_containers_veth_carries_its_traffic() {
    let v = VethNamespace::new("plumb");
    let path = v.path();

    // What the guest must copy.
    let cfg = network::discover(&path).expect("discover");
    assert_eq!(cfg.interfaces.len(), 1, "{cfg:?}");
    let eth = &cfg.interfaces[0];
    assert_eq!(
        (eth.name.as_str(), eth.mac.as_str(), eth.mtu),
        ("eth0", v.mac.as_str(), 1400)
    );
    assert_eq!(
        eth.addresses,
        vec![IpPrefix {
            ip: v.ip.parse().unwrap(),
            prefix_len: 24
        }]
    );
    assert_eq!(
        cfg.routes,
        vec![Route {
            destination: IpPrefix {
                ip: "0.0.0.0".parse().unwrap(),
                prefix_len: 0
            },
            gateway: Some(v.peer_ip.parse().unwrap()),
            device: "eth0".into(),
        }]
    );

    let tap = network::connect(&path, eth, 0).expect("connect");
    assert_eq!(tap.name, "husk-tap0");
    let link = v.ip_in(&["link", "show", "husk-tap0"]);
    assert!(link.contains("mtu 1400") && link.contains("UP"), "{link}");
    // The TAP is not taken for one of the container's interfaces.
    assert_eq!(network::discover(&path).expect("discover again"), cfg);

    // Peer → veth → TAP: the peer's ARP request for the container's
    // address arrives on the TAP.
    let mut t = open_tap_in(&path, "husk-tap0");
    let send = format!("echo x > /dev/udp/{}/9", v.ip);
    let _ = v.peer_command("bash").args(["-c", &send]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    let request = loop {
        match t.read_frame(&mut buf) {
            Ok(n) if n >= VNET_HDR + 42 => {
                let f = &buf[VNET_HDR..n];
                // An ARP request (opcode 1) for the container's address.
                if f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1] && f[38..42] == ipv4(&v.ip) {
                    break f.to_vec();
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("read the TAP: {e}"),
        }
        assert!(Instant::now() < deadline, "no ARP request reached the TAP");
    };
    assert_eq!(request[6..12], peer_mac(&v), "the request's source");

    // TAP → veth → peer: the reply written to the TAP teaches the peer the
    // container's MAC.
    let mine = mac_bytes(&v.mac);
    let mut reply = vec![0u8; VNET_HDR];
    reply.extend_from_slice(&request[6..12]); // to the asker
    reply.extend_from_slice(&mine);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&mine);
    reply.extend_from_slice(&ipv4(&v.ip));
    reply.extend_from_slice(&request[22..28]);
    reply.extend_from_slice(&request[28..32]);
    t.write_frame(&reply).expect("write the reply");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args(["-n", &v.peer_ns, "neigh", "show", &v.ip])
            .output()
            .expect("ip neigh");
        let neigh = String::from_utf8_lossy(&out.stdout).to_string();
        if neigh.contains(&v.mac) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the peer never learnt the MAC: {neigh}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(t);

    // Removal: the TAP and the filters go, the veth keeps its set-up.
    network::disconnect(&path, &tap).expect("disconnect");
    assert!(!v.ip_in(&["link", "show"]).contains("husk-tap0"));
    let qdiscs = Command::new("ip")
        .args(["netns", "exec", &v.ns, "tc", "qdisc", "show", "dev", "eth0"])
        .output()
        .expect("tc qdisc show");
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout).to_string();
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    assert_eq!(network::discover(&path).expect("discover after"), cfg);
    network::disconnect(&path, &tap).expect("a second disconnect");
}

#[test]
fn bad_namespaces_and_interfaces_are_named_and_leave_nothing() {
    // A namespace with loopback only: nothing to copy, no error.
    let name = format!("husk-plumb-empty-{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success()
    );
    let path = std::path::Path::new("/var/run/netns").join(&name);
    let cfg = network::discover(&path);
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    assert_eq!(
        cfg.expect("discover an empty namespace"),
        Default::default()
    );

    let e = network::discover(std::path::Path::new("/tmp"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("network namespace /tmp"), "{e}");

    // Joining a TAP to an interface that is not there fails and removes
    // the TAP it made.
    let v = VethNamespace::new("plumb-bad");
    let mut ghost = network::discover(&v.path()).unwrap().interfaces.remove(0);
    ghost.name = "ghost0".into();
    let e = network::connect(&v.path(), &ghost, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ghost0"), "{e}");
    assert!(!v.ip_in(&["link", "show"]).contains("husk-tap3"));
}
