//! The probe programs and maps. Program names are what userspace attaches by; map names are
//! shared through `leaktrace_common::names`.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_stack,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user,
        bpf_task_pt_regs,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use leaktrace_common::{
    BlockKey, COMM_LEN, Event, EventKind, INFLIGHT_SLOTS, MAP_ANONYMOUS, MAX_FRAMES, OOM_RAW, Pending, RawRecord,
    Record, RENAME_RAW, SAMPLE_DRAWS, SMALL_FRAMES, SyscallArgs, call, counter, nr,
};

/// Default sizes; userspace overrides every one of them at load time from its options.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);
/// Traced thread-group ids. Uprobes are already scoped to the targets by the kernel; this also
/// scopes the system-wide tracepoints, and guards uprobes in children that inherited the
/// breakpoints across fork.
#[map]
static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);
/// Allocator calls in flight, one slot per thread id modulo INFLIGHT_SLOTS. An array slot is an
/// address computed inline, where a hash map costs two locked helper calls per allocation
/// (~250 ns measured with the LRU map this replaces). A thread whose slot another thread holds
/// uses PENDING instead; a thread that dies inside malloc has its slot cleared at its exit.
#[map]
static INFLIGHT: Array<Pending> = Array::with_max_entries(INFLIGHT_SLOTS, 0);
/// Overflow of INFLIGHT (rare: two threads whose ids collide, inside an allocator at once). An
/// LRU map, so that an entry whose return never came cannot stay forever.
#[map]
static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(4096, 0);
/// Arguments of the traced threads' mmap/munmap/mremap calls in flight (preallocated, like
/// every LRU map: 4,096 entries are 0.4 MiB, more than threads in a syscall at once).
#[map]
static SYSCALLS: LruHashMap<u64, SyscallArgs> = LruHashMap::with_max_entries(4096, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
/// Byte sampling: bytes left until the next sample, per CPU (a Poisson process over the bytes
/// allocated does not care which CPU counts them).
#[map]
static COUNTDOWN: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);
/// Exponential draws with mean SAMPLE_RATE, written by userspace.
#[map]
static DRAWS: Array<u64> = Array::with_max_entries(SAMPLE_DRAWS, 0);
/// Sampled live blocks (only when sampling): a free of anything else returns after one lookup.
/// Allocated as used (BPF_F_NO_PREALLOC = 1).
#[map]
static SAMPLED: HashMap<BlockKey, u8> = HashMap::with_max_entries(1 << 20, 1);

#[unsafe(no_mangle)]
static SAMPLE_RATE: u64 = 0;
#[unsafe(no_mangle)]
static EMPTY: u32 = 0;
/// 0: every in-flight call goes to PENDING, as when thread ids collide (tests).
#[unsafe(no_mangle)]
static INFLIGHT_ON: u32 = 1;

/// This thread's slot in INFLIGHT, whoever holds it.
#[inline(always)]
fn inflight_slot(tid: u32) -> Option<*mut Pending> {
    if unsafe { core::ptr::read_volatile(&INFLIGHT_ON) } == 0 {
        return None;
    }
    INFLIGHT.get_ptr_mut(tid % INFLIGHT_SLOTS)
}

#[inline(always)]
fn sampling() -> bool {
    unsafe { core::ptr::read_volatile(&SAMPLE_RATE) != 0 }
}

#[inline(always)]
fn empty() -> bool {
    unsafe { core::ptr::read_volatile(&EMPTY) != 0 }
}

/// Whether an allocation of `size` bytes is sampled: each byte with probability 1/rate.
#[inline(always)]
fn take_sample(size: u64) -> bool {
    let Some(c) = COUNTDOWN.get_ptr_mut(0) else {
        return true;
    };
    let draw = || {
        // SAFETY: a helper without arguments.
        let i = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() } % SAMPLE_DRAWS;
        let draw = DRAWS.get(i).copied().unwrap_or(1) as i64;
        if draw > 0 { draw } else { 1 }
    };
    // SAFETY: a per-CPU slot, used by one program at a time on this CPU.
    leaktrace_common::countdown_step(unsafe { &mut *c }, size, draw)
}

