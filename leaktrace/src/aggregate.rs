//! The aggregator: outstanding allocations keyed by (pid, address), anonymous mappings as address
//! ranges per pid, and the survivors grouped per (pid, stack). Pure: no I/O, no clocks (callers
//! pass "now" in the same CLOCK_MONOTONIC nanoseconds the probes stamp events with), so every
//! semantic rule is unit-tested here. Symbols and rendering are elsewhere.
//!
//! Every event costs a map lookup or two here, so the maps are hashbrown's with its default,
//! randomly seeded foldhash (std's SipHash, here and in the stack table, took about a quarter
//! of the time of taking an event in), per-stack totals are indexed by stack id, and a live
//! heap block is one 16-byte table slot.
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashMap, HashSet, HashTable, hash_table};
use leaktrace_common::{Event, EventKind};

/// A process id (thread-group id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub u32);

/// A user stack id in the kernel stack map; negative when the kernel could not record one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId(pub i32);

/// Where a surviving block came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockKind {
    /// malloc family.
    Heap,
    /// Anonymous mmap outside an allocator call.
    Mmap,
}

const PAGE: u64 = 4096;

/// One live heap block, 12 bytes, as the rare blocks that do not fit a `Slot` keep it (with
/// their address as the key of one of `Heap`'s fallback maps). Sizes of 4 GiB and more live in
/// `Heap::huge`; the time is milliseconds since the process's first allocation (49 days fit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    size: u32,
    ts_ms: u32,
    stack: StackId,
}
const _: () = assert!(std::mem::size_of::<Block>() == 12);

/// `Block::size` of a block whose real size is in `Heap::huge`.
const HUGE: u32 = u32::MAX;

/// Heap blocks are 8-byte aligned at least: glibc's are 16-byte aligned, and allocators with an
/// 8-byte size class (jemalloc, tcmalloc, mimalloc) return 8-aligned small blocks, which a
/// 16-byte shift would send to a fallback map. Shifted right by this much, an address loses
/// nothing.
const ADDR_SHIFT: u32 = 3;
/// User-space addresses are below 2^48 unless the process opted into 5-level paging's larger
/// space, which leaves 45 bits once shifted.
const ADDR_BITS: u32 = 48 - ADDR_SHIFT;
const ADDR_MASK: u64 = (1 << ADDR_BITS) - 1;
/// The rest of the slot's first word, 19 bits, holds the stack id plus one (0 is -1, "no
/// stack"): 524,287 distinct stacks before the interner's ids stop fitting.
const STACK_BITS: u32 = 64 - ADDR_BITS;
const STACK_LIMIT: i64 = 1 << STACK_BITS;

/// One live heap block in the table, address included, in 16 bytes: a 2,000,000-block process's
/// table is what its memory is. With hashbrown's control byte a bucket is 17 bytes, and
/// 2,000,000 blocks in 4,194,304 buckets take 35.7 bytes each (with a `Block` and its address,
/// a 24-byte slot, they took 52.4). The first word packs the address shifted right by `ADDR_SHIFT`
/// (the low `ADDR_BITS` bits) and the stack id plus one (the high `STACK_BITS` bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    key: u64,
    size: u32,
    ts_ms: u32,
}
const _: () = assert!(std::mem::size_of::<Slot>() == 16);

impl Slot {
    /// The table key of `addr`: None when the address is not 8-aligned or is 2^48 or more.
    fn addr_key(addr: u64) -> Option<u64> {
        let key = addr >> ADDR_SHIFT;
        (addr & ((1 << ADDR_SHIFT) - 1) == 0 && key <= ADDR_MASK).then_some(key)
    }

    /// `b` as a slot with table key `key`, or None when its stack id does not fit.
    fn pack(key: u64, b: Block) -> Option<Slot> {
        let stack = i64::from(b.stack.0) + 1;
        if !(0..STACK_LIMIT).contains(&stack) {
            return None;
        }
        Some(Slot {
            key: key | ((stack as u64) << ADDR_BITS),
            size: b.size,
            ts_ms: b.ts_ms,
        })
    }

    fn addr_key_of(&self) -> u64 {
        self.key & ADDR_MASK
    }

    fn addr(&self) -> u64 {
        self.addr_key_of() << ADDR_SHIFT
    }

    fn block(&self) -> Block {
        // At most STACK_BITS bits, so the id plus one fits an i32 and the id is at least -1.
        let stack = (self.key >> ADDR_BITS) as i32 - 1;
        Block {
            size: self.size,
            ts_ms: self.ts_ms,
            stack: StackId(stack),
        }
    }
}

/// The live heap blocks of one process, by address. Almost every block is a `Slot` in `table`.
/// Blocks at addresses a slot cannot hold (not 8-aligned, which no allocator returns, or 2^48
/// and above, which only 5-level paging hands out) are in `odd_addrs`, and blocks whose stack
/// id does not fit a slot are in `big_stacks`, with the same meaning; both are nearly always
/// empty. An address is in one of the three at most. An address of `odd_addrs` never has a
/// table key, so it is looked up there alone; any other address may move between `table` and
/// `big_stacks` as its blocks' stacks change, so a slot's insertion or removal also looks in
/// `big_stacks`, while that holds anything.
#[derive(Debug, Default)]
struct Heap {
    table: HashTable<Slot>,
    hasher: DefaultHashBuilder,
    odd_addrs: HashMap<u64, Block>,
    big_stacks: HashMap<u64, Block>,
    /// Sizes of live blocks of 4 GiB or more (`size == HUGE` in any form), by address.
    huge: HashMap<u64, u64>,
}

