//! Helpers for agent tests: a guest with a busybox root file system drive,
//! OCI specs, and running a container to completion through husk's agent
//! client.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_host::agent::{AgentClient, OutputPump};
use husk_host::hypervisor::Drive;
use husk_host::rootfs::{ImageFormat, build_image};
use protocol::{Call, ExitInfo, StdioStream, Storage, StorageSource};

use crate::agent::{self, AgentVm};
use crate::host::TempDir;
use crate::linux;

/// Boot limit under TCG.
pub const BOOT: Duration = Duration::from_secs(120);

/// Boots the agent with a busybox root file system drive (EROFS, serial
/// `rootfs`, read-only) and waits until it serves. `extra` adds files to
/// the image (path in the image, contents).
pub fn boot_with_rootfs(dir: &TempDir, extra: &[(&str, &[u8])]) -> AgentVm {
    boot_with_image(dir, extra, ImageFormat::Erofs)
}

/// As [`boot_with_rootfs`], with an image of the given format.
pub fn boot_with_image(dir: &TempDir, extra: &[(&str, &[u8])], format: ImageFormat) -> AgentVm {
    let kernel = linux::kernel();
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, agent::initramfs(&agent::binary())).unwrap();
    let tree = agent::busybox_tree(&dir.0);
    for (path, bytes) in extra {
        let p = tree.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    }
    let img = build_image(&tree, &dir.join(&format!("rootfs.{format}")), format)
        .expect("build the rootfs image");
    let drives = vec![Drive {
        id: "rootfs".into(),
        path: img.path,
        read_only: true,
    }];
    let mut vm = AgentVm::boot_with(&dir.0, &kernel, &initrd, drives);
    vm.rootfs = Some(format);
    vm.wait_console("husk-agent ready in", BOOT);
    vm
}

/// The VM's busybox image as a writable (overlay) root.
pub fn rootfs(vm: &AgentVm) -> Storage {
    Storage {
        source: StorageSource::Block {
            serial: "rootfs".into(),
        },
        fstype: vm
            .rootfs
            .expect("the VM has a rootfs drive")
            .fstype()
            .into(),
        overlay: true,
        writable: false,
    }
}

/// A runc-style spec running `args`.
pub fn spec_for(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": false},
        "mounts": default_mounts(),
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}
    })
}

/// The mounts of `runc spec`'s default config: a fresh /dev per container.
pub fn default_mounts() -> serde_json::Value {
    serde_json::json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
    ])
}

/// Merges `b` into `a` (objects key by key; anything else replaces).
pub fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A `Write` into a shared buffer.
#[derive(Clone, Debug, Default)]
pub struct Buffer(pub Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    /// The contents as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A created container's output being collected.
#[derive(Debug)]
pub struct Running {
    /// Container ID.
    pub id: String,
    out: OutputPump,
    err: OutputPump,
    /// stdout so far.
    pub stdout: Buffer,
    /// stderr so far.
    pub stderr: Buffer,
}

/// Creates container `id` running `args` (spec merged with `extra`), with
/// stdout and stderr collected; panics with the agent's error if refused.
pub fn create(
    vm: &AgentVm,
    client: &mut AgentClient,
    id: &str,
    args: &[&str],
    extra: serde_json::Value,
) -> Running {
    try_create(vm, client, id, args, extra).unwrap_or_else(|e| panic!("create {id}: {e}"))
}

/// As [`create`], returning the agent's refusal.
pub fn try_create(
    vm: &AgentVm,
    client: &mut AgentClient,
    id: &str,
    args: &[&str],
    extra: serde_json::Value,
) -> Result<Running, husk_host::agent::AgentError> {
    let out = agent::attach(vm, id, "", StdioStream::Stdout);
    let err = agent::attach(vm, id, "", StdioStream::Stderr);
    let (stdout, stderr) = (Buffer::default(), Buffer::default());
    let out = OutputPump::start(out, Box::new(stdout.clone())).unwrap();
    let err = OutputPump::start(err, Box::new(stderr.clone())).unwrap();
    let mut spec = spec_for(args);
    merge(&mut spec, extra);
    client.call_empty(Call::CreateContainer {
        id: id.into(),
        spec,
        rootfs: rootfs(vm),
    })?;
    Ok(Running {
        id: id.into(),
        out,
        err,
        stdout,
        stderr,
    })
}

impl Running {
    /// Starts the process.
    pub fn start(&self, client: &mut AgentClient) {
        client
            .call_empty(Call::StartContainer {
                id: self.id.clone(),
            })
            .unwrap_or_else(|e| panic!("start {}: {e}", self.id));
    }

    /// Waits for the exit and all the output the agent says it sent.
    pub fn wait(self, client: &mut AgentClient) -> (ExitInfo, String, String) {
        let exit = client.wait(&self.id, "").expect("wait");
        let grace = Duration::from_secs(30);
        let got_out = self.out.finish(exit.stdout_bytes, grace);
        let got_err = self.err.finish(exit.stderr_bytes, grace);
        assert_eq!(
            (got_out, got_err),
            (exit.stdout_bytes, exit.stderr_bytes),
            "output of {} incomplete",
            self.id
        );
        (exit, self.stdout.text(), self.stderr.text())
    }
}

/// Runs `args` in container `id` to completion and removes it; returns
/// (exit status, stdout, stderr).
pub fn run(
    vm: &AgentVm,
    client: &mut AgentClient,
    id: &str,
    args: &[&str],
    extra: serde_json::Value,
) -> (i32, String, String) {
    let c = create(vm, client, id, args, extra);
    c.start(client);
    let (exit, out, err) = c.wait(client);
    client
        .call_empty(Call::RemoveContainer { id: id.into() })
        .expect("remove");
    (exit.status, out, err)
}
