//! The audit trail: every material action with its execution context, in an embedded
//! SQLite database, hash-chained, queryable with plain SQL and exported as JSON lines or
//! OCSF. The schema is documented in `docs/audit.md`.

pub mod chain;
pub mod cmd;
pub mod ocsf;
pub mod query;
pub mod records;
pub mod schema;
pub mod store;
pub mod timeline;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;

use std::path::Path;

use anyhow::Result;

pub use self::{
    records::{BaselineRecord, Item, SessionRecord},
    store::{AuditConfig, AuditCounters, AuditSink, AuditStats},
};

/// Name of the database in the daemon's state directory.
pub const AUDIT_DB: &str = "audit.db";

/// Verifies the chain of the database at `db` against its head file.
pub fn verify(db: &Path) -> Result<chain::Verdict> {
    let conn = store::open_read_only(db)?;
    let head = chain::Head::read(&store::head_path(db));
    chain::verify(&conn, head.as_ref())
}