impl Heap {
    /// Makes `b` (with its real `size`) the block at `addr`; returns the size of the block it
    /// replaced, if one was live there.
    fn insert(&mut self, addr: u64, size: u64, b: Block) -> Option<u64> {
        let old = match Slot::addr_key(addr) {
            None => self.odd_addrs.insert(addr, b).map(|o| o.size),
            Some(key) => match Slot::pack(key, b) {
                Some(slot) => {
                    let hasher = &self.hasher;
                    let entry = self.table.entry(
                        hasher.hash_one(key),
                        |s| s.addr_key_of() == key,
                        |s| hasher.hash_one(s.addr_key_of()),
                    );
                    match entry {
                        hash_table::Entry::Occupied(mut o) => {
                            Some(std::mem::replace(o.get_mut(), slot).size)
                        }
                        hash_table::Entry::Vacant(v) => {
                            v.insert(slot);
                            self.take_big_stack(addr)
                        }
                    }
                }
                None => match self.big_stacks.insert(addr, b) {
                    Some(o) => Some(o.size),
                    None => self.take_slot(key),
                },
            },
        };
        let old = old.map(|s| self.take_size(addr, s));
        if b.size == HUGE {
            self.huge.insert(addr, size);
        }
        old
    }

    /// Forgets the block at `addr`; returns its size if one was live there.
    fn remove(&mut self, addr: u64) -> Option<u64> {
        let s = match Slot::addr_key(addr) {
            None => self.odd_addrs.remove(&addr)?.size,
            Some(key) => match self.take_slot(key) {
                Some(s) => s,
                None => self.take_big_stack(addr)?,
            },
        };
        Some(self.take_size(addr, s))
    }

    /// Removes the slot of table key `key`; returns its `Block::size`.
    fn take_slot(&mut self, key: u64) -> Option<u32> {
        let found = self
            .table
            .find_entry(self.hasher.hash_one(key), |s| s.addr_key_of() == key);
        found.ok().map(|o| o.remove().0.size)
    }

    /// Removes `addr` from `big_stacks`; returns its `Block::size`.
    fn take_big_stack(&mut self, addr: u64) -> Option<u32> {
        if self.big_stacks.is_empty() {
            return None;
        }
        self.big_stacks.remove(&addr).map(|b| b.size)
    }

    /// The real size of the block of `Block::size` `s` at `addr`, which is being forgotten.
    fn take_size(&mut self, addr: u64, s: u32) -> u64 {
        if s == HUGE {
            self.huge.remove(&addr).unwrap_or(u64::from(HUGE))
        } else {
            u64::from(s)
        }
    }

    fn size_of(&self, addr: u64, b: &Block) -> u64 {
        if b.size == HUGE {
            self.huge.get(&addr).copied().unwrap_or(u64::from(HUGE))
        } else {
            u64::from(b.size)
        }
    }

    /// Every live block with its address.
    fn iter(&self) -> impl Iterator<Item = (u64, Block)> + '_ {
        let slots = self.table.iter().map(|s| (s.addr(), s.block()));
        let others = self.odd_addrs.iter().chain(&self.big_stacks);
        slots.chain(others.map(|(a, b)| (*a, *b)))
    }
}

/// What the allocations of one stack added up to, weighted.
#[derive(Clone, Copy, Debug, Default)]
struct Total {
    count: f64,
    bytes: f64,
}

/// Every allocation of one kind per stack, freed or not: pprof's alloc_objects/alloc_space.
/// Interned stack ids are small dense integers, so `dense` is indexed by id plus one (slot 0 is
/// "no stack", -1) and an allocation costs no hash. A slot is untouched while its count is 0:
/// every allocation adds a weight of 1 or more. Ids far beyond what this process touched (the
/// stack table is shared by every traced process) or negative ones other than -1 are `sparse`,
/// so that one high id cannot make a long run of empty slots.
#[derive(Debug, Default)]
struct Totals {
    dense: Vec<Total>,
    /// Slots of `dense` with a nonzero count.
    touched: usize,
    sparse: HashMap<StackId, Total>,
}

/// `Totals::dense` grows to any index below this, and beyond it up to `DENSE_PER_TOUCHED` times
/// the slots in use, so that its length stays within a constant factor of the stacks this
/// process allocated from (and is that number when the ids are the interner's, dense).
const DENSE_MIN: usize = 256;
const DENSE_PER_TOUCHED: usize = 8;

impl Totals {
    fn add(&mut self, stack: StackId, count: f64, bytes: f64) {
        // The common case, a stack that allocated before, is an index; the rest is out of line.
        let t = match usize::try_from(i64::from(stack.0) + 1)
            .ok()
            .and_then(|i| self.dense.get_mut(i))
        {
            Some(t) if t.count != 0.0 => t,
            _ => self.first(stack),
        };
        t.count += count;
        t.bytes += bytes;
    }

    /// The slot of `stack` when it is not yet a touched dense slot.
    #[cold]
    #[inline(never)]
    fn first(&mut self, stack: StackId) -> &mut Total {
        let Ok(i) = usize::try_from(i64::from(stack.0) + 1) else {
            return self.sparse.entry(stack).or_default();
        };
        if i >= self.dense.len() {
            if i >= DENSE_MIN.max(DENSE_PER_TOUCHED.saturating_mul(self.touched)) {
                return self.sparse.entry(stack).or_default();
            }
            self.grow(i + 1);
        }
        let Some(t) = self.dense.get_mut(i) else {
            return self.sparse.entry(stack).or_default();
        };
        if t.count == 0.0 {
            self.touched += 1;
        }
        t
    }

    /// Makes `dense` `len` slots long, moving in the sparse entries it now covers.
    fn grow(&mut self, len: usize) {
        self.dense.resize(len, Total::default());
        if self.sparse.is_empty() {
            return;
        }
        let dense = &mut self.dense;
        let touched = &mut self.touched;
        self.sparse.retain(|stack, t| {
            let Some(d) = usize::try_from(i64::from(stack.0) + 1)
                .ok()
                .and_then(|i| dense.get_mut(i))
            else {
                return true;
            };
            // An id is in `sparse` only while `dense` does not cover it: `d` is untouched.
            *d = *t;
            *touched += 1;
            false
        });
    }

