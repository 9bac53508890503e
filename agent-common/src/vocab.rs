//! The decision vocabulary, defined once for kernel and daemon: a number on the wire
//! (`#[repr(u8)]`, in kernel records and maps) and a word in events, the audit store,
//! OCSF and the CLI (`as_str`, and serde with the `user` feature).
//!
//! Kernel records keep these fields as plain `u8` (a record is copied from bytes, and a
//! byte the kernel wrote is not trusted to be a valid enum): userspace turns them into
//! the enums with `from_u8`, which refuses a number it does not know.

/// One enum of the vocabulary: variants with their wire number and their word.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $num:literal => $word:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $num ),+
        }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The word used in events, records and the CLI.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }

            /// The value of a wire number; `None` for a number this build does not know.
            pub const fn from_u8(n: u8) -> Option<Self> {
                match n {
                    $($num => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The value of a word (as `as_str` spells it).
            pub fn from_name(s: &str) -> Option<Self> {
                match s {
                    $($word => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                // `pad`, not `write_str`: widths and alignment (`{:<13}`) apply.
        f.pad(self.as_str())
            }
        }

        #[cfg(feature = "user")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        #[cfg(feature = "user")]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::from_name(&s).ok_or_else(|| {
                    serde::de::Error::unknown_variant(&s, &[$($word),+])
                })
            }
        }

        #[cfg(feature = "user")]
        impl core::str::FromStr for $name {
            type Err = std::string::String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_name(s).ok_or_else(|| {
                    format!(
                        concat!("unknown ", stringify!($name), " `{}`; expected one of {}"),
                        s,
                        [$($word),+].join(", ")
                    )
                })
            }
        }
    };
}

vocabulary! {
    /// What a profile says of an operation.
    Verdict {
        Allow = 0 => "allow",
        Deny = 1 => "deny",
    }
}

vocabulary! {
    /// What happened to an operation.
    Action {
        /// Within the profile.
        Allowed = 0 => "allowed",
        /// Refused before it happened (`EPERM`, `EACCES`).
        Blocked = 1 => "blocked",
        /// Outside the profile but let through (monitor mode, `on_violation: alert`).
        Alerted = 2 => "alerted",
        /// The process was sent SIGKILL before it returned to user mode.
        Killed = 3 => "killed",
        /// Held until a person answered (`on_violation: ask`), then let through by their
        /// approval or a standing grant of one.
        Approved = 4 => "approved",
        /// Monitor mode: an `ask` rule matched; the operation was neither held nor
        /// refused.
        WouldAsk = 5 => "would_ask",
        /// It happened, changed into a safer one: a connection sent to the endpoint a
        /// `network.redirect` rule names instead of where it was addressed.
        Modified = 6 => "modified",
        /// Monitor mode: a `network.redirect` rule matched; the connection went where it
        /// was addressed.
        WouldRedirect = 7 => "would_redirect",
        /// A connection held for a person's answer: sent to the daemon's holding
        /// endpoint, where it waits (nothing reaches the destination before an
        /// approval); the `approval` row says how it ended.
        Held = 8 => "held",
    }
}

impl Action {
    /// The operation did not take effect for the process (refused, or the process
    /// ended before it saw the result).
    pub const fn refused(self) -> bool {
        match self {
            Action::Blocked | Action::Killed => true,
            Action::Allowed
            | Action::Alerted
            | Action::Approved
            | Action::WouldAsk
            | Action::Modified
            | Action::WouldRedirect
            | Action::Held => false,
        }
    }
}

vocabulary! {
    /// The layer that carried a decision out.
    Layer {
        /// Nothing acted (allowed, or recorded only).
        None = 0 => "none",
        /// cgroup sock_addr programs refused on the kernel's copy of the address.
        Cgroup = 1 => "cgroup",
        /// SIGKILL from a tracepoint before the process returned to user mode.
        Signal = 2 => "signal",
        /// A BPF-LSM hook refused before the operation.
        Lsm = 3 => "lsm",
        /// The Landlock domain `agentwarden run` applied before it executed the agent.
        Landlock = 4 => "landlock",
        /// The daemon's fanotify permission marks on the denied files, programs and
        /// directories refused the open, read or exec (`EPERM`) where BPF-LSM is absent.
        Fanotify = 5 => "fanotify",
        /// The kernel's own capability check: `agentwarden run` dropped the capability
        /// (`CAP_NET_RAW`) from the agent before executing it.
        Capabilities = 6 => "capabilities",
        /// The seccomp filter `agentwarden run` installed in itself before it executed
        /// the agent: the syscall was refused (`EPERM`) before it ran.
        Seccomp = 7 => "seccomp",
        /// The agent's own hook asked the daemon before the tool ran and was told no
        /// (`tools:` rules): the agent did not make the call. An agent that skips its
        /// hooks skips this layer; the kernel layers stay the backstop.
        Hook = 8 => "hook",
    }
}

