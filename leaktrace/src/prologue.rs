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
}

/// Picks the first instruction in the straight-line start of a function (`code`, the
/// function's first bytes, 64-bit mode) that the kernel emulates, such that the probe
/// still sees the same arguments and the same return address at `[rsp]` as a probe
/// at offset 0 would. That makes the result valid for entry probes and for return
/// probes alike.
///
/// An instruction may be skipped over only if it does not change control flow, does
/// not write `rsp` or stack memory, and does not write an integer argument register
/// (`rdi`, `rsi`, `rdx`, `rcx`, `r8`, `r9`, or any part of them). At most
/// [`MAX_PROLOGUE_INSTRUCTIONS`] instructions within [`MAX_PROLOGUE_BYTES`] are examined.
///
/// When no emulated instruction is reachable this returns offset 0 with
/// `emulated: false`, which is always correct, only slower.
///
/// One thing this cannot see from the prologue alone: a branch elsewhere that jumps to
/// an address between offset 0 and the chosen one would make the probe fire twice in
/// one call. Compiled prologues do not branch back into themselves, so it is not
/// checked.
pub fn choose_probe_offset(code: &[u8]) -> ProbeSite {
    let window = &code[..code.len().min(MAX_PROLOGUE_BYTES)];
    let mut decoder = Decoder::with_ip(64, window, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut first: Option<String> = None;

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
            };
        }
        if first.is_none() {
            first = Some(describe(&instr));
        }
        if !may_skip(&instr, &mut info) {
            break;
        }
    }

    ProbeSite {
        offset: 0,
        emulated: false,
        instruction: first.unwrap_or_else(|| first_instruction_text(window)),
    }
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

