//! The audit store's writer: a thread of its own that batches records into SQLite.
//!
//! The daemon collects the records of one drain of the ring buffer and hands them over
//! together (one wakeup of the writer per drain, not per record) with a non-blocking send
//! into a bounded queue, so a slow or failing disk never holds up the ring-buffer reader
//! (and so never the kernel path). Records past the queue's capacity are dropped and
//! counted; the daemon raises the count as a `loss` event. A batch that fails to commit is retried (with backoff) until it lands,
//! so the chain never has a hole of its own making; meanwhile the queue absorbs what
//! arrives, and its depth is the backlog shown by `status` and the metrics.
//!
//! Durability: the database is in WAL mode with `synchronous=NORMAL`; a committed batch
//! survives a crash of the daemon (not necessarily of the machine). A batch is committed
//! at most [`COMMIT_INTERVAL`] after its first record arrived, which bounds what a
//! `kill -9` of the daemon can lose (plus the reader's coalescing delay).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, types::Value};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    chain::{GENESIS, Hash, Head, hex, link_hash},
    records::{Item, RepeatKey, add_repeat, event_rows, repeat_key},
    schema::{self, ACTIONS, BASELINES, CHECKPOINTS, PROCESSES, SESSIONS, TABLES, Table},
};

/// Longest a record waits in a batch before it is committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Most records in one transaction.
const MAX_BATCH: usize = 20_000;
/// How often retention runs.
const PRUNE_PERIOD: Duration = Duration::from_secs(60);

/// Where and how much to keep.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Records that may wait for the writer before new ones are dropped (and counted).
    pub queue: usize,
    /// Records older than this are pruned (through a checkpoint).
    pub max_age: Option<Duration>,
    /// The database is pruned, oldest first, when it grows past this many bytes.
    pub max_bytes: Option<u64>,
}

/// The head file beside the database.
pub fn head_path(db: &Path) -> PathBuf {
    db.with_extension("head")
}

/// Counters of the audit sink, shared with the daemon's status and metrics.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records queued and not yet committed.
    pub backlog: AtomicU64,
    pub written: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Failed commit attempts (each retried).
    pub write_errors: AtomicU64,
    /// Records removed by retention.
    pub pruned: AtomicU64,
    /// Set by [`AuditSink::close`]: a commit that keeps failing is given up after a
    /// bounded number of tries instead of holding the daemon's exit forever.
    closing: AtomicBool,
}

/// A point-in-time copy of [`AuditStats`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditCounters {
    pub backlog: u64,
    pub written: u64,
    pub dropped: u64,
    pub write_errors: u64,
    pub pruned: u64,
}

impl AuditStats {
    pub fn snapshot(&self) -> AuditCounters {
        AuditCounters {
            backlog: self.backlog.load(Relaxed),
            written: self.written.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
            pruned: self.pruned.load(Relaxed),
        }
    }
}

/// Work for a thread that shares the writer's descriptor table ([`Beside::spawn`]).
type Companion = (
    String,
    Box<dyn FnOnce() + Send>,
    SyncSender<std::io::Result<()>>,
);

/// Starts threads in the audit writer's descriptor table ([`AuditSink::beside`]).
pub struct Beside(mpsc::Sender<Companion>);

impl Beside {
    /// Runs `f` on a thread named `name` that shares the writer's descriptor table: the
    /// only place in the daemon where another connection to the store may be opened
    /// (see [`private_descriptors`]). `f` must keep its descriptors to itself, as the
    /// writer does. Waits for the thread to start.
    pub fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
        let (done_tx, done) = mpsc::sync_channel(1);
        self.0
            .send((name.to_owned(), Box::new(f), done_tx))
            .map_err(|_| anyhow::anyhow!("the audit writer's companion starter is gone"))?;
        done.recv()
            .map_err(|_| anyhow::anyhow!("the audit writer's companion starter is gone"))?
            .with_context(|| format!("starting the {name} thread"))
    }
}

/// The daemon's handle on the store.
pub struct AuditSink {
    tx: Option<SyncSender<Vec<Item>>>,
    /// To the thread that starts companions in the writer's descriptor table.
    companions: Option<mpsc::Sender<Companion>>,
    /// Records collected since the last [`AuditSink::flush`].
    pending: Vec<Item>,
    /// Most records queued for the writer at once.
    capacity: u64,
    stats: Arc<AuditStats>,
    thread: Option<JoinHandle<()>>,
}

