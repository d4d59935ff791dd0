//! Turns a validated [`VmConfig`] into a live [`Vm`] (privileged set-up:
//! /dev/kvm, guest memory, host files, TAPs and sockets are opened here,
//! before any guest code runs). This is the one place
//! that knows the construction order (see docs/DESIGN.md, "Boot steps"):
//!
//! 1. open /dev/kvm, create the VM with its irqchip and PIT, deny the
//!    guest the PMU MSRs;
//! 2. allocate guest RAM and register it with KVM;
//! 3. load the kernel and initrd, write the command line and boot information;
//! 4. write the MP table;
//! 5. create the legacy devices (COM1, i8042) and wire their interrupts;
//! 6. create and configure the vCPUs (CPUID, MSRs, registers, LAPIC);
//! 7. start the vCPU threads paused; the caller resumes them.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::{cpuid, mptable, regs};
use crate::boot::{self, BootError};
use crate::config::{ConfigError, VmConfig};
use crate::device_manager::{DeviceHandle, DeviceManagerError, MmioDeviceManager};
use crate::devices::legacy::EventFdTrigger;
use crate::devices::legacy::i8042::{self, I8042Device};
use crate::devices::legacy::serial::{self, ConsoleOut, ConsoleSink, SerialDevice};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::rng::{Rng, RngError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::{Bus, BusError};
use crate::vstate::exit::ExitSignal;
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::microvm::{Vm, VmRunState};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{self, HostKvm, VmError};

/// Errors while building the VM. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Creating the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the guest failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The MP table failed.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// Setting up registers failed.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// Registering a device failed.
    #[error("cannot register device: {0}")]
    Bus(#[from] BusError),
    /// Creating or starting a vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A virtio device could not be placed.
    #[error(transparent)]
    DeviceManager(#[from] DeviceManagerError),
    /// A block device could not be opened.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A network device could not be created.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The vsock device could not be created.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// The entropy device could not be created.
    #[error(transparent)]
    Rng(#[from] RngError),
    /// A virtio-fs device could not reach its back end.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A vCPU ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// Joins the memory registration thread, also when the build fails early
/// (guest memory must not be unmapped while KVM may still be using it).
struct JoinGuard(Option<std::thread::JoinHandle<Result<(), MemoryError>>>);

impl JoinGuard {
    fn join(mut self) -> Result<(), MemoryError> {
        self.0.take().map_or(Ok(()), |h| {
            h.join().unwrap_or_else(|_| {
                Err(MemoryError::Allocate {
                    size_mib: 0,
                    reason: "memory registration thread panicked".into(),
                })
            })
        })
    }
}

impl Drop for JoinGuard {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// Creates the configured virtio devices: drives (the root drive first, so
/// that it is `/dev/vda`), network interfaces, vsock, the entropy device,
/// then the virtio-fs devices.
fn attach_virtio_devices(
    config: &VmConfig,
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    bus: &mut Bus,
    cmdline: &mut linux_loader::cmdline::Cmdline,
    manager: &mut MmioDeviceManager,
) -> Result<(), BuildError> {
    let mut drives: Vec<_> = config.drives.iter().collect();
    drives.sort_by_key(|d| !d.is_root_device);
    if let Some(root) = drives.first().filter(|d| d.is_root_device) {
        let args = config
            .boot_source
            .as_ref()
            .map(|b| b.boot_args())
            .unwrap_or_default();
        if !args.split_whitespace().any(|a| a.starts_with("root=")) {
            let root_arg = match &root.partuuid {
                Some(uuid) => format!("root=PARTUUID={uuid}"),
                None => "root=/dev/vda".to_string(),
            };
            let mode = if root.is_read_only { "ro" } else { "rw" };
            cmdline
                .insert_str(format!("{root_arg} {mode}"))
                .map_err(|e| BootError::Cmdline(e.to_string()))?;
        }
    }
    let mut add = |id: &str, device| manager.add(vm_fd, mem, bus, cmdline, id, device);
    for d in drives {
        let block = Block::new(d)?;
        add(
            &d.drive_id,
            DeviceHandle::Block(Arc::new(Mutex::new(block))),
        )?;
    }
    for n in &config.network_interfaces {
        let net = Net::new(n)?;
        add(&n.iface_id, DeviceHandle::Net(Arc::new(Mutex::new(net))))?;
    }
    if let Some(v) = &config.vsock {
        let vsock = Vsock::new(v.guest_cid, &v.uds_path)?;
        add("vsock", DeviceHandle::Vsock(Arc::new(Mutex::new(vsock))))?;
    }
    if config.entropy.is_some() {
        add(
            "entropy",
            DeviceHandle::Rng(Arc::new(Mutex::new(Rng::new()?))),
        )?;
    }
    for f in &config.fs {
        let fs = Fs::new(&f.tag, &f.socket)?;
        add(&f.tag, DeviceHandle::Fs(Arc::new(Mutex::new(fs))))?;
    }
    Ok(())
}

const LAPIC_LVT_LINT0: usize = 0x350;
const LAPIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn set_lapic_lint(vcpu: &kvm_ioctls::VcpuFd) -> Result<(), BuildError> {
    let kvm = |what| move |source| BuildError::Kvm { what, source };
    let mut lapic = vcpu.get_lapic().map_err(kvm("read the local APIC"))?;
    let set_mode = |regs: &mut [libc::c_char], off: usize, mode: u32| {
        let mut bytes = [0u8; 4];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = regs[off + i] as u8;
        }
        let val = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in val.to_le_bytes().iter().enumerate() {
            regs[off + i] = *b as libc::c_char;
        }
    };
    set_mode(&mut lapic.regs, LAPIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_mode(&mut lapic.regs, LAPIC_LVT_LINT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("write the local APIC"))
}

/// Builds the VM described by `config`, writing its console to `console`.
/// On return the vCPU threads exist and are paused.
pub fn build_microvm(config: &VmConfig, console: ConsoleSink) -> Result<Vm, BuildError> {
    config.validate(crate::config::host_mem_mib())?;
    let boot_source = config
        .boot_source
        .as_ref()
        .ok_or(ConfigError::MissingBootSource)?;
    let machine = &config.machine_config;
    let vcpu_count = machine.vcpu_count as u8;
    let host = HostKvm::detect();

    // 1. KVM and the VM.
    let kvm = vm::open_kvm()?;
    let vm_fd = Arc::new(vm::create_vm(&kvm)?);
    vm::hide_pmu_msrs(&kvm, &vm_fd)?;

    // 2. Guest memory.
    // vhost-user back ends map guest memory: it must be a shared memfd.
    let mem = memory::create_guest_memory(machine.mem_size_bytes(), !config.fs.is_empty())?;
    // SAFETY: `mem` is kept alive as long as the VM: it is joined below before
    // any use, and moved into the returned `Vm` next to the VM fd; on an
    // early error return the thread is joined by `JoinGuard` first.
    let registration = JoinGuard(Some(unsafe {
        memory::register_with_kvm_in_background(vm_fd.clone(), memory::kvm_regions(&mem))
    }));

    // 3. Kernel, initrd, command line, boot information.
    let (loaded, entry) = boot::load_kernel(&mem, &boot_source.kernel_image_path)?;
    let initrd = match &boot_source.initrd_path {
        Some(p) => Some(boot::load_initrd(&mem, p, loaded.kernel_end)?),
        None => None,
    };
    let mut cmdline = boot::build_cmdline(boot_source.boot_args())?;

    // Devices on the MMIO bus, declared on the command line.
    let mut mmio = Bus::new();
    let mut device_manager = MmioDeviceManager::new();
    attach_virtio_devices(
        config,
        &vm_fd,
        &mem,
        &mut mmio,
        &mut cmdline,
        &mut device_manager,
    )?;
    boot::configure_boot(&mem, entry, &loaded, &cmdline, initrd)?;

    // 4. MP table.
    mptable::setup_mptable(&mem, vcpu_count)?;

    // 5. Legacy devices.
    let exit = Arc::new(ExitSignal::new().map_err(BuildError::EventFd)?);
    let panicked = Arc::new(AtomicBool::new(false));
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger(vm::irq_line(&vm_fd, serial::COM1_IRQ)?),
        ConsoleOut::new(console, panicked.clone(), exit.clone()),
    )));
    // The i8042 reports a CPU reset to the exit signal itself.
    let i8042 = Arc::new(Mutex::new(I8042Device::new(
        exit.clone(),
        EventFdTrigger(vm::irq_line(&vm_fd, i8042::KBD_IRQ)?),
    )));
    let mut pio = Bus::new();
    pio.insert(serial.clone(), serial::COM1_BASE, serial::COM1_LEN)?;
    pio.insert(i8042.clone(), i8042::DATA_PORT, 5)?;
    let pio = Arc::new(pio);
    let mmio = Arc::new(mmio);

    // 6. vCPUs.
    let kvm_err = |what| move |source| BuildError::Kvm { what, source };
    let base_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("read supported CPUID"))?;
    let mut vcpus = Vec::with_capacity(vcpu_count as usize);
    for id in 0..vcpu_count {
        let fd = vm_fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("create a vCPU"))?;
        let mut cpuid = base_cpuid.clone();
        cpuid::patch_cpuid(&mut cpuid, id, vcpu_count);
        fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        if id == 0 {
            regs::setup_vcpu_regs(&fd, &mem, entry.mode, entry.addr)?;
        } else {
            regs::set_boot_msrs(&fd)?;
            fd.set_fpu(&regs::boot_fpu()).map_err(kvm_err("set FPU"))?;
        }
        set_lapic_lint(&fd)?;
        vcpus.push(Vcpu::new(
            id,
            fd,
            pio.clone(),
            mmio.clone(),
            exit.clone(),
            host == HostKvm::Pvm,
        ));
    }

    registration.join()?;

    // 7. Threads, paused.
    crate::vstate::vcpu::install_kick_handler()?;
    let mut handles = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        match v.start() {
            Ok(h) => handles.push(h),
            Err(e) => {
                for h in &mut handles {
                    h.finish();
                }
                return Err(e.into());
            }
        }
    }
    log::info!(
        "built VM: {} vCPU(s), {} MiB, {:?} entry at {:#x}, host KVM {:?}",
        vcpu_count,
        machine.mem_size_mib,
        entry.mode,
        entry.addr.0,
        host
    );
    let vm = Vm {
        host,
        memory: mem,
        serial,
        i8042,
        exit,
        panicked,
        vcpus: handles,
        state: VmRunState::Paused,
        entry,
        devices: device_manager,
        vm_fd,
        _kvm: kvm,
    };
    Ok(vm)
}
