//! Which tool call each action happened under. The agent's hook says when a call starts
//! and ends; the kernel's records say which process did what. A process forked by the
//! agent while a call is open belongs to that call, with its whole subtree, for life (a
//! backgrounded child that outlives the call stays the call's); the agent's own actions
//! while a call is open are the call's by interval. In a session whose agent reports no
//! calls, each direct child of the session's root is one inferred invocation, named by
//! its command line. No kernel handle here: unit-tested on plain calls.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::event::{Attribution, ContextRef, agent::cut};

/// Longest label of an inferred invocation (its command line).
const LABEL_MAX: usize = 200;

/// Exited processes whose call is still known: a record of a process can come after
/// its exit (the refusal layer's, which is queued beside the ring).
const GONE_MAX: usize = 4096;

#[derive(Debug, Default)]
pub struct ToolCalls {
    sessions: foldhash::HashMap<u64, SessionCalls>,
    /// The call each process belongs to (its subtree's).
    procs: foldhash::HashMap<u32, ContextRef>,
    /// The calls of the latest exited processes, and their exit order.
    gone: foldhash::HashMap<u32, ContextRef>,
    gone_order: VecDeque<u32>,
}

#[derive(Debug, Default)]
struct SessionCalls {
    /// A hook has reported in this session: no inferring.
    hooked: bool,
    /// The agent's own session id, as its first hook (or its session start) said.
    agent_session: Option<String>,
    /// The processes that run the agent's tools (the hooks' parents).
    agents: HashSet<u32>,
    /// Open calls, oldest first.
    open: Vec<OpenCall>,
    /// The prompt of the current turn.
    prompt: Option<String>,
    /// The session's root, whose direct children are inferred invocations.
    root: u32,
    /// The root's program, and the processes that run it again (an agent that relaunches
    /// itself, as Gemini CLI does): their children are invocations too.
    root_exe: Option<String>,
    relaunched: HashSet<u32>,
    /// Calls numbered so far per key, for an agent that gives its calls no id.
    numbered: HashMap<String, u64>,
}

/// A call between its start and its end.
#[derive(Clone, Debug)]
pub struct OpenCall {
    pub id: String,
    pub tool: String,
    pub prompt_id: Option<String>,
    /// What a profile refused under the call, one line each.
    pub refused: Vec<String>,
}

impl ToolCalls {
    /// A new session with its root process; `hooked`: its agent's hooks are wired, so
    /// nothing is inferred (not even before the first report).
    pub fn session(&mut self, sid: u64, root: u32, hooked: bool) {
        let s = self.sessions.entry(sid).or_default();
        s.root = root;
        s.hooked |= hooked;
    }

    pub fn session_ended(&mut self, sid: u64) {
        self.sessions.remove(&sid);
    }

    /// Binds the session to the agent's own session id: the first report binds it, and
    /// so does a session start (the agent cleared or resumed); any other report naming
    /// another id is refused.
    pub fn bind(&mut self, sid: u64, agent_session: &str, starting: bool) -> Result<(), String> {
        let s = self.sessions.entry(sid).or_default();
        match &s.agent_session {
            Some(bound) if bound != agent_session && !starting => Err(format!(
                "session_id `{agent_session}` is not the agent session this agentwarden \
                 session reports for (`{bound}`); a new one starts with a session start"
            )),
            _ => {
                s.agent_session = Some(agent_session.to_owned());
                s.hooked = true;
                Ok(())
            }
        }
    }

    /// The prompt of the turn that starts.
    pub fn prompt(&mut self, sid: u64, prompt_id: Option<String>) {
        self.sessions.entry(sid).or_default().prompt = prompt_id;
    }

    /// The current turn's prompt.
    pub fn current_prompt(&self, sid: u64) -> Option<String> {
        self.sessions.get(&sid)?.prompt.clone()
    }

    /// A call starts, made by the agent process `agent`.
    pub fn start(&mut self, sid: u64, agent: u32, call: OpenCall) {
        let s = self.sessions.entry(sid).or_default();
        s.hooked = true;
        s.agents.insert(agent);
        // A retried start (the same id) replaces the open one.
        s.open.retain(|c| c.id != call.id);
        s.open.push(call);
    }

    /// The id of the next call of `key` (an agent that gives its calls no id: the
    /// daemon numbers the calls of each tool and input in order).
    pub fn number(&mut self, sid: u64, key: &str) -> String {
        let s = self.sessions.entry(sid).or_default();
        let n = s.numbered.entry(key.to_owned()).or_default();
        *n += 1;
        format!("{key}.{n}")
    }

    /// The oldest open call of `key`: the one whose end an agent without call ids
    /// reports.
    pub fn open_of_key(&self, sid: u64, key: &str) -> Option<String> {
        let prefix = format!("{key}.");
        self.sessions
            .get(&sid)?
            .open
            .iter()
            .find(|c| c.id.starts_with(&prefix))
            .map(|c| c.id.clone())
    }

