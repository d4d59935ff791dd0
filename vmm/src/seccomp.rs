//! Per-thread seccomp filters, installed before the guest runs code.
//!
//! husk-vmm has three kinds of long-lived threads, each with its own
//! allow-list (deny by default, built with `seccompiler`):
//! - the **VMM** thread (event loop, device emulation, vsock muxer, block
//!   I/O, TAP I/O), filtered once the VM is built and before its vCPUs run;
//! - the **vCPU** threads (`KVM_RUN`, MMIO and port I/O on the device buses,
//!   device activation), each filtered at its start, while it is paused;
//! - the **API** thread (accept, read a request, hand it over, answer),
//!   filtered when it starts.
//!
//! A thread that makes a system call outside its list gets `SIGSYS`; the
//! handler writes one line naming the thread and the call to stderr and
//! ends the process with [`EXIT_SECCOMP`](crate::EXIT_SECCOMP). Nothing
//! the guest does can open files, create processes or map new devices once
//! the filters are in: the privileged work (KVM set-up, opening drives and
//! TAPs, binding sockets) is done before.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Which filter a thread gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The VMM thread: event loop and devices.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// The API server thread.
    Api,
}

impl ThreadKind {
    /// The name used in messages and in the test trigger.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
        }
    }
}

/// Errors while building or installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A filter could not be built.
    #[error("cannot build the {0} seccomp filter: {1}")]
    Build(&'static str, String),
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
    /// The kernel refused a filter.
    #[error("cannot install the {0} seccomp filter: {1}")]
    Install(&'static str, String),
}

/// The compiled filters, one per thread kind.
#[derive(Debug)]
pub struct Filters {
    vmm: BpfProgram,
    vcpu: BpfProgram,
    api: BpfProgram,
}

/// Set once by [`enable`]; threads started afterwards filter themselves.
static FILTERS: OnceLock<Filters> = OnceLock::new();

thread_local! {
    /// The filter kind of the current thread, for the SIGSYS message.
    static KIND: Cell<&'static str> = const { Cell::new("unfiltered") };
}

// ioctl request numbers the threads may use once filtered.
/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// Set or clear `O_NONBLOCK` on a socket.
const FIONBIO: u64 = libc::FIONBIO;
/// Set close-on-exec.
const FIOCLEX: u64 = libc::FIOCLEX;

/// Calls every thread needs: memory, locks, signals, time, exit, and I/O on
/// descriptors it already holds.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The VMM thread: epoll, block I/O, vsock's Unix sockets, clean-up of its
/// socket files at the end.
const VMM: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_tgkill,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
];

/// vCPU threads: besides `KVM_RUN`, device activation on an MMIO write
/// (TAP offloads, the vhost-user handshake of virtio-fs).
const VCPU: &[libc::c_long] = &[
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_tgkill,
];

/// The API thread: one connection at a time.
const API: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
];

fn eq(arg: u8, len: SeccompCmpArgLen, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, len, SeccompCmpOp::Eq, value).map_err(|e| e.to_string())
}

/// One rule per allowed ioctl request (argument 1, compared as 32 bits as
/// the kernel does).
fn ioctl_rules(requests: &[u64]) -> Result<Vec<SeccompRule>, String> {
    requests
        .iter()
        .map(|&r| {
            SeccompRule::new(vec![eq(1, SeccompCmpArgLen::Dword, r)?]).map_err(|e| e.to_string())
        })
        .collect()
}

fn compile(
    kind: ThreadKind,
    calls: &[libc::c_long],
    ioctls: &[u64],
    unix_sockets: bool,
) -> Result<BpfProgram, SeccompError> {
    let build = |e: String| SeccompError::Build(kind.name(), e);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in COMMON.iter().chain(calls) {
        rules.insert(nr, Vec::new());
    }
    if !ioctls.is_empty() {
        rules.insert(libc::SYS_ioctl, ioctl_rules(ioctls).map_err(build)?);
    }
    if unix_sockets {
        let unix = SeccompRule::new(vec![
            eq(0, SeccompCmpArgLen::Dword, libc::AF_UNIX as u64).map_err(build)?,
        ])
        .map_err(|e| build(e.to_string()))?;
        rules.insert(libc::SYS_socket, vec![unix]);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| build(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(e.to_string()))
}

impl Filters {
    /// Compiles the three filters.
    pub fn build() -> Result<Self, SeccompError> {
        Ok(Filters {
            vmm: compile(
                ThreadKind::Vmm,
                VMM,
                &[FIONBIO, FIOCLEX, TUNSETOFFLOAD],
                true,
            )?,
            vcpu: compile(
                ThreadKind::Vcpu,
                VCPU,
                &[KVM_RUN, FIONBIO, FIOCLEX, TUNSETOFFLOAD],
                false,
            )?,
            api: compile(ThreadKind::Api, API, &[FIONBIO, FIOCLEX], false)?,
        })
    }

    fn program(&self, kind: ThreadKind) -> &BpfProgram {
        match kind {
            ThreadKind::Vmm => &self.vmm,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Api => &self.api,
        }
    }
}

/// Compiles the filters and installs the SIGSYS handler; from now on
/// [`install`] filters the calling thread. Call once, before any thread
/// that should be filtered starts.
pub fn enable() -> Result<(), SeccompError> {
    let filters = Filters::build()?;
    install_sigsys_handler()?;
    let _ = FILTERS.set(filters);
    Ok(())
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    FILTERS.get().is_some()
}

/// Filters the calling thread as `kind` (nothing when filters are not
/// enabled). Irreversible for the thread.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(filters) = FILTERS.get() else {
        return Ok(());
    };
    #[cfg(debug_assertions)]
    let trigger = test_trigger(kind);
    seccompiler::apply_filter(filters.program(kind))
        .map_err(|e| SeccompError::Install(kind.name(), e.to_string()))?;
    KIND.with(|k| k.set(kind.name()));
    #[cfg(debug_assertions)]
    if trigger {
        // SAFETY: acct(NULL) takes no pointer; the filter refuses it.
        unsafe { libc::syscall(libc::SYS_acct, 0usize) };
    }
    Ok(())
}

