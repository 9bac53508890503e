//! `agentwarden daemon`: loads the kernel programs, serves the control socket, turns
//! ring-buffer records into enriched events, and tracks session lifetime.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fs,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::{DirBuilderExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use agent_common::{config::DaemonState, session::SessionEntry, stats::Stat};
use anyhow::{Context as _, Result, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader, unix::AsyncFd},
    net::{UnixListener, UnixStream},
    sync::broadcast,
};
use tracing::{info, warn};

mod adopt;
mod approvals;
mod attribute;
mod containers;
mod context;
mod control;
mod decide;
mod drift;
mod enrolment;
mod eventlog;
pub mod export;
mod hold;
mod inventory;
mod kernel;
mod metrics;
mod overflow;
mod pipeline;
mod policy_maps;
mod redirect;
mod refusal;
mod selectors;
mod signals;
mod sinks;
mod start;
mod stdout;
mod tasks;
mod toolcalls;
mod webhook;

use control::serve;
use eventlog::EventLog;
use kernel::KernelMaps;
use signals::Received;
pub use signals::{Signals, unblock_handled_signals};
use sinks::Sinks;
use start::{
    bind_socket, load_kernel, next_generation, open_state, raise_open_file_limit, ready,
    refuse_held_pins, refuse_second_daemon, until_signal,
};
use tasks::{
    DRAIN_BATCH, read_ring, rebind_inodes, refresh_dns, refusals, reload_profiles,
    report_profile_diagnostics, sweep, watchdog,
};
pub use webhook::Webhook;

use crate::{
    audit::{self, AuditConfig, AuditSink, SessionRecord},
    dns::{self, Dns},
    event::{self, Body, Clock, Event, LossInfo, Raw, SessionRef},
    loader::{self, ProgramStatus},
    offsets,
    pins::PinDir,
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
    /// The resolver configuration whose name servers `nameservers: system` allows.
    pub resolv_conf: PathBuf,
    /// Audit store retention and queue (the database is `state_dir/audit.db`).
    pub audit_max_age: Option<Duration>,
    pub audit_max_bytes: Option<u64>,
    pub audit_queue: usize,
    /// The event log rotates into `events.jsonl.1` past this size; `None`: never.
    pub event_log_max_bytes: Option<u64>,
    /// Where to serve Prometheus metrics (`None`: off).
    pub metrics: Option<std::net::SocketAddr>,
    /// Run the fanotify refusal layer.
    pub refusal: bool,
    /// Where the kernel side is pinned (see [`crate::pins`]).
    pub pin_dir: PathBuf,
    /// Remove everything pinned on exit (the end of enforcement).
    pub detach_on_exit: bool,
    /// More paths no session may open (`--protect`).
    pub protect: Vec<PathBuf>,
    /// The socket agents' hooks report to.
    pub hook_socket: PathBuf,
    /// What is kept of reported prompts.
    pub prompts: crate::hooks::PromptText,
    /// Where sessions, tool calls and actions are exported (OTLP/HTTP).
    pub otlp: Option<export::Endpoint>,
    /// Where held operations' requests are sent for an answer.
    pub approval_webhook: Option<webhook::Webhook>,
    /// containerd's socket (container and pod context, label selectors).
    pub containerd: PathBuf,
    /// How long a new container's processes wait for its lookup (see `containers`).
    pub container_lookup_budget: Duration,
    /// The out-of-band drift analyser.
    pub drift: DriftSettings,
}

pub use drift::DriftSettings;

/// Name of the event log in the state directory.
pub const EVENT_LOG: &str = "events.jsonl";

/// Reconciliation and loss-report period.
const SWEEP_PERIOD: Duration = Duration::from_millis(500);
/// Every how many sweeps the session map is checked for processes that are gone (5 s).
const STALE_SWEEP_EVERY: u64 = 10;

