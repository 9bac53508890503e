//! Start-up and shutdown: one daemon per socket, the kernel side loaded and attached,
//! the state opened, readiness announced, signals awaited.

use super::*;

/// Loads and attaches the programs and takes the maps; the ring buffer's fd comes back
/// duplicated, to be polled for readiness (the map itself stays in `Core`, so draining
/// happens under the shared lock).
pub(super) fn load_kernel(
    cfg: &DaemonConfig,
    probe: &HostProbe,
    pins: &PinDir,
    generation: u64,
    startup: &mut Startup,
) -> Result<(aya::Ebpf, Vec<ProgramStatus>, KernelMaps, AsyncFd<OwnedFd>)> {
    let btf = offsets::read_btf(&cfg.btf)?;
    startup.mark("btf read");
    let offsets = offsets::resolve(&btf).context("reading kernel struct offsets")?;
    startup.mark("offsets");
    let loader::Loaded { mut ebpf, programs } = loader::load(
        offsets,
        &btf,
        cfg.max_tracked_processes,
        cfg.ring_buffer_size,
        probe,
        pins,
        generation,
        startup,
    )?;
    for p in &programs {
        match &p.reason {
            None => info!(program = %p.name, at = %p.attach_point, "attached"),
            Some(r) => warn!(program = %p.name, at = %p.attach_point, reason = %r, "left out"),
        }
    }
    let kernel = KernelMaps::take(&mut ebpf)?;
    let dup = kernel
        .ring
        .as_ref()
        .ok_or_else(|| anyhow!("no ring buffer"))?
        .as_fd()
        .try_clone_to_owned()?;
    // SAFETY: the fd is owned by the AsyncFd and stays open until it is dropped.
    let ring_fd =
        unsafe { AsyncFd::register(dup) }.map_err(|e| anyhow!("polling the ring buffer: {e}"))?;
    Ok((ebpf, programs, kernel, ring_fd))
}

/// Starts the fanotify refusal layer and describes it as a row of the program table
/// (named `fanotify`): enrolment checks it like the programs it stands in for.
pub(super) fn refusal_layer(
    kernel: &mut KernelMaps,
    records: refusal::Records,
    wanted: bool,
) -> ProgramStatus {
    let began = std::time::Instant::now();
    let outcome = kernel
        .sessions_for_refusal
        .take()
        .filter(|_| wanted)
        .ok_or_else(|| anyhow!("left out by --no-refusal"))
        .and_then(|sessions| refusal::Refusal::start(sessions, records));
    let reason = match outcome {
        Ok(r) => {
            kernel.policy.refusal = Some(r);
            info!("refusal layer: fanotify permission marks on denied objects");
            None
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "refusal layer left out");
            Some(format!("{e:#}"))
        }
    };
    ProgramStatus {
        name: crate::profiles::REFUSAL.to_owned(),
        kind: "fanotify".to_owned(),
        attach_point: "permission marks on denied files, programs and trees".to_owned(),
        state: if reason.is_none() {
            "attached"
        } else {
            "left out"
        }
        .to_owned(),
        fallback: reason
            .as_ref()
            .map(|_| "file and exec `block` only through BPF-LSM or `fallback: kill`".to_owned()),
        reason,
        load_us: Some(startup::us(began.elapsed())),
    }
}

/// The state directory's event log and audit store, and the profiles (embedded, then
/// the rules directory's).
pub(super) fn open_state(cfg: &DaemonConfig) -> Result<(Sinks, ProfileSet)> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.state_dir)
        .with_context(|| format!("creating state directory {}", cfg.state_dir.display()))?;
    let log = EventLog::open(
        &cfg.state_dir.join(EVENT_LOG),
        cfg.stdout,
        cfg.event_log_max_bytes,
    )?;
    let audit = AuditSink::open(AuditConfig {
        path: cfg.state_dir.join(audit::AUDIT_DB),
        queue: cfg.audit_queue,
        max_age: cfg.audit_max_age,
        max_bytes: cfg.audit_max_bytes,
    })?;
    let mut profiles = ProfileSet::embedded().map_err(policy::to_error)?;
    if let Some(dir) = &cfg.rules_dir {
        report_profile_diagnostics(&profiles.load_dir(dir));
    }
    info!(profiles = %profiles.names().join(","), "profiles loaded");
    Ok((Sinks::new(log, audit), profiles))
}

/// Logs the start-up phases and tells systemd (`Type=notify`) and the tests that the
/// daemon is ready.
pub(super) fn ready(shared: &Shared, startup: Startup) {
    let phases = startup.finish();
    info!(
        socket = %shared.cfg.socket.display(),
        state_dir = %shared.cfg.state_dir.display(),
        startup = %startup::summary(&phases),
        "agentwarden daemon ready"
    );
    *shared.startup.lock().unwrap_or_else(|e| e.into_inner()) = phases;
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("watching; control socket bound"),
    ]) {
        warn!("sd_notify READY=1: {e}");
    }
}

