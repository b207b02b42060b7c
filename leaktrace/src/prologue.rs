//! Choosing where inside a function's prologue to place a uprobe.
//!
//! On x86-64 a uprobe replaces the first byte of an instruction with `int3`. When it
//! fires, the kernel either *emulates* the displaced instruction (cheap, about 0.8 µs)
//! or *single-steps* a copy of it out of line (about 10 µs, two more traps). Only a few
//! instructions are emulated (`arch/x86/kernel/uprobes.c`, `branch_setup_xol_ops` and
//! `push_setup_xol_ops`): `push r64`, `jmp`/`call` rel, `jcc` and `nop`. Since every
//! `malloc` and `free` pays this cost, moving the probe a few bytes forward onto an
//! emulated instruction makes tracing an allocation-heavy program several times cheaper.
//!
//! This module owns only that decision, from the function's first bytes. It does not
//! find functions in files (see `allocator`) nor attach probes.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess,
    OpKind, Register,
};

/// How many bytes of a function's start are worth looking at. Prologues that set up
/// arguments or the stack frame within this window end the walk anyway.
pub const MAX_PROLOGUE_BYTES: usize = 64;

/// How many instructions may be skipped over before giving up.
pub const MAX_PROLOGUE_INSTRUCTIONS: usize = 16;

/// Where to attach a probe within a function, as chosen by [`choose_probe_offset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSite {
    /// Byte offset from the start of the function.
    pub offset: u64,
    /// Whether the kernel emulates the instruction at `offset` rather than
    /// single-stepping it. `false` means the walk found nothing better than `offset` 0.
    pub emulated: bool,
    /// The instruction at `offset`, e.g. `je +0xc8` or `push r12`, for log messages.
    pub instruction: String,
    /// Where each argument the probe reads is at `offset`, as the uprobe's attach cookie
    /// carries it to the eBPF program: 4 bits per argument `n` at bits `4n..4n+4`, 0 when the
    /// argument is still in its calling-convention register, else 1 + the slot of the register
    /// holding it in the kernel's `struct pt_regs` (x86-64: r15, r14, r13, r12, rbp, rbx, r11,
    /// r10, r9, r8, rax, rcx, rdx, rsi, rdi). 0 at offset 0.
    pub cookie: u64,
}

/// Picks the first instruction in the straight-line start of a function (`code`, the
/// function's first bytes, 64-bit mode) that the kernel emulates, such that the probe
/// still sees the arguments it reads (`arguments`: their indices, 0 for `rdi`), the same
/// stack pointer and frame pointer, and the same return address at `[rsp]` as a probe at
/// offset 0 would. That makes the result valid for entry probes and for return probes
/// alike. Everything before the chosen instruction is a straight line from the entry, so
/// every path through the function reaches it first.
///
/// An instruction may be skipped over only if it does not change control flow, does not
/// write `rsp`, `rbp` or stack memory through `rsp`, and leaves each wanted argument's
/// entry value in at least one register. Register-to-register 64-bit `mov`s are followed
/// (mimalloc's `malloc` starts `mov rsi, rdi; mov rdi, fs:[rax]`): the probe then reads
/// the argument from where it was copied to, as [`ProbeSite::cookie`] says. Any other write
/// to a register, or part of one, forgets what it held. At most
/// [`MAX_PROLOGUE_INSTRUCTIONS`] instructions within [`MAX_PROLOGUE_BYTES`] are examined.
///
/// When no emulated instruction is reachable this returns offset 0 with
/// `emulated: false`, which is always correct, only slower.
///
/// A branch elsewhere in the function that jumps into `1..=offset` would make the probe
/// fire twice in one call (or fire with other arguments). `code` may hold the whole function
/// (as much as is known of it): every direct branch in it is checked, and offset 0 is kept
/// when one lands there. Indirect jumps cannot be checked; compilers aim them at switch
/// cases and other functions, never back into a prologue.
pub fn choose_probe_offset(code: &[u8], arguments: &[usize]) -> ProbeSite {
    let site = walk_prologue(code, arguments);
    if site.offset > 0 && branched_into(code, site.offset) {
        let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
        return ProbeSite {
            offset: 0,
            emulated: false,
            instruction: describe(&decoder.decode()),
            cookie: 0,
        };
    }
    site
}

/// Whether a direct jump, conditional jump or call in `code` (decoded linearly from offset 0)
/// targets an offset in `1..=offset`.
fn branched_into(code: &[u8], offset: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        let direct = matches!(
            instr.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        );
        if direct && (1..=offset).contains(&instr.near_branch_target()) {
            return true;
        }
    }
    false
}

