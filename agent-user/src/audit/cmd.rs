//! `agentwarden audit verify|query|timeline|export`: read the store directly (the daemon
//! need not run; an incident review often happens after it stopped).

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use agent_common::vocab::{Action, Verdict};
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand, ValueEnum, builder::PossibleValuesParser};

use super::{
    ocsf,
    query::{self, Filter, Reader},
    store, timeline,
};
use crate::{output, policy::net::Cidr};

/// A filter's possible values: the words of a vocabulary (`agent_common::vocab`).
fn words(w: impl Iterator<Item = &'static str>) -> PossibleValuesParser {
    PossibleValuesParser::new(w.collect::<Vec<_>>())
}

/// Where the daemon keeps the store by default (`daemon --state-dir`).
pub const DEFAULT_DB: &str = "/var/lib/agentwarden/audit.db";

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check the hash chain: exit 0 when it is whole, 1 naming the first broken record.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Recorded actions with their decisions, filtered; a table or JSON lines with the
    /// full execution context (session, owners, principal, lineage).
    Query {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// One session (`--session`, required) as a process tree with its actions in order;
    /// the other filters narrow the actions shown (`--kind exec,connect`, `--decision deny`).
    Timeline {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Records for a SIEM: JSON lines with context, or OCSF (Process, File System and
    /// Network Activity).
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Write here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Jsonl,
    Ocsf,
}

#[derive(Args, Debug, Default)]
pub struct FilterArgs {
    /// Session id or name.
    #[arg(long)]
    session: Option<String>,
    /// Agent (profile name).
    #[arg(long)]
    agent: Option<String>,
    /// Business or technical owner of the profile, or the principal's user name.
    #[arg(long)]
    owner: Option<String>,
    /// From this time on: RFC 3339, or a duration ago (`2h`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// Before this time: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// `allow` or `deny`.
    #[arg(long, value_parser = words(Verdict::ALL.iter().map(|v| v.as_str())))]
    decision: Option<String>,
    /// What happened: `allowed`, `blocked`, `killed` or `alerted`.
    #[arg(long, value_parser = words(Action::ALL.iter().map(|v| v.as_str())))]
    action: Option<String>,
    /// Paths starting with this (exec and open).
    #[arg(long)]
    path_prefix: Option<String>,
    /// Destination address or network (CIDR) of connects and network decisions.
    #[arg(long)]
    dest: Option<String>,
    /// Destination port.
    #[arg(long)]
    port: Option<u16>,
    /// Event kinds, comma-separated (exec, open, connect, net_decision, fork, exit, ...).
    #[arg(long, value_delimiter = ',')]
    kind: Vec<String>,
    /// At most this many records.
    #[arg(long)]
    limit: Option<usize>,
    /// One tool call, by the id its agent gave it: the call, its result and every
    /// action under it.
    #[arg(long)]
    tool_call: Option<String>,
    /// The calls of one tool (`Bash`, `Read`, `mcp__github__create_issue`), with their
    /// results and actions.
    #[arg(long)]
    tool: Option<String>,
}

impl FilterArgs {
    fn filter(self) -> Result<Filter> {
        Ok(Filter {
            session: self.session,
            agent: self.agent,
            owner: self.owner,
            since_ns: self.since.as_deref().map(query::parse_time).transpose()?,
            until_ns: self.until.as_deref().map(query::parse_time).transpose()?,
            decision: self.decision,
            action: self.action,
            path_prefix: self.path_prefix,
            dest: self
                .dest
                .as_deref()
                .map(|d| Cidr::parse(d).map_err(|e| anyhow::anyhow!("--dest {d}: {e}")))
                .transpose()?,
            port: self.port,
            kinds: self.kind,
            limit: self.limit,
            tool_call: self.tool_call,
            tool: self.tool,
        })
    }
}

// Long: one arm per `audit` subcommand, each a query and its printing.
pub fn run(db: &std::path::Path, cmd: AuditCmd) -> Result<ExitCode> {
    match cmd {
        AuditCmd::Verify { json } => {
            let v = super::verify(db)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let range = match (v.first_seq, v.last_seq) {
                    (Some(a), Some(b)) => format!("records {a}..{b}"),
                    _ => "no records".to_owned(),
                };
                let start = v.checkpoint.map_or("genesis".to_owned(), |c| {
                    format!("retention checkpoint (record {c})")
                });
                match &v.broken {
                    None => println!(
                        "audit chain OK: {} records ({range}), starting at {start}, head {}",
                        v.records,
                        v.head.as_deref().unwrap_or("-")
                    ),
                    Some(b) => println!("audit chain BROKEN at record {}: {b}", b.seq()),
                }
            }
            Ok(if v.broken.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        AuditCmd::Query { filter, json } => {
            let conn = store::open_read_only(db)?;
            let mut r = Reader::new(&conn);
            let records = r.query(&filter.filter()?, json)?;
            let out = std::io::stdout();
            let mut w = BufWriter::new(out.lock());
            if json {
                for rec in &records {
                    writeln!(w, "{}", serde_json::to_string(rec)?)?;
                }
            } else {
                let rows: Vec<Vec<String>> = records
                    .iter()
                    .map(|rec| {
                        // The `events` row with the chain position, agent and principal.
                        let mut row = output::event_row(&rec.event);
                        if let Some(last) = row.last_mut() {
                            *last = rec.detail();
                        }
                        row.insert(0, rec.audit_seq.to_string());
                        row.insert(3, rec.event.session.profile.clone());
                        row.insert(
                            4,
                            rec.context
                                .as_ref()
                                .and_then(|c| c.principal.user.clone())
                                .unwrap_or_default(),
                        );
                        row
                    })
                    .collect();
                write!(
                    w,
                    "{}",
                    output::table(
                        &[
                            "SEQ",
                            "TIME",
                            "SESSION",
                            "AGENT",
                            "PRINCIPAL",
                            "PID",
                            "COMM",
                            "KIND",
                            "DETAIL"
                        ],
                        &rows
                    )
                )?;
            }
            w.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Timeline { filter } => {
            let Some(session) = filter.session.clone() else {
                anyhow::bail!("audit timeline needs --session ID|NAME");
            };
            let conn = store::open_read_only(db)?;
            let mut r = Reader::new(&conn);
            let s = r.find_session(&session)?;
            let mut filter = filter.filter()?;
            filter.session = Some(s.session_id.clone());
            let records = r.query(&filter, false)?;
            let summary = r.summary(&s.session_id)?;
            print!("{}", timeline::render(&s, &summary, &records));
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Export {
            filter,
            format,
            output,
        } => {
            let conn = store::open_read_only(db)?;
            let mut r = Reader::new(&conn);
            let records = r.query(&filter.filter()?, true)?;
            let mut w: Box<dyn Write> = match &output {
                Some(p) => Box::new(BufWriter::new(
                    File::create(p).with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(BufWriter::new(std::io::stdout().lock())),
            };
            let (mut written, mut skipped) = (0, 0);
            for rec in &records {
                let v = match format {
                    Format::Jsonl => Some(serde_json::to_value(rec)?),
                    Format::Ocsf => ocsf::record(rec),
                };
                match v {
                    Some(v) => {
                        writeln!(w, "{v}")?;
                        written += 1;
                    }
                    None => skipped += 1,
                }
            }
            w.flush()?;
            eprintln!(
                "exported {written} record(s){}",
                if skipped > 0 {
                    format!(
                        ", {skipped} without an OCSF class (session start/end, losses) left out"
                    )
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
