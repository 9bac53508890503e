//! Every shipped agent profile with its real agent (pinned, installed by `cargo xtask
//! setup` under `AGENTWARDEN_AGENTS_DIR`), started as an ordinary user with `agentwarden
//! run --profile <agent>` and driven offline: by a scripted model server on loopback that
//! speaks the agent's own API (`tests/support/scripted_model.py`), or for MCP servers by
//! a JSON-RPC client on stdio (`tests/support/mcp_client.py`).
//!
//! Each agent does the same script ([`Step`]): allowed work in its project (write, read
//! back, a developer tool, its model API), then a credential read, a connect outside its
//! profile and a denied program, each of which must be refused and recorded with the
//! profile's rule, and more work after them, which shows the agent was not ended by any
//! refusal. The claims ([`claims`]) judge what the agent sent back to the model, the
//! events and the audit trail; never the command text. One run per agent serves all of
//! its claims (an agent run takes tens of seconds); the runs of different agents go in
//! parallel, each with its own daemon.

mod aider;
mod claude_code;
mod codex_cli;
mod gemini_cli;
mod mcp_server;

use crate::support::*;

/// A network namespace of our own behind a veth pair, with a listener in it: a host that
/// is reachable from here and outside every shipped profile. Removed on drop.
pub(crate) struct ForeignHost {
    ns: String,
    veth: String,
    pub(crate) addr: String,
    listener: Child,
}

