//! Kernel tests: the real eBPF object in the real kernel, real processes in real sessions.
//!
//! Each test starts its own daemon (own socket, state directory and maps), so tests run in
//! parallel without seeing each other's sessions. They need root to load eBPF programs:
//! without it they skip with the reason, and under `CI=true` that is a failure.

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    net::TcpListener,
    os::unix::{
        fs::{PermissionsExt, symlink},
        process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use agent_common::{
    event::EventKind,
    vocab::{Action, Layer, Verdict},
};
use agentwarden::{
    event::{DecisionInfo, Event},
    proto::StatusReport,
    session::SessionView,
    skip::skip,
};
use tempfile::TempDir;

mod audit;

/// The daemon and CLI under test: the debug build next to this test binary, or the one
/// `AGENTWARDEN_BIN` names (the VM tier runs the release daemon: under emulation its
/// start-up is several times shorter than a debug build's).
fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("AGENTWARDEN_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_agentwarden").to_owned())
    })
}

/// How much slower this machine runs than the one the deadlines were set on:
/// `AGENTWARDEN_TIME_SCALE`, which the VM tier measures at guest boot (a fixed workload
/// timed in the guest against the host), at least 1.
fn time_scale() -> f64 {
    static SCALE: OnceLock<f64> = OnceLock::new();
    *SCALE.get_or_init(|| {
        std::env::var("AGENTWARDEN_TIME_SCALE")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|f| f.is_finite())
            .unwrap_or(1.0)
            .max(1.0)
    })
}

/// A deadline set on a real host, stretched by [`time_scale`].
fn scaled(d: Duration) -> Duration {
    d.mul_f64(time_scale())
}

