//! Volumes of a CRI pod, as the kubelet asks for them: two containers of
//! one pod VM mount the same host directory (an emptyDir), one read-only;
//! one gets its root file system by virtio-fs, the other as a block image
//! (annotation `io.husk.rootfs` on the pod, which containerd's
//! `pod_annotations` passes to every container of it, and on a container,
//! by `container_annotations`).

use integration_tests::cli::text;
use integration_tests::containerd::CRI_HANDLER;
use integration_tests::cri::{Cri, api, container_config, pod_config};
use integration_tests::image::IMAGE;
use integration_tests::shim::ShimEnv;

fn exec(cri: &mut Cri, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let r = cri
        .exec_sync(id, cmd, 60)
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {id}: {e}"));
    (r.exit_code, text(&r.stdout), text(&r.stderr))
}

fn wait_running(cri: &mut Cri, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = cri
            .container_status(id)
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"));
        if s.state == api::ContainerState::ContainerRunning as i32 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{id} never ran");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn volume(path: &str, host: &std::path::Path, readonly: bool) -> api::Mount {
    api::Mount {
        container_path: path.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

#[test]
fn containers_of_a_pod_share_a_volume_and_a_root_can_come_by_virtio_fs() {
    let env = ShimEnv::start_cri("vol-cri");
    let mut cri = Cri::connect(&env.containerd.socket());
    let logs = env.husk.dir.join("pod-logs");
    let vol = env.husk.dir.join("empty-dir");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&vol).unwrap();
    // Block roots in a pod need spare drives: a pod gets them when its
    // sandbox's own root is a block image.
    let mut pod_cfg = pod_config("vols", &logs);
    pod_cfg
        .annotations
        .insert("io.husk.rootfs".into(), "block".into());
    let pod = cri.run_pod(&pod_cfg, CRI_HANDLER).expect("RunPodSandbox");

    let mut writer = container_config(
        "writer",
        IMAGE,
        &[
            "sh",
            "-c",
            "echo from the writer > /shared/note; exec sleep 1000",
        ],
    );
    writer.mounts = vec![volume("/shared", &vol, false)];
    writer
        .annotations
        .insert("io.husk.rootfs".into(), "block".into());
    let mut reader = container_config("reader", IMAGE, &["sleep", "1000"]);
    reader.mounts = vec![volume("/shared", &vol, true)];
    // The pod's annotation reaches its containers too; this one asks for
    // its own.
    reader
        .annotations
        .insert("io.husk.rootfs".into(), "virtio-fs".into());
    let w = cri
        .create_container(&pod, &pod_cfg, writer)
        .expect("CreateContainer writer");
    let r = cri
        .create_container(&pod, &pod_cfg, reader)
        .expect("CreateContainer reader");
    cri.start_container(&w).expect("StartContainer writer");
    cri.start_container(&r).expect("StartContainer reader");
    wait_running(&mut cri, &w);
    wait_running(&mut cri, &r);

    // What one container writes, the other reads, and so does the host.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !vol.join("note").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never wrote"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        exec(&mut cri, &r, &["cat", "/shared/note"]),
        (0, "from the writer\n".into(), String::new())
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("note")).unwrap(),
        "from the writer\n"
    );
    std::fs::write(vol.join("from-host"), "hello pod\n").unwrap();
    assert_eq!(
        exec(&mut cri, &w, &["cat", "/shared/from-host"]).1,
        "hello pod\n"
    );
    // The reader's mount is read-only.
    let (code, _, _) = exec(&mut cri, &r, &["sh", "-c", "echo x > /shared/x"]);
    assert_ne!(code, 0);
    assert!(!vol.join("x").exists());
    // The reader's root is the image's tree shared by virtio-fs, writable;
    // the writer's is a block image under an overlay.
    let root_fs = |cri: &mut Cri, id: &str| {
        let (code, out, err) = exec(cri, id, &["sh", "-c", "grep ' / ' /proc/mounts"]);
        assert_eq!(code, 0, "{err}");
        out.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(root_fs(&mut cri, &r), "virtiofs");
    assert_eq!(root_fs(&mut cri, &w), "overlay");
    let (code, _, err) = exec(&mut cri, &r, &["sh", "-c", "echo kept > /root/file"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(exec(&mut cri, &r, &["cat", "/root/file"]).1, "kept\n");

    for id in [&w, &r] {
        cri.stop_container(id, 1).expect("StopContainer");
        cri.remove_container(id).expect("RemoveContainer");
    }
    cri.stop_pod(&pod).expect("StopPodSandbox");
    cri.remove_pod(&pod).expect("RemovePodSandbox");
    env.assert_clean();
    // The volume outlives the pod, and nothing of it stays bound.
    assert_eq!(
        std::fs::read_to_string(vol.join("note")).unwrap(),
        "from the writer\n"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = env.husk.root.display().to_string();
    let left: Vec<_> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&root))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
}