#[inline(always)]
fn block_key(id: u64, addr: u64) -> BlockKey {
    BlockKey {
        pid: (id >> 32) as u32,
        _pad: 0,
        addr,
    }
}

/// Ring bytes pending above which a submit wakes userspace; below it userspace drains on its
/// timer, which saves a wakeup (~2.3 µs) per event.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 1 << 20;

#[inline(always)]
fn bump(slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        unsafe { *c += 1 };
    }
}

/// Non-zero: every process is traced (an `--all` audit), except leaktrace itself.
#[unsafe(no_mangle)]
static TRACE_ALL: u32 = 0;
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;

#[inline(always)]
fn traced(tgid: u32) -> bool {
    if unsafe { core::ptr::read_volatile(&TRACE_ALL) } != 0 {
        return tgid != unsafe { core::ptr::read_volatile(&SELF_TGID) };
    }
    unsafe { TARGETS.get(&tgid).is_some() }
}

/// `traced` for the allocator probes. Without TRACE_ALL they are attached to the targets only,
/// and the kernel runs them only in a target's address space (a uprobe perf event filters by
/// mm, so a forked child's inherited breakpoints do not run them): the TARGETS lookup, ~40 ns
/// per call, would only repeat that.
#[inline(always)]
fn uprobe_traced(tgid: u32) -> bool {
    if unsafe { core::ptr::read_volatile(&TRACE_ALL) } != 0 {
        return tgid != unsafe { core::ptr::read_volatile(&SELF_TGID) };
    }
    true
}

#[inline(always)]
fn wakeup_flags() -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    if pending >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// An event without a stack.
#[inline(always)]
fn emit(ev: &Event) {
    if EVENTS.output::<Event>(ev, wakeup_flags()).is_err() {
        bump(counter::LOST);
    }
}

/// Reserves a record of N frames and walks the user stack straight into it. Returns false, with
/// nothing submitted, when `retry_if_full` and the stack filled the record (it may be deeper).
#[inline(always)]
fn emit_with_stack_in<const N: usize, C: EbpfContext>(
    ctx: &C,
    ev: &Event,
    retry_if_full: bool,
) -> bool {
    let Some(mut entry) = EVENTS.reserve::<Record<N>>(0) else {
        bump(counter::LOST);
        return true;
    };
    let rec = entry.as_mut_ptr();
    let size = (N * 8) as u32;
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            (*rec).frames.as_mut_ptr().cast(),
            size,
            BPF_F_USER_STACK as u64,
        )
    };
    if retry_if_full && n >= size as i64 {
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        return false;
    }
    let mut header = *ev;
    if n < 0 {
        bump(counter::STACK_ERRORS);
    } else {
        header.frames = (n as u32) / 8;
    }
    unsafe { (*rec).event = header };
    entry.submit(wakeup_flags());
    true
}

#[inline(always)]
fn emit_with_stack<C: EbpfContext>(ctx: &C, ev: &Event) {
    if !emit_with_stack_in::<SMALL_FRAMES, C>(ctx, ev, true) {
        emit_with_stack_in::<MAX_FRAMES, C>(ctx, ev, false);
    }
}

/// A free's event: no time, which nothing reads (a free only ends its block), so that the
/// hottest probe skips the clock read.
#[inline(always)]
fn free_event(pid_tgid: u64, addr: u64) -> Event {
    Event {
        kind: EventKind::Free as u32,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        addr,
        ..Event::default()
    }
}

#[inline(always)]
fn event(kind: EventKind, pid_tgid: u64) -> Event {
    Event {
        kind: kind as u32,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ..Event::default()
    }
}

// ---- allocator entry / return / free ------------------------------------------------------

