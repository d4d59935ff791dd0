//! The husk shim under containerd's CRI plugin, driven the way the kubelet
//! drives it: a CRI gRPC client on containerd's socket, runtime handler
//! `husk`. Guests are Linux under QEMU TCG.

use integration_tests::cli::text;
use integration_tests::containerd::CRI_HANDLER;
use integration_tests::cri::{Cri, api, container_config, pod_config};
use integration_tests::image::IMAGE;
use integration_tests::shim::ShimEnv;

/// Runs `cmd` in container `id` through ExecSync; panics unless the call
/// itself succeeds.
fn exec(cri: &mut Cri, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let r = cri
        .exec_sync(id, cmd, 60)
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {id}: {e}"));
    (r.exit_code, text(&r.stdout), text(&r.stderr))
}

/// Polls `check` every 100 ms until it gives a value; panics with
/// `what()` after `secs` seconds.
fn wait_for<T>(secs: u64, mut check: impl FnMut() -> Option<T>, what: impl Fn() -> String) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{}", what());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Waits until container `id` reaches `state`; returns its status.
fn wait_state(cri: &mut Cri, id: &str, state: api::ContainerState) -> api::ContainerStatus {
    wait_for(
        60,
        || {
            let s = cri
                .container_status(id)
                .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"));
            (s.state == state as i32).then_some(s)
        },
        || format!("container {id} never reached {state:?}"),
    )
}

