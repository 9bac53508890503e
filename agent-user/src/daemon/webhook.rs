//! The approval webhook (`--approval-webhook URL`): every new held-operation request is
//! POSTed as JSON, so a person can answer from a chat or ticket system through whatever
//! relays it. The service may answer in the same exchange (holding it open while a person
//! decides, up to the request's timeout) or later with `agentwarden approve|deny`.
//!
//! Both directions are signed with a shared secret (HMAC-SHA256 over the body, hex, in
//! `X-Agentwarden-Signature: sha256=…`): the service can tell the request came from this
//! daemon, and the daemon takes an answer only from someone holding the secret (a process
//! that squats the service's port cannot approve). The approver the answer names is
//! recorded as `via: webhook`.
//!
//! Request: `{"request": <the pending view>, "answer_by": RFC 3339}`.
//! Answer (200): `{"answer": "approve"|"deny", "approver": "…", "scope":
//! "once"|"session"|"duration", "for_secs": N, "note": "…"}`; 202 or 204: no answer here.

use std::{path::Path, sync::atomic::Ordering};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{approvals::Answer, *};
use crate::event::{ApprovalScope, Approver};

/// The signature header, both ways.
pub const SIGNATURE: &str = "X-Agentwarden-Signature";

/// Largest answer body read.
const ANSWER_MAX: u64 = 64 * 1024;

/// Where requests go, and the secret that signs them and their answers.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Webhook").field("url", &self.url).finish()
    }
}

impl Webhook {
    /// The webhook at `url`, its secret read from `secret_file` (owned by root or the
    /// daemon's user, readable by no one else: it is what approves).
    pub fn new(url: &str, secret_file: &Path) -> Result<Self> {
        if !url.starts_with("http://") {
            bail!(
                "--approval-webhook `{url}`: only http:// (a relay on this host, which \
                 terminates TLS onwards)"
            );
        }
        let meta = fs::metadata(secret_file)
            .with_context(|| format!("reading {}", secret_file.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "{}: mode {:o} lets others read the approval secret; chmod 600 it",
                secret_file.display(),
                meta.permissions().mode() & 0o777
            );
        }
        let secret = fs::read(secret_file)
            .with_context(|| format!("reading {}", secret_file.display()))?
            .trim_ascii()
            .to_vec();
        if secret.len() < 16 {
            bail!(
                "{}: the approval secret must be at least 16 bytes",
                secret_file.display()
            );
        }
        Ok(Self {
            url: url.to_owned(),
            secret,
        })
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!(
        "sha256={}",
        crate::audit::chain::hex(&mac.finalize().into_bytes())
    )
}

/// Whether `header` is `body`'s signature under `secret` (compared in constant time).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Some(sig) = unhex(hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The webhook's answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    answer: String,
    approver: String,
    #[serde(default)]
    scope: ApprovalScope,
    #[serde(default)]
    for_secs: Option<u64>,
    #[serde(default)]
    note: Option<String>,
}

/// Sends each new request (by id) to the webhook, and applies the answers.
pub(super) async fn run(
    shared: Arc<Shared>,
    hook: Webhook,
    stats: Arc<refusal::Stats>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<u64>,
) {
    while let Some(id) = rx.recv().await {
        let found = {
            let mut core = shared.core();
            let escalation = core
                .kernel
                .policy
                .refusal
                .as_ref()
                .map(|r| r.escalation.clone());
            escalation.and_then(|e| {
                let (q, waiting) = e.request(id)?;
                Some((control::pending_view(&mut core, &q, waiting), e))
            })
        };
        // Answered already (or the layer is gone): nothing to ask.
        let Some((view, escalation)) = found else {
            continue;
        };
        let (hook, stats) = (hook.clone(), stats.clone());
        tokio::task::spawn_blocking(move || {
            stats.webhook_sent.fetch_add(1, Ordering::Relaxed);
            match exchange(&hook, &view) {
                Ok(None) => {}
                Ok(Some(answer)) => match escalation.answer(id, answer) {
                    Ok(held) => {
                        stats.webhook_answered.fetch_add(1, Ordering::Relaxed);
                        info!(
                            request = id,
                            held, "approval request answered by the webhook"
                        );
                    }
                    Err(e) => {
                        stats.webhook_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(request = id, error = %format!("{e:#}"), "the webhook's answer changed nothing");
                    }
                },
                Err(e) => {
                    stats.webhook_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(request = id, url = %hook.url, error = %format!("{e:#}"), "approval webhook");
                }
            }
        });
    }
}