/// Upper bound for polling.
fn patience() -> Duration {
    scaled(Duration::from_secs(45))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A daemon for one test; stopped with SIGTERM when dropped.
struct Daemon {
    child: Option<Child>,
    dir: TempDir,
}

impl Daemon {
    /// Starts a daemon, or returns `None` (skip) when not root.
    fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Starts a daemon with extra `daemon` arguments.
    fn start_with(extra: &[&str]) -> Option<Self> {
        if !is_root() {
            skip("loading eBPF programs needs root");
            return None;
        }
        Some(Self::spawn_in(tempfile::tempdir().expect("tempdir"), extra))
    }

    /// Starts a daemon whose socket, log and state directory are in `dir` (a restart
    /// reuses the state of the daemon before).
    fn spawn_in(dir: TempDir, extra: &[&str]) -> Self {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("daemon.log"))
            .expect("log");
        // The daemon says when it is ready (sd_notify's READY=1, as under systemd's
        // `Type=notify`) once its socket listens: no polling of the socket.
        let notify_path = dir.path().join("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut cmd = Command::new(bin());
        // SAFETY: only an async-signal-safe prctl between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The daemon must not outlive a test process that was killed.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .arg("--socket")
            .arg(dir.path().join("ctl.sock"))
            .arg("daemon")
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--quiet")
            .args(extra)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        let mut d = Daemon {
            child: Some(child),
            dir,
        };
        let start = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
            {
                break;
            }
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("daemon exited early ({status}):\n{}", d.log());
            }
            assert!(
                start.elapsed() < scaled(Duration::from_secs(60)),
                "daemon not ready after {:?} (time scale {}):\n{}",
                start.elapsed(),
                time_scale(),
                d.log()
            );
        }
        // Readiness means the socket listens: a client connects at once.
        std::os::unix::net::UnixStream::connect(d.socket()).expect("ready daemon's socket");
        d
    }

    /// The audit database in the state directory.
    fn db(&self) -> PathBuf {
        self.dir.path().join("state/audit.db")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn cli(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("--socket").arg(self.socket());
        c
    }

    /// `agentwarden run --profile demo --session-name NAME -- ARGS` in `cwd`.
    fn run_in(&self, name: &str, cwd: &Path, args: &[&str]) -> Output {
        self.run_profile("demo", name, cwd, args)
    }

    fn run_profile(&self, profile: &str, name: &str, cwd: &Path, args: &[&str]) -> Output {
        self.cli()
            .args(["run", "--profile", profile, "--session-name", name, "--"])
            .args(args)
            .current_dir(cwd)
            .output_within()
    }

    fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let out = self.cli().args(args).output_within();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    fn sessions(&self) -> Vec<SessionView> {
        self.json(&["sessions", "--json"])
    }

    fn session(&self, name: &str) -> SessionView {
        self.sessions()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no session {name}"))
    }

    /// All stored events (of one session, or of all).
    fn events(&self, session: Option<&str>) -> Vec<Event> {
        let mut c = self.cli();
        c.args(["events", "--json"]);
        if let Some(s) = session {
            c.args(["--session", s]);
        }
        let out = c.output_within();
        assert!(
            out.status.success(),
            "events: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("event json"))
            .collect()
    }

    /// Polls the events of `session` until `done` holds (or panics after [`patience`]).
    fn wait_for(&self, session: &str, what: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let start = Instant::now();
        loop {
            let evs = self.events(Some(session));
            if done(&evs) {
                return evs;
            }
            if start.elapsed() > patience() {
                panic!("timed out waiting for {what}; events:\n{}", dump(&evs));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // The daemon may already have exited (a failed test); wait reports how.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        );
        child.wait().expect("wait")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

/// Every command a test runs must finish: a hang becomes a failure naming the command
/// (and its output so far) instead of a stalled test run.
trait OutputWithin {
    fn output_within(&mut self) -> Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self) -> Output {
        let shown = format!("{self:?}");
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {shown}: {e}"));
        let pipes = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let readers = (
            thread::spawn(move || read_all(pipes.0)),
            thread::spawn(move || read_all(pipes.1)),
        );
        let deadline = Instant::now() + scaled(Duration::from_secs(120));
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "command did not finish within {:?}: {shown}",
                    scaled(Duration::from_secs(120))
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: readers.0.join().unwrap(),
            stderr: readers.1.join().unwrap(),
        }
    }
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

fn dump(evs: &[Event]) -> String {
    evs.iter()
        .map(|e| format!("{} {}", e.kind(), agentwarden::output::detail(e)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn opens_of<'a>(evs: &'a [Event], path: &'a Path) -> impl Iterator<Item = &'a Event> {
    let p = path.to_string_lossy().into_owned();
    evs.iter()
        .filter(move |e| e.open().is_some_and(|o| o.path == p))
}

/// Events whose decision ended in `action` (`blocked`, `killed`, `alerted`, ...).
fn with_action(evs: &[Event], action: Action) -> impl Iterator<Item = &Event> {
    evs.iter()
        .filter(move |e| e.decision.as_ref().is_some_and(|x| x.action == action))
}

fn tgid(e: &Event) -> u32 {
    e.process.as_ref().expect("process").tgid
}

#[test]
fn exec_open_and_connect_carry_session_and_resolved_paths() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let root = fs::canonicalize(work.path()).expect("canonical");
    fs::create_dir_all(root.join("real/sub")).expect("mkdir");
    fs::write(root.join("real/target.txt"), "secret\n").expect("write");
    symlink("real/target.txt", root.join("link")).expect("symlink");
    let v4 = TcpListener::bind("127.0.0.1:0").expect("listen v4");
    let v6 = TcpListener::bind("[::1]:0").expect("listen v6");
    let (p4, p6) = (
        v4.local_addr().unwrap().port(),
        v6.local_addr().unwrap().port(),
    );

    // A relative path with `..` through a symlink, then TCP connects over IPv4 and IPv6.
    let script =
        format!("cat ../../link && exec 3<>/dev/tcp/127.0.0.1/{p4} && exec 4<>/dev/tcp/::1/{p6}");
    let out = d.run_in("paths", &root.join("real/sub"), &["bash", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "secret\n");

    let sid = d.session("paths").id;
    let target = root.join("real/target.txt");
    let evs = d.wait_for(&sid, "open, connects and exits", |evs| {
        opens_of(evs, &target).count() == 1
            && evs.iter().filter(|e| e.connect().is_some()).count() == 2
            && evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
    });
    assert!(
        evs.iter()
            .all(|e| e.session.id == sid && e.session.name == "paths")
    );
    assert!(evs.iter().all(|e| e.session.profile == "demo"));

    let cat = fs::canonicalize("/bin/cat").expect("cat");
    let exec = evs
        .iter()
        .find_map(|e| {
            e.exec()
                .filter(|x| x.argv.first().map(String::as_str) == Some("cat"))
        })
        .unwrap_or_else(|| panic!("no exec of cat:\n{}", dump(&evs)));
    assert_eq!(
        Path::new(&exec.path),
        cat,
        "exec path is the kernel's resolved file"
    );
    assert_eq!(exec.argv, ["cat", "../../link"]);
    assert_eq!(Path::new(&exec.cwd), root.join("real/sub"));
    assert!(!exec.argv_truncated);

    let open = opens_of(&evs, &target).next().expect("open event");
    let o = open.open().expect("open body");
    assert!(o.path_resolved && !o.path_truncated);
    assert!(o.result >= 0, "open result {}", o.result);
    assert_eq!(o.flags.first().map(String::as_str), Some("O_RDONLY"));
    let p = open.process.as_ref().expect("process");
    assert_eq!(
        (p.comm.as_str(), p.uid, p.user.as_deref()),
        ("cat", 0, Some("root"))
    );
    assert!(p.cgroup_id != 0 && p.ppid != 0);

    let connects: Vec<_> = evs.iter().filter_map(|e| e.connect()).collect();
    assert_eq!(
        (
            connects[0].family.as_str(),
            connects[0].address.as_str(),
            connects[0].port,
            connects[0].result
        ),
        ("inet", "127.0.0.1", p4, 0)
    );
    assert_eq!(
        (
            connects[1].family.as_str(),
            connects[1].address.as_str(),
            connects[1].port,
            connects[1].result
        ),
        ("inet6", "::1", p6, 0)
    );
    // The launcher exec'd bash in place: the session root's exit carries bash's status.
    let root_pid = d.session("paths").root_pid;
    let exit = evs
        .iter()
        .find(|e| e.exit().is_some() && tgid(e) == root_pid)
        .expect("exit");
    assert_eq!(exit.exit().unwrap().code, Some(0));
}

#[test]
fn double_fork_and_setsid_stay_in_session_until_the_last_exit() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let marker = fs::canonicalize(work.path()).unwrap().join("marker");
    fs::write(&marker, "x").unwrap();
    let gate = work.path().join("gate");
    // The grandchild detaches (double fork + setsid) and outlives the launcher.
    let script = format!(
        "( setsid sh -c 'while [ ! -e {g} ]; do sleep 0.05; done; cat {m}' \
           </dev/null >/dev/null 2>&1 & ) ; exit 0",
        g = gate.display(),
        m = marker.display()
    );
    let out = d.run_in("detach", work.path(), &["bash", "-c", &script]);
    assert!(out.status.success());
    let s = d.session("detach");
    assert_eq!(
        s.state, "active",
        "the detached grandchild keeps the session alive"
    );
    assert!(s.processes >= 1);

    fs::write(&gate, "").unwrap();
    let evs = d.wait_for(&s.id, "the grandchild's open and session end", |evs| {
        opens_of(evs, &marker).count() == 1 && evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
    });
    let open = opens_of(&evs, &marker).next().unwrap();
    assert_ne!(tgid(open), s.root_pid);
    assert_eq!(evs.last().map(|e| e.kind()), Some(EventKind::SessionEnd));
    let ended = d.session("detach");
    assert_eq!((ended.state.as_str(), ended.processes), ("ended", 0));
}

#[test]
fn processes_outside_every_session_produce_no_event() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let dir = fs::canonicalize(work.path()).unwrap();
    let outside = dir.join("outside.txt");
    let inside = dir.join("inside.txt");
    fs::write(&outside, "o").unwrap();
    fs::write(&inside, "i").unwrap();
    // A live session exists while the outside process acts.
    let gate = dir.join("gate");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; cat {}",
        gate.display(),
        inside.display()
    );
    let mut session = d
        .cli()
        .args([
            "run",
            "--profile",
            "demo",
            "--session-name",
            "live",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !d.sessions().iter().any(|s| s.name == "live") {
        assert!(start.elapsed() < patience());
        thread::sleep(Duration::from_millis(50));
    }
    let mut buf = String::new();
    fs::File::open(&outside)
        .unwrap()
        .read_to_string(&mut buf)
        .unwrap();
    let st = Command::new("cat")
        .arg(&outside)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(&gate, "").unwrap();
    assert!(session.wait().unwrap().success());
    let sid = d.session("live").id;
    d.wait_for(&sid, "the in-session open", |evs| {
        opens_of(evs, &inside).count() == 1
    });
    let all = d.events(None);
    assert_eq!(
        opens_of(&all, &outside).count(),
        0,
        "outside opens leaked:\n{}",
        dump(&all)
    );
    let me = std::process::id();
    assert!(
        all.iter()
            .filter_map(|e| e.process.as_ref())
            .all(|p| p.tgid != me)
    );
}

#[test]
fn exit_code_and_fatal_signal_are_reported() {
    let Some(d) = Daemon::start() else { return };
    let cwd = std::env::temp_dir();
    let out = d.run_in("code", &cwd, &["bash", "-c", "exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "run exits with the agent's status"
    );
    let out = d.run_in("killed", &cwd, &["bash", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.signal(), Some(9));

    for (name, code, signal) in [("code", Some(7), None), ("killed", None, Some(9))] {
        let s = d.session(name);
        let evs = d.wait_for(&s.id, "exit", |evs| evs.iter().any(|e| e.exit().is_some()));
        let exit = evs.iter().find_map(|e| e.exit()).unwrap();
        assert_eq!((exit.code, exit.signal), (code, signal), "{name}");
    }
}

#[test]
fn run_without_a_daemon_refuses_to_start_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let out = Command::new(bin())
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .args(["run", "--profile", "demo", "--", "touch"])
        .arg(&marker)
        .output_within();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the agentwarden daemon"), "{err}");
    assert!(err.contains("not running the agent unwatched"), "{err}");
    assert!(!marker.exists(), "the agent ran unwatched");
}

#[test]
fn a_session_cannot_administer_the_daemon() {
    let Some(d) = Daemon::start() else { return };
    let sock = d.socket();
    let sock = sock.to_str().unwrap();
    let cwd = std::env::temp_dir();
    for inner in [
        vec![bin(), "--socket", sock, "sessions"],
        vec![
            bin(),
            "--socket",
            sock,
            "run",
            "--profile",
            "demo",
            "--",
            "true",
        ],
    ] {
        let mut args = vec!["bash", "-c", "\"$@\"", "inner"];
        args.extend(inner.iter().copied());
        let out = d.run_in("nested", &cwd, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{inner:?} succeeded from inside a session"
        );
        assert!(
            err.contains("a session cannot administer agentwarden"),
            "{err}"
        );
        // Wait for the session to end so the next iteration can reuse the name.
        let sid = d
            .sessions()
            .into_iter()
            .find(|s| s.name == "nested" && s.state == "active");
        if let Some(s) = sid {
            d.wait_for(&s.id, "end", |evs| {
                evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
            });
        }
    }
    let mode = fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket must be owner-only");
}

#[test]
fn attach_enrols_a_running_tree() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(work.path()).unwrap();
    let target = dir.join("target");
    fs::write(&target, "t").unwrap();
    let gate = dir.join("gate");
    let script = format!(
        "( while [ ! -e {g} ]; do sleep 0.05; done; cat {t} >/dev/null ) & wait",
        g = gate.display(),
        t = target.display()
    );
    let mut tree = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    // Let the subshell exist before attaching.
    thread::sleep(Duration::from_millis(300));
    let out = d
        .cli()
        .args([
            "attach",
            "--pid",
            &tree.id().to_string(),
            "--profile",
            "demo",
            "--session-name",
            "att",
        ])
        .output_within();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("descendant"), "{text}");
    let s = d.session("att");
    assert!(s.processes >= 2, "root and its subshell: {s:?}");
    fs::write(&gate, "").unwrap();
    assert!(tree.wait().unwrap().success());
    let evs = d.wait_for(&s.id, "the subshell's open", |evs| {
        opens_of(evs, &target).count() == 1
    });
    let open = opens_of(&evs, &target).next().unwrap();
    assert_ne!(
        tgid(open),
        tree.id(),
        "the open came from a descendant enrolled by attach"
    );
}

#[test]
fn status_reports_programs_and_counters_and_sigterm_stops_cleanly() {
    let Some(mut d) = Daemon::start() else { return };
    let st: StatusReport = d.json(&["status", "--json"]);
    assert!(st.host.btf && st.host.ringbuf);
    assert!(st.host.cgroup2_mount.is_some());
    for p in [
        "sched_process_fork",
        "sched_process_exec",
        "sched_process_exit",
        "sys_exit_openat",
    ] {
        let prog = st.programs.iter().find(|x| x.name == p).expect(p);
        assert_eq!(prog.state, "attached", "{prog:?}");
        assert!(prog.load_us.is_some_and(|us| us > 0), "{prog:?}");
    }
    // Where the start-up went, phase by phase, ending with the total (and in the log).
    let phases: Vec<&str> = st.startup.iter().map(|p| p.phase.as_str()).collect();
    for want in ["offsets", "programs (verify, attach)", "socket", "total"] {
        assert!(
            phases.contains(&want),
            "no start-up phase {want}: {phases:?}"
        );
    }
    let total = st.startup.last().expect("phases");
    assert_eq!(total.phase, "total");
    let sum: u64 = st.startup[..st.startup.len() - 1]
        .iter()
        .map(|p| p.us)
        .sum();
    assert!(total.us > 0 && total.us >= sum, "{:?}", st.startup);
    assert!(
        d.log().contains("startup="),
        "ready line with phases:\n{}",
        d.log()
    );
    let names: Vec<_> = st.kernel_counters.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&"ringbuf_drops") && names.contains(&"session_map_full"));
    assert_eq!(st.kernel_counters[0].per_cpu.len(), num_cpus());
    let status = d.stop();
    assert!(status.success(), "daemon exit: {status}\n{}", d.log());
    assert!(!d.socket().exists(), "socket removed on shutdown");
}

fn num_cpus() -> usize {
    let text = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    // e.g. "0-1"
    text.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

#[test]
fn a_full_session_map_is_counted_and_raised_never_silent() {
    // Room for the launcher and two children only.
    let Some(d) = Daemon::start_with(&["--max-tracked-processes", "3"]) else {
        return;
    };
    let out = d.run_in(
        "full",
        &std::env::temp_dir(),
        &[
            "bash",
            "-c",
            "for i in 1 2 3 4 5 6; do sleep 0.3 & done; wait",
        ],
    );
    assert!(out.status.success());
    let sid = d.session("full").id;
    let evs = d.wait_for(&sid, "session_map_full events", |evs| {
        evs.iter()
            .filter(|e| e.kind() == EventKind::SessionMapFull)
            .count()
            >= 3
    });
    let lost: Vec<u32> = evs
        .iter()
        .filter(|e| e.kind() == EventKind::SessionMapFull)
        .map(|e| e.fork().expect("child").child_tgid)
        .collect();
    assert!(lost.iter().all(|t| *t != 0));
    let st: StatusReport = d.json(&["status", "--json"]);
    assert_eq!(st.tracked_processes_max, 3);
    let full = st
        .kernel_counters
        .iter()
        .find(|c| c.name == "session_map_full")
        .unwrap();
    assert!(full.total >= lost.len() as u64, "{full:?}");
    // `demo` is a monitor profile: the untracked children are recorded, not touched.
    for e in evs.iter().filter(|e| e.kind() == EventKind::SessionMapFull) {
        let dec = e
            .decision
            .as_ref()
            .expect("a decision on every untracked child");
        assert_eq!(
            (dec.action.as_str(), dec.enforced_by.as_str()),
            ("alerted", "none")
        );
    }
    // The daemon raises the counter as a loss event too.
    let start = Instant::now();
    while !d
        .events(None)
        .iter()
        .any(|e| e.loss().is_some_and(|l| l.counter == "session_map_full"))
    {
        assert!(start.elapsed() < patience(), "no loss event");
        thread::sleep(Duration::from_millis(100));
    }
}

/// In an enforce-mode session a child the kernel cannot track would run outside its
/// profile: the daemon kills it (and only it), and the event says so.
#[test]
fn an_enforce_session_child_that_cannot_be_tracked_is_killed() {
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("strict.yaml"),
        "name: strict\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n",
    )
    .unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--max-tracked-processes", "3", "--rules-dir", &rd]) else {
        return;
    };
    // Six children that would each live 8 s; every wait reports pid and status.
    let script = "for i in 1 2 3 4 5 6; do sleep 8 & p=\"$p $!\"; done; \
                  for c in $p; do wait $c; echo \"$c $?\"; done";
    let out = d.run_profile(
        "strict",
        "strict",
        &std::env::temp_dir(),
        &["bash", "-c", script],
    );
    let status: BTreeMap<u32, i32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (pid, st) = l.split_once(' ')?;
            Some((pid.parse().ok()?, st.parse().ok()?))
        })
        .collect();
    assert_eq!(status.len(), 6, "{out:?}");
    let sid = d.session("strict").id;
    let killed = status
        .values()
        .filter(|s| **s == 128 + libc::SIGKILL)
        .count();
    let evs = d.wait_for(&sid, "a decision per untracked child", |evs| {
        evs.iter()
            .filter(|e| e.kind() == EventKind::SessionMapFull)
            .count()
            >= killed
    });
    let untracked: BTreeMap<u32, &DecisionInfo> = evs
        .iter()
        .filter(|e| e.kind() == EventKind::SessionMapFull)
        .map(|e| (e.fork().unwrap().child_tgid, e.decision.as_ref().unwrap()))
        .collect();
    assert!(!untracked.is_empty(), "the map (3) cannot hold 6 children");
    for (pid, st) in &status {
        match untracked.get(pid) {
            // Killed before its 8 s sleep ended; the event names the layer.
            Some(dec) => {
                assert_eq!(*st, 128 + libc::SIGKILL, "untracked child {pid}");
                assert_eq!(
                    (
                        dec.decision.as_str(),
                        dec.action.as_str(),
                        dec.enforced_by.as_str()
                    ),
                    ("deny", "killed", "signal")
                );
                assert!(dec.rule.starts_with("tracking.capacity"), "{dec:?}");
            }
            // A tracked child is untouched.
            None => assert_eq!(*st, 0, "tracked child {pid}"),
        }
    }
}