#[inline(always)]
fn alloc_enter(size: u64, ptr: u64, kind: u32) -> u32 {
    if empty() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    if !uprobe_traced((id >> 32) as u32) {
        return 0;
    }
    bump(counter::HITS);
    if let Some(p) = in_flight(id) {
        // An allocator called from inside another one: the outer call reports.
        unsafe { (*p).depth += 1 };
        return 0;
    }
    let call = if kind != call::INTERNAL && sampling() && !take_sample(size) {
        call::UNSAMPLED
    } else {
        kind
    };
    let tid = id as u32;
    let p = Pending {
        size,
        ptr,
        call,
        depth: 0,
        tid,
        _pad: 0,
    };
    if let Some(slot) = inflight_slot(tid) {
        // Not atomic: two colliding threads entering at the same instant on two CPUs can both
        // take the slot; the loser's return then finds nothing and is counted as missed.
        if unsafe { (*slot).tid } == 0 {
            unsafe { *slot = p };
            return 0;
        }
    }
    if PENDING.insert(&id, &p, 0).is_err() {
        bump(counter::PENDING_FULL);
    }
    0
}

/// This thread's in-flight allocator call: its array slot if it holds it, else the overflow.
#[inline(always)]
fn in_flight(id: u64) -> Option<*mut Pending> {
    let tid = id as u32;
    if let Some(slot) = inflight_slot(tid) {
        if unsafe { (*slot).tid } == tid {
            return Some(slot);
        }
    }
    PENDING.get_ptr_mut(&id)
}

/// Ends this thread's in-flight call found at `p` by [`in_flight`].
#[inline(always)]
fn end_flight(id: u64, p: *mut Pending) {
    let tid = id as u32;
    unsafe {
        if (*p).tid == tid {
            // Whether array slot or overflow entry, a zero tid frees an array slot; the
            // overflow entry is removed too (it is found by key, not by tid).
            (*p).tid = 0;
        }
    }
    if let Some(slot) = inflight_slot(tid) {
        if core::ptr::eq(slot, p) {
            return;
        }
    }
    let _ = PENDING.remove(&id);
}

#[inline(always)]
fn alloc_exit(ctx: &RetProbeContext) -> u32 {
    if empty() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = in_flight(id) else {
        if uprobe_traced((id >> 32) as u32) {
            bump(counter::MISSED_RETURNS);
        }
        return 0;
    };
    let p = unsafe {
        if (*slot).depth > 0 {
            (*slot).depth -= 1;
            return 0;
        }
        *slot
    };
    end_flight(id, slot);
    bump(counter::HITS);
    if p.call == call::INTERNAL {
        return 0;
    }
    let ret: u64 = ctx.ret();
    if p.call == call::UNSAMPLED {
        // An unsampled realloc may still release a sampled block.
        if p.ptr != 0 && (ret != 0 || p.size == 0) {
            release_sampled(id, p.ptr);
        }
        return 0;
    }
    let mut ev = event(EventKind::Alloc, id);
    ev.size = p.size;
    match p.call {
        call::REALLOC => {
            // Reported even on failure: userspace decides what happened to the old block.
            ev.kind = EventKind::Realloc as u32;
            ev.old_addr = p.ptr;
            ev.addr = ret;
        }
        call::POSIX_MEMALIGN => {
            if ret as u32 != 0 {
                return 0;
            }
            match unsafe { bpf_probe_read_user(p.ptr as *const u64) } {
                Ok(a) => ev.addr = a,
                Err(_) => return 0,
            }
        }
        _ => ev.addr = ret,
    }
    if ev.kind == EventKind::Alloc as u32 && (ev.addr == 0 || p.size == u64::MAX) {
        return 0;
    }
    if sampling() {
        if ev.kind == EventKind::Realloc as u32 && ev.old_addr != 0 && (ev.addr != 0 || p.size == 0) {
            let _ = SAMPLED.remove(&block_key(id, ev.old_addr));
        }
        if ev.addr != 0 && SAMPLED.insert(&block_key(id, ev.addr), &1, 0).is_err() {
            bump(counter::SAMPLED_FULL);
        }
    }
    if ev.addr != 0 {
        emit_with_stack(ctx, &ev);
    } else {
        // A failed realloc or realloc(p, 0): no new block, no stack needed.
        emit(&ev);
    }
    0
}