    fn iter(&self) -> impl Iterator<Item = (StackId, Total)> + '_ {
        let dense = self.dense.iter().zip(-1..).filter(|(t, _)| t.count != 0.0);
        let dense = dense.map(|(t, id)| (StackId(id), *t));
        dense.chain(self.sparse.iter().map(|(s, t)| (*s, *t)))
    }
}

/// A live anonymous mapping: like a block, plus where the mmap was called from when the stack
/// walk skipped that frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    len: u64,
    ts_ns: u64,
    stack: StackId,
    caller: u64,
}

/// Running totals for one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    pub outstanding_count: u64,
    pub outstanding_bytes: u64,
    pub allocs: u64,
    pub frees: u64,
    /// Frees of addresses never seen allocated (allocated before attach): ignored.
    pub unknown_frees: u64,
    /// Allocations returned at an address already live (its free was missed): replaced.
    pub replaced: u64,
}

#[derive(Debug, Default)]
struct ProcState {
    heap: Heap,
    maps: BTreeMap<u64, Region>,
    stats: ProcStats,
    /// With sampling: unbiased estimates of outstanding bytes and blocks, allocations, frees.
    est: Estimates,
    /// The time blocks' `ts_ms` count from: this process's first allocation.
    epoch_ns: Option<u64>,
    /// Every heap allocation and every mapping seen per stack, freed or not.
    heap_totals: Totals,
    map_totals: Totals,
}

#[derive(Debug, Default, Clone, Copy)]
struct Estimates {
    outstanding_bytes: f64,
    outstanding_count: f64,
    allocs: f64,
    frees: f64,
}

/// How many blocks one sampled heap block of `size` bytes stands for: the inverse of its
/// probability of being sampled when each byte is sampled with probability 1/rate
/// (heapprofd's and Go's unbiased weighting). 1 without sampling.
pub fn weight(size: u64, rate: u64) -> f64 {
    if rate == 0 {
        return 1.0;
    }
    let p = 1.0 - (-(size.max(1) as f64) / rate as f64).exp();
    1.0 / p
}

/// All allocations one stack made since attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackTotal {
    pub stack: StackId,
    pub kind: BlockKind,
    pub alloc_count: u64,
    pub alloc_bytes: u64,
}

/// Survivors of one (stack, kind) at a given moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackSummary {
    pub stack: StackId,
    pub kind: BlockKind,
    /// For mmap sites: the return address found at the user stack pointer at the syscall.
    pub caller: u64,
    pub count: u64,
    pub bytes: u64,
    pub oldest_age: Duration,
}

/// What an exited process left behind, computed at its exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitedProcess {
    pub pid: Pid,
    pub stacks: Vec<StackSummary>,
    pub totals: Vec<StackTotal>,
    pub stats: ProcStats,
}

#[derive(Debug, Default)]
pub struct Aggregator {
    procs: HashMap<Pid, ProcState>,
    exited: Vec<ExitedProcess>,
    min_age: Duration,
    /// Every process's events are taken, a new pid starts being tracked (`audit --all`).
    track_all: bool,
    /// Byte-sampling rate of the probes (0: every allocation is seen): estimates are scaled.
    sample_rate: u64,
    /// Processes that exited, so that a late event does not bring one back in track-all mode.
    dead: HashSet<Pid>,
    /// Events for processes not (or no longer) traced.
    pub foreign_events: u64,
    pub events: u64,
}

impl Aggregator {
    pub fn new(min_age: Duration) -> Self {
        Self {
            min_age,
            ..Self::default()
        }
    }

    pub fn set_track_all(&mut self, on: bool) {
        self.track_all = on;
    }

    /// The probes sample each allocated byte with probability 1/rate (0: no sampling).
    pub fn set_sample_rate(&mut self, rate: u64) {
        self.sample_rate = rate;
    }

    /// Starts tracking `pid`; events of unknown pids are counted and dropped.
    pub fn track(&mut self, pid: Pid) {
        self.procs.entry(pid).or_default();
    }

    /// Drops what is known of `pid` (its blocks, stacks and totals) without reporting it, and
    /// goes on tracking it: after an exec the old image's memory went with its address space.
    pub fn restart(&mut self, pid: Pid) {
        if self.procs.remove(&pid).is_some() {
            self.procs.insert(pid, ProcState::default());
        }
    }

    pub fn is_tracked(&self, pid: Pid) -> bool {
        self.procs.contains_key(&pid)
    }

