//! Path patterns of profiles (documented with examples in `rules/README.md`):
//!
//! - absolute (`/etc/shadow`) or home-relative (`~/.ssh/**`, `~` is the home directory
//!   of the session's user, expanded when the session starts);
//! - `*` matches any characters within one path segment (never `/`);
//! - `**` is a whole segment matching zero or more segments (`/a/**` matches `/a` and
//!   everything below it; `**/.env` matches `.env` in any directory);
//! - no `.`/`..` segments and no empty segments: paths are compared as the kernel
//!   resolved them, so a pattern must name the real path.

use std::fmt;

/// A validated pattern, split into segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    home_relative: bool,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// A segment with `*` wildcards: the literal pieces between them.
    Wild(Vec<String>),
    /// `**`
    Any,
}

/// Why a pattern is invalid, with a hint for the author.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    pub message: String,
    pub hint: String,
}

/// How the kernel can match a pattern (what `profile lint` reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelForm {
    /// One exact path (hash map).
    Exact,
    /// A directory and everything below it (`/dir/**`: longest-prefix trie).
    Prefix,
    /// A file name in any directory (`**/.env`: hash of the final component).
    Basename,
    /// Needs wildcard matching the kernel does not do: decided in userspace, alert-only.
    UserspaceOnly,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Pattern {
    pub fn parse(source: &str) -> Result<Self, PatternError> {
        let err = |message: &str, hint: &str| PatternError {
            message: message.into(),
            hint: hint.into(),
        };
        let (home_relative, rest) = if source == "~" {
            (true, "")
        } else if let Some(r) = source.strip_prefix("~/") {
            (true, r)
        } else if let Some(r) = source.strip_prefix('/') {
            (false, r)
        } else if source.starts_with("**/") {
            (false, source)
        } else {
            return Err(err(
                &format!("pattern `{source}` is not absolute"),
                "start with `/`, `~/` (the session user's home) or `**/` (any directory)",
            ));
        };
        let mut segments = Vec::new();
        for seg in rest.split('/') {
            if rest.is_empty() {
                break;
            }
            match seg {
                "" => {
                    return Err(err(
                        &format!("pattern `{source}` has an empty segment"),
                        "remove the doubled or trailing `/` (write `/dir/**` for a directory tree)",
                    ));
                }
                "." | ".." => {
                    return Err(err(
                        &format!("pattern `{source}` contains `{seg}`"),
                        "write the resolved path: decisions use the path the kernel resolved",
                    ));
                }
                "**" => segments.push(Segment::Any),
                s if s.contains("**") => {
                    return Err(err(
                        &format!("`**` must be a whole segment in `{source}`"),
                        "use `*` within a segment, `**` alone between slashes",
                    ));
                }
                s if s.contains('*') => {
                    segments.push(Segment::Wild(s.split('*').map(str::to_owned).collect()));
                }
                s => segments.push(Segment::Literal(s.to_owned())),
            }
        }
        Ok(Self {
            source: source.to_owned(),
            home_relative,
            segments,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_home_relative(&self) -> bool {
        self.home_relative
    }

    /// How the kernel can express this pattern.
    pub fn kernel_form(&self) -> KernelForm {
        let (last, init) = match self.segments.split_last() {
            Some(x) => x,
            None => return KernelForm::Exact,
        };
        let literal_init = init.iter().all(|s| matches!(s, Segment::Literal(_)));
        match (init, last) {
            (_, Segment::Literal(_)) if literal_init => KernelForm::Exact,
            (_, Segment::Any) if literal_init => KernelForm::Prefix,
            ([Segment::Any], Segment::Literal(_)) => KernelForm::Basename,
            _ => KernelForm::UserspaceOnly,
        }
    }

    /// Matches an absolute, resolved `path`; `home` replaces `~`.
    pub fn matches(&self, path: &str, home: &str) -> bool {
        let mut parts: Vec<&str> = Vec::new();
        if self.home_relative {
            match path.strip_prefix(home.trim_end_matches('/')) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                    parts.extend(rest.split('/').filter(|s| !s.is_empty()));
                }
                _ => return false,
            }
        } else {
            let Some(rest) = path.strip_prefix('/') else {
                return false;
            };
            parts.extend(rest.split('/').filter(|s| !s.is_empty()));
        }
        match_segments(&self.segments, &parts)
    }
}

fn match_segments(pat: &[Segment], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((Segment::Any, rest)) => (0..=path.len()).any(|i| match_segments(rest, &path[i..])),
        Some((seg, rest)) => {
            path.first().is_some_and(|p| match_one(seg, p)) && match_segments(rest, &path[1..])
        }
    }
}

