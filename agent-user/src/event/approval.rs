//! Escalation: an operation a profile's `on_violation: ask` rule held until a person
//! answered (or its timeout did), and who that was.

use serde::{Deserialize, Serialize};

/// How a held operation was answered.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approved,
    Denied,
    /// No answer in time: the rule's `on_timeout` decided (`allowed` says which way).
    TimedOut,
}

/// How far an approval reaches.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The operations waiting on this request only.
    #[default]
    Once,
    /// This object under this rule for the rest of the session.
    Session,
    /// This object under this rule in this session until `until`.
    Duration,
}

/// Who answered a request: the control socket's peer as the kernel gave it, or the
/// approver the webhook named in an answer signed with the shared secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Approver {
    /// `control` (`agentwarden approve|deny`) or `webhook`.
    pub via: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The answering process (`agentwarden approve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// A held operation's answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalInfo {
    /// The request's number, as `agentwarden pending` showed it (restarts with the
    /// daemon).
    pub request: u64,
    /// What the process was doing: `open`, `read` (of a descriptor it held) or `exec`.
    pub access: String,
    /// The object, by the path the daemon found for it.
    pub path: String,
    pub outcome: Outcome,
    /// Whether the operation went ahead.
    pub allowed: bool,
    /// Who answered (`None`: the timeout did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Approver>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub scope: Scope,
    /// Until when a `duration` grant stands (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// When the first operation was held (RFC 3339).
    pub requested: String,
    /// How long it was held, in milliseconds.
    pub waited_ms: u64,
    /// Operations that waited on the request and were answered with it.
    pub held: u32,
}
