//! Fixtures shared by the kernel tests: the daemon under test, command deadlines that
//! scale with the machine, event helpers, and the path-rule fixture.

pub(crate) use std::{
    collections::{BTreeMap, BTreeSet},
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

pub(crate) use agent_common::{
    event::EventKind,
    vocab::{Action, Layer, Verdict},
};
pub(crate) use agentwarden::{
    event::{Attribution, Body, DecisionInfo, Event, ToolCallInfo},
    proto::StatusReport,
    session::SessionView,
    skip::skip,
};
pub(crate) use tempfile::TempDir;

/// The daemon and CLI under test: the debug build next to this test binary, or the one
/// `AGENTWARDEN_BIN` names (the VM tier runs the release daemon: under emulation its
/// start-up is several times shorter than a debug build's).
pub(crate) fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("AGENTWARDEN_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_agentwarden").to_owned())
    })
}

/// The escape probes (`tests/probe`): beside the daemon under test, where `cargo xtask
/// test` (and the VM tier, for the release daemon) builds them.
pub(crate) fn probe() -> &'static str {
    static PROBE: OnceLock<String> = OnceLock::new();
    PROBE.get_or_init(|| {
        let p = Path::new(bin()).with_file_name("awprobe");
        assert!(
            p.exists(),
            "{} is missing: build it with `cargo build -p awprobe` (cargo xtask test does)",
            p.display()
        );
        p.display().to_string()
    })
}

/// How much slower this machine runs than the one the deadlines were set on:
/// `AGENTWARDEN_TIME_SCALE`, which the VM tier measures at guest boot (a fixed workload
/// timed in the guest against the host), at least 1.
pub(crate) fn time_scale() -> f64 {
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

/// A deadline set on a real host, stretched by [`time_scale`], but never past
/// [`DEADLINE_MAX`]: a guest's whole run has 25 minutes, and a wait that cannot end must
/// fail inside them, naming what it waited for, not stall the tier.
pub(crate) fn scaled(d: Duration) -> Duration {
    d.mul_f64(time_scale()).min(d.max(DEADLINE_MAX))
}

/// The longest any one wait may be stretched to (a guest's operations take seconds).
const DEADLINE_MAX: Duration = Duration::from_secs(300);

/// Upper bound for polling.
pub(crate) fn patience() -> Duration {
    scaled(Duration::from_secs(45))
}

/// Polls until `path` exists, failing with `what` past [`patience`].
pub(crate) fn wait_for_path(path: &Path, what: &str) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < patience(), "{what}");
        thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Not a daemon flag: tells [`Daemon::spawn_in`] to leave out `--detach-on-exit`, so
/// the daemon keeps its kernel side pinned when it stops (the product's default).
pub(crate) const KEEP_PINS: &str = "--keep-pins";

/// The pin directory of the test daemon whose files are in `dir`: its own, so daemons
/// of tests running side by side never adopt each other's.
pub(crate) fn pin_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "x".into(), |n| n.to_string_lossy().into_owned());
    // bpffs refuses names with a dot (it keeps them for its own files).
    PathBuf::from(format!("/sys/fs/bpf/aw-test-{}", name.replace('.', "")))
}

/// `agentwarden daemon` with its socket and state in `dir` and its own pin directory
/// ([`pin_dir`]); ended by SIGTERM if the test process dies first.
pub(crate) fn daemon_command(dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    // SAFETY: only an async-signal-safe prctl between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // The daemon must not outlive a test process that was killed.
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
    cmd.arg("--socket")
        .arg(dir.join("ctl.sock"))
        .arg("daemon")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--pin-dir")
        .arg(pin_dir(dir));
    cmd
}

/// A daemon for one test; stopped with SIGTERM when dropped, and whatever it pinned
/// removed.
pub(crate) struct Daemon {
    pub(crate) child: Option<Child>,
    pub(crate) dir: TempDir,
    /// Where the daemon sends its sd_notify messages (`READY=1`, `WATCHDOG=1`), kept
    /// open for the daemon's life.
    pub(crate) notify: std::os::unix::net::UnixDatagram,
}

