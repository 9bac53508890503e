//! Agent profiles: the YAML format, its validation with located diagnostics, and the
//! compiled form the daemon uses. Pattern and destination semantics are in
//! [`pattern`] and [`net`]; the format is documented in `rules/README.md`.

pub mod compile;
pub mod decide;
pub mod environment;
pub mod landlock;
pub mod net;
pub mod pattern;
pub mod selectors;
pub mod show;
pub mod syscalls;
pub mod tools;

use std::{fmt, path::Path};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use self::{
    net::{Cidr, PortRange, check_host},
    pattern::{KernelForm, Pattern},
};

/// A profile file as written.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "agentwarden agent profile")]
pub struct ProfileFile {
    /// Unique profile name (`agentwarden run --profile NAME`).
    pub name: String,
    pub description: String,
    /// Who answers for this profile's permissions.
    pub owners: Owners,
    /// `monitor` records would-be decisions and acts on none; `enforce` acts.
    pub mode: Mode,
    #[serde(default)]
    pub exec: PathRules,
    #[serde(default)]
    pub files: FileRules,
    #[serde(default)]
    pub network: NetworkRules,
    /// Syscalls refused to the session (seccomp in `run` sessions).
    #[serde(default)]
    pub syscalls: syscalls::SyscallRules,
    /// The agent's tools, answered by its hook before each call (see `hooks`).
    #[serde(default)]
    pub tools: tools::ToolRules,
    /// The agent's hook mechanism: `agentwarden run` wires agentwarden's hooks into the
    /// agent it starts (Claude Code: `claude-code`), so prompts and tool calls are
    /// recorded and `tools:` rules answered.
    #[serde(default)]
    pub hooks: Option<crate::hooks::Dialect>,
    /// Variables removed or set before the agent starts (`run` sessions).
    #[serde(default)]
    pub environment: environment::EnvRules,
    /// Programs enrolled into a session of this profile by the kernel when a process
    /// outside every session executes them (a developer's shell, an IDE, a CI job, a
    /// pod's entrypoint): before their first instruction.
    #[serde(default, rename = "match")]
    #[schemars(with = "Vec<selectors::Selector>")]
    pub selectors: Vec<Spanned<selectors::Selector>>,
    /// Judge every action of the named profile's sessions by this profile too, in
    /// shadow: where its verdict differs from the one in force, it is recorded on the
    /// action (`shadow`, `would_deny`), never enforced. A draft (`profile learn`) is tried
    /// this way before it enforces.
    #[serde(default)]
    pub shadow_of: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Owners {
    /// The business owner (a team or person accountable for the agent's use).
    pub business: String,
    /// The technical owner (who maintains this profile).
    pub technical: String,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Monitor,
    Enforce,
}

impl Mode {
    /// The name used in profiles and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Default {
    #[default]
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Refuse the operation (EPERM/EACCES) before it happens.
    #[default]
    Block,
    /// End the whole process before it returns to user mode with the result.
    Kill,
    /// Record only.
    Alert,
    /// Hold the operation until a person answers (`agentwarden approve|deny`), or until
    /// `timeout`, when `on_timeout` decides. Files and programs that `deny` names.
    Ask,
}

/// What an `ask` nobody answered in time comes to.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    #[default]
    Deny,
    Allow,
}

/// How long an `ask` waits when the profile does not say.
pub const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// The longest wait a profile may ask for: a process held in the kernel holds what it
/// holds (locks, a terminal) for as long.
pub const ASK_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    Kill,
    Alert,
}

/// Executables.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathRules {
    #[serde(default)]
    pub default: Default,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub on_violation: OnViolation,
    /// What to do where no layer on the host can `block`.
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// Programs run from memory: an executable with no name in any filesystem (a
    /// `memfd`, an `O_TMPFILE` or deleted file). `deny` meets it like a deny rule
    /// (`on_violation`), `alert` records it. Decided by the refusal layer (fanotify).
    #[serde(default)]
    pub fileless: Fileless,
    /// `ask`: how long a held exec waits for an answer (`30s`, `5m`; default 2m, at most
    /// 1h).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// `ask`: what an exec nobody answered in time comes to (default `deny`).
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fileless {
    #[default]
    Allow,
    Alert,
    Deny,
}