impl AuditSink {
    /// Opens (creating and migrating) the database and starts the writer.
    pub fn open(cfg: AuditConfig) -> Result<Self> {
        let stats = Arc::new(AuditStats::default());
        // Batches are bounded by `capacity` records below; this only bounds their number.
        let (tx, rx) = mpsc::sync_channel(cfg.queue.clamp(1, 4096));
        let (opened_tx, opened) = mpsc::sync_channel(1);
        let s = stats.clone();
        let queue = cfg.queue;
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let writer = private_descriptors()
                    .and_then(|()| companions())
                    .and_then(|c| Writer::open(&cfg).map(|w| (w, c)));
                match writer {
                    Ok((w, c)) => {
                        let _ = opened_tx.send(Ok(c));
                        w.run(rx, &s);
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                    }
                }
            })
            .context("starting the audit writer")?;
        let companions = opened
            .recv()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the audit writer stopped while opening")))?;
        Ok(Self {
            tx: Some(tx),
            companions: Some(companions),
            pending: Vec::new(),
            capacity: queue.max(1) as u64,
            stats,
            thread: Some(thread),
        })
    }

    /// Collects a record for the next [`AuditSink::flush`].
    pub fn send(&mut self, item: Item) {
        self.pending.push(item);
    }

    /// Hands the collected records to the writer; never blocks. What does not fit in
    /// the queue is dropped and counted.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Some(tx) = &self.tx else { return };
        let room = self
            .capacity
            .saturating_sub(self.stats.backlog.load(Relaxed)) as usize;
        if self.pending.len() > room {
            let excess = self.pending.len() - room;
            self.pending.truncate(room);
            self.stats.dropped.fetch_add(excess as u64, Relaxed);
        }
        if self.pending.is_empty() {
            return;
        }
        let n = self.pending.len() as u64;
        self.stats.backlog.fetch_add(n, Relaxed);
        match tx.try_send(std::mem::take(&mut self.pending)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.backlog.fetch_sub(n, Relaxed);
                self.stats.dropped.fetch_add(n, Relaxed);
            }
        }
    }

    pub fn stats(&self) -> &Arc<AuditStats> {
        &self.stats
    }

    /// The starter of threads that share the writer's descriptor table (see
    /// [`Beside::spawn`]), to use without holding whatever holds this sink.
    pub fn beside(&self) -> Result<Beside> {
        Ok(Beside(
            self.companions
                .clone()
                .context("the audit writer is closed")?,
        ))
    }

    /// Commits what is queued and stops the writer.
    pub fn close(&mut self) {
        self.flush();
        self.stats.closing.store(true, Relaxed);
        self.tx.take();
        self.companions.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AuditSink {
    fn drop(&mut self) {
        self.close();
    }
}

/// Gives the calling thread (the writer) a descriptor table of its own, holding only
/// stdin, stdout and stderr, before it opens the database.
///
/// SQLite locks the database, its WAL and its shared-memory index with POSIX record locks,
/// which belong to a descriptor table and which Linux drops when *any* descriptor of the
/// file is closed through that table. The daemon has such descriptors of its own files:
/// fanotify hands it one for every open of a marked file (its state directory is marked
/// for self-protection, so every `audit query` makes one) and inode binding opens the
/// files of bound trees. Closing them in a shared table released the writer's lock on
/// the shared-memory index, and the next reader rebuilt the index under the writer: the
/// database went "malformed". Locks held through a private table are not touched by
/// closes in the daemon's.
///
/// So every connection of the daemon to the database lives in this table: the writer's,
/// and the companions' started by [`Beside::spawn`] (the drift analyser's).
/// SQLite shares the lock and shared-memory descriptors of a file among all connections
/// of a process, and a connection in another table would be handed numbers from this
/// one: it mapped, locked and closed whatever the daemon had under them (a drift
/// analyser in the daemon's table once closed the runtime's epoll descriptor).
fn private_descriptors() -> Result<()> {
    // SAFETY: from here on this thread uses only descriptors it opens itself (the
    // database's) and stderr, and none of them leaves the thread: the writer owns the
    // connection, and records arrive over a channel in memory.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FILES) }
        .context("giving the audit writer a descriptor table of its own")?;
    // The copies of the daemon's descriptors would keep its sockets and files open past
    // their owners' closes. Closing them here affects only this table.
    // SAFETY: close_range(2) on this thread's private table, no pointers involved.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .context("closing the audit writer's copies of the daemon's descriptors");
    }
    Ok(())
}

