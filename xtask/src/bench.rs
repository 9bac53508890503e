//! `cargo xtask bench`: agentwarden's cost against the same machine without it, in one
//! run. Every scenario runs in rounds; each round has an `off` block (no daemon), then
//! with the daemon up an `on-untracked` block (workload outside every session) and an
//! `on-tracked` block (inside a session under an enforcing profile shaped like the
//! shipped `claude-code`), in alternating order. Reported: median and spread per
//! condition, ratio to `off`, nanoseconds added per operation, kernel and daemon losses.
//! A scenario with any loss fails. Results go to `target/bench/` as markdown, JSON and a
//! PNG chart of the ratios.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::{peers, run_cmd, workspace_root};

mod profile;

/// A port the bench profile denies (nothing listens on it).
const DENIED_PORT: u16 = 9;

struct Sizes {
    rounds: usize,
    exec: u64,
    open: u64,
    tcp: u64,
    udp: u64,
    rates: &'static [u64],
    mix_secs: f64,
    idle_secs: u64,
    load_secs: f64,
    latency_iters: u64,
    build: bool,
    /// Tool calls (a PreToolUse and a PostToolUse report each) in the hook measurement.
    hook_calls: u64,
    /// Reads held for approval (and approved at once by a webhook) in the approval
    /// measurement.
    approvals: u64,
    /// Recorded actions the drift analysis is timed on (at least), in sessions of
    /// `drift_spawns` spawns each.
    drift_actions: u64,
    drift_spawns: u64,
}

const FULL: Sizes = Sizes {
    rounds: 5,
    exec: 2_000,
    open: 400_000,
    tcp: 10_000,
    udp: 40_000,
    rates: &[25_000, 50_000, 100_000, 200_000, 400_000],
    mix_secs: 3.0,
    idle_secs: 60,
    load_secs: 10.0,
    latency_iters: 300,
    build: true,
    hook_calls: 300,
    approvals: 200,
    drift_actions: 100_000,
    drift_spawns: 2_000,
};

const QUICK: Sizes = Sizes {
    rounds: 1,
    exec: 100,
    open: 20_000,
    tcp: 500,
    udp: 2_000,
    rates: &[20_000],
    mix_secs: 1.0,
    idle_secs: 2,
    load_secs: 1.0,
    latency_iters: 20,
    build: false,
    hook_calls: 30,
    approvals: 20,
    drift_actions: 5_000,
    drift_spawns: 200,
};

/// What each scenario is held to (from the issue), as a ratio limit per condition.
struct Scenario {
    name: &'static str,
    measure: &'static str,
    args: Vec<String>,
    untracked_max: Option<f64>,
    tracked_max: Option<f64>,
}

