//! Events copied to stdout (the journal under systemd, `kubectl logs` in a pod) by a
//! thread of their own: a reader of stdout that stalls fills a bounded queue whose
//! overflow is counted and raised, and the ring-buffer reader never waits on it.

use std::{
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{self, SyncSender, TryRecvError},
    },
    thread::JoinHandle,
};

/// Batches (one per drain of the ring buffer) that may wait for stdout before new ones
/// are dropped.
const QUEUE: usize = 1024;

pub struct StdoutSink {
    tx: Option<SyncSender<Vec<u8>>>,
    /// Lines collected since the last flush, and how many.
    pending: Vec<u8>,
    lines: u64,
    dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl StdoutSink {
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("stdout-sink".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(&line);
                    // Write what is queued, then flush once the queue is empty.
                    loop {
                        match rx.try_recv() {
                            Ok(l) => {
                                let _ = out.write_all(&l);
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => break,
                        }
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            pending: Vec::new(),
            lines: 0,
            dropped: Arc::new(AtomicU64::new(0)),
            thread: Some(thread),
        })
    }

    /// Collects a line for the next flush.
    pub fn send(&mut self, line: &[u8]) {
        self.pending.extend_from_slice(line);
        self.lines += 1;
    }

    /// Hands the collected lines over; never blocks. A full queue drops them and counts
    /// the lines dropped.
    pub fn flush(&mut self) {
        if self.lines == 0 {
            return;
        }
        let lines = std::mem::take(&mut self.lines);
        let batch = std::mem::take(&mut self.pending);
        if let Some(tx) = &self.tx
            && tx.try_send(batch).is_err()
        {
            self.dropped.fetch_add(lines, Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Writes what is queued and stops the thread.
    pub fn close(&mut self) {
        self.flush();
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
