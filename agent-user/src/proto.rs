//! The control-socket protocol: one JSON request line, then JSON response lines.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{event::Event, loader::ProgramStatus, probe::HostProbe, session::SessionView};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/agentwarden/control.sock";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Enrol the calling process (its pid is taken from the socket's peer credentials).
    Enroll {
        profile: String,
        session_name: Option<String>,
        /// Run the agent as this uid (the session's owner); only root may ask.
        #[serde(default)]
        as_uid: Option<u32>,
    },
    /// Enrol a running process and its descendants.
    Attach {
        pid: u32,
        profile: String,
        session_name: Option<String>,
    },
    Sessions,
    Status,
    /// Stored events, optionally of one session (id or name), then live ones if `follow`.
    Events {
        session: Option<String>,
        follow: bool,
    },
    /// An agent's hook event (hook socket only): recorded for the caller's own session,
    /// answered with the daemon's decision on a tool call.
    Hook {
        dialect: crate::hooks::Dialect,
        input: serde_json::Value,
    },
    /// Operations held for an answer (`on_violation: ask`).
    Pending,
    /// What each live session holds: its principal, the credentials it can reach with
    /// its profile's verdict on each, its network and tool rules, and who owns them.
    Inventory,
    /// Processes that look like agents (the known agents, MCP servers, the profiles'
    /// selectors) running outside every session.
    Unmanaged,
    /// Let a held operation go ahead: the operations waiting on request `id` now, and
    /// with `scope` `session` or `duration` the same object under the same rule later.
    Approve {
        id: u64,
        #[serde(default)]
        scope: crate::event::ApprovalScope,
        /// For `scope: duration`: how long, in seconds.
        #[serde(default)]
        duration_secs: Option<u64>,
        #[serde(default)]
        note: Option<String>,
    },
    /// Where the redirected connection that comes from `peer` (its local end) was
    /// addressed, for the redirect endpoint; `local` (the endpoint's own address)
    /// narrows the match.
    OriginalDestination {
        peer: std::net::SocketAddr,
        #[serde(default)]
        local: Option<std::net::SocketAddr>,
    },
    /// Refuse the operations waiting on request `id` (`EPERM`).
    Deny {
        id: u64,
        #[serde(default)]
        note: Option<String>,
    },
}

/// A held operation's request, as `agentwarden pending` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingView {
    pub id: u64,
    /// Who: the session, its agent (profile) and owners, the principal it acts for.
    pub session: String,
    pub session_name: String,
    pub agent: String,
    pub business_owner: String,
    pub technical_owner: String,
    pub principal_uid: u32,
    #[serde(default)]
    pub principal_user: Option<String>,
    /// The process whose operation was held first.
    pub pid: u32,
    #[serde(default)]
    pub comm: Option<String>,
    /// What: `open`, `read` or `exec`, of which object, under which rule.
    pub access: String,
    pub path: String,
    pub rule: String,
    /// The tool call (and prompt) it happened under, where the agent's hooks tell.
    #[serde(default)]
    pub context: Option<crate::event::ContextRef>,
    /// Since when (RFC 3339), how long so far, and what silence comes to.
    pub since: String,
    pub waiting_ms: u64,
    pub timeout_secs: u64,
    pub on_timeout: String,
    /// Operations waiting on it.
    pub waiting: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Enrolled {
        session: Box<SessionView>,
        processes: Vec<u32>,
        /// What the profile asks for that this host or build only records.
        #[serde(default)]
        warnings: Vec<String>,
        /// The Landlock domain `run` must restrict itself to before executing the agent.
        #[serde(default)]
        landlock: Option<crate::policy::landlock::LandlockPlan>,
        /// Capabilities `run` must drop before executing the agent (`CAP_NET_RAW`).
        #[serde(default)]
        drop_capabilities: Vec<String>,
        /// The seccomp filter `run` must install in itself before executing the agent:
        /// the profile's syscall denials and the daemon's self-protection (every `run`
        /// session has one; `run` refuses to start the agent without it).
        #[serde(default)]
        seccomp: Option<crate::policy::syscalls::SeccompPlan>,
        /// The hooks `run` wires into the agent (the profile's `hooks:`), and the
        /// socket they ask.
        #[serde(default)]
        hooks: Option<HookWiring>,
        /// Variables `run` removes and sets before executing the agent.
        #[serde(default)]
        environment: Option<Box<crate::policy::environment::EnvPlan>>,
    },
    Hook {
        answer: crate::hooks::HookAnswer,
    },
    Sessions {
        sessions: Vec<SessionView>,
    },
    Pending {
        requests: Vec<PendingView>,
    },
    Inventory {
        sessions: Vec<crate::inventory::SessionInventory>,
    },
    Unmanaged {
        processes: Vec<crate::unmanaged::UnmanagedProcess>,
    },
    OriginalDestination {
        address: std::net::SocketAddr,
        session: String,
        rule: String,
    },
    /// An approval or denial took effect on `held` waiting operations.
    Answered {
        request: u64,
        held: u32,
    },
    Status {
        status: Box<StatusReport>,
    },
    Event {
        event: Box<Event>,
    },
    /// End of the stored events (a `follow` stream continues after it).
    EndOfBacklog,
    Error {
        message: String,
    },
}