vocabulary! {
    /// A profile's mode, as the kernel reads it (`ProfileConfig.mode`).
    Mode {
        /// Record would-be violations, act on none.
        Monitor = 0 => "monitor",
        /// Act as the profile says.
        Enforce = 1 => "enforce",
    }
}

vocabulary! {
    /// What a profile asks for on a violation, as the kernel reads it
    /// (`ProfileConfig.net_action`).
    OnViolation {
        /// Refuse the operation before it happens.
        Block = 0 => "block",
        /// End the process before it returns to user mode with the result.
        Kill = 1 => "kill",
        /// Record only.
        Alert = 2 => "alert",
        /// Hold it for a person's answer (network: the connection waits at the
        /// daemon's holding endpoint).
        Ask = 3 => "ask",
    }
}

vocabulary! {
    /// What a drift finding found: behaviour of a session that its agent's baseline
    /// (learned from the recorded sessions before it) does not contain. Raised out of
    /// band by the daemon's analyser, never on the kernel's path.
    Finding {
        /// A program never run in the baseline's sessions.
        NewProgram = 0 => "new_program",
        /// A read in a file tree the baseline's sessions never read or wrote.
        ReadOutsideTrees = 1 => "read_outside_trees",
        /// A write in a file tree the baseline's sessions never wrote.
        WriteOutsideTrees = 2 => "write_outside_trees",
        /// A destination the baseline's sessions never reached.
        NewDestination = 3 => "new_destination",
        /// A tool (the agent's hook named it) the baseline's sessions never called.
        NewTool = 4 => "new_tool",
        /// The same denied object tried again and again: more often than in any
        /// baseline session, and at least the threshold (a policy override attempt).
        RepeatedDenial = 5 => "repeated_denial",
        /// More distinct objects denied than in any baseline session, and at least the
        /// threshold.
        DenialBurst = 6 => "denial_burst",
        /// The session's mix of actions is far from the baseline's (Jensen-Shannon
        /// distance over the action categories, above the threshold).
        Mix = 7 => "mix",
    }
}

vocabulary! {
    /// How much a finding matters, as OCSF's severity words say it.
    Severity {
        Low = 2 => "low",
        Medium = 3 => "medium",
        High = 4 => "high",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value survives its number and its word, and no two share either.
    #[test]
    fn numbers_and_words_round_trip() {
        fn check<T: Copy + PartialEq + core::fmt::Debug>(
            all: &[T],
            num: fn(T) -> u8,
            word: fn(T) -> &'static str,
            from_u8: fn(u8) -> Option<T>,
            from_name: fn(&str) -> Option<T>,
        ) {
            for (i, v) in all.iter().enumerate() {
                assert_eq!(from_u8(num(*v)), Some(*v));
                assert_eq!(from_name(word(*v)), Some(*v));
                for w in &all[i + 1..] {
                    assert_ne!(num(*v), num(*w));
                    assert_ne!(word(*v), word(*w));
                }
            }
            assert_eq!(from_u8(200), None);
            assert_eq!(from_name("no such word"), None);
        }
        check(
            Verdict::ALL,
            |v| v as u8,
            Verdict::as_str,
            Verdict::from_u8,
            Verdict::from_name,
        );
        check(
            Action::ALL,
            |v| v as u8,
            Action::as_str,
            Action::from_u8,
            Action::from_name,
        );
        check(
            Layer::ALL,
            |v| v as u8,
            Layer::as_str,
            Layer::from_u8,
            Layer::from_name,
        );
        check(
            Mode::ALL,
            |v| v as u8,
            Mode::as_str,
            Mode::from_u8,
            Mode::from_name,
        );
        check(
            Finding::ALL,
            |v| v as u8,
            Finding::as_str,
            Finding::from_u8,
            Finding::from_name,
        );
        check(
            Severity::ALL,
            |v| v as u8,
            Severity::as_str,
            Severity::from_u8,
            Severity::from_name,
        );
        check(
            OnViolation::ALL,
            |v| v as u8,
            OnViolation::as_str,
            OnViolation::from_u8,
            OnViolation::from_name,
        );
    }

    #[test]
    fn refused_means_blocked_or_killed() {
        let refused: Vec<_> = Action::ALL.iter().filter(|a| a.refused()).collect();
        assert_eq!(refused, [&Action::Blocked, &Action::Killed]);
    }
}
