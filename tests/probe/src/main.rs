//! `awprobe ROUTE ARGS...`: tries one route to a file, program or destination and prints
//! one line: `ok-LEAK` (content holding `BYTES` reached this process), `ok` (the
//! operation succeeded, nothing secret read), or `errno N` (refused). The kernel tests run
//! it inside sessions and judge by that line, the exit signal and the recorded events.
//!
//! Each route reaches the object without the plain `open(path)` the simplest rules see:
//! io_uring submissions, file handles, `/proc/self/fd` re-opens, directory descriptors,
//! descriptors obtained before enrolment (read, sendfile, splice, copy_file_range,
//! io_uring), fileless execution, io_uring connects and sends, packet sockets.

use std::{
    ffi::CString,
    io::{Error, Write as _},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result, bail};
use io_uring::{IoUring, opcode, types};

/// What the kernel tests look for in content: every fixture secret holds it.
const MARKER: &[u8] = b"BYTES";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((route, rest)) = args.split_first() else {
        bail!("usage: awprobe ROUTE ARGS...");
    };
    let arg = |i: usize| -> Result<&str> {
        rest.get(i)
            .map(String::as_str)
            .with_context(|| format!("{route}: missing argument {}", i + 1))
    };
    let outcome = match route.as_str() {
        "read" => open_path(arg(0)?, libc::O_RDONLY).and_then(|fd| read_fd(fd.as_raw_fd())),
        "uring-open" => uring_open_read(arg(0)?),
        "handle" => by_handle(arg(0)?),
        "proc-fd" => proc_reopen(arg(0)?),
        "dirfd" => dirfd_open(arg(0)?, arg(1)?),
        "fd-read" => read_fd(fd_arg(arg(0)?)?),
        "fd-sendfile" => sendfile_fd(fd_arg(arg(0)?)?),
        "fd-splice" => splice_fd(fd_arg(arg(0)?)?),
        "fd-copy" => copy_range_fd(fd_arg(arg(0)?)?, arg(1)?),
        "fd-uring" => uring_read_fd(fd_arg(arg(0)?)?),
        "memfd-exec" => memfd_exec(arg(0)?, &rest[1..]),
        "uring-connect" => uring_connect(arg(0)?, arg(1)?.parse()?),
        "uring-sendto" => uring_sendto(arg(0)?, arg(1)?.parse()?),
        "dns" => dns_query(arg(0)?),
        "packet" => packet_socket(),
        "uring-packet" => uring_packet_socket(),
        // Syscalls a profile's `syscalls:` section or the daemon's self-protection refuses.
        "mount" => mount_tmpfs(arg(0)?),
        // SAFETY: plain syscall.
        "unshare" => sys(|| unsafe { libc::unshare(libc::CLONE_NEWUTS) }.into()),
        "clone-ns" => clone_newuts(),
        "thread" => thread_spawns(),
        "init-module" => sys(|| {
            // An image of an ELF header's size, all zero: long enough to reach the
            // security check (a shorter one is refused before it), no module at all (the
            // kernel refuses it after the check would have).
            let image = [0u8; 64];
            // SAFETY: the image outlives the call; its length is passed.
            unsafe {
                libc::syscall(
                    libc::SYS_init_module,
                    image.as_ptr(),
                    image.len(),
                    c"".as_ptr(),
                )
            }
        }),
        "io-uring-setup" => IoUring::new(4).map(|_| Seen::Nothing),
        "bpf" => bpf_next_prog_id(),
        "perf-event-open" => perf_event_open_self(),
        "kill" => {
            let (pid, sig): (i32, i32) = (arg(0)?.parse()?, arg(1)?.parse()?);
            // SAFETY: plain syscall.
            sys(|| unsafe { libc::kill(pid, sig) }.into())
        }
        "ptrace" => ptrace_seize(arg(0)?.parse()?),
        "pidfd-open" => {
            let pid: i32 = arg(0)?.parse()?;
            // SAFETY: plain syscall; the descriptor is closed at exit.
            sys(|| unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
        }
        "proc-pidfd-signal" => proc_pidfd_signal(arg(0)?),
        other => bail!("unknown route `{other}`"),
    };
    let line = match outcome {
        Ok(Seen::Leak) => "ok-LEAK".to_owned(),
        Ok(Seen::Nothing) => "ok".to_owned(),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    };
    println!("{line}");
    std::io::stdout().flush()?;
    Ok(())
}

/// What a route that succeeded brought into the process.
enum Seen {
    Leak,
    Nothing,
}

