//! Property tests over every decoder and parser of outside input (issue #11, "fuzz"): ring
//! records (`intake`), tracepoint format files (`tpformat`), durations, sizes, rates and
//! percentages (`units`, `config`), saved reports (`saved`), and /proc text (`procinfo`:
//! cmdline, status, cgroup, mountinfo). Two properties each: arbitrary bytes never panic, and
//! valid input round-trips. /proc/PID/maps is not covered here: `maps` tests its own parser on
//! arbitrary bytes.
//!
//! Property tests rather than cargo-fuzz: cargo-fuzz needs the nightly toolchain and a
//! sanitizer build of every dependency, while proptest runs inside `cargo test` on the stable
//! toolchain CI uses. CI runs 256 cases per property; `LEAKTRACE_FUZZ_CASES=N` raises it for a
//! long run.
use std::time::Duration;

use leaktrace_common::{EVENT_SIZE, Event, EventKind, MAX_FRAMES};
use proptest::prelude::*;

use crate::{config, intake, procinfo, report::Frame, saved, tpformat::Layout, units};

fn cases() -> u32 {
    std::env::var("LEAKTRACE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // No files of regressions in the tree: a failure prints its minimal input, which goes
        // into a unit test beside the parser.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn event_bytes(ev: &Event, frames: &[u64]) -> Vec<u8> {
    let p = (ev as *const Event).cast::<u8>();
    // SAFETY: Event is repr(C) plain data of EVENT_SIZE bytes with explicit padding fields.
    let mut v = unsafe { std::slice::from_raw_parts(p, EVENT_SIZE) }.to_vec();
    for f in frames {
        v.extend_from_slice(&f.to_ne_bytes());
    }
    v
}

/// Text made mostly of the characters parsers split on, so that the interesting paths are hit
/// more often than by uniform bytes.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \t\n:;0-9a-z/()\\[\\]_.%,=-]{0,200}",
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        "0x[0-9a-f]{1,12}",
        proptest::option::of(any::<String>()),
        proptest::option::of("[a-z/.]{0,20}"),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<String>()),
        any::<bool>(),
    )
        .prop_map(|(address, function, file, line, module, inlined)| Frame {
            address,
            function,
            file,
            line,
            module,
            inlined,
        })
}

fn saved_report() -> impl Strategy<Value = saved::SavedReport> {
    let stack = ("heap|mmap", any::<u64>(), any::<u64>(), proptest::collection::vec(frame(), 0..4))
        .prop_map(|(kind, bytes, count, frames)| saved::SavedStack {
            kind,
            bytes,
            count,
            frames,
        });
    let process = (
        any::<u32>(),
        any::<String>(),
        proptest::option::of(any::<String>()),
        proptest::option::of(proptest::collection::vec(any::<String>(), 0..3)),
        any::<u64>(),
        any::<u64>(),
        // Whole numbers and quarters: exact in JSON without serde_json's float_roundtrip.
        proptest::option::of((0u32..1_000_000).prop_map(f64::from)),
        proptest::collection::vec(stack, 0..4),
    )
        .prop_map(|(pid, comm, exe, cmdline, leaked, outstanding, rate, stacks)| {
            saved::SavedProcess {
                pid,
                comm,
                exe,
                cmdline,
                leaked_bytes: leaked,
                outstanding_bytes: outstanding,
                leak_rate_bytes_per_s: rate,
                stacks,
            }
        });
    (proptest::option::of((0u32..1_000_000).prop_map(|v| f64::from(v) / 4.0)), proptest::collection::vec(process, 0..4))
        .prop_map(|(duration_s, processes)| saved::SavedReport {
            duration_s,
            processes,
        })
}

