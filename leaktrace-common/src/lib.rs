//! Types shared by the eBPF programs and userspace: the ring-buffer record, the per-CPU counter
//! slots and the per-thread state the probes keep. Everything here is `#[repr(C)]` with explicit
//! padding and fixed sizes checked at compile time, because both sides read the same bytes.
//! Decoding (length checks, kind validation) lives in userspace; this crate owns layouts, and the
//! byte sampler's countdown step, so that userspace tests run the very logic the kernel runs.
#![no_std]

/// What one [`Event`] reports. On the wire this is a bare `u32`; userspace converts with
/// `TryFrom` and rejects unknown values instead of trusting them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A malloc-family call returned `addr` for `size` bytes.
    Alloc = 1,
    /// `free(addr)` was called with a non-null pointer.
    Free = 2,
    /// `realloc(old_addr, size)` (or `reallocarray`) returned `addr` (0 on failure or when
    /// `size == 0` freed the block).
    Realloc = 3,
    /// An anonymous `mmap` of `size` bytes succeeded at `addr`, outside any allocator call.
    /// `caller` is the word at the user stack pointer at the syscall (the return address into
    /// the wrapper's caller when the wrapper did not move the stack), or 0.
    Mmap = 4,
    /// `munmap(addr, size)` succeeded.
    Munmap = 5,
    /// `mremap(old_addr, old_size, size)` succeeded and returned `addr`.
    Mremap = 6,
    /// The thread-group leader of `pid` exited.
    Exit = 7,
    /// The OOM killer marked a victim (`oom/mark_victim`). The record carries the tracepoint's
    /// raw bytes ([`OOM_RAW`]); userspace decodes them with the field offsets of the
    /// tracepoint's format file, so no kernel version's layout is compiled in.
    OomVictim = 8,
    /// `pid` exec'd; the record carries its new comm ([`COMM_LEN`] bytes).
    Exec = 9,
    /// A task was renamed (`task/task_rename`: prctl(PR_SET_NAME), a write to
    /// /proc/PID/task/TID/comm, exec). The record carries the tracepoint's raw bytes
    /// ([`RENAME_RAW`]), decoded in userspace with the offsets of its format file; `pid`/`tid`
    /// are the renaming task's (current), the record's own `pid` field is the renamed thread.
    Rename = 10,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Alloc,
            2 => Self::Free,
            3 => Self::Realloc,
            4 => Self::Mmap,
            5 => Self::Munmap,
            6 => Self::Mremap,
            7 => Self::Exit,
            8 => Self::OomVictim,
            9 => Self::Exec,
            10 => Self::Rename,
            _ => return None,
        })
    }
}

/// One record in the `EVENTS` ring buffer. Fields a kind does not use are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Thread-group id (the process id users see).
    pub pid: u32,
    /// Kernel task id of the calling thread.
    pub tid: u32,
    /// Number of user stack frames (u64 instruction pointers, innermost first) that follow this
    /// header in the record; 0 for kinds without a stack or when the kernel could not take it.
    pub frames: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds; 0 in `Free` events, which need no
    /// time.
    pub ts_ns: u64,
    pub addr: u64,
    pub size: u64,
    pub old_addr: u64,
    pub old_size: u64,
    pub caller: u64,
}

pub const EVENT_SIZE: usize = 64;

/// Frames of the record most stacks fit in. A stack that fills it is taken again into a
/// [`MAX_FRAMES`] record, so deep stacks cost a second walk and short ones little ring space.
pub const SMALL_FRAMES: usize = 16;
/// The kernel's default `perf_event_max_stack`.
pub const MAX_FRAMES: usize = 127;

/// An event followed by its user stack. Frames are copied into the record rather than kept in a
/// kernel stack map: a stack-map bucket collision loses the stack (or, with reuse, silently
/// swaps it), while a copy is always exact; userspace deduplicates.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Record<const N: usize> {
    pub event: Event,
    pub frames: [u64; N],
}
const _: () = assert!(core::mem::size_of::<Record<SMALL_FRAMES>>() == EVENT_SIZE + 8 * SMALL_FRAMES);
const _: () = assert!(core::mem::size_of::<Record<MAX_FRAMES>>() == EVENT_SIZE + 8 * MAX_FRAMES);
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);
const _: () = assert!(core::mem::align_of::<Event>() == 8);

/// Raw bytes of an `oom/mark_victim` record copied into an [`EventKind::OomVictim`] record (its
/// fixed fields end at 66 bytes on 6.18; the comm string follows).
pub const OOM_RAW: usize = 256;
pub const COMM_LEN: usize = 16;
/// Raw bytes of a `task/task_rename` record copied into an [`EventKind::Rename`] record (its
/// fields end at 46 bytes on 6.18).
pub const RENAME_RAW: usize = 64;

/// An event followed by raw bytes (a tracepoint record, a comm).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawRecord<const N: usize> {
    pub event: Event,
    pub data: [u8; N],
}
const _: () = assert!(core::mem::size_of::<RawRecord<OOM_RAW>>() == EVENT_SIZE + OOM_RAW);
const _: () = assert!(core::mem::size_of::<RawRecord<COMM_LEN>>() == EVENT_SIZE + COMM_LEN);
const _: () = assert!(core::mem::size_of::<RawRecord<RENAME_RAW>>() == EVENT_SIZE + RENAME_RAW);