impl Daemon {
    /// Starts a daemon, or returns `None` (skip) when not root.
    pub(crate) fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Starts a daemon serving Prometheus metrics on a free loopback port, with extra
    /// `daemon` arguments; the daemon and the address.
    pub(crate) fn start_with_metrics(extra: &[&str]) -> Option<(Self, String)> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["--metrics-addr", addr.as_str()];
        args.extend(extra);
        Self::start_with(&args).map(|d| (d, addr))
    }

    /// Starts a daemon with extra `daemon` arguments.
    pub(crate) fn start_with(extra: &[&str]) -> Option<Self> {
        if !is_root() {
            skip("loading eBPF programs needs root");
            return None;
        }
        Some(Self::spawn_in(tempfile::tempdir().expect("tempdir"), extra))
    }

    /// Starts a daemon whose socket, log and state directory are in `dir` (a restart
    /// reuses the state of the daemon before).
    pub(crate) fn spawn_in(dir: TempDir, extra: &[&str]) -> Self {
        Self::spawn_in_env(dir, extra, &[])
    }

    /// [`Daemon::spawn_in`] with more environment for the daemon.
    pub(crate) fn spawn_in_env(dir: TempDir, extra: &[&str], env: &[(&str, &str)]) -> Self {
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
        // The hook socket (beside the control socket) must be reachable by the agents'
        // users: the directory may be passed, not listed.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).expect("chmod");
        // Each test daemon pins under its own directory; unless the test asks for the
        // product's default (pins kept for a successor), it unloads when it stops.
        let keep = extra.contains(&KEEP_PINS);
        let mut extra: Vec<&str> = extra.iter().copied().filter(|a| *a != KEEP_PINS).collect();
        if !keep {
            extra.push("--detach-on-exit");
        }
        let child = daemon_command(dir.path())
            .arg("--quiet")
            .args(extra)
            .env("NOTIFY_SOCKET", &notify_path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        let mut d = Daemon {
            child: Some(child),
            dir,
            notify,
        };
        let start = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = d.notify.recv(&mut buf)
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

    /// SIGHUP, then waits until the daemon logs one more completed reload.
    pub(crate) fn reload(&self) {
        let done = "SIGHUP: profiles reloaded";
        let before = self.log().matches(done).count();
        let pid = rustix::process::Pid::from_child(self.child.as_ref().expect("running"));
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
        let start = Instant::now();
        while self.log().matches(done).count() == before {
            assert!(start.elapsed() < patience(), "no reload:\n{}", self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `status` lists the program `name` as attached.
    pub(crate) fn attached(&self, name: &str) -> bool {
        let st: StatusReport = self.json(&["status", "--json"]);
        st.programs
            .iter()
            .any(|p| p.name == name && p.state == "attached")
    }

    /// The audit database in the state directory.
    pub(crate) fn db(&self) -> PathBuf {
        self.dir.path().join("state/audit.db")
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    /// Where each of the daemon's threads is (state and kernel wait channel), for a
    /// failure that may be a daemon stuck somewhere: read from procfs, so it answers
    /// even when the daemon does not.
    pub(crate) fn threads(&self) -> String {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return "the daemon is not running".into();
        };
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return format!("daemon {pid}: gone");
        };
        let mut out = format!("daemon {pid} threads:\n");
        for t in tasks.filter_map(|t| t.ok()) {
            let dir = t.path();
            let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
            let stat = read("stat");
            // `pid (comm) state ...`: the state follows the last `)`.
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            out.push_str(&format!(
                "  {} {} state={} wchan={}\n",
                t.file_name().to_string_lossy(),
                read("comm").trim(),
                state.unwrap_or("?"),
                read("wchan")
            ));
        }
        out
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub(crate) fn cli(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("--socket").arg(self.socket());
        c
    }

    /// `agentwarden run --profile demo --session-name NAME -- ARGS` in `cwd`.
    pub(crate) fn run_in(&self, name: &str, cwd: &Path, args: &[&str]) -> Output {
        self.run_profile("demo", name, cwd, args)
    }

    pub(crate) fn run_profile(
        &self,
        profile: &str,
        name: &str,
        cwd: &Path,
        args: &[&str],
    ) -> Output {
        self.cli()
            .args(["run", "--profile", profile, "--session-name", name, "--"])
            .args(args)
            .current_dir(cwd)
            .output_within()
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let out = self.cli().args(args).output_within();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    pub(crate) fn sessions(&self) -> Vec<SessionView> {
        self.json(&["sessions", "--json"])
    }

    pub(crate) fn session(&self, name: &str) -> SessionView {
        self.sessions()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no session {name}; daemon log:\n{}", self.log()))
    }

    /// All stored events (of one session, or of all).
    pub(crate) fn events(&self, session: Option<&str>) -> Vec<Event> {
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
    pub(crate) fn wait_for(
        &self,
        session: &str,
        what: &str,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
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

    /// `baseline show AGENT --principal USER --json` once the drift analyser has learned
    /// `sessions` sessions into it (or panics after [`patience`]).
    pub(crate) fn baseline(
        &self,
        agent: &str,
        principal: &str,
        sessions: u64,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let out = self
                .cli()
                .args(["baseline", "show", agent, "--principal", principal])
                .arg("--db")
                .arg(self.db())
                .arg("--json")
                .output_within();
            if out.status.success() {
                let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if b["sessions"] == sessions {
                    return b;
                }
            }
            assert!(
                start.elapsed() < patience(),
                "no baseline of {sessions} sessions: {out:?}\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The daemon's pin directory.
    pub(crate) fn pins(&self) -> PathBuf {
        pin_dir(self.dir.path())
    }

    /// SIGKILL: the daemon gets no chance to do anything (as an OOM kill or a crash).
    pub(crate) fn sigkill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::KILL,
        );
        child.wait().expect("wait")
    }

    /// SIGTERM, and the daemon's exit status. A daemon that has not exited within a
    /// minute (scaled) is a defect: the failure names where each of its threads waits
    /// (kernel stacks, and user stacks where gdb is installed) and its log, and the
    /// daemon is killed, instead of the test run waiting for its tier's timeout.
    pub(crate) fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_child(&child);
        // The daemon may already have exited (a failed test); wait reports how.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let limit = scaled(Duration::from_secs(60));
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if start.elapsed() > limit {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // The daemon's own threads and log first: a CI keeps only the head and the tail
        // of a long failure.
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let report = format!(
            "daemon {} did not stop on SIGTERM within {limit:?}; its threads:\n{}\n\
             its log (last lines):\n{}\n{}\nprocesses:\n{}",
            child.id(),
            threads_report(child.id()),
            tail.join("\n"),
            user_stacks(child.id()),
            processes_report(&[], None),
        );
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        let status = child.wait().expect("wait");
        // In a drop during a test's panic, a second panic would abort the test binary.
        if thread::panicking() {
            eprintln!("{report}");
            return status;
        }
        panic!("{report}");
    }
}

/// Every thread's user stack of process `pid`, from gdb in batch mode; empty where gdb
/// is not installed.
pub(crate) fn user_stacks(pid: u32) -> String {
    Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-nx",
            "-ex",
            "thread apply all bt",
        ])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        // A daemon killed, or kept pinned by its test: nothing stays attached after it.
        let _ = fs::remove_dir_all(pin_dir(self.dir.path()));
    }
}

/// Every command a test runs must finish: a hang becomes a failure naming the command
/// (and its output so far) instead of a stalled test run.
pub(crate) trait OutputWithin {
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

/// `GET path` from the daemon's metrics endpoint: the whole HTTP response.
pub(crate) fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut s,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .unwrap();
    String::from_utf8(read_all(s)).unwrap()
}

pub(crate) fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

pub(crate) fn dump(evs: &[Event]) -> String {
    evs.iter()
        .map(|e| format!("{} {}", e.kind(), agentwarden::output::detail(e)))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn opens_of<'a>(evs: &'a [Event], path: &'a Path) -> impl Iterator<Item = &'a Event> {
    let p = path.to_string_lossy().into_owned();
    evs.iter()
        .filter(move |e| e.open().is_some_and(|o| o.path == p))
}

/// Events whose decision ended in `action` (`blocked`, `killed`, `alerted`, ...).
pub(crate) fn with_action(evs: &[Event], action: Action) -> impl Iterator<Item = &Event> {
    evs.iter()
        .filter(move |e| e.decision.as_ref().is_some_and(|x| x.action == action))
}

pub(crate) fn tgid(e: &Event) -> u32 {
    e.process.as_ref().expect("process").tgid
}

pub(crate) fn num_cpus() -> usize {
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

/// A directory with a canary, a secret tree, an allowed file, a symlink and a hard link
/// to the canary, and a copy of a program (`bin/tool`) that the profiles deny.
pub(crate) struct PathFixture {
    /// Unmounted before the directory goes (fields drop in order).
    _tmpfs: Option<TmpfsMount>,
    pub(crate) _work: TempDir,
    pub(crate) dir: PathBuf,
    pub(crate) rules: TempDir,
}

/// A tmpfs mounted by a test, detached when dropped.
pub(crate) struct TmpfsMount(PathBuf);

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

impl PathFixture {
    pub(crate) fn new() -> Self {
        Self::build(false)
    }

    /// The fixture on a tmpfs of its own: a filesystem with file handles and `O_TMPFILE`
    /// whatever the machine's (or the VM guest's) temporary directory sits on, for the
    /// routes that need them.
    pub(crate) fn on_tmpfs() -> Self {
        Self::build(true)
    }

    fn build(tmpfs: bool) -> Self {
        let work = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(work.path()).unwrap();
        // Without root the test skips when it starts its daemon; the mount needs root too.
        let mount = tmpfs
            .then(|| {
                rustix::mount::mount(
                    "tmpfs",
                    &dir,
                    "tmpfs",
                    rustix::mount::MountFlags::empty(),
                    None,
                )
                .ok()
                .map(|()| TmpfsMount(dir.clone()))
            })
            .flatten();
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
            _tmpfs: mount,
            _work: work,
            dir,
            rules: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes a profile denying the fixture's canary, secret tree, `.env-test` files and
    /// `bin/tool`, with `on_violation` (and `fallback`) as given.
    pub(crate) fn profile(&self, name: &str, mode: &str, on_violation: &str) {
        let text = format!(
            "name: {name}\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: {mode}\n\
             exec:\n  deny: [{d}/bin/tool]\n  {on_violation}\n\
             files:\n  deny:\n    - {d}/canary\n    - {d}/secret/**\n    - \"**/.env-test\"\n  {on_violation}\n",
            d = self.dir.display()
        );
        fs::write(self.rules.path().join(format!("{name}.yaml")), text).unwrap();
    }

    pub(crate) fn daemon(&self) -> Option<Daemon> {
        self.daemon_with(&[])
    }

    /// The daemon on the fixture's rules, with more daemon options.
    pub(crate) fn daemon_with(&self, extra: &[&str]) -> Option<Daemon> {
        let rd = self.rules.path().to_str().unwrap().to_owned();
        let mut args = vec!["--rules-dir", rd.as_str()];
        args.extend(extra);
        Daemon::start_with(&args)
    }
}

pub(crate) fn lsm_attached(d: &Daemon) -> bool {
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

/// Tries each access and prints `label=ok` or `label=errno`: `r:label=path` reads a
/// file, `w:label=path` writes one, `x:label=path` executes a program.
pub(crate) const PATH_PROBE: &str = r#"
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

/// What every process on the machine is doing: pid, parent, state, name, where it waits
/// in the kernel, command line. The kernel stacks of every thread of `stacks_of` and of
/// every process whose command line mentions `mentioning` follow: a stalled test says
/// what its processes wait on, not only that they did not finish.
pub(crate) fn processes_report(stacks_of: &[u32], mentioning: Option<&str>) -> String {
    let mut report = String::new();
    let mut stacks: Vec<u32> = stacks_of.iter().copied().filter(|p| *p != 0).collect();
    for p in procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(st) = p.stat() else { continue };
        // Kernel threads (kthreadd's children) are a hundred lines of noise here.
        if st.pid == 2 || st.ppid == 2 {
            continue;
        }
        let wchan = fs::read_to_string(format!("/proc/{}/wchan", p.pid)).unwrap_or_default();
        let cmd = p.cmdline().unwrap_or_default().join(" ");
        if mentioning.is_some_and(|m| cmd.contains(m)) {
            stacks.push(p.pid as u32);
        }
        report.push_str(&format!(
            "{:>7} {:>7} {} {:<16} {:<24} {}\n",
            st.pid,
            st.ppid,
            st.state,
            st.comm,
            wchan,
            cmd.chars().take(160).collect::<String>()
        ));
    }
    for pid in stacks {
        report.push_str(&threads_report(pid));
    }
    report
}

/// Waits for `child` to exit; past `limit` it is killed and the test fails with where
/// each of its threads waited.
pub(crate) fn wait_within(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > limit {
            let report = threads_report(child.id());
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process {} did not exit within {limit:?}:\n{report}",
                child.id()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Every thread of process `pid`: its name, state, pending signals and kernel stack.
pub(crate) fn threads_report(pid: u32) -> String {
    let mut report = String::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let tid = task.file_name().to_string_lossy().into_owned();
        let stack = fs::read_to_string(task.path().join("stack")).unwrap_or_default();
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let fields: Vec<&str> = status
            .lines()
            .filter(|l| {
                ["Name:", "State:", "SigPnd:", "ShdPnd:"]
                    .iter()
                    .any(|f| l.starts_with(f))
            })
            .collect();
        report.push_str(&format!(
            "process {pid} thread {tid} ({}):\n{stack}",
            fields.join(", ")
        ));
    }
    report
}

/// A test that must not stall: past `limit` it writes what every process on the machine
/// is doing (state, where it waits, the daemon's threads' kernel stacks) to stderr, past
/// the test harness's capture, and ends the test binary with a failure, instead of
/// leaving the run to a tier's timeout with nothing to go on. Disarmed when dropped.
pub(crate) struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    pub(crate) fn arm(what: &'static str, limit: Duration, d: &Daemon) -> Self {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let daemon = d.child.as_ref().map_or(0, |c| c.id());
        let log = d.dir.path().join("daemon.log");
        let mut events = d.cli();
        events.args(["events"]);
        let events_out = d.dir.path().join("watchdog-events.txt");
        thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                thread::sleep(Duration::from_millis(200));
            }
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let mut report = format!("\nWATCHDOG: {what} stalled for {limit:?}; processes:\n");
            report.push_str(&processes_report(&[daemon], None));
            let log = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            report.push_str("daemon log (last lines):\n");
            for l in tail.iter().rev() {
                report.push_str(l);
                report.push('\n');
            }
            // The daemon may be what stalls: its events only if it answers in time.
            let file = fs::File::create(&events_out);
            if let Ok(mut child) = file
                .map_err(std::io::Error::other)
                .and_then(|f| events.stdout(f).stderr(Stdio::null()).spawn())
            {
                thread::sleep(Duration::from_secs(10));
                if let Ok(Some(_)) = child.try_wait() {
                    let out = fs::read_to_string(&events_out).unwrap_or_default();
                    report.push_str("events (last 40):\n");
                    let lines: Vec<&str> = out.lines().collect();
                    for l in &lines[lines.len().saturating_sub(40)..] {
                        report.push_str(l);
                        report.push('\n');
                    }
                } else {
                    report.push_str("the daemon did not answer `events` within 10 s\n");
                    let _ = child.kill();
                }
            }
            let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
            std::process::exit(101);
        });
        Self { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An account for an agent (an ordinary user), with its home in a temporary directory; removed on drop.
/// A directory a test made outside its temporary one (under `/opt`, say), removed on drop.
pub(crate) struct RemovedOnDrop(pub(crate) PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) struct TestUser {
    pub(crate) name: String,
}

impl TestUser {
    pub(crate) fn create(name: &str, home: &Path) -> Self {
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

    pub(crate) fn chown(&self, path: &Path) {
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
        // Whatever of the agent is left (a run that timed out) would keep the account.
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .output();
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}
