//! husk-vmm: a small KVM virtual machine monitor built on the rust-vmm crates.
//!
//! One process runs one microVM. Threads: the VMM thread (this module's
//! event loop: API actions, exit events, console input), one thread per
//! vCPU ([`vstate::vcpu`]) and an optional API thread ([`api::server`]).
//! Configuration data ([`config`]) is kept apart from live objects
//! ([`vstate::microvm::Vm`]); [`builder`] is the one place that turns one into
//! the other. Starting a VM has two phases: [`Vmm::build`] does everything
//! privileged (KVM, memory, host files, TAPs, sockets) with no guest code
//! running; [`Vmm::run_vcpus`] then lets the guest run. Whatever confines
//! the VMM's threads goes between the two.

pub mod api;
pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod device_manager;
pub mod devices;
pub mod logger;
pub mod metrics;
pub mod rate_limiter;
pub mod seccomp;
pub mod uds;
pub mod vstate;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use api::{ActionError, ActionResult, ApiRequest, VmmAction, VmmData};
use builder::BuildError;
use config::VmConfig;
use vstate::exit::{ExitReason, ExitSignal};
use vstate::microvm::{Vm, VmRunState};

/// Exit code: the guest reset or powered off.
pub const EXIT_OK: i32 = 0;
/// Exit code: the VMM itself failed.
pub const EXIT_VMM_ERROR: i32 = 1;
/// Exit code: bad arguments or configuration, or the VM could not be built.
pub const EXIT_BAD_CONFIG: i32 = 2;
/// Exit code: a vCPU triple-faulted.
pub const EXIT_TRIPLE_FAULT: i32 = 3;
/// Exit code: the guest kernel panicked.
pub const EXIT_GUEST_PANIC: i32 = 4;
/// Exit code: KVM could not emulate a guest instruction.
pub const EXIT_INTERNAL_ERROR: i32 = 5;
/// Exit code: KVM entry failure or a guest crash event.
pub const EXIT_GUEST_CRASH: i32 = 6;
/// Exit code: a thread made a system call its seccomp filter does not allow
/// (the number Firecracker uses for the same).
pub const EXIT_SECCOMP: i32 = 148;

/// Errors of the VMM thread.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The event loop failed.
    #[error("event loop failed: {0}")]
    EventManager(String),
    /// Building the VM failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A vCPU did not follow a state change.
    #[error(transparent)]
    Vcpu(#[from] vstate::vcpu::VcpuError),
    /// The VMM thread could not be filtered.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The vCPUs were asked to run before the VM was built.
    #[error("the microVM has not been built")]
    NotBuilt,
}

use device_manager::Subscriber;

/// Drains an eventfd whose only job is to wake the event loop.
struct Waker(Arc<EventFd>);

impl MutEventSubscriber for Waker {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.as_ref(), EventSet::IN)) {
            log::error!("cannot watch an eventfd: {e:?}");
        }
    }
}

/// Wakes the VMM thread when the VM ends (a vCPU, the i8042 or the
/// console reported why on the exit signal).
struct ExitWatcher {
    exit: Arc<ExitSignal>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.eventfd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.eventfd(), EventSet::IN)) {
            log::error!("cannot watch exit events: {e:?}");
        }
    }
}

/// Forwards host stdin to the guest's serial console.
struct ConsoleInput {
    serial: Arc<Mutex<devices::legacy::serial::SerialDevice>>,
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        let room = devices::bus::lock(&self.serial).input_room().min(buf.len());
        // SAFETY: `buf` is valid for `room` bytes and fd 0 stays open for the
        // life of the process.
        let n = unsafe { libc::read(stdin.as_raw_fd(), buf.as_mut_ptr().cast(), room.max(1)) };
        if n <= 0 || events.event_set().contains(EventSet::HANG_UP) {
            // EOF or error: stop watching stdin.
            let _ = ops.remove(Events::new(&stdin, EventSet::IN));
            return;
        }
        devices::bus::lock(&self.serial).enqueue_input(&buf[..n as usize]);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        // Not every stdin can be polled (regular files, /dev/null): then
        // there is simply no console input.
        if ops.add(Events::new(&stdin, EventSet::IN)).is_err() {
            log::debug!("stdin cannot be polled; no console input");
        }
    }
}