/// Serves until SIGTERM or SIGINT (SIGHUP reloads the profiles), and returns the stop
/// watch armed when the signal arrived; an error when the ring-buffer reader stopped
/// first (the watch is then armed here).
pub(super) async fn until_signal(
    shared: &Shared,
    mut signals: Signals,
    mut reader: tokio::task::JoinHandle<Result<()>>,
) -> (Result<()>, StopWatch) {
    let stopped = loop {
        tokio::select! {
            r = signals.recv() => match r {
                Some(Received::Stop(name, watch)) => {
                    info!(signal = name, "shutting down");
                    break (Ok(()), watch);
                }
                Some(Received::Reload) => reload_profiles(shared),
                None => break (
                    Err(anyhow!("the signal thread ended")),
                    StopWatch::arm("stopping tasks"),
                ),
            },
            r = &mut reader => break (
                Err(anyhow!("ring-buffer reader stopped: {r:?}")),
                StopWatch::arm("stopping tasks"),
            ),
        }
    };
    reader.abort();
    stopped
}

/// A live daemon on the socket means this one must not start; a stale socket file is
/// removed.
pub(super) fn refuse_second_daemon(socket: &Path) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!(
            "another agentwarden daemon is listening on {}",
            socket.display()
        );
    }
    match fs::remove_file(socket) {
        Ok(()) => warn!(socket = %socket.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", socket.display())),
    }
    Ok(())
}

/// Binds the control socket, owner-only (0600) in a 0755 directory.
pub(super) fn bind_socket(socket: &Path) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    // Bind under a restrictive umask so the socket is never briefly world-connectable.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(socket);
    rustix::process::umask(old);
    let listener = bound.with_context(|| format!("binding {}", socket.display()))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Every file a deny rule names is held open (see `PolicyMaps::held`): the soft limit on
/// descriptors goes up to the hard one (systemd's soft default is 1024).
pub(super) fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            warn!(error = %e, "could not raise the open file limit");
        }
    }
}

/// A generation number for this daemon's programs: after the previous one's, never 0
/// (the `DAEMON` map's value before any daemon wrote it).
pub(super) fn next_generation(previous: Option<DaemonState>) -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    now.max(previous.map_or(0, |p| p.generation) + 1).max(1)
}

/// Pins another live daemon holds are not this one's to take.
pub(super) fn refuse_held_pins(pins: &PinDir, previous: Option<DaemonState>) -> Result<()> {
    if let Some(p) = previous
        && p.alive != 0
        && p.tgid != std::process::id()
        && Path::new(&format!("/proc/{}", p.tgid)).exists()
    {
        bail!(
            "the kernel side pinned at {} belongs to the running daemon pid {} (another \
             --socket?); stop it first or choose another --pin-dir",
            pins.root().display(),
            p.tgid
        );
    }
    Ok(())
}

/// How long a stop may take before the daemon says where it stands: under systemd's
/// `TimeoutStopSec=` (15 s), which kills it without a word.
const STOP_STALL: Duration = Duration::from_secs(10);

/// Watches the daemon's stop from SIGTERM to exit. A stop that takes longer than
/// [`STOP_STALL`] is logged with the step it is in and where each thread waits (its
/// kernel stack), once: a supervisor kills a stalled daemon, and this is what is left
/// to find out why.
pub(super) struct StopWatch {
    state: Arc<(
        parking_lot::Mutex<(&'static str, bool)>,
        parking_lot::Condvar,
    )>,
}

impl StopWatch {
    /// Starts watching, in `step`.
    pub(super) fn arm(step: &'static str) -> Self {
        let state = Arc::new((
            parking_lot::Mutex::new((step, false)),
            parking_lot::Condvar::new(),
        ));
        let watched = state.clone();
        let spawned = std::thread::Builder::new()
            .name("aw-stop-watch".into())
            .spawn(move || {
                let (lock, cvar) = &*watched;
                let mut s = lock.lock();
                let deadline = std::time::Instant::now() + STOP_STALL;
                while !s.1 {
                    if cvar.wait_until(&mut s, deadline).timed_out() {
                        let step = s.0;
                        drop(s);
                        warn!(
                            step,
                            after_s = STOP_STALL.as_secs(),
                            threads = %own_threads(),
                            "the stop is taking long"
                        );
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "the stop watch could not start");
        }
        Self { state }
    }

    /// The step the stop is in now.
    pub(super) fn step(&self, step: &'static str) {
        self.state.0.lock().0 = step;
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        self.state.0.lock().1 = true;
        self.state.1.notify_all();
    }
}

/// Each thread of the daemon: name, state, wait channel and kernel stack, from procfs.
fn own_threads() -> String {
    let mut out = String::new();
    for t in fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let read = |f: &str| fs::read_to_string(t.path().join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        let stack: Vec<String> = read("stack")
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap_or(l).to_owned())
            .collect();
        out.push_str(&format!(
            "[{} {} {} wchan={} stack={}] ",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            state.unwrap_or("?"),
            read("wchan"),
            stack.join("<")
        ));
    }
    out
}
