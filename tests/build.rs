//! Builds the test guests from `guests/guest.S`: a PVH ELF and a bzImage
//! (Linux boot protocol) around the same code. Needs the host's gcc and
//! binutils. Paths are exported as HUSK_TEST_GUEST_PVH / _BZIMAGE.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// Wraps the flat protected-mode image in a one-sector setup header.
fn bzimage(pm: &[u8], init_size: u32) -> Vec<u8> {
    const SETUP_SECTS: u8 = 1;
    let mut setup = vec![0u8; (usize::from(SETUP_SECTS) + 1) * 512];
    put(&mut setup, 0x1f1, &[SETUP_SECTS]);
    put(
        &mut setup,
        0x1f4,
        &(pm.len().div_ceil(16) as u32).to_le_bytes(),
    );
    put(&mut setup, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut setup, 0x202, b"HdrS");
    put(&mut setup, 0x206, &0x020fu16.to_le_bytes());
    put(&mut setup, 0x211, &[0x01]); // LOADED_HIGH
    put(&mut setup, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(&mut setup, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(&mut setup, 0x236, &0x0001u16.to_le_bytes()); // XLF_KERNEL_64
    put(&mut setup, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(&mut setup, 0x258, &0x10_0000u64.to_le_bytes()); // pref_address
    put(&mut setup, 0x260, &init_size.to_le_bytes());
    let mut out = setup;
    out.extend_from_slice(pm);
    out
}

fn main() {
    let src = Path::new("guests");
    println!("cargo:rerun-if-changed=guests/guest.S");
    println!("cargo:rerun-if-changed=guests/guest.ld");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let obj = out.join("guest.o");
    let elf = out.join("husk-test-guest.elf");
    let flat = out.join("husk-test-guest.flat");
    let bz = out.join("husk-test-guest.bzImage");

    run(Command::new("cc")
        .args(["-c", "-o"])
        .arg(&obj)
        .arg(src.join("guest.S")));
    run(Command::new("ld")
        .args([
            "-nostdlib",
            "-static",
            "--build-id=none",
            "-z",
            "noexecstack",
        ])
        .arg("--no-warn-rwx-segments")
        .arg("-T")
        .arg(src.join("guest.ld"))
        .arg("-o")
        .arg(&elf)
        .arg(&obj));
    run(Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&elf)
        .arg(&flat));
    let pm = std::fs::read(&flat).expect("read flat image");
    // Room for .bss (page tables and stack) past the image.
    let init_size = (pm.len() as u32 + 0x20000).next_multiple_of(4096);
    std::fs::write(&bz, bzimage(&pm, init_size)).expect("write bzImage");

    let init_obj = out.join("init.o");
    let init = out.join("husk-test-init");
    println!("cargo:rerun-if-changed=guests/init.S");
    run(Command::new("cc")
        .args(["-c", "-o"])
        .arg(&init_obj)
        .arg(src.join("init.S")));
    run(Command::new("ld")
        .args([
            "-nostdlib",
            "-static",
            "--build-id=none",
            "-z",
            "noexecstack",
            "-o",
        ])
        .arg(&init)
        .arg(&init_obj));

    // The virtio test guest: no_std Rust, linked at 1 MiB with a PVH note.
    // SSE is off: on PVM hosts every guest instruction is emulated, and the
    // emulator handles plain integer code.
    let virtio_guest = out.join("husk-virtio-guest.elf");
    // A directory: cargo reruns this script when any file in it changes.
    println!("cargo:rerun-if-changed=guests/virtio");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let link_script = std::fs::canonicalize(src.join("virtio/link.ld")).expect("link.ld");
    run(Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "--crate-type",
            "bin",
            "--crate-name",
            "husk_virtio_guest",
        ])
        .args([
            "-C",
            "panic=abort",
            "-C",
            "opt-level=2",
            "-C",
            "relocation-model=static",
        ])
        .args(["-C", "target-feature=-sse,-sse2", "-C", "debuginfo=0"])
        .args([
            "-C",
            "link-arg=-nostartfiles",
            "-C",
            "link-arg=-nostdlib",
            "-C",
            "link-arg=-static",
        ])
        .args(["-C", "link-arg=-Wl,--build-id=none,-z,noexecstack"])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", link_script.display()))
        .args(["--cap-lints", "allow", "-A", "warnings"])
        .arg(src.join("virtio/main.rs"))
        .arg("-o")
        .arg(&virtio_guest));
    println!(
        "cargo:rustc-env=HUSK_VIRTIO_GUEST={}",
        virtio_guest.display()
    );

    println!("cargo:rustc-env=HUSK_TEST_INIT={}", init.display());
    println!("cargo:rustc-env=HUSK_TEST_GUEST_PVH={}", elf.display());
    println!("cargo:rustc-env=HUSK_TEST_GUEST_BZIMAGE={}", bz.display());
}