/// Whether a probe placed after `instr` still observes the function's entry state:
/// same arguments, same stack pointer, same return address at `[rsp]`.
fn may_skip(instr: &Instruction, factory: &mut InstructionInfoFactory) -> bool {
    if instr.flow_control() != FlowControl::Next {
        return false;
    }
    let info = factory.info(instr);
    let writes_protected_register = info.used_registers().iter().any(|used| {
        let full = used.register().full_register();
        is_write(used.access()) && (full == Register::RSP || ARGUMENT_REGISTERS.contains(&full))
    });
    // A store through rsp could overwrite the return address a uretprobe reads.
    let writes_stack = info
        .used_memory()
        .iter()
        .any(|mem| is_write(mem.access()) && mem.base().full_register() == Register::RSP);
    !writes_protected_register && !writes_stack
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
            if instr.memory_base() != Register::None {
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
        }
    }

    #[test]
    fn glibc_free_probes_the_je_after_test() {
        // glibc 2.36 free: test %rdi,%rdi; je ...; push %rbp
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55];
        assert_eq!(choose_probe_offset(&code), site(3, true, "je +0xc8"));
    }

    #[test]
    fn glibc_malloc_starts_with_an_emulated_push() {
        // push %r12; push %rbp; push %rbx
        let code = [0x41, 0x54, 0x55, 0x53];
        assert_eq!(choose_probe_offset(&code), site(0, true, "push r12"));
    }

    #[test]
    fn posix_memalign_skips_a_rip_relative_compare() {
        // cmpb $0x0,0x140201(%rip); push %r12
        let code = [0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54];
        assert_eq!(choose_probe_offset(&code), site(7, true, "push r12"));
    }

    #[test]
    fn reallocarray_writes_arguments_before_its_jo() {
        // mov %rsi,%rax; mul %rdx (writes rdx); mov %rax,%rsi; jo ...
        let code = [
            0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x48, 0x89, 0xc6, 0x70, 0x05,
        ];
        assert_eq!(choose_probe_offset(&code), site(0, false, "mov rax, rsi"));
    }

    #[test]
    fn writing_rsp_ends_the_walk() {
        // sub $0x58,%rsp; push %rbx
        let code = [0x48, 0x83, 0xec, 0x58, 0x53];
        assert_eq!(choose_probe_offset(&code), site(0, false, "sub rsp, 0x58"));
    }

    #[test]
    fn endbr64_is_skipped() {
        // endbr64; push %rbp
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x55];
        assert_eq!(choose_probe_offset(&code), site(4, true, "push rbp"));
    }

    #[test]
    fn writing_a_sub_register_of_an_argument_ends_the_walk() {
        // xor %ecx,%ecx; jmp ...
        let code = [0x31, 0xc9, 0xeb, 0x00];
        assert_eq!(choose_probe_offset(&code).offset, 0);
        // mov $0x1,%r8b; jmp ...
        let code = [0x41, 0xb0, 0x01, 0xeb, 0x00];
        assert_eq!(choose_probe_offset(&code).offset, 0);
    }

    #[test]
    fn storing_through_rsp_ends_the_walk() {
        // mov %rax,(%rsp); nop
        let code = [0x48, 0x89, 0x04, 0x24, 0x90];
        assert_eq!(
            choose_probe_offset(&code),
            site(0, false, "mov qword [rsp], rax")
        );
    }

    #[test]
    fn control_flow_ends_the_walk() {
        // ret is not emulated and must not be skipped.
        let code = [0xc3, 0x90];
        assert_eq!(choose_probe_offset(&code), site(0, false, "ret"));
        // call *%rax
        let code = [0xff, 0xd0, 0x90];
        assert_eq!(choose_probe_offset(&code), site(0, false, "call rax"));
    }

    #[test]
    fn operand_size_override_on_a_branch_is_not_emulated() {
        // The kernel rejects 66-prefixed branches (Intel and AMD disagree on them).
        // 66 e9 rel32 and 66 74 rel8 then push %rbp: the branch ends the walk.
        for code in [
            &[0x66, 0xe9, 0, 0, 0, 0, 0x55][..],
            &[0x66, 0x74, 0x00, 0x55],
        ] {
            let chosen = choose_probe_offset(code);
            assert_eq!(
                (chosen.offset, chosen.emulated),
                (0, false),
                "{code:x?}: {chosen:?}"
            );
            assert!(chosen.instruction.starts_with('j'), "{chosen:?}");
        }
        // Without the prefix both are emulated.
        assert_eq!(
            choose_probe_offset(&[0xe9, 0, 0, 0, 0]),
            site(0, true, "jmp +0x5")
        );
        assert_eq!(choose_probe_offset(&[0x74, 0x00]), site(0, true, "je +0x2"));
        // call rel32 too.
        assert_eq!(
            choose_probe_offset(&[0xe8, 0, 0, 0, 0]),
            site(0, true, "call +0x5")
        );
    }

    #[test]
    fn push_with_rex_w_is_not_emulated() {
        // 48 53 is push %rbx with a redundant REX.W; the kernel only accepts 41.
        let code = [0x48, 0x53];
        assert!(!choose_probe_offset(&code).emulated);
    }

    #[test]
    fn nop_forms() {
        assert_eq!(choose_probe_offset(&[0x90]), site(0, true, "nop"));
        assert_eq!(choose_probe_offset(&[0x66, 0x90]), site(0, true, "nop"));
        // xchg %eax,%r8d: same opcode byte, but writes an argument register.
        assert!(!choose_probe_offset(&[0x41, 0x90]).emulated);
        // nopl 0x0(%rax) is skipped over, not probed.
        assert_eq!(
            choose_probe_offset(&[0x0f, 0x1f, 0x40, 0x00, 0x55]),
            site(4, true, "push rbp")
        );
    }

    #[test]
    fn bad_input_does_not_panic() {
        assert_eq!(choose_probe_offset(&[]), site(0, false, "(no code)"));
        // A lone REX prefix is truncated.
        assert_eq!(
            choose_probe_offset(&[0x48]),
            site(0, false, "(undecodable)")
        );
        // 0x06 (push es) is invalid in 64-bit mode.
        assert_eq!(
            choose_probe_offset(&[0x06, 0x90]),
            site(0, false, "(undecodable)")
        );
        // An instruction cut off by the end of the bytes ends the walk.
        assert_eq!(
            choose_probe_offset(&[0x48, 0x85, 0xff, 0x0f, 0x84]),
            site(0, false, "test rdi, rdi")
        );
        for len in 0..=200 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let chosen = choose_probe_offset(&junk);
            assert!(chosen.offset < MAX_PROLOGUE_BYTES as u64);
        }
    }

    #[test]
    fn stops_after_the_instruction_limit() {
        // 20 harmless `mov %rax,%rbx` then a push: too far to reach.
        let mut code: Vec<u8> = [0x48, 0x89, 0xc3].repeat(20);
        code.push(0x55);
        assert!(!choose_probe_offset(&code).emulated);
        let mut code: Vec<u8> = [0x48, 0x89, 0xc3].repeat(15);
        code.push(0x55);
        assert_eq!(choose_probe_offset(&code), site(45, true, "push rbp"));
    }
}