impl ForeignHost {
    /// `tag` tells the hosts of parallel runs apart (names and a /30 each).
    pub(crate) fn start(tag: u32) -> Self {
        let ns = format!("aw-e2e-{tag}");
        let veth = format!("awe{tag}");
        let net = format!("198.18.{}", tag % 250);
        let addr = format!("{net}.1");
        let clean = || {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            let _ = Command::new("ip").args(["link", "del", &veth]).output();
        };
        let sh = |cmd: String| {
            let out = Command::new("sh").args(["-c", &cmd]).output_within();
            if !out.status.success() {
                clean();
                panic!("{cmd}: {out:?}");
            }
        };
        clean();
        sh(format!(
            "ip netns add {ns} && ip link add {veth} type veth peer name {veth}p && \
             ip link set {veth}p netns {ns} && ip addr add {net}.2/30 dev {veth} && \
             ip link set {veth} up && ip -n {ns} addr add {addr}/30 dev {veth}p && \
             ip -n {ns} link set {veth}p up && ip -n {ns} link set lo up"
        ));
        let listener = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-m", "http.server"])
            .args(["--bind", &addr, "8080"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("listener");
        let host = Self {
            ns,
            veth,
            addr,
            listener,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect((host.addr.as_str(), 8080)).is_err() {
            assert!(
                start.elapsed() < patience(),
                "the foreign host never listened"
            );
            thread::sleep(Duration::from_millis(100));
        }
        host
    }
}

impl Drop for ForeignHost {
    fn drop(&mut self) {
        let _ = self.listener.kill();
        let _ = self.listener.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

/// A helper script of `tests/support`.
pub(crate) fn support_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/support")
        .join(name)
}

/// The scripted model server (`tests/support/scripted_model.py`) on loopback.
pub(crate) struct ModelServer {
    child: Child,
    pub(crate) port: u16,
    log: PathBuf,
}

impl ModelServer {
    fn start(dir: &Path, steps: &[serde_json::Value]) -> Self {
        Self::spawn(dir, |c| {
            c.env("SCRIPTED_COMMANDS", serde_json::to_string(steps).unwrap());
        })
    }

    /// A server whose script is the file `commands`, read again on every request: one
    /// server (one port) for runs with different scripts.
    fn start_with_file(dir: &Path, commands: &Path) -> Self {
        Self::spawn(dir, |c| {
            c.arg("--commands-file").arg(commands);
        })
    }

    fn spawn(dir: &Path, script: impl FnOnce(&mut Command)) -> Self {
        let (log, port_file) = (dir.join("model.jsonl"), dir.join("model.port"));
        let mut c = Command::new("python3");
        c.arg(support_script("scripted_model.py"))
            .arg("0")
            .arg("--log")
            .arg(&log)
            .arg("--port-file")
            .arg(&port_file);
        script(&mut c);
        let child = c.stdout(Stdio::null()).spawn().expect("model server");
        let start = Instant::now();
        let port = loop {
            if let Some(p) = fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(start.elapsed() < patience(), "model server did not start");
            thread::sleep(Duration::from_millis(50));
        };
        Self { child, port, log }
    }

    /// Every request the agent made, as logged.
    fn requests(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What the agent sent the model beside its tool results, request by request.
    fn notes(&self) -> Vec<String> {
        self.requests()
            .iter()
            .flat_map(|v| v["notes"].as_array().cloned().unwrap_or_default())
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect()
    }

    /// What the agent sent back to the model for each scripted step, in order:
    /// (is_error, content).
    fn tool_results(&self) -> Vec<(bool, String)> {
        self.requests()
            .iter()
            .flat_map(|v| v["tool_results"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let content = match &r["content"] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (r["is_error"].as_bool().unwrap_or(false), content)
            })
            .collect()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One step of the script every agent runs, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Writes `notes.txt` in the project and reads it back.
    Write,
    /// `cat ~/.ssh/id_rsa`: a credential read by a command.
    ReadKey,
    /// A TCP connect to the foreign host, outside every profile.
    Connect,
    /// `nc`, a program every agent profile denies.
    DeniedProgram,
    /// The agent's own tool reads the key, in the agent's own process.
    OwnReadKey,
    /// After every refusal: a developer tool (git commits the notes) and a listing.
    MoreWork,
    /// A call the profile's `tools:` rules deny (`sudo`): refused by the agent's hook
    /// before it runs (agents with hooks only).
    DeniedTool,
    /// A child that outlives its call (`setsid -f`, reading the notes a second later):
    /// its actions stay the call's (agents with hooks only).
    Background,
}

/// The command of [`Step::DeniedTool`].
pub(crate) const DENIED_TOOL: &str = "sudo -n id";

/// The shell command of a step (the agent's own tools are the agent's business).
pub(crate) fn command(step: Step, w: &World) -> String {
    match step {
        Step::Write => "echo hello-from-agent > notes.txt && cat notes.txt".into(),
        Step::ReadKey => "cat ~/.ssh/id_rsa".into(),
        Step::Connect => format!(
            "python3 -c \"import socket; socket.create_connection(('{}', 8080), timeout=5); \
             print('connected')\"",
            w.foreign.addr
        ),
        Step::DeniedProgram => "nc -z 127.0.0.1 9".into(),
        Step::OwnReadKey => format!("cat {}", w.key.display()),
        Step::MoreWork => "git init -q . && git add notes.txt && \
             git -c user.name=agent -c user.email=agent@example.com commit -qm agent-notes && \
             git log --format=%s && ls"
            .into(),
        Step::DeniedTool => DENIED_TOOL.into(),
        Step::Background => {
            "setsid -f sh -c 'sleep 1; cat notes.txt > /dev/null' > /dev/null 2>&1; echo started"
                .into()
        }
    }
}

/// The world one agent's run happens in: its own daemon, an ordinary user whose home
/// holds a private key, a project directory, a foreign host.
pub(crate) struct World {
    pub(crate) d: Daemon,
    pub(crate) root: PathBuf,
    pub(crate) home: PathBuf,
    pub(crate) project: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) user: TestUser,
    pub(crate) foreign: ForeignHost,
    _dir: TempDir,
}

/// A foreign host's tag, unique among the tests of this run: `index` (below 16) tells
/// the parallel runs apart (the agents' worlds 0–6 and 10, the drift test's 9).
pub(crate) fn host_tag(index: u32) -> u32 {
    (std::process::id() % 1000) * 16 + index
}

impl World {
    /// `index` tells the parallel runs of different agents apart.
    fn new(index: u32) -> Self {
        Self::with(index, &[])
    }

    /// [`World::new`] with more `daemon` arguments.
    fn with(index: u32, extra: &[&str]) -> Self {
        // Prompts kept as text: the claims read them back.
        let mut args = vec!["--prompts", "store"];
        args.extend(extra);
        let d = Daemon::start_with(&args).expect("root");
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let (home, project) = (root.join("home"), root.join("project"));
        fs::create_dir_all(home.join(".ssh")).unwrap();
        fs::create_dir_all(&project).unwrap();
        let key = home.join(".ssh/id_rsa");
        fs::write(&key, "PRIVATE-KEY-CANARY\n").unwrap();
        // A project keeps its secrets in `.env`, which some agents load at start-up.
        fs::write(project.join(".env"), "API_TOKEN=ENV-CANARY\n").unwrap();
        let tag = host_tag(index);
        let user = TestUser::create(&format!("aw-e2e-{tag}"), &home);
        user.chown(&home);
        user.chown(&project);
        let foreign = ForeignHost::start(tag);
        Self {
            d,
            root,
            home,
            project,
            key,
            user,
            foreign,
            _dir: dir,
        }
    }

    /// `agentwarden run --profile P --session-name S --user U --` in the project, with a
    /// clean environment; the caller appends the agent's argv and its environment.
    fn run(&self, profile: &str, session: &str) -> Command {
        let mut c = self.d.cli();
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("TERM", "dumb")
            .args(["run", "--profile", profile, "--session-name", session])
            .args(["--user", &self.user.name, "--"])
            .current_dir(&self.project)
            .stdin(Stdio::null());
        c
    }
}

/// The installed agent `dir` (under `AGENTWARDEN_AGENTS_DIR`) and its binary `bin`, or
/// why it cannot run here.
pub(crate) fn installed(dir: &str, bin: &str) -> Result<PathBuf, String> {
    let Some(agents) = std::env::var_os("AGENTWARDEN_AGENTS_DIR").map(PathBuf::from) else {
        return Err("AGENTWARDEN_AGENTS_DIR unset: run through `cargo xtask test`".into());
    };
    let path = agents.join(dir).join(bin);
    // Setup writes the stamp last: without it the install did not finish.
    if !path.exists() || !agents.join(dir).join(".installed").exists() {
        return Err(format!(
            "{} not installed: run `cargo xtask setup`",
            path.display()
        ));
    }
    if !is_root() {
        return Err("loading eBPF programs needs root".into());
    }
    Ok(path)
}

/// What one run of an agent under its profile left behind; each claim reads it.
pub(crate) struct AgentRun {
    pub(crate) profile: &'static str,
    /// The steps as scripted, in order.
    pub(crate) steps: Vec<Step>,
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// `notes.txt` in its project, as the first step wrote it.
    pub(crate) notes: Option<String>,
    /// What the model was told of each step: (is_error, content).
    pub(crate) tool_results: Vec<(bool, String)>,
    pub(crate) user: String,
    pub(crate) owner_user: Option<String>,
    pub(crate) events: Vec<Event>,
    pub(crate) key: String,
    /// The project's `.env`.
    pub(crate) env_file: String,
    pub(crate) foreign: String,
    /// The scripted model server's port, when there is one.
    pub(crate) model_port: Option<u16>,
    pub(crate) timeline: String,
    pub(crate) to_foreign: Vec<serde_json::Value>,
    /// The audit store's files after the daemon stopped (name, bytes).
    pub(crate) store: Vec<(String, Vec<u8>)>,
    pub(crate) daemon_log: String,
    /// What the agent sent the model beside its tool results (hooks' context).
    pub(crate) model_notes: Vec<String>,
}

impl AgentRun {
    /// Collects the run once `out` (the agent's `agentwarden run`) has returned.
    fn collect(
        mut w: World,
        profile: &'static str,
        session: &str,
        steps: Vec<Step>,
        out: Output,
        tool_results: Vec<(bool, String)>,
        model_port: Option<u16>,
    ) -> Self {
        let view = w.d.session(session);
        let events = w.d.wait_for(&view.id, "the session's end", |evs| {
            evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
        });
        let t = w.d.audit(&["timeline", "--session", session]);
        assert!(t.status.success(), "{t:?}");
        let timeline = String::from_utf8_lossy(&t.stdout).into_owned();
        println!("{profile} audit timeline:\n{timeline}");
        let to_foreign =
            w.d.audit_query(&["--session", session, "--dest", &w.foreign.addr]);
        let daemon_log = w.d.log();
        assert!(w.d.stop().success(), "daemon exit:\n{daemon_log}");
        // The store as the daemon left it (closed: committed, checkpointed).
        let db = w.d.db();
        let store = fs::read_dir(db.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("audit."))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect::<Vec<(String, Vec<u8>)>>();
        keep_store(profile, &store);
        Self {
            profile,
            steps,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            notes: fs::read_to_string(w.project.join("notes.txt")).ok(),
            tool_results,
            user: w.user.name.clone(),
            owner_user: view.owner_user,
            events,
            key: w.key.to_string_lossy().into_owned(),
            env_file: w.project.join(".env").to_string_lossy().into_owned(),
            foreign: w.foreign.addr.clone(),
            model_port,
            timeline,
            to_foreign,
            store,
            daemon_log,
            model_notes: Vec::new(),
        }
    }

    /// [`AgentRun::collect`] for an agent driven by the scripted model `model`.
    fn collect_model(
        w: World,
        profile: &'static str,
        session: &str,
        steps: Vec<Step>,
        out: Output,
        model: &ModelServer,
    ) -> Self {
        // Read before the world (and the model's log in it) goes.
        let notes = model.notes();
        let mut run = Self::collect(
            w,
            profile,
            session,
            steps,
            out,
            model.tool_results(),
            Some(model.port),
        );
        run.model_notes = notes;
        run
    }

    /// What the model (or the MCP client) was told of `step`.
    /// The audit store the daemon left, written to a directory of its own (kept while
    /// the `TempDir` lives), and its database's path.
    pub(crate) fn store_copy(&self) -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &self.store {
            fs::write(dir.path().join(name), bytes).unwrap();
        }
        let db = dir.path().join("audit.db");
        (dir, db)
    }

    pub(crate) fn result(&self, step: Step) -> &(bool, String) {
        let i = self
            .steps
            .iter()
            .position(|s| *s == step)
            .unwrap_or_else(|| panic!("{step:?} is not in the script"));
        self.tool_results.get(i).unwrap_or_else(|| {
            panic!(
                "no result for {step:?} (step {i}): {:?}\nstderr: {}",
                self.tool_results, self.stderr
            )
        })
    }

    /// The decision on the first event `pick` selects.
    pub(crate) fn decision_on(&self, what: &str, pick: impl Fn(&Event) -> bool) -> DecisionInfo {
        self.events
            .iter()
            .filter(|e| pick(e))
            .find_map(|e| e.decision.clone())
            .unwrap_or_else(|| panic!("no decision on {what}:\n{}", dump(&self.events)))
    }

    /// `rules/<profile>.yaml:<line> (<field>)`: the rule id of the profile's line `entry`
    /// in the section `field` names (read from the shipped file, so a profile edit that
    /// moves lines does not break the claims).
    pub(crate) fn rule_id(&self, field: &str, entry: &str) -> String {
        let file = format!("rules/{}.yaml", self.profile);
        let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&file))
            .unwrap();
        let section = field.split('.').next().unwrap();
        let start = text
            .lines()
            .position(|l| l.starts_with(&format!("{section}:")))
            .unwrap_or_else(|| panic!("no {section} in {file}"));
        let line = text
            .lines()
            .enumerate()
            .skip(start)
            .find(|(_, l)| l.trim() == format!("- {entry}"))
            .unwrap_or_else(|| panic!("no `- {entry}` under {section} in {file}"))
            .0;
        format!("{file}:{} ({field})", line + 1)
    }
}

/// A run, or why there is none: resolved once per agent, shared by its claims.
pub(crate) type Once<T = AgentRun> = OnceLock<Result<T, Option<String>>>;

/// The run in `cell` (made by `make` the first time), or `None` after skipping with the
/// reason `make` gave (a failure under `CI=true`). A run that panicked fails every claim
/// with its message.
pub(crate) fn once<T>(
    cell: &'static Once<T>,
    name: &str,
    make: impl FnOnce() -> Result<T, String>,
) -> Option<&'static T> {
    let r =
        cell.get_or_init(
            || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)) {
                Ok(Ok(run)) => Ok(run),
                Ok(Err(why)) => Err(Some(format!("skip: {why}"))),
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    Err(Some(format!("the {name} run failed: {msg}")))
                }
            },
        );
    match r {
        Ok(run) => Some(run),
        Err(Some(why)) if why.starts_with("skip: ") => {
            skip(why.trim_start_matches("skip: "));
            None
        }
        Err(why) => panic!("{}", why.clone().unwrap_or_default()),
    }
}