/// Starts, in the calling thread's descriptor table (the writer's private one), the
/// thread that starts companions there: a thread shares the table of the thread that
/// creates it.
fn companions() -> Result<mpsc::Sender<Companion>> {
    let (tx, rx) = mpsc::channel::<Companion>();
    std::thread::Builder::new()
        .name("audit-companions".into())
        .spawn(move || {
            for (name, f, done) in rx {
                let started = std::thread::Builder::new().name(name).spawn(f);
                let _ = done.send(started.map(|_| ()));
            }
        })
        .context("starting the audit writer's companion starter")?;
    Ok(tx)
}

/// Opens a database for reading (`audit verify|query|timeline|export`).
pub fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.exists() {
        anyhow::bail!(
            "no audit database at {} (the daemon creates it in its state directory; \
             name another with --db)",
            path.display()
        );
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if v != schema::VERSION {
        anyhow::bail!(
            "{}: audit schema version {v}, this agentwarden reads version {}",
            path.display(),
            schema::VERSION
        );
    }
    Ok(conn)
}

struct Writer {
    conn: Connection,
    head_file: PathBuf,
    seq: i64,
    hash: Hash,
    max_age: Option<Duration>,
    max_bytes: Option<u64>,
}

impl Writer {
    fn open(cfg: &AuditConfig) -> Result<Self> {
        let mut conn = Connection::open(&cfg.path)
            .with_context(|| format!("opening audit database {}", cfg.path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(0o600))?;
        }
        // Only takes on a new database, and only before WAL is turned on: pruned pages
        // can then go back to the file system without a full VACUUM.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // 8 MiB of page cache: most of the writer's speed, a bounded part of its footprint.
        conn.pragma_update(None, "cache_size", -8192)?;
        conn.busy_timeout(Duration::from_millis(250))?;
        schema::migrate(&mut conn)
            .with_context(|| format!("migrating audit database {}", cfg.path.display()))?;
        let (seq, hash) = last_link(&conn)?;
        info!(db = %cfg.path.display(), records_to = seq, "audit store open");
        Ok(Self {
            conn,
            head_file: head_path(&cfg.path),
            seq,
            hash,
            max_age: cfg.max_age,
            max_bytes: cfg.max_bytes,
        })
    }

