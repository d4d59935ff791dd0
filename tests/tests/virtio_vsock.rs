//! virtio-vsock of husk-vmm with the hybrid Unix-socket host side, driven
//! by the virtio test guest: host-initiated connections with the CONNECT
//! handshake and checksummed echoes of several MiB, 16 concurrent
//! connections, closes mid-stream from either side, a guest-initiated
//! connection to `<uds_path>_P`, and malformed packets from the guest.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::guest::{self, fnv1a};
use integration_tests::host::{self, TempDir};
use integration_tests::vmm::wait_output;

const T: Duration = Duration::from_secs(300);

fn start(dir: &TempDir, args: &str) -> (Child, PathBuf, PathBuf) {
    host::announce(host::require_kvm());
    let uds = dir.join("v.sock");
    let console = dir.join("console.log");
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": guest::virtio(), "boot_args": format!("console=ttyS0 {args}")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "vsock": {"guest_cid": 3, "uds_path": uds},
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let child = Command::new(host::bin("husk-vmm"))
        .args(["--no-api", "--config-file"])
        .arg(&path)
        .arg("--console-out")
        .arg(&console)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, uds, console)
}

fn wait_console(console: &Path, needle: &str) -> String {
    let deadline = Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "console never showed {needle:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connects to the guest's `port` through the hybrid socket; returns the
/// stream and the host port from `OK <port>`, or None if refused.
fn connect(uds: &Path, port: u32) -> Option<(UnixStream, u32)> {
    let mut s = UnixStream::connect(uds).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    let line = String::from_utf8(line).unwrap();
    let host_port = line
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("bad answer {line:?}"));
    Some((s, host_port.parse().unwrap()))
}

fn data(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Sends `bytes` and reads the echo concurrently; returns the echo's hash.
fn echo(stream: UnixStream, bytes: Vec<u8>) -> u32 {
    let mut writer = stream.try_clone().unwrap();
    let len = bytes.len();
    let w = std::thread::spawn(move || {
        for chunk in bytes.chunks(32 * 1024) {
            writer.write_all(chunk).unwrap();
        }
    });
    let mut reader = stream;
    let mut got = vec![0u8; len];
    reader.read_exact(&mut got).unwrap();
    w.join().unwrap();
    fnv1a(&got)
}

#[test]
fn host_initiated_echo_16_connections_and_closes() {
    let dir = TempDir::new("vsock-echo");
    // 16 echo connections + one the guest resets mid-stream.
    let (child, uds, console) = start(&dir, "test=vsock-echo vsock.port=1234 vsock.conns=17");
    wait_console(&console, "vsock listening cid=3");

    // Malformed handshakes and a port nobody listens on are refused.
    let mut bad = UnixStream::connect(&uds).unwrap();
    bad.set_read_timeout(Some(T)).unwrap();
    bad.write_all(b"HELLO 1234\n").unwrap();
    let mut b = [0u8; 8];
    assert_eq!(
        bad.read(&mut b).unwrap_or(0),
        0,
        "bad handshake was answered"
    );
    assert!(
        connect(&uds, 999).is_none(),
        "connection to a closed guest port succeeded"
    );

    let mut workers = Vec::new();
    for i in 0..16u32 {
        let uds = uds.clone();
        workers.push(std::thread::spawn(move || {
            let (stream, host_port) = connect(&uds, 1234).expect("guest refused");
            assert!(host_port >= 1 << 30, "host port {host_port}");
            let size = if i == 0 { 6 << 20 } else { 128 << 10 };
            let bytes = data(size, i + 1);
            if i == 15 {
                // Closes mid-stream without reading the echo.
                let mut s = stream;
                s.write_all(&bytes[..64 << 10]).unwrap();
                return None;
            }
            let want = fnv1a(&bytes);
            let got = echo(stream, bytes);
            Some((i, want, got))
        }));
    }
    // The guest resets this one after its first data.
    let (mut reset, _) = connect(&uds, 1235).expect("reset listener refused");
    reset.write_all(b"bye?").unwrap();
    let mut rest = Vec::new();
    let _ = reset.read_to_end(&mut rest);
    assert!(rest.is_empty(), "data after a guest reset: {rest:?}");

    for w in workers {
        if let Some((i, want, got)) = w.join().unwrap() {
            assert_eq!(got, want, "connection {i}: echo differs");
        }
    }
    let text = wait_console(&console, "vsock echo done");
    let out = wait_output(child, T);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("vsock echo done conns=17"), "{text}");
    assert!(!uds.exists(), "vsock socket left behind");
}

#[test]
fn guest_initiated_connection_and_hostile_packets() {
    let dir = TempDir::new("vsock-connect");
    let listener = UnixListener::bind(dir.join("v.sock_5000")).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let mut w = s;
        let _ = w.write_all(b"hello from the host\n");
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        line
    });
    let (child, _uds, console) = start(&dir, "test=vsock-connect vsock.port=5000");
    let out = wait_output(child, T);
    let text = std::fs::read_to_string(&console).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{stderr}");
    assert!(text.contains("vsock hostile sent"), "{text}");
    assert!(text.contains("vsock connected"), "{text}");
    assert!(text.contains("vsock reply=hello from the host"), "{text}");
    assert!(text.contains("vsock rst connected=1"), "{text}");
    assert!(text.contains("vsock ghost reset"), "{text}");
    assert_eq!(server.join().unwrap(), "hello from the guest\n");
    // The malformed packets were reported, rate-limited, not fatal.
    assert!(stderr.contains("vsock"), "{stderr}");
}