#[test]
fn events_follow_streams_new_events_live() {
    let Some(d) = Daemon::start() else { return };
    use std::io::BufRead;
    let mut follow = d
        .cli()
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(ev) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    thread::sleep(Duration::from_millis(300));
    let out = d.run_in("live", &std::env::temp_dir(), &["true"]);
    assert!(out.status.success());
    let deadline = Instant::now() + patience();
    let mut kinds = Vec::new();
    while !kinds.iter().any(|k| k == "session_end") {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("follow got only {kinds:?}"));
        if ev.session.name == "live" {
            kinds.push(ev.kind().as_str().to_owned());
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(kinds.first().map(String::as_str), Some("session_start"));
    assert!(kinds.iter().any(|k| k == "exec"), "{kinds:?}");
}

/// The BPF-LSM layer: where the kernel runs the `bpf` LSM (the VM tier boots with
/// `lsm=...,bpf`), `execve` in a `lockdown` session fails with EPERM before it runs while
/// the same exec outside succeeds. Elsewhere the profile is refused at enrolment, naming
/// the missing layer, and the agent never runs.
#[test]
fn lockdown_exec_is_denied_by_bpf_lsm_or_refused_without_it() {
    let Some(d) = Daemon::start() else { return };
    let st: StatusReport = d.json(&["status", "--json"]);
    let lsm = st
        .programs
        .iter()
        .find(|p| p.name == "bprm_check_security")
        .expect("lsm row");
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("ran");
    let touch = format!("/usr/bin/touch {}", marker.display());
    let out = d.run_profile("lockdown", "lock", work.path(), &["/bin/sh", "-c", &touch]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!marker.exists(), "a lockdown agent executed a program");
    if std::env::var("AGENTWARDEN_EXPECT_LSM").is_ok_and(|v| v == "1") {
        // The VM tier boots with lsm=...,bpf: the layer must be there.
        assert!(
            st.host.bpf_lsm_active,
            "BPF-LSM not active: {}",
            st.host.active_lsms
        );
    }
    if st.host.bpf_lsm_active {
        assert_eq!(lsm.state, "attached", "{lsm:?}");
        assert_eq!(out.status.code(), Some(126), "{err}");
        assert!(
            err.contains("Operation not permitted"),
            "execve must fail with EPERM: {err}"
        );
        let outside = Command::new("/bin/sh")
            .args(["-c", &touch])
            .status()
            .unwrap();
        assert!(
            outside.success() && marker.exists(),
            "exec outside a session is untouched"
        );
        let st: StatusReport = d.json(&["status", "--json"]);
        let denied = st
            .kernel_counters
            .iter()
            .find(|c| c.name == "lsm_exec_denied")
            .unwrap();
        assert!(denied.total >= 1, "{denied:?}");
        println!(
            "bpf-lsm deny took effect on {}: execve in session -> EPERM, outside -> ok",
            st.host.kernel_release
        );
    } else {
        assert_eq!(lsm.state, "left out");
        assert!(
            lsm.reason
                .as_deref()
                .unwrap_or("")
                .contains("needs BPF-LSM"),
            "{lsm:?}"
        );
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(
            err.contains("needs the bprm_check_security program"),
            "{err}"
        );
    }
}

/// openat2(2) goes through its own tracepoints; its opens are resolved like openat's.
#[test]
fn openat2_opens_are_observed_and_resolved() {
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(work.path()).unwrap();
    fs::write(dir.join("file"), "x").unwrap();
    symlink("file", dir.join("alias")).unwrap();
    // struct open_how { u64 flags; u64 mode; u64 resolve; } — SYS_openat2 is 437 on x86_64.
    let py = "import ctypes, sys\n\
class How(ctypes.Structure):\n    _fields_ = [('flags', ctypes.c_uint64), ('mode', ctypes.c_uint64), ('resolve', ctypes.c_uint64)]\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
fd = libc.syscall(437, -100, b'alias', ctypes.byref(How(0o2000000, 0, 0)), 24)\n\
sys.exit(0 if fd >= 0 else 1)\n";
    let out = d.run_in("o2", &dir, &["/usr/bin/python3", "-c", py]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sid = d.session("o2").id;
    let target = dir.join("file");
    let evs = d.wait_for(&sid, "the openat2 event", |evs| {
        opens_of(evs, &target).any(|e| e.open().is_some_and(|o| o.syscall == "openat2"))
    });
    let o = opens_of(&evs, &target).find_map(|e| e.open().filter(|o| o.syscall == "openat2"));
    let o = o.unwrap();
    assert!(o.path_resolved && o.result >= 0);
    assert_eq!(o.flags, ["O_RDONLY", "O_CLOEXEC"]);
}

/// A profile file that turns bad is rejected with file, line and field, and the daemon
/// keeps running on the last good version (reload on SIGHUP).
#[test]
fn a_bad_profile_is_rejected_and_the_last_good_version_stays() {
    let rules = tempfile::tempdir().unwrap();
    let good = "name: team\ndescription: d\nowners: { business: b, technical: t }\nmode: monitor\n";
    fs::write(rules.path().join("team.yaml"), good).unwrap();
    let dir = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &dir]) else {
        return;
    };
    let cwd = std::env::temp_dir();
    let run = |name: &str, profile: &str| d.run_profile(profile, name, &cwd, &["true"]);
    assert!(run("t1", "team").status.success());

    let bad =
        "name: team\ndescription: d\nowners: { business: b, technical: t }\nmode: sometimes\n";
    fs::write(rules.path().join("team.yaml"), bad).unwrap();
    fs::write(
        rules.path().join("other.yaml"),
        "name: other\nmode: enforce\n",
    )
    .unwrap();
    let pid = rustix::process::Pid::from_child(d.child.as_ref().unwrap());
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let start = Instant::now();
    while !d.log().contains("SIGHUP: profiles reloaded") {
        assert!(start.elapsed() < patience(), "no reload:\n{}", d.log());
        thread::sleep(Duration::from_millis(50));
    }
    let log = d.log();
    assert!(
        log.contains("team.yaml:4:7: error: mode: unknown variant `sometimes`"),
        "{log}"
    );
    assert!(
        log.contains("other.yaml:2:1: error: description: missing field `description`"),
        "{log}"
    );
    assert!(
        run("t2", "team").status.success(),
        "last good `team` still in force"
    );
    let out = run("t3", "other");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown profile `other`"));
}