struct Env {
    dir: PathBuf,
    agentwarden: PathBuf,
    awload: PathBuf,
    socket: PathBuf,
    /// Where tracked workloads start (see `session_cmd`).
    cwd: PathBuf,
    file: PathBuf,
    canary: PathBuf,
    rules: PathBuf,
    crate_dir: PathBuf,
    /// The connect loops' listener port: fixed, so the Landlock peer can name it.
    port: u16,
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

pub fn run(quick: bool, only: Option<&str>) -> Result<()> {
    if !crate::rustix_is_root() {
        bail!("the benchmark loads agentwarden's eBPF programs: run it as root");
    }
    let sizes = if quick { &QUICK } else { &FULL };
    if let Err(e) = refuse_other_pins() {
        // The smoke run's figures mean nothing; its harness check still does.
        if !quick {
            return Err(e);
        }
        eprintln!("bench: {e:#}");
    }
    run_cmd(Command::new("cargo").args([
        "build",
        "--release",
        "--package",
        "agent-user",
        "--package",
        "bench",
    ]))?;
    let root = workspace_root();
    let dir = root.join("target/bench");
    let work = dir.join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(work.join("rules"))?;
    fs::create_dir_all(dir.join("cwd"))?;
    let env = Env {
        agentwarden: root.join("target/release/agentwarden"),
        awload: root.join("target/release/awload"),
        socket: work.join("ctl.sock"),
        cwd: dir.join("cwd"),
        file: work.join("allowed.txt"),
        canary: work.join("bench-canary"),
        rules: work.join("rules"),
        crate_dir: work.join("crate"),
        dir: work,
        port: free_port()?,
    };
    fs::write(&env.file, "allowed\n")?;
    fs::write(&env.canary, "CANARY\n")?;
    fs::write(env.rules.join("bench.yaml"), bench_profile(&env.canary))?;
    if sizes.build {
        small_crate(&env.crate_dir)?;
    }

    let path = env.file.display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let mut scenarios = vec![
        Scenario {
            name: "exec storm",
            measure: "spawn + wait /bin/true",
            args: s(&["exec", "--iters", &sizes.exec.to_string()]),
            untracked_max: Some(1.005),
            tracked_max: Some(1.03),
        },
        Scenario {
            name: "open loop, 1 thread",
            measure: "openat + close, allowed file",
            args: s(&["open", "--iters", &sizes.open.to_string(), "--path", &path]),
            untracked_max: Some(1.05),
            tracked_max: Some(1.20),
        },
        Scenario {
            name: "open loop, 2 threads",
            measure: "openat + close, allowed file",
            args: s(&[
                "open",
                "--iters",
                &sizes.open.to_string(),
                "--threads",
                "2",
                "--path",
                &path,
            ]),
            untracked_max: Some(1.05),
            tracked_max: Some(1.20),
        },
        Scenario {
            name: "connect loop, TCP",
            measure: "connect to a loopback listener + close",
            args: s(&[
                "connect",
                "--iters",
                &sizes.tcp.to_string(),
                "--port",
                &env.port.to_string(),
            ]),
            untracked_max: None,
            tracked_max: Some(1.05),
        },
        Scenario {
            name: "connect loop, UDP",
            measure: "UDP socket connect + close",
            args: s(&[
                "connect",
                "--iters",
                &sizes.udp.to_string(),
                "--udp",
                "--port",
                &env.port.to_string(),
            ]),
            untracked_max: None,
            tracked_max: None,
        },
    ];
    if sizes.build {
        scenarios.push(Scenario {
            name: "real workload",
            measure: "cargo build of a small crate",
            args: Vec::new(),
            untracked_max: None,
            tracked_max: Some(1.015),
        });
    }

    if only == Some("profile") {
        return profile::run(&env, &scenarios);
    }
    if only == Some("drift") {
        let drift = drift_cost(&env, sizes, &scenarios)?;
        let out = workspace_root().join("target/bench");
        fs::write(
            out.join("drift.json"),
            serde_json::to_string_pretty(&drift)?,
        )?;
        let md = drift_markdown(&drift);
        fs::write(out.join("drift.md"), &md)?;
        println!("{md}");
        return Ok(());
    }
    if only == Some("throughput") {
        // The daemon's own figures without the rounds: its event rate and footprint.
        let daemon = start_daemon(&env)?;
        let fresh = fresh_rss_kib(&daemon);
        let throughput = throughput(&env, sizes)?;
        let max_rate = zero_loss_rate(&throughput);
        let footprint = footprint(&env, sizes, &daemon, max_rate, fresh)?;
        let report = json!({
            "throughput": throughput,
            "max_zero_drop_events_per_s": max_rate,
            "footprint": footprint,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    // samples[scenario][condition] = ns per op, one per round; losses per scenario.
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; scenarios.len()];
    let mut losses = vec![0u64; scenarios.len()];
    let cx = peer_ctx(&env);
    let mut peer_runs: Vec<PeerRun> = peers::Peer::ALL
        .iter()
        .map(|p| PeerRun {
            peer: *p,
            unavailable: None,
            samples: vec![Vec::new(); scenarios.len()],
            losses: vec![0; scenarios.len()],
        })
        .collect();
    for round in 0..sizes.rounds {
        eprintln!("bench: round {}/{}", round + 1, sizes.rounds);
        for (i, sc) in scenarios.iter().enumerate() {
            samples[i][0].push(block(&env, sc, false)?);
        }
        for run in peer_runs.iter_mut().filter(|r| r.unavailable.is_none()) {
            run.round(&env, &cx, &scenarios)?;
        }
        let daemon = start_daemon(&env)?;
        for (i, sc) in scenarios.iter().enumerate() {
            // Alternate which on-condition goes first, so drift does not favour one.
            let order = if round % 2 == 0 { [1, 2] } else { [2, 1] };
            for cond in order {
                let before = status(&env)?;
                samples[i][cond].push(block(&env, sc, cond == 2)?);
                losses[i] += loss(&env, &before)?;
            }
        }
        drop(daemon);
    }

    let refusal = refusal_cost(&env, sizes, &scenarios)?;
    let daemon = start_daemon(&env)?;
    let fresh = fresh_rss_kib(&daemon);
    let throughput = throughput(&env, sizes)?;
    let max_rate = zero_loss_rate(&throughput);
    let footprint = footprint(&env, sizes, &daemon, max_rate, fresh)?;
    let latency = latency(&env, sizes)?;
    let hook = hook_cost(&env, sizes)?;
    drop(daemon);
    let approval = approval_cost(&env, sizes)?;
    let off_latency = connect_latency(&env, sizes, false)?;
    let drift = drift_cost(&env, sizes, &scenarios)?;

    let results: Vec<Value> = scenarios
        .iter()
        .enumerate()
        .map(|(i, sc)| {
            let mut v = summarize(sc, &samples[i], losses[i]);
            v["peers"] = peer_summaries(&peer_runs, i, median(&samples[i][0]));
            v
        })
        .collect();
    let report = json!({
        "kernel": kernel_release(),
        "cpus": thread::available_parallelism().map_or(1, |n| n.get()),
        "rounds": sizes.rounds,
        "quick": quick,
        "scenarios": results,
        "throughput": throughput,
        "max_zero_drop_events_per_s": max_rate,
        "footprint": footprint,
        "latency": latency,
        "connect_off": off_latency,
        "hook": hook,
        "approval": approval,
        "refusal_layer": refusal,
        "drift": drift,
        "peers": peer_runs.iter().map(|r| json!({
            "name": r.peer.name(),
            "does": r.peer.does(),
            "unavailable": r.unavailable,
        })).collect::<Vec<_>>(),
    });
    let out = workspace_root().join("target/bench");
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&report) + &drift_markdown(&report["drift"]);
    fs::write(out.join("results.md"), &md)?;
    println!("{md}");
    chart(&out)?;
    let unavailable: Vec<String> = peer_runs
        .iter()
        .filter_map(|r| Some(format!("{}: {}", r.peer.name(), r.unavailable.as_ref()?)))
        .collect();
    if !unavailable.is_empty() {
        eprintln!("bench: peers not measured: {}", unavailable.join("; "));
    }
    let failed: Vec<&str> = report["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["losses"].as_u64() != Some(0))
        .filter_map(|r| r["name"].as_str())
        .collect();
    let kill = &report["latency"]["kill"];
    if kill["leaked"] != 0 || kill["killed"] != kill["iters"] {
        bail!("kill latency: a process survived or read the canary: {kill}");
    }
    if !failed.is_empty() {
        let msg = format!("losses during: {}", failed.join(", "));
        if !quick {
            bail!("{msg}");
        }
        // The smoke run checks that the harness works; losses depend on the machine.
        eprintln!("bench: {msg} (quick run: reported, not fatal)");
    }
    eprintln!(
        "bench: results in {} (results.md, results.json, overhead.png)",
        out.display()
    );
    Ok(())
}

fn bench_profile(canary: &Path) -> String {
    format!(
        "# Shaped like the shipped claude-code profile: deny lists decided in the kernel,\n\
         # loopback-only network, fileless execs recorded, plus a canary to time kills on\n\
         # (a name rule: the kill in the kernel, which the refusal layer does not take).\n\
         name: bench\ndescription: benchmark profile\n\
         owners: {{ business: bench, technical: bench }}\nmode: enforce\n\
         exec:\n  deny: [/usr/bin/nc, /usr/bin/ncat, /usr/bin/netcat, /usr/bin/socat, /usr/bin/telnet]\n  \
         on_violation: kill\n  fileless: alert\n\
         files:\n  deny: [~/.ssh/**, ~/.aws/**, ~/.config/gcloud/**, ~/.kube/**, ~/.netrc, /etc/shadow, \
         \"**/.env\", \"**/{}\"]\n  on_violation: kill\n\
         network:\n  default: deny\n  allow:\n    - {{ cidr: 127.0.0.0/8 }}\n    - {{ cidr: \"::1\" }}\n  \
         deny:\n    - {{ cidr: 127.0.0.1, ports: \"{DENIED_PORT}\" }}\n  on_violation: block\n",
        canary
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned())
    )
}

/// A crate with no dependencies and enough code to keep rustc busy for a few seconds.
fn small_crate(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir.join("src"))?;
    fs::write(
        dir.join("Cargo.toml"),
        // Its own workspace: it lives under ours (target/) but is not part of it.
        "[package]\nname = \"benchcrate\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )?;
    let mut src = String::new();
    for i in 0..400 {
        src.push_str(&format!(
            "pub fn f{i}(v: &[u64]) -> u64 {{ v.iter().map(|x| x.wrapping_mul({i}) ^ (x >> 3)).filter(|x| x % 7 != {m}).sum() }}\n",
            m = i % 7
        ));
    }
    fs::write(dir.join("src/lib.rs"), src)?;
    Ok(())
}

/// The bench daemons' pin directory (one daemon at a time).
const BENCH_PINS: &str = "/sys/fs/bpf/agentwarden-bench";

/// Programs another agentwarden left pinned (a daemon that runs, or a killed test's)
/// run on every hook of every condition, `off` included: the bench would measure them
/// too. Refused, naming them, instead (a warning for the smoke run).
fn refuse_other_pins() -> Result<()> {
    let others: Vec<String> = fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("links").is_dir() && p.as_path() != Path::new(BENCH_PINS))
        .map(|p| p.display().to_string())
        .collect();
    if !others.is_empty() {
        bail!(
            "programs of another agentwarden are attached (pinned under {}): they would \
             run in every condition; stop that daemon, or remove them with `agentwarden \
             unload --pin-dir DIR`",
            others.join(", ")
        );
    }
    Ok(())
}

fn start_daemon(env: &Env) -> Result<Daemon> {
    start_daemon_with(env, false)
}

/// The daemon, with the refusal layer left out when `no_refusal`.
fn start_daemon_with(env: &Env, no_refusal: bool) -> Result<Daemon> {
    start_daemon_args(env, if no_refusal { &["--no-refusal"] } else { &[] })
}

/// The daemon with more options.
fn start_daemon_args(env: &Env, extra: &[&str]) -> Result<Daemon> {
    let _ = fs::remove_file(&env.socket);
    // A bench that died leaves no state for this daemon to adopt.
    let _ = fs::remove_dir_all(BENCH_PINS);
    let child = Command::new(&env.agentwarden)
        .arg("--socket")
        .arg(&env.socket)
        .arg("daemon")
        .args(extra)
        .arg("--state-dir")
        .arg(env.dir.join("state"))
        .arg("--rules-dir")
        .arg(&env.rules)
        // Its own pins, removed when it stops: nothing of a bench stays attached.
        .arg("--pin-dir")
        .arg(BENCH_PINS)
        .arg("--detach-on-exit")
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(fs::File::create(env.dir.join("daemon.log"))?)
        .spawn()
        .context("starting the daemon")?;
    let d = Daemon { child };
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&env.socket).is_err() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "daemon not ready; see {}",
                env.dir.join("daemon.log").display()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(d)
}

