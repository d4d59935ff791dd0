//! A snapshot that is a block device (an ext4 image file mounted with
//! `loop`, as containerd's blockfile snapshotter gives it; devmapper's
//! thin devices look the same) reaches the VM as its root drive: no host
//! mount, the container writes the snapshot in place. Driven through the
//! shim's task service with containerd (real, started by the test) as the
//! event sink, since containerd 1.6 has no snapshotter that makes block
//! devices on a host without device-mapper.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use husk_containerd::{CreateArgs, Mount, StdioPaths, Tasks, task_service};
use integration_tests::agent;
use integration_tests::cli::text;
use integration_tests::pod;
use integration_tests::shim::ShimEnv;

fn ext4_image(tree: &Path, img: &Path) {
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(tree)
        .arg(img)
        .arg("64M")
        .status()
        .expect("mkfs.ext4");
    assert!(st.success(), "mkfs.ext4 -d failed");
}

/// Runs task `id` of `bundle` (spec running `script`) on the ext4 image
/// `img` mounted with `options`, to its exit; returns (status, stdout,
/// stderr). `check_created` runs between create and start.
fn run_on_snapshot(
    tasks: &std::sync::Arc<Tasks>,
    dir: &Path,
    id: &str,
    script: &str,
    img: &Path,
    options: &[&str],
    check_created: impl FnOnce(),
) -> (u32, String, String) {
    let bundle = dir.join(format!("bundle-{id}"));
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let spec = pod::spec_for(&["/bin/sh", "-c", script]);
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let (out, err) = (dir.join(format!("{id}.out")), dir.join(format!("{id}.err")));
    let mount = Mount {
        type_: "ext4".into(),
        source: img.display().to_string(),
        options: options.iter().map(|o| o.to_string()).collect(),
        ..Default::default()
    };
    tasks
        .create(CreateArgs {
            id: id.into(),
            bundle: bundle.display().to_string(),
            rootfs: vec![mount],
            stdio: StdioPaths {
                stdin: String::new(),
                stdout: format!("file://{}", out.display()),
                stderr: format!("file://{}", err.display()),
                terminal: false,
            },
        })
        .unwrap_or_else(|e| panic!("create {id}: {e}"));
    check_created();
    tasks.start(id, "").expect("start");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (_, status, _) = loop {
        match tasks.delete(id, "") {
            Ok(done) => break done,
            Err(e) => {
                assert!(Instant::now() < deadline, "{id} never exited: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status, read(&out), read(&err))
}

fn debugfs_cat(img: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(img)
        .output()
        .expect("debugfs");
    text(&out.stdout)
}

#[test]
fn a_block_snapshot_is_the_vms_root_drive_written_in_place() {
    let env = ShimEnv::start("blockroot");
    // The shim reads its configuration from the environment, as under
    // containerd.
    // SAFETY: the only test of this binary; nothing else reads the
    // environment concurrently yet.
    unsafe { std::env::set_var("HUSK_CONFIG", &env.husk.config) };
    let dir = env.husk.dir.join("blk");
    std::fs::create_dir_all(&dir).unwrap();
    let tree = agent::busybox_tree(&dir);
    std::fs::write(tree.join("etc/motd"), "from the block snapshot\n").unwrap();
    let img = dir.join("snapshot.ext4");
    ext4_image(&tree, &img);
    let address = format!("{}.ttrpc", env.containerd.socket().display());
    let tasks = task_service(
        env.containerd.namespace(),
        env.husk.root.join("containerd"),
        &address,
    )
    .expect("task service");

    let (status, out, err) = run_on_snapshot(
        &tasks,
        &dir,
        "blk1",
        "cat /etc/motd; grep ' / ' /proc/mounts | cut -d' ' -f3; echo written in place > /root/note",
        &img,
        &["loop", "rw"],
        || {
            // Nothing of the snapshot is mounted on the host.
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(
                !mounts.contains(&*dir.to_string_lossy()),
                "the snapshot was mounted on the host"
            );
        },
    );
    assert_eq!(status, 0, "{err}");
    assert_eq!(out, "from the block snapshot\next4\n", "{err}");
    // Written to the snapshot itself, now that the VM is gone.
    assert_eq!(debugfs_cat(&img, "/root/note"), "written in place\n");

    // A read-only snapshot: the container writes to a layer in guest
    // memory; the snapshot stays as it was.
    let (status, out, err) = run_on_snapshot(
        &tasks,
        &dir,
        "blk2",
        "echo scratch > /root/other && cat /root/other /root/note",
        &img,
        &["loop", "ro"],
        || {},
    );
    assert_eq!(status, 0, "{err}");
    assert_eq!(out, "scratch\nwritten in place\n");
    assert_eq!(debugfs_cat(&img, "/root/other"), "");
    assert!(std::fs::read_dir(env.task_root()).unwrap().next().is_none());
}
