//! The drift analyser, out of band: a thread of its own (at nice 10, in the audit
//! writer's descriptor table) with its own read-only connection to the audit store
//! reads what the writer committed,
//! judges it against the agents' baselines and learns finished sessions
//! (`crate::drift::analyze`). It never takes the core's lock while it reads or judges,
//! and the writer never waits for it (WAL: readers and the writer do not block each
//! other). What it finds comes back here: each finding an event (so an audit row, the
//! event log, OCSF, OTLP, metrics) and, with `--drift-webhook`, a POST; each grown
//! baseline a `baselines` row in the chain.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    thread,
};

use agent_common::vocab::{Finding, Severity};

use super::*;
use crate::{
    audit,
    drift::{
        analyze::{Analyzer, Output, Stats},
        judge::Config,
    },
    event::{Body, SessionRef},
};

/// Actions read per pass: bounds the analyser's memory and how long one pass holds its
/// read snapshot (the writer's WAL cannot be checkpointed past an open reader).
const PASS: usize = 5_000;

/// How the analyser runs (`daemon --drift-*`).
#[derive(Clone, Debug)]
pub struct DriftSettings {
    /// How often it reads what was committed; `None`: it does not run.
    pub interval: Option<Duration>,
    pub thresholds: Config,
    /// Where each finding is POSTed as JSON (`http://HOST:PORT/PATH`).
    pub webhook: Option<String>,
}

/// What the analyser has done, for metrics.
#[derive(Debug, Default)]
pub struct DriftCounters {
    pub stats: Stats,
    pub findings: BTreeMap<(Finding, Severity), u64>,
    pub baselines_written: u64,
    pub webhook_failed: Arc<AtomicU64>,
    /// The last pass failed (the store unreadable): why.
    pub error: Option<String>,
}

