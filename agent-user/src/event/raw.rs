//! Ring-buffer records decoded into the kernel's record types (`agent_common::event`),
//! with large records copied into reused buffers. A record whose decision numbers the
//! vocabulary does not know is refused here, counted by the caller.

use agent_common::{
    event::{
        ConnectEvent, EnrolEvent, EventHeader, EventKind, ExecEvent, ExitEvent, ForkEvent,
        NetDecisionEvent, OpenEvent, OpenRepeatEvent, SyscallDecisionEvent,
        decode::{DecodeError, header, read_record},
    },
    vocab::{Action, Layer},
};

/// A decoded kernel record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Raw {
    Exec(Box<ExecEvent>),
    Exit(ExitEvent),
    Fork(ForkEvent),
    /// A child that could not be tracked (session map full).
    SessionMapFull(ForkEvent),
    Open(Box<OpenEvent>),
    /// Repeats of an allowed open the kernel counted instead of sending.
    OpenRepeats(OpenRepeatEvent),
    Connect(ConnectEvent),
    NetDecision(NetDecisionEvent),
    SyscallDecision(SyscallDecisionEvent),
    /// The kernel started a session for a process a `match:` selector named.
    Enrolment(EnrolEvent),
}

impl Raw {
    pub fn header(&self) -> &EventHeader {
        match self {
            Raw::Exec(e) => &e.header,
            Raw::Exit(e) => &e.header,
            Raw::Fork(e) | Raw::SessionMapFull(e) => &e.header,
            Raw::Open(e) => &e.header,
            Raw::OpenRepeats(e) => &e.header,
            Raw::Connect(e) => &e.header,
            Raw::NetDecision(e) => &e.header,
            Raw::SyscallDecision(e) => &e.header,
            Raw::Enrolment(e) => &e.header,
        }
    }
}

/// Buffers of large records kept from one record to the next (see [`decode_reusing`]).
#[derive(Debug, Default)]
pub struct Spare {
    open: Option<Box<OpenEvent>>,
    exec: Option<Box<ExecEvent>>,
}

impl Spare {
    /// A buffer of an open record is kept (for the tests of reuse).
    #[cfg(test)]
    pub fn holds_open(&self) -> bool {
        self.open.is_some()
    }

    /// Takes back the buffer of a record that has been handled.
    pub fn keep(&mut self, raw: Raw) {
        match raw {
            Raw::Open(b) => self.open = Some(b),
            Raw::Exec(b) => self.exec = Some(b),
            _ => {}
        }
    }
}

/// Like [`decode`], but open and exec records (a 4 KiB path; 10 KiB for exec) are copied
/// into buffers kept in `spare` instead of a new zeroed allocation each: the daemon's
/// hottest copy under load.
pub fn decode_reusing(bytes: &[u8], spare: &mut Spare) -> Result<Raw, DecodeError> {
    let raw = read_reusing(bytes, spare)?;
    if let Err(e) = check_vocabulary(&raw) {
        spare.keep(raw);
        return Err(e);
    }
    Ok(raw)
}

fn read_reusing(bytes: &[u8], spare: &mut Spare) -> Result<Raw, DecodeError> {
    use agent_common::event::decode::read_record_into;
    match header(bytes).and_then(|h| EventKind::from_u32(h.kind)) {
        Some(EventKind::Open) => match spare.open.take() {
            Some(mut b) => {
                read_record_into(bytes, OpenEvent::FIXED_LEN, &mut *b)?;
                Ok(Raw::Open(b))
            }
            None => read(bytes),
        },
        Some(EventKind::Exec) => match spare.exec.take() {
            Some(mut b) => {
                read_record_into(bytes, core::mem::size_of::<ExecEvent>(), &mut *b)?;
                Ok(Raw::Exec(b))
            }
            None => decode(bytes),
        },
        _ => read(bytes),
    }
}

/// Decodes one ring-buffer record; a decision field with a number the vocabulary does
/// not know fails it (counted as a decode error, never read as some default).
pub fn decode(bytes: &[u8]) -> Result<Raw, DecodeError> {
    let raw = read(bytes)?;
    check_vocabulary(&raw)?;
    Ok(raw)
}

/// The decision fields of `raw` are numbers of [`Action`] and [`Layer`].
fn check_vocabulary(raw: &Raw) -> Result<(), DecodeError> {
    let (action, layer) = match raw {
        Raw::Exec(e) => (e.verdict.action, e.verdict.enforced_by),
        Raw::Open(e) => (e.verdict.action, e.verdict.enforced_by),
        Raw::NetDecision(e) => (e.action, e.enforced_by),
        Raw::SyscallDecision(e) => (e.action, e.enforced_by),
        Raw::Exit(_)
        | Raw::Fork(_)
        | Raw::SessionMapFull(_)
        | Raw::Connect(_)
        | Raw::OpenRepeats(_)
        | Raw::Enrolment(_) => return Ok(()),
    };
    let kind = raw.header().kind;
    if Action::from_u8(action).is_none() {
        return Err(DecodeError::UnknownValue {
            kind,
            field: "action",
            value: action,
        });
    }
    if Layer::from_u8(layer).is_none() {
        return Err(DecodeError::UnknownValue {
            kind,
            field: "layer",
            value: layer,
        });
    }
    Ok(())
}

fn read(bytes: &[u8]) -> Result<Raw, DecodeError> {
    use core::mem::size_of;
    let h = header(bytes).ok_or(DecodeError::Short {
        kind: 0,
        len: bytes.len(),
        need: size_of::<EventHeader>(),
    })?;
    let kind = EventKind::from_u32(h.kind).ok_or(DecodeError::UnknownKind(h.kind))?;
    Ok(match kind {
        EventKind::Exec => Raw::Exec(Box::new(read_record(bytes, size_of::<ExecEvent>())?)),
        EventKind::Exit => Raw::Exit(read_record(bytes, size_of::<ExitEvent>())?),
        EventKind::Fork => Raw::Fork(read_record(bytes, size_of::<ForkEvent>())?),
        EventKind::SessionMapFull => {
            Raw::SessionMapFull(read_record(bytes, size_of::<ForkEvent>())?)
        }
        EventKind::Open => Raw::Open(Box::new(read_record(bytes, OpenEvent::FIXED_LEN)?)),
        EventKind::OpenRepeats => {
            Raw::OpenRepeats(read_record(bytes, size_of::<OpenRepeatEvent>())?)
        }
        EventKind::Connect => Raw::Connect(read_record(bytes, size_of::<ConnectEvent>())?),
        EventKind::NetDecision => {
            Raw::NetDecision(read_record(bytes, size_of::<NetDecisionEvent>())?)
        }
        EventKind::SyscallDecision => {
            Raw::SyscallDecision(read_record(bytes, size_of::<SyscallDecisionEvent>())?)
        }
        EventKind::Enrolment => Raw::Enrolment(read_record(bytes, size_of::<EnrolEvent>())?),
        // Raised by the daemon: `from_u32` never returns them for a kernel record.
        // Container context, taken before records are decoded (`daemon::containers`).
        EventKind::CgroupCreated
        | EventKind::UnmanagedAgent
        | EventKind::Drift
        | EventKind::SessionStart
        | EventKind::SessionEnd
        | EventKind::Loss
        | EventKind::Prompt
        | EventKind::ToolCall
        | EventKind::ToolResult
        | EventKind::Approval => {
            return Err(DecodeError::UnknownKind(h.kind));
        }
    })
}