/// The VMM: configuration, the VM once started, the event loop.
pub struct Vmm {
    id: String,
    config: VmConfig,
    vm: Option<Vm>,
    console: devices::legacy::serial::ConsoleSink,
    console_input: bool,
    api_rx: Option<Receiver<ApiRequest>>,
    event_manager: EventManager<Subscriber>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("id", &self.id)
            .field("config", &self.config)
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

impl Vmm {
    /// A VMM with `config`, writing the guest console to `console`.
    pub fn new(
        id: String,
        config: VmConfig,
        console: Box<dyn Write + Send>,
        console_input: bool,
    ) -> Result<Self, VmmError> {
        let event_manager =
            EventManager::new().map_err(|e| VmmError::EventManager(format!("{e:?}")))?;
        Ok(Vmm {
            id,
            config,
            vm: None,
            console: Arc::new(Mutex::new(console)),
            console_input,
            api_rx: None,
            event_manager,
        })
    }

    /// Connects the API: actions arrive on `rx`, `wake` is written with each.
    pub fn attach_api(&mut self, rx: Receiver<ApiRequest>, wake: Arc<EventFd>) {
        self.api_rx = Some(rx);
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(Waker(wake))));
    }

    /// Builds and starts the VM from the current configuration; the VMM
    /// thread is filtered (when seccomp is enabled) between the two.
    pub fn start(&mut self) -> Result<(), VmmError> {
        self.build()?;
        seccomp::install(seccomp::ThreadKind::Vmm)?;
        self.run_vcpus()
    }

    /// Builds the VM from the current configuration, its vCPUs paused,
    /// and has the event loop serve its devices (which stay in the VM's
    /// device registry).
    pub fn build(&mut self) -> Result<(), VmmError> {
        let vm = builder::build_microvm(&self.config, self.console.clone())?;
        for device in vm.devices.devices() {
            self.event_manager
                .add_subscriber(device.handle.subscriber());
        }
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(ExitWatcher {
                exit: vm.exit.clone(),
            })));
        if self.console_input {
            self.event_manager
                .add_subscriber(Arc::new(Mutex::new(ConsoleInput {
                    serial: vm.serial.clone(),
                })));
        }
        self.vm = Some(vm);
        Ok(())
    }

    /// Lets the built VM's vCPUs run guest code.
    pub fn run_vcpus(&mut self) -> Result<(), VmmError> {
        match &mut self.vm {
            Some(vm) => Ok(vm.resume()?),
            None => Err(VmmError::NotBuilt),
        }
    }

    /// The built VM, if any.
    pub fn vm(&self) -> Option<&Vm> {
        self.vm.as_ref()
    }

    fn state_name(&self) -> &'static str {
        match self.vm.as_ref().map(|v| v.state) {
            None => "Not started",
            Some(VmRunState::Running) => "Running",
            Some(VmRunState::Paused) => "Paused",
            Some(VmRunState::Exited) => "Exited",
        }
    }

    fn not_after_start(&self, what: &str) -> Result<(), ActionError> {
        if self.vm.is_some() {
            return Err(ActionError::bad_request(format!(
                "{what} cannot be changed after the microVM has started"
            )));
        }
        Ok(())
    }

    fn running_vm(&mut self) -> Result<&mut Vm, ActionError> {
        match &mut self.vm {
            None => Err(ActionError::bad_request("the microVM has not been started")),
            Some(vm) if vm.state == VmRunState::Exited => {
                Err(ActionError::bad_request("the microVM has exited"))
            }
            Some(vm) => Ok(vm),
        }
    }

    /// Applies a device change made before the start, if the devices are
    /// still valid with it; otherwise nothing changes.
    fn change_devices(&mut self, what: &str, change: impl FnOnce(&mut VmConfig)) -> ActionResult {
        self.not_after_start(what)?;
        let mut next = self.config.clone();
        change(&mut next);
        next.validate_devices()
            .map_err(|e| ActionError::bad_request(e.to_string()))?;
        self.config = next;
        Ok(VmmData::Empty)
    }

    /// Carries out one API action.
    pub fn handle_action(&mut self, action: VmmAction) -> ActionResult {
        match action {
            VmmAction::GetInstanceInfo => Ok(VmmData::Json(serde_json::json!({
                "id": self.id,
                "state": self.state_name(),
                "vmm_version": env!("CARGO_PKG_VERSION"),
                "app_name": "husk-vmm",
            }))),
            VmmAction::GetMachineConfig => Ok(VmmData::Json(
                serde_json::to_value(&self.config.machine_config)
                    .map_err(|e| ActionError::bad_request(e.to_string()))?,
            )),
            VmmAction::GetMetrics => Ok(VmmData::Json(metrics::snapshot())),
            VmmAction::PutMetrics(path) => {
                // The file is opened now: once the VM runs, the VMM thread
                // may open no file.
                self.not_after_start("metrics")?;
                metrics::set_path(&path).map_err(|e| {
                    ActionError::bad_request(format!("metrics: {}: {e}", path.display()))
                })?;
                Ok(VmmData::Empty)
            }
            VmmAction::FlushMetrics => {
                if !metrics::has_path() {
                    return Err(ActionError::bad_request(
                        "FlushMetrics: no metrics file is set (PUT /metrics or --metrics-path)",
                    ));
                }
                metrics::flush()
                    .map_err(|e| ActionError::bad_request(format!("FlushMetrics: {e}")))?;
                Ok(VmmData::Empty)
            }
            VmmAction::GetDevices => {
                let devices = self.vm.as_ref().map(|vm| vm.devices.info());
                Ok(VmmData::Json(serde_json::json!({
                    "devices": devices.unwrap_or_default(),
                })))
            }
            VmmAction::GetVmConfig => Ok(VmmData::Json(
                serde_json::to_value(&self.config)
                    .map_err(|e| ActionError::bad_request(e.to_string()))?,
            )),
            VmmAction::PutMachineConfig(m) => {
                self.not_after_start("machine-config")?;
                m.validate(config::host_mem_mib())
                    .map_err(|e| ActionError::bad_request(e.to_string()))?;
                self.config.machine_config = m;
                Ok(VmmData::Empty)
            }
            VmmAction::PutBootSource(b) => {
                self.not_after_start("boot-source")?;
                b.validate()
                    .map_err(|e| ActionError::bad_request(e.to_string()))?;
                self.config.boot_source = Some(b);
                Ok(VmmData::Empty)
            }
            VmmAction::PutDrive(d) => {
                // Said now rather than at the start: a path that cannot be
                // opened.
                if let Err(e) = std::fs::metadata(&d.path_on_host) {
                    return Err(ActionError::bad_request(format!(
                        "drives: path_on_host {}: {e}",
                        d.path_on_host.display()
                    )));
                }
                self.change_devices("drives", |c| {
                    replace_or_add(&mut c.drives, d, |o, n| o.drive_id == n.drive_id);
                })
            }
            VmmAction::PutNetworkInterface(n) => self.change_devices("network-interfaces", |c| {
                replace_or_add(&mut c.network_interfaces, n, |o, n| {
                    o.iface_id == n.iface_id
                });
            }),
            VmmAction::PutVsock(v) => self.change_devices("vsock", |c| c.vsock = Some(v)),
            VmmAction::PutEntropy(e) => self.change_devices("entropy", |c| c.entropy = Some(e)),
            VmmAction::PutFs(f) => self.change_devices("fs", |c| {
                replace_or_add(&mut c.fs, f, |o, n| o.tag == n.tag);
            }),
            VmmAction::PatchDrive(u) => self.patch_drive(u),
            VmmAction::PatchNetworkInterface(u) => self.patch_network_interface(u),
            VmmAction::InstanceStart => {
                if self.vm.is_some() {
                    return Err(ActionError::bad_request("the microVM is already started"));
                }
                self.start().map_err(|e| {
                    ActionError::bad_request(format!("cannot start the microVM: {e}"))
                })?;
                Ok(VmmData::Empty)
            }
            VmmAction::SendCtrlAltDel => {
                let vm = self.running_vm()?;
                devices::bus::lock(&vm.i8042)
                    .trigger_ctrl_alt_del()
                    .map_err(|e| ActionError::bad_request(e.to_string()))?;
                Ok(VmmData::Empty)
            }
            VmmAction::Pause => {
                let vm = self.running_vm()?;
                vm.pause()
                    .map_err(|e| ActionError::bad_request(e.to_string()))?;
                Ok(VmmData::Empty)
            }
            VmmAction::Resume => {
                let vm = self.running_vm()?;
                vm.resume()
                    .map_err(|e| ActionError::bad_request(e.to_string()))?;
                Ok(VmmData::Empty)
            }
        }
    }

    /// Runs the event loop until the guest stops; returns why.
    pub fn run(&mut self) -> Result<ExitReason, VmmError> {
        loop {
            if let Some(vm) = &mut self.vm {
                if let Some(reason) = vm.exit_reason() {
                    vm.shut_down();
                    devices::bus::lock(&vm.serial).flush_output();
                    if let Err(e) = metrics::flush() {
                        log::warn!("cannot write the metrics: {e}");
                    }
                    return Ok(reason);
                }
            }
            self.event_manager
                .run()
                .map_err(|e| VmmError::EventManager(format!("{e:?}")))?;
            if let Some(rx) = &self.api_rx {
                let pending: Vec<ApiRequest> = rx.try_iter().collect();
                for req in pending {
                    let result = self.handle_action(req.action);
                    // The client may have gone away; its answer is dropped.
                    let _ = req.reply.send(result);
                }
            }
        }
    }
}