/// What the fanotify refusal layer adds where it refuses nothing: the daemon with it and
/// without it (`--no-refusal`), in alternating order per round, on the allowed-file open
/// loop and the exec storm, outside and inside a session. Its marks sit on the profile's
/// denied files and trees, and every filesystem is watched for execs (copies of denied
/// programs, fileless execs), so execs pay a round trip to the daemon and opens of other
/// files nothing.
fn refusal_cost(env: &Env, sizes: &Sizes, scenarios: &[Scenario]) -> Result<Value> {
    let picked: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| s.name == "open loop, 1 thread" || s.name == "exec storm")
        .collect();
    // samples[scenario][tracked][layer on]
    let mut samples = vec![[[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]]; picked.len()];
    for round in 0..sizes.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            let daemon = start_daemon_with(env, !on)?;
            for (i, sc) in picked.iter().enumerate() {
                for tracked in [false, true] {
                    samples[i][usize::from(tracked)][usize::from(on)]
                        .push(block(env, sc, tracked)?);
                }
            }
            drop(daemon);
        }
    }
    let rows: Vec<Value> = picked
        .iter()
        .zip(&samples)
        .flat_map(|(sc, s)| {
            [false, true].map(|tracked| {
                let [off, on] = &s[usize::from(tracked)];
                let (off, on) = (median(off), median(on));
                json!({
                    "name": sc.name,
                    "tracked": tracked,
                    "without_ns": off,
                    "with_ns": on,
                    "ratio": on / off,
                    "added_ns": on - off,
                })
            })
        })
        .collect();
    Ok(Value::Array(rows))
}

/// The drift analyser, out of band: how long an analysis of at least
/// `drift_actions` recorded actions takes (`agentwarden drift analyze` over the store,
/// the analyser's own code), and what it adds to the kernel path and the audit writer
/// while it runs. The store is filled by tracked exec storms (recorded sessions of the
/// bench profile) until it holds that many actions; then per round, in alternating
/// order, the daemon without its analyser (`--no-drift`) and with it (judging each
/// commit, every 100 ms) while an analysis of the whole store runs beside it, again and
/// again, at the analyser's priority (`SCHED_IDLE`): the tracked open loop and exec
/// storm in each.
fn drift_cost(env: &Env, sizes: &Sizes, scenarios: &[Scenario]) -> Result<Value> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let db = env.dir.join("state/audit.db");
    let count = || -> u64 {
        Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(\
                 'SELECT count(*) FROM actions').fetchone()[0])",
            ])
            .arg(&db)
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    };
    {
        let _daemon = start_daemon_args(env, &["--no-drift"])?;
        let mut sessions = 0;
        while count() < sizes.drift_actions || sessions < 10 {
            let st = load_cmd(env, true)
                .arg(&env.awload)
                .args(["exec", "--iters", &sizes.drift_spawns.to_string()])
                .stdout(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("the drift fill's exec storm failed");
            }
            sessions += 1;
            // The audit writer commits within its interval.
            thread::sleep(Duration::from_millis(300));
        }
    }
    let analyse = || -> Result<(u64, f64, Value)> {
        let out = Command::new("chrt")
            .args(["--idle", "0"])
            .arg(&env.agentwarden)
            .args(["drift", "analyze", "--db"])
            .arg(&db)
            .output()?;
        if !out.status.success() {
            bail!("drift analyze: {}", String::from_utf8_lossy(&out.stderr));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .find(|l| l.starts_with("analysed "))
            .ok_or_else(|| anyhow!("drift analyze said: {err}"))?;
        let w: Vec<&str> = line.split_whitespace().collect();
        let actions: u64 = w.get(1).and_then(|x| x.parse().ok()).unwrap_or(0);
        let secs: f64 = w.get(4).and_then(|x| x.parse().ok()).unwrap_or(0.0);
        Ok((actions, secs, json!(line)))
    };
    let mut times = Vec::new();
    let mut actions = 0;
    let mut line = Value::Null;
    for _ in 0..3 {
        let (a, s, l) = analyse()?;
        times.push(s);
        actions = a;
        line = l;
    }
    let picked: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| s.name == "open loop, 1 thread" || s.name == "exec storm")
        .collect();
    // samples[scenario][condition]: the analyser off, on, on with a whole-store analysis
    // beside; losses likewise.
    const CONDITIONS: [&str; 3] = ["off", "on", "on_beside"];
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; picked.len()];
    let mut losses = vec![[0u64; 3]; picked.len()];
    let mut analyses = 0u64;
    for round in 0..sizes.rounds {
        let order = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for cond in order {
            let args: &[&str] = if cond == 0 {
                &["--no-drift"]
            } else {
                &["--drift-interval", "100ms"]
            };
            let daemon = start_daemon_args(env, args)?;
            let stop = Arc::new(AtomicBool::new(false));
            let beside = (cond == 2).then(|| {
                let stop = stop.clone();
                let (agentwarden, db) = (env.agentwarden.clone(), db.clone());
                thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let st = Command::new("chrt")
                            .args(["--idle", "0"])
                            .arg(&agentwarden)
                            .args(["drift", "analyze", "--db"])
                            .arg(&db)
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                        if st.is_ok_and(|s| s.success()) {
                            n += 1;
                        }
                    }
                    n
                })
            });
            for (i, sc) in picked.iter().enumerate() {
                let before = status(env)?;
                samples[i][cond].push(block(env, sc, true)?);
                losses[i][cond] += loss(env, &before)?;
            }
            stop.store(true, Ordering::Relaxed);
            if let Some(t) = beside {
                analyses += t.join().unwrap_or(0);
            }
            drop(daemon);
        }
    }
    let rows: Vec<Value> = picked
        .iter()
        .zip(&samples)
        .zip(&losses)
        .map(|((sc, s), loss)| {
            let off = median(&s[0]);
            let mut row = json!({ "name": sc.name });
            for (c, name) in CONDITIONS.iter().enumerate() {
                let m = median(&s[c]);
                row[*name] = json!({
                    "median_ns": m,
                    "spread_pct": spread(&s[c]),
                    "ratio": m / off,
                    "added_ns": m - off,
                    "losses": loss[c],
                    "samples_ns": s[c],
                });
            }
            row
        })
        .collect();
    let secs = median(&times);
    Ok(json!({
        "actions": actions,
        "analysis_secs": secs,
        "actions_per_s": actions as f64 / secs,
        "secs_per_100k": secs * 100_000.0 / actions.max(1) as f64,
        "analysis_line": line,
        "analyses_beside": analyses,
        "interference": rows,
    }))
}

