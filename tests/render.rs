//! Golden-file tests of the text, folded and JSON renderers on a fixed report (as inferno tests
//! its output): a change in what users see shows up as a diff of tests/golden/. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test --release -p leaktrace --test render` and review the diff.
use std::path::Path;

use leaktrace::{
    config::{Format, GroupBy},
    report::{Frame, ProcessReport, Report, StackReport, render},
};

fn frame(addr: &str, function: &str, file: &str, line: u32, module: &str) -> Frame {
    Frame {
        address: addr.into(),
        function: Some(function.into()),
        file: Some(file.into()),
        line: Some(line),
        module: Some(module.into()),
        inlined: false,
    }
}

fn fixed_report() -> Report {
    let stacks = vec![
        StackReport {
            kind: "heap",
            bytes: 76800,
            count: 25,
            oldest_age_ms: 7900,
            stack_id: Some(3),
            alloc_count: 25,
            alloc_bytes: 76800,
            growth: None,
            frames: vec![
                frame("0x401136", "leak_session", "/src/demo.c", 107, "/usr/bin/demo"),
                frame("0x4011a0", "worker", "/src/demo.c", 127, "/usr/bin/demo"),
                Frame {
                    address: "0x7f0000001000".into(),
                    module: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into()),
                    ..Frame::default()
                },
            ],
        },
        StackReport {
            kind: "mmap",
            bytes: 12288,
            count: 1,
            oldest_age_ms: 3000,
            stack_id: None,
            alloc_count: 1,
            alloc_bytes: 12288,
            growth: None,
            frames: vec![],
        },
    ];
    Report {
        report: "final",
        time: "2026-11-23T12:00:00.000Z".into(),
        elapsed_ms: 8000,
        min_age_ms: 3000,
        leaked_bytes: 89088,
        leaked_count: 26,
        processes: vec![ProcessReport {
            pid: 4242,
            comm: "demo".into(),
            exited: false,
            leaked_bytes: 89088,
            leaked_count: 26,
            outstanding_bytes: 163840,
            outstanding_count: 120,
            allocations: 240,
            frees: 120,
            stacks_total: 2,
            stacks,
            loader_bytes: 0,
            mappings: vec![],
        }],
        lost_events: 0,
        stack_errors: 1,
        missed_returns: 0,
        malformed_events: 0,
        symbolization_failures: 0,
        mapping_records_lost: 0,
        sampled_set_full: 0,
        estimate_unreliable: false,
        estimate_unreliable_reason: None,
        events: 0,
        group_by: GroupBy::Stack,
        sample_rate: None,
    }
}

fn golden(name: &str, format: Format) {
    golden_of(name, format, &fixed_report());
}

fn golden_of(name: &str, format: Format, report: &Report) {
    let mut out = Vec::new();
    render(format, report, &mut out).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &out).unwrap();
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&want),
        "{} differs (UPDATE_GOLDEN=1 to regenerate)",
        path.display()
    );
}

#[test]
fn text_matches_golden() {
    golden("report.txt", Format::Text);
}

#[test]
fn folded_matches_golden() {
    golden("report.folded", Format::Folded);
}

#[test]
fn json_matches_golden() {
    golden("report.json", Format::Json);
}

#[test]
fn svg_is_xml_with_every_site() {
    let mut out = Vec::new();
    render(Format::Svg, &fixed_report(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, opts).expect("well-formed SVG");
    let titles: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text())
        .collect();
    assert!(titles.iter().any(|t| t.starts_with("leak_session")), "{titles:?}");
    assert!(text.contains("leaktrace: 87.0 KiB in 26 blocks"), "title with totals");
}

/// The fixed report with a sampled set that overflowed 120 times at a 64 KiB rate.
fn sampled_full_report() -> Report {
    Report {
        sample_rate: Some(65536),
        sampled_set_full: 120,
        estimate_unreliable: true,
        estimate_unreliable_reason: leaktrace::report::unreliable_reason(120),
        ..fixed_report()
    }
}

#[test]
fn text_warns_of_a_full_sampled_set() {
    golden_of("report-sampled-full.txt", Format::Text, &sampled_full_report());
}