#[inline(always)]
fn free_enter(ptr: u64) -> u32 {
    if empty() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    if ptr == 0 || !uprobe_traced((id >> 32) as u32) {
        return 0;
    }
    bump(counter::HITS);
    if sampling() {
        release_sampled(id, ptr);
        return 0;
    }
    emit(&free_event(id, ptr));
    0
}

/// With sampling, only a sampled block's release is worth an event.
#[inline(always)]
fn release_sampled(id: u64, ptr: u64) {
    let key = block_key(id, ptr);
    if unsafe { SAMPLED.get(&key).is_none() } {
        return;
    }
    let _ = SAMPLED.remove(&key);
    emit(&free_event(id, ptr));
}

/// Argument `n` of the probed function. The probe may sit a few instructions into the function
/// (an instruction the kernel emulates instead of single-stepping), after the prologue copied an
/// argument to another register: the attach cookie then says where it is, 4 bits per argument,
/// 1 + its slot in `struct pt_regs` (0: its usual register). See leaktrace's `prologue` module.
#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    // SAFETY: a helper reading the attach cookie of this program's link.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let place = (cookie >> (4 * n)) & 0xf;
    if place == 0 {
        return ctx.arg::<u64>(n).unwrap_or(0);
    }
    // Slots 0..15 are r15..rdi, all within struct pt_regs; read as kernel memory, since the
    // verifier refuses a context load at a variable offset.
    let at = (ctx.regs as *const u64).wrapping_add((place - 1) as usize);
    unsafe { bpf_probe_read_kernel(at) }.unwrap_or(0)
}

#[inline(always)]
fn mul(a: u64, b: u64) -> u64 {
    // An overflowing `nmemb * size` makes calloc/reallocarray fail with NULL, and a NULL return
    // is never an allocation, so the wrapped product is never reported. (An explicit overflow
    // check lowers to a 128-bit multiply, which BPF lacks.)
    a.wrapping_mul(b)
}

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(arg(&ctx, 0), 0, call::ALLOC)
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(mul(arg(&ctx, 0), arg(&ctx, 1)), 0, call::ALLOC)
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(arg(&ctx, 1), arg(&ctx, 0), call::REALLOC)
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(mul(arg(&ctx, 1), arg(&ctx, 2)), arg(&ctx, 0), call::REALLOC)
}

#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(arg(&ctx, 2), arg(&ctx, 0), call::POSIX_MEMALIGN)
}

/// `memalign(align, size)` and `aligned_alloc(align, size)`.
#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(arg(&ctx, 1), 0, call::ALLOC)
}

/// `valloc(size)` and `pvalloc(size)`.
#[uprobe]
pub fn valloc_enter(ctx: ProbeContext) -> u32 {
    alloc_enter(arg(&ctx, 0), 0, call::ALLOC)
}

/// `pthread_create`: its thread-stack mmap and internal allocations are the runtime's.
#[uprobe]
pub fn internal_enter(_ctx: ProbeContext) -> u32 {
    alloc_enter(0, 0, call::INTERNAL)
}

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    alloc_exit(&ctx)
}

#[uprobe]
pub fn free_enter_probe(ctx: ProbeContext) -> u32 {
    free_enter(arg(&ctx, 0))
}

// ---- anonymous mappings ---------------------------------------------------------------------
//
// /sys/kernel/tracing/events/syscalls/sys_enter_mmap/format (Linux 6.18):
//   field:int __syscall_nr;     offset:8;  size:4;
//   field:unsigned long addr;   offset:16; size:8;
//   field:unsigned long len;    offset:24; size:8;
//   field:unsigned long prot;   offset:32; size:8;
//   field:unsigned long flags;  offset:40; size:8;
//   field:unsigned long fd;     offset:48; size:8;
//   field:unsigned long off;    offset:56; size:8;
// sys_enter_munmap: addr@16, len@24. sys_enter_mremap: addr@16, old_len@24, new_len@32.
// sys_exit_*: field:long ret; offset:16; size:8;
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const ARG3: usize = 40;
const RET: usize = 16;