/// File access.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRules {
    #[serde(default)]
    pub default: Default,
    /// Paths that may be read (when `default: deny`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub read: Vec<Spanned<String>>,
    /// Paths that may be written (when `default: deny`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub write: Vec<Spanned<String>>,
    /// Never accessible (credentials, keys, secrets); wins over everything.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub on_violation: OnViolation,
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// `ask`: how long a held open waits for an answer (`30s`, `5m`; default 2m, at most
    /// 1h).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// `ask`: what an open nobody answered in time comes to (default `deny`).
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

/// Outgoing TCP connects and UDP sends.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRules {
    #[serde(default)]
    pub default: Default,
    #[serde(default)]
    #[schemars(with = "Vec<Destination>")]
    pub allow: Vec<Spanned<Destination>>,
    #[serde(default)]
    #[schemars(with = "Vec<Destination>")]
    pub deny: Vec<Spanned<Destination>>,
    /// Destinations sent to another endpoint instead (an egress proxy, a DLP gateway, a
    /// recording proxy): the kernel rewrites the address before the connect or send,
    /// whatever the agent's proxy settings; checked before `deny` and `allow`.
    #[serde(default)]
    #[schemars(with = "Vec<Redirect>")]
    pub redirect: Vec<Spanned<Redirect>>,
    #[serde(default)]
    pub on_violation: OnViolation,
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// `ask`: how long a held connection waits for an answer (`30s`, `5m`; default 2m,
    /// at most 1h).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// `ask`: what a connection nobody answered in time comes to (default `deny`).
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

/// A `network.redirect` entry: one of `cidr` or `host`, optional ports, and `to`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default)]
    pub cidr: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub ports: Option<Ports>,
    /// Where such connections go instead: `IP:PORT` (`127.0.0.1:3128`, `[::1]:8080`).
    pub to: String,
}

/// Exactly one of `cidr`, `host` or `nameservers`, and optional ports (default: all;
/// 53 for `nameservers`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// `10.0.0.0/8`, `::1/128` or a bare address.
    #[serde(default)]
    pub cidr: Option<String>,
    /// A DNS name, resolved by the daemon and refreshed on its TTL.
    #[serde(default)]
    pub host: Option<String>,
    /// `system`: the name servers the host's `/etc/resolv.conf` names (re-read by the
    /// daemon as it changes), so that an agent can resolve the hosts it may reach on
    /// any host: a systemd-resolved stub, a DHCP-given server, a cluster's DNS.
    #[serde(default)]
    pub nameservers: Option<Nameservers>,
    #[serde(default)]
    pub ports: Option<Ports>,
}

/// Whose name servers a `nameservers` destination names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Nameservers {
    /// The host's, from its resolver configuration.
    System,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Ports {
    One(u16),
    /// `"443"` or `"8000-8100"`.
    Range(String),
    List(Vec<PortItem>),
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PortItem {
    One(u16),
    Range(String),
}

/// Where a diagnostic points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// Dotted path of the field (`files.deny[2]`).
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
    pub severity: Severity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// A rule with where it was written, for events ("which rule matched").
#[derive(Clone, Debug)]
pub struct Located<T> {
    pub value: T,
    pub line: u64,
    pub column: u64,
}

/// A destination after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Cidr(Cidr),
    Host(String),
    /// The system's name servers (resolved by the daemon from its resolver
    /// configuration).
    Nameservers,
}

#[derive(Clone, Debug)]
pub struct CompiledDestination {
    pub target: Target,
    pub ports: Vec<PortRange>,
}