fn match_one(seg: &Segment, s: &str) -> bool {
    match seg {
        Segment::Literal(l) => l == s,
        Segment::Any => true,
        Segment::Wild(pieces) => wild(pieces, s),
    }
}

/// `*`-separated pieces: the first anchors the start, the last the end.
fn wild(pieces: &[String], s: &str) -> bool {
    let (first, rest) = pieces
        .split_first()
        .expect("split yields one piece at least");
    let Some(mut s) = s.strip_prefix(first.as_str()) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return s.is_empty();
    };
    for m in middle {
        match s.find(m.as_str()) {
            Some(i) => s = &s[i + m.len()..],
            None => return false,
        }
    }
    s.len() >= last.len() && s.ends_with(last.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of `rules/README.md`: (pattern, path, matches). Kept in one place so the
    /// documentation and the behaviour cannot drift apart.
    pub const EXAMPLES: &[(&str, &str, bool)] = &[
        ("/etc/shadow", "/etc/shadow", true),
        ("/etc/shadow", "/etc/shadow-", false),
        ("/etc/*.conf", "/etc/resolv.conf", true),
        ("/etc/*.conf", "/etc/ssl/openssl.conf", false),
        ("/usr/bin/*", "/usr/bin/git", true),
        ("/usr/bin/*", "/usr/bin", false),
        ("/home/*/.aws/**", "/home/bob/.aws/credentials", true),
        ("~/.ssh/**", "/home/alice/.ssh/id_rsa", true),
        ("~/.ssh/**", "/home/alice/.ssh", true),
        ("~/.ssh/**", "/home/alice/.sshrc", false),
        ("~/.ssh/**", "/home/bob/.ssh/id_rsa", false),
        ("**/.env", "/srv/app/.env", true),
        ("**/.env", "/.env", true),
        ("**/.env", "/srv/app/.env.example", false),
        ("/**/*.pem", "/etc/ssl/private/key.pem", true),
        ("/work/**", "/work", true),
        ("/work/**", "/workspace/x", false),
    ];

    #[test]
    fn documented_examples_hold() {
        for (pat, path, want) in EXAMPLES {
            let p = Pattern::parse(pat).expect(pat);
            assert_eq!(p.matches(path, "/home/alice"), *want, "{pat} vs {path}");
        }
    }

    #[test]
    fn documented_examples_are_in_the_readme() {
        let readme = include_str!("../../../rules/README.md");
        for (pat, path, want) in EXAMPLES {
            let row = format!(
                "| `{pat}` | `{path}` | {} |",
                if *want { "yes" } else { "no" }
            );
            assert!(readme.contains(&row), "rules/README.md lacks the row {row}");
        }
    }

    #[test]
    fn invalid_patterns_explain_themselves() {
        for (pat, needle) in [
            ("etc/passwd", "not absolute"),
            ("/a//b", "empty segment"),
            ("/a/../b", "contains `..`"),
            ("/a/b**", "whole segment"),
        ] {
            let e = Pattern::parse(pat).unwrap_err();
            assert!(e.message.contains(needle), "{pat}: {e:?}");
            assert!(!e.hint.is_empty());
        }
    }

    #[test]
    fn kernel_forms() {
        let f = |p: &str| Pattern::parse(p).unwrap().kernel_form();
        assert_eq!(f("/etc/shadow"), KernelForm::Exact);
        assert_eq!(f("~/.ssh/**"), KernelForm::Prefix);
        assert_eq!(f("/usr/bin/*"), KernelForm::UserspaceOnly);
        assert_eq!(f("**/.env"), KernelForm::Basename);
        assert_eq!(f("/**/*.pem"), KernelForm::UserspaceOnly);
    }
}
