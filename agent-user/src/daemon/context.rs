//! The hook socket: agents' hooks report prompts and tool calls, and ask before each
//! call. Any user may connect (an agent runs as its own user); what a connection may do
//! is decided from the peer's process: only a process inside a session, and only about
//! that session (the kernel's session map says which; nothing the peer claims does).
//! It cannot administer the daemon: the hook socket takes hook reports only.

use agent_common::vocab::{Action, Layer};
use sha2::Digest as _;

use super::*;
use crate::{
    event::{DecisionInfo, PromptInfo, ToolCallInfo, ToolResultInfo, agent},
    hooks::{self, Dialect, HookAnswer, HookEvent, PromptText},
    policy::tools,
    proto::HookWiring,
};

/// Longest a hook's request may take to arrive (a stalled peer holds no lock, but a
/// connection).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest the answer after a call waits for the refusal layer's records of it.
const REFUSALS_WAIT: Duration = Duration::from_millis(200);

/// How much longer than a held call's timeout its hook waits for the answer.
const HELD_MARGIN: Duration = Duration::from_secs(5);

/// The rule id a held tool call's request carries: tools rules are judged in userspace
/// and have no kernel id (the approval row's rule is the request's).
const TOOL_RULE: u32 = agent_common::policy::RULE_DEFAULT - 1;

/// A tool call about to start: what recording it needs.
pub(super) struct StartingCall {
    sid: u64,
    pid: u32,
    agent_name: String,
    t: hooks::ToolReport,
    target: String,
    input: String,
    input_truncated: bool,
    prompt_id: Option<String>,
    agent_pid: u32,
}

/// A tool call a `tools:` rule holds for a person's answer.
pub(super) struct HeldCall {
    call: StartingCall,
    decision: DecisionInfo,
    answer: tokio::sync::oneshot::Receiver<bool>,
    /// How long the hook waits for it.
    wait: Duration,
}

/// What a hook report came to.
pub(super) enum HookStep {
    Done(HookAnswer),
    Held(Box<HeldCall>),
}

/// Binds the hook socket, connectable by every user.
pub(super) fn bind(path: &Path) -> Result<UnixListener> {
    let _ = fs::remove_file(path);
    let listener = bind_socket(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

pub(super) async fn serve(shared: Arc<Shared>, listener: UnixListener) {
    control::accept_each(shared, listener, "hook", handle).await
}

async fn handle(shared: Arc<Shared>, stream: UnixStream) -> Result<()> {
    use tokio::io::AsyncReadExt as _;
    let cred = stream.peer_cred()?;
    let pid = cred.pid().unwrap_or(0) as u32;
    let (rd, mut wr) = stream.into_split();
    // One line, bounded: the input limit plus the request's own few bytes.
    let mut line = Vec::new();
    let limit = (hooks::INPUT_MAX + 4096) as u64;
    let mut reader = AsyncBufReader::new(rd.take(limit));
    let read = reader.read_until(b'\n', &mut line);
    let refuse = |message: String| Response::Error { message };
    let resp = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Err(_) => refuse("no request within 5 s".to_owned()),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(_)) if line.last() != Some(&b'\n') => refuse(format!(
            "the request is truncated or larger than {} KiB; nothing was recorded",
            limit / 1024
        )),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Ok(Request::Hook { dialect, input }) => {
                let answer = answer(&shared, pid, dialect, &input).await;
                match answer {
                    Ok(answer) => Response::Hook { answer },
                    Err(e) => refuse(format!("{e:#}")),
                }
            }
            Ok(_) => refuse("the hook socket takes hook reports only".to_owned()),
            Err(e) => refuse(format!("malformed request: {e}")),
        },
    };
    control::send(&mut wr, &resp).await
}

