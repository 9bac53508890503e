//! `agentwarden daemon`: loads the kernel programs, serves the control socket, turns
//! ring-buffer records into enriched events, and tracks session lifetime.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::{DirBuilderExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use agent_common::{session::SessionEntry, stats::Stat};
use anyhow::{Context as _, Result, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader, unix::AsyncFd},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::broadcast,
};
use tracing::{info, warn};

mod attribute;
mod control;
mod decide;
mod enrolment;
mod eventlog;
mod kernel;
mod metrics;
mod overflow;
mod policy_maps;
mod sinks;
mod stdout;
mod tasks;

use control::serve;
use eventlog::EventLog;
use kernel::KernelMaps;
use sinks::Sinks;
use tasks::{
    DRAIN_BATCH, read_ring, rebind_inodes, refresh_dns, reload_profiles,
    report_profile_diagnostics, sweep,
};

use crate::{
    audit::{self, AuditConfig, AuditSink, SessionRecord},
    dns::{self, Dns},
    event::{self, Body, Clock, Event, LossInfo, Raw, SessionRef},
    loader::{self, ProgramStatus},
    offsets,
    policy::{
        self, Profile,
        compile::{self, RuleTable},
    },
    probe::HostProbe,
    profiles::{self, ProfileSet},
    proto::{DaemonCounters, Request, Response, StatusReport},
    session::{Enrolment, NewSession, format_id, parse_id},
    startup::{self, Startup, StartupPhase},
};

/// Daemon settings; every field has an embedded default (no config file needed).
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Also write each event as a JSON line to stdout.
    pub stdout: bool,
    pub rules_dir: Option<PathBuf>,
    pub btf: PathBuf,
    /// Capacity of the kernel session map (processes across all sessions).
    pub max_tracked_processes: u32,
    /// Bytes of the kernel-to-daemon ring buffer (a power of two).
    pub ring_buffer_size: u32,
    /// Name server for the host names of network rules (default: the system's).
    pub dns_server: Option<std::net::SocketAddr>,
    /// Audit store retention and queue (the database is `state_dir/audit.db`).
    pub audit_max_age: Option<Duration>,
    pub audit_max_bytes: Option<u64>,
    pub audit_queue: usize,
    /// The event log rotates into `events.jsonl.1` past this size; `None`: never.
    pub event_log_max_bytes: Option<u64>,
    /// Where to serve Prometheus metrics (`None`: off).
    pub metrics: Option<std::net::SocketAddr>,
}

/// Name of the event log in the state directory.
pub const EVENT_LOG: &str = "events.jsonl";

/// Reconciliation and loss-report period.
const SWEEP_PERIOD: Duration = Duration::from_millis(500);

/// Everything the ring-buffer reader, the sweeper and the control handlers share. One lock
/// keeps enrolment, draining and reconciliation consistent with each other.
struct Core {
    /// Every map handle: the kernel side.
    kernel: KernelMaps,
    /// `file:line` of every compiled rule, by the id the kernel reports.
    rules: RuleTable,
    /// Profile name → kernel id; ids are never reused while the daemon runs, so a
    /// running session keeps its profile across reloads.
    profile_ids: HashMap<String, u32>,
    /// Owners of sessions so far (`~` rules are expanded for each) and their homes.
    owners: BTreeSet<u32>,
    homes: HashMap<u32, String>,
    /// The profiles compiled into the kernel (a reload that fails for a file keeps that
    /// file's last good version), for enrolment and the decisions finished in userspace.
    profiles: ProfileSet,
    /// Host name → addresses, filled by the background resolver.
    dns: HashMap<String, Vec<std::net::IpAddr>>,
    /// Sessions, processes and users: who did what.
    attribution: attribute::Attribution,
    /// Where events go: event log, audit store, metrics counts, followers.
    sinks: Sinks,
    /// Records read and undecodable; the sinks count their own.
    counters: DaemonCounters,
    /// Sessions whose `run` client restricted itself with Landlock.
    landlocked: HashSet<u64>,
    /// Kernel loss counters already reported as events.
    reported_losses: HashMap<&'static str, u64>,
    /// Buffers of large records, reused from one record to the next.
    spare: event::Spare,
    host: String,
}

struct Shared {
    /// Fair on hand-over (parking_lot): the reader gives the lock up between batches, and
    /// a waiting control request must get it then, not the reader again.
    core: parking_lot::Mutex<Core>,
    cfg: DaemonConfig,
    probe: HostProbe,
    programs: Vec<ProgramStatus>,
    started: SystemTime,
    /// Filled once the daemon is ready.
    startup: Mutex<Vec<StartupPhase>>,
}

impl Shared {
    fn core(&self) -> parking_lot::MutexGuard<'_, Core> {
        self.core.lock()
    }

    /// One batch of the ring; true when records may remain.
    fn drain_batch(&self) -> bool {
        let mut core = self.core();
        let more = core.drain(DRAIN_BATCH);
        // Hands the lock to a waiting request, if any: a flood that outpaces the reader
        // would otherwise keep it for as long as the ring has records.
        parking_lot::MutexGuard::unlock_fair(core);
        more
    }
}