/// The steps every model-driven agent runs, in order, and the script for its model:
/// each shell command as is, and the agent's own read of the key as `own_read` says
/// (the agent's tool and its input).
pub(crate) fn standard_script(
    w: &World,
    own_read: impl Fn(&str) -> serde_json::Value,
) -> (Vec<Step>, Vec<serde_json::Value>) {
    let steps = vec![
        Step::Write,
        Step::ReadKey,
        Step::Connect,
        Step::DeniedProgram,
        Step::OwnReadKey,
        Step::MoreWork,
    ];
    script_of(w, steps, own_read)
}

/// The standard steps with those only an agent with hooks can take: a call in the
/// background and a call its `tools:` rules deny.
pub(crate) fn hooked_script(
    w: &World,
    own_read: impl Fn(&str) -> serde_json::Value,
) -> (Vec<Step>, Vec<serde_json::Value>) {
    let steps = vec![
        Step::Write,
        Step::Background,
        Step::ReadKey,
        Step::Connect,
        Step::DeniedProgram,
        Step::DeniedTool,
        Step::OwnReadKey,
        Step::MoreWork,
    ];
    script_of(w, steps, own_read)
}

fn script_of(
    w: &World,
    steps: Vec<Step>,
    own_read: impl Fn(&str) -> serde_json::Value,
) -> (Vec<Step>, Vec<serde_json::Value>) {
    let script = steps
        .iter()
        .map(|s| match s {
            Step::OwnReadKey => own_read(&w.key.to_string_lossy()),
            s => serde_json::json!(command(*s, w)),
        })
        .collect();
    (steps, script)
}