    pub fn tracked(&self) -> impl Iterator<Item = Pid> + '_ {
        self.procs.keys().copied()
    }

    /// Totals of `pid`: exact, or with sampling the unbiased estimates.
    pub fn stats(&self, pid: Pid) -> Option<ProcStats> {
        self.procs.get(&pid).map(|p| p.reported_stats(self.sample_rate))
    }

    pub fn total_outstanding(&self) -> (u64, u64) {
        self.procs.values().fold((0, 0), |(c, b), p| {
            (c + p.stats.outstanding_count, b + p.stats.outstanding_bytes)
        })
    }

    /// Applies one event; `stack` is the interned stack of an allocation (ignored otherwise).
    pub fn apply(&mut self, ev: &Event, stack: StackId) {
        self.events += 1;
        let pid = Pid(ev.pid);
        let Some(kind) = EventKind::from_u32(ev.kind) else {
            return;
        };
        if kind == EventKind::Exit {
            self.exit(pid, ev.ts_ns);
            return;
        }
        let p = if self.track_all && !self.dead.contains(&pid) {
            self.procs.entry(pid).or_default()
        } else {
            match self.procs.get_mut(&pid) {
                Some(p) => p,
                None => {
                    self.foreign_events += 1;
                    return;
                }
            }
        };
        let rate = self.sample_rate;
        match kind {
            EventKind::Alloc => p.alloc(ev.addr, ev.size, ev.ts_ns, stack, rate),
            EventKind::Free => p.free(ev.addr, rate),
            EventKind::Realloc => {
                if ev.addr != 0 {
                    if ev.old_addr != 0 {
                        p.free(ev.old_addr, rate);
                    }
                    p.alloc(ev.addr, ev.size, ev.ts_ns, stack, rate);
                } else if ev.size == 0 && ev.old_addr != 0 {
                    // realloc(p, 0) frees p and returns NULL.
                    p.free(ev.old_addr, rate);
                }
                // Otherwise realloc failed and the old block is still live.
            }
            EventKind::Mmap => {
                // MAP_FIXED may replace part of a tracked mapping.
                p.unmap(ev.addr, ev.size);
                p.map(
                    ev.addr,
                    Region {
                        len: ev.size,
                        ts_ns: ev.ts_ns,
                        stack,
                        caller: ev.caller,
                    },
                );
            }
            EventKind::Munmap => p.unmap(ev.addr, ev.size),
            EventKind::Mremap => {
                // Only a tracked mapping moves; it keeps the stack of its mmap.
                if let Some(r) = p.maps.get(&ev.old_addr).copied() {
                    p.unmap(ev.old_addr, ev.old_size);
                    p.unmap(ev.addr, ev.size);
                    p.map(ev.addr, Region { len: ev.size, ..r });
                }
            }
            // Exit is handled above; the OOM watcher consumes the others.
            EventKind::Exit | EventKind::OomVictim | EventKind::Exec | EventKind::Rename => {}
        }
    }

    /// Forgets `pid` after recording what it left outstanding (all of it, subject to min-age).
    pub fn exit(&mut self, pid: Pid, now_ns: u64) {
        if self.track_all {
            self.dead.insert(pid);
        }
        if let Some(p) = self.procs.remove(&pid) {
            let stacks = p.survivors(now_ns, self.min_age, self.sample_rate);
            self.exited.push(ExitedProcess {
                pid,
                stacks,
                totals: p.stack_totals(),
                stats: p.reported_stats(self.sample_rate),
            });
        }
    }

    /// Processes that exited since the last call, each reported once.
    pub fn take_exited(&mut self) -> Vec<ExitedProcess> {
        std::mem::take(&mut self.exited)
    }

    /// Every stack of `pid` that allocated since attach, with its totals.
    pub fn stack_totals(&self, pid: Pid) -> Vec<StackTotal> {
        self.procs.get(&pid).map(|p| p.stack_totals()).unwrap_or_default()
    }

    /// Survivors of `pid` older than min-age at `now_ns`, largest first.
    pub fn survivors(&self, pid: Pid, now_ns: u64) -> Vec<StackSummary> {
        self.procs
            .get(&pid)
            .map(|p| p.survivors(now_ns, self.min_age, self.sample_rate))
            .unwrap_or_default()
    }
}

impl ProcState {
    fn reported_stats(&self, rate: u64) -> ProcStats {
        if rate == 0 {
            return self.stats;
        }
        ProcStats {
            outstanding_bytes: self.est.outstanding_bytes.round().max(0.0) as u64,
            outstanding_count: self.est.outstanding_count.round().max(0.0) as u64,
            allocs: self.est.allocs.round() as u64,
            frees: self.est.frees.round() as u64,
            ..self.stats
        }
    }

    fn alloc(&mut self, addr: u64, size: u64, ts_ns: u64, stack: StackId, rate: u64) {
        if addr == 0 {
            return;
        }
        self.stats.allocs += 1;
        let w = weight(size, rate);
        self.est.allocs += w;
        self.est.outstanding_count += w;
        self.est.outstanding_bytes += w * size as f64;
        self.heap_totals.add(stack, w, w * size as f64);
        let epoch = *self.epoch_ns.get_or_insert(ts_ns);
        let ts_ms = (ts_ns.saturating_sub(epoch) / 1_000_000).min(u64::from(u32::MAX)) as u32;
        let b = Block {
            size: if size < u64::from(HUGE) { size as u32 } else { HUGE },
            ts_ms,
            stack,
        };
        // A previous block at this address (its free was missed) is replaced.
        match self.heap.insert(addr, size, b) {
            Some(old) => {
                self.stats.replaced += 1;
                let ow = weight(old, rate);
                self.est.outstanding_count -= ow;
                self.est.outstanding_bytes -= ow * old as f64;
                self.stats.outstanding_bytes -= old;
                self.stats.outstanding_bytes += size;
            }
            None => {
                self.stats.outstanding_count += 1;
                self.stats.outstanding_bytes += size;
            }
        }
    }

    fn ts_ns_of(&self, b: &Block) -> u64 {
        self.epoch_ns.unwrap_or(0) + u64::from(b.ts_ms) * 1_000_000
    }

    fn free(&mut self, addr: u64, rate: u64) {
        if addr == 0 {
            return;
        }
        match self.heap.remove(addr) {
            Some(size) => {
                let w = weight(size, rate);
                self.est.frees += w;
                self.est.outstanding_count -= w;
                self.est.outstanding_bytes -= w * size as f64;
                self.stats.frees += 1;
                self.stats.outstanding_count -= 1;
                self.stats.outstanding_bytes -= size;
            }
            None => self.stats.unknown_frees += 1,
        }
    }

