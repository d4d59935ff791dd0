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

/// The path of named network namespace `ns`.
pub fn ns_path(ns: &str) -> std::path::PathBuf {
    std::path::Path::new("/var/run/netns").join(ns)
}

/// `ip -n NS ARGS`: its standard output.
fn ip_output(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A runtime-spec fragment (for `Husk::bundle`) giving a container the
/// usual namespaces and joining the network namespace at `path`, as CNI
/// users' specs do.
pub fn joining_network(path: &std::path::Path) -> serde_json::Value {
    serde_json::json!({"linux": {"namespaces": [
        {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"},
        {"type": "network", "path": path}
    ]}})
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
        ns_path(&self.ns)
    }

    /// `ip -n NS ARGS` in the container's namespace; its output.
    pub fn ip_in(&self, args: &[&str]) -> String {
        ip_output(&self.ns, args)
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

/// A container's side of a [`BridgeNetwork`]: its namespace and what the
/// CNI bridge plugin gave it.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Namespace name.
    pub ns: String,
    /// IPv4 address.
    pub ip: String,
    /// IPv6 address.
    pub ip6: String,
    /// MAC of its `eth0`.
    pub mac: String,
}

impl Attached {
    /// The namespace's path.
    pub fn path(&self) -> std::path::PathBuf {
        ns_path(&self.ns)
    }

    /// `ip -n NS ARGS`: its output.
    pub fn ip_in(&self, args: &[&str]) -> String {
        ip_output(&self.ns, args)
    }
}

/// What CNI's bridge plugin makes, kept off the machine's own network: a
/// "host" namespace holding bridge `br0` with the gateway addresses
/// (10.215.<n>.1/24 and fd68:7573:6b:<n>::1/64), and a namespace per
/// container joined to it by a veth, addressed by host-local IPAM, with
/// default routes through the bridge. The plugin itself runs inside the
/// host namespace. Both subnets are guarded by `unreachable` routes in the
/// root namespace; everything goes on drop.
#[derive(Debug)]
pub struct BridgeNetwork {
    /// The namespace standing for the host.
    pub host_ns: String,
    /// The bridge's IPv4 address (the containers' gateway).
    pub gateway: String,
    /// The bridge's IPv6 address.
    pub gateway6: String,
    subnet: String,
    subnet6: String,
    data_dir: std::path::PathBuf,
    containers: std::sync::Mutex<Vec<String>>,
}

impl BridgeNetwork {
    /// Creates the host namespace for test `tag`.
    pub fn new(tag: &str) -> BridgeNetwork {
        let (ns, n, subnet) = guarded_subnet(tag, 215);
        let subnet6 = format!("fd68:7573:6b:{n:x}::/64");
        let _ = ip(&["-6", "route", "add", "unreachable", &subnet6]);
        let this = BridgeNetwork {
            host_ns: format!("{ns}-h"),
            gateway: format!("10.215.{n}.1"),
            gateway6: format!("fd68:7573:6b:{n:x}::1"),
            subnet,
            subnet6,
            data_dir: std::env::temp_dir().join(format!("{ns}-ipam")),
            containers: std::sync::Mutex::new(Vec::new()),
        };
        ip(&["netns", "add", &this.host_ns]).unwrap();
        ip(&["-n", &this.host_ns, "link", "set", "lo", "up"]).unwrap();
        this
    }

    fn conf(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "husk-test",
            "type": "bridge",
            "bridge": "br0",
            "isGateway": true,
            "ipMasq": false,
            "mtu": 1400,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.subnet}], [{"subnet": self.subnet6}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                "dataDir": self.data_dir,
            }
        })
        .to_string()
    }

    /// Creates namespace `<host>-<name>` and has the bridge plugin join it.
    pub fn add(&self, name: &str) -> Attached {
        let ns = format!("{}-{name}", self.host_ns);
        ip(&["netns", "add", &ns]).unwrap();
        self.containers.lock().unwrap().push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]).unwrap();
        let netns = format!("/var/run/netns/{ns}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.host_ns, "/usr/lib/cni/bridge"])
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &ns)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the CNI bridge plugin (apt-get install containernetworking-plugins)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.conf().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "bridge plugin: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value = serde_json::from_str(&text).expect("CNI result");
        let addr = |v6: bool| {
            result["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["address"].as_str())
                .map(|a| a.split('/').next().unwrap().to_string())
                .find(|a| a.contains(':') == v6)
                .unwrap_or_else(|| panic!("CNI result without an address: {text}"))
        };
        let mac = result["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["sandbox"].as_str().is_some())
            .and_then(|i| i["mac"].as_str())
            .unwrap_or_else(|| panic!("CNI result without the container's MAC: {text}"))
            .to_string();
        Attached {
            ns,
            ip: addr(false),
            ip6: addr(true),
            mac,
        }
    }

    /// A command run inside the host namespace.
    pub fn host_command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host_ns, program]);
        c
    }
}