fn seen(bytes: &[u8]) -> Seen {
    if bytes.windows(MARKER.len()).any(|w| w == MARKER) {
        Seen::Leak
    } else {
        Seen::Nothing
    }
}

type Outcome = std::result::Result<Seen, Error>;

fn fd_arg(s: &str) -> Result<RawFd> {
    s.parse()
        .with_context(|| format!("`{s}` is not a descriptor"))
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in arguments")
}

fn check(ret: i64) -> std::result::Result<i64, Error> {
    if ret < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn open_path(path: &str, flags: i32) -> std::result::Result<OwnedFd, Error> {
    let p = cstr(path);
    // SAFETY: a valid C string; the descriptor is owned from here.
    let fd = check(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) }.into())?;
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn read_fd(fd: RawFd) -> Outcome {
    let mut buf = [0u8; 4096];
    // SAFETY: the buffer outlives the call.
    let n = check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } as i64)?;
    Ok(seen(&buf[..n as usize]))
}

/// The completion of one submitted entry (its result, `-errno` on failure).
fn submit_one(
    ring: &mut IoUring,
    entry: &io_uring::squeue::Entry,
) -> std::result::Result<i32, Error> {
    // SAFETY: every buffer an entry points at outlives the wait below.
    unsafe { ring.submission().push(entry) }.map_err(|_| Error::from_raw_os_error(libc::EBUSY))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| Error::from_raw_os_error(libc::EIO))?;
    let res = cqe.result();
    if res < 0 {
        Err(Error::from_raw_os_error(-res))
    } else {
        Ok(res)
    }
}

/// Opens and reads through the ring: no `openat` or `read` syscall by this process.
fn uring_open_read(path: &str) -> Outcome {
    let mut ring = IoUring::new(4)?;
    let p = cstr(path);
    let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), p.as_ptr())
        .flags(libc::O_RDONLY | libc::O_CLOEXEC)
        .build();
    let fd = submit_one(&mut ring, &open)?;
    // SAFETY: the ring returned a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    uring_read(&mut ring, fd.as_raw_fd())
}

fn uring_read(ring: &mut IoUring, fd: RawFd) -> Outcome {
    let mut buf = vec![0u8; 4096];
    let read = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32).build();
    let n = submit_one(ring, &read)?;
    Ok(seen(&buf[..n as usize]))
}

fn uring_read_fd(fd: RawFd) -> Outcome {
    let mut ring = IoUring::new(4)?;
    uring_read(&mut ring, fd)
}

/// `name_to_handle_at` then `open_by_handle_at` on the mount of the file's directory.
fn by_handle(path: &str) -> Outcome {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0i32;
    let p = cstr(path);
    // SAFETY: valid pointers for the duration of the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            p.as_ptr(),
            &mut h as *mut Handle,
            &mut mount_id as *mut i32,
            0,
        )
    })?;
    let dir = std::path::Path::new(path)
        .parent()
        .map_or("/".to_owned(), |d| d.display().to_string());
    let mount = open_path(&dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: as above; the handle was filled by the kernel.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut h as *mut Handle,
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    read_fd(fd.as_raw_fd())
}

/// An `O_PATH` handle (no access to content) re-opened for reading through `/proc`.
fn proc_reopen(path: &str) -> Outcome {
    let handle = open_path(path, libc::O_PATH)?;
    let again = open_path(
        &format!("/proc/self/fd/{}", handle.as_raw_fd()),
        libc::O_RDONLY,
    )?;
    read_fd(again.as_raw_fd())
}

/// `openat` relative to a directory descriptor opened first.
fn dirfd_open(dir: &str, name: &str) -> Outcome {
    let d = open_path(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let n = cstr(name);
    // SAFETY: valid descriptor and string.
    let fd = check(
        unsafe { libc::openat(d.as_raw_fd(), n.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }.into(),
    )?;
    // SAFETY: a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    read_fd(fd.as_raw_fd())
}

/// A memory file the content is copied into and read back: what a leak looks like
/// when the kernel moves the bytes (sendfile, splice, copy_file_range).
fn scratch() -> std::result::Result<OwnedFd, Error> {
    let name = cstr("awprobe");
    // SAFETY: a valid name.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) }.into())?;
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn read_back(fd: &OwnedFd) -> Outcome {
    let mut buf = [0u8; 4096];
    // SAFETY: the buffer outlives the call.
    let n = check(
        unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) } as i64,
    )?;
    Ok(seen(&buf[..n as usize]))
}

fn sendfile_fd(fd: RawFd) -> Outcome {
    let out = scratch()?;
    // SAFETY: valid descriptors; a null offset uses the file position.
    check(unsafe { libc::sendfile(out.as_raw_fd(), fd, std::ptr::null_mut(), 4096) } as i64)?;
    read_back(&out)
}

fn splice_fd(fd: RawFd) -> Outcome {
    let mut pipe = [0; 2];
    // SAFETY: a two-element array.
    check(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }.into())?;
    // SAFETY: fresh descriptors, owned from here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: valid descriptors; null offsets use the file positions.
    check(unsafe {
        libc::splice(
            fd,
            std::ptr::null_mut(),
            w.as_raw_fd(),
            std::ptr::null_mut(),
            4096,
            0,
        )
    } as i64)?;
    drop(w);
    read_fd(r.as_raw_fd())
}

