//! The userspace half of tracing, on one core and without a kernel: synthetic ring records
//! (malloc/free pairs over a working set, reallocs, some mmaps) decoded by `intake::decode`,
//! their stacks interned by `StackTable::intern` and applied by `Aggregator::apply`, as
//! `Session::drain` does. Prints events/s for intake + aggregation and for aggregation alone,
//! and the memory of one outstanding block at 2,000,000 live blocks, each against its target.
//!
//! Run: `cargo bench -p leaktrace --bench aggregate`. std only; no harness, no kernel, no root.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use leaktrace::{
    aggregate::{Aggregator, Pid, StackId},
    intake,
    stacks::StackTable,
};
use leaktrace_common::{EVENT_SIZE, Event, EventKind, MAX_FRAMES, SMALL_FRAMES};

/// Events per timed pass, and passes per figure (the median is printed).
const EVENTS: usize = 5_000_000;
const PASSES: usize = 3;
/// Records generated at a time: the timed loop reads a ring-sized batch, as a drain does.
const CHUNK: usize = 1 << 16;
/// Live heap blocks of the synthetic process, and its distinct allocation stacks.
const WORKING_SET: usize = 65_536;
const STACKS: usize = 256;
/// Blocks held for the per-entry memory figure.
const HELD: u64 = 2_000_000;

const MIN_EVENTS_PER_S: f64 = 5_000_000.0;
const MAX_BYTES_PER_ENTRY: f64 = 48.0;

const PID: u32 = 4242;

fn main() {
    // First, while the heap is fresh: later passes leave freed memory that would hide growth.
    let bytes_per_entry = entry_bytes();
    let pipeline = median((0..PASSES).map(|_| intake_and_aggregation()));
    let alone = median((0..PASSES).map(|_| aggregation_alone()));

    println!(
        "aggregate bench: {EVENTS} synthetic events per pass, median of {PASSES} passes, one \
         core; working set {WORKING_SET} blocks, {STACKS} stacks of 6-24 frames; per op ~94% \
         free+malloc, ~6% realloc, 0.2% mmap (+ munmap)"
    );
    println!(
        "intake + aggregation (decode, intern, apply): {:>12} events/s   target >= {}: {}",
        per_second(pipeline),
        per_second(MIN_EVENTS_PER_S),
        verdict(pipeline >= MIN_EVENTS_PER_S)
    );
    println!(
        "aggregation alone (apply):                    {:>12} events/s   target >= {}: {}",
        per_second(alone),
        per_second(MIN_EVENTS_PER_S),
        verdict(alone >= MIN_EVENTS_PER_S)
    );
    println!(
        "outstanding entry at {HELD} live blocks:      {:>12.1} bytes      target <= {}: {}",
        bytes_per_entry,
        MAX_BYTES_PER_ENTRY,
        verdict(bytes_per_entry <= MAX_BYTES_PER_ENTRY)
    );
}

/// Events/s of decode + intern + apply over ring records.
fn intake_and_aggregation() -> f64 {
    let mut workload = Workload::new();
    let mut agg = Aggregator::new(Duration::ZERO);
    agg.track(Pid(PID));
    let mut stacks = StackTable::default();
    let mut frames = [0u64; MAX_FRAMES];
    let mut records = Records::default();
    for record in workload.warm_up() {
        apply_record(&record, &mut frames, &mut stacks, &mut agg);
    }
    let mut timed = Duration::ZERO;
    let mut done = 0;
    while done < EVENTS {
        records.clear();
        workload.fill(&mut records, CHUNK.min(EVENTS - done));
        let start = Instant::now();
        for record in records.iter() {
            apply_record(record, &mut frames, &mut stacks, &mut agg);
        }
        timed += start.elapsed();
        done += records.len();
    }
    black_box(agg.stats(Pid(PID)));
    done as f64 / timed.as_secs_f64()
}