impl Drop for BridgeNetwork {
    fn drop(&mut self) {
        for ns in self.containers.lock().unwrap().drain(..) {
            let _ = ip(&["netns", "del", &ns]);
        }
        let _ = ip(&["netns", "del", &self.host_ns]);
        let _ = ip(&["route", "del", "unreachable", &self.subnet]);
        let _ = ip(&["-6", "route", "del", "unreachable", &self.subnet6]);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// An HTTP/1.0 server answering every request with one body, listening on
/// an address inside a named network namespace (from a thread that joined
/// it) or the caller's; stops on drop.
#[derive(Debug)]
pub struct HttpServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Requests answered.
    pub served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpServer {
    /// Starts serving `body` on `addr` (`[::]:9000`) in namespace `ns`
    /// (none: the caller's).
    pub fn start(ns: Option<&str>, addr: &str, body: &str) -> HttpServer {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let path = ns.map(ns_path);
        let addr = addr.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        let body = body.to_string();
        let (stop2, served2) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            if let Some(path) = path {
                let ns = std::fs::File::open(&path).expect("open the namespace");
                // SAFETY: setns(2) on an open namespace file moves only this
                // thread, which serves nothing else.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            }
            let listener = std::net::TcpListener::bind(&addr).expect("bind");
            listener.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        use std::io::{Read, Write};
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                            .unwrap();
                        let mut req = [0u8; 1024];
                        let _ = conn.read(&mut req);
                        let _ = write!(
                            conn,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        served2.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the server did not start");
        HttpServer {
            stop,
            thread: Some(thread),
            served,
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A bridge in the root namespace as a node's CNI set-up has one:
/// `<prefix><n>` with the gateway address 10.<second>.<n>.1/24, and the CNI
/// configuration (bridge plugin, host-local IPAM from .10) that joins
/// containers to it. The subnet is guarded by an `unreachable` route of a higher
/// metric than the bridge's own, so it takes over whenever the bridge is
/// gone. Removed on drop.
#[derive(Debug)]
pub struct NodeBridge {
    /// The bridge's name.
    pub name: String,
    /// Its address (the pods' gateway).
    pub gateway: String,
    subnet: String,
    data_dir: std::path::PathBuf,
}

impl NodeBridge {
    /// Creates the bridge for test `tag`: named `<prefix><n>` (prefix of
    /// at most 9 bytes), on 10.`<second>`.`<n>`.0/24.
    pub fn new(tag: &str, prefix: &str, second: u8) -> NodeBridge {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n =
            (std::process::id() + N.fetch_add(1, std::sync::atomic::Ordering::SeqCst) * 7) % 250;
        let this = NodeBridge {
            name: format!("{prefix}{n}"),
            gateway: format!("10.{second}.{n}.1"),
            subnet: format!("10.{second}.{n}.0/24"),
            data_dir: std::env::temp_dir()
                .join(format!("husk-{tag}-{}-{n}-ipam", std::process::id())),
        };
        let _ = ip(&[
            "route",
            "add",
            "unreachable",
            &this.subnet,
            "metric",
            "4000",
        ]);
        let addr = format!("{}/24", this.gateway);
        for s in [
            vec!["link", "add", &this.name, "type", "bridge"],
            vec!["addr", "add", &addr, "dev", &this.name],
            vec!["link", "set", &this.name, "up"],
        ] {
            ip(&s).unwrap_or_else(|e| panic!("bridge set-up failed: {e}"));
        }
        this
    }

    /// The CNI network configuration list of network `name` joining
    /// containers to the bridge.
    pub fn conflist(&self, name: &str) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [{
                "type": "bridge",
                "bridge": self.name,
                "isGateway": false,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet, "rangeStart": self.subnet.replace(".0/24", ".10")}]],
                    "dataDir": self.data_dir,
                }
            }]
        })
        .to_string()
    }

    /// The interfaces joined to the bridge.
    pub fn ports(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.name])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }
}

impl Drop for NodeBridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
        let _ = ip(&[
            "route",
            "del",
            "unreachable",
            &self.subnet,
            "metric",
            "4000",
        ]);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
