//! `cargo xtask bench --only profile`: where the daemon's time goes per tracked action.
//! The exec storm and the throughput step's event mix (opens spread over 64 files, so
//! each is a record and none a counted repeat, and connects) run in a session while `perf` samples
//! the daemon with call graphs; each daemon thread's CPU time over the block comes
//! from its scheduler statistics (nanoseconds on the CPU, not clock ticks), so the
//! figure per action does not depend on how many CPUs the machine has. The samples
//! become a flame graph per scenario (`target/bench/flame-<scenario>.svg`), and the
//! functions the daemon spends itself in are listed in `profile.md`.

use std::{
    collections::BTreeMap,
    io::{BufReader, Write as _},
};

use super::*;

/// Sampling rate. Call graphs are unwound from copies of the stack (`dwarf`: a release
/// build keeps no frame pointers, and its `.eh_frame` suffices), so the rate stays low
/// enough for the copies to stay small.
const FREQ: &str = "499";
/// Bytes of stack copied per sample.
const STACK: &str = "dwarf,16384";

/// Operations per second of the profiled event mix: the throughput step's highest
/// zero-loss rate in recent runs.
const MIX_RATE: &str = "100000";

/// Functions listed per scenario in the report.
const TOP: usize = 15;

pub(super) fn run(env: &Env, scenarios: &[Scenario]) -> Result<()> {
    if Command::new("perf").arg("--version").output().is_err() {
        bail!("perf is not installed: run `cargo xtask setup` (package linux-perf)");
    }
    let out = workspace_root().join("target/bench");
    let mut report = Vec::new();
    let storm = scenarios
        .iter()
        .find(|s| s.name == "exec storm")
        .ok_or_else(|| anyhow!("no scenario exec storm"))?;
    // The open loops' one file is a counted repeat after its first open (the kernel
    // counts them): the daemon's cost per record is the throughput step's mix.
    let mix = Scenario {
        name: "event mix",
        measure: "paced opens of 64 files and connects",
        args: ["mix", "--rate", MIX_RATE, "--secs", "4", "--path"]
            .iter()
            .map(|a| a.to_string())
            .chain([env.file.display().to_string()])
            .collect(),
        untracked_max: None,
        tracked_max: None,
    };
    for sc in [storm, &mix] {
        let slug = sc
            .name
            .split(',')
            .next()
            .unwrap_or(sc.name)
            .replace(' ', "-");
        let daemon = start_daemon(env)?;
        report.push(profile_block(env, sc, &daemon, &out, &slug)?);
        drop(daemon);
    }
    let report = Value::Array(report);
    fs::write(
        out.join("profile.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&report);
    fs::write(out.join("profile.md"), &md)?;
    println!("{md}");
    Ok(())
}

/// One tracked block of `sc` under `perf`; its figures.
fn profile_block(
    env: &Env,
    sc: &Scenario,
    daemon: &Daemon,
    out: &Path,
    slug: &str,
) -> Result<Value> {
    let pid = daemon.child.id();
    let data = out.join(format!("perf-{slug}.data"));
    let mut perf = Command::new("perf")
        .args(["record", "-F", FREQ, "--call-graph", STACK, "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record")?;
    // perf opens its events on each of the daemon's threads before the block starts.
    thread::sleep(Duration::from_millis(500));
    let before = thread_ns(pid);
    let o = load_cmd(env, true)
        .arg(&env.awload)
        .args(&sc.args)
        .output()
        .context("running awload")?;
    // The block's records are read and committed before the threads are measured.
    loss(env, &status(env)?)?;
    let after = thread_ns(pid);
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let recorded = perf.wait()?;
    if !o.status.success() {
        bail!("{}: {}", sc.name, String::from_utf8_lossy(&o.stderr));
    }
    // perf re-raises the SIGINT it stopped on once its data is written.
    if !recorded.success() && std::os::unix::process::ExitStatusExt::signal(&recorded) != Some(2) {
        bail!("perf record failed ({recorded}) on the daemon pid {pid}");
    }
    let v: Value = serde_json::from_slice(&o.stdout)?;
    let ops = v["ops"]
        .as_f64()
        .filter(|o| *o > 0.0)
        .ok_or_else(|| anyhow!("{}: {v}", sc.name))?;
    let threads: Vec<Value> = after
        .iter()
        .map(|(name, ns)| {
            let spent = ns.saturating_sub(before.get(name).copied().unwrap_or(0));
            json!({ "thread": name, "us_per_op": spent as f64 / ops / 1e3 })
        })
        .filter(|t| t["us_per_op"].as_f64().unwrap_or(0.0) > 0.0)
        .collect();
    let folded = fold(&data)?;
    let svg = out.join(format!("flame-{slug}.svg"));
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!(
        "agentwarden daemon: {} in a session ({} ops, {} Hz)",
        sc.name, ops, FREQ
    );
    opts.count_name = "samples".into();
    inferno::flamegraph::from_lines(
        &mut opts,
        folded.lines(),
        fs::File::create(&svg).with_context(|| format!("creating {}", svg.display()))?,
    )
    .context("drawing the flame graph")?;
    let _ = fs::remove_file(&data);
    Ok(json!({
        "scenario": sc.name,
        "ops": ops,
        "threads": threads,
        "top_self": top_self(&folded),
        "flame_graph": svg.strip_prefix(workspace_root()).unwrap_or(&svg).display().to_string(),
    }))
}

/// Nanoseconds each live thread of `pid` has run, summed by thread name.
fn thread_ns(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let p = t.path();
        let comm = fs::read_to_string(p.join("comm")).unwrap_or_default();
        let ns = fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        *out.entry(comm.trim().to_owned()).or_default() += ns;
    }
    out
}

/// perf's samples folded into one line per stack (`thread;outer;…;inner count`).
fn fold(data: &Path) -> Result<String> {
    let script = Command::new("perf")
        .arg("script")
        .arg("-i")
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("perf script")?;
    if !script.status.success() {
        bail!("perf script failed on {}", data.display());
    }
    let mut folded = Vec::new();
    let mut folder =
        inferno::collapse::perf::Folder::from(inferno::collapse::perf::Options::default());
    inferno::collapse::Collapse::collapse(
        &mut folder,
        BufReader::new(&script.stdout[..]),
        &mut folded,
    )
    .context("folding perf's stacks")?;
    folded.flush()?;
    Ok(String::from_utf8_lossy(&folded).into_owned())
}

/// The innermost functions by their share of all samples.
fn top_self(folded: &str) -> Vec<Value> {
    let mut by_fn: BTreeMap<&str, u64> = BTreeMap::new();
    let mut total = 0u64;
    for line in folded.lines() {
        let Some((stack, n)) = line.rsplit_once(' ') else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        total += n;
        let leaf = stack.rsplit(';').next().unwrap_or(stack);
        *by_fn.entry(leaf).or_default() += n;
    }
    let mut v: Vec<(&str, u64)> = by_fn.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.into_iter()
        .take(TOP)
        .map(|(f, n)| json!({ "function": f, "share": n as f64 / total.max(1) as f64 }))
        .collect()
}

fn markdown(report: &Value) -> String {
    let mut md =
        String::from("### Where the daemon's time goes (`cargo xtask bench --only profile`)\n\n");
    for r in report.as_array().into_iter().flatten() {
        md += &format!(
            "**{}** ({} ops in a session; flame graph `{}`)\n\n| daemon thread | CPU µs per op |\n|---|---|\n",
            r["scenario"].as_str().unwrap_or(""),
            r["ops"].as_f64().unwrap_or(0.0) as u64,
            r["flame_graph"].as_str().unwrap_or("")
        );
        let mut total = 0.0;
        for t in r["threads"].as_array().into_iter().flatten() {
            let us = t["us_per_op"].as_f64().unwrap_or(0.0);
            total += us;
            md += &format!("| {} | {us:.2} |\n", t["thread"].as_str().unwrap_or(""));
        }
        md +=
            &format!("| all | {total:.2} |\n\n| function (self) | share of samples |\n|---|---|\n");
        for f in r["top_self"].as_array().into_iter().flatten() {
            md += &format!(
                "| `{}` | {:.1}% |\n",
                f["function"].as_str().unwrap_or("").replace('|', "\\|"),
                f["share"].as_f64().unwrap_or(0.0) * 100.0
            );
        }
        md += "\n";
    }
    md
}
