//! The OTLP exporter task: events from the sinks (a bounded queue: the pipeline never
//! waits on a collector; what does not fit is dropped and counted), batched by
//! [`crate::otlp::Batcher`], and POSTed as OTLP/HTTP JSON every second or every
//! [`BATCH`] records. A collector that fails is counted and retried with the next batch;
//! its records are dropped (and counted) rather than held without bound.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::{io::AsyncReadExt as _, net::TcpStream, sync::mpsc};

use super::*;
use crate::otlp::{Batcher, resource};

/// Records per request, at most.
const BATCH: usize = 512;
/// Longest a record waits for its batch.
const PERIOD: Duration = Duration::from_secs(1);
/// Events the queue holds for the exporter.
pub(super) const QUEUE: usize = 16_384;
/// Longest a collector may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where the collector listens: `http://HOST:PORT[/PREFIX]` (`/v1/traces` and
/// `/v1/logs` are appended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub authority: String,
    pub prefix: String,
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some(rest) = s.strip_prefix("http://") else {
            return Err(format!(
                "`{s}`: only http:// endpoints (a collector on this host or its sidecar, which \
                 terminates TLS onwards)"
            ));
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !authority.contains(':') || authority.ends_with(':') {
            return Err(format!("`{s}`: name the port (http://127.0.0.1:4318)"));
        }
        Ok(Self {
            authority: authority.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("/{}", prefix.trim_end_matches('/'))
            },
        })
    }
}

/// The exporter's counters (shown by `status`, raised as losses).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Records (spans and log records) the collector accepted.
    pub exported: AtomicU64,
    /// Events the queue could not take, and records of batches the collector refused
    /// or never answered.
    pub dropped: AtomicU64,
    /// Requests that failed.
    pub errors: AtomicU64,
}

/// The sinks' side: a bounded queue to the exporter.
pub struct ExportQueue {
    tx: mpsc::Sender<Arc<Event>>,
    pub stats: Arc<ExportStats>,
}

impl ExportQueue {
    pub fn send(&self, ev: &Arc<Event>) {
        if self.tx.try_send(ev.clone()).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The queue and the task that empties it.
pub(super) fn start(
    endpoint: Endpoint,
    host: String,
) -> (ExportQueue, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let stats = Arc::new(ExportStats::default());
    let task = tokio::spawn(run(rx, endpoint, host, stats.clone()));
    (ExportQueue { tx, stats }, task)
}

async fn run(
    mut rx: mpsc::Receiver<Arc<Event>>,
    endpoint: Endpoint,
    host: String,
    stats: Arc<ExportStats>,
) {
    let resource = resource(&host);
    let mut batch = Batcher::default();
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        // (the queue is open, the period is up)
        let (open, due) = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    batch.take(&ev);
                    (true, false)
                }
                None => (false, true),
            },
            _ = tick.tick() => (true, true),
        };
        if (due || batch.pending() >= BATCH) && !batch.is_empty() {
            let n = batch.pending() as u64;
            let (traces, logs) = batch.drain(&resource);
            let mut ok = true;
            for (path, body) in [("/v1/traces", traces), ("/v1/logs", logs)] {
                if let Some(body) = body
                    && let Err(e) = post(&endpoint, path, &body).await
                {
                    ok = false;
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %format!("{e:#}"), endpoint = %endpoint.authority, "OTLP export failed");
                }
            }
            if ok {
                stats.exported.fetch_add(n, Ordering::Relaxed);
            } else {
                stats.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        if !open {
            return;
        }
    }
}

/// One HTTP/1.1 POST of `body` as JSON; an answer other than 2xx is an error.
async fn post(endpoint: &Endpoint, path: &str, body: &serde_json::Value) -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let body = serde_json::to_vec(body)?;
    let exchange = async {
        let mut s = TcpStream::connect(&endpoint.authority).await?;
        let head = format!(
            "POST {}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            endpoint.prefix,
            endpoint.authority,
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(&body).await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no answer within {TIMEOUT:?}"))??;
    let status = String::from_utf8_lossy(&answer[..answer.len().min(64)])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    if !status.split(' ').nth(1).is_some_and(|c| c.starts_with('2')) {
        bail!("the collector answered `{status}`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_with_a_port() {
        let e: Endpoint = "http://127.0.0.1:4318".parse().unwrap();
        assert_eq!(
            (e.authority.as_str(), e.prefix.as_str()),
            ("127.0.0.1:4318", "")
        );
        let e: Endpoint = "http://collector:4318/otlp/".parse().unwrap();
        assert_eq!(e.prefix, "/otlp");
        assert!(
            "https://x:4318"
                .parse::<Endpoint>()
                .unwrap_err()
                .contains("only http://")
        );
        assert!("http://x".parse::<Endpoint>().unwrap_err().contains("port"));
    }
}