    fn map(&mut self, addr: u64, r: Region) {
        if addr == 0 || r.len == 0 {
            return;
        }
        self.stats.allocs += 1;
        self.est.allocs += 1.0;
        self.map_totals.add(r.stack, 1.0, r.len as f64);
        self.add_outstanding(1, r.len);
        self.maps.insert(addr, r);
    }

    /// Removes [addr, addr+len) (page-rounded, as the kernel does) from the tracked mappings,
    /// splitting any mapping that straddles an edge.
    fn unmap(&mut self, addr: u64, len: u64) {
        let start = addr & !(PAGE - 1);
        let end = addr.saturating_add(len).saturating_add(PAGE - 1) & !(PAGE - 1);
        if end <= start {
            return;
        }
        let hit: Vec<u64> = self
            .maps
            .range(..end)
            .rev()
            // Tracked mappings never overlap, so the first one that ends before `start` ends
            // the overlapping run.
            .take_while(|(a, r)| a.saturating_add(r.len) > start)
            .map(|(a, _)| *a)
            .collect();
        for a in hit {
            let Some(r) = self.maps.remove(&a) else { continue };
            self.sub_outstanding(1, r.len);
            self.stats.frees += 1;
            self.est.frees += 1.0;
            let r_end = a + r.len;
            if a < start {
                self.keep_piece(a, start - a, r);
            }
            if r_end > end {
                self.keep_piece(end, r_end - end, r);
            }
        }
    }

    fn keep_piece(&mut self, addr: u64, len: u64, r: Region) {
        self.add_outstanding(1, len);
        self.maps.insert(addr, Region { len, ..r });
    }

    /// Mappings are never sampled: they count once, exactly and in the estimates.
    fn add_outstanding(&mut self, count: u64, bytes: u64) {
        self.stats.outstanding_count += count;
        self.stats.outstanding_bytes += bytes;
        self.est.outstanding_count += count as f64;
        self.est.outstanding_bytes += bytes as f64;
    }

    fn sub_outstanding(&mut self, count: u64, bytes: u64) {
        self.stats.outstanding_count -= count;
        self.stats.outstanding_bytes -= bytes;
        self.est.outstanding_count -= count as f64;
        self.est.outstanding_bytes -= bytes as f64;
    }

    fn stack_totals(&self) -> Vec<StackTotal> {
        let heap = self.heap_totals.iter().map(|(s, t)| (s, BlockKind::Heap, t));
        let maps = self.map_totals.iter().map(|(s, t)| (s, BlockKind::Mmap, t));
        let mut v: Vec<StackTotal> = heap
            .chain(maps)
            .map(|(stack, kind, t)| StackTotal {
                stack,
                kind,
                alloc_count: t.count.round() as u64,
                alloc_bytes: t.bytes.round() as u64,
            })
            .collect();
        v.sort_by(|a, b| b.alloc_bytes.cmp(&a.alloc_bytes).then(a.stack.cmp(&b.stack)));
        v
    }

