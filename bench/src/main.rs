//! `awload`: the workloads `cargo xtask bench` times, with and without agentwarden. Each
//! run prints one JSON object on stdout; the harness compares conditions, never absolute
//! times.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use rustix::fs::{Mode, OFlags};
use serde_json::json;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Spawn and wait for `/bin/true`, N times.
    Exec {
        #[arg(long)]
        iters: u64,
    },
    /// openat + close of one file, N times split over threads.
    Open {
        #[arg(long)]
        iters: u64,
        #[arg(long, default_value_t = 1)]
        threads: u64,
        #[arg(long)]
        path: PathBuf,
    },
    /// TCP connect to a loopback listener of our own and close (or, with --udp, a UDP
    /// socket connected and closed), N times.
    Connect {
        #[arg(long)]
        iters: u64,
        #[arg(long)]
        udp: bool,
        /// The listener's port (0: any free one); a fixed one lets a Landlock sandbox
        /// name it.
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// A paced mix at RATE operations per second for SECS: opens (98%), loopback TCP
    /// connects (2%) and one exec per thousand. The opens go round SPREAD files (copies
    /// of PATH made beside it, `PATH.0`, `PATH.1`, …): more than the kernel counts
    /// repeats of per process, so every open is a record (the daemon's worst case).
    Mix {
        #[arg(long)]
        rate: u64,
        #[arg(long)]
        secs: f64,
        #[arg(long)]
        path: PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: u64,
        #[arg(long, default_value_t = 64)]
        spread: u64,
    },
    /// From just before `open(PATH)` to the death of the process that opened it (a
    /// denied file under `kill`), N times; fails if a child survives or read a byte.
    KillLatency {
        #[arg(long)]
        iters: u64,
        #[arg(long)]
        path: PathBuf,
    },
    /// How fast this machine runs a fixed workload: 100 spawns of `/bin/true` (kernel:
    /// fork, exec, exit) and a fixed CPU-bound loop (user space). With `--against`, the
    /// same figures from a reference machine, it prints only the slow-down factor (the
    /// larger of the two ratios, at least 1): what the VM tier stretches deadlines by.
    Calibrate {
        #[arg(long)]
        against: Option<String>,
    },
    /// Duration of `connect` to 127.0.0.1:PORT, N times, with its errno.
    ConnectLatency {
        #[arg(long)]
        iters: u64,
        #[arg(long)]
        port: u16,
    },
    /// Runs COMMAND in a Landlock sandbox (the bench's Landlock-only peer): reads and
    /// execs only under the `--read` paths, writes only under the `--write` paths, TCP
    /// connects only to the `--tcp-port` ports. Fails if the kernel cannot enforce all
    /// of it.
    Sandbox {
        #[arg(long)]
        read: Vec<PathBuf>,
        #[arg(long)]
        write: Vec<PathBuf>,
        #[arg(long)]
        tcp_port: Vec<u16>,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> Result<()> {
    let out = match Cli::parse().cmd {
        Cmd::Exec { iters } => timed(iters, || exec_true().map(|_| ()))?,
        Cmd::Open {
            iters,
            threads,
            path,
        } => open_loop(iters, threads, &path)?,
        Cmd::Connect { iters, udp, port } => connect_loop(iters, udp, port)?,
        Cmd::Mix {
            rate,
            secs,
            path,
            threads,
            spread,
        } => mix(rate, secs, &path, threads, spread)?,
        Cmd::KillLatency { iters, path } => kill_latency(iters, &path)?,
        Cmd::ConnectLatency { iters, port } => connect_latency(iters, port)?,
        Cmd::Calibrate { against } => calibrate(against.as_deref())?,
        Cmd::Sandbox {
            read,
            write,
            tcp_port,
            command,
        } => return sandbox(&read, &write, &tcp_port, &command),
    };
    println!("{out}");
    Ok(())
}

fn timed(iters: u64, mut op: impl FnMut() -> Result<()>) -> Result<serde_json::Value> {
    let start = Instant::now();
    for _ in 0..iters {
        op()?;
    }
    Ok(json!({ "ops": iters, "ns": start.elapsed().as_nanos() as u64 }))
}

fn calibrate(against: Option<&str>) -> Result<serde_json::Value> {
    let spawns = Instant::now();
    for _ in 0..100 {
        exec_true()?;
    }
    let exec_ns = spawns.elapsed().as_nanos() as f64;
    let cpu = Instant::now();
    // xorshift64: no memory traffic, no syscalls, not foldable by the optimiser.
    let mut x = std::hint::black_box(0x9e37_79b9_7f4a_7c15_u64);
    for _ in 0..50_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x);
    let cpu_ns = cpu.elapsed().as_nanos() as f64;
    let here = json!({ "exec_ns": exec_ns, "cpu_ns": cpu_ns });
    let Some(reference) = against else {
        return Ok(here);
    };
    let r: serde_json::Value = serde_json::from_str(reference).context("--against: not JSON")?;
    let ratio = |key: &str, mine: f64| -> Result<f64> {
        let theirs = r[key]
            .as_f64()
            .filter(|v| *v > 0.0)
            .with_context(|| format!("--against: no positive `{key}`"))?;
        Ok(mine / theirs)
    };
    let scale = ratio("exec_ns", exec_ns)?
        .max(ratio("cpu_ns", cpu_ns)?)
        .max(1.0);
    Ok(json!((scale * 100.0).ceil() / 100.0))
}

fn exec_true() -> Result<()> {
    let st = Command::new("/bin/true")
        .status()
        .context("spawning /bin/true")?;
    if !st.success() {
        bail!("/bin/true: {st}");
    }
    Ok(())
}

fn open_once(path: &Path) -> Result<()> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("opening {}", path.display()))?;
    drop(fd);
    Ok(())
}