/// Everything the ring-buffer reader, the sweeper and the control handlers share. One lock
/// keeps enrolment, draining and reconciliation consistent with each other.
struct Core {
    /// The holding endpoint's port (`network.on_violation: ask`), 0 while none listens.
    hold_port: u16,
    /// Refusal notices offered to the pipeline and recorded (see `refusal::Records`).
    refusal_counts: Arc<refusal::NoticeCounts>,
    /// Sessions whose last process is gone, their end held until the refusals offered
    /// before it are recorded: the session, when it ended, and the mark to pass.
    deferred_ends: std::collections::VecDeque<(u64, SystemTime, u64)>,
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
    /// Sweeps since start: every [`STALE_SWEEP_EVERY`]th checks the session map's
    /// processes against /proc.
    stale_sweep: u64,
    /// Sessions whose `run` client restricted itself with Landlock.
    landlocked: HashSet<u64>,
    /// The daemon's own directories, denied to every session (self-protection).
    protected: Vec<(&'static str, PathBuf)>,
    /// Loss counters already reported as events (the kernel's carried over from the
    /// previous daemon).
    reported_losses: HashMap<String, u64>,
    /// The generation of this daemon's programs.
    generation: u64,
    state_dir: PathBuf,
    /// The last state written for a successor.
    saved_manifest: Option<adopt::Manifest>,
    /// A hold on every pinned object, to pin again what is removed.
    keeper: crate::pins::Keeper,
    /// The loaded object: the programs attached on demand are attached from it.
    ebpf: aya::Ebpf,
    /// The pins of the on-demand programs while they are attached, by program.
    on_demand: HashMap<&'static str, PathBuf>,
    /// `run` sessions adopted from a predecessor, whose seccomp filters protect its pids
    /// (not this daemon's): the syscall-entry program stands in while they live.
    inherited_filters: HashSet<u64>,
    pins: PinDir,
    /// Buffers of large records, reused from one record to the next.
    spare: event::Spare,
    host: String,
    /// What is kept of reported prompts.
    prompts: crate::hooks::PromptText,
    /// What was loaded and attached (which layers can enforce a profile here).
    programs: Vec<ProgramStatus>,
    /// The `match:` selectors as compiled into the kernel, by index.
    selectors: crate::policy::selectors::Compiled,
    /// Profiles whose selectors could not be loaded, with why (shown by `status`).
    selector_errors: Vec<String>,
    /// Labels of the containers found so far, by their cgroup id.
    container_labels: HashMap<u64, std::collections::BTreeMap<String, String>>,
    /// Processes that look like agents outside every session, raised once each (pid,
    /// start time), and how many there were at the last scan.
    unmanaged_seen: HashSet<(u32, u64)>,
    unmanaged_count: usize,
    containerd: crate::containers::Containerd,
    /// Containers found so far, by cgroup id (`None`: the cgroup is no container's).
    /// Only answers: a lookup containerd did not answer is asked again.
    containers: HashMap<u64, Option<crate::containers::ContainerInfo>>,
    /// Lookups of new cgroups' containers on their way (off the core: `ctr` may take
    /// seconds), whose cgroups stay pending in the kernel until they answer.
    lookups: containers::Lookups,
    /// What the drift analyser has done.
    drift: drift::DriftCounters,
    /// Host answers and real paths for shadow profiles' judgements (never a lookup on
    /// the event path: the DNS refresher hands its answers over).
    shadow_names: crate::drift::replay::Resolver,
    /// Shadow verdicts recorded, by shadow profile and verdict.
    shadow_counts: BTreeMap<(String, agent_common::vocab::Verdict), u64>,
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

/// Runs the daemon until SIGTERM or SIGINT (taken by `signals`, started before the
/// runtime): load and attach, open the state, compile the profiles into the kernel, say
/// READY, serve, and on the signal detach and commit. A signal that arrives while the
/// daemon starts is acted on once it is ready.
pub async fn run(cfg: DaemonConfig, signals: Signals) -> Result<()> {
    let mut startup = Startup::begin();
    refuse_second_daemon(&cfg.socket)?;
    raise_open_file_limit();
    let probe = HostProbe::run();
    startup.mark("probe");
    let pins = PinDir::new(&cfg.pin_dir);
    let previous = pins.previous();
    refuse_held_pins(&pins, previous)?;
    let generation = next_generation(previous);
    let (ebpf, mut programs, mut kernel, ring_fd) =
        load_kernel(&cfg, &probe, &pins, generation, &mut startup)?;
    let (refused_tx, refused_rx) = tokio::sync::mpsc::channel(refusal::QUEUE);
    let refused_tx = refusal::Records::new(refused_tx);
    let refusal_counts = refused_tx.counts();
    programs.push(start::refusal_layer(&mut kernel, refused_tx, cfg.refusal));
    startup.mark("refusal layer");
    let (sinks, profiles) = open_state(&cfg)?;
    // Bound before the profiles are compiled: their `ask` connects are sent to it.
    let hold_listener = hold::bind()?;
    startup.mark("state and profiles parsed");
    let shared = Arc::new(Shared {
        core: parking_lot::Mutex::new(Core::new(kernel, ebpf, sinks, &cfg)),
        cfg: cfg.clone(),
        probe,
        programs,
        started: SystemTime::now(),
        startup: Mutex::new(Vec::new()),
    });
    {
        let mut core = shared.core();
        core.generation = generation;
        core.refusal_counts = refusal_counts.clone();
        core.programs = shared.programs.clone();
        core.hold_port = hold_listener.local_addr()?.port();
        let adoption = match previous {
            Some(p) => {
                let saved = adopt::Manifest::read(&core.manifest_path()).unwrap_or_else(|e| {
                    warn!(error = %format!("{e:#}"), "the saved state is unreadable; adopting the kernel's sessions without it");
                    None
                });
                Some(core.adopt(saved, p.generation))
            }
            None => None,
        };
        core.bind_for_local_accounts();
        core.install_profiles(&profiles)?;
        // Processes a predecessor held for a container lookup and did not resume.
        core.resume_all_held();
        // Adopted sessions keep their syscall rules judged: attached before the switch.
        core.syscall_programs(None)?;
        // The profiles are in the maps, the refusal layer's marks in place: this
        // daemon's programs take over, the previous generation's links go.
        let lsm_self_protection = loader::LSM_SELF_PROTECTION.iter().all(|n| {
            shared
                .programs
                .iter()
                .any(|p| p.name == *n && p.state == "attached")
        });
        let flags = if lsm_self_protection {
            agent_common::config::DAEMON_FLAG_LSM_SELF_PROTECTION
        } else {
            0
        };
        core.kernel.take_over(generation, flags)?;
        let retired = pins.retire_except(generation)?;
        core.keeper = crate::pins::Keeper::hold(&pins, &pins.links(generation))?;
        core.kernel
            .policy
            .protect_pids(&control::protected_pids(0).kernel_pids())?;
        core.save_manifest();
        match adoption {
            Some(a) => info!(
                previous_generation = format_args!("{:016x}", a.previous_generation),
                generation = format_args!("{generation:016x}"),
                sessions = a.sessions,
                processes = a.processes,
                gone = a.gone,
                ended_in_gap = a.ended_in_gap,
                retired_links = retired,
                pins = %pins.root().display(),
                "adopted the pinned kernel side"
            ),
            None => {
                info!(pins = %pins.root().display(), generation = format_args!("{generation:016x}"), "kernel side pinned")
            }
        }
    }
    startup.mark("profiles compiled into maps");
    // Loading parsed the kernel's BTF and the object: give that memory back now.
    crate::memory::collect();
    // The metrics endpoint, then the control socket last: a client that can connect
    // finds a daemon ready to answer, and READY is never said by one about to fail.
    let metrics_listener = match cfg.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let hook_listener = context::bind(&cfg.hook_socket)?;
    let exporter = cfg.otlp.clone().map(|endpoint| {
        let mut core = shared.core();
        let (queue, task) = export::start(endpoint, core.host.clone());
        core.sinks.otlp = Some(queue);
        task
    });
    let approvals = cfg.approval_webhook.clone().and_then(|hook| {
        let core = shared.core();
        let Some(r) = &core.kernel.policy.refusal else {
            warn!("--approval-webhook is unused: the refusal layer, which holds operations, is not running");
            return None;
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        r.escalation.notify_to(tx);
        info!(url = %hook.url, "approval requests go to the webhook");
        Some(tokio::spawn(webhook::run(
            shared.clone(),
            hook,
            r.escalation.stats.clone(),
            rx,
        )))
    });
    let listener = bind_socket(&cfg.socket)?;
    startup.mark("socket");
    ready(&shared, startup);
    let lookups = {
        let mut core = shared.core();
        let queue = core.lookups.take_queue();
        queue.map(|q| (core.containerd.clone(), q))
    };
    let tasks = [
        tokio::spawn(containers::look_up(
            shared.clone(),
            lookups,
            cfg.container_lookup_budget,
        )),
        tokio::spawn(refresh_dns(shared.clone())),
        tokio::spawn(rebind_inodes(shared.clone())),
        tokio::spawn(sweep(shared.clone())),
        tokio::spawn(refusals(shared.clone(), refused_rx, refusal_counts)),
        tokio::spawn(hold::serve(
            shared.clone(),
            tokio::net::TcpListener::from_std(hold_listener)?,
        )),
        tokio::spawn(context::serve(shared.clone(), hook_listener)),
        tokio::spawn(serve(shared.clone(), listener)),
    ];
    let metrics = metrics_listener.map(|l| tokio::spawn(metrics::serve(shared.clone(), l)));
    let drift = drift::start(shared.clone(), cfg.state_dir.join(crate::audit::AUDIT_DB));
    // Under systemd with `WatchdogSec=` (and for this process, not a child it spawned).
    let watchdog =
        sd_notify::watchdog_enabled().map(|period| tokio::spawn(watchdog(shared.clone(), period)));
    let (stopped, watch) = until_signal(
        &shared,
        signals,
        tokio::spawn(read_ring(shared.clone(), ring_fd)),
    )
    .await;
    watch.step("stopping tasks");
    for t in tasks
        .iter()
        .chain(&metrics)
        .chain(&watchdog)
        .chain(&approvals)
        .chain(&drift)
    {
        t.abort();
    }
    let _ = fs::remove_file(&cfg.socket);
    let _ = fs::remove_file(&cfg.hook_socket);
    {
        watch.step("waiting for the core lock");
        let mut core = shared.core();
        // What the ring holds now, bounded: a session still refilling it must not keep
        // the daemon from stopping.
        watch.step("draining the ring buffer");
        core.drain(1 << 16);
        // Refusals still on their way are not coming any more: the ends they held.
        core.release_deferred_ends(true);
        // Commits what is queued before the process exits.
        watch.step("closing the audit store and the event log");
        core.sinks.close();
        // The exporter sends what it holds once its queue closes.
        core.sinks.otlp = None;
        // No sweep still running may pin again what an unload removes below.
        core.keeper = crate::pins::Keeper::default();
        // Processes held for a container lookup: a successor resumes them (it adopts
        // the held map); after an unload nothing would.
        if cfg.detach_on_exit {
            if let Err(e) = core.kernel.say_gone() {
                warn!(error = %format!("{e:#}"), "new processes may be held until the unload");
            }
            core.release_held();
        }
    }
    watch.step("sending the OTLP exporter's last batch");
    if let Some(task) = exporter
        && tokio::time::timeout(Duration::from_secs(6), task)
            .await
            .is_err()
    {
        warn!("the OTLP exporter did not finish its last batch");
    }
    watch.step("removing or keeping the pins");
    if cfg.detach_on_exit {
        // The pins were the programs' last holders: every one detaches.
        pins.remove()?;
        info!(pins = %pins.root().display(), "unloaded: every program detached");
    } else {
        info!(pins = %pins.root().display(), "the kernel side stays pinned and in force for the next daemon");
    }
    stopped?;
    info!("stopped");
    // Left armed: the runtime's shutdown and the process's exit are watched too (the
    // watch thread ends with the process).
    watch.step("exiting");
    std::mem::forget(watch);
    Ok(())
}

/// What no session may open: the state directory (audit store, event log) and the pin
/// directory (made canonical: the kernel reports resolved paths). Not the control socket's directory:
/// a connect is no open, and `--socket` may sit in a directory that is not the
/// daemon's alone (a project's, `/tmp`).
fn protected_dirs(cfg: &DaemonConfig) -> Vec<(&'static str, PathBuf)> {
    let canonical = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    vec![
        ("its state directory", canonical(&cfg.state_dir)),
        // Listing it is refused, so a link's name (under its generation) stays unknown;
        // a map's pin removed by its known name is pinned again by the sweep.
        ("its pinned kernel side", canonical(&cfg.pin_dir)),
    ]
    .into_iter()
    .chain(
        cfg.protect
            .iter()
            .map(|p| ("a path it protects (--protect)", canonical(p))),
    )
    .collect()
}

impl Core {
    fn new(kernel: KernelMaps, ebpf: aya::Ebpf, sinks: Sinks, cfg: &DaemonConfig) -> Self {
        Self {
            kernel,
            rules: RuleTable::default(),
            profile_ids: HashMap::new(),
            // The name servers from the start: a session enrolled before the first DNS
            // round can resolve names already.
            dns: HashMap::from([(
                compile::NAMESERVERS.to_owned(),
                dns::nameservers(&cfg.resolv_conf).unwrap_or_else(|e| {
                    warn!(error = %format!("{e:#}"), "no name servers: rules allowing `nameservers: system` are inactive");
                    Vec::new()
                }),
            )]),
            profiles: ProfileSet::default(),
            owners: BTreeSet::new(),
            homes: HashMap::new(),
            attribution: attribute::Attribution::new(Clock::now()),
            sinks,
            counters: DaemonCounters::default(),
            stale_sweep: 0,
            reported_losses: HashMap::new(),
            generation: 0,
            hold_port: 0,
            state_dir: cfg.state_dir.clone(),
            saved_manifest: None,
            keeper: crate::pins::Keeper::default(),
            ebpf,
            on_demand: HashMap::new(),
            inherited_filters: HashSet::new(),
            pins: PinDir::new(&cfg.pin_dir),
            landlocked: HashSet::new(),
            protected: protected_dirs(cfg),
            spare: event::Spare::default(),
            host: rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
            prompts: cfg.prompts,
            programs: Vec::new(),
            selectors: Default::default(),
            selector_errors: Vec::new(),
            container_labels: HashMap::new(),
            unmanaged_seen: HashSet::new(),
            unmanaged_count: 0,
            drift: drift::DriftCounters::default(),
            shadow_names: crate::drift::replay::Resolver::offline(
                crate::dns::nameservers(&cfg.resolv_conf).unwrap_or_default(),
            ),
            shadow_counts: BTreeMap::new(),
            containerd: crate::containers::Containerd::new(&cfg.containerd),
            containers: HashMap::new(),
            lookups: containers::Lookups::new(cfg.container_lookup_budget),
            refusal_counts: Arc::default(),
            deferred_ends: std::collections::VecDeque::new(),
        }
    }
}