/// Starts the analyser on the store at `db`; its results come back through the task
/// this returns.
pub(super) fn start(shared: Arc<Shared>, db: PathBuf) -> Option<tokio::task::JoinHandle<()>> {
    let settings = shared.cfg.drift.clone();
    let interval = settings.interval?;
    let (to_runtime, rx) = tokio::sync::mpsc::unbounded_channel::<Report>();
    // The analyser cannot wake the runtime itself: a wakeup writes to the runtime's
    // eventfd, a number in the daemon's descriptor table, not in the analyser's. A
    // channel without descriptors (futexes) crosses over, and this thread, in the
    // daemon's table, passes each report on.
    let (tx, reports) = std::sync::mpsc::channel::<Report>();
    let bridged = thread::Builder::new()
        .name("drift-bridge".into())
        .spawn(move || {
            for report in reports {
                if to_runtime.send(report).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = bridged {
        warn!(error = %e, "the drift analyser could not start");
        return None;
    }
    let failed = shared.core().drift.webhook_failed.clone();
    // In the audit writer's descriptor table, never the daemon's: SQLite hands every
    // connection of the process the descriptors of the first one that opened the file.
    // Not under the core lock: the start is waited for, and the runtime's workers need
    // the lock meanwhile.
    let beside = shared.core().sinks.audit.beside();
    let spawned =
        beside.and_then(|b| b.spawn("drift", move || analyse(db, interval, settings, tx, failed)));
    if let Err(e) = spawned {
        warn!(
            error = format!("{e:#}"),
            "the drift analyser could not start"
        );
        return None;
    }
    info!(
        interval_ms = interval.as_millis() as u64,
        "drift analyser started"
    );
    Some(tokio::spawn(take(shared, rx)))
}

/// One pass's results, the analyser's counters, and why the pass failed, if it did.
type Report = (Output, Stats, Option<String>);
type Sender = std::sync::mpsc::Sender<Report>;

/// The analyser's thread: one pass per interval, until the daemon stops listening.
fn analyse(
    db: PathBuf,
    interval: Duration,
    settings: DriftSettings,
    tx: Sender,
    webhook_failed: Arc<AtomicU64>,
) {
    // Beside the daemon's own work and the agents', not ahead of them: nice 10 for this
    // thread, a tenth of a busy CPU's share. Not `SCHED_IDLE`: a thread that runs only
    // on idle CPU can hold a lock the daemon's other threads need (the allocator's, a
    // log writer's) for as long as the CPUs stay busy, which stalled a daemon under a
    // refusal flood for minutes.
    // SAFETY: setpriority on this thread's id; no memory is passed.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "the drift analyser could not lower its priority");
    }
    let mut analyzer = Analyzer::new(settings.thresholds.clone());
    let mut conn: Option<rusqlite::Connection> = None;
    let mut resumed = false;
    loop {
        let pass = (|| -> Result<Vec<Output>> {
            if conn.is_none() {
                conn = Some(audit::store::open_read_only(&db)?);
            }
            let c = conn.as_ref().expect("opened above");
            let mut outs = Vec::new();
            if !resumed {
                outs.push(analyzer.resume(c)?);
                resumed = true;
            }
            loop {
                let out = analyzer.tick(c, PASS)?;
                let more = out.actions as usize == PASS;
                outs.push(out);
                if !more {
                    break;
                }
            }
            Ok(outs)
        })();
        match pass {
            Ok(outs) => {
                for out in outs {
                    if let Some(url) = &settings.webhook {
                        for f in &out.findings {
                            if let Err(e) = post(url, f) {
                                webhook_failed.fetch_add(1, Relaxed);
                                warn!(url = %url, error = %format!("{e:#}"), "the drift webhook failed");
                            }
                        }
                    }
                    if (!out.findings.is_empty() || !out.baselines.is_empty() || out.actions > 0)
                        && tx.send((out, analyzer.stats.clone(), None)).is_err()
                    {
                        return;
                    }
                }
            }
            Err(e) => {
                // The store may not exist yet, or be mid-migration: the next pass tries
                // again (a connection that failed is opened anew).
                conn = None;
                if tx
                    .send((
                        Output::default(),
                        analyzer.stats.clone(),
                        Some(format!("{e:#}")),
                    ))
                    .is_err()
                {
                    return;
                }
            }
        }
        thread::sleep(interval);
    }
}

/// One finding to the webhook: the event's JSON, as the event log has it.
fn post(url: &str, f: &crate::drift::analyze::Found) -> Result<()> {
    let body = serde_json::json!({
        "session": { "id": f.session.session_id, "name": f.session.name, "agent": f.session.agent },
        "principal": { "uid": f.session.principal_uid, "user": f.session.principal_user },
        "drift": f.info,
    });
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent();
    agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .with_context(|| format!("POST {url}"))?;
    Ok(())
}

/// Raises what the analyser found, and stores the baselines it grew.
async fn take(shared: Arc<Shared>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Report>) {
    while let Some((out, stats, error)) = rx.recv().await {
        let mut core = shared.core();
        core.drift.stats = stats;
        if let Some(e) = &error
            && core.drift.error.as_ref() != Some(e)
        {
            warn!(error = %e, "the drift analyser cannot read the audit store");
        }
        core.drift.error = error;
        for b in out.baselines {
            core.drift.baselines_written += 1;
            core.sinks.audit.send(audit::Item::Baseline(Box::new(b)));
        }
        for f in out.findings {
            *core
                .drift
                .findings
                .entry((f.info.finding, f.info.severity))
                .or_default() += 1;
            warn!(
                session = %f.session.name,
                agent = %f.session.agent,
                finding = %f.info.finding,
                severity = %f.info.severity,
                object = %f.info.object,
                "drift"
            );
            let ev = Event::new(
                Body::Drift(Box::new(f.info)),
                SystemTime::now(),
                SessionRef {
                    id: f.session.session_id.clone(),
                    name: f.session.name.clone(),
                    profile: f.session.agent.clone(),
                    container: None,
                },
            );
            core.emit(ev);
        }
        core.flush_sinks();
    }
}