    /// The turn ended: no call of it is open any longer (a call the agent refused on its
    /// own, after its hook's start, never reports its end). Processes keep their calls.
    pub fn turn_ended(&mut self, sid: u64) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.open.clear();
        }
    }

    /// A call ends: what it was, with what was refused under it (`None`: not open; its
    /// start was not reported, or it ended already).
    pub fn end(&mut self, sid: u64, id: &str) -> Option<OpenCall> {
        let s = self.sessions.get_mut(&sid)?;
        let at = s.open.iter().position(|c| c.id == id)?;
        Some(s.open.remove(at))
    }

    /// The call an action of `tgid` happens under, now.
    pub fn context_of(&self, sid: u64, tgid: u32) -> Option<ContextRef> {
        if let Some(c) = self.procs.get(&tgid) {
            return Some(c.clone());
        }
        let s = self.sessions.get(&sid)?;
        if !s.agents.contains(&tgid) {
            return self.gone.get(&tgid).cloned();
        }
        let call = s.open.last()?;
        Some(ContextRef {
            tool_call: call.id.clone(),
            tool: call.tool.clone(),
            prompt_id: call.prompt_id.clone(),
            how: if s.open.len() > 1 {
                Attribution::Ambiguous
            } else {
                Attribution::Interval
            },
        })
    }

    /// `parent` forked `child`: the child joins its parent's call (or, forked by the
    /// agent during a call, that call; or, without hooks, is an invocation of its own
    /// when its parent is the session's root).
    pub fn on_fork(&mut self, sid: u64, parent: u32, child: u32) {
        // A new process with an exited one's pid is not that one.
        self.gone.remove(&child);
        let ctx = match self.procs.get(&parent) {
            Some(c) => Some(c.clone()),
            None => match self.context_of(sid, parent) {
                Some(mut c) => {
                    if c.how == Attribution::Interval {
                        c.how = Attribution::Subtree;
                    }
                    Some(c)
                }
                None => self.sessions.get(&sid).and_then(|s| {
                    let agent = s.root == parent || s.relaunched.contains(&parent);
                    (!s.hooked && agent).then(|| ContextRef {
                        tool_call: format!("inferred-{child}"),
                        tool: String::new(),
                        prompt_id: None,
                        how: Attribution::Inferred,
                    })
                }),
            },
        };
        if let Some(c) = ctx {
            self.procs.insert(child, c);
        }
    }

    /// `tgid` executed `path` with `argv`: an inferred invocation is named by its first
    /// program, unless that program is the agent's own (the agent relaunching itself:
    /// then it is the agent, and its children are the invocations).
    pub fn on_exec(&mut self, sid: u64, tgid: u32, path: &str, argv: &[String]) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if tgid == s.root {
            s.root_exe = Some(path.to_owned());
            return;
        }
        let Some(c) = self.procs.get_mut(&tgid) else {
            return;
        };
        if c.how != Attribution::Inferred || c.tool_call != format!("inferred-{tgid}") {
            return;
        }
        if s.root_exe.as_deref() == Some(path) {
            self.procs.remove(&tgid);
            s.relaunched.insert(tgid);
        } else if c.tool.is_empty() {
            c.tool = cut(&argv.join(" "), LABEL_MAX).0;
        }
    }

    pub fn on_exit(&mut self, tgid: u32) {
        if let Some(c) = self.procs.remove(&tgid) {
            if self.gone_order.len() == GONE_MAX
                && let Some(old) = self.gone_order.pop_front()
            {
                self.gone.remove(&old);
            }
            self.gone.insert(tgid, c);
            self.gone_order.push_back(tgid);
        }
    }

    /// A refusal under `ctx` (`line` says what and why), kept for the call's end.
    pub fn refused(&mut self, sid: u64, ctx: &ContextRef, line: String) {
        if let Some(call) = self
            .sessions
            .get_mut(&sid)
            .and_then(|s| s.open.iter_mut().find(|c| c.id == ctx.tool_call))
            && !call.refused.contains(&line)
        {
            // The same refusal twice (a retried open) is said once.
            call.refused.push(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: u64 = 7;
    const AGENT: u32 = 100;

    fn call(id: &str) -> OpenCall {
        OpenCall {
            id: id.into(),
            tool: "Bash".into(),
            prompt_id: Some("p1".into()),
            refused: Vec::new(),
        }
    }

    /// An agent without call ids: calls of the same tool and input are numbered in
    /// order, each end closes the oldest open one of its key, and the end of the turn
    /// closes a call whose end never came.
    #[test]
    fn calls_without_ids_are_numbered_and_ended_oldest_first() {
        let mut t = ToolCalls::default();
        t.session(SID, AGENT, true);
        let (a, b) = (t.number(SID, "k"), t.number(SID, "k"));
        assert_eq!((a.as_str(), b.as_str()), ("k.1", "k.2"));
        t.start(SID, AGENT, call(&a));
        t.start(SID, AGENT, call(&b));
        assert_eq!(t.open_of_key(SID, "k").as_deref(), Some("k.1"));
        assert!(t.end(SID, "k.1").is_some());
        assert_eq!(t.open_of_key(SID, "k").as_deref(), Some("k.2"));
        assert_eq!(t.open_of_key(SID, "other"), None);
        t.turn_ended(SID);
        assert_eq!(t.open_of_key(SID, "k"), None);
        assert_eq!(
            t.context_of(SID, AGENT),
            None,
            "nothing open after the turn"
        );
        assert_eq!(t.number(SID, "k"), "k.3", "numbers go on across turns");
    }

    /// A child forked during a call is the call's for life, with its descendants; the
    /// agent's own actions are the call's only while it is open.
    #[test]
    fn a_calls_subtree_outlives_the_call_and_the_agent_is_its_by_interval() {
        let mut t = ToolCalls::default();
        t.session(SID, AGENT, false);
        t.bind(SID, "s", false).unwrap();
        assert_eq!(t.context_of(SID, AGENT), None);
        t.on_fork(SID, AGENT, 200);
        assert_eq!(t.context_of(SID, 200), None, "forked before the call");
        t.start(SID, AGENT, call("c1"));
        t.on_fork(SID, AGENT, 201);
        t.on_fork(SID, 201, 202);
        let c = t.context_of(SID, 202).expect("the call's subtree");
        assert_eq!((c.tool_call.as_str(), c.how), ("c1", Attribution::Subtree));
        let c = t.context_of(SID, AGENT).expect("the agent, by interval");
        assert_eq!((c.tool_call.as_str(), c.how), ("c1", Attribution::Interval));
        t.refused(SID, &c, "open of /k refused".into());
        let ended = t.end(SID, "c1").expect("open");
        assert_eq!(ended.refused, ["open of /k refused"]);
        assert_eq!(t.context_of(SID, AGENT), None);
        assert_eq!(
            t.context_of(SID, 202).map(|c| c.tool_call),
            Some("c1".into()),
            "a backgrounded child stays the call's"
        );
        t.on_exit(202);
        assert_eq!(
            t.context_of(SID, 202).map(|c| c.tool_call),
            Some("c1".into()),
            "a record after the exit (the refusal layer's) still finds the call"
        );
        t.on_fork(SID, AGENT, 202);
        assert_eq!(
            t.context_of(SID, 202),
            None,
            "a new process with the pid is not the call's"
        );
        assert!(t.end(SID, "c1").is_none(), "ended once");
    }

    #[test]
    fn overlapping_calls_name_the_latest_as_ambiguous() {
        let mut t = ToolCalls::default();
        t.session(SID, AGENT, false);
        t.start(SID, AGENT, call("c1"));
        t.start(SID, AGENT, call("c2"));
        t.on_fork(SID, AGENT, 300);
        let c = t.context_of(SID, 300).unwrap();
        assert_eq!(
            (c.tool_call.as_str(), c.how),
            ("c2", Attribution::Ambiguous)
        );
    }

    #[test]
    fn without_hooks_each_child_of_the_root_is_an_inferred_invocation() {
        let mut t = ToolCalls::default();
        t.session(SID, AGENT, false);
        t.on_exec(SID, AGENT, "/usr/bin/node", &["node".into()]);
        t.on_fork(SID, AGENT, 400);
        t.on_exec(SID, 400, "/usr/bin/git", &["git".into(), "status".into()]);
        t.on_fork(SID, 400, 401);
        t.on_exec(SID, 401, "/usr/bin/less", &["less".into()]);
        for tgid in [400, 401] {
            let c = t.context_of(SID, tgid).unwrap();
            assert_eq!(
                (c.tool_call.as_str(), c.tool.as_str(), c.how),
                ("inferred-400", "git status", Attribution::Inferred)
            );
        }
        assert_eq!(t.context_of(SID, AGENT), None);
        // The agent relaunching itself is the agent: its children are the invocations.
        t.on_fork(SID, AGENT, 500);
        t.on_exec(
            SID,
            500,
            "/usr/bin/node",
            &["node".into(), "--max-old".into()],
        );
        assert_eq!(t.context_of(SID, 500), None);
        t.on_fork(SID, 500, 501);
        t.on_exec(
            SID,
            501,
            "/bin/bash",
            &["bash".into(), "-c".into(), "ls".into()],
        );
        let c = t.context_of(SID, 501).unwrap();
        assert_eq!(
            (c.tool_call.as_str(), c.tool.as_str()),
            ("inferred-501", "bash -c ls")
        );
    }

    #[test]
    fn another_agent_session_is_refused_unless_it_starts() {
        let mut t = ToolCalls::default();
        t.bind(SID, "a", false).unwrap();
        t.bind(SID, "a", false).unwrap();
        assert!(t.bind(SID, "b", false).unwrap_err().contains("`b`"));
        t.bind(SID, "b", true).unwrap();
        t.bind(SID, "b", false).unwrap();
    }
}