    fn survivors(&self, now_ns: u64, min_age: Duration, rate: u64) -> Vec<StackSummary> {
        let min_age_ns = min_age.as_nanos().min(u64::MAX as u128) as u64;
        let mut groups: HashMap<(StackId, BlockKind, u64), (f64, f64, u64)> = HashMap::new();
        let mut add = |key, size: u64, ts: u64, w: f64| {
            if now_ns.saturating_sub(ts) < min_age_ns {
                return;
            }
            let g = groups.entry(key).or_insert((0.0, 0.0, u64::MAX));
            g.0 += w;
            g.1 += w * size as f64;
            g.2 = g.2.min(ts);
        };
        for (addr, b) in self.heap.iter() {
            let size = self.heap.size_of(addr, &b);
            add((b.stack, BlockKind::Heap, 0), size, self.ts_ns_of(&b), weight(size, rate));
        }
        for r in self.maps.values() {
            add((r.stack, BlockKind::Mmap, r.caller), r.len, r.ts_ns, 1.0);
        }
        let mut out: Vec<StackSummary> = groups
            .into_iter()
            .map(|((stack, kind, caller), (count, bytes, oldest))| StackSummary {
                stack,
                kind,
                caller,
                count: count.round() as u64,
                bytes: bytes.round() as u64,
                oldest_age: Duration::from_nanos(now_ns.saturating_sub(oldest)),
            })
            .collect();
        out.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then(b.count.cmp(&a.count))
                .then(a.stack.cmp(&b.stack))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u32 = 100;
    const S: u64 = 1_000_000_000;

    fn ev(kind: EventKind, addr: u64, size: u64, old: u64, ts_s: u64) -> Event {
        Event {
            kind: kind as u32,
            pid: P,
            tid: P,
            ts_ns: ts_s * S,
            addr,
            size,
            old_addr: old,
            ..Event::default()
        }
    }

    fn agg() -> Aggregator {
        let mut a = Aggregator::new(Duration::from_secs(5));
        a.track(Pid(P));
        a
    }

    fn totals(a: &Aggregator) -> (u64, u64) {
        let s = a.stats(Pid(P)).unwrap();
        (s.outstanding_count, s.outstanding_bytes)
    }

    #[test]
    fn malloc_free_pair_is_not_a_survivor() {
        let mut a = agg();
        a.apply(&ev(EventKind::Alloc, 0x1000, 64, 0, 1), StackId(7));
        a.apply(&ev(EventKind::Free, 0x1000, 0, 0, 2), StackId(-1));
        assert_eq!(totals(&a), (0, 0));
        assert!(a.survivors(Pid(P), 100 * S).is_empty());
    }

    #[test]
    fn survivors_group_by_stack_and_respect_min_age() {
        let mut a = agg();
        a.apply(&ev(EventKind::Alloc, 0x1000, 100, 0, 1), StackId(7));
        a.apply(&ev(EventKind::Alloc, 0x2000, 100, 0, 3), StackId(7));
        a.apply(&ev(EventKind::Alloc, 0x3000, 50, 0, 9), StackId(8)); // too young at t=10
        let s = a.survivors(Pid(P), 10 * S);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].stack, s[0].count, s[0].bytes), (StackId(7), 2, 200));
        assert_eq!(s[0].oldest_age, Duration::from_secs(9));
        assert_eq!(totals(&a), (3, 250));
    }

    #[test]
    fn realloc_success_moves_the_block() {
        let mut a = agg();
        a.apply(&ev(EventKind::Alloc, 0x1000, 100, 0, 1), StackId(1));
        a.apply(&ev(EventKind::Realloc, 0x5000, 200, 0x1000, 1), StackId(2));
        assert_eq!(totals(&a), (1, 200));
        let s = a.survivors(Pid(P), 10 * S);
        assert_eq!((s[0].stack, s[0].bytes), (StackId(2), 200));
    }

    #[test]
    fn realloc_in_place_keeps_one_block() {
        let mut a = agg();
        a.apply(&ev(EventKind::Alloc, 0x1000, 100, 0, 1), StackId(1));
        a.apply(&ev(EventKind::Realloc, 0x1000, 150, 0x1000, 1), StackId(2));
        assert_eq!(totals(&a), (1, 150));
    }

    #[test]
    fn failed_realloc_keeps_the_old_block() {
        let mut a = agg();
        a.apply(&ev(EventKind::Alloc, 0x1000, 100, 0, 1), StackId(1));
        a.apply(&ev(EventKind::Realloc, 0, 1 << 40, 0x1000, 1), StackId(2));
        assert_eq!(totals(&a), (1, 100));
    }

    #[test]
    fn realloc_null_is_malloc_and_realloc_zero_frees() {
        let mut a = agg();
        a.apply(&ev(EventKind::Realloc, 0x1000, 10, 0, 1), StackId(1));
        assert_eq!(totals(&a), (1, 10));
        a.apply(&ev(EventKind::Realloc, 0, 0, 0x1000, 1), StackId(1));
        assert_eq!(totals(&a), (0, 0));
    }

    #[test]
    fn null_returns_and_unknown_frees_are_ignored() {
        let mut a = agg();
        // calloc overflow returns NULL: not an allocation.
        a.apply(&ev(EventKind::Alloc, 0, u64::MAX, 0, 1), StackId(1));
        a.apply(&ev(EventKind::Free, 0xdead, 0, 0, 1), StackId(-1));
        a.apply(&ev(EventKind::Free, 0, 0, 0, 1), StackId(-1));
        assert_eq!(totals(&a), (0, 0));
        assert_eq!(a.stats(Pid(P)).unwrap().unknown_frees, 1);
    }

    #[test]
    fn same_address_in_two_processes_does_not_collide() {
        let mut a = agg();
        a.track(Pid(200));
        a.apply(&ev(EventKind::Alloc, 0x1000, 10, 0, 1), StackId(1));
        let mut other = ev(EventKind::Alloc, 0x1000, 20, 0, 1);
        other.pid = 200;
        a.apply(&other, StackId(1));
        let mut free_other = ev(EventKind::Free, 0x1000, 0, 0, 2);
        free_other.pid = 200;
        a.apply(&free_other, StackId(-1));
        assert_eq!(totals(&a), (1, 10));
    }

    #[test]
    fn exit_reports_once_then_forgets() {
        let mut a = agg();
        a.apply(&ev(EventKind::Alloc, 0x1000, 10, 0, 1), StackId(1));
        a.apply(&ev(EventKind::Exit, 0, 0, 0, 20), StackId(-1));
        assert!(!a.is_tracked(Pid(P)));
        let exited = a.take_exited();
        assert_eq!(exited.len(), 1);
        assert_eq!(exited[0].stacks[0].bytes, 10);
        assert!(a.take_exited().is_empty());
        // Later events of the dead pid are foreign, not a new process.
        a.apply(&ev(EventKind::Alloc, 0x2000, 10, 0, 21), StackId(1));
        assert_eq!(a.foreign_events, 1);
    }

    #[test]
    fn totals_count_every_allocation_freed_or_not() {
        let mut a = agg();
        a.apply(&ev(EventKind::Alloc, 0x1000, 100, 0, 1), StackId(7));
        a.apply(&ev(EventKind::Free, 0x1000, 0, 0, 2), StackId(-1));
        a.apply(&ev(EventKind::Alloc, 0x1000, 50, 0, 3), StackId(7));
        a.apply(&ev(EventKind::Mmap, 0x10000, PAGE, 0, 3), StackId(8));
        let t = a.stack_totals(Pid(P));
        assert_eq!(t.len(), 2);
        // Largest first: the page-sized mapping, then the two heap blocks.
        assert_eq!((t[0].kind, t[0].alloc_count, t[0].alloc_bytes), (BlockKind::Mmap, 1, PAGE));
        assert_eq!((t[1].stack, t[1].alloc_count, t[1].alloc_bytes), (StackId(7), 2, 150));
    }

    #[test]
    fn sampled_blocks_are_scaled_by_their_inverse_probability() {
        let mut a = agg();
        a.set_sample_rate(1000);
        // A 1000-byte block is sampled with probability 1 - 1/e.
        a.apply(&ev(EventKind::Alloc, 0x1000, 1000, 0, 1), StackId(7));
        let w = 1.0 / (1.0 - (-1.0f64).exp());
        let s = a.survivors(Pid(P), 100 * S);
        assert_eq!((s[0].count, s[0].bytes), (w.round() as u64, (w * 1000.0).round() as u64));
        assert_eq!(a.stats(Pid(P)).unwrap().outstanding_bytes, (w * 1000.0).round() as u64);
        // Big blocks are certain: weight 1.
        assert!((weight(1 << 30, 1000) - 1.0).abs() < 1e-9);
        a.apply(&ev(EventKind::Free, 0x1000, 0, 0, 2), StackId(-1));
        assert_eq!(a.stats(Pid(P)).unwrap().outstanding_bytes, 0);
    }

    #[test]
    fn blocks_of_four_gib_and_more_keep_their_size() {
        let mut a = agg();
        a.apply(&ev(EventKind::Alloc, 0x1000, 5 << 30, 0, 1), StackId(1));
        a.apply(&ev(EventKind::Alloc, 0x2000, 10, 0, 1), StackId(1));
        assert_eq!(totals(&a), (2, (5 << 30) + 10));
        assert_eq!(a.survivors(Pid(P), 10 * S)[0].bytes, (5 << 30) + 10);
        // Reused address: the huge size goes with the old block.
        a.apply(&ev(EventKind::Alloc, 0x1000, 7, 0, 2), StackId(1));
        assert_eq!(totals(&a), (2, 17));
        a.apply(&ev(EventKind::Free, 0x1000, 0, 0, 3), StackId(-1));
        a.apply(&ev(EventKind::Free, 0x2000, 0, 0, 3), StackId(-1));
        assert_eq!(totals(&a), (0, 0));
    }

    #[test]
    fn track_all_adopts_new_pids_but_not_dead_ones() {
        let mut a = Aggregator::new(Duration::ZERO);
        a.set_track_all(true);
        a.apply(&ev(EventKind::Alloc, 0x1000, 10, 0, 1), StackId(1));
        assert!(a.is_tracked(Pid(P)));
        a.apply(&ev(EventKind::Exit, 0, 0, 0, 2), StackId(-1));
        a.apply(&ev(EventKind::Free, 0x1000, 0, 0, 3), StackId(-1));
        assert!(!a.is_tracked(Pid(P)));
    }

    #[test]
    fn partial_munmap_splits_and_mremap_moves() {
        let mut a = agg();
        a.apply(&ev(EventKind::Mmap, 0x10000, 4 * PAGE, 0, 1), StackId(3));
        a.apply(&ev(EventKind::Munmap, 0x10000 + PAGE, PAGE, 0, 2), StackId(-1));
        assert_eq!(totals(&a), (2, 3 * PAGE));
        let mut m = ev(EventKind::Mremap, 0x90000, 8 * PAGE, 0x10000, 3);
        m.old_size = PAGE;
        a.apply(&m, StackId(-1));
        assert_eq!(totals(&a), (2, 10 * PAGE));
        let s = a.survivors(Pid(P), 100 * S);
        assert!(s.iter().all(|x| x.stack == StackId(3) && x.kind == BlockKind::Mmap));
        // Unmapping everything leaves nothing.
        a.apply(&ev(EventKind::Munmap, 0x0, 0x100000, 0, 4), StackId(-1));
        assert_eq!(totals(&a), (0, 0));
    }

    /// The survivors of `a` as (stack, count, bytes), sorted by stack.
    fn by_stack(a: &Aggregator) -> Vec<(StackId, u64, u64)> {
        let mut v: Vec<_> = a
            .survivors(Pid(P), 100 * S)
            .iter()
            .map(|s| (s.stack, s.count, s.bytes))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn slots_pack_what_fits_and_nothing_else() {
        let top = (1 << 48) - 8;
        let b = Block {
            size: HUGE,
            ts_ms: u32::MAX,
            stack: StackId((1 << STACK_BITS) - 2),
        };
        let key = Slot::addr_key(top).unwrap();
        let slot = Slot::pack(key, b).unwrap();
        assert_eq!((slot.addr(), slot.block()), (top, b));
        let none = Block {
            stack: StackId(-1),
            ..b
        };
        assert_eq!(Slot::pack(1, none).unwrap().block(), none);
        assert_eq!(Slot::addr_key(0x1008), Some(0x201));
        // Unaligned or beyond user space: no key; a stack id of more than STACK_BITS bits: no
        // slot.
        assert_eq!(Slot::addr_key(0x1004), None);
        assert_eq!(Slot::addr_key(1 << 48), None);
        for id in [1 << STACK_BITS, (1 << STACK_BITS) - 1, i32::MAX, -2, i32::MIN] {
            let b = Block {
                stack: StackId(id),
                ..b
            };
            assert_eq!(Slot::pack(0x200, b), None, "stack {id}");
        }
    }

    #[test]
    fn unaligned_and_high_addresses_are_tracked_apart() {
        let mut a = agg();
        // 0x1004 and 1 << 48 | 0x1000 would share 0x1000's table key if they were packed.
        let high = (1 << 48) | 0x1000;
        a.apply(&ev(EventKind::Alloc, 0x1000, 10, 0, 1), StackId(1));
        a.apply(&ev(EventKind::Alloc, 0x1004, 20, 0, 1), StackId(2));
        a.apply(&ev(EventKind::Alloc, high, 40, 0, 1), StackId(3));
        a.apply(&ev(EventKind::Alloc, 0x1008, 80, 0, 1), StackId(4));
        assert_eq!(totals(&a), (4, 150));
        let want = vec![
            (StackId(1), 1, 10),
            (StackId(2), 1, 20),
            (StackId(3), 1, 40),
            (StackId(4), 1, 80),
        ];
        assert_eq!(by_stack(&a), want);
        // Reuse of an unaligned address replaces its block.
        a.apply(&ev(EventKind::Alloc, 0x1004, 25, 0, 2), StackId(5));
        assert_eq!(totals(&a), (4, 155));
        assert_eq!(a.stats(Pid(P)).unwrap().replaced, 1);
        for addr in [0x1004, high, 0x1008] {
            a.apply(&ev(EventKind::Free, addr, 0, 0, 3), StackId(-1));
        }
        assert_eq!(by_stack(&a), vec![(StackId(1), 1, 10)]);
        a.apply(&ev(EventKind::Free, 0x1000, 0, 0, 3), StackId(-1));
        a.apply(&ev(EventKind::Free, 0x1004, 0, 0, 3), StackId(-1));
        assert_eq!(totals(&a), (0, 0));
        assert_eq!(a.stats(Pid(P)).unwrap().unknown_frees, 1);
    }

    #[test]
    fn big_stack_ids_are_kept_and_move_between_forms() {
        let mut a = agg();
        let big = StackId(1 << STACK_BITS);
        a.apply(&ev(EventKind::Alloc, 0x1000, 10, 0, 1), big);
        a.apply(&ev(EventKind::Alloc, 0x2000, 20, 0, 1), StackId(i32::MAX));
        a.apply(&ev(EventKind::Alloc, 0x3000, 30, 0, 1), StackId(-1));
        let want = vec![(StackId(-1), 1, 30), (StackId(1), 1, 10)];
        let mut want_big = want.clone();
        want_big[1].0 = big;
        want_big.push((StackId(i32::MAX), 1, 20));
        assert_eq!(by_stack(&a), want_big);
        // The same address with a stack that fits: the big-stack block is replaced, not doubled.
        a.apply(&ev(EventKind::Alloc, 0x1000, 10, 0, 2), StackId(1));
        // And back: the slot is replaced by a big-stack block.
        a.apply(&ev(EventKind::Alloc, 0x3000, 30, 0, 2), big);
        a.apply(&ev(EventKind::Alloc, 0x3000, 30, 0, 2), StackId(-1));
        assert_eq!(a.stats(Pid(P)).unwrap().replaced, 3);
        a.apply(&ev(EventKind::Free, 0x2000, 0, 0, 3), StackId(-1));
        assert_eq!(by_stack(&a), want);
        assert_eq!(totals(&a), (2, 40));
        a.apply(&ev(EventKind::Free, 0x1000, 0, 0, 3), StackId(-1));
        a.apply(&ev(EventKind::Free, 0x3000, 0, 0, 3), StackId(-1));
        assert_eq!(totals(&a), (0, 0));
        assert_eq!(a.stats(Pid(P)).unwrap().unknown_frees, 0);
    }

    #[test]
    fn huge_blocks_keep_their_size_in_any_form() {
        let mut a = agg();
        let huge = 5 << 30;
        let big = StackId(1 << STACK_BITS);
        a.apply(&ev(EventKind::Alloc, 0x1004, huge, 0, 1), StackId(1));
        a.apply(&ev(EventKind::Alloc, 0x2000, huge + 1, 0, 1), big);
        a.apply(&ev(EventKind::Alloc, 0x3000, huge + 2, 0, 1), StackId(2));
        assert_eq!(totals(&a), (3, 3 * huge + 3));
        let want = vec![(StackId(1), 1, huge), (StackId(2), 1, huge + 2), (big, 1, huge + 1)];
        assert_eq!(by_stack(&a), want);
        // A huge slot replaced by a huge big-stack block, and a huge big-stack block by a small
        // slot: each old size goes with its block.
        a.apply(&ev(EventKind::Alloc, 0x3000, huge + 3, 0, 2), big);
        a.apply(&ev(EventKind::Alloc, 0x2000, 7, 0, 2), StackId(3));
        assert_eq!(totals(&a), (3, 2 * huge + 10));
        let want = vec![(StackId(1), 1, huge), (StackId(3), 1, 7), (big, 1, huge + 3)];
        assert_eq!(by_stack(&a), want);
        for addr in [0x1004, 0x2000, 0x3000] {
            a.apply(&ev(EventKind::Free, addr, 0, 0, 3), StackId(-1));
        }
        assert_eq!(totals(&a), (0, 0));
    }

    #[test]
    fn totals_of_any_stack_id_are_kept() {
        let mut a = agg();
        let mut addr = 0x1000;
        let mut alloc = |a: &mut Aggregator, stack: i32, size: u64| {
            a.apply(&ev(EventKind::Alloc, addr, size, 0, 1), StackId(stack));
            addr += 0x100;
        };
        // Far beyond the dense ids first (sparse), then enough dense ids that the dense slots
        // grow over the sparse ones, which must keep their counts.
        for id in [-1, -7, i32::MAX, 5000, 5000] {
            alloc(&mut a, id, 10);
        }
        for id in 0..1000 {
            alloc(&mut a, id, 1);
        }
        alloc(&mut a, 5000, 10);
        alloc(&mut a, 2000, 3);
        let t = a.stack_totals(Pid(P));
        let get = |id: i32| {
            let hits: Vec<_> = t.iter().filter(|t| t.stack == StackId(id)).collect();
            assert_eq!(hits.len(), 1, "stack {id}");
            (hits[0].alloc_count, hits[0].alloc_bytes)
        };
        assert_eq!(t.len(), 1005);
        assert_eq!(get(5000), (3, 30));
        assert_eq!((get(-1), get(-7), get(i32::MAX)), ((1, 10), (1, 10), (1, 10)));
        assert_eq!((get(0), get(999), get(2000)), ((1, 1), (1, 1), (1, 3)));
        assert_eq!(t[0].stack, StackId(5000));
    }

    #[test]
    fn mremap_of_untracked_mapping_is_ignored() {
        let mut a = agg();
        let mut m = ev(EventKind::Mremap, 0x90000, 8 * PAGE, 0x10000, 3);
        m.old_size = PAGE;
        a.apply(&m, StackId(-1));
        assert_eq!(totals(&a), (0, 0));
    }
}