/// How `run` wires the agent's hooks to the daemon.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HookWiring {
    pub dialect: crate::hooks::Dialect,
    pub socket: PathBuf,
    /// How long a hook waits for the daemon's answer, where a `tools:` rule may hold a
    /// call for a person (`ask`); `None`: the hook's default.
    #[serde(default)]
    pub answer_secs: Option<u64>,
}

/// A kernel counter summed over CPUs, with the per-CPU values.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counter {
    pub name: String,
    pub total: u64,
    pub per_cpu: Vec<u64>,
}

/// Counters of the daemon itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonCounters {
    pub records_read: u64,
    pub decode_errors: u64,
    pub events_logged: u64,
    pub log_write_errors: u64,
    /// Events a slow `events --follow` client did not receive.
    pub subscriber_lagged: u64,
    /// Events not copied to stdout because its reader fell behind.
    #[serde(default)]
    pub stdout_dropped: u64,
    /// Pins of the kernel side found removed and pinned again.
    #[serde(default)]
    pub pins_restored: u64,
    /// Session-map entries of processes found gone (their exit unseen) and removed.
    #[serde(default)]
    pub stale_entries_removed: u64,
    /// Container processes enrolled after they started: the container's lookup lost
    /// the race with its entrypoint's exec (a label selector then enrols them late).
    #[serde(default)]
    pub selector_late: u64,
    /// Processes held at their exec in a new cgroup until its container was looked up
    /// (container label selectors), then enrolled or not, and resumed.
    #[serde(default)]
    pub selector_held: u64,
    /// Lookups of a container that containerd failed or did not answer in time (each
    /// try; the lookup is asked again).
    #[serde(default)]
    pub container_lookup_failures: u64,
    /// Container lookups given up after the lookup budget: the container's processes
    /// ran with its labels unjudged.
    #[serde(default)]
    pub container_lookups_abandoned: u64,
    /// OTLP export: records the collector accepted, records dropped (a full queue or a
    /// failed request), requests that failed.
    #[serde(default)]
    pub otlp_exported: u64,
    #[serde(default)]
    pub otlp_dropped: u64,
    #[serde(default)]
    pub otlp_errors: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    pub version: String,
    pub daemon_pid: u32,
    pub started: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub host: HostProbe,
    pub programs: Vec<ProgramStatus>,
    pub kernel_counters: Vec<Counter>,
    pub daemon_counters: DaemonCounters,
    pub sessions_active: usize,
    pub sessions_total: usize,
    pub tracked_processes: usize,
    pub tracked_processes_max: u32,
    /// The audit store's writer: backlog, written, dropped, write errors, pruned.
    pub audit: crate::audit::AuditCounters,
    /// Where the daemon's start-up went, phase by phase (ms), ending with `total`.
    #[serde(default)]
    pub startup: Vec<crate::startup::StartupPhase>,
    /// Where the kernel side is pinned, and the generation of programs acting.
    #[serde(default)]
    pub pin_dir: PathBuf,
    #[serde(default)]
    pub generation: String,
}
