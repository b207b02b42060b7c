//! Taking events in: decoding ring-buffer records (an `Event` header, then `frames` user stack
//! frames) with length and kind checks. A short or unknown record is an error, never a panic; the
//! caller counts it.
use leaktrace_common::{EVENT_SIZE, Event, EventKind, MAX_FRAMES};

use crate::error::{Error, Result};

/// Decodes `bytes` into its header and writes its frames into `frames`, returning how many.
pub fn decode(bytes: &[u8], frames: &mut [u64; MAX_FRAMES]) -> Result<(Event, usize)> {
    if bytes.len() < EVENT_SIZE {
        return Err(Error::Decode(format!(
            "record of {} bytes, expected at least {EVENT_SIZE}",
            bytes.len()
        )));
    }
    // SAFETY: length checked above; `Event` is plain old data valid for any bit pattern, and
    // read_unaligned does not require the ring's alignment.
    let ev = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
    if EventKind::from_u32(ev.kind).is_none() {
        return Err(Error::Decode(format!("unknown event kind {}", ev.kind)));
    }
    let n = ev.frames as usize;
    let body = &bytes[EVENT_SIZE..];
    if n > MAX_FRAMES || body.len() < n * 8 {
        return Err(Error::Decode(format!(
            "record claims {n} frames but carries {} bytes of them",
            body.len()
        )));
    }
    for (slot, chunk) in frames.iter_mut().zip(body.chunks_exact(8)).take(n) {
        *slot = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
    }
    Ok((ev, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(ev: &Event, frames: &[u64]) -> Vec<u8> {
        let p = (ev as *const Event).cast::<u8>();
        let mut v = unsafe { std::slice::from_raw_parts(p, EVENT_SIZE) }.to_vec();
        for f in frames {
            v.extend_from_slice(&f.to_ne_bytes());
        }
        v
    }

    #[test]
    fn round_trip_with_frames() {
        let ev = Event {
            kind: EventKind::Alloc as u32,
            pid: 1,
            tid: 2,
            frames: 3,
            ts_ns: 4,
            addr: 5,
            size: 6,
            old_addr: 7,
            old_size: 8,
            caller: 9,
        };
        let mut buf = [0u64; MAX_FRAMES];
        // Padding after the frames (the rest of a fixed-size record) is ignored.
        let (got, n) = decode(&bytes(&ev, &[10, 11, 12, 0, 0]), &mut buf).unwrap();
        assert_eq!(got, ev);
        assert_eq!(&buf[..n], &[10, 11, 12]);
    }

    #[test]
    fn short_unknown_and_overlong_records_are_errors() {
        let mut buf = [0u64; MAX_FRAMES];
        let unknown = Event {
            kind: 99,
            ..Event::default()
        };
        let e = decode(&bytes(&unknown, &[]), &mut buf).unwrap_err();
        assert!(e.to_string().contains("unknown event kind 99"));
        assert!(decode(&[0u8; 10], &mut buf).unwrap_err().to_string().contains("10 bytes"));
        let lying = Event {
            kind: EventKind::Alloc as u32,
            frames: 4,
            ..Event::default()
        };
        let e = decode(&bytes(&lying, &[1]), &mut buf).unwrap_err();
        assert!(e.to_string().contains("claims 4 frames"));
        let huge = Event {
            frames: 1000,
            ..lying
        };
        assert!(decode(&bytes(&huge, &[1]), &mut buf).is_err());
    }
}
