//! Container images for the tests, built locally (no registry): OCI image
//! layouts of a busybox-static root file system, archived for
//! `podman load` and `ctr image import`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The name the busybox image is loaded under.
pub const IMAGE: &str = "localhost/husk-busybox:latest";

/// The pod sandbox ("pause") image of the CRI tests.
pub const PAUSE_IMAGE: &str = "localhost/husk-pause:latest";

/// Builds an OCI image layout of a busybox root file system (Debian's
/// busybox-static: `/bin/busybox` and a symlink per applet, /etc/passwd and
/// /etc/group for root, `PATH=/bin`, command `sh`) in `dir` and archives it
/// as `dir/busybox-oci.tar`, which `podman load -i` accepts (the index names
/// it [`IMAGE`]); `dir/rootfs` and `dir/layout` are scratch space. Returns
/// the archive's path.
pub fn busybox_oci_archive(dir: &Path) -> PathBuf {
    build_archive(dir, &[(IMAGE, busybox_config())])
}

/// Like [`busybox_oci_archive`], with a second image on the same layer:
/// [`PAUSE_IMAGE`], a pod sandbox image whose entrypoint sleeps until it is
/// killed (what a CRI sandbox needs). For `ctr image import`.
pub fn cri_oci_archive(dir: &Path) -> PathBuf {
    let mut pause = busybox_config();
    pause["Entrypoint"] = serde_json::json!(["/bin/sleep", "2147483647"]);
    pause["Cmd"] = serde_json::Value::Null;
    build_archive(dir, &[(IMAGE, busybox_config()), (PAUSE_IMAGE, pause)])
}

/// The busybox image's run configuration.
fn busybox_config() -> serde_json::Value {
    serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"})
}

/// Writes the layout with one manifest per `(name, run configuration)`,
/// all on the busybox layer, and archives it.
fn build_archive(dir: &Path, images: &[(&str, serde_json::Value)]) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let layout = dir.join("layout");
    let _ = std::fs::remove_dir_all(&rootfs);
    let _ = std::fs::remove_dir_all(&layout);
    let blobs = layout.join("blobs/sha256");
    for d in [
        "bin", "etc", "tmp", "root", "proc", "sys", "dev", "run", "var",
    ] {
        std::fs::create_dir_all(rootfs.join(d))
            .unwrap_or_else(|e| panic!("cannot create rootfs/{d}: {e}"));
    }
    std::fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("cannot create blobs dir: {e}"));
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .unwrap_or_else(|e| panic!("cannot copy /bin/busybox (busybox-static): {e}"));
    let list = run("busybox --list", Command::new("/bin/busybox").arg("--list"));
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .unwrap_or_else(|e| panic!("cannot link applet {applet}: {e}"));
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .unwrap_or_else(|e| panic!("cannot write /etc/passwd: {e}"));
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")
        .unwrap_or_else(|e| panic!("cannot write /etc/group: {e}"));
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .unwrap_or_else(|e| panic!("cannot chmod rootfs/tmp: {e}"));

    // The layer: a reproducible tar, then gzip; the config names the
    // uncompressed digest, the manifest the compressed one.
    let layer_tar = dir.join("layer.tar");
    run(
        "tar (image layer)",
        Command::new("tar")
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
            .args(["--mtime=@0", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer_tar)
            .arg("."),
    );
    let diff_id = sha256(&layer_tar);
    run(
        "gzip (image layer)",
        Command::new("gzip").args(["-n", "-f"]).arg(&layer_tar),
    );
    let layer_gz = dir.join("layer.tar.gz");
    let hex = sha256(&layer_gz);
    let layer = descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &hex,
        &layer_gz,
    );
    std::fs::rename(&layer_gz, blobs.join(&hex))
        .unwrap_or_else(|e| panic!("cannot move the layer blob: {e}"));

    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut manifests = Vec::new();
    for (name, run_config) in images {
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": run_config,
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "husk integration tests: busybox-static"}]
        });
        let config = write_blob(&blobs, "application/vnd.oci.image.config.v1+json", &config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": [layer],
        });
        let mut manifest = write_blob(
            &blobs,
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        );
        let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
        manifest["annotations"] = serde_json::json!({
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": tag,
        });
        manifests.push(manifest);
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(layout.join("index.json"), index.to_string())
        .unwrap_or_else(|e| panic!("cannot write index.json: {e}"));
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap_or_else(|e| panic!("cannot write oci-layout: {e}"));

    let archive = dir.join("busybox-oci.tar");
    run(
        "tar (OCI archive)",
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]),
    );
    let _ = std::fs::remove_dir_all(&rootfs);
    let _ = std::fs::remove_dir_all(&layout);
    archive
}

/// Runs `cmd`, panicking with its stderr unless it succeeds.
pub(crate) fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// The hex sha256 of a file (`sha256sum`).
fn sha256(path: &Path) -> String {
    let out = run("sha256sum", Command::new("sha256sum").arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sha256sum printed nothing for {}", path.display()))
        .to_string()
}

/// An OCI descriptor of the file at `path` with the given digest.
fn descriptor(media_type: &str, hex: &str, path: &Path) -> serde_json::Value {
    let size = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
        .len();
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": size})
}

/// Stores `value` as a JSON blob and returns its descriptor.
fn write_blob(blobs: &Path, media_type: &str, value: &serde_json::Value) -> serde_json::Value {
    let tmp = blobs.join("new");
    std::fs::write(&tmp, value.to_string())
        .unwrap_or_else(|e| panic!("cannot write a {media_type} blob: {e}"));
    let hex = sha256(&tmp);
    let desc = descriptor(media_type, &hex, &tmp);
    std::fs::rename(&tmp, blobs.join(&hex))
        .unwrap_or_else(|e| panic!("cannot store the {media_type} blob: {e}"));
    desc
}
