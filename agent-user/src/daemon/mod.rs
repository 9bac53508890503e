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
mod decide;
mod eventlog;
mod kernel;
mod metrics;
mod overflow;
mod policy_maps;
mod sinks;
mod stdout;

use eventlog::EventLog;
use kernel::KernelMaps;
use sinks::Sinks;

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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(cfg: DaemonConfig) -> Result<()> {
    let mut startup = Startup::begin();
    refuse_second_daemon(&cfg.socket)?;
    raise_open_file_limit();
    let probe = HostProbe::run();
    startup.mark("probe");
    let btf = offsets::read_btf(&cfg.btf)?;
    startup.mark("btf read");
    let offsets = offsets::resolve(&btf).context("reading kernel struct offsets")?;
    startup.mark("offsets");
    let loader::Loaded { mut ebpf, programs } = loader::load(
        offsets,
        &btf,
        cfg.max_tracked_processes,
        cfg.ring_buffer_size,
        &probe,
        &mut startup,
    )?;
    drop(btf);
    for p in &programs {
        match &p.reason {
            None => info!(program = %p.name, at = %p.attach_point, "attached"),
            Some(r) => warn!(program = %p.name, at = %p.attach_point, reason = %r, "left out"),
        }
    }
    let kernel = KernelMaps::take(&mut ebpf)?;
    // A duplicate of the ring buffer's fd, polled for readiness only; the map itself
    // stays in `Core` so draining happens under the shared lock.
    let dup = kernel
        .ring
        .as_ref()
        .ok_or_else(|| anyhow!("no ring buffer"))?
        .as_fd()
        .try_clone_to_owned()?;
    // SAFETY: the fd is owned by the AsyncFd and stays open until it is dropped.
    let ring_fd =
        unsafe { AsyncFd::register(dup) }.map_err(|e| anyhow!("polling the ring buffer: {e}"))?;

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
    startup.mark("state and profiles parsed");
    let shared = Arc::new(Shared {
        core: parking_lot::Mutex::new(Core {
            kernel,
            rules: RuleTable::default(),
            profile_ids: HashMap::new(),
            dns: HashMap::new(),
            profiles: ProfileSet::default(),
            owners: BTreeSet::new(),
            homes: HashMap::new(),
            attribution: attribute::Attribution::new(Clock::now()),
            sinks: Sinks::new(log, audit),
            counters: DaemonCounters::default(),
            reported_losses: HashMap::new(),
            landlocked: HashSet::new(),
            spare: event::Spare::default(),
            host: rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        }),
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
    let phases = startup.finish();
    info!(
        socket = %cfg.socket.display(),
        state_dir = %cfg.state_dir.display(),
        startup = %startup::summary(&phases),
        "agentwarden daemon ready"
    );
    *shared.startup.lock().unwrap_or_else(|e| e.into_inner()) = phases;
    // systemd's `Type=notify` (and the tests) learn readiness from the daemon itself.
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("watching; control socket bound"),
    ]) {
        warn!("sd_notify READY=1: {e}");
    }
    let resolver = tokio::spawn(refresh_dns(shared.clone()));
    let binder = tokio::spawn(rebind_inodes(shared.clone()));
    let reader = tokio::spawn(read_ring(shared.clone(), ring_fd));
    let sweeper = tokio::spawn(sweep(shared.clone()));
    let server = tokio::spawn(serve(shared.clone(), listener));
    let metrics = match cfg.metrics {
        Some(addr) => Some(tokio::spawn(metrics::serve(
            shared.clone(),
            metrics::bind(addr).await?,
        ))),
        None => None,
    };

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut reader = reader;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => reload_profiles(&shared),
            r = &mut reader => bail!("ring-buffer reader stopped: {r:?}"),
        }
    }
    server.abort();
    sweeper.abort();
    resolver.abort();
    binder.abort();
    if let Some(m) = metrics {
        m.abort();
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
    info!("stopped");
    Ok(())
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

/// After a drain the reader lets records gather this long before it looks again. The
/// kernel signals only when a record lands in an empty ring, so while records wait here
/// the programs wake nobody: under load one wakeup (and one drain) carries a batch
/// instead of one record, which is most of the cost of tracing a busy agent. It bounds
/// how late an event is seen, never whether.
const COALESCE: Duration = Duration::from_millis(5);

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

/// Records handled per hold of the core lock: about 10 ms of work at the daemon's rate on
/// a host, so a control request waits at most that long behind a flood.
const DRAIN_BATCH: usize = 1024;

async fn read_ring(shared: Arc<Shared>, fd: AsyncFd<OwnedFd>) -> Result<()> {
    loop {
        let mut guard = fd.readable().await?;
        // Clear before draining: a record committed after the drain sets readiness
        // again, so no wakeup is lost (the kernel only signals an empty-to-data edge).
        guard.clear_ready();
        while shared.drain_batch() {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(COALESCE).await;
    }
}

async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_PERIOD);
    let mut records = 0;
    loop {
        tick.tick().await;
        let mut core = shared.core();
        core.reconcile();
        core.report_losses();
        core.flush_sinks();
        let idle = core.counters.records_read == records;
        records = core.counters.records_read;
        drop(core);
        // Only when idle: under load the memory is about to be used again, and pages
        // given back are faulted (and zeroed) straight back in.
        if idle {
            release_memory();
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

    /// Puts `root` and all its descendants into a new session. Children forked by an
    /// enrolled process are inherited in the kernel; the rescans catch those forked by
    /// a process before it was enrolled.
    fn enroll(&mut self, new: NewSession, flags: u32) -> Result<(u64, Vec<u32>)> {
        let root = new.root_pid;
        let id = new_session_id()?;
        let profile_id = *self
            .profile_ids
            .get(&new.profile)
            .ok_or_else(|| anyhow!("profile `{}` is not compiled into the kernel", new.profile))?;
        if let Some(home) = self.attribution.users.home(new.owner_uid) {
            self.homes.insert(new.owner_uid, home);
        }
        if self.owners.insert(new.owner_uid) {
            // A new owner: expand the `~` rules of every profile for this user's home.
            let set = self.profiles.clone();
            self.install_profiles(&set)?;
        }
        let entry = SessionEntry {
            session_id: id,
            profile_id,
            flags,
            owner_uid: new.owner_uid,
            _pad: 0,
        };
        self.kernel
            .sessions
            .insert(root, entry, 0)
            .map_err(|e| anyhow!("adding pid {root} to the kernel session map: {e}"))?;
        let mut tgids = vec![root];
        if new.enrolment == Enrolment::Attach {
            for _ in 0..16 {
                let added = self.enroll_descendants(&mut tgids, entry);
                if added == 0 {
                    break;
                }
            }
        }
        let s = self.attribution.registry.create(id, new, &tgids);
        let (sref, started) = (s.reference(), s.started);
        for t in &tgids {
            if let Ok(exe) = procfs::process::Process::new(*t as i32).and_then(|p| p.exe()) {
                self.attribution
                    .registry
                    .remember_exe(*t, exe.display().to_string());
            }
        }
        self.record_session(id, root);
        let mut ev = Event::new(Body::SessionStart, started, sref);
        ev.process = self.attribution.process_info(root);
        self.emit(ev);
        Ok((id, tgids))
    }

    fn enroll_descendants(&mut self, tgids: &mut Vec<u32>, entry: SessionEntry) -> usize {
        let Ok(all) = procfs::process::all_processes() else {
            return 0;
        };
        let parents: Vec<(u32, u32)> = all
            .filter_map(|p| p.ok()?.stat().ok())
            .map(|s| (s.pid as u32, s.ppid as u32))
            .collect();
        let mut added = 0;
        loop {
            let mut progress = false;
            for (pid, ppid) in &parents {
                if tgids.contains(ppid) && !tgids.contains(pid) {
                    if self.kernel.sessions.insert(*pid, entry, 0).is_ok() {
                        tgids.push(*pid);
                        added += 1;
                        progress = true;
                    } else {
                        warn!(pid, "could not add descendant to the session map");
                    }
                }
            }
            if !progress {
                return added;
            }
        }
    }

    /// The session's execution context, recorded once in the audit trail: the profile
    /// as it was (name, source, content hash), its owners, the principal, the host.
    fn record_session(&mut self, id: u64, root: u32) {
        let Some(s) = self.attribution.registry.get(id) else {
            return;
        };
        let p = self.profiles.get(&s.profile);
        let time_ns = s
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let rec = SessionRecord {
            session_id: format_id(id),
            name: s.name.clone(),
            agent: s.profile.clone(),
            profile_source: p.map(|p| p.source.clone()).unwrap_or_default(),
            profile_sha256: p.map(|p| p.sha256.clone()).unwrap_or_default(),
            mode: p
                .map(|p| p.file.mode.as_str().to_owned())
                .unwrap_or_default(),
            business_owner: p
                .map(|p| p.file.owners.business.clone())
                .unwrap_or_default(),
            technical_owner: p
                .map(|p| p.file.owners.technical.clone())
                .unwrap_or_default(),
            principal_uid: s.owner_uid,
            principal_user: s.owner_user.clone(),
            enrolment: s.enrolment.as_str().to_owned(),
            host: self.host.clone(),
            root_pid: root,
            time_ns,
            time: event::rfc3339(s.started),
        };
        self.sinks.session(rec);
    }
}
fn new_session_id() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow!("random session id: {e}"))?;
    // Never 0: the kernel side treats 0 as "no session".
    Ok(u64::from_ne_bytes(b).max(1))
}