/// Runs the daemon until SIGTERM or SIGINT: load and attach, open the state, compile the
/// profiles into the kernel, say READY, serve, and on the signal detach and commit.
pub async fn run(cfg: DaemonConfig) -> Result<()> {
    let mut startup = Startup::begin();
    refuse_second_daemon(&cfg.socket)?;
    raise_open_file_limit();
    let probe = HostProbe::run();
    startup.mark("probe");
    let (ebpf, programs, kernel, ring_fd) = load_kernel(&cfg, &probe, &mut startup)?;
    let (sinks, profiles) = open_state(&cfg)?;
    startup.mark("state and profiles parsed");
    let shared = Arc::new(Shared {
        core: parking_lot::Mutex::new(Core::new(kernel, sinks)),
        cfg: cfg.clone(),
        probe,
        programs,
        started: SystemTime::now(),
        startup: Mutex::new(Vec::new()),
    });
    shared.core().install_profiles(&profiles)?;
    startup.mark("profiles compiled into maps");
    // Loading parsed the kernel's BTF and the object: give that memory back now.
    release_memory();
    // Bound last: a client that can connect finds a daemon ready to answer.
    let listener = bind_socket(&cfg.socket)?;
    startup.mark("socket");
    ready(&shared, startup);
    let tasks = [
        tokio::spawn(refresh_dns(shared.clone())),
        tokio::spawn(rebind_inodes(shared.clone())),
        tokio::spawn(sweep(shared.clone())),
        tokio::spawn(serve(shared.clone(), listener)),
    ];
    let metrics = match cfg.metrics {
        Some(addr) => Some(tokio::spawn(metrics::serve(
            shared.clone(),
            metrics::bind(addr).await?,
        ))),
        None => None,
    };
    let stopped = until_signal(&shared, tokio::spawn(read_ring(shared.clone(), ring_fd))).await;
    for t in tasks.iter().chain(&metrics) {
        t.abort();
    }
    let _ = fs::remove_file(&cfg.socket);
    {
        let mut core = shared.core();
        core.drain(usize::MAX);
        // Commits what is queued before the process exits.
        core.sinks.close();
    }
    // Dropping `ebpf` detaches every program.
    drop(ebpf);
    stopped?;
    info!("stopped");
    Ok(())
}

/// Loads and attaches the programs and takes the maps; the ring buffer's fd comes back
/// duplicated, to be polled for readiness (the map itself stays in `Core`, so draining
/// happens under the shared lock).
fn load_kernel(
    cfg: &DaemonConfig,
    probe: &HostProbe,
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

/// The state directory's event log and audit store, and the profiles (embedded, then
/// the rules directory's).
fn open_state(cfg: &DaemonConfig) -> Result<(Sinks, ProfileSet)> {
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
fn ready(shared: &Shared, startup: Startup) {
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

/// Serves until SIGTERM or SIGINT (SIGHUP reloads the profiles); an error when the
/// ring-buffer reader stopped first.
async fn until_signal(
    shared: &Shared,
    mut reader: tokio::task::JoinHandle<Result<()>>,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => reload_profiles(shared),
            r = &mut reader => bail!("ring-buffer reader stopped: {r:?}"),
        }
    }
    reader.abort();
    Ok(())
}

impl Core {
    fn new(kernel: KernelMaps, sinks: Sinks) -> Self {
        Self {
            kernel,
            rules: RuleTable::default(),
            profile_ids: HashMap::new(),
            dns: HashMap::new(),
            profiles: ProfileSet::default(),
            owners: BTreeSet::new(),
            homes: HashMap::new(),
            attribution: attribute::Attribution::new(Clock::now()),
            sinks,
            counters: DaemonCounters::default(),
            reported_losses: HashMap::new(),
            landlocked: HashSet::new(),
            spare: event::Spare::default(),
            host: rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        }
    }
}

/// A live daemon on the socket means this one must not start; a stale socket file is
/// removed.
fn refuse_second_daemon(socket: &Path) -> Result<()> {
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
fn bind_socket(socket: &Path) -> Result<UnixListener> {
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
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            warn!(error = %e, "could not raise the open file limit");
        }
    }
}

