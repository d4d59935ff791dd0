//! `husk-guest-tool`: runs in a Linux test guest (statically linked, next
//! to busybox) what busybox cannot: checked vsock streams, mmap on a shared
//! file system, many small files. Each command prints one result line,
//! `<command>: ok …` or `<command>: FAILED …`, and exits non-zero on failure.
//!
//! ```text
//! husk-guest-tool vsock-listen PORT CONNS           answer CONNS checked exchanges
//! husk-guest-tool vsock-connect CID PORT CONNS BYTES REPLY
//!                                                   initiate CONNS in parallel
//! husk-guest-tool tcp-listen ADDR:PORT CONNS       the same over TCP
//! husk-guest-tool tcp-connect ADDR:PORT CONNS BYTES REPLY
//! husk-guest-tool mmap-write FILE BYTES SEED        write Pattern(SEED) through MAP_SHARED
//! husk-guest-tool mmap-read FILE                    FNV-1a of the file through MAP_PRIVATE
//! husk-guest-tool files-write DIR N                 N files f0..f(N-1), file i holding "i\n"
//! husk-guest-tool files-check DIR N                 the same files, as the host wrote them
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use guest_tool::{Pattern, answer, fnv64, initiate};

/// A connected AF_VSOCK stream.
struct Vsock(File);

impl Read for Vsock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Vsock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn shutdown_write(s: &Vsock) -> std::io::Result<()> {
    // SAFETY: shutdown(2) on a socket this process owns.
    if unsafe { libc::shutdown(s.0.as_raw_fd(), libc::SHUT_WR) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn vsock_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (a `timeval`, 64-bit here), at level
/// `AF_VSOCK`.
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

fn vsock_connect(cid: u32, port: u32) -> std::io::Result<Vsock> {
    let fd = vsock_socket()?;
    // Linux gives a vsock connect 2 s by default; 64 at once through an
    // emulated machine can take longer to be answered.
    let timeout = libc::timeval {
        tv_sec: 60,
        tv_usec: 0,
    };
    // SAFETY: setsockopt(2) with a timeval of the size passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            std::ptr::addr_of!(timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    let addr = vsock_addr(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm of the size passed.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    Ok(Vsock(File::from(fd)))
}

fn vsock_listen(port: u32) -> Result<(), String> {
    let conns: usize = arg(3)?;
    let fd = vsock_socket().map_err(|e| format!("socket: {e}"))?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `addr` is a valid sockaddr_vm of the size passed.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })
    .map_err(|e| format!("bind {port}: {e}"))?;
    // SAFETY: listen(2) takes no pointers.
    check(unsafe { libc::listen(fd.as_raw_fd(), 128) }).map_err(|e| format!("listen: {e}"))?;
    println!("vsock-listen: listening on {port}");
    let mut threads = Vec::new();
    for _ in 0..conns {
        // SAFETY: accept(2) with null address pointers.
        let c = unsafe { libc::accept(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
        if c < 0 {
            return Err(format!("accept: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `c` is a new descriptor owned by nothing else.
        let mut s = Vsock(unsafe { File::from_raw_fd(c) });
        threads.push(std::thread::spawn(move || answer(&mut s)));
    }
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap_or_else(|_| Err("panicked".into())).err())
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {conns}: {}", failures.len(), failures[0]))
    }
}

fn vsock_connect_many() -> Result<(), String> {
    let (cid, port, conns, bytes, reply): (u32, u32, u64, u64, u64) =
        (arg(2)?, arg(3)?, arg(4)?, arg(5)?, arg(6)?);
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = vsock_connect(cid, port).map_err(|e| format!("connect: {e}"))?;
                initiate(&mut s, shutdown_write, bytes, reply, 1000 + i)
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap_or_else(|_| Err("panicked".into())).err())
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {conns}: {}", failures.len(), failures[0]))
    }
}

fn tcp_listen() -> Result<(), String> {
    let (addr, conns): (String, usize) = (arg(2)?, arg(3)?);
    let listener = std::net::TcpListener::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("tcp-listen: listening on {addr}");
    let mut threads = Vec::new();
    for _ in 0..conns {
        let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        threads.push(std::thread::spawn(move || {
            answer(&mut s)?;
            linger(&s)
        }));
    }
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap_or_else(|_| Err("panicked".into())).err())
        .collect();
    match failures.first() {
        None => Ok(()),
        Some(f) => Err(format!("{} of {conns}: {f}", failures.len())),
    }
}