async fn serve(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_client(shared, stream).await {
                        warn!(error = %e, "control connection failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn send(stream: &mut (impl AsyncWriteExt + Unpin), resp: &Response) -> Result<()> {
    let mut line = serde_json::to_string(resp)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).await?;
    Ok(())
}

async fn handle_client(shared: Arc<Shared>, stream: UnixStream) -> Result<()> {
    let cred = stream.peer_cred()?;
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    AsyncBufReader::new(rd).read_line(&mut line).await?;
    let peer_pid = cred.pid().unwrap_or(0) as u32;
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("malformed request: {e}");
            return send(&mut wr, &Response::Error { message }).await;
        }
    };
    if let Err(e) = authorize(&shared, cred.uid(), peer_pid) {
        return send(
            &mut wr,
            &Response::Error {
                message: format!("{e:#}"),
            },
        )
        .await;
    }
    if let Request::Events { session, follow } = req {
        return stream_events(&shared, &mut wr, session, follow).await;
    }
    let resp = match dispatch(&shared, req, cred.uid(), peer_pid) {
        Ok(r) => r,
        Err(e) => Response::Error {
            message: format!("{e:#}"),
        },
    };
    send(&mut wr, &resp).await
}

/// Only the daemon's owner (or root) may talk to it, and never from inside a session:
/// an agent must not be able to administer the tool that watches it.
fn authorize(shared: &Shared, uid: u32, pid: u32) -> Result<()> {
    let me = rustix::process::geteuid().as_raw();
    if uid != me && uid != 0 {
        bail!("permission denied: uid {uid} is not the daemon's owner (uid {me})");
    }
    if let Some(sid) = shared.core().kernel.session_of(pid) {
        bail!(
            "refused: the caller (pid {pid}) is inside agentwarden session {}; \
             a session cannot administer agentwarden",
            format_id(sid)
        );
    }
    Ok(())
}

