//! Prometheus metrics in the text exposition format, served over plain HTTP on an
//! address of the operator's choosing (loopback by default). Off unless asked for.
//!
//! The HTTP side is a few lines by hand: one fixed path, `GET` only, one response per
//! connection; a web framework would add more surface than it saves.

use std::{fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use agent_common::{event::EventKind, stats::Stat, vocab::Verdict};
use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::{info, warn};

use super::Shared;
use crate::event::Event;

/// Events emitted, by agent (profile; empty for daemon-wide events), kind and decision.
#[derive(Debug, Default)]
pub struct EventCounts(foldhash::HashMap<String, foldhash::HashMap<EventKind, [u64; 3]>>);

/// The `decision` label: the event's verdict, or `none` for an event without one.
const DECISIONS: [&str; 3] = ["none", Verdict::Allow.as_str(), Verdict::Deny.as_str()];

impl EventCounts {
    pub fn count(&mut self, ev: &Event) {
        let d = match ev.decision.as_ref().map(|d| d.decision) {
            None => 0,
            Some(Verdict::Allow) => 1,
            Some(Verdict::Deny) => 2,
        };
        let agent = ev.session.profile.as_str();
        if !self.0.contains_key(agent) {
            self.0.insert(agent.to_owned(), Default::default());
        }
        let kinds = self.0.get_mut(agent).expect("inserted above");
        kinds.entry(ev.kind()).or_insert([0; 3])[d] += 1;
    }
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    info!(%addr, "metrics at http://{addr}/metrics");
    Ok(l)
}

pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(5), answer(&shared, conn)).await;
            if let Ok(Err(e)) = r {
                warn!(error = %e, "metrics request failed");
            }
        });
    }
}