/// Which allocator entry point a pending call belongs to; decides how the return probe reads
/// the result.
pub mod call {
    pub const ALLOC: u32 = 1;
    pub const REALLOC: u32 = 2;
    /// `posix_memalign(void **memptr, ...)`: the block is written through `memptr` and the
    /// return value is an error number.
    pub const POSIX_MEMALIGN: u32 = 3;
    /// A runtime function (pthread_create) whose own allocations and mmaps are not reported.
    pub const INTERNAL: u32 = 4;
    /// An allocator call the byte sampler skipped: kept only as the in-flight mark (and for a
    /// realloc that may release a sampled block).
    pub const UNSAMPLED: u32 = 5;
}

/// Byte sampling: the countdown refills are drawn from this many precomputed exponential
/// samples (mean = the sampling rate), written by userspace: BPF has no floating point.
pub const SAMPLE_DRAWS: u32 = 4096;

/// The byte sampler's decision for one allocation of `size` bytes, given `left`, the bytes until
/// the next sample on this CPU; `draw` gives a fresh countdown (an exponential draw with mean the
/// rate, at least 1). Returns whether this allocation is sampled.
///
/// A countdown of 0 was never drawn (a CPU's first allocation since the programs were loaded):
/// it starts at a draw too. Starting it at 0 sampled every CPU's first allocation for certain,
/// while its weight assumed probability `1 - exp(-size / rate)`: a 33 KB process was estimated
/// at about the rate (1 GiB at `--sample-rate 1GiB`).
#[inline(always)]
pub fn countdown_step(left: &mut i64, size: u64, mut draw: impl FnMut() -> i64) -> bool {
    if *left <= 0 {
        *left = draw();
    }
    let size = if size > i64::MAX as u64 { i64::MAX } else { size as i64 };
    let rest = *left - size;
    if rest > 0 {
        *left = rest;
        return false;
    }
    *left = draw();
    true
}

/// Key of the set of sampled live blocks, so that a free of an unsampled block costs one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub pid: u32,
    pub _pad: u32,
    pub addr: u64,
}
const _: () = assert!(core::mem::size_of::<BlockKey>() == 16);

/// Per-thread state between an allocator's entry and return probes: in the slot of its thread
/// id in the in-flight array, or (when another thread holds that slot) in the overflow map keyed
/// by `pid_tgid`. Its presence also marks "an allocator call is in flight" so that the
/// allocator's own mmaps are not counted a second time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Requested bytes (`u64::MAX` when `nmemb * size` overflowed: not an allocation).
    pub size: u64,
    /// `realloc`'s old block, or `posix_memalign`'s `memptr`.
    pub ptr: u64,
    /// One of [`call`].
    pub call: u32,
    /// Allocator calls nested inside this one (glibc's `reallocarray` tail-calls `realloc`);
    /// only the outermost call is reported.
    pub depth: u32,
    /// The thread owning an in-flight array slot; 0 (the idle task, never in user space) when
    /// the slot is free.
    pub tid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Pending>() == 32);

/// Slots of the in-flight array, indexed by thread id modulo this.
pub const INFLIGHT_SLOTS: u32 = 32768;

/// Arguments of an in-flight mmap/munmap/mremap, saved at `sys_enter_*` until `sys_exit_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallArgs {
    pub addr: u64,
    pub len: u64,
    pub new_len: u64,
    pub caller: u64,
    /// Syscall number, to pair enter and exit of the same call.
    pub nr: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallArgs>() == 40);

/// Slots of the per-CPU `COUNTERS` array. Userspace sums them over CPUs.
pub mod counter {
    /// A ring-buffer reserve failed: the event is lost.
    pub const LOST: u32 = 0;
    /// `bpf_get_stack` failed: the event carries no frames.
    pub const STACK_ERRORS: u32 = 1;
    /// A return probe found no in-flight entry: the call entered while the probes were being
    /// attached, or its entry was evicted from the overflow map or lost to a slot collision.
    pub const MISSED_RETURNS: u32 = 2;
    /// The pending map could not take a new entry.
    pub const PENDING_FULL: u32 = 3;
    /// Probe hits, all programs together.
    pub const HITS: u32 = 4;
    /// The sampled-block set was full: that block's free will not be seen (counted).
    pub const SAMPLED_FULL: u32 = 5;
    pub const COUNT: u32 = 8;
}

/// Names of maps and programs, shared so that a rename breaks the build, not the attach.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const TARGETS: &str = "TARGETS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const PENDING: &str = "PENDING";
    pub const SYSCALLS: &str = "SYSCALLS";
    /// Global: ring bytes pending above which a submit wakes userspace.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    /// Global: non-zero to trace every process but `SELF_TGID`.
    pub const TRACE_ALL: &str = "TRACE_ALL";
    pub const SELF_TGID: &str = "SELF_TGID";
    /// Global: byte-sampling rate (0: every allocation).
    pub const SAMPLE_RATE: &str = "SAMPLE_RATE";
    /// Global: non-zero makes every program return at once (the benchmark floor).
    pub const EMPTY: &str = "EMPTY";
    /// Global: 0 keeps every in-flight call in the overflow map (tests of that path).
    pub const INFLIGHT_ON: &str = "INFLIGHT_ON";
    pub const DRAWS: &str = "DRAWS";
    pub const SAMPLED: &str = "SAMPLED";
}

/// Syscall numbers on x86-64, used to pair enter and exit.
pub mod nr {
    pub const MMAP: u32 = 9;
    pub const MUNMAP: u32 = 11;
    pub const MREMAP: u32 = 25;
}

pub const MAP_ANONYMOUS: u64 = 0x20;