fn dispatch(shared: &Shared, req: Request, uid: u32, peer_pid: u32) -> Result<Response> {
    let mut core = shared.core();
    match req {
        Request::Enroll {
            profile,
            session_name,
            as_uid,
        } => {
            if as_uid.is_some_and(|u| u != uid) && uid != 0 {
                bail!("only root may run an agent as another user");
            }
            let new = NewSession {
                name: session_name,
                profile,
                // The agent's user owns the session: `~` in its profile is that home.
                owner_uid: as_uid.unwrap_or(uid),
                owner_user: None,
                enrolment: Enrolment::Run,
                root_pid: peer_pid,
            };
            enrol(shared, &mut core, new)
        }
        Request::Attach {
            pid,
            profile,
            session_name,
        } => {
            if pid <= 1 || pid == std::process::id() {
                bail!("refusing to attach pid {pid}");
            }
            let target = procfs::process::Process::new(pid as i32)
                .map_err(|e| anyhow!("no process {pid}: {e}"))?;
            if let Some(sid) = core.kernel.session_of(pid) {
                bail!("pid {pid} is already in session {}", format_id(sid));
            }
            let new = NewSession {
                name: session_name,
                profile,
                owner_uid: target.status().map(|s| s.ruid).unwrap_or(uid),
                owner_user: None,
                enrolment: Enrolment::Attach,
                root_pid: pid,
            };
            enrol(shared, &mut core, new)
        }
        Request::Sessions => {
            core.reconcile();
            let sessions = core.attribution.registry.all().map(|s| s.view()).collect();
            Ok(Response::Sessions { sessions })
        }
        Request::Status => {
            let kernel_counters = Stat::ALL.iter().map(|s| core.kernel.counter(*s)).collect();
            let tracked = core.kernel.sessions_snapshot().len();
            let status = StatusReport {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                daemon_pid: std::process::id(),
                started: event::rfc3339(shared.started),
                socket: shared.cfg.socket.clone(),
                state_dir: shared.cfg.state_dir.clone(),
                host: shared.probe.clone(),
                programs: shared.programs.clone(),
                kernel_counters,
                daemon_counters: core.daemon_counters(),
                sessions_active: core
                    .attribution
                    .registry
                    .all()
                    .filter(|s| s.ended.is_none())
                    .count(),
                sessions_total: core.attribution.registry.all().count(),
                tracked_processes: tracked,
                tracked_processes_max: shared.cfg.max_tracked_processes,
                audit: core.sinks.audit.stats().snapshot(),
                startup: shared
                    .startup
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            };
            Ok(Response::Status {
                status: Box::new(status),
            })
        }
        Request::Events { .. } => unreachable!("streamed by handle_client"),
    }
}