/// Replaces the entry of `list` that `same` matches with `new`, or appends
/// it: a device put again before the start is updated in place.
impl Vmm {
    /// `PATCH /drives/{id}`: new rate limits for the drive's device (if
    /// the VM runs) and its configuration.
    fn patch_drive(&mut self, u: config::DriveUpdate) -> ActionResult {
        let bad = |m: String| ActionError::bad_request(m);
        if u.path_on_host.is_some() {
            return Err(bad(
                "not implemented: drives: changing path_on_host of a drive".into(),
            ));
        }
        if let Some(r) = &u.rate_limiter {
            r.validate("drives.rate_limiter")
                .map_err(|e| bad(e.to_string()))?;
        }
        let Some(drive) = self
            .config
            .drives
            .iter_mut()
            .find(|d| d.drive_id == u.drive_id)
        else {
            return Err(bad(format!("drives: no drive {:?}", u.drive_id)));
        };
        let Some(limits) = u.rate_limiter else {
            return Ok(VmmData::Empty);
        };
        if let Some(vm) = &self.vm {
            if let Some(device_manager::DeviceHandle::Block(b)) =
                vm.devices.get(&u.drive_id).map(|d| &d.handle)
            {
                devices::bus::lock(b).update_rate_limiter(Some(&limits));
            }
        }
        drive.rate_limiter = Some(limits);
        Ok(VmmData::Empty)
    }