/// A validated profile.
#[derive(Clone, Debug)]
pub struct Profile {
    pub file: ProfileFile,
    pub source: String,
    /// SHA-256 of the profile's text, hex: which version of the profile a session ran
    /// under (recorded in the audit trail).
    pub sha256: String,
    pub exec_allow: Vec<Located<Pattern>>,
    pub exec_deny: Vec<Located<Pattern>>,
    pub files_read: Vec<Located<Pattern>>,
    pub files_write: Vec<Located<Pattern>>,
    pub files_deny: Vec<Located<Pattern>>,
    pub net_allow: Vec<Located<CompiledDestination>>,
    pub net_deny: Vec<Located<CompiledDestination>>,
    /// `network.redirect`: destinations and the endpoint each goes to instead.
    pub net_redirect: Vec<Located<(CompiledDestination, std::net::SocketAddr)>>,
    /// Non-fatal findings (e.g. rules that can only alert).
    pub warnings: Vec<Diagnostic>,
    /// For exec and files: whether the kernel's decision is the whole decision
    /// ([`decide::kernel_decides`]).
    pub kernel_decides: [bool; 2],
    /// Line of `exec.fileless` (0: not written), for the rule its decisions name.
    pub fileless_line: u64,
    /// The syscalls `syscalls.deny` names (groups resolved, `allow` removed), x86_64.
    pub syscall_deny: Vec<syscalls::DeniedCall>,
    pub tools_allow: Vec<Located<tools::ToolPattern>>,
    pub tools_deny: Vec<Located<tools::ToolPattern>>,
    /// `match:`, checked.
    pub selectors: Vec<selectors::CheckedSelector>,
    pub env_remove: Vec<Located<environment::EnvPattern>>,
    /// `[exec, files, network, tools]`: how a held operation waits, where the section
    /// says `ask`.
    pub ask: [Option<AskRule>; 4],
}

/// An `ask` section's wait: how long, and what silence comes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AskRule {
    pub timeout: std::time::Duration,
    pub on_timeout: OnTimeout,
}