    fn run(mut self, rx: Receiver<Vec<Item>>, stats: &AuditStats) {
        let mut last_prune = Instant::now() - PRUNE_PERIOD;
        let mut closing = false;
        while !closing {
            let mut batch = Vec::new();
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(i) => batch = i,
                // Quiet for a second: what the last burst freed goes back, if asked.
                Err(RecvTimeoutError::Timeout) => crate::memory::collect_if_asked(),
                Err(RecvTimeoutError::Disconnected) => closing = true,
            }
            let deadline = Instant::now() + COMMIT_INTERVAL;
            while !batch.is_empty() && batch.len() < MAX_BATCH && !closing {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(i) => batch.extend(i),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => closing = true,
                }
            }
            if closing {
                batch.extend(rx.try_iter().flatten());
            }
            if !batch.is_empty() {
                self.commit_until_done(&batch, stats);
            }
            if last_prune.elapsed() >= PRUNE_PERIOD {
                last_prune = Instant::now();
                match self.prune(SystemTime::now()) {
                    Ok(n) => {
                        stats.pruned.fetch_add(n, Relaxed);
                    }
                    Err(e) => warn!(error = %format!("{e:#}"), "audit retention failed"),
                }
            }
        }
    }

    /// Retries a failed commit with backoff: the records stay in order and the chain
    /// stays whole; the queue behind takes the backlog (and drops, counted, when full).
    fn commit_until_done(&mut self, batch: &[Item], stats: &AuditStats) {
        let mut backoff = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.commit(batch) {
                Ok(()) => {
                    stats.written.fetch_add(batch.len() as u64, Relaxed);
                    stats.backlog.fetch_sub(batch.len() as u64, Relaxed);
                    let head = Head {
                        seq: self.seq,
                        hash: hex(&self.hash),
                    };
                    if let Err(e) = head.write(&self.head_file) {
                        warn!(error = %format!("{e:#}"), "writing the audit head failed");
                    }
                    return;
                }
                Err(e) => {
                    stats.write_errors.fetch_add(1, Relaxed);
                    warn!(error = %format!("{e:#}"), records = batch.len(), tries, "audit commit failed; retrying");
                    if stats.closing.load(Relaxed) && tries >= 10 {
                        // Shutting down: do not hang forever; what is lost is counted.
                        stats.dropped.fetch_add(batch.len() as u64, Relaxed);
                        stats.backlog.fetch_sub(batch.len() as u64, Relaxed);
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn commit(&mut self, batch: &[Item]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut rows: Vec<(&Table, Vec<Value>)> = Vec::with_capacity(batch.len());
        let mut seen: foldhash::HashMap<RepeatKey<'_>, usize> = Default::default();
        for item in batch {
            match item {
                Item::Session(s) => rows.push((&SESSIONS, s.row())),
                Item::Baseline(b) => rows.push((&BASELINES, b.row())),
                Item::Event(ev) => {
                    if let Some(key) = repeat_key(ev) {
                        if let Some(&i) = seen.get(&key) {
                            add_repeat(&mut rows[i].1, ev);
                            continue;
                        }
                        seen.insert(key, rows.len());
                    }
                    let r = event_rows(ev);
                    rows.push((&ACTIONS, r.action));
                    if let Some(p) = r.process {
                        rows.push((&PROCESSES, p));
                    }
                }
            }
        }
        let mut link = (self.seq, self.hash);
        let mut ins = Inserts::new(&tx)?;
        for (table, values) in &rows {
            ins.append(&mut link, table, values)?;
        }
        drop(ins);
        tx.commit()?;
        (self.seq, self.hash) = link;
        Ok(())
    }

    /// Retention: deletes the oldest records (by age, then by size) and appends a
    /// checkpoint that says where the kept chain starts and what it links to.
    // Long: one transaction: the deletions by age and size, the checkpoint and the chain link must commit together.
    fn prune(&mut self, now: SystemTime) -> Result<u64> {
        let first: Option<i64> = min_seq(&self.conn)?;
        let Some(first) = first else { return Ok(0) };
        let mut keep_from = first;
        if let Some(age) = self.max_age {
            let cutoff = now
                .checked_sub(age)
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64);
            let oldest_kept: Option<i64> = self.conn.query_row(
                "SELECT min(seq) FROM actions WHERE time_ns >= ?1",
                [cutoff],
                |r| r.get(0),
            )?;
            let newest_old: Option<i64> = self.conn.query_row(
                "SELECT max(seq) FROM actions WHERE time_ns < ?1",
                [cutoff],
                |r| r.get(0),
            )?;
            if newest_old.is_some() {
                keep_from = keep_from.max(oldest_kept.unwrap_or(self.seq + 1));
            }
        }
        if let Some(max) = self.max_bytes {
            let size = db_bytes(&self.conn)?;
            if size > max && self.seq > first {
                // Drop the oldest share of records that brings the file to 80% of the cap.
                let share = 1.0 - (max as f64 * 0.8) / size as f64;
                let span = (self.seq - first + 1) as f64;
                keep_from = keep_from.max(first + (span * share).ceil() as i64);
            }
        }
        if keep_from <= first {
            return Ok(0);
        }
        // Start the kept chain at a record that exists (or after the last one).
        let start: Option<i64> = TABLES
            .iter()
            .filter_map(|t| {
                self.conn
                    .query_row(
                        &format!("SELECT min(seq) FROM {} WHERE seq >= ?1", t.name),
                        [keep_from],
                        |r| r.get::<_, Option<i64>>(0),
                    )
                    .ok()
                    .flatten()
            })
            .min();
        let (keep_from, anchor) = match start {
            Some(s) => (s, prev_hash_of(&self.conn, s)?),
            None => (self.seq + 1, self.hash.to_vec()),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut pruned = 0u64;
        for t in TABLES {
            pruned += tx.execute(
                &format!("DELETE FROM {} WHERE seq < ?1", t.name),
                [keep_from],
            )? as u64;
        }
        let now_ns = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let mut link = (self.seq, self.hash);
        Inserts::new(&tx)?.append(
            &mut link,
            &CHECKPOINTS,
            &[
                Value::Integer(now_ns),
                Value::Text(crate::event::rfc3339(now)),
                Value::Integer(keep_from),
                Value::Blob(anchor),
                Value::Integer(pruned as i64),
                Value::Text(format!(
                    "retention (max age {}, max size {})",
                    self.max_age
                        .map_or("none".into(), |a| humantime::format_duration(a).to_string()),
                    self.max_bytes
                        .map_or("none".into(), |b| format!("{b} bytes"))
                )),
            ],
        )?;
        tx.commit()?;
        (self.seq, self.hash) = link;
        // Each step of the pragma frees pages; it runs until it has no more rows.
        if let Ok(mut stmt) = self.conn.prepare("PRAGMA incremental_vacuum")
            && let Ok(mut rows) = stmt.query([])
        {
            while let Ok(Some(_)) = rows.next() {}
        }
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        info!(pruned, kept_from = keep_from, "audit retention");
        Ok(pruned)
    }
}

/// The inserts of one transaction, prepared once for its whole batch.
struct Inserts<'t>(Vec<(&'static str, rusqlite::Statement<'t>)>);

impl<'t> Inserts<'t> {
    fn new(tx: &'t rusqlite::Transaction<'_>) -> Result<Self> {
        let stmts = TABLES
            .iter()
            .map(|t| Ok((t.name, tx.prepare(&t.insert_sql())?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self(stmts))
    }

    /// Appends one record to the chain; returns its seq.
    fn append(&mut self, link: &mut (i64, Hash), table: &Table, values: &[Value]) -> Result<i64> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        let seq = link.0 + 1;
        let hash = link_hash(&link.1, seq, table, values.iter().map(ValueRef::from));
        let Some((_, stmt)) = self.0.iter_mut().find(|(n, _)| *n == table.name) else {
            anyhow::bail!("no table {}", table.name);
        };
        let params = std::iter::once(ValueRef::Integer(seq))
            .chain(values.iter().map(ValueRef::from))
            .chain([ValueRef::Blob(&link.1), ValueRef::Blob(&hash)])
            .map(ToSqlOutput::Borrowed);
        stmt.execute(rusqlite::params_from_iter(params))
            .with_context(|| format!("inserting record {seq} into {}", table.name))?;
        *link = (seq, hash);
        Ok(seq)
    }
}

fn min_seq(conn: &Connection) -> Result<Option<i64>> {
    let mut best: Option<i64> = None;
    for t in TABLES {
        let v: Option<i64> =
            conn.query_row(&format!("SELECT min(seq) FROM {}", t.name), [], |r| {
                r.get(0)
            })?;
        best = match (best, v) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(best)
}

/// The newest record's seq and hash (0 and the genesis hash for an empty chain).
fn last_link(conn: &Connection) -> Result<(i64, Hash)> {
    let mut best = (0, GENESIS);
    for t in TABLES {
        let row: Option<(i64, Vec<u8>)> = conn
            .query_row(
                &format!("SELECT seq, hash FROM {} ORDER BY seq DESC LIMIT 1", t.name),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        if let Some((seq, hash)) = row
            && seq > best.0
        {
            best = (seq, hash.try_into().unwrap_or(GENESIS));
        }
    }
    Ok(best)
}

fn prev_hash_of(conn: &Connection, seq: i64) -> Result<Vec<u8>> {
    for t in TABLES {
        if let Ok(h) = conn.query_row(
            &format!("SELECT prev_hash FROM {} WHERE seq = ?1", t.name),
            [seq],
            |r| r.get::<_, Vec<u8>>(0),
        ) {
            return Ok(h);
        }
    }
    anyhow::bail!("record {seq} not found")
}

fn db_bytes(conn: &Connection) -> Result<u64> {
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok((pages * size) as u64)
}

#[cfg(test)]
pub(crate) fn test_prune(
    db: &Path,
    max_age: Option<Duration>,
    max_bytes: Option<u64>,
    now: SystemTime,
) -> Result<u64> {
    let mut w = Writer::open(&AuditConfig {
        path: db.to_owned(),
        queue: 1,
        max_age,
        max_bytes,
    })?;
    w.prune(now)
}
