//! husk-jailer around husk-vmm: a jailed VMM boots its guest from files
//! bind-mounted into a root of its own, runs as an unprivileged uid with
//! no capabilities, `no_new_privs`, seccomp, its own mount and PID
//! namespaces and cgroup; SIGTERM ends it; bad input fails in one line;
//! nothing is left behind either way.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::guest;
use integration_tests::host::{self, TempDir, bin};
use integration_tests::vmm::{api_request, wait_output};

const T: Duration = Duration::from_secs(60);
const UID: u32 = 47_311;
const CGROUP_PARENT: &str = "husk-test-jail";

/// husk-vmm linked statically (a jail holds no shared libraries).
fn static_vmm() -> PathBuf {
    host::static_binary("vmm", "husk-vmm", "HUSK_VMM_STATIC")
}

/// `husk-jailer` with the arguments every test gives.
fn jailer(base: &Path, id: &str, files: &[String], vmm_args: &[&str]) -> Command {
    let mut c = Command::new(bin("husk-jailer"));
    c.args([
        "--id",
        id,
        "--uid",
        &UID.to_string(),
        "--gid",
        &UID.to_string(),
    ])
    .arg("--exec-file")
    .arg(static_vmm())
    .arg("--chroot-base-dir")
    .arg(base)
    .args(["--cgroup-parent", CGROUP_PARENT, "--pids-max", "32"]);
    for f in files {
        c.args(["--file", f]);
    }
    c.arg("--").args(vmm_args);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The cgroup directories a jail with `id` would have.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        vec![root.join(CGROUP_PARENT).join(id)]
    } else {
        ["cpu", "memory", "pids"]
            .iter()
            .map(|c| root.join(c).join(CGROUP_PARENT).join(id))
            .collect()
    }
}

fn assert_nothing_left(base: &Path, id: &str) {
    let jail = base.join("husk-vmm").join(id);
    assert!(!jail.exists(), "{} was left behind", jail.display());
    for dir in cgroup_dirs(id) {
        assert!(!dir.exists(), "cgroup {} was left behind", dir.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&base.display().to_string()),
        "a mount under {} was left behind",
        base.display()
    );
}

#[test]
fn a_jailed_vmm_boots_its_guest_from_the_files_it_was_given() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("jail-boot");
    let base = dir.join("jails");
    let initrd = dir.join("initrd.img");
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&initrd, &bytes).unwrap();
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "boot-source": {"kernel_image_path": "/boot/guest", "initrd_path": "/boot/initrd",
                            "boot_args": "console=ttyS0 action=reset"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        })
        .to_string(),
    )
    .unwrap();
    let id = format!("boot-{}", std::process::id());
    let files = [
        format!("{}:/boot/guest", guest::pvh().display()),
        format!("{}:/boot/initrd", initrd.display()),
        format!("{}:/vm.json", config.display()),
    ];
    let child = jailer(
        &base,
        &id,
        &files,
        &["--no-api", "--config-file", "/vm.json"],
    )
    .spawn()
    .expect("spawn husk-jailer");
    let out = wait_output(child, T);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report = guest::parse(&stdout);
    assert_eq!(
        (report.initrd.1, report.initrd.2),
        (bytes.len() as u64, guest::fnv1a(&bytes)),
        "{stdout}"
    );
    assert_nothing_left(&base, &id);
}