    /// `PATCH /network-interfaces/{id}`: new rate limits for the
    /// interface's device (if the VM runs) and its configuration.
    fn patch_network_interface(&mut self, u: config::NetworkInterfaceUpdate) -> ActionResult {
        let bad = |m: String| ActionError::bad_request(m);
        for (r, field) in [
            (&u.rx_rate_limiter, "network-interfaces.rx_rate_limiter"),
            (&u.tx_rate_limiter, "network-interfaces.tx_rate_limiter"),
        ] {
            if let Some(r) = r {
                r.validate(field).map_err(|e| bad(e.to_string()))?;
            }
        }
        let Some(iface) = self
            .config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == u.iface_id)
        else {
            return Err(bad(format!(
                "network-interfaces: no interface {:?}",
                u.iface_id
            )));
        };
        if let Some(vm) = &self.vm {
            if let Some(device_manager::DeviceHandle::Net(n)) =
                vm.devices.get(&u.iface_id).map(|d| &d.handle)
            {
                devices::bus::lock(n)
                    .update_rate_limiters(u.rx_rate_limiter.as_ref(), u.tx_rate_limiter.as_ref());
            }
        }
        if u.rx_rate_limiter.is_some() {
            iface.rx_rate_limiter = u.rx_rate_limiter;
        }
        if u.tx_rate_limiter.is_some() {
            iface.tx_rate_limiter = u.tx_rate_limiter;
        }
        Ok(VmmData::Empty)
    }
}

