//! The hash chain through every audit record, and its verification.
//!
//! Record `n` (in whichever table it lives) stores `hash = SHA-256(domain ‖ prev_hash ‖
//! n ‖ table ‖ content)`, where `prev_hash` is the hash of record `n-1`. Editing a
//! record breaks its own hash; deleting, inserting or moving one breaks the sequence or
//! the link of the record after it. Retention deletes a prefix of the chain and appends
//! a checkpoint naming where the kept part starts and the hash it links to, so what
//! remains still verifies. The daemon also writes the head (last seq and hash) to a file
//! beside the database after each commit, so that deleting the newest records shows too.

use std::{fmt, path::Path};

use anyhow::{Context as _, Result};
use rusqlite::{Connection, types::ValueRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::schema::{CHECKPOINTS, TABLES, Table};

pub type Hash = [u8; 32];

/// `prev_hash` of the first record.
pub const GENESIS: Hash = [0; 32];

const DOMAIN: &[u8] = b"agentwarden-audit-v1";

/// The hash of record `seq` in `table` with these content values (the columns a
/// migration added are hashed only where set: see [`Table::first`]).
pub fn link_hash<'a>(
    prev: &Hash,
    seq: i64,
    table: &Table,
    values: impl IntoIterator<Item = ValueRef<'a>>,
) -> Hash {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update((table.name.len() as u64).to_be_bytes());
    h.update(table.name.as_bytes());
    for (i, v) in values.into_iter().enumerate() {
        if i >= table.first && v == ValueRef::Null {
            continue;
        }
        // Type tag, then a length where the size varies: no two value lists share bytes.
        match v {
            ValueRef::Null => h.update([0]),
            ValueRef::Integer(i) => {
                h.update([1]);
                h.update(i.to_be_bytes());
            }
            ValueRef::Real(f) => {
                h.update([2]);
                h.update(f.to_bits().to_be_bytes());
            }
            ValueRef::Text(t) => {
                h.update([3]);
                h.update((t.len() as u64).to_be_bytes());
                h.update(t);
            }
            ValueRef::Blob(b) => {
                h.update([4]);
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
        }
    }
    h.finalize().into()
}

pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// The newest record, written beside the database after every commit.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

impl Head {
    pub fn read(path: &Path) -> Option<Head> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Written to a temporary file and renamed, so a crash leaves the old or the new one.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("head.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    }
}

/// What is wrong with the first broken record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "problem")]
pub enum Break {
    /// The content no longer matches the record's hash.
    Edited { seq: i64, table: String },
    /// Records are missing from the chain.
    Deleted {
        from_seq: i64,
        to_seq: i64,
        next_table: Option<String>,
    },
    /// Two records claim the same position, or a record sits before the chain's start.
    Inserted { seq: i64, table: String },
    /// The record does not link to the one before it.
    Unlinked { seq: i64, table: String },
    /// The head file names a record the database does not have (or a different one).
    Truncated { db_seq: i64, head_seq: i64 },
    /// The chain verifies but its record at the head file's position has another hash:
    /// it was recomputed after an edit.
    Rewritten { seq: i64 },
}

impl Break {
    /// The first record the break concerns.
    pub fn seq(&self) -> i64 {
        match self {
            Break::Edited { seq, .. }
            | Break::Inserted { seq, .. }
            | Break::Unlinked { seq, .. } => *seq,
            Break::Deleted { from_seq, .. } => *from_seq,
            Break::Truncated { db_seq, .. } => *db_seq + 1,
            Break::Rewritten { seq } => *seq,
        }
    }
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Break::Edited { seq, table } => write!(
                f,
                "record {seq} ({table} row seq={seq}) was edited: its content does not match its hash"
            ),
            Break::Deleted {
                from_seq,
                to_seq,
                next_table,
            } => {
                if from_seq == to_seq {
                    write!(f, "record {from_seq} was deleted")?;
                } else {
                    write!(f, "records {from_seq}..{to_seq} were deleted")?;
                }
                if let Some(t) = next_table {
                    write!(f, " (the chain resumes at {t} row seq={})", to_seq + 1)?;
                }
                Ok(())
            }
            Break::Inserted { seq, table } => write!(
                f,
                "record {seq} ({table} row seq={seq}) was inserted: its position is already taken or precedes the chain's start"
            ),
            Break::Unlinked { seq, table } => write!(
                f,
                "record {seq} ({table} row seq={seq}) does not link to record {}: records were inserted or reordered",
                seq - 1
            ),
            Break::Truncated { db_seq, head_seq } => write!(
                f,
                "the newest records were deleted: the database ends at record {db_seq}, the head file names record {head_seq}"
            ),
            Break::Rewritten { seq } => write!(
                f,
                "record {seq} has another hash than the head file recorded: the chain was recomputed after an edit"
            ),
        }
    }
}

