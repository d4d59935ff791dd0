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

use integration_tests::agent;
use integration_tests::cli::text;
use integration_tests::pod;
use integration_tests::shim::ShimEnv;
use shim::containerd::{CreateArgs, Mount, StdioPaths, task_service};

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
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let spec = pod::spec_for(&[
        "/bin/sh",
        "-c",
        "cat /etc/motd; grep ' / ' /proc/mounts | cut -d' ' -f3; echo written in place > /root/note",
    ]);
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let out = dir.join("stdout");

    let address = format!("{}.ttrpc", env.containerd.socket().display());
    let tasks = task_service(
        env.containerd.namespace(),
        env.husk.root.join("containerd"),
        &address,
    )
    .expect("task service");
    let mount = Mount {
        type_: "ext4".into(),
        source: img.display().to_string(),
        options: vec!["loop".into(), "rw".into()],
        ..Default::default()
    };
    tasks
        .create(CreateArgs {
            id: "blk1".into(),
            bundle: bundle.display().to_string(),
            rootfs: vec![mount],
            stdio: StdioPaths {
                stdin: String::new(),
                stdout: format!("file://{}", out.display()),
                stderr: format!("file://{}", dir.join("stderr").display()),
                terminal: false,
            },
        })
        .expect("create");
    // Nothing of the snapshot is mounted on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*bundle.to_string_lossy()),
        "the snapshot was mounted on the host"
    );
    tasks.start("blk1", "").expect("start");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (_, status, _) = loop {
        match tasks.delete("blk1", "") {
            Ok(done) => break done,
            Err(e) => {
                assert!(Instant::now() < deadline, "never exited: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "from the block snapshot\next4\n",
        "{stderr}"
    );
    // Written to the snapshot itself, now that the VM is gone.
    assert_eq!(debugfs_cat(&img, "/root/note"), "written in place\n");

    // A read-only snapshot: the container writes to a layer in guest
    // memory; the snapshot stays as it was.
    let spec = pod::spec_for(&[
        "/bin/sh",
        "-c",
        "echo scratch > /root/other && cat /root/other /root/note",
    ]);
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let out2 = dir.join("stdout2");
    tasks
        .create(CreateArgs {
            id: "blk2".into(),
            bundle: bundle.display().to_string(),
            rootfs: vec![Mount {
                type_: "ext4".into(),
                source: img.display().to_string(),
                options: vec!["loop".into(), "ro".into()],
                ..Default::default()
            }],
            stdio: StdioPaths {
                stdin: String::new(),
                stdout: format!("file://{}", out2.display()),
                stderr: format!("file://{}", dir.join("stderr2").display()),
                terminal: false,
            },
        })
        .expect("create a task on a read-only snapshot");
    tasks.start("blk2", "").expect("start");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (_, status, _) = loop {
        match tasks.delete("blk2", "") {
            Ok(done) => break done,
            Err(e) => {
                assert!(Instant::now() < deadline, "never exited: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(status, 0);
    assert_eq!(
        std::fs::read_to_string(&out2).unwrap(),
        "scratch\nwritten in place\n"
    );
    assert_eq!(debugfs_cat(&img, "/root/other"), "");
    assert!(std::fs::read_dir(env.task_root()).unwrap().next().is_none());
}