/// A running jailer, ended with SIGTERM (which it passes on to the VMM
/// before removing the jail) if a failed assertion leaves it running.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// The jailer's child: the VMM (the jailer's only child).
fn vmm_pid(jailer: &Child) -> u32 {
    let deadline = Instant::now() + T;
    loop {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", jailer.id()))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the jailer started no VMM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[test]
fn the_jailed_vmm_is_confined_and_sigterm_ends_it() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("jail-confined");
    let base = dir.join("jails");
    let id = format!("confined-{}", std::process::id());
    let files = [format!("{}:/guest", guest::pvh().display())];
    let child = jailer(
        &base,
        &id,
        &files,
        &[
            "--api-sock",
            "/run/api.sock",
            "--console-out",
            "/run/console.log",
        ],
    )
    .spawn()
    .expect("spawn husk-jailer");
    let mut running = Running(Some(child));
    let root = base.join("husk-vmm").join(&id).join("root");
    let sock = root.join("run/api.sock");
    let deadline = Instant::now() + T;
    while !sock.exists() {
        let child = running.0.as_mut().expect("the jailer");
        if let Ok(Some(status)) = child.try_wait() {
            let out = running
                .0
                .take()
                .expect("the jailer")
                .wait_with_output()
                .unwrap();
            panic!(
                "the jailer ended ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "no API socket in the jail");
        std::thread::sleep(Duration::from_millis(10));
    }
    for (path, body) in [
        ("/machine-config", r#"{"vcpu_count":1,"mem_size_mib":32}"#),
        (
            "/boot-source",
            r#"{"kernel_image_path":"/guest","boot_args":"action=ticks"}"#,
        ),
        ("/actions", r#"{"action_type":"InstanceStart"}"#),
    ] {
        let r = api_request(&sock, "PUT", path, Some(body));
        assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
    }
    let console = root.join("run/console.log");
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("tick 2")
    {
        assert!(Instant::now() < deadline, "the jailed guest does not tick");
        std::thread::sleep(Duration::from_millis(20));
    }

    let pid = vmm_pid(running.0.as_ref().expect("the jailer"));
    let ids = format!("{UID}\t{UID}\t{UID}\t{UID}");
    assert_eq!(status_field(pid, "Uid:"), ids);
    assert_eq!(status_field(pid, "Gid:"), ids);
    assert_eq!(status_field(pid, "Groups:"), "");
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    // The VMM is its own PID namespace's init, in a mount namespace of
    // its own, and its root holds the VM's files and nothing else.
    assert_eq!(
        status_field(pid, "NSpid:").split_whitespace().last(),
        Some("1")
    );
    for ns in ["mnt", "pid"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace shared with the host");
    }
    let mut seen: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    assert_eq!(seen, ["dev", "guest", "husk-vmm", "run"]);
    let mut devs: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    devs.sort();
    assert_eq!(devs, ["kvm", "net"]);
    // Sockets: 0600 in a 0700 directory, the jail's uid's.
    let run = std::fs::metadata(root.join("run")).unwrap();
    assert_eq!((run.mode() & 0o777, run.uid()), (0o700, UID));
    let api = std::fs::metadata(&sock).unwrap();
    assert_eq!((api.mode() & 0o777, api.uid()), (0o600, UID));
    // The guest's file is read-only in the jail.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let guest_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/guest"))
        .unwrap_or_else(|| panic!("no /guest mount:\n{mounts}"));
    assert!(
        guest_mount.split(' ').nth(5).unwrap().starts_with("ro"),
        "{guest_mount}"
    );
    // Its cgroup, with the limit given.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&format!("/{CGROUP_PARENT}/{id}")),
        "{cgroup}"
    );
    let pids_dir = cgroup_dirs(&id)
        .into_iter()
        .find(|d| d.join("pids.max").exists())
        .expect("a pids cgroup");
    assert_eq!(
        std::fs::read_to_string(pids_dir.join("pids.max"))
            .unwrap()
            .trim(),
        "32"
    );

    // SIGTERM to the jailer ends the VMM; the jailer reports the signal.
    let child = running.0.take().expect("the jailer");
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = wait_output(child, T);
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGKILL),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the VMM outlived its jailer"
    );
    assert_nothing_left(&base, &id);
}

#[test]
fn the_vmms_own_failure_passes_through_and_the_jail_goes() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("jail-fail");
    let base = dir.join("jails");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        r#"{"boot-source":{"kernel_image_path":"/not-in-the-jail"},"machine-config":{"vcpu_count":1,"mem_size_mib":32}}"#,
    )
    .unwrap();
    let id = format!("fail-{}", std::process::id());
    let files = [format!("{}:/vm.json", config.display())];
    let out = wait_output(
        jailer(
            &base,
            &id,
            &files,
            &["--no-api", "--config-file", "/vm.json"],
        )
        .spawn()
        .unwrap(),
        T,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert_ne!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("/not-in-the-jail"), "{stderr}");
    assert_nothing_left(&base, &id);
}

#[test]
fn bad_input_fails_in_one_line_and_leaves_nothing() {
    let dir = TempDir::new("jail-bad");
    let base = dir.join("jails");
    let secret = dir.join("secret");
    std::fs::write(&secret, "x").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let readable = dir.join("readable");
    std::fs::write(&readable, "x").unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = readable.display();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--uid".into(), "0".into()], "must not run as root"),
        (vec!["--id".into(), "a/b".into()], "--id \"a/b\""),
        (
            vec!["--file".into(), "/nonexistent/kernel".into()],
            "/nonexistent/kernel",
        ),
        (
            vec!["--file".into(), secret.display().to_string()],
            "not readable by uid",
        ),
        (
            vec!["--rw-file".into(), r.to_string()],
            "not writable by uid",
        ),
        (
            vec!["--file".into(), format!("{r}:/dev/kvm")],
            "outside /dev",
        ),
        (
            vec!["--file".into(), format!("{r}:relative")],
            "absolute path",
        ),
        (
            vec!["--exec-file".into(), bin("husk-vmm").display().to_string()],
            "dynamically linked",
        ),
        (vec!["--cpus".into(), "0".into()], "--cpus 0"),
        (
            vec!["--netns".into(), "/var/run/netns/husk-no-such-ns".into()],
            "husk-no-such-ns",
        ),
    ];
    for (i, (extra, says)) in cases.iter().enumerate() {
        let id = format!("bad-{}-{i}", std::process::id());
        let mut c = Command::new(bin("husk-jailer"));
        c.args(["--id", &id, "--uid", "47311", "--gid", "47311"])
            .arg("--exec-file")
            .arg(static_vmm())
            .arg("--chroot-base-dir")
            .arg(&base)
            .args(["--cgroup-parent", CGROUP_PARENT]);
        // A later flag overrides the one above (clap keeps the last value).
        c.args(extra).args(["--", "--no-api"]);
        let out = c.output().expect("run husk-jailer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{extra:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{extra:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{extra:?}: want {says:?} in {stderr}"
        );
        assert_nothing_left(&base, &id);
    }
}
