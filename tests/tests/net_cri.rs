//! A CRI pod with CNI networking, the way a Kubernetes node runs one:
//! containerd's CRI plugin calls the real bridge plugin, which gives the
//! pod's namespace a veth on a node bridge and an address; the husk pod VM
//! takes that address over.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use integration_tests::cli::text;
use integration_tests::containerd::CRI_HANDLER;
use integration_tests::cri::{Cri, api, container_config, pod_config};
use integration_tests::image::IMAGE;
use integration_tests::netns::{HttpServer, NodeBridge};
use integration_tests::shim::ShimEnv;

/// `GET /` on `addr` from this (the root) namespace: the body.
fn get(addr: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

#[test]
fn a_cni_pod_gets_its_address_in_the_vm_and_serves_on_it() {
    let bridge = NodeBridge::new("cri-net", "hk-cri", 216);
    let env = ShimEnv::start_cri("net-cri");
    let cni = env.containerd.dir().join("cni");
    std::fs::write(cni.join("10-husk.conflist"), bridge.conflist("husk-test")).unwrap();
    let mut cri = Cri::connect(&env.containerd.socket());

    let logs = env.husk.dir.join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut pod_cfg = pod_config("net", &logs);
    // The pod's own network namespace, set up by CNI.
    if let Some(opts) = pod_cfg
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        opts.network = api::NamespaceMode::Pod as i32;
    }
    // The CRI plugin loads the CNI configuration when it notices the file.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pod = loop {
        match cri.run_pod(&pod_cfg, CRI_HANDLER) {
            Ok(pod) => break pod,
            Err(e) if e.message().contains("cni") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("RunPodSandbox: {e}"),
        }
    };
    let status = cri.pod_status(&pod).expect("PodSandboxStatus");
    let pod_ip = status.network.map(|n| n.ip).unwrap_or_default();
    assert!(
        pod_ip.starts_with(&bridge.gateway[..bridge.gateway.len() - 1]),
        "pod IP {pod_ip:?} is not on {}",
        bridge.name
    );
    assert_eq!(bridge.ports().len(), 1, "{:?}", bridge.ports());

    let web = cri
        .create_container(
            &pod,
            &pod_cfg,
            container_config(
                "web",
                IMAGE,
                &[
                    "sh",
                    "-c",
                    "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
                ],
            ),
        )
        .expect("CreateContainer");
    cri.start_container(&web).expect("StartContainer");

    // The guest's eth0 has the pod's address.
    let r = cri
        .exec_sync(&web, &["ip", "-o", "addr", "show", "dev", "eth0"], 60)
        .expect("ExecSync");
    assert!(
        text(&r.stdout).contains(&format!("inet {pod_ip}/24")),
        "{}{}",
        text(&r.stdout),
        text(&r.stderr)
    );

    // The node reaches the pod by its IP.
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Some(b) = get(&format!("{pod_ip}:8080")) {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "the pod never answered on {pod_ip}:8080"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(body, "hello-from-pod\n");

    // The pod reaches a server on the node's bridge address.
    let server = HttpServer::start(
        None,
        &format!("{}:9000", bridge.gateway),
        "hello-from-node\n",
    );
    let r = cri
        .exec_sync(
            &web,
            &[
                "sh",
                "-c",
                &format!(
                    "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {} 9000",
                    bridge.gateway
                ),
            ],
            60,
        )
        .expect("ExecSync");
    assert!(
        text(&r.stdout).ends_with("\r\n\r\nhello-from-node\n"),
        "{:?} {}",
        text(&r.stdout),
        text(&r.stderr)
    );
    assert_eq!(server.served.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Removing the pod: CNI takes its veth off the bridge; nothing is left.
    cri.stop_container(&web, 2).expect("StopContainer");
    cri.remove_container(&web).expect("RemoveContainer");
    cri.stop_pod(&pod).expect("StopPodSandbox");
    cri.remove_pod(&pod).expect("RemovePodSandbox");
    assert!(bridge.ports().is_empty(), "{:?}", bridge.ports());
    env.assert_clean();
}