/// Parses and validates one profile; `source` names it in diagnostics.
// Long: one validation per field, each with its located diagnostic; all are collected before failing.
pub fn parse(source: &str, text: &str) -> Result<Profile, Vec<Diagnostic>> {
    let file: ProfileFile = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let first = e
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid profile")
            .to_owned();
        // The parser prefixes its own "error: line L column C: "; the diagnostic says that.
        let message = match first.split_once(": ").map(|(a, b)| (a, b.split_once(": "))) {
            Some(("error", Some((loc, rest)))) if loc.starts_with("line ") => rest.to_owned(),
            _ => first,
        };
        vec![Diagnostic {
            file: source.to_owned(),
            line,
            column,
            field: missing_field(&message).unwrap_or_else(|| field_at(text, line)),
            hint: hint_for(&message),
            message,
            severity: Severity::Error,
        }]
    })?;
    let mut c = Checker {
        source,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    for (field, v) in [
        ("owners.business", &file.owners.business),
        ("owners.technical", &file.owners.technical),
    ] {
        if v.trim().is_empty() {
            c.error(
                text_line(text, field),
                1,
                field,
                "must not be empty",
                "every live permission needs an owner",
            );
        }
    }
    if file.name.trim().is_empty()
        || !file
            .name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        c.error(
            text_line(text, "name"),
            1,
            "name",
            &format!("`{}` is not a valid profile name", file.name),
            "use letters, digits, `-` and `_`",
        );
    }
    if let Some(of) = &file.shadow_of
        && (of.trim().is_empty() || *of == file.name)
    {
        c.error(
            text_line(text, "shadow_of"),
            1,
            "shadow_of",
            &format!("`{of}`: a profile shadows another profile, by its name"),
            "name the enforcing profile whose sessions this one is tried on",
        );
    }
    let exec_allow = c.patterns("exec.allow", &file.exec.allow);
    let exec_deny = c.patterns("exec.deny", &file.exec.deny);
    let files_read = c.patterns("files.read", &file.files.read);
    let files_write = c.patterns("files.write", &file.files.write);
    let files_deny = c.patterns("files.deny", &file.files.deny);
    let net_allow = c.destinations("network.allow", &file.network.allow);
    let net_deny = c.destinations("network.deny", &file.network.deny);
    let net_redirect = c.redirects(&file.network.redirect);
    let syscall_deny = c.syscalls(&file.syscalls);
    let tools_allow = c.tool_patterns("tools.allow", &file.tools.allow);
    let tools_deny = c.tool_patterns("tools.deny", &file.tools.deny);
    let selectors = c.selectors(&file.selectors);
    let ask = [
        c.ask(
            "exec",
            text,
            (
                file.exec.on_violation,
                file.exec.default,
                file.exec.fallback,
                &file.exec.timeout,
                file.exec.on_timeout,
            ),
            &exec_deny,
        ),
        c.ask(
            "files",
            text,
            (
                file.files.on_violation,
                file.files.default,
                file.files.fallback,
                &file.files.timeout,
                file.files.on_timeout,
            ),
            &files_deny,
        ),
        c.ask(
            "network",
            text,
            (
                file.network.on_violation,
                // A connection of any destination can be held: the default too.
                Default::Allow,
                file.network.fallback,
                &file.network.timeout,
                file.network.on_timeout,
            ),
            &[],
        ),
        c.ask(
            "tools",
            text,
            (
                if file.tools.on_violation == tools::ToolViolation::Ask {
                    OnViolation::Ask
                } else {
                    OnViolation::Block
                },
                // The hook holds any call a rule denies, the default's too.
                Default::Allow,
                None,
                &file.tools.timeout,
                file.tools.on_timeout,
            ),
            &[],
        ),
    ];
    for (section, v) in [("syscalls", file.syscalls.on_violation)] {
        if v == OnViolation::Ask {
            let field = format!("{section}.on_violation");
            c.error(
                text_line_in(text, section, "on_violation"),
                1,
                &field,
                &format!("`ask` is not available for {section} rules"),
                "`ask` holds opens and execs of what `files.deny` and `exec.deny` name, and \
                 network connects; a syscall cannot wait: use `block`, `kill` or `alert`",
            );
        }
    }
    let mut env_errors = Vec::new();
    let env_remove = environment::check(&file.environment, text, &mut env_errors);
    for (line, column, field, message) in env_errors {
        c.error(
            line,
            column,
            &field,
            &message,
            "`remove: [\"AWS_*\", \"*_TOKEN\"]`, `set: { HTTPS_PROXY: http://127.0.0.1:3128 }`",
        );
    }
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let mut p = Profile {
        source: source.to_owned(),
        sha256: {
            use sha2::Digest as _;
            crate::audit::chain::hex(&sha2::Sha256::digest(text.as_bytes()))
        },
        file,
        exec_allow,
        exec_deny,
        files_read,
        files_write,
        files_deny,
        net_allow,
        net_deny,
        net_redirect,
        warnings: c.warnings,
        kernel_decides: [false; 2],
        fileless_line: text_line(text, "exec.fileless"),
        syscall_deny,
        tools_allow,
        tools_deny,
        selectors,
        env_remove,
        ask,
    };
    p.kernel_decides = [
        decide::kernel_decides(&p, decide::Access::Exec),
        decide::kernel_decides(&p, decide::Access::Read),
    ];
    Ok(p)
}

/// Reads and parses a profile file.
pub fn load(path: &Path) -> Result<Profile, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            file: name.clone(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
            hint: None,
            severity: Severity::Error,
        }]
    })?;
    parse(&name, &text)
}

