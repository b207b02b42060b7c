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
        sampled_set_full: 0,
        events: 0,
        group_by: GroupBy::Stack,
        sample_rate: None,
    }
}

fn golden(name: &str, format: Format) {
    let mut out = Vec::new();
    render(format, &fixed_report(), &mut out).unwrap();
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