/// Returns memory freed on this thread to the system (mimalloc keeps it otherwise, and
/// the idle daemon's footprint would be its peak).
fn release_memory() {
    // SAFETY: a plain call into the allocator, valid on any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

impl Core {
    /// Consumes up to `max` records from the ring buffer; true when it stopped at `max`
    /// (records may remain).
    fn drain(&mut self, max: usize) -> bool {
        let Some(mut ring) = self.kernel.ring.take() else {
            return false;
        };
        let mut n = 0;
        while n < max
            && let Some(item) = ring.next()
        {
            self.handle_record(&item);
            n += 1;
        }
        self.kernel.ring = Some(ring);
        self.flush_sinks();
        n == max
    }

    /// Hands what this drain (or request) produced to the sinks: the event log's buffer
    /// to the file, the audit records to the writer in one batch.
    fn flush_sinks(&mut self) {
        self.sinks.flush();
    }

    /// One record, in a straight line: decode → attribute → decide (what the kernel
    /// left undecided) → respond (a child it could not track) → sinks.
    fn handle_record(&mut self, bytes: &[u8]) {
        self.counters.records_read += 1;
        let raw = match event::decode_reusing(bytes, &mut self.spare) {
            Ok(r) => r,
            Err(e) => {
                self.counters.decode_errors += 1;
                warn!(error = %e, "undecodable ring-buffer record");
                return;
            }
        };
        let h = *raw.header();
        let mut ev = self.attribution.event(&raw, &self.rules);
        self.decide_in_userspace(&mut ev, h.session_id);
        if let Raw::SessionMapFull(f) = &raw {
            self.untracked_child(&mut ev, h.session_id, f.child_tgid, h.ktime_ns);
        }
        self.emit(ev);
        if let Some((sid, now)) = self.attribution.ended_by(&raw) {
            self.session_end(sid, now);
        }
        self.spare.keep(raw);
    }

    /// The profile session `sid` runs under.
    fn profile_of(&self, sid: u64) -> Option<&Profile> {
        self.profiles
            .get(&self.attribution.registry.get(sid)?.profile)
    }

    /// A child of the session that the kernel could not track: in an enforce-mode
    /// session it is killed (it would run outside its profile), in monitor mode recorded.
    fn untracked_child(&mut self, ev: &mut Event, sid: u64, child: u32, forked_ns: u64) {
        let enforce = self
            .profile_of(sid)
            .is_some_and(|p| p.file.mode == policy::Mode::Enforce);
        let outcome = enforce.then(|| overflow::kill_untracked(child, forked_ns));
        if let Some(Err(e)) = &outcome {
            warn!(child, error = %e, "could not kill a child the kernel could not track");
        }
        ev.decision = Some(decide::untracked_child(outcome.map(|o| o.ok())));
    }

    /// Exec and file decisions the kernel does not take: judged here against the
    /// session's profile (see [`decide::userspace`]).
    fn decide_in_userspace(&mut self, ev: &mut Event, sid: u64) {
        let Some(s) = self.attribution.registry.get(sid) else {
            return;
        };
        let owner = s.owner_uid;
        let users = &mut self.attribution.users;
        let mut ctx = decide::Context {
            profile: self.profiles.get(&s.profile),
            landlocked: self.landlocked.contains(&sid),
            home: &mut || users.home(owner).unwrap_or_default(),
            registry: &self.attribution.registry,
        };
        decide::userspace(ev, &mut ctx);
    }

    fn emit(&mut self, ev: Event) {
        self.sinks.emit(ev);
    }

    /// The daemon's counters: its own and those the sinks keep.
    fn daemon_counters(&self) -> DaemonCounters {
        DaemonCounters {
            events_logged: self.sinks.logged,
            log_write_errors: self.sinks.log_write_errors,
            stdout_dropped: self.sinks.log.stdout_dropped(),
            ..self.counters.clone()
        }
    }

    fn session_end(&mut self, sid: u64, now: SystemTime) {
        let ev = Event::new(Body::SessionEnd, now, self.attribution.session_ref(sid));
        info!(session = %format_id(sid), "session ended");
        self.emit(ev);
    }

    /// Ends sessions with no process left in the kernel map. The map is read first and
    /// the ring drained after, so exit events submitted before a removal are handled
    /// (and end their session) before reconciliation looks. Behind a backlog it waits for
    /// a later tick: a session is never ended on a map read older than its records.
    fn reconcile(&mut self) {
        let snapshot = self.kernel.sessions_snapshot();
        if self.drain(DRAIN_BATCH) {
            return;
        }
        let now = SystemTime::now();
        for sid in self.attribution.registry.reconcile(&snapshot, now) {
            self.session_end(sid, now);
        }
    }

    /// Raises an event for every new loss: kernel-side, and records the audit store
    /// could not take (its queue was full).
    fn report_losses(&mut self) {
        let mut totals: Vec<(&'static str, u64)> =
            [Stat::RingbufDrops, Stat::SessionMapFull, Stat::StashFull]
                .into_iter()
                .map(|stat| (stat.name(), self.kernel.counter(stat).total))
                .collect();
        totals.push(("audit_dropped", self.sinks.audit.stats().snapshot().dropped));
        totals.push(("stdout_dropped", self.sinks.log.stdout_dropped()));
        for (name, total) in totals {
            let seen = self.reported_losses.entry(name).or_insert(0);
            if total > *seen {
                let delta = total - *seen;
                *seen = total;
                warn!(counter = name, delta, total, "events lost");
                let ev = Event::new(
                    Body::Loss(LossInfo {
                        counter: name.to_owned(),
                        delta,
                        total,
                    }),
                    SystemTime::now(),
                    SessionRef::default(),
                );
                self.emit(ev);
            }
        }
    }
}