/// Events/s of `Aggregator::apply` alone, on the same stream decoded and interned beforehand.
fn aggregation_alone() -> f64 {
    let mut workload = Workload::new();
    let mut agg = Aggregator::new(Duration::ZERO);
    agg.track(Pid(PID));
    let mut stacks = StackTable::default();
    let mut frames = [0u64; MAX_FRAMES];
    let mut records = Records::default();
    let mut decoded: Vec<(Event, StackId)> = Vec::with_capacity(CHUNK);
    for record in workload.warm_up() {
        apply_record(&record, &mut frames, &mut stacks, &mut agg);
    }
    let mut timed = Duration::ZERO;
    let mut done = 0;
    while done < EVENTS {
        records.clear();
        decoded.clear();
        workload.fill(&mut records, CHUNK.min(EVENTS - done));
        for record in records.iter() {
            decoded.push(decode_and_intern(record, &mut frames, &mut stacks));
        }
        let start = Instant::now();
        for (event, stack) in &decoded {
            agg.apply(event, *stack);
        }
        timed += start.elapsed();
        done += decoded.len();
    }
    black_box(agg.stats(Pid(PID)));
    done as f64 / timed.as_secs_f64()
}

/// What `Session::drain` does with one record, short of symbolization.
fn apply_record(
    record: &[u8],
    frames: &mut [u64; MAX_FRAMES],
    stacks: &mut StackTable,
    agg: &mut Aggregator,
) {
    let (event, stack) = decode_and_intern(record, frames, stacks);
    agg.apply(&event, stack);
}

fn decode_and_intern(
    record: &[u8],
    frames: &mut [u64; MAX_FRAMES],
    stacks: &mut StackTable,
) -> (Event, StackId) {
    let decoded = intake::decode(record, frames).expect("synthetic records are well formed");
    // A zero return address ends a frame-pointer chain, as in `Session::drain`.
    let n = frames[..decoded.frames]
        .iter()
        .position(|&a| a == 0)
        .unwrap_or(decoded.frames);
    let (stack, _) = stacks.intern(&frames[..n]);
    (decoded.event, stack)
}

/// Resident bytes per outstanding block: RSS growth over inserting `HELD` live blocks.
fn entry_bytes() -> f64 {
    let mut agg = Aggregator::new(Duration::ZERO);
    agg.track(Pid(PID));
    let before = resident_bytes();
    for i in 0..HELD {
        let event = Event {
            kind: EventKind::Alloc as u32,
            pid: PID,
            tid: PID,
            ts_ns: i,
            addr: 0x5555_0000_0000 + i * 48,
            size: 32,
            ..Event::default()
        };
        agg.apply(&event, StackId((i % STACKS as u64) as i32));
    }
    let after = resident_bytes();
    let held = agg.stats(Pid(PID)).map_or(0, |s| s.outstanding_count);
    assert_eq!(held, HELD, "every block is outstanding");
    after.saturating_sub(before) as f64 / HELD as f64
}

/// Resident set size from `/proc/self/statm` (its second field, in pages).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field is resident pages");
    // The page size of x86-64 Linux; std has no sysconf, and this bench needs no libc for it.
    pages * 4096
}

/// Ring records laid end to end, as the kernel's ring hands them over one by one.
#[derive(Default)]
struct Records {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Records {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// An `Event` header, then its frames padded to the record size the probes reserve: a
    /// small record, or a full one when the stack does not fit in it.
    fn push(&mut self, event: &Event, frames: &[u64]) {
        let slots = match frames.len() {
            0 => 0,
            n if n <= SMALL_FRAMES => SMALL_FRAMES,
            _ => MAX_FRAMES,
        };
        // SAFETY: `Event` is `#[repr(C)]` plain data of exactly EVENT_SIZE bytes, without padding.
        let header =
            unsafe { std::slice::from_raw_parts((event as *const Event).cast::<u8>(), EVENT_SIZE) };
        self.bytes.extend_from_slice(header);
        for i in 0..slots {
            let frame = frames.get(i).copied().unwrap_or(0);
            self.bytes.extend_from_slice(&frame.to_ne_bytes());
        }
        self.ends.push(self.bytes.len());
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.bytes[start..end])
    }
}

/// A deterministic synthetic process: a working set of live blocks churned by free + malloc,
/// some reallocs, and a few anonymous mappings that come and go.
struct Workload {
    rng: u64,
    ts_ns: u64,
    live: Vec<u64>,
    next_addr: u64,
    maps: std::collections::VecDeque<(u64, u64)>,
    next_map: u64,
    stacks: Vec<Vec<u64>>,
}

