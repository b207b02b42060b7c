//! Taking events in: decoding ring-buffer records (an `Event` header, then `frames` user stack
//! frames) with length and kind checks. A short or unknown record is an error, never a panic; the
//! caller counts it.
use leaktrace_common::{EVENT_SIZE, Event, EventKind, MAX_FRAMES};

use crate::error::{Error, Result};

/// One decoded record: its header, how many frames were written to the caller's buffer, and the
/// raw bytes that kinds such as `OomVictim`, `Exec` and `Rename` carry instead of frames.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub event: Event,
    pub frames: usize,
    pub raw: &'a [u8],
}

/// Decodes `bytes` into its header, writing its frames (if any) into `frames`.
pub fn decode<'a>(bytes: &'a [u8], frames: &mut [u64; MAX_FRAMES]) -> Result<Decoded<'a>> {
    if bytes.len() < EVENT_SIZE {
        return Err(Error::Decode(format!(
            "record of {} bytes, expected at least {EVENT_SIZE}",
            bytes.len()
        )));
    }
    // SAFETY: length checked above; `Event` is plain old data valid for any bit pattern, and
    // read_unaligned does not require the ring's alignment.
    let ev = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
    let Some(kind) = EventKind::from_u32(ev.kind) else {
        return Err(Error::Decode(format!("unknown event kind {}", ev.kind)));
    };
    let body = &bytes[EVENT_SIZE..];
    if matches!(kind, EventKind::OomVictim | EventKind::Exec | EventKind::Rename) {
        let len = usize::try_from(ev.size).unwrap_or(usize::MAX);
        if body.len() < len {
            return Err(Error::Decode(format!(
                "record claims {len} raw bytes but carries {}",
                body.len()
            )));
        }
        return Ok(Decoded {
            event: ev,
            frames: 0,
            raw: &body[..len],
        });
    }
    let n = ev.frames as usize;
    if n > MAX_FRAMES || body.len() < n * 8 {
        return Err(Error::Decode(format!(
            "record claims {n} frames but carries {} bytes of them",
            body.len()
        )));
    }
    for (slot, chunk) in frames.iter_mut().zip(body.chunks_exact(8)).take(n) {
        *slot = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
    }
    Ok(Decoded {
        event: ev,
        frames: n,
        raw: &[],
    })
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
        let rec = bytes(&ev, &[10, 11, 12, 0, 0]);
        let d = decode(&rec, &mut buf).unwrap();
        assert_eq!(d.event, ev);
        assert_eq!(&buf[..d.frames], &[10, 11, 12]);
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

    #[test]
    fn raw_records_carry_bytes_not_frames() {
        let mut buf = [0u64; MAX_FRAMES];
        let ev = Event {
            kind: EventKind::Exec as u32,
            size: 8,
            ..Event::default()
        };
        let rec = bytes(&ev, &[u64::from_ne_bytes(*b"leaky\0\0\0")]);
        let d = decode(&rec, &mut buf).unwrap();
        assert_eq!(d.raw, b"leaky\0\0\0");
        assert_eq!(d.frames, 0);
        let short = Event { size: 300, ..ev };
        assert!(decode(&bytes(&short, &[0]), &mut buf).is_err());
    }
}