proptest! {
    #![proptest_config(cfg())]

    // ---- ring records ----

    #[test]
    fn ring_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let mut frames = [0u64; MAX_FRAMES];
        if let Ok(d) = intake::decode(&bytes, &mut frames) {
            prop_assert!(d.frames <= MAX_FRAMES);
            prop_assert!(d.raw.len() <= bytes.len());
        }
    }

    #[test]
    fn ring_records_round_trip(
        kind in 1u32..=7,
        pid: u32, tid: u32, ts_ns: u64, addr: u64, size: u64, old_addr: u64, old_size: u64,
        caller: u64,
        stack in proptest::collection::vec(any::<u64>(), 0..=MAX_FRAMES),
        pad in 0usize..64,
    ) {
        let ev = Event {
            kind, pid, tid, frames: stack.len() as u32, ts_ns, addr, size, old_addr, old_size,
            caller,
        };
        let mut rec = event_bytes(&ev, &stack);
        rec.extend(std::iter::repeat_n(0, pad));
        let mut frames = [0u64; MAX_FRAMES];
        let d = intake::decode(&rec, &mut frames).unwrap();
        prop_assert_eq!(d.event, ev);
        prop_assert_eq!(&frames[..d.frames], &stack[..]);
        // Every prefix shorter than the frames it claims is refused, never read past.
        let short = EVENT_SIZE + stack.len() * 8;
        if short > EVENT_SIZE {
            prop_assert!(intake::decode(&rec[..short - 1], &mut frames).is_err());
        }
    }

    #[test]
    fn raw_records_round_trip(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let ev = Event { kind: EventKind::Exec as u32, size: data.len() as u64, ..Event::default() };
        let mut rec = event_bytes(&ev, &[]);
        rec.extend_from_slice(&data);
        let mut frames = [0u64; MAX_FRAMES];
        prop_assert_eq!(intake::decode(&rec, &mut frames).unwrap().raw, &data[..]);
    }

    // ---- tracepoint format files ----

    #[test]
    fn format_files_never_panic(text in texty(), raw in proptest::collection::vec(any::<u8>(), 0..128)) {
        let l = Layout::parse(&text);
        for name in text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').take(20) {
            let _ = l.int(&raw, name);
            let _ = l.string(&raw, name);
        }
    }

    #[test]
    fn huge_offsets_are_absent_not_overflows(offset in (usize::MAX - 16)..usize::MAX, size in 1usize..9) {
        let text = format!("\tfield:int x;\toffset:{offset};\tsize:{size};\tsigned:1;\n\
                            \tfield:__data_loc char[] s;\toffset:{offset};\tsize:4;\tsigned:0;\n");
        let l = Layout::parse(&text);
        prop_assert_eq!(l.int(&[0u8; 64], "x"), None);
        prop_assert_eq!(l.string(&[0u8; 64], "s"), None);
    }

    #[test]
    fn format_files_round_trip(fields in proptest::collection::btree_map(
        "[a-z_][a-z0-9_]{0,12}",
        (0usize..96, prop_oneof![Just(1usize), Just(2), Just(4), Just(8)], any::<bool>(), any::<u64>()),
        1..8,
    )) {
        let mut text = String::from("name: x\nID: 1\nformat:\n");
        let mut raw = vec![0u8; 128];
        for (name, (offset, size, signed, value)) in &fields {
            text.push_str(&format!(
                "\tfield:{} {name};\toffset:{offset};\tsize:{size};\tsigned:{};\n",
                if *signed { "long" } else { "unsigned long" },
                u8::from(*signed)
            ));
            raw[*offset..offset + size].copy_from_slice(&value.to_le_bytes()[..*size]);
        }
        let l = Layout::parse(&text);
        for (name, (offset, size, signed, _)) in &fields {
            let f = l.field(name).unwrap();
            prop_assert_eq!((f.offset, f.size, f.signed), (*offset, *size, *signed));
            // Fields may overlap: the expectation is what the record holds at the offset.
            let mut v = [0u8; 8];
            v[..*size].copy_from_slice(&raw[*offset..offset + size]);
            let u = u64::from_le_bytes(v);
            let shift = 64 - 8 * *size as u32;
            let want = if *signed { ((u << shift) as i64) >> shift } else { u as i64 };
            prop_assert_eq!(l.int(&raw, name), Some(want));
        }
    }

    // ---- units ----

    #[test]
    fn unit_parsers_never_panic(s in texty()) {
        let _ = units::parse_size(&s);
        let _ = units::parse_rate(&s);
        let _ = units::parse_percent(&s);
        let _ = config::parse_duration(&s);
    }

    #[test]
    fn sizes_round_trip(n: u64, shift in prop_oneof![Just(0u32), Just(10), Just(20), Just(30), Just(40)],
                        unit_i in 0usize..3, lower: bool, space: bool) {
        prop_assert_eq!(units::parse_size(&n.to_string()), Ok(n));
        let names: &[&str] = match shift {
            0 => &["", "B", "b"],
            10 => &["K", "KB", "KiB"],
            20 => &["M", "MB", "MiB"],
            30 => &["G", "GB", "GiB"],
            _ => &["T", "TB", "TiB"],
        };
        let mut unit = names[unit_i].to_string();
        if lower { unit = unit.to_lowercase(); }
        let text = format!("{n}{}{unit}", if space { " " } else { "" });
        prop_assert_eq!(units::parse_size(&text).ok(), n.checked_mul(1u64 << shift));
        let _ = units::human_bytes(n);
    }

    #[test]
    fn durations_round_trip(ms in 0u64..1_000_000_000_000) {
        let d = config::parse_duration(&format!("{ms}ms")).unwrap();
        let want = Duration::from_millis(ms);
        let diff = d.abs_diff(want);
        prop_assert!(diff < Duration::from_micros(1), "{ms}ms -> {d:?}");
        let s = config::parse_duration(&format!("{}s", ms / 1000)).unwrap();
        prop_assert_eq!(s, Duration::from_secs(ms / 1000));
    }

    #[test]
    fn negative_values_say_so(s in "-[0-9]{1,5}(ms|s|m|h|KiB|MiB)?") {
        prop_assert!(config::parse_duration(&s).unwrap_err().contains("must not be negative"));
        prop_assert!(units::parse_size(&s).unwrap_err().contains("must not be negative"));
    }

    // ---- saved reports ----

    #[test]
    fn saved_reports_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), limit in 0u64..700) {
        match saved::read(&bytes[..], "f", limit) {
            Ok(_) => prop_assert!(bytes.len() as u64 <= limit),
            Err(e) => prop_assert!(e.to_string().starts_with("f: ")),
        }
    }

    #[test]
    fn saved_json_never_panics(text in "[ \n{}\\[\\],:\"0-9a-z_.-]{0,300}") {
        let _ = saved::read(text.as_bytes(), "f", 1 << 20);
    }

    #[test]
    fn saved_reports_round_trip(reports in proptest::collection::vec(saved_report(), 1..4), pretty: bool) {
        let mut text = String::new();
        for r in &reports {
            if pretty {
                text.push_str(&serde_json::to_string_pretty(r).unwrap());
            } else {
                text.push_str(&serde_json::to_string(r).unwrap());
            }
            text.push('\n');
        }
        let got = saved::read(text.as_bytes(), "f", text.len() as u64).unwrap();
        prop_assert_eq!(&got, reports.last().unwrap());
        // One byte less than the file is refused as too large.
        let e = saved::read(text.as_bytes(), "f", text.len() as u64 - 1).unwrap_err();
        let too_large = matches!(e, saved::SavedError::TooLarge { .. });
        prop_assert!(too_large, "{}", e);
    }

    // ---- /proc text ----

    #[test]
    fn proc_parsers_never_panic(text in texty(), raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = procinfo::parse_cmdline(&raw);
        let _ = procinfo::parse_cmdline(text.as_bytes());
        let _ = procinfo::key_values(&text, None);
        let _ = procinfo::key_values(&text, Some(&procinfo::STATUS_FIELDS));
        let _ = procinfo::parse_cgroup(&text);
        let _ = procinfo::parse_mountinfo(&text);
    }

    #[test]
    fn cmdline_round_trips(args in proptest::collection::vec("[^\u{0}]{0,12}", 1..6)) {
        prop_assume!(!(args.len() == 1 && args[0].is_empty()));
        let mut raw = args.join("\0").into_bytes();
        raw.push(0);
        prop_assert_eq!(procinfo::parse_cmdline(&raw), Some(args));
    }

    #[test]
    fn status_and_cgroup_round_trip(
        values in proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,10}", "[0-9]{1,9} kB", 0..8),
        path in "(/[a-z0-9._-]{1,10}){0,4}",
    ) {
        let text: String = values.iter().map(|(k, v)| format!("{k}:\t{v}\n")).collect();
        let got = procinfo::key_values(&text, None);
        prop_assert_eq!(got.into_iter().collect::<Vec<_>>(), values.into_iter().collect::<Vec<_>>());
        let path = if path.is_empty() { "/".to_string() } else { path };
        let cg = procinfo::parse_cgroup(&format!("0::{path}\n"));
        prop_assert_eq!(cg.unified.as_deref(), Some(path.as_str()));
    }
}
