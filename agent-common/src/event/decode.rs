//! Decoding of ring-buffer records on the user side.

use core::mem::{MaybeUninit, size_of};

use super::{EventHeader, Plain};

/// Why a record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the fixed part of its type.
    Short { kind: u32, len: usize, need: usize },
    /// The header's kind is not one this build knows.
    UnknownKind(u32),
    /// A field holds a number its vocabulary (`crate::vocab`) does not know.
    UnknownValue {
        kind: u32,
        field: &'static str,
        value: u8,
    },
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Short { kind, len, need } => {
                write!(
                    f,
                    "record of kind {kind} is {len} bytes, needs at least {need}"
                )
            }
            Self::UnknownKind(k) => write!(f, "unknown event kind {k}"),
            Self::UnknownValue { kind, field, value } => {
                write!(f, "record of kind {kind}: unknown {field} {value}")
            }
        }
    }
}

/// Copies `bytes` into a zeroed `T`; the record may be shorter than `T` (unused path tail
/// not sent) but not shorter than `min_len`.
pub fn read_record<T: Plain>(bytes: &[u8], min_len: usize) -> Result<T, DecodeError> {
    if bytes.len() < min_len {
        let kind = bytes
            .get(..4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            need: min_len,
        });
    }
    let n = bytes.len().min(size_of::<T>());
    let mut out = MaybeUninit::<T>::zeroed();
    // SAFETY: T is Plain (valid for every bit pattern, zero included); we copy at most
    // size_of::<T>() bytes into it.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), n);
        Ok(out.assume_init())
    }
}

/// Copies `bytes` over an existing `T`, which the caller reuses from record to record: no
/// zeroing and no allocation of a large type (a 4 KiB path) per record. Bytes past the
/// record keep what an earlier record left: readers must go by the lengths inside.
pub fn read_record_into<T: Plain>(
    bytes: &[u8],
    min_len: usize,
    out: &mut T,
) -> Result<(), DecodeError> {
    if bytes.len() < min_len {
        return read_record::<T>(bytes, min_len).map(|_| ());
    }
    let n = bytes.len().min(size_of::<T>());
    // SAFETY: T is Plain (valid for every bit pattern); we copy at most size_of::<T>()
    // bytes into it.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), (out as *mut T).cast::<u8>(), n);
    }
    Ok(())
}

/// Reads the header of a record.
pub fn header(bytes: &[u8]) -> Option<EventHeader> {
    read_record::<EventHeader>(bytes, size_of::<EventHeader>()).ok()
}