/// The claims every agent's run must hold, one test each (see the module comment).
pub(crate) mod claims {
    use super::*;

    /// It did the allowed work of every step, the last ones after all the refusals, and
    /// exited normally; the session belongs to the user it ran as.
    pub(crate) fn works_and_survives(r: &AgentRun) {
        assert!(
            r.status.success(),
            "the agent failed ({}): {}\n{}\n{}",
            r.status,
            r.stdout,
            r.stderr,
            r.daemon_log
        );
        assert_eq!(
            r.tool_results.len(),
            r.steps.len(),
            "every step's result went back: {:?}\nstderr: {}",
            r.tool_results,
            r.stderr
        );
        assert!(
            r.result(Step::Write).1.contains("hello-from-agent"),
            "{:?}",
            r.tool_results
        );
        assert_eq!(r.notes.as_deref(), Some("hello-from-agent\n"));
        let last = &r.result(Step::MoreWork).1;
        assert!(
            last.contains("agent-notes") && last.contains("notes.txt"),
            "the work after the refusals: {:?}",
            r.tool_results
        );
        assert_eq!(r.owner_user.as_deref(), Some(r.user.as_str()));
        nothing_was_killed(r);
    }

    /// No process of the session ended by SIGKILL: every refusal was an error returned.
    pub(crate) fn nothing_was_killed(r: &AgentRun) {
        assert!(
            !r.events
                .iter()
                .any(|e| e.exit().is_some_and(|x| x.signal == Some(9))),
            "nothing in the session was killed:\n{}",
            dump(&r.events)
        );
    }

    /// The profile denied the agent nothing but the scripted forbidden steps and the
    /// project's `.env`: every refusal in the session is of the key (or its directory),
    /// the foreign host, `nc`, or the `.env` (a secret of the project the profiles deny;
    /// aider and Gemini CLI try to load it at start-up, are refused with `EPERM` and
    /// carry on). Whatever else the agent did at start-up and at work — its
    /// configuration, caches, helpers, model API — its profile allows.
    pub(crate) fn nothing_else_was_denied(r: &AgentRun) {
        let ssh = Path::new(&r.key)
            .parent()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let nc = fs::canonicalize("/usr/bin/nc").unwrap();
        let nc = nc.to_string_lossy();
        let scripted = |e: &Event| match &e.body {
            Body::Open(o) => {
                o.path == ssh
                    || o.path.starts_with(&format!("{ssh}/"))
                    || o.path == nc
                    || o.path == r.env_file
            }
            Body::Exec(x) => x.path == nc,
            Body::ToolCall(x) => x.target == DENIED_TOOL,
            Body::Connect(_) | Body::NetDecision(_) => {
                e.net().is_some_and(|n| n.address == r.foreign)
            }
            _ => false,
        };
        let other: Vec<&Event> = r
            .events
            .iter()
            .filter(|e| {
                e.decision
                    .as_ref()
                    .is_some_and(|d| d.decision == Verdict::Deny)
            })
            .filter(|e| !scripted(e))
            .collect();
        assert!(
            other.is_empty(),
            "denied beyond the scripted steps:\n{}",
            other.iter().map(|e| format!("{e:?}\n")).collect::<String>()
        );
    }