fn drift_markdown(d: &Value) -> String {
    let mut s = format!(
        "\nDrift analysis (`agentwarden drift analyze`, at idle priority) of {} recorded \
         actions: {:.2} s (median of 3), {:.0} actions/s, {:.2} s per 100 000 actions.\n\n\
         | scenario (tracked), beside the analyser | analyser off | analyser on (ratio) | \
         on, with a whole-store analysis beside (ratio) | losses off / on / beside |\n\
         |---|---|---|---|---|\n",
        d["actions"],
        d["analysis_secs"].as_f64().unwrap_or(0.0),
        d["actions_per_s"].as_f64().unwrap_or(0.0),
        d["secs_per_100k"].as_f64().unwrap_or(0.0),
    );
    for x in d["interference"].as_array().into_iter().flatten() {
        let ns = |c: &str| {
            format!(
                "{} ±{:.0}%",
                fmt_ns(x[c]["median_ns"].as_f64().unwrap_or(0.0)),
                x[c]["spread_pct"].as_f64().unwrap_or(0.0)
            )
        };
        let r = |c: &str| x[c]["ratio"].as_f64().unwrap_or(0.0);
        s.push_str(&format!(
            "| {} | {} | {} ({:.3}) | {} ({:.3}) | {} / {} / {} |\n",
            x["name"].as_str().unwrap_or(""),
            ns("off"),
            ns("on"),
            r("on"),
            ns("on_beside"),
            r("on_beside"),
            x["off"]["losses"],
            x["on"]["losses"],
            x["on_beside"]["losses"],
        ));
    }
    s.push_str(&format!(
        "\n{} whole-store analyses ran beside the measured blocks.\n",
        d["analyses_beside"]
    ));
    s
}