struct Checker<'a> {
    source: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn diag(
        &self,
        line: u64,
        column: u64,
        field: &str,
        message: &str,
        hint: &str,
        severity: Severity,
    ) -> Diagnostic {
        Diagnostic {
            file: self.source.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message: message.to_owned(),
            hint: (!hint.is_empty()).then(|| hint.to_owned()),
            severity,
        }
    }

    fn error(&mut self, line: u64, column: u64, field: &str, message: &str, hint: &str) {
        let d = self.diag(line, column, field, message, hint, Severity::Error);
        self.errors.push(d);
    }

    fn selectors(
        &mut self,
        list: &[Spanned<selectors::Selector>],
    ) -> Vec<selectors::CheckedSelector> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let (line, column) = (s.referenced.line(), s.referenced.column());
            let field = format!("match[{i}]");
            match selectors::check(&s.value) {
                Ok((exe_paths, argv)) => out.push(selectors::CheckedSelector {
                    selector: s.value.clone(),
                    exe_paths,
                    argv,
                    place: format!("{}:{line}", self.source),
                    field,
                }),
                Err(errors) => {
                    for (suffix, message, hint) in errors {
                        self.error(line, column, &format!("{field}{suffix}"), &message, &hint);
                    }
                }
            }
        }
        out
    }

    fn patterns(&mut self, field: &str, list: &[Spanned<String>]) -> Vec<Located<Pattern>> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let (line, column) = (s.referenced.line(), s.referenced.column());
            let f = format!("{field}[{i}]");
            match Pattern::parse(&s.value) {
                Ok(p) => {
                    if p.kernel_form() == KernelForm::UserspaceOnly {
                        let d = self.diag(
                            line,
                            column,
                            &f,
                            &format!("`{}` needs wildcard matching the kernel does not do: decided in userspace, alert-only", s.value),
                            "use an exact path or a `/dir/**` tree: deny rules are then decided in the kernel, allow lists by Landlock in `run` sessions",
                            Severity::Warning,
                        );
                        self.warnings.push(d);
                    }
                    out.push(Located {
                        value: p,
                        line,
                        column,
                    });
                }
                Err(e) => self.error(line, column, &f, &e.message, &e.hint),
            }
        }
        out
    }

    /// An `ask` section's settings checked, and its wait; `None` where it does not ask.
    /// `ask` holds what the refusal layer can mark, so every `deny` entry must name a
    /// file or a tree, and nothing under `default: deny` (the unlisted rest cannot be
    /// marked) or `fallback` (`ask` has none: without the layer the profile is refused).
    fn ask(
        &mut self,
        section: &str,
        text: &str,
        (v, default, fallback, timeout, on_timeout): (
            OnViolation,
            Default,
            Option<Fallback>,
            &Option<Spanned<String>>,
            OnTimeout,
        ),
        deny: &[Located<Pattern>],
    ) -> Option<AskRule> {
        let at = |key: &str| text_line_in(text, section, key);
        let parsed = timeout.as_ref().and_then(|t| {
            let (line, column) = (t.referenced.line(), t.referenced.column());
            let field = format!("{section}.timeout");
            match humantime::parse_duration(t.value.trim()) {
                Ok(d) if d.is_zero() || d > ASK_TIMEOUT_MAX => {
                    self.error(
                        line,
                        column,
                        &field,
                        &format!("`{}` is outside 1s..1h", t.value),
                        "a held process waits in the kernel for as long: `30s`, `5m`",
                    );
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    self.error(
                        line,
                        column,
                        &field,
                        &format!("`{}` is not a duration: {e}", t.value),
                        "`30s`, `5m`, `1h`",
                    );
                    None
                }
            }
        });
        if v != OnViolation::Ask {
            if let Some(t) = timeout {
                self.error(
                    t.referenced.line(),
                    t.referenced.column(),
                    &format!("{section}.timeout"),
                    "`timeout` is the wait of `on_violation: ask`",
                    "remove it, or set `on_violation: ask`",
                );
            }
            if on_timeout != OnTimeout::Deny {
                self.error(
                    at("on_timeout"),
                    1,
                    &format!("{section}.on_timeout"),
                    "`on_timeout` is the answer to an unanswered `on_violation: ask`",
                    "remove it, or set `on_violation: ask`",
                );
            }
            return None;
        }
        if default == Default::Deny {
            self.error(
                at("default"),
                1,
                &format!("{section}.default"),
                "`ask` holds what `deny` names; under `default: deny` it would have to hold \
                 everything the allow lists leave out",
                "list what to hold in `deny` and keep `default: allow`",
            );
        }
        if fallback.is_some() {
            self.error(
                at("fallback"),
                1,
                &format!("{section}.fallback"),
                "`ask` has no fallback: where the refusal layer (fanotify) is missing, a \
                 session under this profile is refused",
                "remove `fallback`",
            );
        }
        for (i, l) in deny.iter().enumerate() {
            if l.value.kernel_form() == KernelForm::Basename
                || l.value.kernel_form() == KernelForm::UserspaceOnly
            {
                self.error(
                    l.line,
                    l.column,
                    &format!("{section}.deny[{i}]"),
                    "`ask` holds only what a rule names: a file, or a `/dir/**` tree",
                    "name the path (`~/.aws/credentials`) or the tree (`~/.aws/**`)",
                );
            }
        }
        Some(AskRule {
            timeout: parsed.unwrap_or(ASK_TIMEOUT),
            on_timeout,
        })
    }

    fn tool_patterns(
        &mut self,
        field: &str,
        list: &[Spanned<String>],
    ) -> Vec<Located<tools::ToolPattern>> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let (line, column) = (s.referenced.line(), s.referenced.column());
            match tools::ToolPattern::parse(&s.value, &format!("{field}[{i}]")) {
                Ok(value) => out.push(Located {
                    value,
                    line,
                    column,
                }),
                Err(e) => self.error(
                    line,
                    column,
                    &format!("{field}[{i}]"),
                    &e,
                    "`NAME` or `NAME(INPUT)`, `*` and `?` as wildcards: `WebFetch`, \
                     `mcp__*__delete_*`, `Bash(curl *)`",
                ),
            }
        }
        out
    }

    fn syscalls(&mut self, r: &syscalls::SyscallRules) -> Vec<syscalls::DeniedCall> {
        if r.default.value == Default::Deny {
            self.error(
                r.default.referenced.line(),
                r.default.referenced.column(),
                "syscalls.default",
                "`default: deny` is not supported for syscalls",
                "an agent's runtime (node, python, git, shells) uses hundreds of syscalls and a \
                 missing one fails in ways that look like bugs: list what to deny (`deny: \
                 [\"@mount\", \"@module\"]`); `allow` makes exceptions to the groups denied",
            );
        }
        let (denied, errors) = syscalls::resolve(r);
        for (field, line, column, e) in errors {
            self.error(line, column, &field, &e.message, &e.hint);
        }
        denied
    }

    /// `network.redirect` entries: a destination (no `nameservers`) and where it goes.
    fn redirects(
        &mut self,
        list: &[Spanned<Redirect>],
    ) -> Vec<Located<(CompiledDestination, std::net::SocketAddr)>> {
        let mut out = Vec::new();
        for (i, r) in list.iter().enumerate() {
            let (line, column) = (r.referenced.line(), r.referenced.column());
            let f = format!("network.redirect[{i}]");
            let v = &r.value;
            let dest = Destination {
                cidr: v.cidr.clone(),
                host: v.host.clone(),
                nameservers: None,
                ports: v.ports.clone(),
            };
            let to = match v.to.parse::<std::net::SocketAddr>() {
                Ok(a) if a.port() != 0 => Some(a),
                _ => {
                    self.error(
                        line,
                        column,
                        &format!("{f}.to"),
                        &format!("`{}` is not IP:PORT", v.to),
                        "`to: 127.0.0.1:3128` or `to: \"[::1]:8080\"`: an address, not a name \
                         (the kernel rewrites to it)",
                    );
                    None
                }
            };
            if let (Some(d), Some(to)) = (self.destination(&f, &dest, line, column), to) {
                if d.target == Target::Nameservers {
                    continue;
                }
                out.push(Located {
                    value: (d, to),
                    line,
                    column,
                });
            }
        }
        out
    }

    fn destinations(
        &mut self,
        field: &str,
        list: &[Spanned<Destination>],
    ) -> Vec<Located<CompiledDestination>> {
        let mut out = Vec::new();
        for (i, d) in list.iter().enumerate() {
            let (line, column) = (d.referenced.line(), d.referenced.column());
            let f = format!("{field}[{i}]");
            if let Some(value) = self.destination(&f, &d.value, line, column) {
                out.push(Located {
                    value,
                    line,
                    column,
                });
            }
        }
        out
    }

    /// One destination checked (errors named `f`).
    fn destination(
        &mut self,
        f: &str,
        v: &Destination,
        line: u64,
        column: u64,
    ) -> Option<CompiledDestination> {
        let target = match (&v.cidr, &v.host, v.nameservers) {
            (Some(c), None, None) => Cidr::parse(c).map(Target::Cidr),
            (None, Some(h), None) => check_host(h).map(|()| Target::Host(h.to_ascii_lowercase())),
            (None, None, Some(Nameservers::System)) => Ok(Target::Nameservers),
            _ => Err("needs exactly one of `cidr`, `host` or `nameservers`".to_owned()),
        };
        let ports = match &v.ports {
            // DNS: UDP and TCP to port 53.
            None if target == Ok(Target::Nameservers) => Ok(vec![PortRange { lo: 53, hi: 53 }]),
            None => Ok(vec![PortRange::ALL]),
            Some(Ports::One(p)) => PortRange::parse(&p.to_string()).map(|r| vec![r]),
            Some(Ports::Range(s)) => PortRange::parse(s).map(|r| vec![r]),
            Some(Ports::List(items)) => items
                .iter()
                .map(|it| match it {
                    PortItem::One(p) => PortRange::parse(&p.to_string()),
                    PortItem::Range(s) => PortRange::parse(s),
                })
                .collect(),
        };
        match (target, ports) {
            (Ok(target), Ok(ports)) => return Some(CompiledDestination { target, ports }),
            (Err(e), _) => self.error(
                line,
                column,
                f,
                &e,
                "e.g. `{ cidr: 10.0.0.0/8 }`, `{ host: api.example.com, ports: \"443\" }` \
                     or `{ nameservers: system }`",
            ),
            (_, Err(e)) => self.error(
                line,
                column,
                &format!("{f}.ports"),
                &e,
                "ports: \"443\", \"8000-8100\" or a list of those",
            ),
        }
        None
    }
}

