//! Throw-away network namespaces with a TAP for tests. Every test subnet is
//! guarded by an `unreachable` route in the root namespace, so nothing sent
//! to a test address can leave through the default route; all of it is
//! removed on drop.

use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Picks a namespace name for test `tag` and a free-looking /24 in
/// `10.<second>.0.0/16`, and guards that subnet with an `unreachable` route
/// in the root namespace (first, so a half-built set-up never routes
/// outside): (name, third octet, subnet).
fn guarded_subnet(tag: &str, second: u8) -> (String, u32, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = (std::process::id() + N.fetch_add(1, std::sync::atomic::Ordering::SeqCst) * 7) % 250;
    let ns = format!("husk-{tag}-{}-{n}", std::process::id());
    let subnet = format!("10.{second}.{n}.0/24");
    let _ = ip(&["route", "add", "unreachable", &subnet]);
    (ns, n, subnet)
}

/// A network namespace holding one TAP with an address.
#[derive(Debug)]
pub struct TapNamespace {
    /// Namespace name.
    pub ns: String,
    /// TAP name inside it.
    pub tap: String,
    /// The TAP's (host-side) address.
    pub host_ip: String,
    /// An address for the guest on the same /24.
    pub guest_ip: String,
    subnet: String,
}

impl TapNamespace {
    /// Creates `husk-<tag>-<pid>` with `tap0` at 10.213.<n>.1/24.
    pub fn new(tag: &str) -> TapNamespace {
        let (ns, n, subnet) = guarded_subnet(tag, 213);
        let this = TapNamespace {
            ns: ns.clone(),
            tap: "tap0".into(),
            host_ip: format!("10.213.{n}.1"),
            guest_ip: format!("10.213.{n}.2"),
            subnet,
        };
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &ns],
            vec!["-n", &ns, "link", "set", "lo", "up"],
            vec!["-n", &ns, "tuntap", "add", "dev", "tap0", "mode", "tap"],
            vec!["-n", &ns, "link", "set", "tap0", "up"],
        ];
        for s in steps {
            ip(&s).unwrap_or_else(|e| panic!("network set-up failed: {e}"));
        }
        let addr = format!("{}/24", this.host_ip);
        ip(&["-n", &ns, "addr", "add", &addr, "dev", "tap0"])
            .unwrap_or_else(|e| panic!("network set-up failed: {e}"));
        this
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// The TAP's MAC address.
    pub fn tap_mac(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "cat",
                "/sys/class/net/tap0/address",
            ])
            .output()
            .expect("read tap MAC");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A counter of the TAP from /sys/class/net/tap0/statistics.
    pub fn tap_stat(&self, name: &str) -> u64 {
        let path = format!("/sys/class/net/tap0/statistics/{name}");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "cat", &path])
            .output()
            .expect("read tap statistics");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for TapNamespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["route", "del", "unreachable", &self.subnet]);
    }
}

/// A container-like network namespace as the CNI bridge plugin leaves it:
/// `eth0` (a veth, fixed MAC, 10.214.<n>.2/24, MTU 1400, default route via
/// .1) whose peer `peer0` sits in a second namespace with 10.214.<n>.1/24.
/// The subnet is guarded in the root namespace; both namespaces go on drop.
#[derive(Debug)]
pub struct VethNamespace {
    /// The container's namespace.
    pub ns: String,
    /// The peer's namespace.
    pub peer_ns: String,
    /// The container's address.
    pub ip: String,
    /// The peer's address (the container's gateway).
    pub peer_ip: String,
    /// The container interface's MAC.
    pub mac: String,
    subnet: String,
}

impl VethNamespace {
    /// Creates the pair of namespaces for test `tag`.
    pub fn new(tag: &str) -> VethNamespace {
        let (ns, n, subnet) = guarded_subnet(tag, 214);
        let peer_ns = format!("{ns}-p");
        let this = VethNamespace {
            ns: ns.clone(),
            peer_ns: peer_ns.clone(),
            ip: format!("10.214.{n}.2"),
            peer_ip: format!("10.214.{n}.1"),
            mac: format!("02:68:75:73:6b:{n:02x}"),
            subnet,
        };
        let addr = format!("{}/24", this.ip);
        let peer_addr = format!("{}/24", this.peer_ip);
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &ns],
            vec!["netns", "add", &peer_ns],
            vec!["-n", &ns, "link", "set", "lo", "up"],
            vec![
                "-n", &ns, "link", "add", "eth0", "address", &this.mac, "mtu", "1400", "type",
                "veth", "peer", "name", "peer0", "netns", &peer_ns,
            ],
            vec!["-n", &ns, "addr", "add", &addr, "dev", "eth0"],
            vec!["-n", &ns, "link", "set", "eth0", "up"],
            vec!["-n", &ns, "route", "add", "default", "via", &this.peer_ip],
            vec!["-n", &peer_ns, "addr", "add", &peer_addr, "dev", "peer0"],
            vec!["-n", &peer_ns, "link", "set", "peer0", "mtu", "1400", "up"],
        ];
        for s in steps {
            ip(&s).unwrap_or_else(|e| panic!("network set-up failed: {e}"));
        }
        this
    }

    /// The container namespace's path.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/var/run/netns").join(&self.ns)
    }

    /// `ip -n NS ARGS` in the container's namespace; its output.
    pub fn ip_in(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.ns)
            .args(args)
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command run inside the peer's namespace.
    pub fn peer_command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.peer_ns, program]);
        c
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["netns", "del", &self.peer_ns]);
        let _ = ip(&["route", "del", "unreachable", &self.subnet]);
    }
}