    /// Each read of the key — the command's, and the agent's own where it has a read
    /// tool — is refused before it holds a byte, with `EPERM` (never a kill), by the
    /// profile's `~/.ssh/**` rule, from the fanotify layer (BPF-LSM where it is attached).
    pub(crate) fn credential_reads_are_refused(r: &AgentRun) {
        for step in [Step::ReadKey, Step::OwnReadKey] {
            if !r.steps.contains(&step) {
                continue;
            }
            let (is_error, content) = r.result(step);
            assert!(
                *is_error
                    || content.contains("Operation not permitted")
                    || content.contains("EPERM"),
                "{step:?} was not refused: {:?}",
                r.tool_results
            );
        }
        assert!(
            r.tool_results.iter().all(|(_, c)| !c.contains("CANARY")),
            "the key or the project's .env leaked to the model: {:?}",
            r.tool_results
        );
        // Where the agent loaded the `.env` itself, that was refused too (not killed).
        for e in r
            .events
            .iter()
            .filter(|e| e.open().is_some_and(|o| o.path == r.env_file) && e.decision.is_some())
        {
            let d = e.decision.as_ref().unwrap();
            assert_eq!(
                (d.decision, d.action),
                (Verdict::Deny, Action::Blocked),
                "{e:?}"
            );
            assert_eq!(d.rule, r.rule_id("files.deny[10]", "\"**/.env\""), "{e:?}");
        }
        let on_key: Vec<&Event> = r
            .events
            .iter()
            .filter(|e| e.open().is_some_and(|o| o.path == r.key) && e.decision.is_some())
            .collect();
        let rule = r.rule_id("files.deny[0]", "~/.ssh/**");
        for e in &on_key {
            let d = e.decision.as_ref().unwrap();
            assert_eq!(d.decision, Verdict::Deny, "{e:?}");
            assert!(
                matches!(
                    (d.action, d.enforced_by),
                    (Action::Blocked, Layer::Fanotify) | (Action::Blocked, Layer::Lsm)
                ),
                "refused, not killed: {d:?}"
            );
            assert_eq!(d.rule, rule, "{e:?}");
        }
        let comm = |e: &Event| {
            e.process
                .as_ref()
                .map_or("", |p| p.comm.as_str())
                .to_owned()
        };
        assert!(
            on_key.iter().any(|e| comm(e) == "cat"),
            "no refusal of the command's read:\n{}",
            dump(&r.events)
        );
        if r.steps.contains(&Step::OwnReadKey) {
            assert!(
                on_key.iter().any(|e| comm(e) != "cat"),
                "no refusal of the agent's own read:\n{}",
                dump(&r.events)
            );
        }
    }

    /// The agent loaded the project's `.env` at start-up itself, and that read was
    /// refused (`EPERM`, the `**/.env` rule) instead of killing the agent: the file was
    /// bound to its inode when the session enrolled in that directory, so the refusal
    /// layer refuses it where BPF-LSM cannot match names.
    pub(crate) fn own_env_load_is_refused(r: &AgentRun) {
        let d = r.decision_on("the agent's load of .env", |e| {
            e.open().is_some_and(|o| o.path == r.env_file)
        });
        assert_eq!(
            (d.decision, d.action),
            (Verdict::Deny, Action::Blocked),
            "{d:?}"
        );
        assert!(
            matches!(d.enforced_by, Layer::Fanotify | Layer::Lsm),
            "{d:?}"
        );
    }

    /// Its connect to a host outside the profile is refused in the kernel (`EPERM`).
    pub(crate) fn foreign_connect_is_refused(r: &AgentRun) {
        let (_, content) = r.result(Step::Connect);
        assert!(
            content.contains("Operation not permitted") && !content.contains("connected\n"),
            "{:?}",
            r.tool_results
        );
        foreign_connect_was_refused_and_recorded(r);
    }

    /// The session's connect to the foreign host was refused by the cgroup layer under
    /// `network.default`, and `audit query --dest` finds it.
    pub(crate) fn foreign_connect_was_refused_and_recorded(r: &AgentRun) {
        let on_net = r.decision_on(&r.foreign, |e| {
            e.net().is_some_and(|n| n.address == r.foreign)
        });
        assert_eq!(
            (
                on_net.decision,
                on_net.action,
                on_net.enforced_by,
                on_net.rule.as_str()
            ),
            (
                Verdict::Deny,
                Action::Blocked,
                Layer::Cgroup,
                "network.default"
            )
        );
        assert!(
            r.to_foreign
                .iter()
                .any(|x| x["decision"]["action"] == "blocked"),
            "`audit query --dest` finds the refused connect: {:?}",
            r.to_foreign
        );
    }

