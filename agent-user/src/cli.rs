//! Command-line interface: argument definitions and what each command does.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use agent_common::session::MAX_TRACKED_PROCESSES;
use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::{
    client::Client,
    daemon::{self, DaemonConfig},
    offsets::VMLINUX_BTF,
    output, policy,
    probe::HostProbe,
    profiles::ProfileSet,
    proto::{DEFAULT_SOCKET, Request, Response},
    users,
};

/// Port of the metrics endpoint when `--metrics` is given without an address.
pub const DEFAULT_METRICS_PORT: u16 = 9464;

/// A retention age; `None` keeps everything.
#[derive(Clone, Copy, Debug)]
pub struct Age(pub Option<std::time::Duration>);

/// A size cap in bytes; `None` is no cap.
#[derive(Clone, Copy, Debug)]
pub struct Size(pub Option<u64>);

fn parse_age(s: &str) -> Result<Age, String> {
    if s == "none" {
        return Ok(Age(None));
    }
    humantime::parse_duration(s)
        .map(|d| Age(Some(d)))
        .map_err(|e| format!("{e} (examples: 30days, 12h, none)"))
}

fn parse_size(s: &str) -> Result<Size, String> {
    if s == "none" {
        return Ok(Size(None));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 500MiB, 2G, none)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        u => {
            return Err(format!(
                "unknown size unit `{u}` (use K, M, G, KiB, MiB, GiB)"
            ));
        }
    };
    Ok(Size(Some(n.saturating_mul(mult))))
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?
        .0
        .ok_or_else(|| "the ring buffer needs a size".to_owned())?;
    if !n.is_power_of_two() || !(64 << 10..=1 << 30).contains(&n) {
        return Err(format!(
            "`{s}` is not a power of two between 64KiB and 1GiB (the kernel's rule for a \
             BPF ring buffer)"
        ));
    }
    Ok(n as u32)
}

/// Exit status when agentwarden itself could not launch the command (as `env` does).
pub const EXIT_LAUNCH_FAILED: u8 = 125;

