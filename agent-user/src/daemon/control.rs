//! The control socket: one JSON request per connection, answered by the daemon;
//! enrolment (`run`, `attach`), sessions, status and the event stream. A session's own
//! processes cannot administer the daemon.

use super::*;

pub(super) async fn serve(shared: Arc<Shared>, listener: UnixListener) {
    accept_each(shared, listener, "control", handle_client).await
}

/// Serves every connection of `listener` with `handle`, each in a task of its own.
pub(super) async fn accept_each<F, Fut>(
    shared: Arc<Shared>,
    listener: UnixListener,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<Shared>, UnixStream) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let task = handle(shared.clone(), stream);
                tokio::spawn(async move {
                    if let Err(e) = task.await {
                        warn!(error = %format!("{e:#}"), socket = what, "connection failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, socket = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub(super) async fn send(stream: &mut (impl AsyncWriteExt + Unpin), resp: &Response) -> Result<()> {
    let mut line = serde_json::to_string(resp)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).await?;
    Ok(())
}

/// Largest control request read (a profile name, a session name, a note).
const CONTROL_REQUEST_MAX: u64 = 1 << 20;

pub(super) async fn handle_client(shared: Arc<Shared>, stream: UnixStream) -> Result<()> {
    let cred = stream.peer_cred()?;
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    // Bounded like the hook socket's: no request of the protocol comes near it.
    AsyncBufReader::new(tokio::io::AsyncReadExt::take(rd, CONTROL_REQUEST_MAX))
        .read_line(&mut line)
        .await?;
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
pub(super) fn authorize(shared: &Shared, uid: u32, pid: u32) -> Result<()> {
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

// Long: one arm per request of the control protocol, each short.
pub(super) fn dispatch(shared: &Shared, req: Request, uid: u32, peer_pid: u32) -> Result<Response> {
    if let Request::OriginalDestination { peer, local } = req {
        return redirect::original_destination(shared, peer, local);
    }
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
            let mut kernel_counters: Vec<_> =
                Stat::ALL.iter().map(|s| core.kernel.counter(*s)).collect();
            if let Some(r) = &core.kernel.policy.refusal {
                kernel_counters.extend(r.counters());
            }
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
                pin_dir: shared.cfg.pin_dir.clone(),
                generation: format!("{:016x}", core.generation),
            };
            Ok(Response::Status {
                status: Box::new(status),
            })
        }
        Request::Events { .. } => unreachable!("streamed by handle_client"),
        Request::OriginalDestination { .. } => unreachable!("answered before the lock"),
        Request::Pending => Ok(Response::Pending {
            requests: pending(&mut core),
        }),
        Request::Unmanaged => Ok(Response::Unmanaged {
            processes: core.unmanaged_now(),
        }),
        Request::Inventory => Ok(Response::Inventory {
            sessions: core.inventory(),
        }),
        Request::Approve {
            id,
            scope,
            duration_secs,
            note,
        } => {
            let a = super::approvals::Answer {
                allow: true,
                by: approver(&mut core, uid, peer_pid),
                note,
                scope,
                duration: duration_secs.map(Duration::from_secs),
            };
            answer(&core, id, a)
        }
        Request::Deny { id, note } => {
            let a = super::approvals::Answer {
                allow: false,
                by: approver(&mut core, uid, peer_pid),
                note,
                scope: crate::event::ApprovalScope::Once,
                duration: None,
            };
            answer(&core, id, a)
        }
        Request::Hook { .. } => bail!(
            "hook reports go to the hook socket ({})",
            shared.cfg.hook_socket.display()
        ),
    }
}

/// Creates a session for `new.root_pid` (and, for attach, its descendants).
pub(super) fn enrol(shared: &Shared, core: &mut Core, mut new: NewSession) -> Result<Response> {
    // One lookup: the profile as it is now is what the session is checked against.
    let profile = core.profiles.get(&new.profile).cloned().ok_or_else(|| {
        anyhow!(
            "unknown profile `{}` (known: {})",
            new.profile,
            core.profiles.names().join(", ")
        )
    })?;
    check_name(core, new.name.as_deref())?;
    let flags = enforceable_flags(&shared.programs, &profile)?;
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
    let drop_capabilities = if new.enrolment == Enrolment::Run {
        profiles::dropped_capabilities(&profile)
    } else {
        Vec::new()
    };
    let syscalls = &profile.syscall_deny;
    let enf = policy::syscalls::enforcement(profile.file.mode, &profile.file.syscalls);
    // The daemon's pids as they are now (threads started later are not in a filter: see
    // the threat model), for the filter of a `run` session and for the kernel, which
    // judges attached sessions at entry and records refusals by them.
    let protected = protected_pids(new.root_pid);
    core.kernel.policy.protect_pids(&protected.kernel_pids())?;
    let seccomp = if new.enrolment == Enrolment::Run {
        Some(policy::syscalls::plan(syscalls, enf, &protected))
    } else {
        if !syscalls.is_empty() && enf.seccomp && enf.entry.is_none() {
            bail!(
                "profile `{}` blocks syscalls, which only the seccomp filter of `agentwarden \
                 run` can do; an attached process cannot be given one: add \
                 `syscalls.fallback: kill` (SIGKILL at the syscall's entry) or `alert`",
                profile.file.name
            );
        }
        None
    };
    let attached_program = |name: &str| {
        shared
            .programs
            .iter()
            .any(|s| s.name == name && s.in_effect())
    };
    let kills_at_entry =
        new.enrolment == Enrolment::Attach && profile.file.mode == policy::Mode::Enforce;
    if kills_at_entry && !attached_program("sys_enter") {
        bail!(
            "profile `{}` kills for the daemon's self-protection and its syscall rules at the \
             syscall's entry in attached sessions, and the sys_enter program is not attached \
             on this host",
            profile.file.name
        );
    }
    let flags = if seccomp.is_some() {
        flags | agent_common::session::SESSION_FLAG_SECCOMP
    } else {
        flags
    };
    // The agent's environment, changed by name as the profile says (`run` applies it;
    // the names go into the session's identity context).
    let (environment, env_change) = if new.enrolment == Enrolment::Run {
        let inherited: Vec<String> = procfs::process::Process::new(new.root_pid as i32)
            .and_then(|p| p.environ())
            .map(|e| e.keys().map(|k| k.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let (plan, change) =
            policy::environment::plan(&profile, inherited.iter().map(String::as_str));
        (plan.map(Box::new), (!change.is_empty()).then_some(change))
    } else {
        (None, None)
    };
    let (root, how) = (new.root_pid, new.enrolment);
    let (id, processes) = core.enroll(new, flags, env_change.as_ref())?;
    core.flush_sinks();
    if landlock.is_some() {
        core.landlocked.insert(id);
    }
    // Before the client hears back: a daemon that dies from here on leaves the session
    // to its successor with its identity.
    core.save_manifest();
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
            .any(|s| s.name == name && s.in_effect())
    };
    let mut warnings = profiles::enforcement_gaps(&profile, &attached, landlock.as_ref());
    if seccomp.is_some() && !attached("sys_exit") {
        warnings.push(
            "the seccomp filter refuses this profile's syscalls and the daemon's \
             self-protection, but the sys_exit program is not attached: refusals are not \
             recorded"
                .to_owned(),
        );
    }
    for w in &warnings {
        warn!(session = %session.id, "{w}");
    }
    let hooks = context::hook_wiring(&shared.cfg.hook_socket, &profile, how);
    Ok(Response::Enrolled {
        session: Box::new(session),
        processes,
        warnings,
        landlock,
        drop_capabilities,
        seccomp,
        hooks,
        environment,
    })
}

/// Open approval requests with who and what they are about.
pub(super) fn pending(core: &mut Core) -> Vec<crate::proto::PendingView> {
    let Some(r) = &core.kernel.policy.refusal else {
        return Vec::new();
    };
    r.escalation
        .pending()
        .into_iter()
        .map(|(q, waiting)| pending_view(core, &q, waiting))
        .collect()
}

/// One open request with who and what it is about (`waiting`: the operations on it).
pub(super) fn pending_view(
    core: &mut Core,
    q: &super::approvals::Request,
    waiting: usize,
) -> crate::proto::PendingView {
    let sid = q.key.session_id;
    let s = core.attribution.registry.get(sid);
    let profile = s.and_then(|s| core.profiles.get(&s.profile));
    crate::proto::PendingView {
        id: q.id,
        session: format_id(sid),
        session_name: s.map(|s| s.name.clone()).unwrap_or_default(),
        agent: s.map(|s| s.profile.clone()).unwrap_or_default(),
        business_owner: profile
            .map(|p| p.file.owners.business.clone())
            .unwrap_or_default(),
        technical_owner: profile
            .map(|p| p.file.owners.technical.clone())
            .unwrap_or_default(),
        principal_uid: s.map_or(0, |s| s.owner_uid),
        principal_user: s.and_then(|s| s.owner_user.clone()),
        pid: q.tgid,
        comm: procfs::process::Process::new(q.tgid as i32)
            .and_then(|p| p.stat())
            .ok()
            .map(|st| st.comm),
        access: q.access.to_owned(),
        path: q.path.clone(),
        rule: q
            .rule_text
            .clone()
            .unwrap_or_else(|| core.rules.describe(q.key.rule_id, q.category)),
        context: core.attribution.calls.context_of(sid, q.tgid),
        since: humantime::format_rfc3339_millis(q.requested).to_string(),
        waiting_ms: q.since.elapsed().as_millis() as u64,
        timeout_secs: q.rule.timeout.as_secs(),
        on_timeout: match q.rule.on_timeout {
            policy::OnTimeout::Deny => "deny",
            policy::OnTimeout::Allow => "allow",
        }
        .to_owned(),
        waiting,
    }
}

/// The control socket's peer as an approver, from its credentials.
fn approver(core: &mut Core, uid: u32, pid: u32) -> crate::event::Approver {
    crate::event::Approver {
        via: "control".to_owned(),
        uid: Some(uid),
        user: core.attribution.users.name(uid),
        pid: Some(pid),
    }
}

/// A person's answer to request `id`, from the control socket's peer (`authorize` has
/// already refused callers inside a session: an agent never answers for itself).
fn answer(core: &Core, id: u64, a: super::approvals::Answer) -> Result<Response> {
    let r = core.kernel.policy.refusal.as_ref().ok_or_else(|| {
        anyhow!("no approval requests: the refusal layer (fanotify) is not running")
    })?;
    let (allow, uid) = (a.allow, a.by.uid);
    let held = r.escalation.answer(id, a)?;
    info!(request = id, allow, uid, held, "approval request answered");
    Ok(Response::Answered { request: id, held })
}

/// The pids a `run` session's filter protects: this daemon's tgid, its threads, `-1`,
/// minus its process group, and 0 when the enrolling process `peer` shares the daemon's
/// session (it could join the daemon's process group, where `kill(0)` reaches it).
pub(super) fn protected_pids(peer: u32) -> policy::syscalls::Protected {
    // Session and group ids come from procfs, not getsid(2)/getpgrp(2) wrappers that take
    // 0 for "no such id": 0 is a real answer here. A process whose ancestors never called
    // setsid (children of a container's or a minimal init's pid 1) is in session 0 and
    // process group 0, and the enrolling process may well share that with the daemon.
    let ids = |p: procfs::process::Process| p.stat().ok().map(|s| (s.session, s.pgrp));
    let me = std::process::id();
    let mine = procfs::process::Process::myself().ok().and_then(ids);
    let peers = procfs::process::Process::new(peer as i32)
        .ok()
        .and_then(ids);
    let threads: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // Unknown counts as shared: protecting `kill(0)` only costs a session its own
    // group's signals, while a miss would let it signal the daemon.
    let same_session = match (mine, peers) {
        (Some((a, _)), Some((b, _))) => a == b,
        _ => true,
    };
    policy::syscalls::protected_pids(
        me,
        &threads,
        mine.map_or(0, |(_, g)| g.max(0) as u32),
        same_session,
    )
}

/// The kernel flags of `profile`, or an error naming the missing layer when this host
/// cannot carry them out (never a silent downgrade).
pub(super) fn enforceable_flags(programs: &[ProgramStatus], p: &Profile) -> Result<u32> {
    let profile = &p.file.name;
    let (flags, required) = (profiles::session_flags(p).0, profiles::required_programs(p));
    for alternatives in required {
        let found = |name: &str| programs.iter().find(|p| p.name == name);
        if alternatives
            .iter()
            .any(|n| found(n).is_some_and(|p| p.in_effect()))
        {
            continue;
        }
        let why: Vec<String> = alternatives
            .iter()
            .map(|n| {
                let reason = found(n).and_then(|p| p.reason.clone()).unwrap_or_default();
                format!("{n}: {reason}")
            })
            .collect();
        let names = alternatives.join(" or the ");
        bail!(
            "profile `{profile}` needs the {names} program to block, \
             not available on this host ({}) (name `fallback: kill` in the profile to \
             kill instead where no layer can block)",
            why.join("; ")
        );
    }
    Ok(flags)
}

pub(super) fn check_name(core: &Core, name: Option<&str>) -> Result<()> {
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
pub(super) async fn stream_events(
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

pub(super) fn resolve_session(shared: &Shared, s: &str) -> Result<String> {
    let core = shared.core();
    if let Some(sess) = core.attribution.registry.by_name(s) {
        return Ok(format_id(sess.id));
    }
    match parse_id(s) {
        Some(id) if s.len() == 16 => Ok(format_id(id)),
        _ => bail!("no session named `{s}` (and not a 16-hex-digit session id)"),
    }
}