/// One exchange: the request out, the answer (if any) back and checked.
fn exchange(hook: &Webhook, view: &crate::proto::PendingView) -> Result<Option<Answer>> {
    let wait = Duration::from_secs(view.timeout_secs)
        .saturating_sub(Duration::from_millis(view.waiting_ms))
        .max(Duration::from_secs(1));
    let answer_by = humantime::format_rfc3339_millis(SystemTime::now() + wait).to_string();
    let body = serde_json::to_vec(&serde_json::json!({
        "request": view,
        "answer_by": answer_by,
    }))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(wait))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(&hook.url)
        .header(SIGNATURE, sign(&hook.secret, &body))
        .content_type("application/json")
        .send(&body[..])
        .map_err(|e| anyhow!("POST {}: {e}", hook.url))?;
    let status = resp.status().as_u16();
    if status == 202 || status == 204 {
        return Ok(None);
    }
    if status != 200 {
        bail!("the webhook answered {status}");
    }
    let sig = resp
        .headers()
        .get(SIGNATURE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let answer = resp
        .body_mut()
        .with_config()
        .limit(ANSWER_MAX)
        .read_to_vec()
        .map_err(|e| anyhow!("reading the answer: {e}"))?;
    if !verify(&hook.secret, &answer, &sig) {
        bail!("the answer's {SIGNATURE} does not match the shared secret; ignored");
    }
    parse(&answer).map(Some)
}

/// A signed answer's content as the daemon takes it.
fn parse(body: &[u8]) -> Result<Answer> {
    let r: Reply = serde_json::from_slice(body).map_err(|e| anyhow!("the answer: {e}"))?;
    let allow = match r.answer.as_str() {
        "approve" => true,
        "deny" => false,
        other => bail!("the answer `{other}` is neither `approve` nor `deny`"),
    };
    if r.approver.trim().is_empty() {
        bail!("the answer names no approver");
    }
    Ok(Answer {
        allow,
        by: Approver {
            via: "webhook".to_owned(),
            uid: None,
            user: Some(r.approver),
            pid: None,
        },
        note: r.note,
        scope: r.scope,
        duration: r.for_secs.map(Duration::from_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_secret_and_the_body() {
        let s = sign(b"0123456789abcdef", b"{}");
        assert!(verify(b"0123456789abcdef", b"{}", &s));
        assert!(!verify(b"0123456789abcdeX", b"{}", &s));
        assert!(!verify(b"0123456789abcdef", b"{ }", &s));
        assert!(!verify(b"0123456789abcdef", b"{}", "sha256=zz"));
        assert!(!verify(b"0123456789abcdef", b"{}", ""));
    }

    #[test]
    fn answers_name_an_approver_and_a_known_word() {
        let a = parse(br#"{"answer":"approve","approver":"alice","scope":"session","note":"ok"}"#)
            .unwrap();
        assert_eq!(
            (a.allow, a.scope, a.by.user.as_deref(), a.by.via.as_str()),
            (true, ApprovalScope::Session, Some("alice"), "webhook")
        );
        assert!(parse(br#"{"answer":"maybe","approver":"a"}"#).is_err());
        assert!(parse(br#"{"answer":"deny","approver":" "}"#).is_err());
        assert!(parse(br#"{"answer":"deny","approver":"a","extra":1}"#).is_err());
    }
}