#[derive(Parser, Debug)]
#[command(name = "agentwarden", version, about = "Runtime control for AI agents")]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "AGENTWARDEN_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon: load the kernel programs and watch enrolled sessions.
    Daemon {
        /// Directory for the event log and state.
        #[arg(long, default_value = "/var/lib/agentwarden")]
        state_dir: PathBuf,
        /// Extra directory of `*.yaml` profiles (the shipped ones are embedded).
        #[arg(long)]
        rules_dir: Option<PathBuf>,
        /// Do not copy events to stdout (they still go to the event log).
        #[arg(long)]
        quiet: bool,
        /// Kernel BTF to read struct offsets from.
        #[arg(long, default_value = VMLINUX_BTF)]
        btf: PathBuf,
        /// Capacity of the kernel session map: processes tracked across all sessions.
        /// A child that does not fit is reported (`session_map_full`), never silent, and
        /// in an enforce-mode session killed (it would run outside its profile).
        #[arg(long, default_value_t = MAX_TRACKED_PROCESSES)]
        max_tracked_processes: u32,
        /// Size of the kernel-to-daemon ring buffer (a power of two, at least 64KiB). It
        /// absorbs bursts while the daemon catches up; records that find it full are
        /// dropped and counted. Its pages count twice in the daemon's RSS (the kernel maps
        /// the data area twice so records can wrap around).
        #[arg(long, default_value = "16MiB", value_parser = parse_ring_size)]
        ring_buffer_size: u32,
        /// Name server (IP:PORT, UDP) for the host names of network rules; default: the
        /// system's resolver configuration.
        #[arg(long)]
        dns_server: Option<std::net::SocketAddr>,
        /// Resolver configuration whose name servers a `nameservers: system` rule
        /// allows (re-read as it changes).
        #[arg(long, default_value = "/etc/resolv.conf")]
        resolv_conf: PathBuf,
        /// Audit records older than this are pruned through a checkpoint (`none`: keep).
        #[arg(long, default_value = "90days", value_parser = parse_age)]
        audit_retention: Age,
        /// Prune the oldest audit records when the database grows past this size
        /// (bytes, or with K/M/G/KiB/MiB/GiB; `none`: no cap).
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        audit_max_size: Size,
        /// Rotate the event log (`events.jsonl` in the state directory) into
        /// `events.jsonl.1` past this size, replacing the previous one (`none`: never).
        /// The audit store is the long-term record.
        #[arg(long, default_value = "256MiB", value_parser = parse_size)]
        event_log_max_size: Size,
        /// Audit records that may wait for the writer; past this they are dropped and
        /// counted (the kernel path never waits on the disk).
        #[arg(long, default_value_t = 65_536)]
        audit_queue: usize,
        /// Serve Prometheus metrics at http://127.0.0.1:9464/metrics.
        #[arg(long)]
        metrics: bool,
        /// Serve Prometheus metrics on this address instead (implies --metrics).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Leave the fanotify refusal layer out (file and exec `block` then needs
        /// BPF-LSM or `fallback: kill`; copies and fileless execs on real filesystems
        /// are not decided). For measuring its cost, and hosts that cannot spare it.
        #[arg(long)]
        no_refusal: bool,
        /// Where the kernel side is pinned (on bpffs, mounted at /sys/fs/bpf when the
        /// host has none): maps and links stay there when the daemon stops or dies, so
        /// sessions stay tracked and the kernel's decisions stay in force; the next
        /// daemon adopts them.
        #[arg(long, env = "AGENTWARDEN_PIN_DIR", default_value = crate::pins::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// On SIGTERM or SIGINT, remove everything pinned (as `agentwarden unload`):
        /// every program detaches and the enforcement of running sessions ends. Without
        /// it, stopping the daemon (an upgrade, a restart) leaves enforcement in force.
        #[arg(long)]
        detach_on_exit: bool,
        /// A file or directory no session may open, on top of the daemon's own state and
        /// pin directories (repeatable): its binary and unit, say. Refused in every
        /// profile with the daemon's own self-protection rule.
        #[arg(long = "protect", value_name = "PATH")]
        protect: Vec<PathBuf>,
        /// The socket agents' hooks ask (connectable by every user; a process may only
        /// report for its own session). Default: `hook.sock` beside the control socket.
        #[arg(long)]
        hook_socket: Option<PathBuf>,
        /// What is kept of the prompts agents' hooks report: the text, only its
        /// SHA-256, or neither.
        #[arg(long, value_enum, default_value_t = crate::hooks::PromptText::Sha256)]
        prompts: crate::hooks::PromptText,
        /// Export sessions (`invoke_agent` spans), tool calls (`execute_tool` spans) and
        /// actions (log records) to an OTLP/HTTP collector: `http://HOST:PORT`.
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<crate::daemon::export::Endpoint>,
        /// POST each operation held for approval (`on_violation: ask`) to this URL
        /// (`http://HOST:PORT/PATH`), and take the answer it returns; signed both ways
        /// with the secret in `--approval-webhook-secret-file`.
        #[arg(long, value_name = "URL", requires = "approval_webhook_secret_file")]
        approval_webhook: Option<String>,
        /// The webhook's shared secret (at least 16 bytes; mode 600).
        #[arg(long, value_name = "FILE", requires = "approval_webhook")]
        approval_webhook_secret_file: Option<PathBuf>,
        /// containerd's socket: sessions and processes in its containers are named by
        /// container and pod, and `match:` selectors on container labels are judged
        /// (asked through its `ctr` client when a container's cgroup is created).
        #[arg(
            long,
            value_name = "SOCKET",
            default_value = "/run/containerd/containerd.sock"
        )]
        containerd_address: PathBuf,
        /// How long a new container's processes are held at their first exec while
        /// containerd is asked for its labels (`match:` selectors on labels), asking
        /// again as it fails; past it they run with the labels unjudged, counted
        /// (`container_lookups_abandoned`) and logged.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        container_lookup_budget: std::time::Duration,
        /// How often the drift analyser reads what the audit store committed (`5s`,
        /// `1m`): it judges each session's actions against its agent's baseline and
        /// learns finished sessions, out of band.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
        drift_interval: std::time::Duration,
        /// Do not run the drift analyser.
        #[arg(long)]
        no_drift: bool,
        #[command(flatten)]
        drift_thresholds: crate::drift::cmd::Thresholds,
        /// POST each drift finding as JSON to this URL (`http://HOST:PORT/PATH`).
        #[arg(long, value_name = "URL")]
        drift_webhook: Option<String>,
    },
    /// The command an agent's hook runs (wired by `run`, or `hooks install`): reads the
    /// hook's JSON on stdin, reports it to the daemon for the caller's own session, and
    /// answers the agent (a `tools:` refusal, the reason for a refusal in the call).
    Hook {
        #[arg(value_enum)]
        dialect: crate::hooks::Dialect,
        /// The daemon's hook socket (default: what `run` set, else the system's).
        #[arg(long)]
        hook_socket: Option<PathBuf>,
    },
    /// Agent hooks for agents started without `agentwarden run`.
    Hooks {
        #[command(subcommand)]
        cmd: HooksCmd,
    },
    /// For `cargo xtask bench`: attach a program that does nothing to every syscall
    /// tracepoint the daemon uses, say so on stdout, and hold it until killed (the
    /// hooks' own cost on this kernel). No daemon may run meanwhile.
    #[command(hide = true)]
    BenchFloor,
    /// Remove everything the daemon pinned: every program detaches and the enforcement
    /// of running sessions ends. Refused while a daemon runs on the socket.
    Unload {
        #[arg(long, env = "AGENTWARDEN_PIN_DIR", default_value = crate::pins::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Enrol this process in a new session, then execute CMD in it.
    Run {
        #[arg(long)]
        profile: String,
        #[arg(long)]
        session_name: Option<String>,
        /// Run the agent as this user (root only): the user owns the session and `~` in
        /// the profile is their home. Supplementary groups are dropped.
        #[arg(long)]
        user: Option<String>,
        /// The agent command and its arguments.
        #[arg(required = true, last = true)]
        cmd: Vec<OsString>,
    },
    /// Enrol a running process and its descendants in a new session.
    Attach {
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        profile: String,
        #[arg(long)]
        session_name: Option<String>,
    },
    /// List sessions.
    Sessions {
        #[arg(long)]
        json: bool,
    },
    /// Operations held for a person's answer (`on_violation: ask`): who, what, since when.
    Pending {
        #[arg(long)]
        json: bool,
    },
    /// What each live session holds: the principal (uid, groups, capabilities), the
    /// credentials within its reach with its profile's verdict on each, its network and
    /// tool rules, and the owners answering for them.
    Inventory {
        #[arg(long)]
        json: bool,
        /// Instead: the processes that look like agents (known agents, MCP servers, the
        /// profiles' `match:` selectors) running outside every session.
        #[arg(long)]
        unmanaged: bool,
    },
    /// Let a held operation go ahead. Alone: the operations waiting on the request now;
    /// `--session`: also the same object under the same rule for the rest of the
    /// session; `--for 10m`: for that long.
    Approve {
        id: u64,
        #[arg(long, conflicts_with = "duration")]
        session: bool,
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Why (recorded with the approval).
        #[arg(long)]
        note: Option<String>,
    },
    /// For a redirect endpoint: where the connection coming from `--peer` was addressed
    /// before a `network.redirect` rule sent it here (prints `IP:PORT`).
    OriginalDestination {
        /// The connection's far end as the endpoint sees it (the agent's local end).
        #[arg(long)]
        peer: std::net::SocketAddr,
        /// The endpoint's own address of the connection.
        #[arg(long)]
        local: Option<std::net::SocketAddr>,
        #[arg(long)]
        json: bool,
    },
    /// Refuse a held operation (`EPERM` for every operation waiting on the request).
    Deny {
        id: u64,
        #[arg(long)]
        note: Option<String>,
    },
    /// Show recorded events.
    Events {
        /// Keep streaming new events.
        #[arg(long)]
        follow: bool,
        /// Only this session (id or name).
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Host capabilities, attached programs and loss counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The audit trail: verify its hash chain, query it, show a session's timeline,
    /// export it (JSON lines or OCSF).
    Audit {
        /// The audit database (the daemon keeps it as `audit.db` in its state directory).
        #[arg(long, global = true, default_value = crate::audit::cmd::DEFAULT_DB)]
        db: PathBuf,
        #[command(subcommand)]
        cmd: crate::audit::cmd::AuditCmd,
    },
    /// Agent profiles: check, inspect, schema; draft one from recorded sessions, replay
    /// recorded sessions against one, compare two.
    Profile {
        #[command(subcommand)]
        cmd: ProfileCmd,
    },
    /// Agents' behaviour baselines, as the daemon's drift analyser learns them from the
    /// audit store.
    Baseline {
        #[arg(long, global = true, default_value = crate::audit::cmd::DEFAULT_DB)]
        db: PathBuf,
        #[command(subcommand)]
        cmd: crate::drift::cmd::BaselineCmd,
    },
    /// Behavioural drift across sessions, judged from the audit store.
    Drift {
        #[arg(long, global = true, default_value = crate::audit::cmd::DEFAULT_DB)]
        db: PathBuf,
        #[command(subcommand)]
        cmd: crate::drift::cmd::DriftCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum HooksCmd {
    /// Write agentwarden's hooks into an agent's settings (kept: everything already
    /// there; installing twice changes nothing).
    Install {
        /// The agent whose settings get the hooks.
        #[arg(long, value_enum, default_value_t = crate::hooks::Dialect::ClaudeCode)]
        agent: crate::hooks::Dialect,
        /// The user's settings, a project's, or the host's managed settings (every
        /// user, not overridable by them).
        #[arg(long, value_enum, default_value_t = crate::hooks::install::Scope::User)]
        scope: crate::hooks::install::Scope,
        /// The project directory (`--scope project`; default: the current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProfileCmd {
    /// Check profile files: errors with file, line, column, field and a hint (exit 1).
    Lint {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// What a profile compiled to: a shipped profile's name, or a file.
    Show { profile: String },
    /// The JSON Schema of the profile format.
    Schema,
    /// Draft a profile from an agent's recorded sessions (YAML on stdout): allow lists
    /// generalised to trees, the destinations seen, what was denied and the usual
    /// credentials denied, owners to fill in, `mode: monitor`.
    Learn {
        #[arg(long, default_value = crate::audit::cmd::DEFAULT_DB)]
        db: PathBuf,
        #[command(flatten)]
        sessions: crate::drift::cmd::Sessions,
        /// The draft's name (default: AGENT-learned).
        #[arg(long)]
        name: Option<String>,
    },
    /// Judge recorded sessions by a profile (a shipped profile's name, or a file): the
    /// actions it would deny that they performed, and allow that they were denied. Exit
    /// 1 when it would deny a performed action.
    Replay {
        profile: String,
        #[arg(long, default_value = crate::audit::cmd::DEFAULT_DB)]
        db: PathBuf,
        #[command(flatten)]
        sessions: crate::drift::cmd::Sessions,
    },
    /// What changes from OLD to NEW: the rules each has that the other has not; with
    /// `--db`, the recorded actions (of OLD's agent by default) the change would have
    /// denied or allowed.
    Diff {
        old: String,
        new: String,
        #[arg(long)]
        db: Option<PathBuf>,
        #[command(flatten)]
        sessions: crate::drift::cmd::Sessions,
    },
}

/// Runs a parsed command line.
// Long: one arm per subcommand, each a call and its printing; the CLI reads best in one match.
pub fn main(cli: Cli) -> Result<ExitCode> {
    let socket = cli.socket.as_path();
    match cli.command {
        Cmd::Daemon {
            state_dir,
            rules_dir,
            quiet,
            btf,
            max_tracked_processes,
            ring_buffer_size,
            dns_server,
            resolv_conf,
            audit_retention,
            audit_max_size,
            audit_queue,
            event_log_max_size,
            metrics,
            metrics_addr,
            no_refusal,
            pin_dir,
            detach_on_exit,
            protect,
            hook_socket,
            prompts,
            otlp_endpoint,
            approval_webhook,
            approval_webhook_secret_file,
            containerd_address,
            container_lookup_budget,
            drift_interval,
            no_drift,
            drift_thresholds,
            drift_webhook,
        } => {
            let approval_webhook = match (approval_webhook, approval_webhook_secret_file) {
                (Some(url), Some(secret)) => Some(crate::daemon::Webhook::new(&url, &secret)?),
                _ => None,
            };
            let cfg = DaemonConfig {
                drift: crate::daemon::DriftSettings {
                    interval: (!no_drift).then_some(drift_interval),
                    thresholds: drift_thresholds.config(),
                    webhook: drift_webhook,
                },
                containerd: containerd_address,
                container_lookup_budget,
                approval_webhook,
                otlp: otlp_endpoint,
                hook_socket: hook_socket.unwrap_or_else(|| socket.with_file_name("hook.sock")),
                prompts,
                socket: socket.to_owned(),
                state_dir,
                stdout: !quiet,
                rules_dir,
                btf,
                max_tracked_processes,
                ring_buffer_size,
                dns_server,
                resolv_conf,
                audit_max_age: audit_retention.0,
                audit_max_bytes: audit_max_size.0,
                audit_queue,
                event_log_max_bytes: event_log_max_size.0,
                metrics: metrics_addr.or(metrics
                    .then(|| std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)))),
                refusal: !no_refusal,
                pin_dir,
                detach_on_exit,
                protect,
            };
            // Before any other thread starts: every thread inherits the blocked mask.
            let signals = daemon::Signals::take()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                // A parked worker is idle: it gives back what it freed, when asked.
                .on_thread_park(crate::memory::collect_if_asked)
                .enable_all()
                .build()?;
            let ran = runtime.block_on(daemon::run(cfg, signals));
            exit_daemon(runtime, ran)
        }
        Cmd::BenchFloor => {
            let (_ebpf, hooks) = crate::loader::attach_floor()?;
            println!("floor: attached to {}", hooks.join(" "));
            std::io::Write::flush(&mut std::io::stdout())?;
            // Until SIGTERM or SIGINT, whose default action ends the process (and with
            // it the attachments).
            loop {
                std::thread::park();
            }
        }
        Cmd::Unload { pin_dir } => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                anyhow::bail!(
                    "a daemon is running on {}: stop it first (its pins are adopted by the \
                     next daemon otherwise)",
                    socket.display()
                );
            }
            if crate::pins::PinDir::new(&pin_dir).remove()? {
                println!("unloaded: removed {}", pin_dir.display());
            } else {
                println!("nothing pinned at {}", pin_dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            profile,
            session_name,
            user,
            cmd,
        } => Ok(run(socket, profile, session_name, user.as_deref(), &cmd)),
        Cmd::Attach {
            pid,
            profile,
            session_name,
        } => {
            let resp = Client::call(
                socket,
                &Request::Attach {
                    pid,
                    profile,
                    session_name,
                },
            )?;
            let Response::Enrolled {
                session,
                processes,
                warnings,
                ..
            } = resp
            else {
                bail!("unexpected response {resp:?}")
            };
            println!(
                "attached pid {pid} and {} descendant(s) to session {} ({})",
                processes.len().saturating_sub(1),
                session.id,
                session.name
            );
            for w in warnings {
                eprintln!("agentwarden: warning: profile `{}`: {w}", session.profile);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sessions { json } => {
            let Response::Sessions { sessions } = Client::call(socket, &Request::Sessions)? else {
                bail!("unexpected response")
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else {
                print!("{}", output::sessions(&sessions));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inventory {
            json,
            unmanaged: true,
        } => {
            let Response::Unmanaged { processes } = Client::call(socket, &Request::Unmanaged)?
            else {
                bail!("unexpected response")
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&processes)?);
            } else {
                print!("{}", output::unmanaged(&processes));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inventory { json, .. } => {
            let Response::Inventory { sessions } = Client::call(socket, &Request::Inventory)?
            else {
                bail!("unexpected response")
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else {
                print!("{}", output::inventory(&sessions));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pending { json } => {
            let Response::Pending { requests } = Client::call(socket, &Request::Pending)? else {
                bail!("unexpected response")
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&requests)?);
            } else {
                print!("{}", output::pending(&requests));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Approve {
            id,
            session,
            duration,
            note,
        } => {
            use crate::event::ApprovalScope;
            let scope = match (session, duration) {
                (true, _) => ApprovalScope::Session,
                (false, Some(_)) => ApprovalScope::Duration,
                (false, None) => ApprovalScope::Once,
            };
            let req = Request::Approve {
                id,
                scope,
                duration_secs: duration.map(|d| d.as_secs().max(1)),
                note,
            };
            answered(Client::call(socket, &req)?, "approved")
        }
        Cmd::OriginalDestination { peer, local, json } => {
            match Client::call(socket, &Request::OriginalDestination { peer, local })? {
                Response::OriginalDestination {
                    address,
                    session,
                    rule,
                } => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({ "address": address, "session": session, "rule": rule })
                        );
                    } else {
                        println!("{address}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Response::Error { message } => bail!("{message}"),
                _ => bail!("unexpected response"),
            }
        }
        Cmd::Deny { id, note } => {
            answered(Client::call(socket, &Request::Deny { id, note })?, "denied")
        }
        Cmd::Events {
            follow,
            session,
            json,
        } => events(socket, follow, session, json),
        Cmd::Status { json } => status(socket, json),
        Cmd::Profile { cmd } => profile(cmd),
        Cmd::Hook {
            dialect,
            hook_socket,
        } => Ok(crate::hooks::cmd::run(dialect, hook_socket)),
        Cmd::Hooks {
            cmd: HooksCmd::Install { agent, scope, dir },
        } => {
            use crate::hooks::install::{Scope, install, settings_path};
            let base = match (scope, dir) {
                (Scope::Project, Some(d)) => d,
                (Scope::Project, None) => std::env::current_dir()?,
                (Scope::User, _) => std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .ok_or_else(|| anyhow::anyhow!("HOME is not set"))?,
                (Scope::Managed, _) => PathBuf::from("/"),
            };
            let path = settings_path(agent, scope, &base);
            let command = hook_command(agent)?;
            if install(agent, &path, &command)? {
                println!(
                    "installed agentwarden's {} hooks in {}",
                    agent.as_str(),
                    path.display()
                );
            } else {
                println!("agentwarden's hooks were already in {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit { db, cmd } => crate::audit::cmd::run(&db, cmd),
        Cmd::Baseline { db, cmd } => crate::drift::cmd::baseline(&db, cmd),
        Cmd::Drift { db, cmd } => crate::drift::cmd::drift(&db, cmd),
    }
}

/// `agentwarden run`: enrol, then become the agent. Never runs it unwatched.
// Long: the steps between enrolment and exec (user switch, Landlock, capabilities, seccomp, environment) must run in this order in one place.
fn run(
    socket: &Path,
    profile: String,
    session_name: Option<String>,
    user: Option<&str>,
    cmd: &[OsString],
) -> ExitCode {
    let account = match user.map(|u| (u, users::account(u))) {
        None => None,
        Some((_, Some(a))) => Some(a),
        Some((u, None)) => {
            eprintln!("agentwarden: no user `{u}` in /etc/passwd; not running the agent");
            return ExitCode::from(EXIT_LAUNCH_FAILED);
        }
    };
    let wiring: Option<crate::proto::HookWiring>;
    let env_plan;
    // What wires the agent's hooks, made before Landlock and the user switch (Gemini
    // CLI's needs a file written as root).
    let mut hook_wiring = None;
    let enrolled = Client::call(
        socket,
        &Request::Enroll {
            profile,
            session_name,
            as_uid: account.as_ref().map(|a| a.uid),
        },
    );
    let session = match enrolled {
        Ok(Response::Enrolled {
            session,
            warnings,
            landlock,
            drop_capabilities,
            seccomp,
            hooks,
            environment,
            ..
        }) => {
            wiring = hooks;
            env_plan = environment;
            if let Some(w) = wiring.as_ref().filter(|w| w.dialect.is_agent_command(cmd)) {
                hook_wiring = Some(
                    hook_command(w.dialect)
                        .and_then(|hook| w.dialect.wiring(&hook, w.answer_secs, &session.id)),
                );
            }
            for w in warnings {
                eprintln!("agentwarden: warning: profile `{}`: {w}", session.profile);
            }
            // Restricted before the exec: the agent never runs outside the domain.
            if let Some(plan) = landlock {
                match policy::landlock::apply(&plan) {
                    Ok(policy::landlock::Applied::Full) => {}
                    Ok(policy::landlock::Applied::Partial) => eprintln!(
                        "agentwarden: warning: this kernel's Landlock enforces part of the \
                         profile's file rights only"
                    ),
                    Err(e) => {
                        eprintln!(
                            "agentwarden: cannot apply Landlock: {e:#}\n\
                             agentwarden: not running the agent unwatched"
                        );
                        return ExitCode::from(EXIT_LAUNCH_FAILED);
                    }
                }
            }
            if let Err(e) = drop_capabilities_named(&drop_capabilities) {
                eprintln!(
                    "agentwarden: cannot drop {}: {e:#}\n\
                     agentwarden: not running the agent unwatched",
                    drop_capabilities.join(", ")
                );
                return ExitCode::from(EXIT_LAUNCH_FAILED);
            }
            // Last before the exec, after Landlock and the capabilities (whose calls it
            // does not refuse, but nothing is left to chance): inherited by everything
            // the agent runs, and no process in the session can remove it.
            let applied = match &seccomp {
                Some(plan) => policy::syscalls::apply(plan),
                None => Err(anyhow::anyhow!("the daemon sent no seccomp filter")),
            };
            if let Err(e) = applied {
                eprintln!(
                    "agentwarden: cannot install the seccomp filter: {e:#}\n\
                     agentwarden: not running the agent unwatched"
                );
                return ExitCode::from(EXIT_LAUNCH_FAILED);
            }
            session
        }
        Ok(other) => {
            eprintln!("agentwarden: unexpected response {other:?}; not running the agent");
            return ExitCode::from(EXIT_LAUNCH_FAILED);
        }
        Err(e) => {
            eprintln!("agentwarden: {e:#}\nagentwarden: not running the agent unwatched");
            return ExitCode::from(EXIT_LAUNCH_FAILED);
        }
    };
    let mut command = Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    // The profile's environment: credentials it does not need taken away, its own
    // values set (the daemon recorded the names).
    if let Some(plan) = &env_plan {
        for name in &plan.remove {
            command.env_remove(name);
        }
        for (name, value) in &plan.set {
            command.env(name, value);
        }
    }
    if let Some(w) = &wiring {
        // The agent's hooks ask this session's daemon: Claude Code takes them as one
        // more `--settings` source (on top of the user's and the host's), Codex as
        // `-c` overrides. Only the agent's own command line gets its options.
        command.env(crate::hooks::HOOK_SOCKET_ENV, &w.socket);
        if let Some(secs) = w.answer_secs {
            command.env(crate::hooks::HOOK_ANSWER_ENV, secs.to_string());
        }
        if let Some(made) = hook_wiring {
            match made {
                Ok(how) => {
                    command.args(how.args);
                    command.envs(how.env);
                }
                Err(e) => {
                    eprintln!(
                        "agentwarden: cannot wire the agent's hooks: {e:#}\n\
                         agentwarden: not running the agent"
                    );
                    return ExitCode::from(EXIT_LAUNCH_FAILED);
                }
            }
        } else {
            eprintln!(
                "agentwarden: warning: profile `{}` wires {} hooks, but `{}` is not that \
                 agent: no hooks added (its tool calls are inferred from its processes)",
                session.profile,
                w.dialect.as_str(),
                cmd[0].to_string_lossy()
            );
        }
    }
    command
        .env("AGENTWARDEN_SESSION", &session.id)
        .env("AGENTWARDEN_SESSION_NAME", &session.name);
    if let Some(a) = &account {
        // std sets the gid, clears supplementary groups, then sets the uid before exec.
        command
            .uid(a.uid)
            .gid(a.gid)
            .env("HOME", &a.home)
            .env("USER", &a.name)
            .env("LOGNAME", &a.name);
    }
    let err = command.exec();
    eprintln!(
        "agentwarden: cannot execute {}: {err}",
        cmd[0].to_string_lossy()
    );
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// The command line an agent runs as its hook: this binary, by its absolute path.
fn hook_command(dialect: crate::hooks::Dialect) -> Result<String> {
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().ok_or_else(|| {
        anyhow::anyhow!("the path of this binary is not UTF-8: {}", exe.display())
    })?;
    // Quoted for the shell the agent runs the hook with.
    Ok(format!(
        "'{}' hook {}",
        exe.replace('\'', r"'\''"),
        dialect.as_str()
    ))
}

/// Drops capabilities from this process (and so the agent it becomes) for good: from the
/// bounding set (no setuid or file-capability program regains them; needs
/// `CAP_SETPCAP`, which root has), and from the effective, permitted, inheritable and
/// ambient sets. Without `CAP_SETPCAP` (not root) the process holds none to drop, and
/// `no_new_privs` keeps programs from granting them.
fn drop_capabilities_named(names: &[String]) -> anyhow::Result<()> {
    use rustix::thread::CapabilitySet;
    for name in names {
        let set = match name.as_str() {
            "CAP_NET_RAW" => CapabilitySet::NET_RAW,
            other => anyhow::bail!("unknown capability {other}"),
        };
        match rustix::thread::remove_capability_from_bounding_set(set) {
            Ok(()) => {}
            Err(rustix::io::Errno::PERM) => rustix::thread::set_no_new_privs(true)?,
            Err(e) => return Err(e.into()),
        }
        let mut sets = rustix::thread::capabilities(None)?;
        sets.effective -= set;
        sets.permitted -= set;
        sets.inheritable -= set;
        rustix::thread::set_capabilities(None, sets)?;
        rustix::thread::configure_capability_in_ambient_set(set, false)?;
    }
    Ok(())
}

fn events(socket: &Path, follow: bool, session: Option<String>, json: bool) -> Result<ExitCode> {
    let mut c = Client::connect(socket)?;
    c.send(&Request::Events { session, follow })?;
    let mut rows = Vec::new();
    let print_rows = |rows: &mut Vec<Vec<String>>, header: bool| {
        if header {
            print!("{}", output::table(&output::EVENT_HEADER, rows));
        } else {
            for r in rows.iter() {
                println!("{}", r.join("  "));
            }
        }
        rows.clear();
    };
    let mut backlog_done = false;
    while let Some(resp) = c.recv()? {
        match resp {
            Response::Event { event } if json => println!("{}", serde_json::to_string(&event)?),
            Response::Event { event } => {
                rows.push(output::event_row(&event));
                if backlog_done {
                    print_rows(&mut rows, false);
                }
            }
            Response::EndOfBacklog => {
                if !json {
                    print_rows(&mut rows, true);
                }
                backlog_done = true;
                if !follow {
                    break;
                }
            }
            Response::Error { message } => bail!("{message}"),
            other => bail!("unexpected response {other:?}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(socket: &Path, json: bool) -> Result<ExitCode> {
    match Client::call(socket, &Request::Status) {
        Ok(Response::Status { status }) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", output::status(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => bail!("unexpected response {other:?}"),
        Err(e) => {
            // Still show what the host offers, and say the daemon is not running.
            let host = HostProbe::run();
            if json {
                let v =
                    serde_json::json!({ "daemon": null, "error": format!("{e:#}"), "host": host });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("daemon        not running ({e:#})");
                print!("{}", output::host(&host));
            }
            Ok(ExitCode::from(3))
        }
    }
}

/// A profile file, or a shipped profile by name.
fn load_profile(profile: &str) -> Result<Result<crate::policy::Profile, Vec<policy::Diagnostic>>> {
    if Path::new(profile).exists() {
        return Ok(policy::load(Path::new(profile)));
    }
    let set = ProfileSet::embedded().map_err(policy::to_error)?;
    match set.get(profile) {
        Some(p) => Ok(Ok(p.clone())),
        None => bail!(
            "no shipped profile `{profile}` (have: {})",
            set.names().join(", ")
        ),
    }
}

fn profile(cmd: ProfileCmd) -> Result<ExitCode> {
    match cmd {
        ProfileCmd::Lint { files } => {
            let mut failed = false;
            for f in files {
                match policy::load(&f) {
                    Ok(p) => {
                        println!("{}", policy::show::summary(&p));
                        for w in &p.warnings {
                            println!("{w}");
                        }
                    }
                    Err(errors) => {
                        failed = true;
                        for e in errors {
                            eprintln!("{e}");
                        }
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        ProfileCmd::Learn { db, sessions, name } => crate::drift::cmd::learn(&db, &sessions, name),
        ProfileCmd::Replay {
            profile,
            db,
            sessions,
        } => {
            let p = load_profile(&profile)?.map_err(policy::to_error)?;
            crate::drift::cmd::replay(&db, &p, &sessions)
        }
        ProfileCmd::Diff {
            old,
            new,
            db,
            sessions,
        } => {
            let old = load_profile(&old)?.map_err(policy::to_error)?;
            let new = load_profile(&new)?.map_err(policy::to_error)?;
            crate::drift::cmd::diff(db.as_ref(), &old, &new, &sessions)
        }
        ProfileCmd::Show { profile } => {
            let p = load_profile(&profile)?;
            match p {
                Ok(p) => {
                    print!("{}", policy::show::show(&p));
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in errors {
                        eprintln!("{e}");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        ProfileCmd::Schema => {
            print!("{}", policy::json_schema());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints what an answer to a request did.
fn answered(resp: Response, how: &str) -> Result<ExitCode> {
    match resp {
        Response::Answered { request, held } => {
            println!("request {request} {how}: {held} waiting operation(s) answered");
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => bail!("{message}"),
        _ => bail!("unexpected response"),
    }
}

/// Ends the daemon's process once `run` has returned. What must outlive the daemon is
/// already done inside `run`: the audit store committed and closed, the event log
/// flushed, the pins kept or removed, "stopped" logged. What is left is only waited for
/// if nothing is owed to it: the runtime's threads are not joined (a blocking task still
/// running, a control request reading the event log or a webhook call, would hold the
/// exit), and the process ends with `_exit(2)`, without the C library's exit handlers,
/// where the allocator's runs a forced collection over every heap while the runtime's
/// threads are still ending.
fn exit_daemon(runtime: tokio::runtime::Runtime, ran: Result<()>) -> ! {
    runtime.shutdown_background();
    let code = match ran {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("agentwarden: {e:#}");
            1
        }
    };
    let _ = std::io::Write::flush(&mut std::io::stderr());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // SAFETY: ends the process; nothing runs after it.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffer_size_must_be_a_power_of_two_the_kernel_accepts() {
        assert_eq!(parse_ring_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_ring_size("65536"), Ok(64 << 10));
        for bad in ["10MiB", "32KiB", "2GiB", "none", "lots"] {
            let e = parse_ring_size(bad).unwrap_err();
            assert!(e.contains(bad) || e.contains("size"), "{bad}: {e}");
        }
    }
}