/// Offset of `sp` in x86-64 `struct pt_regs` (r15..ss, 21 words; sp is the 20th).
const PT_REGS_SP: usize = 19 * 8;

#[inline(always)]
fn read(ctx: &TracePointContext, off: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(off) }.unwrap_or(0)
}

/// The word at the user stack pointer at syscall entry. libc's mmap wrapper calls the syscall
/// without moving the stack, so this is the return address into the code that called mmap, the
/// frame a frame-pointer walk from inside the wrapper skips. Userspace checks it before use.
#[inline(always)]
fn user_return_address() -> u64 {
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const u8;
        if regs.is_null() {
            return 0;
        }
        let Ok(sp) = bpf_probe_read_kernel(regs.add(PT_REGS_SP) as *const u64) else {
            return 0;
        };
        bpf_probe_read_user(sp as *const u64).unwrap_or(0)
    }
}

#[inline(always)]
fn syscall_enter(nr: u32, addr: u64, len: u64, new_len: u64, caller: u64) -> u32 {
    if empty() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let args = SyscallArgs {
        addr,
        len,
        new_len,
        caller,
        nr,
        _pad: 0,
    };
    let _ = SYSCALLS.insert(&id, &args, 0);
    0
}

/// The saved arguments of this thread's syscall `nr`, if it is traced and succeeded.
#[inline(always)]
fn syscall_exit(ctx: &TracePointContext, nr: u32) -> Option<(u64, SyscallArgs, i64)> {
    let id = bpf_get_current_pid_tgid();
    let args = unsafe { *SYSCALLS.get(&id)? };
    let _ = SYSCALLS.remove(&id);
    if args.nr != nr {
        return None;
    }
    let ret = read(ctx, RET) as i64;
    // -4095..-1 are errors; anything else is an address or 0.
    if (-4095..0).contains(&ret) {
        return None;
    }
    Some((id, args, ret))
}

/// Skip mappings made by an allocator for its own use (glibc's large blocks and arenas): the
/// block is already counted by the allocator's probes.
#[inline(always)]
fn interesting(id: u64) -> bool {
    traced((id >> 32) as u32) && in_flight(id).is_none()
}

#[tracepoint]
pub fn mmap_enter(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !interesting(id) || read(&ctx, ARG3) & MAP_ANONYMOUS == 0 {
        return 0;
    }
    syscall_enter(nr::MMAP, 0, read(&ctx, ARG1), 0, user_return_address())
}

#[tracepoint]
pub fn mmap_exit(ctx: TracePointContext) -> u32 {
    let Some((id, args, ret)) = syscall_exit(&ctx, nr::MMAP) else {
        return 0;
    };
    bump(counter::HITS);
    let mut ev = event(EventKind::Mmap, id);
    ev.addr = ret as u64;
    ev.size = args.len;
    ev.caller = args.caller;
    emit_with_stack(&ctx, &ev);
    0
}

#[tracepoint]
pub fn munmap_enter(ctx: TracePointContext) -> u32 {
    if !traced((bpf_get_current_pid_tgid() >> 32) as u32) {
        return 0;
    }
    syscall_enter(nr::MUNMAP, read(&ctx, ARG0), read(&ctx, ARG1), 0, 0)
}

#[tracepoint]
pub fn munmap_exit(ctx: TracePointContext) -> u32 {
    let Some((id, args, _)) = syscall_exit(&ctx, nr::MUNMAP) else {
        return 0;
    };
    bump(counter::HITS);
    let mut ev = event(EventKind::Munmap, id);
    ev.addr = args.addr;
    ev.size = args.len;
    emit(&ev);
    0
}

#[tracepoint]
pub fn mremap_enter(ctx: TracePointContext) -> u32 {
    if !interesting(bpf_get_current_pid_tgid()) {
        return 0;
    }
    syscall_enter(
        nr::MREMAP,
        read(&ctx, ARG0),
        read(&ctx, ARG1),
        read(&ctx, ARG2),
        0,
    )
}