async fn answer(shared: &Shared, mut conn: TcpStream) -> Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body, ctype) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "GET only\n".to_owned(),
            "text/plain",
        )
    } else if path == "/metrics" || path.starts_with("/metrics?") {
        (
            "200 OK",
            render(shared),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    } else {
        ("404 Not Found", "see /metrics\n".to_owned(), "text/plain")
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await?;
    Ok(())
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text, from one consistent look at the daemon's state.
// Long: one metric family after another, all from one hold of the lock (a consistent snapshot).
fn render(shared: &Shared) -> String {
    let core = shared.core();
    let mut out = String::new();
    family(
        &mut out,
        "agentwarden_events_total",
        "counter",
        "Events recorded, by agent (profile), kind and policy decision.",
    );
    let mut rows: Vec<(&String, &str, &[u64; 3])> = core
        .sinks
        .counts
        .0
        .iter()
        .flat_map(|(a, kinds)| kinds.iter().map(move |(k, c)| (a, k.as_str(), c)))
        .collect();
    rows.sort();
    for (agent, kind, c) in rows {
        for (i, d) in DECISIONS.iter().enumerate() {
            if c[i] > 0 {
                let _ = writeln!(
                    out,
                    "agentwarden_events_total{{agent=\"{}\",kind=\"{}\",decision=\"{d}\"}} {}",
                    label(agent),
                    label(kind),
                    c[i]
                );
            }
        }
    }
    family(
        &mut out,
        "agentwarden_kernel_counter_total",
        "counter",
        "Kernel-side counters (ring-buffer drops, session map full, stash full, ...).",
    );
    for stat in Stat::ALL {
        let c = core.kernel.counter(stat);
        let _ = writeln!(
            out,
            "agentwarden_kernel_counter_total{{counter=\"{}\"}} {}",
            c.name, c.total
        );
    }
    let d = core.daemon_counters();
    family(
        &mut out,
        "agentwarden_daemon_counter_total",
        "counter",
        "Daemon-side counters (records read, undecodable records, log write errors, lagging followers).",
    );
    for (name, v) in [
        ("records_read", d.records_read),
        ("decode_errors", d.decode_errors),
        ("events_logged", d.events_logged),
        ("log_write_errors", d.log_write_errors),
        ("subscriber_lagged", d.subscriber_lagged),
        ("stdout_dropped", d.stdout_dropped),
        ("pins_restored", d.pins_restored),
        ("stale_entries_removed", d.stale_entries_removed),
        ("selector_late", d.selector_late),
        ("selector_held", d.selector_held),
        ("container_lookup_failures", d.container_lookup_failures),
        ("container_lookups_abandoned", d.container_lookups_abandoned),
    ] {
        let _ = writeln!(
            out,
            "agentwarden_daemon_counter_total{{counter=\"{name}\"}} {v}"
        );
    }
    family(
        &mut out,
        "agentwarden_map_entries",
        "gauge",
        "Entries in a kernel map.",
    );
    let _ = writeln!(
        out,
        "agentwarden_map_entries{{map=\"sessions\"}} {}",
        core.kernel.sessions.iter().filter(|r| r.is_ok()).count()
    );
    family(
        &mut out,
        "agentwarden_map_capacity",
        "gauge",
        "Capacity of a kernel map.",
    );
    let _ = writeln!(
        out,
        "agentwarden_map_capacity{{map=\"sessions\"}} {}",
        shared.cfg.max_tracked_processes
    );
    family(
        &mut out,
        "agentwarden_sessions",
        "gauge",
        "Sessions known to the daemon, by state.",
    );
    let live = core
        .attribution
        .registry
        .all()
        .filter(|s| s.ended.is_none())
        .count();
    let ended = core.attribution.registry.all().count() - live;
    let _ = writeln!(out, "agentwarden_sessions{{state=\"active\"}} {live}");
    let _ = writeln!(out, "agentwarden_sessions{{state=\"ended\"}} {ended}");
    family(
        &mut out,
        "agentwarden_unmanaged_agents",
        "gauge",
        "Processes that look like agents (known agents, MCP servers, profiles' selectors) running outside every session, at the last scan.",
    );
    let _ = writeln!(out, "agentwarden_unmanaged_agents {}", core.unmanaged_count);
    family(
        &mut out,
        "agentwarden_drift_findings_total",
        "counter",
        "Drift findings raised by the out-of-band analyser, by finding and severity.",
    );
    for ((finding, severity), n) in &core.drift.findings {
        let _ = writeln!(
            out,
            "agentwarden_drift_findings_total{{finding=\"{finding}\",severity=\"{severity}\"}} {n}"
        );
    }
    family(
        &mut out,
        "agentwarden_shadow_verdicts_total",
        "counter",
        "Actions a shadow profile (shadow_of) would have decided otherwise than the profile in force: deny (would_deny) or allow.",
    );
    for ((profile, decision), n) in &core.shadow_counts {
        let _ = writeln!(
            out,
            "agentwarden_shadow_verdicts_total{{profile=\"{profile}\",decision=\"{decision}\"}} {n}"
        );
    }
    family(
        &mut out,
        "agentwarden_drift_counter_total",
        "counter",
        "The drift analyser's work: actions read, sessions learned into baselines or withheld for their findings, actions of agents without a baseline yet, unreadable rows, baselines stored, webhook failures.",
    );
    let s = &core.drift.stats;
    for (name, v) in [
        ("actions", s.actions),
        ("sessions_learned", s.learned),
        ("sessions_withheld", s.withheld),
        ("actions_unjudged", s.unjudged),
        ("rows_unreadable", s.unreadable),
        ("sessions_forgotten", s.forgotten),
        ("baselines_written", core.drift.baselines_written),
        (
            "webhook_failed",
            core.drift
                .webhook_failed
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "agentwarden_drift_counter_total{{counter=\"{name}\"}} {v}"
        );
    }
    let a = core.sinks.audit.stats().snapshot();
    family(
        &mut out,
        "agentwarden_audit_backlog",
        "gauge",
        "Records queued for the audit store and not yet committed.",
    );
    let _ = writeln!(out, "agentwarden_audit_backlog {}", a.backlog);
    family(
        &mut out,
        "agentwarden_audit_records_total",
        "counter",
        "Audit store records by outcome (written, dropped: queue full, pruned: retention).",
    );
    for (outcome, v) in [
        ("written", a.written),
        ("dropped", a.dropped),
        ("pruned", a.pruned),
    ] {
        let _ = writeln!(
            out,
            "agentwarden_audit_records_total{{outcome=\"{outcome}\"}} {v}"
        );
    }
    family(
        &mut out,
        "agentwarden_audit_write_errors_total",
        "counter",
        "Failed audit commits (each retried).",
    );
    let _ = writeln!(
        out,
        "agentwarden_audit_write_errors_total {}",
        a.write_errors
    );
    out
}
