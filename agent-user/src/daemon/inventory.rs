//! `agentwarden inventory`: each live session's principal, reachable credentials (with
//! its profile's verdict), network and tool rules and owners, put together from the
//! registry, the profiles and `/proc` ([`crate::inventory`] does the discovery).

use std::path::Path;

use super::Core;
use crate::inventory::{self, Owners, Principal, SessionInventory};

impl Core {
    pub(super) fn inventory(&mut self) -> Vec<SessionInventory> {
        let live: Vec<_> = self
            .attribution
            .registry
            .all()
            .filter(|s| s.ended.is_none())
            .cloned()
            .collect();
        let mut out = Vec::new();
        for s in live {
            let Some(profile) = self.profiles.get(&s.profile) else {
                continue;
            };
            // The agent is the session's root while it lives; else its oldest process.
            let pid = if s.live.contains(&s.root_pid) {
                s.root_pid
            } else {
                s.live.iter().copied().next().unwrap_or(s.root_pid)
            };
            let users = &mut self.attribution.users;
            let principal = inventory::principal(pid, |uid| users.name(uid)).unwrap_or(Principal {
                uid: s.owner_uid,
                user: s.owner_user.clone(),
                ..Principal::default()
            });
            let home = self
                .attribution
                .users
                .home(principal.uid)
                .unwrap_or_else(|| "/nonexistent".to_owned());
            let env = inventory::environment(pid);
            let credentials = inventory::credentials(profile, &principal, &env, Path::new(&home));
            out.push(SessionInventory {
                session: crate::session::format_id(s.id),
                name: s.name.clone(),
                profile: s.profile.clone(),
                enrolment: s.enrolment.as_str().to_owned(),
                selector: s.selector.clone(),
                container: s.container.clone(),
                root_pid: s.root_pid,
                owners: Owners {
                    business: profile.file.owners.business.clone(),
                    technical: profile.file.owners.technical.clone(),
                },
                principal,
                credentials,
                network: inventory::network_lines(profile),
                tools: inventory::tool_lines(profile),
            });
        }
        out
    }
}
