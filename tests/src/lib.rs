//! Helpers shared by husk's integration tests and benchmarks: paths of the
//! built binaries and test guests, a husk-vmm child-process runner, the
//! host KVM check, parsing of the test guest's report, test initramfs
//! images and QEMU TCG boots of the guest kernel.

pub mod agent;
pub mod cli;
pub mod containerd;
pub mod cri;
pub mod guest;
pub mod host;
pub mod image;
pub mod initramfs;
pub mod lab;
pub mod linux;
pub mod netns;
pub mod pod;
pub mod podman;
pub mod shim;
pub mod vmm;