    /// The denied program (`nc`, a symlink to `nc.openbsd`) is refused at exec with
    /// `EPERM` by the profile's `/usr/bin/nc` rule (bound by inode: the link's target).
    pub(crate) fn denied_program_is_refused(r: &AgentRun) {
        let (_, content) = r.result(Step::DeniedProgram);
        assert!(
            content.contains("Operation not permitted"),
            "{:?}",
            r.tool_results
        );
        denied_program_was_refused_and_recorded(r);
    }

    /// The session's exec of `nc` was refused (`EPERM`, BPF-LSM or the fanotify layer)
    /// under the profile's `/usr/bin/nc` rule.
    pub(crate) fn denied_program_was_refused_and_recorded(r: &AgentRun) {
        let d = r.decision_on("the exec of nc", |e| {
            e.exec().is_some_and(|x| x.path.contains("/nc"))
        });
        assert_eq!(
            (d.decision, d.action),
            (Verdict::Deny, Action::Blocked),
            "{d:?}"
        );
        assert!(
            matches!(d.enforced_by, Layer::Fanotify | Layer::Lsm),
            "{d:?}"
        );
        assert_eq!(d.rule, r.rule_id("exec.deny[0]", "/usr/bin/nc"));
    }

    /// The model API (here on loopback) is reached under the profile's allow rule.
    pub(crate) fn model_api_is_reached_under_its_rule(r: &AgentRun) {
        let port = r.model_port.expect("a model server");
        let to_model = r.decision_on("the model API", |e| e.net().is_some_and(|n| n.port == port));
        assert_eq!(
            (to_model.decision, to_model.action),
            (Verdict::Allow, Action::Allowed)
        );
    }