fn open_loop(iters: u64, threads: u64, path: &Path) -> Result<serde_json::Value> {
    let per = iters / threads.max(1);
    let start = Instant::now();
    thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(move || -> Result<()> {
                    for _ in 0..per {
                        open_once(path)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("open thread panicked"))??;
        }
        Ok(())
    })?;
    // Per-op time is wall time per op of one thread (what each caller experiences).
    Ok(json!({ "ops": per, "ns": start.elapsed().as_nanos() as u64, "threads": threads }))
}

/// A listener that accepts and drops connections, so connects never queue.
fn listener(port: u16) -> Result<SocketAddr> {
    // The full accept queue the host allows (somaxconn), not std's 128: a connect whose
    // SYN finds the queue full waits a 1 s retransmission, and a few of those (the
    // accepting thread loses the CPU for a moment) were the whole TCP figure.
    let fd = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )?;
    // A fixed port is taken again by the next block while the last one's accepted
    // connections sit in TIME_WAIT on it.
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(
        &fd,
        &rustix::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port),
    )?;
    rustix::net::listen(&fd, 4096)?;
    let l = TcpListener::from(fd);
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    Ok(addr)
}

fn connect_loop(iters: u64, udp: bool, port: u16) -> Result<serde_json::Value> {
    let addr = listener(port)?;
    if udp {
        return timed(iters, || {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.connect(addr)?;
            Ok(())
        });
    }
    timed(iters, || {
        tcp_once(addr).context("connect")?;
        Ok(())
    })
}

/// One TCP connect, closed with a reset: a normal close leaves the port in TIME_WAIT, and
/// tens of thousands of them exhaust the ephemeral ports and make `connect` itself slow
/// (the first bench runs measured that, not agentwarden).
fn tcp_once(addr: SocketAddr) -> std::io::Result<()> {
    let s = TcpStream::connect(addr)?;
    rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO))?;
    Ok(())
}

fn mix(rate: u64, secs: f64, path: &Path, threads: u64, spread: u64) -> Result<serde_json::Value> {
    let addr = listener(0)?;
    let files: Vec<PathBuf> = (0..spread.max(1))
        .map(|i| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{i}"));
            let copy = PathBuf::from(name);
            std::fs::copy(path, &copy)
                .with_context(|| format!("copying {} to {}", path.display(), copy.display()))?;
            Ok(copy)
        })
        .collect::<Result<_>>()?;
    let files = &files;
    let threads = threads.max(1);
    let per_thread = rate as f64 / threads as f64;
    let start = Instant::now();
    let total = thread::scope(|s| -> Result<u64> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<u64> {
                    let mut done = 0u64;
                    loop {
                        let elapsed = start.elapsed().as_secs_f64();
                        if elapsed >= secs {
                            return Ok(done);
                        }
                        // Pace: never ahead of the schedule, catch up in batches.
                        let due = (elapsed * per_thread) as u64;
                        if done >= due {
                            thread::sleep(Duration::from_micros(200));
                            continue;
                        }
                        for _ in 0..(due - done).min(1_000) {
                            let n = done + t;
                            if n % 1_000 == 999 {
                                exec_true()?;
                            } else if n % 50 == 49 {
                                tcp_once(addr)?;
                            } else {
                                open_once(&files[(n % files.len() as u64) as usize])?;
                            }
                            done += 1;
                        }
                    }
                })
            })
            .collect();
        let mut sum = 0;
        for h in handles {
            sum += h
                .join()
                .map_err(|_| anyhow::anyhow!("mix thread panicked"))??;
        }
        Ok(sum)
    })?;
    let ns = start.elapsed().as_nanos() as u64;
    Ok(json!({ "ops": total, "ns": ns, "target_rate": rate }))
}

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn percentiles(mut v: Vec<u64>) -> serde_json::Value {
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    json!({ "n": v.len(), "p50_ns": at(0.5), "p99_ns": at(0.99), "max_ns": at(1.0) })
}