fn replace_or_add<T>(list: &mut Vec<T>, new: T, same: impl Fn(&T, &T) -> bool) {
    match list.iter().position(|o| same(o, &new)) {
        Some(i) => list[i] = new,
        None => list.push(new),
    }
}

/// Creates the eventfd the API thread writes to wake the VMM thread.
pub fn api_eventfd() -> Result<Arc<EventFd>, VmmError> {
    Ok(Arc::new(
        EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::{DriveConfig, FsConfig};

    fn vmm() -> Vmm {
        Vmm::new(
            "t".into(),
            VmConfig::default(),
            Box::new(std::io::sink()),
            false,
        )
        .unwrap()
    }

    fn drive(id: &str, root: bool) -> DriveConfig {
        DriveConfig {
            drive_id: id.into(),
            // Any file that exists.
            path_on_host: "/proc/self/exe".into(),
            is_root_device: root,
            is_read_only: true,
            partuuid: None,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
        }
    }

    #[test]
    fn devices_put_before_the_start_are_added_or_replaced() {
        let mut v = vmm();
        assert_eq!(
            v.handle_action(VmmAction::PutDrive(drive("rootfs", true))),
            Ok(VmmData::Empty)
        );
        assert_eq!(
            v.handle_action(VmmAction::PutDrive(drive("data", false))),
            Ok(VmmData::Empty)
        );
        let mut again = drive("data", false);
        again.is_read_only = false;
        assert_eq!(
            v.handle_action(VmmAction::PutDrive(again)),
            Ok(VmmData::Empty)
        );
        assert_eq!(v.config.drives.len(), 2);
        assert!(!v.config.drives[1].is_read_only);
        let fs = FsConfig {
            tag: "husk".into(),
            socket: "/run/fs.sock".into(),
        };
        assert_eq!(v.handle_action(VmmAction::PutFs(fs)), Ok(VmmData::Empty));
        assert_eq!(v.config.fs.len(), 1);
    }

    #[test]
    fn a_refused_device_changes_nothing() {
        let mut v = vmm();
        v.handle_action(VmmAction::PutDrive(drive("rootfs", true)))
            .unwrap();
        let before = v.config.clone();
        // A second root drive.
        let e = v
            .handle_action(VmmAction::PutDrive(drive("other", true)))
            .unwrap_err();
        assert!(e.message.contains("root"), "{}", e.message);
        // A file that does not exist.
        let mut missing = drive("gone", false);
        missing.path_on_host = "/nonexistent/disk.img".into();
        let e = v.handle_action(VmmAction::PutDrive(missing)).unwrap_err();
        assert!(e.message.contains("/nonexistent/disk.img"), "{}", e.message);
        // A bad tag, and more devices than the MMIO slots.
        let bad = FsConfig {
            tag: "a b".into(),
            socket: "/s".into(),
        };
        assert!(v.handle_action(VmmAction::PutFs(bad)).is_err());
        for i in 0..config::MAX_DRIVES {
            let _ = v.handle_action(VmmAction::PutDrive(drive(&format!("d{i}"), false)));
        }
        assert_eq!(v.config.drives.len(), config::MAX_DRIVES);
        let e = v
            .handle_action(VmmAction::PutDrive(drive("one-more", false)))
            .unwrap_err();
        assert_eq!(v.config.drives.len(), config::MAX_DRIVES, "{}", e.message);
        v.config.drives.truncate(1);
        assert_eq!(v.config, before);
    }
}