/// Records what the hook reported and answers it. After a call, the refusal layer's
/// records of it (queued before the refused process heard its answer) are taken first.
async fn answer(
    shared: &Shared,
    pid: u32,
    dialect: Dialect,
    input: &serde_json::Value,
) -> Result<HookAnswer> {
    let start = std::time::Instant::now();
    let step = loop {
        let step = {
            let mut core = shared.core();
            let pending = core
                .kernel
                .policy
                .refusal
                .as_ref()
                .map_or(0, |r| r.pending());
            if pending == 0 || start.elapsed() > REFUSALS_WAIT {
                let step = core.hook(pid, dialect, input);
                core.flush_sinks();
                Some(step)
            } else {
                None
            }
        };
        match step {
            Some(step) => break step?,
            None => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    };
    match step {
        HookStep::Done(answer) => Ok(answer),
        HookStep::Held(h) => Ok(wait_for_person(shared, *h).await),
    }
}

/// Waits, holding no lock, for the answer to a held tool call, then records it.
async fn wait_for_person(shared: &Shared, mut h: HeldCall) -> HookAnswer {
    let allowed = matches!(
        tokio::time::timeout(h.wait, &mut h.answer).await,
        Ok(Ok(true))
    );
    let mut core = shared.core();
    let answer = core.finish_held_call(h, allowed);
    core.flush_sinks();
    answer
}

impl Core {
    /// One hook report from process `pid`: answered, or a tool call held for a person.
    pub(super) fn hook(
        &mut self,
        pid: u32,
        dialect: Dialect,
        input: &serde_json::Value,
    ) -> Result<HookStep> {
        let Some(sid) = self.kernel.session_of(pid) else {
            return Ok(HookStep::Done(HookAnswer {
                outside: true,
                ..HookAnswer::default()
            }));
        };
        let mut event = hooks::parse(dialect, input)
            .map_err(|e| anyhow!("{} hook input: {e}; nothing was recorded", dialect.as_str()))?;
        if dialect.numbers_calls() {
            let calls = &mut self.attribution.calls;
            match &mut event {
                HookEvent::ToolStart(t) => t.id = calls.number(sid, &t.id),
                HookEvent::ToolEnd { call, .. } => {
                    if let Some(id) = calls.open_of_key(sid, &call.id) {
                        call.id = id;
                    }
                }
                _ => {}
            }
        }
        // What the kernel sent before the hook ran belongs before the report.
        while self.drain(DRAIN_BATCH) {}
        let calls = &mut self.attribution.calls;
        let bound = match &event {
            HookEvent::SessionStart { agent_session } => calls.bind(sid, agent_session, true),
            HookEvent::Prompt { agent_session, .. }
            | HookEvent::Stop { agent_session }
            | HookEvent::SessionEnd { agent_session } => calls.bind(sid, agent_session, false),
            HookEvent::ToolStart(t) | HookEvent::ToolEnd { call: t, .. } => {
                calls.bind(sid, &t.agent_session, false)
            }
        };
        bound.map_err(|e| anyhow!("{e}; nothing was recorded"))?;
        let agent_name = dialect.as_str().to_owned();
        let mut answer = HookAnswer::default();
        let body = match event {
            HookEvent::Stop { .. } => {
                self.attribution.calls.turn_ended(sid);
                return Ok(HookStep::Done(answer));
            }
            HookEvent::SessionStart { .. } | HookEvent::SessionEnd { .. } => {
                return Ok(HookStep::Done(answer));
            }
            HookEvent::Prompt {
                agent_session,
                prompt_id,
                text,
            } => {
                self.attribution.calls.prompt(sid, prompt_id.clone());
                let digest = crate::audit::chain::hex(&sha2::Sha256::digest(text.as_bytes()));
                Body::Prompt(PromptInfo {
                    agent: agent_name,
                    agent_session,
                    prompt_id,
                    chars: text.chars().count() as u64,
                    sha256: (self.prompts != PromptText::None).then_some(digest),
                    text: (self.prompts == PromptText::Store).then_some(text),
                })
            }
            HookEvent::ToolStart(t) => {
                let target = agent::target_of(&t.input);
                let (input, input_truncated) = agent::cut(&t.input.to_string(), agent::INPUT_MAX);
                let prompt_id = t
                    .prompt_id
                    .clone()
                    .or_else(|| self.attribution.calls.current_prompt(sid));
                let agent_pid = self.agent_process(pid, sid);
                let profile = self.profile_of(sid);
                let mut decision = profile.and_then(|p| tools::decide(p, &t.tool, &target));
                let ask = profile.and_then(|p| p.ask[3]);
                let call = StartingCall {
                    sid,
                    pid,
                    agent_name,
                    t,
                    target,
                    input,
                    input_truncated,
                    prompt_id,
                    agent_pid,
                };
                if let Some(d) = decision.as_mut()
                    && d.action == Action::Held
                {
                    match (ask, self.hold_tool_call(&call, &d.rule)) {
                        (Some(rule), Some(answer)) => {
                            return Ok(HookStep::Held(Box::new(HeldCall {
                                call,
                                decision: d.clone(),
                                answer,
                                wait: rule.timeout + HELD_MARGIN,
                            })));
                        }
                        // No book to hold it in (the refusal layer is not running):
                        // refused, never let through unasked.
                        _ => d.action = Action::Blocked,
                    }
                }
                return Ok(HookStep::Done(self.tool_start(call, decision)));
            }
            HookEvent::ToolEnd {
                call,
                failed,
                duration_ms,
            } => {
                let open = self.attribution.calls.end(sid, &call.id);
                let refused = open.as_ref().map_or(&[][..], |o| &o.refused[..]);
                let told = (!refused.is_empty()).then(|| {
                    format!(
                        "agentwarden (the host's runtime policy for this agent) refused part \
                         of this tool call: {}. These refusals are the host's policy, not \
                         errors in the command: do not try to work around them.",
                        refused.join("; ")
                    )
                });
                answer.context = told.clone();
                Body::ToolResult(ToolResultInfo {
                    agent: agent_name,
                    agent_session: call.agent_session,
                    id: call.id,
                    tool: call.tool,
                    failed,
                    duration_ms,
                    refused: refused.len() as u64,
                    told,
                })
            }
        };
        Ok(HookStep::Done(
            self.emit_report(sid, pid, body, None, answer),
        ))
    }

    /// Opens the approval request of a tool call a `tools:` rule asks about.
    fn hold_tool_call(
        &self,
        c: &StartingCall,
        rule_text: &str,
    ) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        let s = self.attribution.registry.get(c.sid)?;
        let rule = self.profiles.get(&s.profile)?.ask[3]?;
        let escalation = self.kernel.policy.refusal.as_ref()?.escalation.clone();
        let what = format!("{} {}", c.t.tool, agent::cut(&c.target, 200).0);
        let key = approvals::Key {
            session_id: c.sid,
            rule_id: TOOL_RULE,
            object: (
                agent_common::policy::fnv(what.as_bytes()),
                agent_common::policy::fnv(c.t.agent_session.as_bytes()),
            ),
        };
        // A tools rule has no kernel id: the request carries its text.
        Some(escalation.hold_reply(approvals::Request {
            rule_text: Some(rule_text.to_owned()),
            ..approvals::Request::new(key, c.agent_pid, "tool_call", what, "tools", rule)
        }))
    }

    /// The end of a held tool call's wait: the call goes ahead (`approved`) or is refused
    /// (`blocked`), and is recorded so.
    pub(super) fn finish_held_call(&mut self, h: HeldCall, allowed: bool) -> HookAnswer {
        let mut d = h.decision;
        d.action = if allowed {
            Action::Approved
        } else {
            Action::Blocked
        };
        d.enforced_by = Layer::Hook;
        self.tool_start(h.call, Some(d))
    }

    /// Records a tool call about to run (or refused) and answers its hook.
    fn tool_start(&mut self, c: StartingCall, decision: Option<DecisionInfo>) -> HookAnswer {
        let StartingCall {
            sid,
            pid,
            agent_name,
            t,
            target,
            input,
            input_truncated,
            prompt_id,
            agent_pid,
        } = c;
        let mut answer = HookAnswer::default();
        let profile = self.profile_of(sid);
        let blocked = decision.as_ref().is_some_and(|d| d.action.refused());
        if blocked && let (Some(d), Some(p)) = (&decision, profile) {
            answer.deny = Some(format!(
                "agentwarden refused this tool call: `{}` on `{}` is denied by {} \
                 (profile {}). This is the host's policy for this agent, not an \
                 error: do not retry it or work around it.",
                t.tool,
                agent::cut(&target, 200).0,
                d.rule,
                p.file.name
            ));
        } else {
            // Only a call that will run is open: a refused one has no actions.
            self.attribution.calls.start(
                sid,
                agent_pid,
                toolcalls::OpenCall {
                    id: t.id.clone(),
                    tool: t.tool.clone(),
                    prompt_id: prompt_id.clone(),
                    refused: Vec::new(),
                },
            );
        }
        let body = Body::ToolCall(ToolCallInfo {
            agent: agent_name,
            agent_session: t.agent_session,
            id: t.id,
            tool: t.tool,
            target,
            input,
            input_truncated,
            prompt_id,
            agent_pid,
        });
        self.emit_report(sid, pid, body, decision, answer)
    }

    /// Emits the agent's report (by the hook process `pid`) with the daemon's decision.
    fn emit_report(
        &mut self,
        sid: u64,
        pid: u32,
        body: Body,
        decision: Option<DecisionInfo>,
        answer: HookAnswer,
    ) -> HookAnswer {
        let mut ev = Event::new(body, SystemTime::now(), self.attribution.session_ref(sid));
        ev.process = self.attribution.process_info(pid);
        ev.decision = decision;
        self.emit(ev);
        answer
    }

    /// The agent's process for a hook run by `pid`: its nearest ancestor in the same
    /// session that is neither agentwarden nor a shell (the agent may run its hooks
    /// through `sh -c`).
    fn agent_process(&self, pid: u32, sid: u64) -> u32 {
        const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "fish"];
        let me = std::env::current_exe().ok();
        let mut cur = pid;
        for _ in 0..8 {
            let Some(parent) = procfs::process::Process::new(cur as i32)
                .and_then(|p| p.stat())
                .ok()
                .map(|s| s.ppid as u32)
            else {
                break;
            };
            if parent <= 1 || self.kernel.session_of(parent) != Some(sid) {
                break;
            }
            cur = parent;
            let exe = procfs::process::Process::new(cur as i32)
                .and_then(|p| p.exe())
                .ok();
            let ours = exe.is_some() && exe == me;
            let shell = exe
                .as_ref()
                .and_then(|e| e.file_name())
                .is_some_and(|n| SHELLS.iter().any(|s| n == *s));
            if !ours && !shell {
                return cur;
            }
        }
        cur
    }

    /// Whether a session of `profile` enrolled `how` has its agent's hooks wired by
    /// `run` (its calls are reported, none inferred).
    pub(super) fn hooks_wired(&self, profile: &str, how: Enrolment) -> bool {
        self.profiles
            .get(profile)
            .is_some_and(|p| wires_hooks(p, how))
    }
}