fn kill_latency(iters: u64, path: &Path) -> Result<serde_json::Value> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut lat = Vec::new();
    let (mut killed, mut leaked) = (0u64, 0u64);
    for _ in 0..iters {
        let (r, w) = rustix::pipe::pipe()?;
        // SAFETY: single-threaded here; the child only calls async-signal-safe functions.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork failed");
        }
        if pid == 0 {
            drop(r);
            let t0 = now_ns().to_ne_bytes();
            // SAFETY: raw syscalls on our own descriptors and a NUL-terminated path.
            unsafe {
                libc::write(w.as_raw_fd(), t0.as_ptr().cast(), 8);
                let fd = libc::open(cpath.as_ptr(), libc::O_RDONLY);
                if fd >= 0 {
                    let mut b = [0u8; 1];
                    libc::read(fd, b.as_mut_ptr().cast(), 1);
                    libc::write(w.as_raw_fd(), b"LEAK".as_ptr().cast(), 4);
                }
                libc::_exit(0);
            }
        }
        drop(w);
        // SAFETY: `r` is ours; the File takes it over.
        let mut f = unsafe { std::fs::File::from_raw_fd(rustix::fd::IntoRawFd::into_raw_fd(r)) };
        let mut t0 = [0u8; 8];
        f.read_exact(&mut t0)?;
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let t1 = now_ns();
        lat.push(t1.saturating_sub(u64::from_ne_bytes(t0)));
        let mut rest = Vec::new();
        f.read_to_end(&mut rest)?;
        if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
            killed += 1;
        }
        if !rest.is_empty() {
            leaked += 1;
        }
    }
    std::io::stdout().flush()?;
    Ok(json!({ "latency": percentiles(lat), "killed": killed, "leaked": leaked, "iters": iters }))
}

fn connect_latency(iters: u64, port: u16) -> Result<serde_json::Value> {
    let mut lat = Vec::new();
    let mut errnos = std::collections::BTreeMap::<i32, u64>::new();
    let addr = rustix::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
    for _ in 0..iters {
        let s = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )?;
        let t0 = now_ns();
        let r = rustix::net::connect(&s, &addr);
        lat.push(now_ns() - t0);
        let e = r.err().map_or(0, |e| e.raw_os_error());
        *errnos.entry(e).or_default() += 1;
    }
    let errnos: serde_json::Map<String, serde_json::Value> = errnos
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    Ok(json!({ "latency": percentiles(lat), "errnos": errnos }))
}

/// Restricts this process with Landlock and executes `command` in it (see
/// `Cmd::Sandbox`): what a user would write with the Landlock API alone.
fn sandbox(read: &[PathBuf], write: &[PathBuf], ports: &[u16], command: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;

    use landlock::{
        ABI, Access, AccessFs, AccessNet, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus,
    };
    // TCP connect rules came with ABI 4 (Linux 6.7).
    let abi = ABI::V4;
    let mut rs = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::ConnectTcp)?
        .create()?;
    let grant = |p: &Path, dir_access: landlock::BitFlags<AccessFs>| -> Result<_> {
        let access = if p.is_dir() {
            dir_access
        } else {
            dir_access & AccessFs::from_file(abi)
        };
        Ok(PathBeneath::new(
            PathFd::new(p).with_context(|| format!("{}", p.display()))?,
            access,
        ))
    };
    for p in read {
        rs = rs.add_rule(grant(p, AccessFs::from_read(abi))?)?;
    }
    for p in write {
        rs = rs.add_rule(grant(p, AccessFs::from_all(abi))?)?;
    }
    for port in ports {
        rs = rs.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
    }
    let status = rs.restrict_self()?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        bail!(
            "this kernel does not enforce the whole sandbox: {:?}",
            status.ruleset
        );
    }
    let err = Command::new(&command[0]).args(&command[1..]).exec();
    Err(err).with_context(|| format!("executing {}", command[0]))
}