impl Workload {
    fn new() -> Self {
        let mut w = Self {
            rng: 0x9e37_79b9_7f4a_7c15,
            ts_ns: 1_000_000_000,
            live: Vec::with_capacity(WORKING_SET),
            next_addr: 0x5555_0000_0000,
            maps: Default::default(),
            next_map: 0x7f00_0000_0000,
            stacks: Vec::new(),
        };
        w.stacks = (0..STACKS)
            .map(|_| {
                let depth = 6 + (w.random() % 19) as usize;
                (0..depth)
                    .map(|_| 0x5555_5555_0000 + (w.random() % 0x10_0000))
                    .collect()
            })
            .collect();
        w
    }

    /// Records that fill the working set, applied untimed before a pass.
    fn warm_up(&mut self) -> Vec<Vec<u8>> {
        (0..WORKING_SET)
            .map(|_| {
                let mut one = Records::default();
                let addr = self.fresh_addr();
                self.live.push(addr);
                self.alloc(&mut one, EventKind::Alloc, addr, 0);
                one.bytes
            })
            .collect()
    }

    /// Appends about `count` records (an op makes one or two).
    fn fill(&mut self, records: &mut Records, count: usize) {
        while records.len() < count {
            let slot = (self.random() % WORKING_SET as u64) as usize;
            let old = self.live[slot];
            match self.random() % 1000 {
                0..60 => {
                    let addr = self.fresh_addr();
                    self.live[slot] = addr;
                    self.alloc(records, EventKind::Realloc, addr, old);
                }
                60..62 => self.mmap(records),
                _ => {
                    self.event(records, EventKind::Free, old, 0, 0);
                    // Like tcache, malloc often hands back the block just freed.
                    let addr = if self.random().is_multiple_of(2) {
                        old
                    } else {
                        self.fresh_addr()
                    };
                    self.live[slot] = addr;
                    self.alloc(records, EventKind::Alloc, addr, 0);
                }
            }
        }
    }

    fn alloc(&mut self, records: &mut Records, kind: EventKind, addr: u64, old_addr: u64) {
        let size = 16 + self.random() % 4081;
        let stack = (self.random() % STACKS as u64) as usize;
        let event = self.header(kind, addr, size, old_addr, stack_len(&self.stacks[stack]));
        records.push(&event, &self.stacks[stack]);
    }

    /// An mmap of 64 KiB to 1 MiB; past 64 live mappings the oldest is unmapped.
    fn mmap(&mut self, records: &mut Records) {
        let len = (16 + self.random() % 241) * 4096;
        let addr = self.next_map;
        self.next_map += len + 4096;
        self.maps.push_back((addr, len));
        let stack = (self.random() % STACKS as u64) as usize;
        let mut event = self.header(
            EventKind::Mmap,
            addr,
            len,
            0,
            stack_len(&self.stacks[stack]),
        );
        event.caller = self.stacks[stack][0];
        records.push(&event, &self.stacks[stack]);
        if self.maps.len() > 64 {
            let (addr, len) = self.maps.pop_front().expect("more than 64 mappings");
            self.event(records, EventKind::Munmap, addr, len, 0);
        }
    }

    fn event(&mut self, records: &mut Records, kind: EventKind, addr: u64, size: u64, old: u64) {
        let event = self.header(kind, addr, size, old, 0);
        records.push(&event, &[]);
    }

    fn header(
        &mut self,
        kind: EventKind,
        addr: u64,
        size: u64,
        old_addr: u64,
        frames: u32,
    ) -> Event {
        self.ts_ns += 200;
        Event {
            kind: kind as u32,
            pid: PID,
            tid: PID,
            frames,
            ts_ns: self.ts_ns,
            addr,
            size,
            old_addr,
            ..Event::default()
        }
    }

    fn fresh_addr(&mut self) -> u64 {
        self.next_addr += 16 * (1 + self.random() % 256);
        self.next_addr
    }

    /// xorshift64: cheap next to what is measured.
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

fn stack_len(frames: &[u64]) -> u32 {
    u32::try_from(frames.len()).expect("stacks are short")
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn per_second(rate: f64) -> String {
    let digits = format!("{:.0}", rate);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}