fn wires_hooks(profile: &Profile, how: Enrolment) -> bool {
    how == Enrolment::Run && profile.file.hooks.is_some()
}

/// The hooks `run` wires into the agent of a session of `profile` enrolled `how`.
pub(super) fn hook_wiring(socket: &Path, profile: &Profile, how: Enrolment) -> Option<HookWiring> {
    profile
        .file
        .hooks
        .filter(|_| wires_hooks(profile, how))
        .map(|dialect| HookWiring {
            dialect,
            socket: socket.to_owned(),
            // A held call's hook waits past the request's own timeout, so the answer
            // (the timeout's included) is always the daemon's.
            answer_secs: profile.ask[3].map(|a| (a.timeout + HELD_MARGIN * 2).as_secs()),
        })
}

/// One line for the model about a refusal: what, how, and the rule.
pub(super) fn refusal_line(ev: &Event, d: &DecisionInfo) -> String {
    let what = match &ev.body {
        Body::Exec(x) => format!("running {}", x.path),
        Body::Open(o) => format!("opening {}", o.path),
        Body::Connect(c) => format!("connecting to {}:{}", c.address, c.port),
        Body::NetDecision(n) if n.address.is_empty() => {
            format!("creating a {} {} socket", n.family, n.protocol)
        }
        Body::NetDecision(n) => format!("{} to {}:{}", n.op, n.address, n.port),
        Body::SyscallDecision(s) => format!("the {} syscall", s.name),
        Body::Approval(x) => format!("{} of {} (held for approval)", x.access, x.path),
        Body::Fork(_)
        | Body::Exit(_)
        | Body::SessionMapFull(_)
        | Body::SessionStart
        | Body::SessionEnd
        | Body::Loss(_)
        | Body::Prompt(_)
        | Body::ToolCall(_)
        | Body::ToolResult(_)
        | Body::UnmanagedAgent(_)
        | Body::Drift(_) => ev.kind().as_str().to_owned(),
    };
    let how = match d.action {
        agent_common::vocab::Action::Killed => "the process was killed",
        _ => "refused",
    };
    format!(
        "{what} was {how} (rule {}, enforced by {})",
        d.rule, d.enforced_by
    )
}