/// Filters the calling thread or ends the process: for threads that have
/// no one to report to (a thread left unfiltered must not run guest code).
pub fn install_or_exit(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("husk-vmm: error: {e}\n").as_bytes(),
        );
        // SAFETY: ends the process at once; nothing is left half-done that
        // exit handlers would need to finish.
        unsafe { libc::_exit(crate::EXIT_VMM_ERROR) };
    }
}

/// Test-only (debug builds): `HUSK_VMM_TEST_SECCOMP_VIOLATION=<kind>` makes
/// the first thread of that kind make a forbidden call right after its
/// filter is in.
#[cfg(debug_assertions)]
fn test_trigger(kind: ThreadKind) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FIRED: AtomicBool = AtomicBool::new(false);
    std::env::var("HUSK_VMM_TEST_SECCOMP_VIOLATION").is_ok_and(|v| v == kind.name())
        && !FIRED.swap(true, Ordering::SeqCst)
}

/// The `_sigsys` member of `siginfo_t` on x86_64, after the three ints and
/// their padding.
#[repr(C)]
struct SigsysInfo {
    si_signo: i32,
    si_errno: i32,
    si_code: i32,
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

/// Writes `husk-vmm: error: seccomp: thread <kind> made system call <nr>,
/// which its filter does not allow` and ends the process. Only
/// async-signal-safe calls (write, _exit), both in every filter.
extern "C" fn on_sigsys(_signo: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS, whose layout on
    // x86_64 starts as `SigsysInfo`.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let kind = KIND.with(|k| k.get());
    let mut buf = [0u8; 160];
    let mut len = 0;
    for part in [
        "husk-vmm: error: seccomp: thread ".as_bytes(),
        kind.as_bytes(),
        b" made system call ",
    ] {
        len += copy_into(&mut buf[len..], part);
    }
    let mut digits = [0u8; 12];
    len += copy_into(&mut buf[len..], format_int(nr, &mut digits));
    len += copy_into(
        &mut buf[len..],
        b", which its filter does not allow; stopping the VM\n",
    );
    // SAFETY: `buf` is valid for `len` bytes; write and _exit are
    // async-signal-safe.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::_exit(crate::EXIT_SECCOMP);
    }
}

fn copy_into(dst: &mut [u8], src: &[u8]) -> usize {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    n
}

/// Decimal digits of `n` in `buf`, without allocating.
fn format_int(n: i32, buf: &mut [u8; 12]) -> &[u8] {
    let negative = n < 0;
    let mut v = i64::from(n).unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler is an
    // `extern "C"` function with the SA_SIGINFO signature.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let f = Filters::build().unwrap();
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Api] {
            assert!(!f.program(kind).is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn integers_format_without_allocating() {
        let mut b = [0u8; 12];
        assert_eq!(format_int(0, &mut b), b"0");
        assert_eq!(format_int(163, &mut b), b"163");
        assert_eq!(format_int(-1, &mut b), b"-1");
        assert_eq!(format_int(i32::MIN, &mut b), b"-2147483648");
    }

    /// A filtered thread keeps its allowed calls and dies on another; run
    /// in a child process so that the test process stays unfiltered.
    #[test]
    fn a_forbidden_call_ends_the_process_with_its_code() {
        let filters = Filters::build().unwrap();
        // SAFETY: the child calls only async-signal-safe functions until it
        // exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if install_sigsys_handler().is_err() {
                // SAFETY: child exit.
                unsafe { libc::_exit(91) };
            }
            KIND.with(|k| k.set("api"));
            if seccompiler::apply_filter(filters.program(ThreadKind::Api)).is_err() {
                // SAFETY: child exit.
                unsafe { libc::_exit(92) };
            }
            // Allowed: getpid. Forbidden for the API thread: openat.
            // SAFETY: plain system calls with valid arguments.
            unsafe {
                libc::getpid();
                libc::open(c"/".as_ptr(), libc::O_RDONLY);
                libc::_exit(93);
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), crate::EXIT_SECCOMP);
    }
}