    /// Every scripted step was a tool call the agent's hook reported (with the prompt of
    /// its turn), and every kernel action sits under the call it happened in: the
    /// command's read of the key under its Bash call (its subtree), the agent's own read
    /// under its read tool (by interval), and the read of a child that outlived its
    /// call, made after the call ended, under that call. `audit timeline` nests them
    /// and `audit query --tool-call` finds a call's actions.
    pub(crate) fn tool_calls_carry_the_prompt_and_their_actions(r: &AgentRun) {
        let prompt = r
            .events
            .iter()
            .find_map(|e| match &e.body {
                Body::Prompt(p) => Some(p),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no prompt reported:\n{}", dump(&r.events)));
        assert_eq!(prompt.text.as_deref(), Some("run the scripted commands"));
        let calls: Vec<(u64, &ToolCallInfo)> = r
            .events
            .iter()
            .filter_map(|e| match &e.body {
                Body::ToolCall(c) => Some((e.seq, c)),
                _ => None,
            })
            .collect();
        assert_eq!(
            calls.len(),
            r.steps.len(),
            "one reported call per step: {calls:#?}"
        );
        let call = |step: Step| {
            let i = r.steps.iter().position(|s| *s == step).unwrap();
            calls[i].1
        };
        for (_, c) in &calls {
            assert_eq!(c.prompt_id, prompt.prompt_id, "{c:?}");
            assert!(!c.id.is_empty() && c.agent_pid > 1, "{c:?}");
        }
        assert_eq!(call(Step::ReadKey).target, "cat ~/.ssh/id_rsa");
        assert_eq!(call(Step::OwnReadKey).target, r.key);
        let on_key = |pick: &dyn Fn(&Event) -> bool| {
            r.events
                .iter()
                .filter(|e| e.open().is_some_and(|o| o.path == r.key) && e.decision.is_some())
                .find(|e| pick(e))
                .unwrap_or_else(|| panic!("no refused read of the key:\n{}", dump(&r.events)))
                .context
                .clone()
                .unwrap_or_else(|| panic!("a refused read of the key under no call"))
        };
        let comm = |e: &Event| e.process.as_ref().map_or(String::new(), |p| p.comm.clone());
        let by_cat = on_key(&|e| comm(e) == "cat");
        assert_eq!(
            (by_cat.tool_call.as_str(), by_cat.how),
            (call(Step::ReadKey).id.as_str(), Attribution::Subtree)
        );
        let own = on_key(&|e| comm(e) != "cat");
        assert_eq!(
            (own.tool_call.as_str(), own.how),
            (call(Step::OwnReadKey).id.as_str(), Attribution::Interval)
        );
        // The background child's read, after its call ended.
        let background = call(Step::Background);
        let ended = r
            .events
            .iter()
            .find(|e| matches!(&e.body, Body::ToolResult(x) if x.id == background.id))
            .expect("the background call's end")
            .seq;
        let late = r
            .events
            .iter()
            .find(|e| {
                e.seq > ended
                    && comm(e) == "cat"
                    && e.open().is_some_and(|o| o.path.ends_with("/notes.txt"))
            })
            .unwrap_or_else(|| panic!("no late read of the notes:\n{}", dump(&r.events)));
        let ctx = late.context.as_ref().expect("under its call");
        assert_eq!(
            (ctx.tool_call.as_str(), ctx.how),
            (background.id.as_str(), Attribution::Subtree)
        );
        // Each command's own actions sit under the call that ran it: the refused connect,
        // the refused exec of `nc`, the last step's `git`.
        let under = |step: Step, what: &str, pick: &dyn Fn(&Event) -> bool| {
            let e = r
                .events
                .iter()
                .find(|e| pick(e))
                .unwrap_or_else(|| panic!("no {what}:\n{}", dump(&r.events)));
            let c = e
                .context
                .as_ref()
                .unwrap_or_else(|| panic!("{what} under no call: {e:?}"));
            // The right call; `ambiguous` where the agent left another call open (Codex
            // reports no end of a failed view_image: it is closed at the turn's end).
            assert_eq!(
                c.tool_call.as_str(),
                call(step).id.as_str(),
                "{what}: {c:?}"
            );
            assert!(
                matches!(c.how, Attribution::Subtree | Attribution::Ambiguous),
                "{what}: {c:?}"
            );
        };
        under(Step::Connect, "the refused connect", &|e| {
            e.net().is_some_and(|n| n.address == r.foreign) && e.decision.is_some()
        });
        under(Step::DeniedProgram, "the refused exec of nc", &|e| {
            e.exec().is_some_and(|x| x.path.contains("/nc")) && e.decision.is_some()
        });
        under(Step::MoreWork, "the exec of `git init`", &|e| {
            e.exec()
                .is_some_and(|x| x.argv.iter().take(2).eq(["git", "init"].iter()))
        });
        // Every action names a call that was reported.
        for e in &r.events {
            if let Some(c) = &e.context {
                assert!(
                    calls.iter().any(|(_, x)| x.id == c.tool_call),
                    "an action under an unknown call: {e:?}"
                );
            }
        }
        // The timeline nests: the prompt, each call, the call's processes and actions.
        let t = &r.timeline;
        let at = |needle: &str| {
            t.find(needle)
                .unwrap_or_else(|| panic!("no `{needle}` in the timeline:\n{t}"))
        };
        // Every call is in it, with its id.
        for (_, c) in &calls {
            at(&c.id);
        }
        let read_call = at(&call(Step::ReadKey).id);
        assert!(at("prompt") < read_call, "{t}");
        assert!(at("\"run the scripted commands\"") < read_call, "{t}");
        let next_call = at(&call(Step::Connect).id);
        let key_line = t[read_call..]
            .find(&format!("{} O_RDONLY", r.key))
            .map(|i| i + read_call)
            .expect("the key's read in the timeline");
        assert!(key_line < next_call, "the read sits under its call:\n{t}");
        // `audit query --tool-call` on the store the daemon left.
        let (_store, db) = r.store_copy();
        let q = Command::new(bin())
            .args(["audit", "query", "--json", "--db"])
            .arg(&db)
            .args(["--tool-call", &call(Step::ReadKey).id])
            .output_within();
        assert!(q.status.success(), "{q:?}");
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&q.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let kinds: Vec<&str> = rows.iter().filter_map(|v| v["kind"].as_str()).collect();
        assert!(
            kinds.contains(&"tool_call") && kinds.contains(&"tool_result"),
            "{kinds:?}"
        );
        assert!(
            rows.iter()
                .any(|v| v["kind"] == "open" && v["open"]["path"] == r.key.as_str()),
            "the call's refused read: {rows:#?}"
        );
    }

    /// The call the profile's `tools:` rules deny never ran: the hook refused it before
    /// any process started, the model was told the rule, and the refusal is recorded
    /// with it.
    pub(crate) fn the_denied_tool_never_ran(r: &AgentRun) {
        // The agent's shell tool by its own name.
        let entry = match r.profile {
            "gemini-cli" => "\"run_shell_command(sudo *)\"",
            _ => "\"Bash(sudo *)\"",
        };
        let rule = r.rule_id("tools.deny[0]", entry);
        let e = r
            .events
            .iter()
            .find(|e| matches!(&e.body, Body::ToolCall(c) if c.target == DENIED_TOOL))
            .unwrap_or_else(|| panic!("no reported call of `{DENIED_TOOL}`"));
        let d = e.decision.as_ref().expect("a decision on the call");
        assert_eq!(
            (d.decision, d.action, d.enforced_by, d.rule.as_str()),
            (Verdict::Deny, Action::Blocked, Layer::Hook, rule.as_str())
        );
        assert!(
            !r.events.iter().any(|e| e
                .exec()
                .is_some_and(|x| x.path.ends_with("/sudo") || x.argv.iter().any(|a| a == "sudo"))),
            "sudo ran:\n{}",
            dump(&r.events)
        );
        let (is_error, said) = r.result(Step::DeniedTool);
        assert!(
            *is_error
                && said.contains("agentwarden refused this tool call")
                && said.contains(&rule),
            "{said}"
        );
    }

    /// After the agent's own read of the key was refused, the model was told why: the
    /// refused object, the rule and the layer, from agentwarden, with the call's result.
    pub(crate) fn the_model_was_told_why(r: &AgentRun) {
        let rule = r.rule_id("files.deny[0]", "~/.ssh/**");
        assert!(
            r.model_notes
                .iter()
                .any(|n| n.contains("agentwarden (the host's runtime policy")
                    && n.contains(&r.key)
                    && n.contains(&rule)),
            "the model was not told why: {:#?}",
            r.model_notes
        );
        let told = r
            .events
            .iter()
            .find_map(|e| match &e.body {
                Body::ToolResult(x) if x.refused > 0 => x.told.clone(),
                _ => None,
            })
            .expect("a call's result with what it was told");
        assert!(told.contains(&r.key), "{told}");
    }

    /// An agent without hooks: each command it ran is an inferred invocation named by
    /// its command line, and the command's refused read of the key sits under it.
    pub(crate) fn inferred_invocations_name_their_commands(r: &AgentRun) {
        let e = r
            .events
            .iter()
            .find(|e| {
                e.open().is_some_and(|o| o.path == r.key)
                    && e.decision.is_some()
                    && e.process.as_ref().is_some_and(|p| p.comm == "cat")
            })
            .unwrap_or_else(|| panic!("no refused read by cat:\n{}", dump(&r.events)));
        let c = e.context.as_ref().expect("an invocation");
        assert_eq!(c.how, Attribution::Inferred, "{c:?}");
        assert!(
            c.tool.contains("id_rsa") && c.tool_call.starts_with("inferred-"),
            "named by its command line: {c:?}"
        );
        assert!(
            r.timeline.contains("(inferred: no hook reported calls)"),
            "{}",
            r.timeline
        );
    }

    /// The audit timeline answers who did what: the agent, its owners, the principal,
    /// the refused read, connect and program with their rules.
    pub(crate) fn the_audit_timeline_answers_who_did_what(r: &AgentRun) {
        let profile = agentwarden::profiles::ProfileSet::embedded().unwrap();
        let owners = &profile.get(r.profile).unwrap().file.owners;
        for needle in [
            format!("agent      {}", r.profile),
            format!("principal  {} (uid ", r.user),
            format!(
                "business: {}, technical: {}",
                owners.business, owners.technical
            ),
            format!("{} O_RDONLY", r.key),
            "DENY blocked by".to_owned(),
            format!("{}:8080", r.foreign),
            "DENY blocked by cgroup: network.default".to_owned(),
            r.rule_id("exec.deny[0]", "/usr/bin/nc"),
        ] {
            assert!(
                r.timeline.contains(&needle),
                "no `{needle}` in the timeline:\n{}",
                r.timeline
            );
        }
    }
}

/// The agent's run (`$make`, named `$name` in failures) and the standard claims as
/// tests over it, for the agent module this is expanded in.
macro_rules! agent_claims {
    ($name:literal, $make:expr) => {
        fn the_run() -> Option<&'static AgentRun> {
            static RUN: Once = OnceLock::new();
            once(&RUN, $name, $make)
        }

        #[test]
        fn it_works_under_its_profile_and_survives_every_refusal() {
            let Some(r) = the_run() else { return };
            claims::works_and_survives(r);
        }

        #[test]
        fn nothing_it_needs_is_denied() {
            let Some(r) = the_run() else { return };
            claims::nothing_else_was_denied(r);
        }

        #[test]
        fn its_credential_reads_are_refused() {
            let Some(r) = the_run() else { return };
            claims::credential_reads_are_refused(r);
        }

        #[test]
        fn its_connect_to_a_foreign_host_is_refused() {
            let Some(r) = the_run() else { return };
            claims::foreign_connect_is_refused(r);
        }

        #[test]
        fn its_denied_program_is_refused() {
            let Some(r) = the_run() else { return };
            claims::denied_program_is_refused(r);
        }

        #[test]
        fn the_model_api_is_reached_under_its_rule() {
            let Some(r) = the_run() else { return };
            claims::model_api_is_reached_under_its_rule(r);
        }

        #[test]
        fn the_audit_timeline_answers_who_did_what() {
            let Some(r) = the_run() else { return };
            claims::the_audit_timeline_answers_who_did_what(r);
        }
    };
}
pub(crate) use agent_claims;

/// The claims of an agent whose hooks `run` wires, over the run `the_run` gives.
macro_rules! hook_claims {
    () => {
        /// Each scripted call is in the audit trail with its id, its input and the
        /// turn's prompt, and every kernel action sits under the call it happened in.
        #[test]
        fn its_tool_calls_carry_the_prompt_and_their_actions() {
            let Some(r) = the_run() else { return };
            claims::tool_calls_carry_the_prompt_and_their_actions(r);
        }

        /// The call its `tools:` rules deny never runs, and the model is told which
        /// rule.
        #[test]
        fn the_tool_its_rules_deny_never_runs() {
            let Some(r) = the_run() else { return };
            claims::the_denied_tool_never_ran(r);
        }

        /// The model is told why the key could not be read.
        #[test]
        fn the_model_is_told_why_its_read_was_refused() {
            let Some(r) = the_run() else { return };
            claims::the_model_was_told_why(r);
        }
    };
}
pub(crate) use hook_claims;

/// With `AGENTWARDEN_KEEP_STORES=DIR`, each run's audit store is also written to
/// `DIR/<profile>-<pid>/`: real agents' sessions to measure against
/// (`xtask/open_repeats.py`, the share of repeated opens the kernel could aggregate).
fn keep_store(profile: &str, store: &[(String, Vec<u8>)]) {
    let Some(dir) = std::env::var_os("AGENTWARDEN_KEEP_STORES") else {
        return;
    };
    let to = PathBuf::from(dir).join(format!("{profile}-{}", std::process::id()));
    fs::create_dir_all(&to).unwrap();
    for (name, bytes) in store {
        fs::write(to.join(name), bytes).unwrap();
    }
}