#[test]
fn text_hints_at_stacks_hidden_by_top() {
    let mut r = fixed_report();
    r.processes[0].stacks.clear();
    let mut out = Vec::new();
    render(Format::Text, &r, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("  ... 2 more stacks (raise --top to see them)\n"), "{text}");
}

#[test]
fn text_and_json_say_how_many_mapping_records_were_lost() {
    let mut out = Vec::new();
    render(Format::Text, &fixed_report(), &mut out).unwrap();
    assert!(!String::from_utf8(out).unwrap().contains("mapping records lost"));
    let mut r = fixed_report();
    r.mapping_records_lost = 7;
    let mut out = Vec::new();
    render(Format::Text, &r, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\nmapping records lost: 7 (a library unloaded"), "{text}");
    let mut out = Vec::new();
    render(Format::Json, &r, &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["mapping_records_lost"], 7);
}

/// Strings a traced process controls, as it could set them.
const COMM: &str = "ev\x1b[2Jil\n;x<&";
const FUNC: &str = "bad;name<&>\x07\x1b[2J";
const FILE: &str = "evil\x1b[2J\n<f>.c";
const MODULE: &str = "/tmp/ev\x1b]0;owned\x07/li b\\.so";

fn hostile_report() -> Report {
    let mut r = fixed_report();
    let p = &mut r.processes[0];
    p.comm = COMM.into();
    p.stacks[0].frames = vec![
        frame("0x401136", FUNC, FILE, 7, MODULE),
        Frame {
            address: "0x7f0000001000".into(),
            module: Some(MODULE.into()),
            ..Frame::default()
        },
    ];
    r
}

fn rendered(format: Format, r: &Report) -> String {
    let mut out = Vec::new();
    render(format, r, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Every line of `text` that holds a control character.
fn controls(text: &str) -> Vec<&str> {
    text.split('\n').filter(|l| l.chars().any(char::is_control)).collect()
}

#[test]
fn text_shows_hostile_names_as_visible_escapes() {
    let text = rendered(Format::Text, &hostile_report());
    assert_eq!(controls(&text), Vec::<&str>::new());
    assert!(text.contains("PID 4242 (ev\\e[2Jil\\n;x<&): "), "{text}");
    assert!(text.contains("      bad;name<&>\\x07\\e[2J  evil\\e[2J\\n<f>.c:7\n"), "{text}");
    assert!(text.contains("      ??  /tmp/ev\\e]0;owned\\x07/li b\\\\.so\n"), "{text}");
}

#[test]
fn folded_frames_hold_no_separator_or_newline() {
    let text = rendered(Format::Folded, &hostile_report());
    assert_eq!(controls(&text), Vec::<&str>::new());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "ev\\e[2Jil\\n\\x3bx<&_(4242);li_b\\\\.so+0x7f0000001000;bad\\x3bname<&>\\x07\\e[2J 76800",
            "ev\\e[2Jil\\n\\x3bx<&_(4242) 12288",
        ]
    );
}

#[test]
fn svg_with_hostile_names_is_xml_escaped_once() {
    let text = rendered(Format::Svg, &hostile_report());
    assert_eq!(controls(&text), Vec::<&str>::new());
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, opts).expect("well-formed SVG");
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(texts.iter().any(|t| t.starts_with("bad\\x3bname<&>\\x07\\e[2J (")), "{texts:#?}");
    assert!(texts.iter().any(|t| t.contains("ev\\e[2Jil\\n;x<& (4242)")), "{texts:#?}");
    assert!(!text.contains("&amp;lt;") && !text.contains("&amp;amp;"), "escaped twice");
}

#[test]
fn json_keeps_hostile_names_raw_and_escaped_by_serde() {
    let text = rendered(Format::Json, &hostile_report());
    assert_eq!(text.matches('\n').count(), 1, "one line");
    assert_eq!(controls(text.trim_end()), Vec::<&str>::new());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["processes"][0]["comm"], COMM);
    assert_eq!(v["processes"][0]["stacks"][0]["frames"][0]["function"], FUNC);
    assert_eq!(v["processes"][0]["stacks"][0]["frames"][0]["file"], FILE);
    assert_eq!(v["processes"][0]["stacks"][0]["frames"][1]["module"], MODULE);
}