fn walk_prologue(code: &[u8], arguments: &[usize]) -> ProbeSite {
    let window = &code[..code.len().min(MAX_PROLOGUE_BYTES)];
    let mut decoder = Decoder::with_ip(64, window, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut first: Option<String> = None;
    let mut holders = Holders::at_entry(arguments);

    for _ in 0..MAX_PROLOGUE_INSTRUCTIONS {
        if !decoder.can_decode() {
            break;
        }
        let instr = decoder.decode();
        // A truncated or undefined encoding tells us nothing we could rely on.
        if instr.is_invalid() {
            break;
        }
        let start = instr.ip() as usize;
        let bytes = window.get(start..start + instr.len()).unwrap_or(&[]);
        if is_emulated(&instr, bytes) {
            return ProbeSite {
                offset: instr.ip(),
                emulated: true,
                instruction: describe(&instr),
                cookie: holders.cookie(),
            };
        }
        if first.is_none() {
            first = Some(describe(&instr));
        }
        if !may_skip(&instr, &mut info, &mut holders) {
            break;
        }
    }

    ProbeSite {
        offset: 0,
        emulated: false,
        instruction: first.unwrap_or_else(|| first_instruction_text(window)),
        cookie: 0,
    }
}

/// Registers a probe can read an argument from, in `struct pt_regs` order (x86-64,
/// `arch/x86/include/asm/ptrace.h`, unchanged since 2.6): the slot is the index here.
const PT_REGS: [Register; 15] = [
    Register::R15,
    Register::R14,
    Register::R13,
    Register::R12,
    Register::RBP,
    Register::RBX,
    Register::R11,
    Register::R10,
    Register::R9,
    Register::R8,
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RSI,
    Register::RDI,
];

/// Which registers hold each wanted argument's entry value, as bit sets over [`PT_REGS`].
struct Holders {
    /// (argument index, its calling-convention register, registers holding it).
    args: Vec<(usize, Register, u16)>,
}

impl Holders {
    fn at_entry(arguments: &[usize]) -> Holders {
        let args = arguments
            .iter()
            .filter_map(|&n| {
                let register = *ARGUMENT_REGISTERS.get(n)?;
                Some((n, register, slot_bit(register)?))
            })
            .collect();
        Holders { args }
    }

    /// `dst := src`, 64 bits: `dst` now holds whatever `src` held, and nothing else.
    fn copy(&mut self, dst: Register, src: Register) {
        let (Some(dst), src) = (slot_bit(dst), slot_bit(src).unwrap_or(0)) else {
            return;
        };
        for (_, _, held) in &mut self.args {
            *held = if *held & src != 0 { *held | dst } else { *held & !dst };
        }
    }

    fn clobber(&mut self, register: Register) {
        if let Some(bit) = slot_bit(register) {
            for (_, _, held) in &mut self.args {
                *held &= !bit;
            }
        }
    }

    fn all_held(&self) -> bool {
        self.args.iter().all(|(_, _, held)| *held != 0)
    }

    /// The calling-convention register when it still holds the argument, else the first
    /// register in `struct pt_regs` order that does.
    fn cookie(&self) -> u64 {
        self.args.iter().fold(0, |cookie, &(n, abi, held)| {
            if slot_bit(abi).is_some_and(|bit| held & bit != 0) || held == 0 {
                return cookie;
            }
            let slot = held.trailing_zeros() as u64;
            cookie | ((slot + 1) << (4 * n))
        })
    }
}

fn slot_bit(register: Register) -> Option<u16> {
    let full = register.full_register();
    PT_REGS.iter().position(|r| *r == full).map(|slot| 1 << slot)
}

/// Text for offset 0 when the walk never got a valid instruction there.
fn first_instruction_text(window: &[u8]) -> String {
    if window.is_empty() {
        "(no code)".to_string()
    } else {
        "(undecodable)".to_string()
    }
}

/// Mirrors what the kernel accepts for emulation, and is stricter where the kernel's
/// acceptance differs between versions (multi-byte `nopl` is emulated only by newer
/// kernels, so it is treated as single-stepped and skipped over instead).
fn is_emulated(instr: &Instruction, bytes: &[u8]) -> bool {
    match instr.code() {
        // push_setup_xol_ops: one-byte 50+r, or 41 50+r for r8..r15; nothing else.
        Code::Push_r64 => match bytes {
            [op] => (0x50..=0x57).contains(op),
            [0x41, op] => (0x50..=0x57).contains(op),
            _ => false,
        },
        // branch_setup_xol_ops rejects any 0x66 operand-size override on branches.
        Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Call_rel32_64 => !has_prefix_66(bytes),
        _ if instr.is_jcc_short_or_near() => !has_prefix_66(bytes),
        // Opcode 0x90 with any prefixes is emulated as a no-op. With REX.B, 0x90 is
        // really `xchg r8, rax`; iced decodes that as Xchg, so it is not accepted here.
        Code::Nopw | Code::Nopd | Code::Nopq | Code::Pause => bytes.last() == Some(&0x90),
        _ => false,
    }
}

fn has_prefix_66(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .take_while(|b| is_legacy_prefix(**b))
        .any(|b| *b == 0x66)
}

fn is_legacy_prefix(b: u8) -> bool {
    matches!(
        b,
        0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65
    )
}

/// Integer argument registers of the SysV x86-64 calling convention, as full registers.
const ARGUMENT_REGISTERS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

fn is_write(access: OpAccess) -> bool {
    matches!(
        access,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// Whether a probe placed after `instr` still observes the function's entry state: the
/// wanted arguments in some register (`holders`, updated for `instr`), the same stack and
/// frame pointers, the same return address at `[rsp]`.
fn may_skip(
    instr: &Instruction,
    factory: &mut InstructionInfoFactory,
    holders: &mut Holders,
) -> bool {
    if instr.flow_control() != FlowControl::Next {
        return false;
    }
    let info = factory.info(instr);
    // The frame pointer too: a stack taken at the probe walks it.
    let writes_frame = info.used_registers().iter().any(|used| {
        let full = used.register().full_register();
        is_write(used.access()) && (full == Register::RSP || full == Register::RBP)
    });
    // A store through rsp could overwrite the return address a uretprobe reads.
    let writes_stack = info
        .used_memory()
        .iter()
        .any(|mem| is_write(mem.access()) && mem.base().full_register() == Register::RSP);
    if writes_frame || writes_stack {
        return false;
    }
    let register_copy = matches!(instr.code(), Code::Mov_r64_rm64 | Code::Mov_rm64_r64)
        && instr.op0_kind() == OpKind::Register
        && instr.op1_kind() == OpKind::Register;
    if register_copy {
        holders.copy(instr.op0_register(), instr.op1_register());
    } else {
        for used in info.used_registers() {
            if is_write(used.access()) {
                holders.clobber(used.register());
            }
        }
    }
    holders.all_held()
}

/// A short Intel-like rendering (`push r12`, `je +0xc8`, `cmp byte [rip+0x140201], 0x0`).
/// The crate does not enable iced's formatters, and log lines need no more than this.
fn describe(instr: &Instruction) -> String {
    let mnemonic = format!("{:?}", instr.mnemonic()).to_lowercase();
    let operands: Vec<String> = (0..instr.op_count())
        .map(|i| describe_operand(instr, i))
        .collect();
    if operands.is_empty() {
        mnemonic
    } else {
        format!("{mnemonic} {}", operands.join(", "))
    }
}

fn describe_operand(instr: &Instruction, operand: u32) -> String {
    match instr.op_kind(operand) {
        OpKind::Register => register_name(instr.op_register(operand)),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
            // The decoder ran with ip 0, so the target is relative to the function start.
            let target = instr.near_branch_target() as i64;
            if target < 0 {
                format!("-{:#x}", target.unsigned_abs())
            } else {
                format!("+{target:#x}")
            }
        }
        OpKind::Memory => {
            let mut address = Vec::new();
            // A rip-relative operand is written `rip+disp` below.
            if instr.memory_base() != Register::None && !instr.is_ip_rel_memory_operand() {
                address.push(register_name(instr.memory_base()));
            }
            if instr.memory_index() != Register::None {
                address.push(format!(
                    "{}*{}",
                    register_name(instr.memory_index()),
                    instr.memory_index_scale()
                ));
            }
            let displacement = if instr.is_ip_rel_memory_operand() {
                // Relative to the next instruction, as the encoding has it.
                instr.ip_rel_memory_address().wrapping_sub(instr.next_ip())
            } else {
                instr.memory_displacement64()
            };
            if displacement != 0 || address.is_empty() {
                address.push(format!("{displacement:#x}"));
            }
            let base = address.join("+");
            let base = if instr.is_ip_rel_memory_operand() {
                format!("rip+{base}")
            } else {
                base
            };
            match instr.memory_size().size() {
                1 => format!("byte [{base}]"),
                2 => format!("word [{base}]"),
                4 => format!("dword [{base}]"),
                8 => format!("qword [{base}]"),
                _ => format!("[{base}]"),
            }
        }
        OpKind::Immediate8
        | OpKind::Immediate8_2nd
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => format!("{:#x}", instr.immediate(operand)),
        _ => "…".to_string(),
    }
}

fn register_name(register: Register) -> String {
    format!("{register:?}").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(offset: u64, emulated: bool, instruction: &str) -> ProbeSite {
        ProbeSite {
            offset,
            emulated,
            instruction: instruction.to_string(),
            cookie: 0,
        }
    }

    /// Every integer argument register protected, as for a function of six arguments.
    const ALL: &[usize] = &[0, 1, 2, 3, 4, 5];

    fn moved(site: ProbeSite, cookie: u64) -> ProbeSite {
        ProbeSite { cookie, ..site }
    }

    // mimalloc 2.0.9 (Debian bookworm's libmimalloc2.0), its exported malloc-family functions.
    // None starts with an emulated instruction; each copies an argument to another register
    // before the first branch.

    #[test]
    fn mimalloc_malloc_reads_its_size_from_rsi_at_the_ja() {
        // mov rax, [rip+..]; mov rsi, rdi; mov rdi, fs:[rax]; cmp rsi, 0x400; ja
        let code = [
            0x48, 0x8b, 0x05, 0x49, 0xb4, 0x00, 0x00, 0x48, 0x89, 0xfe, 0x64, 0x48, 0x8b, 0x38,
            0x48, 0x81, 0xfe, 0x00, 0x04, 0x00, 0x00, 0x77, 0x29,
        ];
        // rsi is pt_regs slot 13.
        assert_eq!(choose_probe_offset(&code, &[0]), moved(site(0x15, true, "ja +0x40"), 14));
        // A function that also read rsi could not skip the copy into it.
        assert_eq!(
            choose_probe_offset(&code, &[0, 1]),
            site(0, false, "mov rax, qword [rip+0xb449]")
        );
    }

    #[test]
    fn mimalloc_calloc_reads_nmemb_from_rax_at_the_je() {
        // mov rdx, [rip+..]; mov rax, rdi; mov rdi, fs:[rdx]; cmp rax, 1; je; mul rsi
        let code = [
            0x48, 0x8b, 0x15, 0xc9, 0xad, 0x00, 0x00, 0x48, 0x89, 0xf8, 0x64, 0x48, 0x8b, 0x3a,
            0x48, 0x83, 0xf8, 0x01, 0x74, 0x08, 0x48, 0xf7, 0xe6,
        ];
        // rax is slot 10; size stays in rsi.
        assert_eq!(choose_probe_offset(&code, &[0, 1]), moved(site(0x12, true, "je +0x1c"), 11));
    }

    #[test]
    fn mimalloc_realloc_follows_both_arguments_to_its_tail_jmp() {
        // mov rax, [rip+..]; mov rdx, rsi; mov rsi, rdi; mov rax, fs:[rax]; mov rdi, rax; jmp
        let code = [
            0x48, 0x8b, 0x05, 0x49, 0xa9, 0x00, 0x00, 0x48, 0x89, 0xf2, 0x48, 0x89, 0xfe, 0x64,
            0x48, 0x8b, 0x00, 0x48, 0x89, 0xc7, 0xe9, 0xf7, 0x4e, 0xff, 0xff,
        ];
        // ptr (argument 0) in rsi (slot 13), size (argument 1) in rdx (slot 12).
        let chosen = choose_probe_offset(&code, &[0, 1]);
        assert_eq!((chosen.offset, chosen.emulated, chosen.cookie), (0x14, true, 0xde), "{chosen:?}");
    }

    #[test]
    fn mimalloc_free_skips_a_copy_to_rcx_it_does_not_need() {
        // mov rcx, rdi; test rdi, rdi; je
        let code = [0x48, 0x89, 0xf9, 0x48, 0x85, 0xff, 0x74, 0x5d];
        assert_eq!(choose_probe_offset(&code, &[0]), site(6, true, "je +0x65"));
        // Protecting every argument register, the copy into rcx ends the walk.
        assert_eq!(choose_probe_offset(&code, ALL).offset, 0);
    }

    #[test]
    fn a_copy_overwritten_later_is_forgotten() {
        // mov rax, rdi; mov rdi, rbx (entry rdi now only in rax); xor eax, eax; nop
        let code = [0x48, 0x89, 0xf8, 0x48, 0x89, 0xdf, 0x31, 0xc0, 0x90];
        assert_eq!(choose_probe_offset(&code, &[0]).offset, 0);
        // Without the xor, the nop is reached with the argument in rax.
        let code = [0x48, 0x89, 0xf8, 0x48, 0x89, 0xdf, 0x90];
        assert_eq!(choose_probe_offset(&code, &[0]), moved(site(6, true, "nop"), 11));
        // A 32-bit move is no copy of the 64-bit value: mov eax, edi; mov rdi, rbx; nop
        let code = [0x89, 0xf8, 0x48, 0x89, 0xdf, 0x90];
        assert_eq!(choose_probe_offset(&code, &[0]).offset, 0);
    }

    #[test]
    fn a_branch_back_into_the_skipped_prologue_keeps_offset_0() {
        // mov rcx, rdi; test rdi, rdi; je +0xb; nop x3; then a jmp back into the prologue
        let mut code = vec![0x48, 0x89, 0xf9, 0x48, 0x85, 0xff, 0x74, 0x03, 0x90, 0x90, 0x90];
        assert_eq!(choose_probe_offset(&code, &[0]).offset, 6);
        code.extend([0xeb, 0xf6]); // jmp from 0xb to 3
        assert_eq!(choose_probe_offset(&code, &[0]), site(0, false, "mov rcx, rdi"));
        // A loop back to the probed instruction itself would fire it twice too.
        code.truncate(11);
        code.extend([0xeb, 0xf9]); // jmp from 0xb to 6
        assert_eq!(choose_probe_offset(&code, &[0]).offset, 0);
        // A jump to the entry is a new call: fine.
        code.truncate(11);
        code.extend([0xeb, 0xf3]); // jmp from 0xb to 0
        assert_eq!(choose_probe_offset(&code, &[0]).offset, 6);
    }

    #[test]
    fn writing_rbp_ends_the_walk() {
        // mov rbp, rdi; nop: a stack taken at the probe walks rbp.
        let code = [0x48, 0x89, 0xfd, 0x90];
        assert_eq!(choose_probe_offset(&code, &[]).offset, 0);
    }

    #[test]
    fn glibc_free_probes_the_je_after_test() {
        // glibc 2.36 free: test %rdi,%rdi; je ...; push %rbp
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55];
        assert_eq!(choose_probe_offset(&code, ALL), site(3, true, "je +0xc8"));
    }

    #[test]
    fn glibc_malloc_starts_with_an_emulated_push() {
        // push %r12; push %rbp; push %rbx
        let code = [0x41, 0x54, 0x55, 0x53];
        assert_eq!(choose_probe_offset(&code, ALL), site(0, true, "push r12"));
    }

    #[test]
    fn posix_memalign_skips_a_rip_relative_compare() {
        // cmpb $0x0,0x140201(%rip); push %r12
        let code = [0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54];
        assert_eq!(choose_probe_offset(&code, ALL), site(7, true, "push r12"));
    }

    #[test]
    fn reallocarray_writes_arguments_before_its_jo() {
        // mov %rsi,%rax; mul %rdx (writes rdx); mov %rax,%rsi; jo ...
        let code = [
            0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x48, 0x89, 0xc6, 0x70, 0x05,
        ];
        assert_eq!(choose_probe_offset(&code, ALL), site(0, false, "mov rax, rsi"));
    }

    #[test]
    fn writing_rsp_ends_the_walk() {
        // sub $0x58,%rsp; push %rbx
        let code = [0x48, 0x83, 0xec, 0x58, 0x53];
        assert_eq!(choose_probe_offset(&code, ALL), site(0, false, "sub rsp, 0x58"));
    }

    #[test]
    fn endbr64_is_skipped() {
        // endbr64; push %rbp
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x55];
        assert_eq!(choose_probe_offset(&code, ALL), site(4, true, "push rbp"));
    }

    #[test]
    fn writing_a_sub_register_of_an_argument_ends_the_walk() {
        // xor %ecx,%ecx; jmp ...
        let code = [0x31, 0xc9, 0xeb, 0x00];
        assert_eq!(choose_probe_offset(&code, ALL).offset, 0);
        // mov $0x1,%r8b; jmp ...
        let code = [0x41, 0xb0, 0x01, 0xeb, 0x00];
        assert_eq!(choose_probe_offset(&code, ALL).offset, 0);
    }

    #[test]
    fn storing_through_rsp_ends_the_walk() {
        // mov %rax,(%rsp); nop
        let code = [0x48, 0x89, 0x04, 0x24, 0x90];
        assert_eq!(
            choose_probe_offset(&code, ALL),
            site(0, false, "mov qword [rsp], rax")
        );
    }

    #[test]
    fn control_flow_ends_the_walk() {
        // ret is not emulated and must not be skipped.
        let code = [0xc3, 0x90];
        assert_eq!(choose_probe_offset(&code, ALL), site(0, false, "ret"));
        // call *%rax
        let code = [0xff, 0xd0, 0x90];
        assert_eq!(choose_probe_offset(&code, ALL), site(0, false, "call rax"));
    }

    #[test]
    fn operand_size_override_on_a_branch_is_not_emulated() {
        // The kernel rejects 66-prefixed branches (Intel and AMD disagree on them).
        // 66 e9 rel32 and 66 74 rel8 then push %rbp: the branch ends the walk.
        for code in [
            &[0x66, 0xe9, 0, 0, 0, 0, 0x55][..],
            &[0x66, 0x74, 0x00, 0x55],
        ] {
            let chosen = choose_probe_offset(code, ALL);
            assert_eq!(
                (chosen.offset, chosen.emulated),
                (0, false),
                "{code:x?}: {chosen:?}"
            );
            assert!(chosen.instruction.starts_with('j'), "{chosen:?}");
        }
        // Without the prefix both are emulated.
        assert_eq!(
            choose_probe_offset(&[0xe9, 0, 0, 0, 0], ALL),
            site(0, true, "jmp +0x5")
        );
        assert_eq!(choose_probe_offset(&[0x74, 0x00], ALL), site(0, true, "je +0x2"));
        // call rel32 too.
        assert_eq!(
            choose_probe_offset(&[0xe8, 0, 0, 0, 0], ALL),
            site(0, true, "call +0x5")
        );
    }

    #[test]
    fn push_with_rex_w_is_not_emulated() {
        // 48 53 is push %rbx with a redundant REX.W; the kernel only accepts 41.
        let code = [0x48, 0x53];
        assert!(!choose_probe_offset(&code, ALL).emulated);
    }

    #[test]
    fn nop_forms() {
        assert_eq!(choose_probe_offset(&[0x90], ALL), site(0, true, "nop"));
        assert_eq!(choose_probe_offset(&[0x66, 0x90], ALL), site(0, true, "nop"));
        // xchg %eax,%r8d: same opcode byte, but writes an argument register.
        assert!(!choose_probe_offset(&[0x41, 0x90], ALL).emulated);
        // nopl 0x0(%rax) is skipped over, not probed.
        assert_eq!(
            choose_probe_offset(&[0x0f, 0x1f, 0x40, 0x00, 0x55], ALL),
            site(4, true, "push rbp")
        );
    }

    #[test]
    fn bad_input_does_not_panic() {
        assert_eq!(choose_probe_offset(&[], ALL), site(0, false, "(no code)"));
        // A lone REX prefix is truncated.
        assert_eq!(
            choose_probe_offset(&[0x48], ALL),
            site(0, false, "(undecodable)")
        );
        // 0x06 (push es) is invalid in 64-bit mode.
        assert_eq!(
            choose_probe_offset(&[0x06, 0x90], ALL),
            site(0, false, "(undecodable)")
        );
        // An instruction cut off by the end of the bytes ends the walk.
        assert_eq!(
            choose_probe_offset(&[0x48, 0x85, 0xff, 0x0f, 0x84], ALL),
            site(0, false, "test rdi, rdi")
        );
        for len in 0..=200 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let chosen = choose_probe_offset(&junk, ALL);
            assert!(chosen.offset < MAX_PROLOGUE_BYTES as u64);
        }
    }

    #[test]
    fn stops_after_the_instruction_limit() {
        // 20 harmless `mov %rax,%rbx` then a push: too far to reach.
        let mut code: Vec<u8> = [0x48, 0x89, 0xc3].repeat(20);
        code.push(0x55);
        assert!(!choose_probe_offset(&code, ALL).emulated);
        let mut code: Vec<u8> = [0x48, 0x89, 0xc3].repeat(15);
        code.push(0x55);
        assert_eq!(choose_probe_offset(&code, ALL), site(45, true, "push rbp"));
    }
}