/// `dir` is on the source's filesystem (copy_file_range stays within one).
fn copy_range_fd(fd: RawFd, dir: &str) -> Outcome {
    let out = open_path(dir, libc::O_TMPFILE | libc::O_RDWR)?;
    // SAFETY: valid descriptors; null offsets use the file positions.
    check(unsafe {
        libc::copy_file_range(
            fd,
            std::ptr::null_mut(),
            out.as_raw_fd(),
            std::ptr::null_mut(),
            4096,
            0,
        )
    } as i64)?;
    read_back(&out)
}

/// The program's bytes copied into an anonymous memory file and executed from there
/// (`fexecve`): no path of the program is executed. Returns only when exec failed.
fn memfd_exec(program: &str, args: &[String]) -> Outcome {
    let bytes = std::fs::read(program)?;
    let mem = scratch_exec()?;
    let mut f = std::fs::File::from(mem);
    f.write_all(&bytes)?;
    let mut argv: Vec<CString> = vec![cstr(program)];
    argv.extend(args.iter().map(|a| cstr(a)));
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: NULL-terminated argument and environment arrays of valid strings.
    unsafe { libc::fexecve(f.as_raw_fd(), ptrs.as_ptr(), envp.as_ptr()) };
    Err(Error::last_os_error())
}