#[tracepoint]
pub fn mremap_exit(ctx: TracePointContext) -> u32 {
    let Some((id, args, ret)) = syscall_exit(&ctx, nr::MREMAP) else {
        return 0;
    };
    bump(counter::HITS);
    let mut ev = event(EventKind::Mremap, id);
    ev.old_addr = args.addr;
    ev.old_size = args.len;
    ev.addr = ret as u64;
    ev.size = args.new_len;
    emit(&ev);
    0
}

// sched/sched_process_exit (Linux 6.18):
//   field:pid_t pid;        offset:24; size:4;
//   field:bool group_dead;  offset:32; size:1;
const GROUP_DEAD: usize = 32;

#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // A thread that died inside an allocator (killed, or exiting from a signal handler) must
    // not hold its in-flight slot: a later thread with a colliding id would see a nested call.
    let tid = id as u32;
    if let Some(slot) = inflight_slot(tid) {
        if unsafe { (*slot).tid } == tid {
            unsafe { (*slot).tid = 0 };
        }
    }
    let tgid = (id >> 32) as u32;
    if !traced(tgid) {
        return 0;
    }
    let group_dead = unsafe { ctx.read_at::<u8>(GROUP_DEAD) }.unwrap_or(0);
    if group_dead == 0 {
        return 0;
    }
    let _ = TARGETS.remove(&tgid);
    emit(&event(EventKind::Exit, id));
    let _ = ctx.as_ptr();
    0
}

// ---- OOM forensics ---------------------------------------------------------------------------

/// oom/mark_victim, system-wide: the raw record goes to userspace, which reads the fields at the
/// offsets its format file gives (pid, comm, total_vm, anon/file/shmem RSS, uid, pgtables,
/// oom_score_adj on 6.18).
#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    // An OOM kill is rare and urgent: wake userspace now, the victim's /proc entry is going.
    emit_raw::<OOM_RAW>(&ctx, EventKind::OomVictim, BPF_RB_FORCE_WAKEUP as u64)
}

/// task/task_rename, system-wide (attached only when watching for names): the raw record (the
/// renamed thread, its old and new comm), so that a process that takes a tracked name with
/// prctl(PR_SET_NAME) is tracked too. Userspace maps the thread to its process.
#[tracepoint]
pub fn task_rename(ctx: TracePointContext) -> u32 {
    // No wakeup: any process may rename itself in a loop, and must not make the watcher spin;
    // the watcher drains every 10 ms anyway.
    emit_raw::<RENAME_RAW>(&ctx, EventKind::Rename, BPF_RB_NO_WAKEUP as u64)
}

/// Copies N bytes of a tracepoint record into a ring record of `kind` (its `size` says how many
/// are valid: 0 when the copy failed), submitted with `flags`.
#[inline(always)]
fn emit_raw<const N: usize>(ctx: &TracePointContext, kind: EventKind, flags: u64) -> u32 {
    let Some(mut entry) = EVENTS.reserve::<RawRecord<N>>(0) else {
        bump(counter::LOST);
        return 0;
    };
    let rec = entry.as_mut_ptr();
    let mut ev = event(kind, bpf_get_current_pid_tgid());
    ev.size = N as u64;
    unsafe {
        let data = &mut (*rec).data;
        if bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, data).is_err() {
            *data = [0; N];
            ev.size = 0;
        }
        (*rec).event = ev;
    }
    entry.submit(flags);
    0
}

/// sched/sched_process_exec, system-wide (attached only when watching for names): the new comm,
/// so that userspace can start tracking processes started after it.
#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    let Some(mut entry) = EVENTS.reserve::<RawRecord<COMM_LEN>>(0) else {
        bump(counter::LOST);
        return 0;
    };
    let rec = entry.as_mut_ptr();
    let mut ev = event(EventKind::Exec, bpf_get_current_pid_tgid());
    ev.size = COMM_LEN as u64;
    unsafe {
        (*rec).data = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        (*rec).event = ev;
    }
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    0
}