/// Creates a session for `new.root_pid` (and, for attach, its descendants).
fn enrol(shared: &Shared, core: &mut Core, mut new: NewSession) -> Result<Response> {
    // One lookup: the profile as it is now is what the session is checked against.
    let profile = core.profiles.get(&new.profile).cloned().ok_or_else(|| {
        anyhow!(
            "unknown profile `{}` (known: {})",
            new.profile,
            core.profiles.names().join(", ")
        )
    })?;
    check_name(core, new.name.as_deref())?;
    let flags = enforceable_flags(shared, &profile)?;
    new.owner_user = core.attribution.users.name(new.owner_uid);
    // Landlock carries default-deny allow lists for sessions started by `run`, which
    // restricts itself before it executes the agent.
    let landlock = if new.enrolment == Enrolment::Run && shared.probe.landlock_abi.is_some() {
        let home = core
            .attribution
            .users
            .home(new.owner_uid)
            .unwrap_or_default();
        policy::landlock::plan(&profile, &home)
    } else {
        None
    };
    let (root, how) = (new.root_pid, new.enrolment);
    let (id, processes) = core.enroll(new, flags)?;
    core.flush_sinks();
    if landlock.is_some() {
        core.landlocked.insert(id);
    }
    let session = core
        .attribution
        .registry
        .get(id)
        .map(|s| s.view())
        .ok_or_else(|| anyhow!("session {} vanished", format_id(id)))?;
    info!(session = %session.id, name = %session.name, pid = root, processes = processes.len(), via = ?how, landlock = landlock.is_some(), "enrolled");
    let attached = |name: &str| {
        shared
            .programs
            .iter()
            .any(|s| s.name == name && s.state == "attached")
    };
    let warnings = profiles::enforcement_gaps(&profile, &attached, landlock.as_ref());
    for w in &warnings {
        warn!(session = %session.id, "{w}");
    }
    Ok(Response::Enrolled {
        session: Box::new(session),
        processes,
        warnings,
        landlock,
    })
}
/// Period of re-binding deny rules to the inodes of the files they name.
const REBIND_PERIOD: Duration = Duration::from_secs(10);

/// Keeps the inode binding of deny rules current: a file created or replaced under a
/// denied directory is denied under its other names within one period.
async fn rebind_inodes(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(REBIND_PERIOD).await;
        if let Err(e) = shared.core().kernel.policy.rebind_inodes() {
            warn!(error = %format!("{e:#}"), "re-binding deny rules to inodes failed");
        }
    }
}

/// How often the refresher looks for names added by a reload, between expiries.
const DNS_POLL: Duration = Duration::from_secs(5);

/// Resolves the host names of all profiles off the hot path, each again when its answer
/// expires (its TTL), and recompiles the maps when the answers change. Until a name
/// resolves its rule matches nothing (an allow rule then falls back to the default: fail
/// closed); a failed refresh keeps the previous answer and asks again after
/// [`dns::RETRY`].
async fn refresh_dns(shared: Arc<Shared>) {
    let dns = match Dns::new(shared.cfg.dns_server) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "no resolver: network rules naming hosts stay inactive");
            return;
        }
    };
    let mut answers: HashMap<String, Vec<std::net::IpAddr>> = HashMap::new();
    let mut due: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        let hosts: BTreeSet<String> = {
            let core = shared.core();
            let set = &core.profiles;
            set.names()
                .iter()
                .filter_map(|n| set.get(n))
                .flat_map(compile::host_names)
                .collect()
        };
        answers.retain(|h, _| hosts.contains(h));
        due.retain(|h, _| hosts.contains(h));
        let now = tokio::time::Instant::now();
        for h in &hosts {
            if due.get(h).is_some_and(|t| *t > now) {
                continue;
            }
            match dns.resolve(h).await {
                Ok((ips, ttl)) => {
                    answers.insert(h.clone(), ips);
                    due.insert(h.clone(), now + ttl);
                }
                Err(e) => {
                    tracing::debug!(host = %h, error = %format!("{e:#}"), "lookup failed");
                    answers.entry(h.clone()).or_default();
                    due.insert(h.clone(), now + dns::RETRY);
                }
            }
        }
        {
            let mut core = shared.core();
            if core.dns != answers {
                core.dns = answers.clone();
                let set = core.profiles.clone();
                if let Err(e) = core.install_profiles(&set) {
                    warn!(error = %format!("{e:#}"), "recompiling after DNS refresh failed");
                }
            }
        }
        let next = due.values().min().copied().unwrap_or(now + DNS_POLL);
        tokio::time::sleep_until(next.min(tokio::time::Instant::now() + DNS_POLL)).await;
    }
}