fn status(env: &Env) -> Result<Value> {
    let out = Command::new(&env.agentwarden)
        .arg("--socket")
        .arg(&env.socket)
        .args(["status", "--json"])
        .output()?;
    if !out.status.success() {
        bail!("status: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn kernel_counter(st: &Value, name: &str) -> u64 {
    st["kernel_counters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .and_then(|c| c["total"].as_u64())
        .unwrap_or(0)
}

fn losses_total(st: &Value) -> u64 {
    let k: u64 = ["ringbuf_drops", "stash_full", "session_map_full"]
        .iter()
        .map(|n| kernel_counter(st, n))
        .sum();
    let d = &st["daemon_counters"];
    // Sinks count too: a record the audit store or stdout dropped is a loss.
    k + ["decode_errors", "log_write_errors", "stdout_dropped"]
        .iter()
        .filter_map(|n| d[*n].as_u64())
        .sum::<u64>()
        + st["audit"]["dropped"].as_u64().unwrap_or(0)
}

/// Waits until the daemon has read every event the kernel submitted and the audit store
/// has committed its backlog, then returns the losses since `before`.
fn loss(env: &Env, before: &Value) -> Result<u64> {
    let start = Instant::now();
    loop {
        let st = status(env)?;
        let submitted = kernel_counter(&st, "events_submitted");
        let read = st["daemon_counters"]["records_read"].as_u64().unwrap_or(0);
        let backlog = st["audit"]["backlog"].as_u64().unwrap_or(0);
        if (read >= submitted && backlog == 0) || start.elapsed() > Duration::from_secs(10) {
            return Ok(losses_total(&st) - losses_total(before));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn load_cmd(env: &Env, tracked: bool) -> Command {
    let mut c = if tracked {
        session_cmd(env, None)
    } else {
        Command::new("env")
    };
    // Workloads run as a user's would: without the `LD_LIBRARY_PATH` cargo gives the
    // xtask, whose directories the dynamic loader would probe on every spawn (about 80
    // failed opens each, all of them events of a tracked spawn).
    c.env_remove("LD_LIBRARY_PATH");
    c
}

/// `agentwarden run --profile bench [--session-name NAME] --`, ready for the workload.
/// It starts in a directory of its own, neither holding the canary nor under a
/// directory that does: the name rules are bound to the files where a session starts,
/// and the canary stays for the kernel's own kill, as the profile intends.
fn session_cmd(env: &Env, name: Option<&str>) -> Command {
    let mut c = Command::new(&env.agentwarden);
    c.current_dir(&env.cwd);
    c.arg("--socket")
        .arg(&env.socket)
        .args(["run", "--profile", "bench"]);
    if let Some(name) = name {
        c.args(["--session-name", name]);
    }
    c.arg("--");
    c
}

/// What agentwarden's hooks add to each tool call of an agent: a session's shell makes
/// `calls` tool calls' worth of hook runs (`agentwarden hook claude-code` with a
/// PreToolUse and a PostToolUse report, answered by the daemon), side by side with the
/// same loop running `/bin/true` as the hook (the least any command hook costs).
fn hook_cost(env: &Env, sizes: &Sizes) -> Result<Value> {
    let pre = env.dir.join("hook-pre.json");
    let post = env.dir.join("hook-post.json");
    let report = |event: &str| {
        json!({
            "session_id": "bench", "hook_event_name": event, "prompt_id": "p",
            "tool_name": "Bash", "tool_input": {"command": "ls"}, "tool_use_id": "toolu_bench",
        })
        .to_string()
    };
    fs::write(&pre, report("PreToolUse"))?;
    fs::write(&post, report("PostToolUse"))?;
    let hook_socket = env.socket.with_file_name("hook.sock");
    let time = |hook: &str| -> Result<f64> {
        let script = format!(
            "i=0; while [ $i -lt {n} ]; do {hook} < {pre}; {hook} < {post}; i=$((i+1)); done",
            n = sizes.hook_calls,
            pre = pre.display(),
            post = post.display()
        );
        let start = Instant::now();
        let out = session_cmd(env, None)
            .args(["/bin/sh", "-c", &script])
            .env("AGENTWARDEN_HOOK_SOCKET", &hook_socket)
            .stdout(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("hook loop failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(start.elapsed().as_nanos() as f64 / sizes.hook_calls as f64)
    };
    let ours = format!("'{}' hook claude-code", env.agentwarden.display());
    // Alternated, and the median of three of each.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        a.push(time(&ours)?);
        b.push(time("/bin/true")?);
    }
    let (with, trivial) = (median(&a), median(&b));
    Ok(json!({
        "calls": sizes.hook_calls,
        "per_call_ns": with,
        "trivial_hook_per_call_ns": trivial,
        "added_per_call_ns": with - trivial,
        "ratio": with / trivial,
    }))
}

/// An auto-approving webhook: answers every request `approve`, signed with the secret
/// in `argv[1]`; prints its port.
const APPROVER: &str = r#"
import hashlib, hmac, http.server, json, sys
secret = open(sys.argv[1], 'rb').read().strip()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_POST(self):
        self.rfile.read(int(self.headers['Content-Length']))
        answer = b'{"answer":"approve","approver":"bench"}'
        self.send_response(200)
        self.send_header('Content-Length', str(len(answer)))
        self.send_header('X-Agentwarden-Signature', 'sha256=' + hmac.new(secret, answer, hashlib.sha256).hexdigest())
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// What holding an operation for approval costs beside the person: a session's shell
/// reads a file an `ask` rule names `n` times (each `cat` a new process, so each read is
/// held: an approval's `once` reaches only the process that asked), approved at once by
/// a webhook on loopback; side by side with the same loop on a file no rule names. The
/// difference is the machine's part of a held-then-approved action: the fanotify round
/// trip, the request, the signed HTTP exchange, the answer.
fn approval_cost(env: &Env, sizes: &Sizes) -> Result<Value> {
    use std::{io::BufRead as _, os::unix::fs::PermissionsExt as _};
    let held = env.dir.join("held.txt");
    fs::write(&held, "held\n")?;
    fs::write(
        env.rules.join("ask.yaml"),
        format!(
            "name: ask\ndescription: approval benchmark\n\
             owners: {{ business: bench, technical: bench }}\nmode: enforce\n\
             files:\n  deny: [{}]\n  on_violation: ask\n  timeout: 30s\n",
            held.display()
        ),
    )?;
    let secret = env.dir.join("approval.secret");
    fs::write(&secret, "bench-approval-secret\n")?;
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))?;
    let mut server = Command::new("python3")
        .args(["-c", APPROVER])
        .arg(&secret)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the approving webhook (python3)")?;
    let mut port = String::new();
    std::io::BufReader::new(server.stdout.take().expect("piped")).read_line(&mut port)?;
    let url = format!("http://127.0.0.1:{}/", port.trim());
    let result = (|| {
        let _daemon = start_daemon_args(
            env,
            &[
                "--approval-webhook",
                &url,
                "--approval-webhook-secret-file",
                &secret.display().to_string(),
            ],
        )?;
        let time = |file: &Path| -> Result<f64> {
            let script = format!(
                "i=0; while [ $i -lt {n} ]; do cat {f} >/dev/null || exit 1; i=$((i+1)); done",
                n = sizes.approvals,
                f = file.display()
            );
            let start = Instant::now();
            let out = Command::new(&env.agentwarden)
                .current_dir(&env.cwd)
                .arg("--socket")
                .arg(&env.socket)
                .args(["run", "--profile", "ask", "--", "/bin/sh", "-c", &script])
                .stdout(Stdio::null())
                .output()?;
            if !out.status.success() {
                bail!(
                    "approval loop failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(start.elapsed().as_nanos() as f64 / sizes.approvals as f64)
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            a.push(time(&held)?);
            b.push(time(&env.file)?);
        }
        let (with, plain) = (median(&a), median(&b));
        Ok(json!({
            "reads": sizes.approvals,
            "held_per_read_ns": with,
            "plain_per_read_ns": plain,
            "added_per_read_ns": with - plain,
        }))
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// One block of one scenario: nanoseconds per operation.
fn block(env: &Env, sc: &Scenario, tracked: bool) -> Result<f64> {
    block_under(env, sc, load_cmd(env, tracked))
}

/// One block of one scenario under a peer.
fn peer_block(env: &Env, sc: &Scenario, peer: &peers::Running, cx: &peers::Ctx) -> Result<f64> {
    let mut prefix = peer.wrap(cx);
    prefix.env_remove("LD_LIBRARY_PATH");
    block_under(env, sc, prefix).with_context(|| format!("{} under {}", sc.name, peer.peer.name()))
}

/// One block of one scenario, the workload run by `prefix` (a condition's command,
/// ready for the program and its arguments).
fn block_under(env: &Env, sc: &Scenario, mut prefix: Command) -> Result<f64> {
    if sc.args.is_empty() {
        return build_block(env, prefix);
    }
    let out = prefix
        .arg(&env.awload)
        .args(&sc.args)
        .output()
        .context("running awload")?;
    if !out.status.success() {
        bail!(
            "{} ({:?}): {}",
            sc.name,
            prefix.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let (ops, ns) = (v["ops"].as_f64(), v["ns"].as_f64());
    match (ops, ns) {
        (Some(o), Some(n)) if o > 0.0 => Ok(n / o),
        _ => Err(anyhow!("{}: unexpected output {v}", sc.name)),
    }
}

fn build_block(env: &Env, mut prefix: Command) -> Result<f64> {
    let target = env.dir.join("crate-target");
    let _ = fs::remove_dir_all(&target);
    // Empty but there: the Landlock peer grants writes under it by path.
    fs::create_dir_all(&target)?;
    let start = Instant::now();
    let st = prefix
        .args(["cargo", "build", "--offline", "--quiet", "--manifest-path"])
        .arg(env.crate_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()?;
    if !st.success() {
        bail!("cargo build of the bench crate failed");
    }
    Ok(start.elapsed().as_nanos() as f64)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// (max - min) / median, in percent.
fn spread(v: &[f64]) -> f64 {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    (hi - lo) / median(v) * 100.0
}

/// One condition's samples against the `off` median: median, spread, ratio, time added.
fn versus_off(samples: &[f64], off: f64) -> Value {
    let m = median(samples);
    json!({
        "median_ns": m,
        "spread_pct": spread(samples),
        "ratio": m / off,
        "added_ns": m - off,
        "samples_ns": samples,
    })
}

fn summarize(sc: &Scenario, s: &[Vec<f64>; 3], losses: u64) -> Value {
    let off = median(&s[0]);
    let cond = |i: usize, max: Option<f64>| {
        let mut v = versus_off(&s[i], off);
        let ratio = v["ratio"].as_f64().unwrap_or(f64::NAN);
        v["target_ratio"] = json!(max);
        v["met"] = json!(max.map(|t| ratio <= t));
        v
    };
    json!({
        "name": sc.name,
        "measure": sc.measure,
        "off": { "median_ns": off, "spread_pct": spread(&s[0]), "samples_ns": s[0] },
        "untracked": cond(1, sc.untracked_max),
        "tracked": cond(2, sc.tracked_max),
        "losses": losses,
    })
}

fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `)` of comm: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// RSS of the daemon's mappings of BPF maps: almost all of it the ring buffer, whose
/// data pages the kernel maps twice (and populates at mmap). The memory is the kernel's
/// ring, which exists whether or not the daemon maps it.
fn bpf_map_rss_kib(pid: u32) -> u64 {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut in_map = false;
    let mut kib = 0;
    for l in smaps.lines() {
        if let Some(rss) = l.strip_prefix("Rss:") {
            if in_map {
                kib += rss
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        } else if l
            .split_whitespace()
            .next()
            .and_then(|range| range.split_once('-'))
            .is_some_and(|(a, _)| u64::from_str_radix(a, 16).is_ok())
        {
            // A mapping's header line: `start-end perms offset dev inode [name]`.
            in_map = l.ends_with("anon_inode:bpf-map");
        }
    }
    kib
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The highest event rate of the throughput steps that lost nothing.
fn zero_loss_rate(steps: &[Value]) -> f64 {
    steps
        .iter()
        .filter(|t| t["drops"] == 0)
        .filter_map(|t| t["events_per_s"].as_f64())
        .fold(0.0, f64::max)
}

/// A tracked generator at doubling rates; the highest rate with zero losses counts.
fn throughput(env: &Env, sizes: &Sizes) -> Result<Vec<Value>> {
    let pid = status(env)?["daemon_pid"].as_u64().unwrap_or(0) as u32;
    let mut out = Vec::new();
    for &rate in sizes.rates {
        let before = status(env)?;
        let cpu0 = proc_cpu_ticks(pid);
        let start = Instant::now();
        let o = load_cmd(env, true)
            .arg(&env.awload)
            .args(["mix", "--rate", &rate.to_string(), "--secs"])
            .arg(sizes.mix_secs.to_string())
            .arg("--path")
            .arg(&env.file)
            .output()?;
        if !o.status.success() {
            bail!("mix at {rate}/s: {}", String::from_utf8_lossy(&o.stderr));
        }
        let drops = loss(env, &before)?;
        let wall = start.elapsed().as_secs_f64();
        let after = status(env)?;
        let events = kernel_counter(&after, "events_submitted")
            - kernel_counter(&before, "events_submitted");
        let v: Value = serde_json::from_slice(&o.stdout)?;
        let secs = v["ns"].as_f64().unwrap_or(1.0) / 1e9;
        let cores = (proc_cpu_ticks(pid) - cpu0) as f64 / clock_ticks() / wall;
        eprintln!(
            "bench: mix at {rate}/s: {:.0} events/s, {drops} lost, daemon {cores:.2} cores",
            events as f64 / secs
        );
        let per_event_us = cores * wall / events.max(1) as f64 * 1e6;
        out.push(json!({
            "target_ops_per_s": rate,
            "ops_per_s": v["ops"].as_f64().unwrap_or(0.0) / secs,
            "events_per_s": events as f64 / secs,
            "drops": drops,
            "daemon_cores": cores,
            "daemon_us_per_event": per_event_us,
            "events_per_daemon_core": 1e6 / per_event_us.max(1e-3),
        }));
        if drops > 0 {
            break;
        }
    }
    Ok(out)
}

/// The RSS of a daemon just started (a few seconds to settle), before any burst, with
/// the ring buffer counted once.
fn fresh_rss_kib(daemon: &Daemon) -> u64 {
    thread::sleep(Duration::from_secs(3));
    let pid = daemon.child.id();
    ring_once_kib(rss_kib(pid), bpf_map_rss_kib(pid))
}

/// `rss` with the ring buffer's data pages, which the kernel maps twice (so a record
/// wrapping the end reads contiguously), counted once: `maps` is the RSS of the BPF
/// map mappings, almost all of it the ring's two copies.
fn ring_once_kib(rss: u64, maps: u64) -> u64 {
    rss.saturating_sub(maps / 2)
}

/// Idle and loaded CPU and memory after the throughput steps; the RSS the target is
/// held to counts the ring buffer once (see [`ring_once_kib`]).
fn footprint(
    env: &Env,
    sizes: &Sizes,
    daemon: &Daemon,
    max_rate: f64,
    fresh_kib: u64,
) -> Result<Value> {
    let pid = daemon.child.id();
    let hz = clock_ticks();
    // Idle means idle: the previous scenario's records read and committed first (the
    // audit writer may still be catching up on the top throughput step), then a moment
    // for the daemon to return its memory.
    loss(env, &status(env)?)?;
    thread::sleep(Duration::from_secs(2));
    let cpu0 = proc_cpu_ticks(pid);
    thread::sleep(Duration::from_secs(sizes.idle_secs));
    let idle_mcores = (proc_cpu_ticks(pid) - cpu0) as f64 / hz / sizes.idle_secs as f64 * 1000.0;
    let idle_rss = rss_kib(pid);
    let maps_rss = bpf_map_rss_kib(pid);
    // Half the highest zero-loss event rate, in generator operations (about one event
    // per operation).
    let rate = ((max_rate / 2.0) as u64).max(1_000);
    let cpu1 = proc_cpu_ticks(pid);
    let start = Instant::now();
    let o = load_cmd(env, true)
        .arg(&env.awload)
        .args(["mix", "--rate", &rate.to_string(), "--secs"])
        .arg(sizes.load_secs.to_string())
        .arg("--path")
        .arg(&env.file)
        .output()?;
    if !o.status.success() {
        bail!("mix under load: {}", String::from_utf8_lossy(&o.stderr));
    }
    let wall = start.elapsed().as_secs_f64();
    let load_mcores = (proc_cpu_ticks(pid) - cpu1) as f64 / hz / wall * 1000.0;
    Ok(json!({
        "idle_secs": sizes.idle_secs,
        "idle_millicores": idle_mcores,
        "idle_rss_mib": idle_rss as f64 / 1024.0,
        "idle_bpf_map_rss_mib": maps_rss as f64 / 1024.0,
        "idle_rss_ring_once_mib": ring_once_kib(idle_rss, maps_rss) as f64 / 1024.0,
        "fresh_rss_ring_once_mib": fresh_kib as f64 / 1024.0,
        "load_ops_per_s": rate,
        "load_millicores": load_mcores,
        "load_rss_mib": rss_kib(pid) as f64 / 1024.0,
    }))
}

/// Session name of the kill-latency run, to find its events afterwards (the state
/// directory may hold earlier runs).
fn kill_session() -> String {
    format!("bench-kill-{}", std::process::id())
}

fn latency(env: &Env, sizes: &Sizes) -> Result<Value> {
    let o = session_cmd(env, Some(&kill_session()))
        .arg(&env.awload)
        .args(["kill-latency", "--iters", &sizes.latency_iters.to_string()])
        .arg("--path")
        .arg(&env.canary)
        .output()?;
    if !o.status.success() {
        bail!("kill latency: {}", String::from_utf8_lossy(&o.stderr));
    }
    let kill: Value = serde_json::from_slice(&o.stdout)?;
    let st = status(env)?;
    let lsm = st["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["name"] == "file_open" && p["state"] == "attached");
    let in_kernel = kill_in_kernel(env, sizes.latency_iters)?;
    let block = connect_latency(env, sizes, true)?;
    Ok(json!({
        "kill": kill,
        "kill_in_kernel": in_kernel,
        "kill_layer": if lsm { "lsm" } else { "signal" },
        "block_connect": block,
    }))
}

/// The kill as the kernel saw it: from the event of the violating `open` (stamped in the
/// hook that decided) to the `exit` event of the same process (stamped in
/// `sched_process_exit`). Both stamps come from the same kernel clock, so no wake-up or
/// clock conversion is in the figure.
fn kill_in_kernel(env: &Env, iters: u64) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The audit store, indexed by session (the event log would be read whole).
        let o = Command::new(&env.agentwarden)
            .arg("audit")
            .arg("--db")
            .arg(env.dir.join("state/audit.db"))
            .args(["query", "--session", &kill_session(), "--json"])
            .output()?;
        if !o.status.success() {
            bail!("audit query: {}", String::from_utf8_lossy(&o.stderr));
        }
        let mut decided = std::collections::HashMap::new();
        let mut exited = std::collections::HashMap::new();
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let v: Value = serde_json::from_str(line)?;
            let pid = v["process"]["pid"].as_u64().unwrap_or(0);
            let t = humantime::parse_rfc3339(v["time"].as_str().unwrap_or(""))
                .with_context(|| format!("event time in {line}"))?;
            match v["kind"].as_str() {
                Some("open") if v["decision"]["action"] == "killed" => {
                    decided.entry(pid).or_insert(t);
                }
                Some("exit") => {
                    exited.insert(pid, t);
                }
                _ => {}
            }
        }
        let mut lat: Vec<u64> = decided
            .iter()
            .filter_map(|(pid, t0)| exited.get(pid)?.duration_since(*t0).ok())
            .map(|d| d.as_nanos() as u64)
            .collect();
        if lat.len() as u64 >= iters {
            lat.sort_unstable();
            let rank = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
            return Ok(json!({
                "n": lat.len(), "p50_ns": rank(0.5), "p99_ns": rank(0.99), "max_ns": rank(1.0)
            }));
        }
        if Instant::now() > deadline {
            bail!(
                "kill latency: {} of {iters} kills have both their decision and exit events",
                lat.len()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `connect` to the denied port: blocked (`EPERM`) when tracked; refused by the stack
/// (`ECONNREFUSED`, nothing listens) off — the same call without agentwarden.
fn connect_latency(env: &Env, sizes: &Sizes, tracked: bool) -> Result<Value> {
    let o = load_cmd(env, tracked)
        .arg(&env.awload)
        .args(["connect-latency", "--iters"])
        .arg((sizes.latency_iters * 10).to_string())
        .args(["--port", &DENIED_PORT.to_string()])
        .output()?;
    if !o.status.success() {
        bail!("connect latency: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(serde_json::from_slice(&o.stdout)?)
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn ratio_cell(c: &Value) -> String {
    let r = c["ratio"].as_f64().unwrap_or(f64::NAN);
    let target = c["target_ratio"]
        .as_f64()
        .map_or(String::new(), |t| format!(" (≤ {:.1}%)", (t - 1.0) * 100.0));
    let mark = match c["met"].as_bool() {
        Some(true) => " ✓",
        Some(false) => " ✗",
        None => "",
    };
    format!(
        "{:+.1}%{target}{mark} ±{:.0}%",
        (r - 1.0) * 100.0,
        c["spread_pct"].as_f64().unwrap_or(0.0)
    )
}

fn markdown(r: &Value) -> String {
    let mut s = format!(
        "Kernel {}, {} CPUs, {} round(s) per condition{}.\n\n\
         | scenario | measure | off (median ±spread) | on-untracked | on-tracked | added per op (tracked) | losses |\n\
         |---|---|---|---|---|---|---|\n",
        r["kernel"].as_str().unwrap_or("?"),
        r["cpus"],
        r["rounds"],
        if r["quick"] == true {
            " (quick smoke run: figures are not meaningful)"
        } else {
            ""
        }
    );
    for sc in r["scenarios"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {} ±{:.0}% | {} | {} | {} | {} |\n",
            sc["name"].as_str().unwrap_or(""),
            sc["measure"].as_str().unwrap_or(""),
            fmt_ns(sc["off"]["median_ns"].as_f64().unwrap_or(0.0)),
            sc["off"]["spread_pct"].as_f64().unwrap_or(0.0),
            ratio_cell(&sc["untracked"]),
            ratio_cell(&sc["tracked"]),
            fmt_ns(sc["tracked"]["added_ns"].as_f64().unwrap_or(0.0)),
            sc["losses"],
        ));
    }
    s.push_str(&peers_markdown(r));
    s.push_str(
        "\n| refusal layer (fanotify): scenario | session | without | with | ratio | added per op |\n|---|---|---|---|---|---|\n",
    );
    for x in r["refusal_layer"].as_array().into_iter().flatten() {
        let (without, with) = (
            x["without_ns"].as_f64().unwrap_or(0.0),
            x["with_ns"].as_f64().unwrap_or(0.0),
        );
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {} |\n",
            x["name"].as_str().unwrap_or(""),
            if x["tracked"] == true {
                "tracked"
            } else {
                "untracked"
            },
            fmt_ns(without),
            fmt_ns(with),
            x["ratio"].as_f64().unwrap_or(0.0),
            fmt_ns(with - without),
        ));
    }
    s.push_str(
        "\n| throughput: target ops/s | achieved events/s | losses | daemon cores | daemon µs/event | events/s per daemon core |\n|---|---|---|---|---|---|\n",
    );
    for t in r["throughput"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {:.0} | {} | {:.2} | {:.2} | {:.0} |\n",
            t["target_ops_per_s"],
            t["events_per_s"].as_f64().unwrap_or(0.0),
            t["drops"],
            t["daemon_cores"].as_f64().unwrap_or(0.0),
            t["daemon_us_per_event"].as_f64().unwrap_or(0.0),
            t["events_per_daemon_core"].as_f64().unwrap_or(0.0),
        ));
    }
    let f = &r["footprint"];
    let l = &r["latency"];
    let p = |v: &Value, k: &str| fmt_ns(v[k].as_f64().unwrap_or(0.0));
    s.push_str(&format!(
        "\nHighest rate with zero losses: **{:.0} events/s** (target ≥ 250k on ≤ 1 daemon core).\n\n\
         Footprint: idle {:.1} millicores, **{:.1} MiB RSS with the ring buffer counted once** \
         ({:.1} MiB as `VmRSS` counts it, of which {:.1} MiB are BPF maps mapped into the daemon: \
         the ring buffer, its data pages mapped twice) over {} s after the throughput steps \
         (target ≤ 10 millicores, ≤ 50 MiB); {:.1} MiB when just started; \
         at {} ops/s (half the zero-loss rate) {:.0} millicores, {:.1} MiB.\n\n\
         Kill latency ({} layer) in the kernel, from the hook that decided to `sched_process_exit` \
         of the killed reader (kernel timestamps of its two events): p50 {}, p99 {}, max {} over {} \
         kills (target p99 ≤ 50 µs). Seen from user space, from just before `open` of the denied \
         canary to `waitpid` returning in the parent (so with the parent's wake-up): p50 {}, p99 {}, \
         max {}; {} of {} killed, {} leaked a byte.\n\n\
         Block latency (cgroup, `connect` to a denied port): p50 {}, p99 {} (`EPERM`); the same call \
         without agentwarden (`ECONNREFUSED`): p50 {}, p99 {} (target: block adds ≤ 1 µs).\n\n\
         Agent hooks: a tool call's two hook runs (`agentwarden hook claude-code`, PreToolUse and \
         PostToolUse, answered by the daemon) take {} per call, against {} with `/bin/true` as \
         the hook ({:.2}×; {} added per call, over {} calls).\n\n\
         Held for approval: a read an `ask` rule holds, approved at once by a webhook on \
         loopback (signed request and answer), takes {} per `cat` against {} for a file no \
         rule names: {} added per held-then-approved read, excluding the person's time \
         (over {} reads).\n",
        r["max_zero_drop_events_per_s"].as_f64().unwrap_or(0.0),
        f["idle_millicores"].as_f64().unwrap_or(0.0),
        f["idle_rss_ring_once_mib"].as_f64().unwrap_or(0.0),
        f["idle_rss_mib"].as_f64().unwrap_or(0.0),
        f["idle_bpf_map_rss_mib"].as_f64().unwrap_or(0.0),
        f["idle_secs"],
        f["fresh_rss_ring_once_mib"].as_f64().unwrap_or(0.0),
        f["load_ops_per_s"],
        f["load_millicores"].as_f64().unwrap_or(0.0),
        f["load_rss_mib"].as_f64().unwrap_or(0.0),
        l["kill_layer"].as_str().unwrap_or("?"),
        p(&l["kill_in_kernel"], "p50_ns"),
        p(&l["kill_in_kernel"], "p99_ns"),
        p(&l["kill_in_kernel"], "max_ns"),
        l["kill_in_kernel"]["n"],
        p(&l["kill"]["latency"], "p50_ns"),
        p(&l["kill"]["latency"], "p99_ns"),
        p(&l["kill"]["latency"], "max_ns"),
        l["kill"]["killed"],
        l["kill"]["iters"],
        l["kill"]["leaked"],
        p(&l["block_connect"]["latency"], "p50_ns"),
        p(&l["block_connect"]["latency"], "p99_ns"),
        p(&r["connect_off"]["latency"], "p50_ns"),
        p(&r["connect_off"]["latency"], "p99_ns"),
        p(&r["hook"], "per_call_ns"),
        p(&r["hook"], "trivial_hook_per_call_ns"),
        r["hook"]["ratio"].as_f64().unwrap_or(0.0),
        p(&r["hook"], "added_per_call_ns"),
        r["hook"]["calls"],
        p(&r["approval"], "held_per_read_ns"),
        p(&r["approval"], "plain_per_read_ns"),
        p(&r["approval"], "added_per_read_ns"),
        r["approval"]["reads"],
    ));
    s
}

/// The ratio chart, drawn by matplotlib (installed by `cargo xtask setup`).
fn chart(out: &Path) -> Result<()> {
    let script = workspace_root().join("xtask/bench_chart.py");
    run_cmd(
        Command::new("python3")
            .arg(script)
            .arg(out.join("results.json"))
            .arg(out.join("overhead.png")),
    )
}

/// A free loopback port (bound and let go): the connect loops' listener.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What the peers are told of the bench: the files and programs the bench profile
/// denies, and what the workloads need.
fn peer_ctx(env: &Env) -> peers::Ctx<'_> {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let mut build_dirs = vec![
        env.crate_dir.clone(),
        env.dir.join("crate-target"),
        PathBuf::from("/tmp"),
    ];
    for var in ["CARGO_HOME", "RUSTUP_HOME"] {
        if let Some(d) = std::env::var_os(var) {
            build_dirs.push(d.into());
        }
    }
    build_dirs.extend([home.join(".cargo"), home.join(".rustup")]);
    // The target directory does not exist until a build makes it: Landlock needs a path
    // to grant (the peer's start runs the sandbox once), so it is made empty here.
    let _ = fs::create_dir_all(env.dir.join("crate-target"));
    build_dirs.retain(|d| d.exists());
    peers::Ctx {
        dir: &env.dir,
        agentwarden: &env.agentwarden,
        awload: &env.awload,
        allowed: &env.file,
        denied_files: [".ssh", ".aws", ".config/gcloud", ".kube", ".netrc"]
            .iter()
            .map(|p| home.join(p))
            .chain([PathBuf::from("/etc/shadow"), env.canary.clone()])
            .collect(),
        denied_programs: ["nc", "ncat", "netcat", "socat", "telnet"]
            .iter()
            .map(|p| Path::new("/usr/bin").join(p))
            .collect(),
        port: env.port,
        build_dirs,
        // Cargo reads the configuration of every directory above where it runs (the
        // workspace's own, here).
        build_reads: [workspace_root().join(".cargo")]
            .into_iter()
            .filter(|d| d.exists())
            .collect(),
    }
}

/// One peer's samples over the rounds.
struct PeerRun {
    peer: peers::Peer,
    /// Why it could not run here (then it has no samples).
    unavailable: Option<String>,
    /// Nanoseconds per operation per scenario, one per round.
    samples: Vec<Vec<f64>>,
    losses: Vec<u64>,
}

impl PeerRun {
    /// The peer started, every scenario's block under it, the peer stopped.
    fn round(&mut self, env: &Env, cx: &peers::Ctx, scenarios: &[Scenario]) -> Result<()> {
        let running = match self.peer.start(cx) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("bench: {} not measured: {e:#}", self.peer.name());
                self.unavailable = Some(format!("{e:#}"));
                return Ok(());
            }
        };
        for (i, sc) in scenarios.iter().enumerate() {
            let (lost, written) = (running.lost(), running.written());
            self.samples[i].push(peer_block(env, sc, &running, cx)?);
            // Records reach the file a moment later (auditd's and bpftrace's buffers).
            let start = Instant::now();
            while self.peer.observes() && running.written() == written {
                if start.elapsed() > Duration::from_secs(10) {
                    bail!(
                        "{} recorded nothing of {}: the bench's selection of the workload is broken",
                        self.peer.name(),
                        sc.name
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
            self.losses[i] += running.lost().saturating_sub(lost);
        }
        running.stop()
    }
}

/// Each peer's figures for scenario `i` against its `off` median.
fn peer_summaries(runs: &[PeerRun], i: usize, off: f64) -> Value {
    runs.iter()
        .map(|r| {
            if let Some(why) = &r.unavailable {
                return json!({ "name": r.peer.name(), "unavailable": why });
            }
            let mut v = versus_off(&r.samples[i], off);
            v["name"] = json!(r.peer.name());
            v["losses"] = json!(r.losses[i]);
            v
        })
        .collect()
}

/// agentwarden's tracked overhead beside each peer's, per scenario, and what each peer
/// does (and, where one could not run, why).
fn peers_markdown(r: &Value) -> String {
    let peers: Vec<&Value> = r["peers"].as_array().into_iter().flatten().collect();
    if peers.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n| peers: scenario | agentwarden tracked |");
    for p in &peers {
        s.push_str(&format!(" {} |", p["name"].as_str().unwrap_or("?")));
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---|".repeat(peers.len()));
    s.push('\n');
    let lost = |v: &Value| match v["losses"].as_u64() {
        Some(0) | None => String::new(),
        Some(n) => format!(", lost {n}"),
    };
    let pct = |c: &Value| {
        format!(
            "{:+.1}% ±{:.0}%",
            (c["ratio"].as_f64().unwrap_or(f64::NAN) - 1.0) * 100.0,
            c["spread_pct"].as_f64().unwrap_or(0.0)
        )
    };
    for sc in r["scenarios"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {}{} |",
            sc["name"].as_str().unwrap_or(""),
            pct(&sc["tracked"]),
            lost(sc)
        ));
        for p in sc["peers"].as_array().into_iter().flatten() {
            if p["unavailable"].is_string() {
                s.push_str(" n/a |");
                continue;
            }
            s.push_str(&format!(" {}{} |", pct(p), lost(p)));
        }
        s.push('\n');
    }
    s.push('\n');
    for p in &peers {
        s.push_str(&format!(
            "- {}: {}{}\n",
            p["name"].as_str().unwrap_or("?"),
            p["does"].as_str().unwrap_or(""),
            p["unavailable"]
                .as_str()
                .map_or(String::new(), |w| format!(" — **not measured here: {w}**"))
        ));
    }
    s
}
