//! Shared file systems through the `husk` CLI: host directories bound into
//! a container by virtio-fs (QEMU's vhost-user-fs device and virtiofsd on
//! hosts without hardware-backed KVM), read-write and read-only, data that
//! outlives the container, and a root file system shared in place.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::cli::{Husk, processes_mentioning, text};

/// The mount points at or below `dir` in the host's mount table.
fn mounts_below(dir: &Path) -> Vec<String> {
    let below = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&below))
        .map(str::to_string)
        .collect()
}

/// Whatever is below `dir` other than directories.
fn files_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            found.extend(files_below(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

/// SHA-256 of a host file, by coreutils.
fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `husk run` of `bundle` as `id`, its output piped, not waited for.
fn run_in_background(h: &Husk, bundle: &Path, id: &str) -> std::process::Child {
    h.command(&["run", "--bundle", bundle.to_str().unwrap(), id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn bind(dest: &str, source: &Path, options: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "destination": dest, "type": "bind", "source": source, "options": options
    })
}

#[test]
fn bind_mounts_share_host_directories_both_ways_and_read_only_is_enforced() {
    let h = Husk::new("vol-bind");
    let data = h.dir.join("data");
    let config = h.dir.join("config");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(data.join("in"), "from the host\n").unwrap();
    std::fs::write(config.join("setting"), "colour=blue\n").unwrap();
    let script = "cat /data/in; echo from the guest > /data/out; \
                  mkdir /data/sub && echo deep > /data/sub/file; \
                  cat /config/setting; \
                  if echo x > /config/new 2>/dev/null; then echo WRITABLE; else echo read-only; fi; \
                  if rm /config/setting 2>/dev/null; then echo REMOVED; fi";
    let b = h.bundle(
        "b",
        &["/bin/sh", "-c", script],
        serde_json::json!({"mounts": [
            bind("/data", &data, &["rbind", "rw"]),
            bind("/config", &config, &["rbind", "ro"]),
        ]}),
    );
    let out = h.run(&["run", "--bundle", b.to_str().unwrap(), "v1"]);
    assert_eq!(
        text(&out.stdout),
        "from the host\ncolour=blue\nread-only\n",
        "{}",
        text(&out.stderr)
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap(),
        "from the guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("sub/file")).unwrap(),
        "deep\n"
    );
    assert!(!config.join("new").exists());
    assert!(config.join("setting").exists());
    // Nothing stays bound, running or on disk once the container is gone.
    assert_eq!(mounts_below(&h.root), Vec::<String>::new());
    assert_eq!(processes_mentioning(&h.root), Vec::<String>::new());
    assert_eq!(files_below(&h.root), Vec::<String>::new());
}

#[test]
fn volume_data_persists_byte_exact_and_fsync_reaches_the_host() {
    let h = Husk::new("vol-persist");
    let vol = h.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    // A writer that fsyncs, prints the checksum and stays up until killed
    // with its VM: what it synced must be on the host already.
    let writer = h.bundle(
        "w",
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/urandom of=/vol/blob bs=64k count=40 conv=fsync 2>/dev/null && \
             sha256sum /vol/blob && exec sleep 1000",
        ],
        serde_json::json!({"mounts": [bind("/vol", &vol, &["rbind"])]}),
    );
    let mut child = run_in_background(&h, &writer, "w1");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let guest_sum = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(guest_sum.len(), 64, "writer printed {line:?}");
    // Kill the VM with the container in it.
    let out = h.run(&["delete", "--force", "w1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        std::fs::metadata(vol.join("blob")).unwrap().len(),
        40 * 65536
    );
    assert_eq!(sha256(&vol.join("blob")), guest_sum);
    // The next container that mounts the volume reads the same bytes.
    let reader = h.bundle(
        "r",
        &["/bin/sh", "-c", "sha256sum /vol/blob"],
        serde_json::json!({"mounts": [bind("/vol", &vol, &["rbind", "ro"])]}),
    );
    let out = h.run(&["run", "--bundle", reader.to_str().unwrap(), "r1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).split_whitespace().next(),
        Some(guest_sum.as_str())
    );
    assert_eq!(mounts_below(&h.root), Vec::<String>::new());
}

#[test]
fn changes_on_the_host_reach_a_running_container() {
    let h = Husk::new("vol-live");
    let vol = h.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let b = h.bundle(
        "b",
        &[
            "/bin/sh",
            "-c",
            "while [ ! -e /vol/ready ]; do sleep 0.1; done; cat /vol/ready",
        ],
        serde_json::json!({"mounts": [bind("/vol", &vol, &["rbind"])]}),
    );
    let child = run_in_background(&h, &b, "l1");
    // Once the container runs, a file appears on the host.
    let start = Instant::now();
    while h.state("l1").is_none_or(|s| s["status"] != "running") {
        assert!(start.elapsed() < Duration::from_secs(120), "never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Written aside and renamed: the container must not see the file
    // before its content.
    std::fs::write(vol.join("ready.tmp"), "now\n").unwrap();
    std::fs::rename(vol.join("ready.tmp"), vol.join("ready")).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "now\n", "{}", text(&out.stderr));
}

#[test]
fn a_root_file_system_shared_by_virtio_fs_is_written_in_place() {
    let h = Husk::new("vol-rootfs");
    let b = h.bundle(
        "b",
        &[
            "/bin/sh",
            "-c",
            "echo made in the guest > /root/note; ls /bin/busybox; cat /etc/group",
        ],
        serde_json::json!({"annotations": {"io.husk.rootfs": "virtio-fs"}}),
    );
    let out = h.run(&["run", "--bundle", b.to_str().unwrap(), "s1"]);
    assert_eq!(
        text(&out.stdout),
        "/bin/busybox\nroot:x:0:\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(b.join("rootfs/root/note")).unwrap(),
        "made in the guest\n"
    );
    assert_eq!(mounts_below(&h.root), Vec::<String>::new());
    // A read-only root stays read-only.
    let b = h.bundle(
        "ro",
        &[
            "/bin/sh",
            "-c",
            "if echo x > /root/other 2>/dev/null; then echo WRITABLE; else echo read-only; fi",
        ],
        serde_json::json!({
            "annotations": {"io.husk.rootfs": "virtio-fs"},
            "root": {"path": "rootfs", "readonly": true}
        }),
    );
    let out = h.run(&["run", "--bundle", b.to_str().unwrap(), "s2"]);
    assert_eq!(text(&out.stdout), "read-only\n", "{}", text(&out.stderr));
    assert!(!b.join("rootfs/root/other").exists());
}

#[test]
fn a_missing_source_is_refused_in_one_line_leaving_nothing() {
    let h = Husk::new("vol-bad");
    let b = h.bundle(
        "b",
        &["/bin/true"],
        serde_json::json!({"mounts": [bind("/data", &h.dir.join("nothere"), &["rbind"])]}),
    );
    let out = h.run(&["run", "--bundle", b.to_str().unwrap(), "m1"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("mount /data: source"), "{err}");
    assert!(h.state("m1").is_none());
    assert_eq!(mounts_below(&h.root), Vec::<String>::new());
}

/// Files below `dir` that hold `needle`, not crossing mount points.
fn files_holding(dir: &Path, needle: &[u8], mount_points: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if mount_points.contains(&path.display().to_string()) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_holding(&path, needle, mount_points));
        } else if meta.is_file()
            && std::fs::read(&path).is_ok_and(|d| d.windows(needle.len()).any(|w| w == needle))
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn secrets_are_bound_never_copied_to_host_disk() {
    let h = Husk::new("vol-secret");
    let secrets = h.dir.join("secret-volume");
    std::fs::create_dir_all(&secrets).unwrap();
    let token = format!(
        "token-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    std::fs::write(secrets.join("token"), &token).unwrap();
    let single = h.dir.join("single-secret");
    std::fs::write(&single, &token).unwrap();
    let b = h.bundle(
        "b",
        &[
            "/bin/sh",
            "-c",
            "cat /run/secrets/token; echo; cat /etc/single; echo; exec sleep 1000",
        ],
        serde_json::json!({"mounts": [
            bind("/run/secrets", &secrets, &["rbind", "ro"]),
            bind("/etc/single", &single, &["rbind", "ro"]),
        ]}),
    );
    let mut child = run_in_background(&h, &b, "k1");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        assert_eq!(lines.next().unwrap().unwrap(), token);
    }
    // While it runs, the token is on host disk only where the test put it.
    let points = mounts_below(h.dir.join("").as_path());
    let mut holding = files_holding(&h.dir.join(""), token.as_bytes(), &points);
    holding.sort();
    assert_eq!(
        holding,
        vec![
            secrets.join("token").display().to_string(),
            single.display().to_string()
        ]
    );
    let out = h.run(&["delete", "--force", "k1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mounts_below(&h.root), Vec::<String>::new());
}

#[test]
fn a_missing_virtiofsd_fails_in_one_line_leaving_nothing() {
    let h = Husk::new("vol-nodaemon");
    let data = h.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let b = h.bundle(
        "b",
        &["/bin/true"],
        serde_json::json!({"mounts": [bind("/data", &data, &["rbind"])]}),
    );
    let out = h
        .command(&["run", "--bundle", b.to_str().unwrap(), "n1"])
        .env("HUSK_VIRTIOFSD", "/nonexistent/virtiofsd")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("virtiofsd"), "{err}");
    assert!(h.state("n1").is_none());
    assert_eq!(mounts_below(&h.root), Vec::<String>::new());
    assert_eq!(processes_mentioning(&h.root), Vec::<String>::new());
    assert_eq!(files_below(&h.root), Vec::<String>::new());
}