/// Waits until the peer has the whole reply and has closed: the reply
/// may still sit in this socket's send buffer when `answer` returns (the
/// peer may have shut down its side long before), and whoever runs this
/// tool may end the machine as soon as it reports.
fn linger(s: &std::net::TcpStream) -> Result<(), String> {
    use std::io::Read;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shut down writing: {e}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) stores the bytes not yet acknowledged
        // by the peer in `queued`, which outlives the call.
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if r != 0 {
            return Err(format!(
                "bytes not yet acknowledged: {}",
                std::io::Error::last_os_error()
            ));
        }
        if queued == 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{queued} bytes still unacknowledged after 300 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    s.set_read_timeout(Some(std::time::Duration::from_secs(300)))
        .map_err(|e| format!("read time-out: {e}"))?;
    let mut buf = [0u8; 512];
    let mut r = s;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("wait for the peer to close: {e}")),
        }
    }
}

fn tcp_connect() -> Result<(), String> {
    let (addr, conns, bytes, reply): (String, u64, u64, u64) = (arg(2)?, arg(3)?, arg(4)?, arg(5)?);
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr)
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                initiate(
                    &mut s,
                    |s| s.shutdown(std::net::Shutdown::Write),
                    bytes,
                    reply,
                    2000 + i,
                )
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap_or_else(|_| Err("panicked".into())).err())
        .collect();
    match failures.first() {
        None => Ok(()),
        Some(f) => Err(format!("{} of {conns}: {f}", failures.len())),
    }
}

/// A shared writable mapping of `len` bytes of `file`.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(file: &File, len: usize, shared: bool) -> Result<Mapping, String> {
        let (prot, flags) = if shared {
            (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED)
        } else {
            (libc::PROT_READ, libc::MAP_PRIVATE)
        };
        // SAFETY: a new mapping of an open file; the result is checked.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, mapped writable by `new(…, shared: true)`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn sync(&self) -> Result<(), String> {
        // SAFETY: msync(2) of this mapping.
        check(unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) })
            .map_err(|e| format!("msync: {e}"))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping this mapping, which is not used after.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn mmap_write() -> Result<String, String> {
    let path: String = arg(2)?;
    let (len, seed): (usize, u64) = (arg(3)?, arg(4)?);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    file.set_len(len as u64)
        .map_err(|e| format!("{path}: {e}"))?;
    let mut map = Mapping::new(&file, len, true)?;
    Pattern::new(seed).fill(map.bytes_mut());
    map.sync()?;
    Ok(format!("{len} bytes"))
}

fn mmap_read() -> Result<String, String> {
    let path: String = arg(2)?;
    let file = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len() as usize;
    let map = Mapping::new(&file, len, false)?;
    Ok(format!("len={len} fnv={:016x}", fnv64(map.bytes())))
}

fn files_write() -> Result<String, String> {
    let (dir, n): (String, usize) = (arg(2)?, arg(3)?);
    for i in 0..n {
        let p = format!("{dir}/f{i}");
        std::fs::write(&p, format!("{i}\n")).map_err(|e| format!("{p}: {e}"))?;
    }
    let d = File::open(&dir).map_err(|e| format!("{dir}: {e}"))?;
    d.sync_all().map_err(|e| format!("sync {dir}: {e}"))?;
    Ok(format!("{n} files"))
}

fn files_check() -> Result<String, String> {
    let (dir, n): (String, usize) = (arg(2)?, arg(3)?);
    let listed = std::fs::read_dir(&dir)
        .map_err(|e| format!("{dir}: {e}"))?
        .count();
    if listed != n {
        return Err(format!("{dir} lists {listed} entries, not {n}"));
    }
    for i in 0..n {
        let p = format!("{dir}/f{i}");
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"))?;
        if text != format!("{i}\n") {
            return Err(format!("{p} holds {text:?}"));
        }
    }
    Ok(format!("{n} files"))
}

fn arg<T: std::str::FromStr>(i: usize) -> Result<T, String> {
    let a = std::env::args()
        .nth(i)
        .ok_or_else(|| format!("argument {i} missing"))?;
    a.parse()
        .map_err(|_| format!("argument {i}: bad value {a:?}"))
}

fn main() {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let result = match cmd.as_str() {
        "vsock-listen" => arg(2).and_then(vsock_listen).map(|()| String::new()),
        "vsock-connect" => vsock_connect_many().map(|()| String::new()),
        "tcp-listen" => tcp_listen().map(|()| String::new()),
        "tcp-connect" => tcp_connect().map(|()| String::new()),
        "mmap-write" => mmap_write(),
        "mmap-read" => mmap_read(),
        "files-write" => files_write(),
        "files-check" => files_check(),
        other => Err(format!("unknown command {other:?}")),
    };
    match result {
        Ok(detail) => println!("{cmd}: ok {detail}"),
        Err(e) => {
            println!("{cmd}: FAILED {e}");
            std::process::exit(1);
        }
    }
}
