//! The profiles the daemon knows: the shipped ones (embedded from `rules/`) and the
//! `*.yaml` files of an optional rules directory. Profiles are recorded with each
//! session; their rules are compiled and enforced by the policy module (issue #4).

use std::{fs, path::Path};

use anyhow::{Context as _, Result};

/// Shipped profiles, embedded so the daemon runs with no files on disk.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("demo", include_str!("../../rules/demo.yaml")),
    ("lockdown", include_str!("../../rules/lockdown.yaml")),
];

/// Kernel session flags a profile asks for, and the program that must be attached to
/// carry them out. Until the policy compiler lands (issue #4) only the shipped
/// `lockdown` profile (exec default deny, no allow list) sets a flag.
pub fn session_flags(profile: &str) -> (u32, Option<&'static str>) {
    match profile {
        "lockdown" => (
            agent_common::session::SESSION_FLAG_DENY_EXEC,
            Some("bprm_check_security"),
        ),
        _ => (0, None),
    }
}

/// Profile names available: embedded ones plus the stems of `*.yaml` in `rules_dir`.
pub fn known(rules_dir: Option<&Path>) -> Result<Vec<String>> {
    let mut names: Vec<String> = EMBEDDED.iter().map(|(n, _)| (*n).to_owned()).collect();
    if let Some(dir) = rules_dir {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                && !names.iter().any(|n| n == stem)
            {
                names.push(stem.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}
