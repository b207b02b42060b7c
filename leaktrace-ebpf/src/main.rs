//! leaktrace's kernel side: allocator uprobes, anonymous-mapping syscall tracepoints and the
//! process-exit tracepoint. Like libbpf-tools' memleak it is three helpers (allocation enter,
//! allocation exit, free) plus one-line probe functions; unlike it, nothing is aggregated here:
//! every event goes to one ring buffer and userspace keeps the tables, so there is no in-kernel
//! cap that silently drops allocations. What this side owns: filtering to the traced processes,
//! pairing entry/return and enter/exit, taking the caller's stack id, and counting every loss.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