#[test]
fn a_cri_pod_runs_its_containers_in_one_vm() {
    let env = ShimEnv::start_cri("shim-cri");
    let mut cri = Cri::connect(&env.containerd.socket());
    let version = cri.version().expect("Version");
    assert_eq!(version.runtime_name, "containerd", "{version:?}");

    let logs = env.husk.dir.join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod_cfg = pod_config("web", &logs);
    let pod = cri.run_pod(&pod_cfg, CRI_HANDLER).expect("RunPodSandbox");
    let ready = cri.pod_status(&pod).expect("PodSandboxStatus");
    assert_eq!(ready.state, api::PodSandboxState::SandboxReady as i32);
    assert_eq!(env.shim_pids(&pod).len(), 1, "one shim for the pod");

    // Two containers; b ends cleanly on SIGTERM, a ignores it.
    let a = cri
        .create_container(
            &pod,
            &pod_cfg,
            container_config(
                "a",
                IMAGE,
                &["sh", "-c", "echo hello from a; exec sleep 1000"],
            ),
        )
        .expect("CreateContainer a");
    let b = cri
        .create_container(
            &pod,
            &pod_cfg,
            container_config(
                "b",
                IMAGE,
                &[
                    "sh",
                    "-c",
                    "trap 'echo b got TERM; exit 0' TERM; echo hello from b; while :; do sleep 1; done",
                ],
            ),
        )
        .expect("CreateContainer b");
    cri.start_container(&a).expect("StartContainer a");
    cri.start_container(&b).expect("StartContainer b");
    wait_state(&mut cri, &a, api::ContainerState::ContainerRunning);
    wait_state(&mut cri, &b, api::ContainerState::ContainerRunning);
    // Still the pod's one shim: the containers joined it.
    assert!(env.shim_pids(&a).is_empty() && env.shim_pids(&b).is_empty());

    // Both containers run on one kernel, and not the host's.
    let boot_id = |cri: &mut Cri, id: &str| {
        let (code, out, err) = exec(cri, id, &["cat", "/proc/sys/kernel/random/boot_id"]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let (in_a, in_b) = (boot_id(&mut cri, &a), boot_id(&mut cri, &b));
    assert_eq!(in_a, in_b, "the containers are in different kernels");
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_ne!(in_a, host, "container a runs on the host kernel");
    // Each is its own container: own root, own processes.
    assert_eq!(exec(&mut cri, &a, &["cat", "/proc/1/comm"]).1, "sleep\n");
    assert_eq!(exec(&mut cri, &b, &["cat", "/proc/1/comm"]).1, "sh\n");
    let (code, out, _) = exec(&mut cri, &a, &["sh", "-c", "echo only-a > /tmp/mark"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(exec(&mut cri, &b, &["ls", "/tmp/mark"]).0, 1);

    // ExecSync: separate streams, exit status.
    let (code, out, err) = exec(
        &mut cri,
        &a,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));

    // Container output reaches the CRI log files.
    let log_has = |name: &str, what: &str| {
        let file = logs.join(format!("{name}.log"));
        let read = || std::fs::read_to_string(&file).unwrap_or_default();
        let found = |l: &str| l.contains(" stdout F ") && l.ends_with(what);
        wait_for(
            20,
            || read().lines().any(found).then_some(()),
            || format!("{name}.log lacks {what:?}: {:?}", read()),
        );
    };
    log_has("a", "hello from a");
    log_has("b", "hello from b");

    // ContainerStats from the guest's cgroup.
    let (_, _, _) = exec(
        &mut cri,
        &a,
        &["sh", "-c", "dd if=/dev/zero of=/dev/null bs=1M count=64"],
    );
    let stats = cri.container_stats(&a).expect("ContainerStats a");
    assert_eq!(
        stats.attributes.as_ref().map(|x| x.id.as_str()),
        Some(a.as_str())
    );
    let mem = stats.memory.expect("memory stats");
    let working_set = mem.working_set_bytes.map_or(0, |v| v.value);
    assert!(working_set > 0 && working_set < (1 << 30), "{mem:?}");
    let cpu = stats.cpu.expect("cpu stats");
    assert!(
        cpu.usage_core_nano_seconds.map_or(0, |v| v.value) > 0,
        "{cpu:?}"
    );

    // UpdateContainerResources: new limits in the guest's cgroup.
    let limits = api::LinuxContainerResources {
        memory_limit_in_bytes: 96 << 20,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        ..Default::default()
    };
    cri.update_resources(&b, limits)
        .expect("UpdateContainerResources");
    // The CRI gives no cgroup namespace: the container's cgroup is where
    // /proc/self/cgroup says.
    let cgroup_file = |cri: &mut Cri, id: &str, file: &str| {
        let script = format!("cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/{file}");
        let (code, out, err) = exec(cri, id, &["sh", "-c", &script]);
        assert_eq!(code, 0, "{file} in {id}: {err}");
        out
    };
    assert_eq!(
        cgroup_file(&mut cri, &b, "memory.max"),
        format!("{}\n", 96 << 20)
    );
    assert_eq!(cgroup_file(&mut cri, &b, "cpu.max"), "50000 100000\n");
    // a is untouched.
    assert_eq!(cgroup_file(&mut cri, &a, "memory.max"), "max\n");
    let bad = api::LinuxContainerResources {
        cpu_quota: 1000,
        cpu_period: 1,
        ..Default::default()
    };
    let e = cri
        .update_resources(&b, bad)
        .expect_err("a 1 µs CPU period");
    assert!(!e.message().is_empty(), "{e:?}");

    // StopContainer: b ends on SIGTERM, a is killed after the timeout.
    cri.stop_container(&b, 30).expect("StopContainer b");
    let s = wait_state(&mut cri, &b, api::ContainerState::ContainerExited);
    assert_eq!(s.exit_code, 0, "{s:?}");
    log_has("b", "b got TERM");
    cri.stop_container(&a, 1).expect("StopContainer a");
    let s = wait_state(&mut cri, &a, api::ContainerState::ContainerExited);
    assert_eq!(s.exit_code, 137, "{s:?}");
    cri.remove_container(&a).expect("RemoveContainer a");
    cri.remove_container(&b).expect("RemoveContainer b");
    assert!(cri.container_status(&a).is_err(), "a is still listed");
    // The pod's VM outlives its containers.
    assert_eq!(env.shim_pids(&pod).len(), 1);

    cri.stop_pod(&pod).expect("StopPodSandbox");
    let stopped = cri.pod_status(&pod).expect("PodSandboxStatus");
    assert_eq!(stopped.state, api::PodSandboxState::SandboxNotready as i32);
    cri.remove_pod(&pod).expect("RemovePodSandbox");
    assert!(cri.pod_ids().expect("ListPodSandbox").is_empty());
    env.assert_clean();
    wait_for(
        20,
        || env.shim_pids(&pod).is_empty().then_some(()),
        || "the pod's shim stayed".into(),
    );
}

#[test]
fn cri_refuses_what_it_cannot_run_and_leaves_nothing() {
    let env = ShimEnv::start_cri("shim-cri-bad");
    let mut cri = Cri::connect(&env.containerd.socket());
    let logs = env.husk.dir.join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod_cfg = pod_config("bad", &logs);

    // An unknown runtime handler.
    let e = cri
        .run_pod(&pod_cfg, "no-such-handler")
        .expect_err("unknown handler");
    assert!(e.message().contains("no-such-handler"), "{e:?}");

    let pod = cri.run_pod(&pod_cfg, CRI_HANDLER).expect("RunPodSandbox");
    // An annotation husk cannot honour: refused at create, naming it; the
    // pod goes on.
    let mut cfg = container_config("bad-annotation", IMAGE, &["true"]);
    cfg.annotations
        .insert("io.husk.rootfs".into(), "nfs".into());
    let e = cri
        .create_container(&pod, &pod_cfg, cfg)
        .and_then(|id| cri.start_container(&id).map(|()| id))
        .expect_err("an invalid rootfs delivery");
    assert!(
        e.message()
            .contains("io.husk.rootfs: \"nfs\" is not auto, block or virtio-fs"),
        "{e:?}"
    );
    // A block root in a pod that shares roots (no spare drives): refused,
    // saying how to get one.
    let mut cfg = container_config("block-root", IMAGE, &["true"]);
    cfg.annotations
        .insert("io.husk.rootfs".into(), "block".into());
    let e = cri
        .create_container(&pod, &pod_cfg, cfg)
        .and_then(|id| cri.start_container(&id).map(|()| id))
        .expect_err("a block root without spare drives");
    assert!(e.message().contains("no spare drives"), "{e:?}");
    // A command that does not exist in the image.
    let id = cri
        .create_container(
            &pod,
            &pod_cfg,
            container_config("nocmd", IMAGE, &["/no/such"]),
        )
        .and_then(|id| cri.start_container(&id).map(|()| id));
    let e = id.expect_err("a missing executable");
    assert!(e.message().contains("/no/such"), "{e:?}");
    // The pod still works.
    let ok = cri
        .create_container(
            &pod,
            &pod_cfg,
            container_config("ok", IMAGE, &["sleep", "1000"]),
        )
        .expect("CreateContainer ok");
    cri.start_container(&ok).expect("StartContainer ok");
    assert_eq!(exec(&mut cri, &ok, &["echo", "fine"]).1, "fine\n");

    // Removing the pod without stopping anything first tears it all down.
    cri.stop_pod(&pod).expect("StopPodSandbox");
    cri.remove_pod(&pod).expect("RemovePodSandbox");
    env.assert_clean();
}

#[test]
fn a_pod_whose_vm_dies_ends_its_containers_and_cleans_up() {
    let env = ShimEnv::start_cri("shim-cri-kill");
    let mut cri = Cri::connect(&env.containerd.socket());
    let logs = env.husk.dir.join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod_cfg = pod_config("doomed", &logs);
    let pod = cri.run_pod(&pod_cfg, CRI_HANDLER).expect("RunPodSandbox");
    let c = cri
        .create_container(
            &pod,
            &pod_cfg,
            container_config("c", IMAGE, &["sleep", "1000"]),
        )
        .expect("CreateContainer");
    cri.start_container(&c).expect("StartContainer");
    wait_state(&mut cri, &c, api::ContainerState::ContainerRunning);

    // The PID a husk task reports is its VMM's.
    let line = env.task_line(&pod).expect("the sandbox task");
    let vmm: i32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{vmm}/comm")).unwrap_or_default();
    let vmm_name = match integration_tests::agent::backend() {
        husk_host::hypervisor::Backend::HuskVmm => "husk-vmm",
        husk_host::hypervisor::Backend::Qemu => "qemu-system",
    };
    assert!(comm.starts_with(vmm_name), "{line}: {comm}");
    // SAFETY: kill(2) with a PID just read; no memory is involved.
    assert_eq!(unsafe { libc::kill(vmm, libc::SIGKILL) }, 0);

    // The container ends with a failure status and the pod is not ready.
    let s = wait_state(&mut cri, &c, api::ContainerState::ContainerExited);
    assert_ne!(s.exit_code, 0, "{s:?}");
    let not_ready = api::PodSandboxState::SandboxNotready as i32;
    wait_for(
        30,
        || (cri.pod_status(&pod).expect("PodSandboxStatus").state == not_ready).then_some(()),
        || "the pod stays ready".into(),
    );
    // A new container in the dead pod is refused.
    let e = cri
        .create_container(&pod, &pod_cfg, container_config("late", IMAGE, &["true"]))
        .and_then(|id| cri.start_container(&id).map(|()| id))
        .expect_err("a container in a dead pod");
    assert!(!e.message().is_empty());
    cri.stop_pod(&pod).expect("StopPodSandbox");
    cri.remove_pod(&pod).expect("RemovePodSandbox");
    env.assert_clean();
}
