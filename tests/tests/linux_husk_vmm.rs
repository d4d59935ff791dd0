//! The husk guest kernel booted by husk-vmm. On hardware-backed KVM the
//! kernel runs a static init to completion. On PVM hosts, where the kernel
//! runs in KVM's instruction emulator, this is a smoke test of the seam
//! (boot protocol, memory map, initrd, CPU bring-up) up to `Run /init`; the
//! full Linux checks run under QEMU TCG (linux_kernel.rs).

use std::time::Duration;

use integration_tests::host::{self, HostKvm, TempDir};
use integration_tests::initramfs;
use integration_tests::linux;
use integration_tests::vmm::{config_json, run_config};

#[test]
fn linux_boots_on_husk_vmm() {
    let host = host::require_kvm();
    host::announce(host);
    if host == HostKvm::Pvm {
        eprintln!(
            "*** PVM host: Linux on husk-vmm is a smoke test to `Run /init` here (the guest \
             kernel runs in KVM's emulator, ~20 s or more); Linux behaviour is tested under QEMU TCG ***"
        );
    }
    let kernel = linux::kernel();
    let dir = TempDir::new("linux-husk");
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, initramfs::tiny_initramfs()).unwrap();
    // On PVM the emulator cannot run XSAVE/XRSTOR, POPCNT, CMPXCHG16B or
    // STAC/CLAC, and PVM's CPUID shows them whatever the VMM's CPUID table
    // says, so the guest kernel is told to leave them alone.
    let args = match host {
        HostKvm::Hardware => "console=ttyS0 reboot=k panic=-1",
        HostKvm::Pvm => {
            "console=ttyS0 reboot=k panic=-1 mitigations=off clearcpuid=xsave,popcnt,cx16,smap"
        }
    };
    let timeout = match host {
        HostKvm::Hardware => Duration::from_secs(60),
        HostKvm::Pvm => Duration::from_secs(400),
    };
    let started = std::time::Instant::now();
    let out = run_config(
        &dir,
        &config_json(&kernel, Some(&initrd), args, 1, 64),
        timeout,
    );
    let console = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "Linux on husk-vmm: exit {:?} after {:.1} s; last console lines:\n{}\nstderr: {stderr}",
        out.status.code(),
        started.elapsed().as_secs_f64(),
        console
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        console.contains("Linux version 6.1"),
        "kernel did not start:\n{console}\n{stderr}"
    );
    assert!(
        console.contains("Run /init as init process"),
        "kernel did not reach init:\n{console}\n{stderr}"
    );
    match host {
        HostKvm::Hardware => {
            assert!(console.contains("HUSK-INIT-RAN"), "{console}");
            assert_eq!(out.status.code(), Some(0), "{stderr}");
        }
        HostKvm::Pvm => {
            // User space cannot make system calls on PVM without further guest
            // changes: the VM ends with a panic or an emulation failure, but it
            // ends, with a non-zero status and a message.
            if !console.contains("HUSK-INIT-RAN") {
                assert_ne!(out.status.code(), Some(0), "{stderr}");
                assert!(!stderr.trim().is_empty(), "no message on a failed guest");
            }
        }
    }
}
