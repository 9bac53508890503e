//! The JSON-lines event log in the state directory (and, optionally, stdout). It rotates
//! at a size cap into one previous file, so an agent host's disk never fills with it;
//! the audit store keeps the long-term record under its own retention.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use tracing::{info, warn};

use super::stdout;
use crate::event::Event;

/// The previous file after a rotation: `events.jsonl.1`.
pub fn previous(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Reads the log (the previous file first); a line that does not parse is skipped and
/// reported.
pub fn read(path: &Path) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    for p in [previous(path), path.to_owned()] {
        read_one(&p, &mut out)?;
    }
    Ok(out)
}

fn read_one(path: &Path, out: &mut Vec<Event>) -> Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        match serde_json::from_str(&line) {
            Ok(e) => out.push(e),
            Err(e) => warn!(file = %path.display(), line = n + 1, error = %e, "bad event log line"),
        }
    }
    Ok(())
}

pub struct EventLog {
    path: PathBuf,
    file: BufWriter<File>,
    /// Bytes in the current file.
    size: u64,
    /// Rotate once the current file passes this; `None`: never.
    max_size: Option<u64>,
    stdout: Option<stdout::StdoutSink>,
    seq: u64,
    /// The line being written, kept between events: no allocation per event.
    line: Vec<u8>,
}

/// The file's write buffer: a drain's worth of lines per `write(2)`, not one every
/// dozen events (std's 8 KiB).
const FILE_BUFFER: usize = 256 * 1024;

impl EventLog {
    pub fn open(path: &Path, stdout: bool, max_size: Option<u64>) -> Result<Self> {
        let mut f = open_file(path)?;
        let size = f.seek(SeekFrom::End(0))?;
        // A rotation may have left the current file empty: the numbering continues from
        // the previous one.
        let seq = last_seq(&mut f)
            .or_else(|| last_seq(&mut File::open(previous(path)).ok()?))
            .unwrap_or(0);
        Ok(Self {
            path: path.to_owned(),
            file: BufWriter::with_capacity(FILE_BUFFER, f),
            size,
            max_size,
            stdout: if stdout {
                Some(stdout::StdoutSink::start()?)
            } else {
                None
            },
            seq,
            line: Vec::with_capacity(1024),
        })
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn write(&mut self, ev: &Event) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, ev)?;
        self.line.push(b'\n');
        self.file.write_all(&self.line)?;
        self.size += self.line.len() as u64;
        if let Some(out) = self.stdout.as_mut() {
            out.send(&self.line);
        }
        Ok(())
    }

    /// Writes out what is buffered, then rotates if the file passed its cap (at a drain's
    /// end, so a line is never split across files).
    pub fn flush(&mut self) {
        if let Err(e) = self.file.flush() {
            warn!(error = %e, "flushing the event log failed");
        }
        if let Some(out) = self.stdout.as_mut() {
            out.flush();
        }
        if self.max_size.is_some_and(|max| self.size > max)
            && let Err(e) = self.rotate()
        {
            warn!(error = %e, "rotating the event log failed; it keeps growing");
        }
    }

    fn rotate(&mut self) -> Result<()> {
        let prev = previous(&self.path);
        fs::rename(&self.path, &prev)
            .with_context(|| format!("renaming {} to {}", self.path.display(), prev.display()))?;
        self.file = BufWriter::with_capacity(FILE_BUFFER, open_file(&self.path)?);
        self.size = 0;
        info!(previous = %prev.display(), last_seq = self.seq, "event log rotated");
        Ok(())
    }

    pub fn stdout_dropped(&self) -> u64 {
        self.stdout.as_ref().map_or(0, stdout::StdoutSink::dropped)
    }

    pub fn close(&mut self) {
        self.flush();
        if let Some(out) = self.stdout.as_mut() {
            out.close();
        }
    }
}

fn open_file(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .with_context(|| format!("opening event log {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Sequence number of the last complete line, so numbering continues across restarts.
fn last_seq(f: &mut File) -> Option<u64> {
    let len = f.seek(SeekFrom::End(0)).ok()?;
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = String::new();
    f.read_to_string(&mut tail).ok()?;
    tail.lines().rev().find_map(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()?
            .get("seq")?
            .as_u64()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Event {
        serde_json::from_value(serde_json::json!({
            "seq": seq,
            "time": "2026-11-25T00:00:00Z",
            "kind": "exit",
            "session": { "id": "0000000000000001", "name": "s", "profile": "demo" },
            "exit": { "code": 0 },
        }))
        .unwrap()
    }

    #[test]
    fn rotates_at_the_cap_and_numbering_continues_across_files_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut log = EventLog::open(&path, false, Some(1000)).unwrap();
        // At least 40 events, and the last of them in the current file (not rotated
        // away with an empty file left behind), for the restart below.
        let mut seq = 0;
        while seq < 40 || fs::metadata(&path).unwrap().len() == 0 {
            seq = log.next_seq();
            log.write(&event(seq)).unwrap();
            log.flush();
        }
        let prev = fs::metadata(previous(&path)).unwrap().len();
        let cur = fs::metadata(&path).unwrap().len();
        // One drain past the cap at most (here one line per flush).
        assert!(prev > 1000 && prev < 1200, "{prev}");
        assert!(cur <= 1200, "{cur}");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // What both files hold is the newest events, without a gap.
        let seqs: Vec<u64> = read(&path).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(*seqs.last().unwrap(), seq);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert!(seqs[0] > 1, "older events rotated out");

        // Rotate to an empty current file, then restart: numbering goes on.
        drop(log);
        fs::rename(&path, previous(&path)).unwrap();
        let mut log = EventLog::open(&path, false, Some(1000)).unwrap();
        assert_eq!(log.next_seq(), seq + 1);
    }
}
