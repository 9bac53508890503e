//! Where events go, behind one type: the event log (and stdout), the audit store, the
//! metrics counts and live followers (`events --follow`). Each event is numbered once,
//! here, and every sink sees the same event.

use std::sync::Arc;

use tokio::sync::broadcast;
use tracing::warn;

use super::{eventlog::EventLog, metrics::EventCounts};
use crate::{
    audit::{self, AuditSink, SessionRecord},
    event::Event,
};

/// Followers that fall this far behind lose events (counted on their side).
const FOLLOW_BACKLOG: usize = 4096;

pub struct Sinks {
    pub log: EventLog,
    /// The audit trail's store (a writer thread behind a bounded queue).
    pub audit: AuditSink,
    /// Events emitted, by agent, kind and decision (for the metrics).
    pub counts: EventCounts,
    followers: broadcast::Sender<Arc<Event>>,
    /// Events written to the log, and writes that failed.
    pub logged: u64,
    pub log_write_errors: u64,
    /// The OTLP exporter's queue (`--otlp-endpoint`).
    pub otlp: Option<super::export::ExportQueue>,
}

impl Sinks {
    pub fn new(log: EventLog, audit: AuditSink) -> Self {
        Self {
            log,
            audit,
            counts: EventCounts::default(),
            followers: broadcast::channel(FOLLOW_BACKLOG).0,
            logged: 0,
            log_write_errors: 0,
            otlp: None,
        }
    }

    /// Numbers `ev` and hands it to every sink.
    pub fn emit(&mut self, mut ev: Event) {
        ev.seq = self.log.next_seq();
        match self.log.write(&ev) {
            Ok(()) => self.logged += 1,
            Err(e) => {
                self.log_write_errors += 1;
                warn!(error = %e, "writing the event log failed");
            }
        }
        self.counts.count(&ev);
        let ev = Arc::new(ev);
        self.audit.send(audit::Item::Event(ev.clone()));
        if let Some(q) = &self.otlp {
            q.send(&ev);
        }
        // No follower is fine; lagging ones are counted on their side.
        let _ = self.followers.send(ev);
    }

    /// A session's execution context, recorded once in the audit trail.
    pub fn session(&mut self, rec: SessionRecord) {
        self.audit.send(audit::Item::Session(Box::new(rec)));
    }

    /// Hands what a drain (or request) produced on: the event log's buffer to the file,
    /// the audit records to the writer in one batch.
    pub fn flush(&mut self) {
        self.log.flush();
        self.audit.flush();
    }

    /// Events from now on, for a follower.
    pub fn follow(&self) -> broadcast::Receiver<Arc<Event>> {
        self.followers.subscribe()
    }

    /// At shutdown: the log flushed and closed, what is queued committed.
    pub fn close(&mut self) {
        self.log.close();
        self.audit.close();
    }
}
