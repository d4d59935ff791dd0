//! Container networking end to end with `husk`: namespaces prepared by the
//! real CNI bridge plugin, a VM whose interface copies the namespace's,
//! TCP both ways between containers and the "host" (a namespace holding the
//! bridge), IPv4 and IPv6, and the namespace left as it was on delete.

use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::cli::{Husk, text};
use integration_tests::netns::{Attached, BridgeNetwork, HttpServer, joining_network};

/// A container serving `word` over HTTP on port 8080 in namespace `net`.
fn serve(h: &Husk, id: &str, word: &str, net: &Attached) {
    let script =
        format!("mkdir -p /www && echo {word} > /www/index.html && exec httpd -f -p 8080 -h /www");
    let b = h.bundle(
        id,
        &["/bin/sh", "-c", &script],
        joining_network(&net.path()),
    );
    let out = h.create(&b, id, &[]);
    assert!(out.status.success(), "create {id}: {}", text(&out.stderr));
    let out = h.run(&["start", id]);
    assert!(out.status.success(), "start {id}: {}", text(&out.stderr));
}

/// `sh -c script` in container `id`: its stdout.
fn exec(h: &Husk, id: &str, script: &str) -> String {
    let out = h.run(&["exec", id, "/bin/sh", "-c", script]);
    assert!(
        out.status.success(),
        "exec {script:?} in {id}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `GET /` from `addr`:`port` inside container `id` (HTTP/1.0 through
/// `nc`): the body. Retried for a while (a neighbour a container has not
/// yet resolved may cost the first try); the last failure is reported.
fn get_in(h: &Husk, id: &str, addr: &str, port: u16) -> String {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {addr} {port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = h.run(&["exec", id, "/bin/sh", "-c", &script]);
        let reply = text(&out.stdout);
        match reply.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") => return body.to_string(),
            _ => {}
        }
        if Instant::now() > deadline {
            panic!(
                "GET {addr}:{port} in {id} ({}): {reply:?} {}",
                out.status,
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Fetches `/` from `addr` port 8080 from the host namespace (HTTP/1.0
/// through `nc`), retrying while the server starts; on failure, says what
/// the path's counters show.
fn fetch_from_host(net: &BridgeNetwork, h: &Husk, id: &str, c: &Attached, addr: &str) -> String {
    use std::io::Write;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut child = net
            .host_command("busybox")
            .args(["nc", "-w", "5", addr, "8080"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET / HTTP/1.0\r\n\r\n");
        let out = child.wait_with_output().unwrap();
        let reply = text(&out.stdout);
        if reply.starts_with("HTTP/1.") {
            return reply
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_string())
                .unwrap_or_default();
        }
        if Instant::now() > deadline {
            let run = |args: &[&str]| {
                let o = std::process::Command::new(args[0])
                    .args(&args[1..])
                    .output()
                    .unwrap();
                format!(
                    "$ {}\n{}{}",
                    args.join(" "),
                    text(&o.stdout),
                    text(&o.stderr)
                )
            };
            let guest = h.run(&[
                "exec",
                id,
                "/bin/sh",
                "-c",
                "cat /proc/net/dev; ip neigh; netstat -ltn",
            ]);
            panic!(
                "GET http://{addr}:8080/: {}\n{}{}{}guest:\n{}{}",
                text(&out.stderr),
                run(&["ip", "-n", &c.ns, "-s", "link"]),
                run(&[
                    "tc",
                    "-n",
                    &c.ns,
                    "-s",
                    "filter",
                    "show",
                    "dev",
                    "husk-tap0",
                    "ingress"
                ]),
                run(&["ip", "netns", "exec", &net.host_ns, "ip", "neigh"]),
                text(&guest.stdout),
                text(&guest.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn containers_on_a_cni_bridge_reach_the_host_and_each_other() {
    let net = BridgeNetwork::new("ctr");
    let a = net.add("a");
    let b = net.add("b");
    let h = Husk::new("net-bridge");

    // A server on the "host", on the bridge's addresses.
    let host_server = HttpServer::start(Some(&net.host_ns), "[::]:9000", "hello-from-host\n");

    serve(&h, "a", "hello-from-a", &a);
    serve(&h, "b", "hello-from-b", &b);

    // The guest's interface copies the namespace's: name, MAC, MTU,
    // addresses, default routes of both families.
    let link = exec(&h, "a", "ip -o link show eth0");
    assert!(link.contains(&a.mac), "{link}");
    assert!(link.contains("mtu 1400"), "{link}");
    let addrs = exec(&h, "a", "ip -o addr show dev eth0");
    assert!(addrs.contains(&format!("inet {}/24", a.ip)), "{addrs}");
    assert!(addrs.contains(&format!("inet6 {}/64", a.ip6)), "{addrs}");
    let routes = exec(&h, "a", "ip route; ip -6 route");
    assert!(
        routes.contains(&format!("default via {} dev eth0", net.gateway)),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("default via {} dev eth0", net.gateway6)),
        "{routes}"
    );
    // The container has no TAP of its own; the namespace's other links
    // are not the guest's.
    let links = exec(&h, "a", "ip -o link | cut -d: -f2");
    assert_eq!(
        links.split_whitespace().collect::<Vec<_>>(),
        ["lo", "eth0"],
        "{links}"
    );

    // Host → container, by the container's IPv4 and IPv6 addresses.
    assert_eq!(fetch_from_host(&net, &h, "a", &a, &a.ip), "hello-from-a\n");
    assert_eq!(fetch_from_host(&net, &h, "a", &a, &a.ip6), "hello-from-a\n");
    // Container → host.
    let got = get_in(&h, "a", &net.gateway, 9000);
    assert_eq!(got, "hello-from-host\n");
    let got = get_in(&h, "b", &net.gateway6, 9000);
    assert_eq!(got, "hello-from-host\n");
    assert_eq!(
        host_server.served.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    // Container → container across the bridge, both families.
    let got = get_in(&h, "a", &b.ip, 8080);
    assert_eq!(got, "hello-from-b\n");
    let got = get_in(&h, "b", &a.ip6, 8080);
    assert_eq!(got, "hello-from-a\n");

    // Each namespace holds one TAP joined to eth0 while the container runs.
    let before = a.ip_in(&["-o", "link"]);
    assert!(before.contains("husk-tap0"), "{before}");

    // Delete: the TAP and the filters go, the veth and its address stay.
    for id in ["a", "b"] {
        let out = h.run(&["delete", "--force", id]);
        assert!(out.status.success(), "delete {id}: {}", text(&out.stderr));
    }
    for c in [&a, &b] {
        let links = c.ip_in(&["-o", "link"]);
        assert!(!links.contains("husk-tap"), "{links}");
        assert!(links.contains("eth0"), "{links}");
        let addrs = c.ip_in(&["-o", "addr", "show", "dev", "eth0"]);
        assert!(addrs.contains(&c.ip), "{addrs}");
        let qdiscs = std::process::Command::new("tc")
            .args(["-n", &c.ns, "qdisc", "show", "dev", "eth0"])
            .output()
            .unwrap();
        assert!(
            !text(&qdiscs.stdout).contains("ingress"),
            "{}",
            text(&qdiscs.stdout)
        );
    }
}

#[test]
fn without_interfaces_the_guest_has_loopback_only() {
    let net = BridgeNetwork::new("lo");
    let empty = net.add("empty");
    // Take the plugin's veth away: a namespace with loopback only.
    assert!(
        std::process::Command::new("ip")
            .args(["-n", &empty.ns, "link", "del", "eth0"])
            .status()
            .unwrap()
            .success()
    );
    let h = Husk::new("net-lo");
    let script = "ip -o link | cut -d: -f2; ip -o addr show lo | grep -c 127.0.0.1";
    for (id, extra) in [
        // A namespace with loopback only.
        ("in-empty", joining_network(&empty.path())),
        // No namespace named: the spec's own (new, empty) one.
        ("no-netns", serde_json::json!({})),
    ] {
        let b = h.bundle(id, &["/bin/sh", "-c", script], extra);
        let out = h.run(&["run", "--bundle", b.to_str().unwrap(), id]);
        assert!(out.status.success(), "{id}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).split_whitespace().collect::<Vec<_>>(),
            ["lo", "1"],
            "{id}"
        );
        let _ = h.run(&["delete", "--force", id]);
    }
    let links = empty.ip_in(&["-o", "link"]);
    assert!(!links.contains("husk-tap"), "{links}");
}

#[test]
fn a_missing_network_namespace_is_refused_and_leaves_nothing() {
    let h = Husk::new("net-bad");
    let b = h.bundle(
        "bad",
        &["/bin/true"],
        joining_network(std::path::Path::new("/var/run/netns/husk-no-such-ns")),
    );
    let out = h.create(&b, "bad", &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("network namespace /var/run/netns/husk-no-such-ns"),
        "{err}"
    );
    assert!(h.state("bad").is_none());
    assert!(
        integration_tests::cli::processes_mentioning(&h.root).is_empty(),
        "processes left behind"
    );
}

#[test]
fn podman_containers_on_its_default_network_serve_on_their_address() {
    use integration_tests::netns::NodeBridge;
    use integration_tests::podman::Podman;
    let bridge = NodeBridge::new("podman-net", "hk-pod", 217);
    let h = Husk::new("net-podman");
    let p = Podman::new("net");
    // podman's default network, `podman`, on the test's bridge.
    std::fs::write(
        p.dir().join("net/podman.conflist"),
        bridge.conflist("podman"),
    )
    .unwrap();
    let podman = |args: &[&str]| {
        p.command()
            .arg("--runtime")
            .arg(Husk::binary())
            .arg(format!("--runtime-flag=config={}", h.config.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    };
    let image = p.image().to_string();
    // `--network bridge` is podman's default for root (the test's
    // containers.conf turns it off for the other tests).
    let out = podman(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "bridge",
        &image,
        "sh",
        "-c",
        "mkdir -p /www && echo hello-from-podman > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    assert!(out.status.success(), "podman run: {}", text(&out.stderr));
    let out = podman(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.Networks.podman.IPAddress}}",
        "web",
    ]);
    let ip = text(&out.stdout).trim().to_string();
    assert!(
        ip.starts_with(&bridge.gateway[..bridge.gateway.len() - 1]),
        "container IP {ip:?}: {}",
        text(&out.stderr)
    );
    // The host reaches the container by its address.
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        let r = std::net::TcpStream::connect_timeout(
            &format!("{ip}:8080").parse().unwrap(),
            Duration::from_secs(5),
        )
        .and_then(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        });
        match r {
            Ok(reply) if reply.starts_with("HTTP/1.") => break reply,
            _ => {
                assert!(Instant::now() < deadline, "no answer on {ip}:8080: {r:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(reply.ends_with("\r\n\r\nhello-from-podman\n"), "{reply:?}");
    // The guest's interface has the address podman's network gave.
    let out = podman(&["exec", "web", "ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        text(&out.stdout).contains(&format!("inet {ip}/24")),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = podman(&["rm", "-f", "web"]);
    assert!(out.status.success(), "podman rm: {}", text(&out.stderr));
    assert!(bridge.ports().is_empty(), "{:?}", bridge.ports());
}