/// Result of [`verify`].
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub records: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The checkpoint the kept chain starts from (after retention), if any.
    pub checkpoint: Option<i64>,
    pub head: Option<String>,
    /// The first break, if any.
    pub broken: Option<Break>,
}

struct Link {
    seq: i64,
    table: &'static str,
    prev: Vec<u8>,
    hash: Vec<u8>,
    content_ok: bool,
    /// For checkpoints: (kept_from, anchor).
    start: Option<(i64, Vec<u8>)>,
}

/// Recomputes every record's hash and walks the chain in order; names the first break.
pub fn verify(conn: &Connection, head: Option<&Head>) -> Result<Verdict> {
    let mut links = Vec::new();
    for table in TABLES {
        read_links(conn, table, &mut links)?;
    }
    links.sort_by_key(|l| l.seq);
    let start = links
        .iter()
        .rev()
        .find_map(|l| l.start.clone().map(|s| (l.seq, s)));
    let (checkpoint, (mut expect_seq, mut expect_prev)) = match start {
        Some((cp, s)) => (Some(cp), s),
        None => (None, (1, GENESIS.to_vec())),
    };
    let mut broken = None;
    for l in &links {
        let found = if l.seq < expect_seq {
            Some(Break::Inserted {
                seq: l.seq,
                table: l.table.to_owned(),
            })
        } else if l.seq > expect_seq {
            Some(Break::Deleted {
                from_seq: expect_seq,
                to_seq: l.seq - 1,
                next_table: Some(l.table.to_owned()),
            })
        } else if !l.content_ok {
            Some(Break::Edited {
                seq: l.seq,
                table: l.table.to_owned(),
            })
        } else if l.prev != expect_prev {
            // A moved record's stored link points at another record.
            Some(Break::Unlinked {
                seq: l.seq,
                table: l.table.to_owned(),
            })
        } else {
            None
        };
        if found.is_some() {
            broken = found;
            break;
        }
        expect_prev = l.hash.clone();
        expect_seq = l.seq + 1;
    }
    let last = links.last();
    if broken.is_none()
        && let Some(h) = head
    {
        let db_seq = last.map_or(0, |l| l.seq);
        if h.seq > db_seq {
            broken = Some(Break::Truncated {
                db_seq,
                head_seq: h.seq,
            });
        } else if let Some(l) = links.iter().find(|l| l.seq == h.seq)
            && hex(&l.hash) != h.hash
        {
            broken = Some(Break::Rewritten { seq: l.seq });
        }
    }
    Ok(Verdict {
        records: links.len() as u64,
        first_seq: links.first().map(|l| l.seq),
        last_seq: last.map(|l| l.seq),
        checkpoint,
        head: last.map(|l| hex(&l.hash)),
        broken,
    })
}

fn read_links(conn: &Connection, table: &'static Table, out: &mut Vec<Link>) -> Result<()> {
    let n = table.columns.len();
    let mut stmt = conn.prepare(&table.select_sql())?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let prev = blob(r.get_ref(n + 1)?);
        let hash = blob(r.get_ref(n + 2)?);
        let values = (1..=n)
            .map(|i| r.get_ref(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let computed = link_hash(
            prev.as_slice().try_into().unwrap_or(&GENESIS),
            seq,
            table,
            values,
        );
        let content_ok = prev.len() == 32 && computed.as_slice() == hash.as_slice();
        let start = if std::ptr::eq(table, &CHECKPOINTS) && content_ok {
            let at = |c: &str| 1 + table.columns.iter().position(|x| *x == c).unwrap_or(0);
            let kept_from = r.get::<_, i64>(at("kept_from"))?;
            Some((kept_from, blob(r.get_ref(at("anchor"))?)))
        } else {
            None
        };
        out.push(Link {
            seq,
            table: table.name,
            prev,
            hash,
            content_ok,
            start,
        });
    }
    Ok(())
}

fn blob(v: ValueRef<'_>) -> Vec<u8> {
    match v {
        ValueRef::Blob(b) => b.to_vec(),
        ValueRef::Text(t) => t.to_vec(),
        _ => Vec::new(),
    }
}