/// Tries each network operation and prints `label=ok` or `label=errno`.
const NET_PROBE: &str = r#"
import socket, sys
ok, denied = int(sys.argv[1]), int(sys.argv[2])
def attempt(label, fam, kind, addr, udp=False):
    s = socket.socket(fam, kind)
    s.settimeout(5)
    try:
        if udp:
            s.sendto(b"x", addr)
        else:
            s.connect(addr)
        print(label + "=ok")
    except OSError as e:
        print(label + "=" + str(e.errno))
    finally:
        s.close()
attempt("v4_allowed", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", ok))
attempt("v4_denied", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", denied))
attempt("mapped_denied", socket.AF_INET6, socket.SOCK_STREAM, ("::ffff:127.0.0.1", denied))
attempt("mapped_allowed", socket.AF_INET6, socket.SOCK_STREAM, ("::ffff:127.0.0.1", ok))
attempt("udp_denied", socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", denied), udp=True)
"#;

fn net_profile(name: &str, mode: &str, port: u16) -> String {
    format!(
        "name: {name}\ndescription: test\nowners: {{ business: b, technical: t }}\nmode: {mode}\n\
         network:\n  default: deny\n  allow:\n    - {{ cidr: 127.0.0.1, ports: \"{port}\" }}\n  \
         on_violation: block\n"
    )
}

/// Two loopback listeners, on a port the test profiles allow and on one they deny, and a
/// rules directory for the profiles.
struct NetFixture {
    _listeners: [TcpListener; 2],
    p_ok: u16,
    p_denied: u16,
    rules: TempDir,
}

impl NetFixture {
    fn new() -> Self {
        let l = || TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners = [l(), l()];
        let port = |i: usize| listeners[i].local_addr().unwrap().port();
        Self {
            p_ok: port(0),
            p_denied: port(1),
            _listeners: listeners,
            rules: tempfile::tempdir().unwrap(),
        }
    }

    fn profile(&self, name: &str, text: String) {
        fs::write(self.rules.path().join(format!("{name}.yaml")), text).unwrap();
    }

    fn daemon(&self) -> Option<Daemon> {
        let dir = self.rules.path().to_str().unwrap().to_owned();
        Daemon::start_with(&["--rules-dir", &dir])
    }
}

/// Network rules are decided in the kernel by the cgroup layer on the kernel's copy of
/// the address: EPERM before the connect or send, IPv4-mapped IPv6 judged as IPv4, UDP
/// caught like TCP; monitor mode records and lets through; outside sessions nothing.
#[test]
fn network_rules_block_in_the_kernel_and_monitor_only_records() {
    let f = NetFixture::new();
    let (p_ok, p_denied) = (f.p_ok, f.p_denied);
    f.profile("nettest", net_profile("nettest", "enforce", p_ok));
    f.profile("netmon", net_profile("netmon", "monitor", p_ok));
    let Some(d) = f.daemon() else { return };
    let cwd = std::env::temp_dir();
    let st: StatusReport = d.json(&["status", "--json"]);
    let cg = st
        .programs
        .iter()
        .find(|p| p.name == "connect4")
        .expect("connect4 row");
    if cg.state != "attached" {
        // No cgroup layer here: a blocking profile is refused, never silently downgraded.
        let out = d.run_profile("nettest", "net-refused", &cwd, &["true"]);
        assert_eq!(out.status.code(), Some(125));
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs the connect4 program"));
        println!(
            "cgroup layer absent ({:?}): blocking profile refused",
            cg.reason
        );
        return;
    }
    let (a, b) = (p_ok.to_string(), p_denied.to_string());
    let probe = |profile: &str, name: &str| {
        let out = d.run_profile(
            profile,
            name,
            &cwd,
            &["/usr/bin/python3", "-c", NET_PROBE, &a, &b],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let enforced = probe("nettest", "net-enforce");
    for line in [
        "v4_allowed=ok",
        "v4_denied=1",
        "mapped_denied=1",
        "mapped_allowed=ok",
        "udp_denied=1",
    ] {
        assert!(
            enforced.lines().any(|l| l == line),
            "want {line} (1 = EPERM) in:\n{enforced}"
        );
    }
    let monitored = probe("netmon", "net-monitor");
    for line in ["v4_denied=ok", "mapped_denied=ok", "udp_denied=ok"] {
        assert!(
            monitored.lines().any(|l| l == line),
            "monitor must not act: {line}\n{monitored}"
        );
    }
    // Outside every session the same destination is untouched.
    assert!(std::net::TcpStream::connect(("127.0.0.1", p_denied)).is_ok());

    let sid = d.session("net-enforce").id;
    let evs = d.wait_for(&sid, "decisions", |evs| {
        evs.iter().filter(|e| e.decision.is_some()).count() >= 5
    });
    let decided = |port: u16, op: &str| {
        evs.iter()
            .filter(|e| e.net().is_some_and(|n| n.port == port && n.op == op))
            .map(|e| (e.net().cloned().unwrap(), e.decision.clone().unwrap()))
            .collect::<Vec<_>>()
    };
    let blocked = decided(p_denied, "connect");
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    for (net, dec) in &blocked {
        assert_eq!(
            net.address, "127.0.0.1",
            "mapped address judged and shown as IPv4"
        );
        assert_eq!(
            (dec.decision.as_str(), dec.action.as_str()),
            ("deny", "blocked")
        );
        assert_eq!(
            (dec.enforced_by.as_str(), dec.rule.as_str()),
            ("cgroup", "network.default")
        );
    }
    let udp = decided(p_denied, "sendmsg");
    assert_eq!(udp.len(), 1, "{udp:?}");
    assert_eq!(udp[0].0.protocol, "udp");
    let allowed = decided(p_ok, "connect");
    assert!(!allowed.is_empty());
    assert_eq!(allowed[0].1.decision, Verdict::Allow);
    assert!(
        allowed[0]
            .1
            .rule
            .ends_with("nettest.yaml:8 (network.allow[0])"),
        "{:?}",
        allowed[0].1
    );

    let mid = d.session("net-monitor").id;
    let evs = d.wait_for(&mid, "monitor decisions", |evs| {
        with_action(evs, Action::Alerted).count() >= 3
    });
    let alerted = evs
        .iter()
        .filter_map(|e| e.decision.as_ref())
        .find(|x| x.action == Action::Alerted)
        .unwrap();
    assert_eq!(
        (alerted.decision.as_str(), alerted.enforced_by.as_str()),
        ("deny", "none")
    );
}

/// Exec and file rules with `on_violation: alert` are judged on the kernel-resolved paths
/// and recorded as alerts, never acted on.
#[test]
fn exec_and_file_rules_are_judged_and_recorded_as_alerts() {
    let work = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(work.path()).unwrap();
    fs::create_dir_all(dir.join("secret")).unwrap();
    fs::write(dir.join("secret/key"), "k").unwrap();
    fs::write(dir.join("canary"), "c").unwrap();
    symlink("canary", dir.join("alias")).unwrap();
    let od = fs::canonicalize("/usr/bin/od").unwrap();
    let rules = tempfile::tempdir().unwrap();
    let profile = format!(
        "name: watch\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: enforce\n\
         exec:\n  deny: [{od}]\n  on_violation: alert\nfiles:\n  deny:\n    - {d}/secret/**\n    - {d}/canary\n    - /**/*.pem\n  on_violation: alert\n",
        od = od.display(),
        d = dir.display()
    );
    fs::write(rules.path().join("watch.yaml"), profile).unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let script = "cat alias secret/../secret/key; od -c /dev/null >/dev/null";
    let out = d.run_profile("watch", "watch", &dir, &["bash", "-c", script]);
    assert!(out.status.success(), "alerts never act: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ck");
    let sid = d.session("watch").id;
    let evs = d.wait_for(&sid, "judged events", |evs| {
        evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
    });
    let decision_of = |path: &Path, kind: &str| {
        let p = path.to_string_lossy().into_owned();
        evs.iter()
            .find(|e| {
                e.kind().as_str() == kind
                    && (e.open().is_some_and(|o| o.path == p)
                        || e.exec().is_some_and(|x| x.path == p))
            })
            .and_then(|e| e.decision.clone())
            .unwrap_or_else(|| panic!("no {kind} of {}:\n{}", path.display(), dump(&evs)))
    };
    let canary = decision_of(&dir.join("canary"), "open");
    assert_eq!(
        (canary.decision.as_str(), canary.action.as_str()),
        ("deny", "alerted")
    );
    assert_eq!(canary.enforced_by, Layer::None);
    assert!(
        canary.rule.ends_with("watch.yaml:11 (files.deny[1])"),
        "{canary:?}"
    );
    let key = decision_of(&dir.join("secret/key"), "open");
    assert!(
        key.rule.ends_with("(files.deny[0])") && key.action == Action::Alerted,
        "{key:?}"
    );
    let odx = decision_of(&od, "exec");
    assert!(
        odx.rule.ends_with("watch.yaml:6 (exec.deny[0])") && odx.action == Action::Alerted,
        "{odx:?}"
    );
    let cat = decision_of(&fs::canonicalize("/bin/cat").unwrap(), "exec");
    assert_eq!(
        (cat.decision.as_str(), cat.rule.as_str()),
        ("allow", "exec.default")
    );
}

/// A directory with a canary, a secret tree, an allowed file, a symlink and a hard link
/// to the canary, and a copy of a program (`bin/tool`) that the profiles deny.
struct PathFixture {
    _work: TempDir,
    dir: PathBuf,
    rules: TempDir,
}

impl PathFixture {
    fn new() -> Self {
        let work = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(work.path()).unwrap();
        for sub in ["secret", "app", "bin"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fs::write(dir.join("canary"), "CANARY-BYTES\n").unwrap();
        fs::write(dir.join("secret/key"), "KEY-BYTES\n").unwrap();
        fs::write(dir.join("app/.env-test"), "ENV-BYTES\n").unwrap();
        fs::write(dir.join("ok.txt"), "fine\n").unwrap();
        symlink("canary", dir.join("alias")).unwrap();
        // Another name for the same file: denied by inode, whatever the path says.
        fs::hard_link(dir.join("canary"), dir.join("app/hardlink")).unwrap();
        fs::copy("/usr/bin/od", dir.join("bin/tool")).unwrap();
        Self {
            _work: work,
            dir,
            rules: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes a profile denying the fixture's canary, secret tree, `.env-test` files and
    /// `bin/tool`, with `on_violation` (and `fallback`) as given.
    fn profile(&self, name: &str, mode: &str, on_violation: &str) {
        let text = format!(
            "name: {name}\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: {mode}\n\
             exec:\n  deny: [{d}/bin/tool]\n  {on_violation}\n\
             files:\n  deny:\n    - {d}/canary\n    - {d}/secret/**\n    - \"**/.env-test\"\n  {on_violation}\n",
            d = self.dir.display()
        );
        fs::write(self.rules.path().join(format!("{name}.yaml")), text).unwrap();
    }

    fn daemon(&self) -> Option<Daemon> {
        let rd = self.rules.path().to_str().unwrap().to_owned();
        Daemon::start_with(&["--rules-dir", &rd])
    }
}

fn lsm_attached(d: &Daemon) -> bool {
    let st: StatusReport = d.json(&["status", "--json"]);
    let expect = std::env::var("AGENTWARDEN_EXPECT_LSM").is_ok_and(|v| v == "1");
    let attached = ["file_open", "bprm_check_security"].map(|n| {
        st.programs
            .iter()
            .any(|p| p.name == n && p.state == "attached")
    });
    if expect {
        assert_eq!(attached, [true, true], "the VM tier boots with lsm=...,bpf");
    }
    attached[0] && attached[1]
}

/// A re-binding of the deny rules (here forced by SIGHUP; the daemon also does it every
/// 10 s) after a denied program was renamed keeps it denied: the rule's path names no
/// file any more, but the program still exists under its new name. Once its last name is
/// gone, the binding goes too.
#[test]
fn a_renamed_denied_program_stays_denied_after_the_rules_are_bound_again() {
    let f = PathFixture::new();
    f.profile("rebind", "enforce", "on_violation: kill");
    let Some(d) = f.daemon() else { return };
    let dir = &f.dir;
    // The rules are bound for a session owner at their first session.
    assert!(
        d.run_profile("rebind", "rb0", dir, &["true"])
            .status
            .success()
    );
    fs::rename(dir.join("bin/tool"), dir.join("bin/renamed")).unwrap();
    let pid = rustix::process::Pid::from_child(d.child.as_ref().unwrap());
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let start = Instant::now();
    while !d.log().contains("SIGHUP: profiles reloaded") {
        assert!(start.elapsed() < patience(), "no reload:\n{}", d.log());
        thread::sleep(Duration::from_millis(50));
    }
    let out = d.run_profile("rebind", "rb", dir, &["bin/renamed", "-c", "ok.txt"]);
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("f   i   n   e"));
    // The same program copied to a new file (a different inode) is not the denied one.
    fs::copy(dir.join("bin/renamed"), dir.join("bin/copy")).unwrap();
    let out = d.run_profile("rebind", "rb2", dir, &["bin/copy", "-c", "ok.txt"]);
    assert!(out.status.success(), "{out:?}");
}

/// `kill` ends the process before it returns to user mode: a reader of the canary never
/// holds a byte, through a symlink, a relative `..` path, a file-name rule and a hard link,
/// and a denied program dies at exec, also renamed or hard-linked. Where BPF-LSM runs the
/// open or exec is refused as well (`enforced_by: lsm`); elsewhere the tracepoint's signal
/// does it (`signal`).
#[test]
fn denied_files_and_programs_are_killed_before_returning_to_user_mode() {
    let f = PathFixture::new();
    f.profile("killer", "enforce", "on_violation: kill");
    let Some(d) = f.daemon() else { return };
    let layer = if lsm_attached(&d) { "lsm" } else { "signal" };
    let dir = &f.dir;
    let run = |name: &str, cwd: &Path, args: &[&str]| d.run_profile("killer", name, cwd, args);
    for (name, cwd, args) in [
        ("k-symlink", dir.clone(), vec!["cat", "alias"]),
        ("k-dotdot", dir.join("secret"), vec!["cat", "../secret/key"]),
        ("k-name", dir.join("app"), vec!["cat", ".env-test"]),
        ("k-hardlink", dir.join("app"), vec!["cat", "hardlink"]),
        ("k-exec", dir.clone(), vec!["bin/tool", "-c", "/dev/null"]),
        (
            "k-renamed",
            dir.clone(),
            vec![
                "sh",
                "-c",
                "mv bin/tool bin/renamed && exec bin/renamed -c ok.txt",
            ],
        ),
        (
            "k-exec-link",
            dir.clone(),
            vec![
                "sh",
                "-c",
                "ln bin/renamed linked && exec ./linked -c ok.txt",
            ],
        ),
    ] {
        let out = run(name, &cwd, &args);
        assert_eq!(out.status.signal(), Some(9), "{name}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains("BYTES") && !stdout.contains("f   i   n   e"),
            "{name}: a killed process produced output: {stdout}"
        );
    }
    // An O_PATH handle gives no access to the content (Claude Code resolves the paths a
    // command names this way): not a violation.
    let opath = run(
        "k-opath",
        dir,
        &[
            "/usr/bin/python3",
            "-c",
            "import os; os.close(os.open('canary', os.O_PATH)); print('opath-ok')",
        ],
    );
    assert!(opath.status.success(), "{opath:?}");
    let ok = run("k-ok", dir, &["cat", "ok.txt"]);
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "fine\n");
    // Outside every session the same file reads normally.
    let outside = Command::new("cat").arg(dir.join("alias")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&outside.stdout), "CANARY-BYTES\n");

    let killed_in = |session: &str, path: &str| {
        let sid = d.session(session).id;
        let evs = d.wait_for(&sid, "the kill decision", |evs| {
            evs.iter().any(|e| {
                e.decision
                    .as_ref()
                    .is_some_and(|x| x.action == Action::Killed)
            })
        });
        let ev = evs
            .iter()
            .find(|e| {
                e.decision
                    .as_ref()
                    .is_some_and(|x| x.action == Action::Killed)
            })
            .unwrap();
        let seen = ev
            .open()
            .map(|o| o.path.clone())
            .or_else(|| ev.exec().map(|x| x.path.clone()))
            .unwrap_or_default();
        assert_eq!(seen, path, "{session}:\n{}", dump(&evs));
        let exit = evs
            .iter()
            .filter(|e| tgid(e) == tgid(ev))
            .find_map(|e| e.exit().cloned())
            .expect("exit of the killed process");
        assert_eq!(exit.signal, Some(9));
        ev.decision.clone().unwrap()
    };
    let d_of = |p: &str| dir.join(p).to_string_lossy().into_owned();
    let canary = killed_in("k-symlink", &d_of("canary"));
    assert_eq!(
        (canary.decision.as_str(), canary.enforced_by.as_str()),
        ("deny", layer)
    );
    assert!(
        canary.rule.ends_with("killer.yaml:10 (files.deny[0])"),
        "{canary:?}"
    );
    let link = killed_in("k-hardlink", &d_of("app/hardlink"));
    assert!(link.rule.ends_with("(files.deny[0])"), "by inode: {link:?}");
    let renamed = killed_in("k-renamed", &d_of("bin/renamed"));
    assert!(
        renamed.rule.ends_with("killer.yaml:6 (exec.deny[0])"),
        "{renamed:?}"
    );
    killed_in("k-exec-link", &d_of("linked"));
}

/// Tries each access and prints `label=ok` or `label=errno`: `r:label=path` reads a
/// file, `w:label=path` writes one, `x:label=path` executes a program.
const PATH_PROBE: &str = r#"
import subprocess, sys
for spec in sys.argv[1:]:
    kind, rest = spec.split(":", 1)
    label, path = rest.split("=", 1)
    try:
        if kind == "r":
            data = open(path).read()
            print(label + "=ok" + ("-LEAK" if "BYTES" in data else ""))
        elif kind == "w":
            with open(path, "w") as f:
                f.write("written")
            print(label + "=ok")
        else:
            subprocess.run([path, "-c", "/dev/null"], stdout=subprocess.DEVNULL, check=True)
            print(label + "=ok")
    except OSError as e:
        print(label + "=" + str(e.errno))
    sys.stdout.flush()
"#;

/// `block` refuses the open or exec with EPERM before it happens where BPF-LSM runs (the
/// VM tier), holding against a symlink, a `..` path, a file-name rule, a hard link and a
/// renamed program; the event names the rule and `lsm`. Where BPF-LSM is missing the
/// profile is refused at enrolment, naming the missing hook. Monitor mode records only.
#[test]
fn denied_opens_and_execs_are_blocked_with_eperm_by_bpf_lsm_or_refused_without_it() {
    let f = PathFixture::new();
    f.profile("blocker", "enforce", "on_violation: block");
    f.profile("watcher", "monitor", "on_violation: block");
    let Some(d) = f.daemon() else { return };
    let dir = &f.dir;
    let specs = [
        "r:symlink=alias",
        "r:dotdot=secret/../secret/key",
        "r:name=app/.env-test",
        "r:hardlink=app/hardlink",
        "r:allowed=ok.txt",
        "x:exec=bin/tool",
        "x:allowed_exec=/usr/bin/true",
    ];
    let probe = |profile: &str, name: &str| {
        let mut args = vec!["/usr/bin/python3", "-c", PATH_PROBE];
        args.extend(specs);
        d.run_profile(profile, name, dir, &args)
    };
    if !lsm_attached(&d) {
        let out = probe("blocker", "b-refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(
            err.contains("needs the bprm_check_security program")
                || err.contains("needs the file_open program"),
            "{err}"
        );
        assert!(
            err.contains("fallback: kill"),
            "the way out is named: {err}"
        );
        println!("no BPF-LSM here: a blocking profile is refused at enrolment");
    } else {
        let out = probe("blocker", "b-lsm");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        for line in [
            "symlink=1",
            "dotdot=1",
            "name=1",
            "hardlink=1",
            "allowed=ok",
            "exec=1",
            "allowed_exec=ok",
        ] {
            assert!(
                stdout.lines().any(|l| l == line),
                "want {line} (1 = EPERM) in:\n{stdout}"
            );
        }
        let sid = d.session("b-lsm").id;
        let evs = d.wait_for(&sid, "blocked decisions", |evs| {
            with_action(evs, Action::Blocked).count() >= 5
        });
        let blocked: Vec<_> = with_action(&evs, Action::Blocked).collect();
        for e in &blocked {
            let dec = e.decision.as_ref().unwrap();
            assert_eq!(
                (dec.decision.as_str(), dec.enforced_by.as_str()),
                ("deny", "lsm")
            );
        }
        let canary = dir.join("canary").to_string_lossy().into_owned();
        let on_canary = blocked
            .iter()
            .find(|e| e.open().is_some_and(|o| o.path == canary))
            .unwrap_or_else(|| panic!("no blocked open of the canary:\n{}", dump(&evs)));
        let o = on_canary.open().unwrap();
        assert_eq!(o.result, -1, "EPERM in the event");
        assert!(o.path_resolved);
        let tool = dir.join("bin/tool").to_string_lossy().into_owned();
        assert!(
            blocked
                .iter()
                .any(|e| e.exec().is_some_and(|x| x.path == tool)),
            "no blocked exec of bin/tool:\n{}",
            dump(&evs)
        );
        let st: StatusReport = d.json(&["status", "--json"]);
        let n = |name: &str| {
            st.kernel_counters
                .iter()
                .find(|c| c.name == name)
                .map_or(0, |c| c.total)
        };
        assert!(n("lsm_file_denied") >= 4 && n("lsm_exec_denied") >= 1);
        println!(
            "bpf-lsm file/exec block took effect on {}: open -> EPERM, exec -> EPERM",
            st.host.kernel_release
        );
    }
    // Monitor mode: everything goes through and the would-be decisions are recorded.
    let out = probe("watcher", "b-monitor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in ["symlink=ok-LEAK", "hardlink=ok-LEAK", "exec=ok"] {
        assert!(
            stdout.lines().any(|l| l == line),
            "monitor must not act: {line}\n{stdout}"
        );
    }
    let sid = d.session("b-monitor").id;
    let evs = d.wait_for(&sid, "alerts", |evs| {
        with_action(evs, Action::Alerted).count() >= 5
    });
    assert!(
        evs.iter()
            .filter_map(|e| e.decision.as_ref())
            .all(|x| x.action != Action::Blocked && x.action != Action::Killed),
        "{}",
        dump(&evs)
    );
}

/// `files.default: deny` with allow lists, in a `run` session: Landlock (applied by
/// `run` before it executes the agent) refuses everything outside the lists with EACCES;
/// the refusal is recorded with the default rule and `landlock`. Outside the session the
/// same files are untouched.
#[test]
fn default_deny_files_are_fenced_by_landlock_in_run_sessions() {
    let work = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(work.path()).unwrap();
    for sub in ["allowed", "other", "out"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::write(dir.join("allowed/a"), "fine").unwrap();
    fs::write(dir.join("other/b"), "OTHER-BYTES").unwrap();
    let rules = tempfile::tempdir().unwrap();
    let profile = format!(
        "name: fenced\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: enforce\n\
         files:\n  default: deny\n  read: [/usr/**, /etc/**, {d}/allowed/**]\n  \
         write: [{d}/out/**]\n  on_violation: block\n",
        d = dir.display()
    );
    fs::write(rules.path().join("fenced.yaml"), profile).unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let st: StatusReport = d.json(&["status", "--json"]);
    let mut args = vec!["/usr/bin/python3", "-c", PATH_PROBE];
    args.extend([
        "r:allowed=allowed/a",
        "r:other=other/b",
        "w:out=out/c",
        "w:other_w=other/d",
    ]);
    let out = d.run_profile("fenced", "fence", &dir, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if st.host.landlock_abi.is_none() {
        assert!(
            stderr.contains("allow lists under `default: deny` are judged in userspace"),
            "{stderr}"
        );
        return skip("this kernel has no Landlock");
    }
    assert!(out.status.success(), "{out:?}");
    for line in ["allowed=ok", "other=13", "out=ok", "other_w=13"] {
        assert!(
            stdout.lines().any(|l| l == line),
            "want {line} (13 = EACCES) in:\n{stdout}\n{stderr}"
        );
    }
    assert!(!dir.join("other/d").exists());
    assert_eq!(fs::read_to_string(dir.join("out/c")).unwrap(), "written");
    assert_eq!(
        fs::read_to_string(dir.join("other/b")).unwrap(),
        "OTHER-BYTES"
    );
    let sid = d.session("fence").id;
    let other = dir.join("other/b").to_string_lossy().into_owned();
    let evs = d.wait_for(&sid, "the landlock refusal", |evs| {
        evs.iter()
            .any(|e| e.open().is_some_and(|o| o.path == other))
    });
    let refused = evs
        .iter()
        .find(|e| e.open().is_some_and(|o| o.path == other))
        .unwrap();
    assert_eq!(refused.open().unwrap().result, -13);
    let dec = refused.decision.as_ref().expect("decision");
    assert_eq!(
        (
            dec.decision.as_str(),
            dec.action.as_str(),
            dec.rule.as_str(),
            dec.enforced_by.as_str()
        ),
        ("deny", "blocked", "files.default", "landlock")
    );
}

/// `on_violation: kill` on the network: the cgroup layer refuses the connect or send and
/// the process is killed before it returns to user mode, TCP and UDP alike.
#[test]
fn network_kill_refuses_and_kills_before_return() {
    let f = NetFixture::new();
    let (p_ok, p_denied) = (f.p_ok, f.p_denied);
    f.profile(
        "netkill",
        net_profile("netkill", "enforce", p_ok)
            .replace("on_violation: block", "on_violation: kill"),
    );
    let Some(d) = f.daemon() else { return };
    let st: StatusReport = d.json(&["status", "--json"]);
    if !st
        .programs
        .iter()
        .any(|p| p.name == "connect4" && p.state == "attached")
    {
        return skip("the cgroup layer is not attached on this host");
    }
    let cwd = std::env::temp_dir();
    let tcp = format!(
        "import socket\ns = socket.socket()\nprint('before', flush=True)\n\
         s.connect(('127.0.0.1', {p_denied}))\nprint('after', flush=True)\n"
    );
    let udp = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         print('before', flush=True)\ns.sendto(b'x', ('127.0.0.1', {p_denied}))\n\
         print('after', flush=True)\n"
    );
    for (name, code) in [("nk-tcp", &tcp), ("nk-udp", &udp)] {
        let out = d.run_profile("netkill", name, &cwd, &["/usr/bin/python3", "-c", code]);
        assert_eq!(out.status.signal(), Some(9), "{name}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "before\n", "{name}");
        let sid = d.session(name).id;
        let evs = d.wait_for(&sid, "the kill", |evs| {
            evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
        });
        let dec = evs
            .iter()
            .find(|e| e.net().is_some_and(|n| n.port == p_denied))
            .and_then(|e| e.decision.clone())
            .unwrap_or_else(|| panic!("{name}: no decision:\n{}", dump(&evs)));
        assert_eq!(
            (
                dec.decision.as_str(),
                dec.action.as_str(),
                dec.enforced_by.as_str()
            ),
            ("deny", "killed", "cgroup")
        );
    }
    // The allowed destination still connects inside the same profile.
    let fine = format!("import socket\nsocket.create_connection(('127.0.0.1', {p_ok})).close()\n");
    let out = d.run_profile("netkill", "nk-ok", &cwd, &["/usr/bin/python3", "-c", &fine]);
    assert!(out.status.success(), "{out:?}");
}

/// An account for the agent, with its home in a temporary directory; removed on drop.
struct TestUser {
    name: String,
}

impl TestUser {
    fn create(name: &str, home: &Path) -> Self {
        let _ = Command::new("userdel").arg(name).output_within();
        let out = Command::new("useradd")
            .args(["-M", "-s", "/bin/bash", "-d"])
            .arg(home)
            .arg(name)
            .output_within();
        assert!(out.status.success(), "useradd: {out:?}");
        Self {
            name: name.to_owned(),
        }
    }

    fn chown(&self, path: &Path) {
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{0}:{0}", self.name))
            .arg(path)
            .output_within();
        assert!(out.status.success(), "chown: {out:?}");
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A network namespace of our own behind a veth pair, with a listener in it: a host that
/// is reachable from here and outside every shipped profile. Removed on drop.
struct ForeignHost {
    ns: String,
    veth: String,
    addr: String,
    listener: Child,
}

impl ForeignHost {
    fn start(tag: u32) -> Self {
        let ns = format!("aw-e2e-{tag}");
        let veth = format!("awe{tag}");
        let net = format!("198.18.{}", tag % 250);
        let addr = format!("{net}.1");
        let sh = |cmd: String| {
            let out = Command::new("sh").args(["-c", &cmd]).output_within();
            assert!(out.status.success(), "{cmd}: {out:?}");
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        sh(format!(
            "ip netns add {ns} && ip link add {veth} type veth peer name {veth}p && \
             ip link set {veth}p netns {ns} && ip addr add {net}.2/30 dev {veth} && \
             ip link set {veth} up && ip -n {ns} addr add {addr}/30 dev {veth}p && \
             ip -n {ns} link set {veth}p up && ip -n {ns} link set lo up"
        ));
        let listener = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-m", "http.server"])
            .args(["--bind", &addr, "8080"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("listener");
        let host = Self {
            ns,
            veth,
            addr,
            listener,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect((host.addr.as_str(), 8080)).is_err() {
            assert!(
                start.elapsed() < patience(),
                "the foreign host never listened"
            );
            thread::sleep(Duration::from_millis(100));
        }
        host
    }
}

impl Drop for ForeignHost {
    fn drop(&mut self) {
        let _ = self.listener.kill();
        let _ = self.listener.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

/// The scripted model server (`tests/support/scripted_model.py`) on loopback.
struct ModelServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ModelServer {
    fn start(dir: &Path, commands: &[String]) -> Self {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/scripted_model.py");
        let (log, port_file) = (dir.join("model.jsonl"), dir.join("model.port"));
        let child = Command::new("python3")
            .arg(script)
            .arg("0")
            .arg("--log")
            .arg(&log)
            .arg("--port-file")
            .arg(&port_file)
            .env(
                "SCRIPTED_COMMANDS",
                serde_json::to_string(commands).unwrap(),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("model server");
        let start = Instant::now();
        let port = loop {
            if let Some(p) = fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(start.elapsed() < patience(), "model server did not start");
            thread::sleep(Duration::from_millis(50));
        };
        Self { child, port, log }
    }

    /// The tool results Claude Code sent back, in order: (is_error, content).
    fn tool_results(&self) -> Vec<(bool, String)> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|v| v["tool_results"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let content = match &r["content"] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (r["is_error"].as_bool().unwrap_or(false), content)
            })
            .collect()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Done-when of the profiles issue: the real Claude Code (from npm, installed by `cargo
/// xtask setup`), started with `agentwarden run --profile claude-code` as an ordinary user
/// and driven by a scripted model on loopback, works in its project directory, while the
/// command it runs that reads `~/.ssh/id_rsa` is stopped before it holds a byte and its
/// connect to a host outside the profile is refused; both are recorded with the rule.
#[test]
fn claude_code_works_under_its_profile_and_is_stopped_at_credentials_and_foreign_hosts() {
    let Some(claude) = std::env::var_os("AGENTWARDEN_CLAUDE_CODE").map(PathBuf::from) else {
        return skip("AGENTWARDEN_CLAUDE_CODE unset: run through `cargo xtask test`");
    };
    if !claude.exists() {
        return skip("Claude Code not installed: run `cargo xtask setup`");
    }
    let Some(d) = Daemon::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(work.path()).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let (home, project) = (root.join("home"), root.join("project"));
    fs::create_dir_all(home.join(".ssh")).unwrap();
    fs::create_dir_all(&project).unwrap();
    fs::write(home.join(".ssh/id_rsa"), "PRIVATE-KEY-CANARY\n").unwrap();
    let tag = std::process::id() % 10_000;
    let user = TestUser::create(&format!("aw-e2e-{tag}"), &home);
    user.chown(&home);
    user.chown(&project);
    let foreign = ForeignHost::start(tag);
    let commands = vec![
        "echo hello-from-claude > notes.txt && cat notes.txt".to_owned(),
        "cat ~/.ssh/id_rsa".to_owned(),
        format!(
            "python3 -c \"import socket; socket.create_connection(('{}', 8080), timeout=5); \
             print('connected')\"",
            foreign.addr
        ),
        "ls".to_owned(),
    ];
    let model = ModelServer::start(&root, &commands);

    let out = d
        .cli()
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TERM", "dumb")
        .env(
            "ANTHROPIC_BASE_URL",
            format!("http://127.0.0.1:{}", model.port),
        )
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "1")
        .args([
            "run",
            "--profile",
            "claude-code",
            "--session-name",
            "claude-e2e",
        ])
        .args(["--user", &user.name, "--"])
        .arg(&claude)
        .args(["-p", "run the scripted commands", "--allowedTools", "Bash"])
        .args(["--output-format", "json", "--no-session-persistence"])
        .current_dir(&project)
        .stdin(Stdio::null())
        .output_within();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Claude Code failed: {out:?}\n{}",
        d.log()
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("claude json");
    assert_eq!(result["result"], "done", "{result}");
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(
        result["permission_denials"].as_array().map(Vec::len),
        Some(0),
        "Claude Code ran every command: {result}"
    );

    // It worked normally in its project directory.
    assert_eq!(
        fs::read_to_string(project.join("notes.txt")).unwrap(),
        "hello-from-claude\n"
    );
    let results = model.tool_results();
    assert_eq!(results.len(), 4, "{results:?}");
    assert_eq!(results[0], (false, "hello-from-claude".to_owned()));
    assert!(results[3].1.contains("notes.txt"), "{results:?}");
    // The key reader was stopped before it held a byte; the connect was refused.
    assert!(results[1].0, "{results:?}");
    assert!(
        results.iter().all(|(_, c)| !c.contains("CANARY")),
        "the key leaked to the model: {results:?}"
    );
    assert!(
        results[2].0 && results[2].1.contains("Operation not permitted"),
        "{results:?}"
    );

    let session = d.session("claude-e2e");
    assert_eq!(session.owner_user.as_deref(), Some(user.name.as_str()));
    let evs = d.wait_for(&session.id, "the session's end", |evs| {
        evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
    });
    let key = home.join(".ssh/id_rsa").to_string_lossy().into_owned();
    let on_key = evs
        .iter()
        .filter(|e| e.open().is_some_and(|o| o.path == key))
        .find_map(|e| e.decision.clone())
        .unwrap_or_else(|| panic!("no decision on {key}:\n{}", dump(&evs)));
    assert_eq!(on_key.decision, Verdict::Deny);
    assert!(
        matches!(
            (on_key.action.as_str(), on_key.enforced_by.as_str()),
            ("killed", "signal") | ("blocked", "lsm")
        ),
        "{on_key:?}"
    );
    assert!(
        on_key
            .rule
            .starts_with("rules/claude-code.yaml:29 (files.deny[0])"),
        "{on_key:?}"
    );
    let on_net = evs
        .iter()
        .filter(|e| e.net().is_some_and(|n| n.address == foreign.addr))
        .find_map(|e| e.decision.clone())
        .unwrap_or_else(|| panic!("no decision on {}:\n{}", foreign.addr, dump(&evs)));
    assert_eq!(
        (
            on_net.decision.as_str(),
            on_net.action.as_str(),
            on_net.enforced_by.as_str(),
            on_net.rule.as_str()
        ),
        ("deny", "blocked", "cgroup", "network.default")
    );
    // The model API on loopback was allowed by the profile's rule.
    assert!(
        evs.iter()
            .any(|e| e.net().is_some_and(|n| n.port == model.port)
                && e.decision
                    .as_ref()
                    .is_some_and(|x| x.decision == Verdict::Allow)),
        "{}",
        dump(&evs)
    );
    // The audit trail answers who did what: the timeline shows what it ran, read and
    // connected to with the decisions and the owners; the chain verifies, and editing
    // one row makes verification fail naming that row.
    let _ = d.audit_session("claude-e2e");
    let t = d.audit(&["timeline", "--session", "claude-e2e"]);
    assert!(t.status.success(), "{t:?}");
    let timeline = String::from_utf8_lossy(&t.stdout);
    for needle in [
        "agent      claude-code".to_owned(),
        format!("principal  {} (uid ", user.name),
        "cat ~/.ssh/id_rsa".to_owned(),
        format!("{key} O_RDONLY"),
        "DENY killed by signal".to_owned(),
        format!("{}:8080", foreign.addr),
        "DENY blocked by cgroup: network.default".to_owned(),
        "echo hello-from-claude".to_owned(),
    ] {
        assert!(
            timeline.contains(&needle),
            "no `{needle}` in the timeline:\n{timeline}"
        );
    }
    let profile = agentwarden::profiles::ProfileSet::embedded().unwrap();
    let owners = &profile.get("claude-code").unwrap().file.owners;
    assert!(
        timeline.contains(&format!(
            "business: {}, technical: {}",
            owners.business, owners.technical
        )),
        "{timeline}"
    );
    let to_foreign = d.audit_query(&["--session", "claude-e2e", "--dest", &foreign.addr]);
    assert!(
        to_foreign
            .iter()
            .any(|r| r["decision"]["action"] == "blocked"),
        "{to_foreign:?}"
    );
    let v = d.audit(&["verify"]);
    assert!(v.status.success(), "{v:?}");
    let db = rusqlite::Connection::open(d.db()).unwrap();
    let seq: i64 = db
        .query_row(
            "SELECT seq FROM actions WHERE kind = 'open' AND path = ?1",
            [&key],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE actions SET path = '/tmp/nothing-to-see' WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    let v = d.audit(&["verify"]);
    assert_eq!(v.status.code(), Some(1), "{v:?}");
    assert!(
        String::from_utf8_lossy(&v.stdout).contains(&format!("(actions row seq={seq}) was edited")),
        "{v:?}"
    );
    println!("claude code audit timeline:\n{timeline}");
    println!(
        "claude code under claude-code: worked in {}, key read {} by {}, connect to {} {} by {}",
        project.display(),
        on_key.action,
        on_key.enforced_by,
        foreign.addr,
        on_net.action,
        on_net.enforced_by
    );
}

/// A DNS responder on loopback for one name: A queries get the current address with a
/// short TTL, everything else an empty answer. The daemon is pointed at it with
/// `--dns-server`.
struct DnsResponder {
    addr: std::net::SocketAddr,
    answer: std::sync::Arc<std::sync::Mutex<std::net::Ipv4Addr>>,
    queries: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl DnsResponder {
    fn start(first: std::net::Ipv4Addr, ttl: u32) -> Self {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let answer = std::sync::Arc::new(std::sync::Mutex::new(first));
        let queries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (a, q) = (answer.clone(), queries.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                if let Some(reply) = dns_reply(&buf[..n], *a.lock().unwrap(), ttl) {
                    q.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        Self {
            addr,
            answer,
            queries,
        }
    }
}

/// The reply to one query: the question echoed, one A record for A queries.
fn dns_reply(q: &[u8], ip: std::net::Ipv4Addr, ttl: u32) -> Option<Vec<u8>> {
    // Header (12 bytes), then the question: labels up to a zero byte, type, class.
    let mut end = 12;
    while *q.get(end)? != 0 {
        end += 1 + usize::from(q[end]);
    }
    let qtype = u16::from_be_bytes([*q.get(end + 1)?, *q.get(end + 2)?]);
    let question = &q[12..end + 5];
    let is_a = qtype == 1;
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[..2]); // id
    r.extend_from_slice(&[0x81, 0x80]); // response, recursion desired and available
    r.extend_from_slice(&[0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if is_a {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // name pointer, type A, class IN
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// A network rule naming a host follows the host's address: the daemon resolves it and
/// asks again when the answer's TTL runs out, so when the service moves, the allowed
/// address moves with it and the old one is denied.
#[test]
fn host_name_rules_follow_the_answer_when_its_ttl_expires() {
    use std::net::Ipv4Addr;
    let (first, second) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let dns = DnsResponder::start(first, 2);
    let l1 = TcpListener::bind((first, 0)).unwrap();
    let l2 = TcpListener::bind((second, 0)).unwrap();
    let (p1, p2) = (
        l1.local_addr().unwrap().port(),
        l2.local_addr().unwrap().port(),
    );
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("svc.yaml"),
        "name: svc\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n\
         network:\n  default: deny\n  allow:\n    - { host: svc.agentwarden.test, ports: \"1-65535\" }\n  \
         on_violation: block\n",
    )
    .unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let server = dns.addr.to_string();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd, "--dns-server", &server]) else {
        return;
    };
    let st: StatusReport = d.json(&["status", "--json"]);
    if !st
        .programs
        .iter()
        .any(|p| p.name == "connect4" && p.state == "attached")
    {
        return skip("the cgroup layer is not attached on this host");
    }
    let probe = format!(
        "import socket\nfor label, addr in (('first', ('{first}', {p1})), ('second', ('{second}', {p2}))):\n    \
         s = socket.socket()\n    s.settimeout(5)\n    try:\n        s.connect(addr)\n        print(label + '=ok')\n    \
         except OSError as e:\n        print(label + '=' + str(e.errno))\n    s.close()\n"
    );
    let cwd = std::env::temp_dir();
    let attempt = |name: &str| {
        let out = d.run_profile("svc", name, &cwd, &["/usr/bin/python3", "-c", &probe]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The first answer takes effect once resolved.
    let start = Instant::now();
    loop {
        let got = attempt(&format!("svc-a{}", start.elapsed().as_millis()));
        if got == "first=ok\nsecond=1\n" {
            break;
        }
        assert!(
            start.elapsed() < patience(),
            "first answer never took effect: {got}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    // The service moves; within a few TTLs the rule follows (the old fixed 60 s period
    // could not).
    *dns.answer.lock().unwrap() = second;
    let moved = Instant::now();
    loop {
        let got = attempt(&format!("svc-b{}", moved.elapsed().as_millis()));
        if got == "first=1\nsecond=ok\n" {
            break;
        }
        assert!(
            moved.elapsed() < scaled(Duration::from_secs(20)),
            "the rule did not follow the new answer: {got}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    let queries = dns.queries.load(std::sync::atomic::Ordering::Relaxed);
    assert!(queries >= 2, "asked again after the TTL: {queries} queries");
    println!(
        "host rule followed the service from {first} to {second} in {:.1} s (TTL 2 s)",
        moved.elapsed().as_secs_f64()
    );
}