/// SIGHUP: re-reads the rules directory over the current set.
fn reload_profiles(shared: &Shared) {
    let Some(dir) = &shared.cfg.rules_dir else {
        info!("SIGHUP: no rules directory configured; shipped profiles unchanged");
        return;
    };
    // The files are read and parsed without the lock (the reader keeps draining); the
    // set starts from what is installed, so a file that turned bad keeps its last good
    // version, and nothing changes when compiling into the kernel fails.
    let mut set = shared.core().profiles.clone();
    report_profile_diagnostics(&set.load_dir(dir));
    if let Err(e) = shared.core().install_profiles(&set) {
        warn!(error = %format!("{e:#}"), "compiling profiles into the kernel failed; previous maps kept");
        return;
    }
    info!(profiles = %set.names().join(","), "SIGHUP: profiles reloaded");
}

fn report_profile_diagnostics(diags: &[policy::Diagnostic]) {
    for d in diags {
        match d.severity {
            policy::Severity::Error => {
                warn!("profile rejected, last good version kept: {d}");
            }
            policy::Severity::Warning => info!("profile: {d}"),
        }
    }
}

/// The kernel flags of `profile`, or an error naming the missing layer when this host
/// cannot carry them out (never a silent downgrade).
fn enforceable_flags(shared: &Shared, p: &Profile) -> Result<u32> {
    let profile = &p.file.name;
    let (flags, required) = (profiles::session_flags(p).0, profiles::required_programs(p));
    for program in required {
        let p = shared.programs.iter().find(|p| p.name == program);
        if p.is_none_or(|p| p.state != "attached") {
            let why = p.and_then(|p| p.reason.clone()).unwrap_or_default();
            bail!(
                "profile `{profile}` needs the {program} program to block, \
                 not available on this host: {why} (name `fallback: kill` in the profile to \
                 kill instead where no layer can block)"
            );
        }
    }
    Ok(flags)
}

fn check_name(core: &Core, name: Option<&str>) -> Result<()> {
    if let Some(n) = name
        && core
            .attribution
            .registry
            .by_name(n)
            .is_some_and(|s| s.ended.is_none())
    {
        bail!("an active session is already named `{n}`");
    }
    Ok(())
}

/// Sends stored events (filtered), then live ones when following. Subscribing before
/// reading the log and skipping already-sent sequence numbers leaves no gap.
async fn stream_events(
    shared: &Shared,
    wr: &mut (impl AsyncWriteExt + Unpin),
    session: Option<String>,
    follow: bool,
) -> Result<()> {
    let mut rx = shared.core().sinks.follow();
    let filter = match session {
        None => None,
        Some(s) => Some(resolve_session(shared, &s)?),
    };
    let matches = |e: &Event| filter.as_ref().is_none_or(|id| &e.session.id == id);
    let path = shared.cfg.state_dir.join(EVENT_LOG);
    shared.core().sinks.log.flush();
    let backlog = tokio::task::spawn_blocking(move || eventlog::read(&path)).await??;
    let mut last = 0;
    for e in backlog.into_iter().filter(|e| matches(e)) {
        last = e.seq;
        send(wr, &Response::Event { event: Box::new(e) }).await?;
    }
    send(wr, &Response::EndOfBacklog).await?;
    if !follow {
        return Ok(());
    }
    loop {
        match rx.recv().await {
            Ok(e) if e.seq > last && matches(&e) => {
                send(
                    wr,
                    &Response::Event {
                        event: Box::new((*e).clone()),
                    },
                )
                .await?;
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                shared.core().counters.subscriber_lagged += n;
                warn!(missed = n, "events --follow client lagged");
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

fn resolve_session(shared: &Shared, s: &str) -> Result<String> {
    let core = shared.core();
    if let Some(sess) = core.attribution.registry.by_name(s) {
        return Ok(format_id(sess.id));
    }
    match parse_id(s) {
        Some(id) if s.len() == 16 => Ok(format_id(id)),
        _ => bail!("no session named `{s}` (and not a 16-hex-digit session id)"),
    }
}