fn scratch_exec() -> std::result::Result<OwnedFd, Error> {
    let name = cstr("awprobe-exec");
    // No MFD_CLOEXEC: fexecve of a close-on-exec memfd fails for scripts only, but the
    // descriptor must stay usable through /proc/self/fd during the exec.
    // SAFETY: a valid name.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), 0) }.into())?;
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn sockaddr(ip: &str, port: u16) -> Result<libc::sockaddr_in6> {
    let addr: std::net::IpAddr = ip
        .parse()
        .with_context(|| format!("`{ip}` is not an address"))?;
    let v6 = match addr {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as u16;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = v6.octets();
    Ok(sa)
}

fn socket(kind: i32) -> std::result::Result<OwnedFd, Error> {
    // SAFETY: plain syscall.
    let fd = check(unsafe { libc::socket(libc::AF_INET6, kind | libc::SOCK_CLOEXEC, 0) }.into())?;
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A TCP connect submitted through the ring (IPv4 destinations as mapped IPv6).
fn uring_connect(ip: &str, port: u16) -> Outcome {
    let sa = sockaddr(ip, port).map_err(|_| Error::from_raw_os_error(libc::EINVAL))?;
    let s = socket(libc::SOCK_STREAM)?;
    let mut ring = IoUring::new(4)?;
    let connect = opcode::Connect::new(
        types::Fd(s.as_raw_fd()),
        (&sa as *const libc::sockaddr_in6).cast(),
        std::mem::size_of::<libc::sockaddr_in6>() as u32,
    )
    .build();
    submit_one(&mut ring, &connect)?;
    Ok(Seen::Nothing)
}

/// A UDP datagram to an address, sent through the ring (`sendmsg` with a name).
fn uring_sendto(ip: &str, port: u16) -> Outcome {
    let mut sa = sockaddr(ip, port).map_err(|_| Error::from_raw_os_error(libc::EINVAL))?;
    let s = socket(libc::SOCK_DGRAM)?;
    let mut ring = IoUring::new(4)?;
    let mut payload = *b"awprobe";
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut sa as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let send = opcode::SendMsg::new(types::Fd(s.as_raw_fd()), &msg).build();
    submit_one(&mut ring, &send)?;
    Ok(Seen::Nothing)
}

/// A packet socket: frames below IP, which no destination rule can judge.
fn packet_socket() -> Outcome {
    let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
    // SAFETY: plain syscall.
    let fd = check(
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) }.into(),
    )?;
    // SAFETY: a fresh descriptor.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    Ok(Seen::Nothing)
}

/// A packet socket created through the ring (`IORING_OP_SOCKET`, 5.19+).
fn uring_packet_socket() -> Outcome {
    let mut ring = IoUring::new(4)?;
    let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
    let socket =
        opcode::Socket::new(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto).build();
    let fd = submit_one(&mut ring, &socket)?;
    // SAFETY: the ring returned a fresh descriptor.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(Seen::Nothing)
}

/// One raw syscall's outcome (`-1` with errno on failure).
fn sys(call: impl FnOnce() -> i64) -> Outcome {
    check(call()).map(|_| Seen::Nothing)
}

/// Mounts a tmpfs on `dir` (and unmounts it again when that worked).
fn mount_tmpfs(dir: &str) -> Outcome {
    let target = cstr(dir);
    // SAFETY: valid C strings, no data.
    sys(|| {
        unsafe {
            libc::mount(
                c"awprobe".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        }
        .into()
    })?;
    // SAFETY: as above.
    unsafe { libc::umount2(target.as_ptr(), 0) };
    Ok(Seen::Nothing)
}

/// A child in a new UTS namespace made by clone(2) itself (not unshare).
fn clone_newuts() -> Outcome {
    // SAFETY: a fork-like clone (no new stack, no shared memory): the child only exits.
    let pid = check(unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWUTS | libc::SIGCHLD,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    })?;
    if pid == 0 {
        // SAFETY: the child leaves at once, running nothing of the parent's.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    Ok(Seen::Nothing)
}

/// A thread started and joined: libc's clone3, or its fallback to clone when clone3 is
/// refused as absent.
fn thread_spawns() -> Outcome {
    std::thread::spawn(|| 7)
        .join()
        .map(|_| Seen::Nothing)
        .map_err(|_| Error::from_raw_os_error(libc::EAGAIN))
}

/// `bpf(BPF_PROG_GET_NEXT_ID)`: what a process enumerating the host's programs does
/// first. `ENOENT` (no program after id 0) is also a call the kernel let through.
/// A software counter (CPU clock) of this process: the smallest `perf_event_open`.
fn perf_event_open_self() -> Outcome {
    // `struct perf_event_attr` (PERF_ATTR_SIZE_VER8): type PERF_TYPE_SOFTWARE, its size,
    // config PERF_COUNT_SW_CPU_CLOCK, the rest zero.
    let mut attr = [0u8; 136];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes());
    attr[4..8].copy_from_slice(&136u32.to_ne_bytes());
    // SAFETY: the attribute outlives the call; its size is in it.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) };
    let fd = check(fd)?;
    // SAFETY: a descriptor the call just returned.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    Ok(Seen::Nothing)
}

fn bpf_next_prog_id() -> Outcome {
    const BPF_PROG_GET_NEXT_ID: i64 = 11;
    let mut attr = [0u32; 4];
    // SAFETY: the attribute outlives the call; its size is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_NEXT_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    match check(ret) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Seen::Nothing),
        other => other.map(|_| Seen::Nothing),
    }
}

/// `PTRACE_SEIZE` (no stop of the tracee), detached again when it worked.
fn ptrace_seize(pid: i32) -> Outcome {
    // SAFETY: plain syscall.
    sys(|| unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, 0usize) })?;
    // SAFETY: as above.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) };
    Ok(Seen::Nothing)
}

/// Signal 0 through a descriptor of `/proc/<pid>`, which `pidfd_send_signal` accepts as
/// a pidfd: no pid in the call's arguments.
fn proc_pidfd_signal(pid: &str) -> Outcome {
    let fd = open_path(&format!("/proc/{pid}"), libc::O_DIRECTORY | libc::O_RDONLY)?;
    // SAFETY: a valid descriptor, no siginfo.
    sys(|| unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            0,
            std::ptr::null::<u8>(),
            0,
        )
    })
}

/// A DNS query for `example.com` (type A) sent with plain `sendto` to a resolver on port
/// 53: what a process does when it resolves names itself, not through the system's stub.
fn dns_query(resolver: &str) -> Outcome {
    let sa = sockaddr(resolver, 53).map_err(|_| Error::from_raw_os_error(libc::EINVAL))?;
    let s = socket(libc::SOCK_DGRAM)?;
    let query: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";
    // SAFETY: valid buffer and address for the duration of the call.
    check(unsafe {
        libc::sendto(
            s.as_raw_fd(),
            query.as_ptr().cast(),
            query.len(),
            0,
            (&sa as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        )
    } as i64)?;
    Ok(Seen::Nothing)
}
