//! Taking events in: decoding ring-buffer records into `Event`s with length and kind checks.
//! A short or unknown record is an error, never a panic; the caller counts it.
use leaktrace_common::{EVENT_SIZE, Event, EventKind};

use crate::error::{Error, Result};

pub fn decode(bytes: &[u8]) -> Result<Event> {
    if bytes.len() < EVENT_SIZE {
        return Err(Error::Decode(format!(
            "record of {} bytes, expected {EVENT_SIZE}",
            bytes.len()
        )));
    }
    // SAFETY: length checked above; `Event` is plain old data valid for any bit pattern, and
    // read_unaligned does not require the ring's alignment.
    let ev = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
    if EventKind::from_u32(ev.kind).is_none() {
        return Err(Error::Decode(format!("unknown event kind {}", ev.kind)));
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(ev: &Event) -> Vec<u8> {
        let p = (ev as *const Event).cast::<u8>();
        unsafe { std::slice::from_raw_parts(p, EVENT_SIZE) }.to_vec()
    }

    #[test]
    fn round_trip() {
        let ev = Event {
            kind: EventKind::Alloc as u32,
            pid: 1,
            tid: 2,
            stack_id: 3,
            ts_ns: 4,
            addr: 5,
            size: 6,
            old_addr: 7,
            old_size: 8,
            caller: 9,
        };
        assert_eq!(decode(&bytes(&ev)).unwrap(), ev);
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let ev = Event {
            kind: 99,
            ..Event::default()
        };
        assert!(decode(&bytes(&ev)).unwrap_err().to_string().contains("unknown event kind 99"));
        assert!(decode(&[0u8; 10]).unwrap_err().to_string().contains("10 bytes"));
    }
}