/// 1-based line of `key:` in the block of `section:` (0 when absent).
fn text_line_in(text: &str, section: &str, key: &str) -> u64 {
    let mut inside = false;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start();
        if l.len() == t.len() {
            inside = t.starts_with(&format!("{section}:"));
            if inside && t.contains(&format!(" {key}:")) {
                return i as u64 + 1;
            }
            continue;
        }
        if inside && t.starts_with(&format!("{key}:")) {
            return i as u64 + 1;
        }
    }
    0
}

/// 1-based line of the first `key:` in the text (for errors on required scalars).
fn text_line(text: &str, dotted: &str) -> u64 {
    let key = dotted.rsplit('.').next().unwrap_or(dotted);
    text.lines()
        .position(|l| l.trim_start().starts_with(&format!("{key}:")))
        .map_or(0, |i| i as u64 + 1)
}

/// The dotted field path at `line` (1-based), from the indentation of block YAML.
pub fn field_at(text: &str, line: u64) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(mut idx) = (line as usize).checked_sub(1).filter(|i| *i < lines.len()) else {
        return String::new();
    };
    let key_of = |l: &str| -> Option<(usize, String)> {
        let t = l.trim_start();
        if t.starts_with('#') || t.is_empty() {
            return None;
        }
        let indent = l.len() - t.len();
        let t = t.trim_start_matches("- ");
        let key = t.split_once(':')?.0.trim();
        (!key.is_empty() && !key.contains(' ') && !key.starts_with('{'))
            .then(|| (indent, key.to_owned()))
    };
    let mut path = Vec::new();
    let mut limit = usize::MAX;
    loop {
        if let Some((indent, key)) = key_of(lines[idx])
            && indent < limit
        {
            path.push(key);
            limit = indent;
            if indent == 0 {
                break;
            }
        } else if limit == usize::MAX {
            // A list item or value line: its parent key is above with less indentation.
            let l = lines[idx];
            limit = l.len() - l.trim_start().len() + 1;
        }
        if idx == 0 {
            break;
        }
        idx -= 1;
    }
    path.reverse();
    path.join(".")
}

/// `missing field `x`` names the field that is absent, not the line it was noticed at.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.split_once("missing field `")?.1;
    Some(rest.split_once('`')?.0.to_owned())
}

fn hint_for(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some("see rules/README.md for the fields of a profile".into())
    } else if message.contains("missing field") {
        Some("name, description, owners (business, technical) and mode are required".into())
    } else if message.contains("unknown variant") {
        Some("check the allowed values listed in the message".into())
    } else {
        None
    }
}

/// All diagnostics as one error (for callers that stop on them).
pub fn to_error(diags: Vec<Diagnostic>) -> anyhow::Error {
    let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("invalid profile:\n{}", text.join("\n"))
}

/// The JSON Schema of the profile format (shipped as `rules/agentwarden-profile.schema.json`).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(ProfileFile);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests;
