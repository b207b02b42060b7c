//! Hostile names on the real kernel: tests/fixtures/hostile.c renames itself to a comm holding
//! ESC, a newline, `;` and `<&`, and leaks from a symbol and a source file whose names hold
//! `;<&>`, BEL, ESC and a newline. Traced in every format, no raw control byte reaches a line of
//! text or stderr, folded lines keep one frame list and one count, the SVG is well-formed XML,
//! JSON keeps the raw names, pprof's `top` stays one line per function and the metrics pass
//! `promtool check metrics`. Also the reports' honesty (issue #11 items 10 and 25): a full
//! sampled set is a warning and an unreliable estimate, and `--top 0` says how many stacks it
//! hides.
mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Lines, TIMEOUT, leaktrace, wait_with_timeout};

/// The fixture's comm as the kernel keeps it, and as text shows it.
const COMM: &str = "ev\x1b[2Jil\n;x<&";
const COMM_SHOWN: &str = "ev\\e[2Jil\\n;x<&";
/// The leaking function's symbol (its DWARF linkage name keeps the asm label's quotes), and as
/// text and folded output show it.
const FUNC: &str = "\"bad;name<&>\x07\x1b[2J\"";
const FUNC_SHOWN: &str = "\"bad;name<&>\\x07\\e[2J\"";
const FUNC_FOLDED: &str = "\"bad\\x3bname<&>\\x07\\e[2J\"";
/// The end of the leaking function's source file (DWARF prefixes the build directory), and as
/// text shows it.
const FILE: &str = "evil\x1b[2J\n<f>.c";
const FILE_SHOWN: &str = "evil\\e[2J\\n<f>.c";

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// Lines of `bytes` (split at `\n`) holding a control byte, or a C1 control / line separator.
fn lines_with_controls(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split('\n')
        .filter(|l| l.chars().any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')))
        .map(|l| format!("{l:?}"))
        .collect()
}

fn assert_no_controls(what: &str, bytes: &[u8]) {
    let bad = lines_with_controls(bytes);
    assert!(bad.is_empty(), "{what}: raw control characters in {bad:#?}");
}

/// Polls `path` until it holds `needle`, with a deadline.
fn wait_in_file(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{} never held {needle:?}: {text:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The hostile fixture, renamed and waiting for its go.
struct Hostile {
    child: Child,
    out: Lines,
    pid: u32,
}

fn start_hostile() -> Hostile {
    let exe = common::fixture("hostile", &[]);
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Lines::new(child.stdout.take().unwrap());
    let pid = out.wait_for("ready pid=").trim_start_matches("ready pid=").parse().unwrap();
    let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm, format!("{COMM}\n").as_bytes(), "the fixture renamed itself");
    Hostile { child, out, pid }
}

/// What one traced run of the hostile fixture wrote.
struct Run {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Traces the hostile fixture with `args` (after `-p PID`) while it leaks; `during` runs once it
/// has leaked and leaktrace is still attached. Ends leaktrace with SIGINT.
fn trace_hostile(name: &str, args: &[&str], during: impl FnOnce(u32)) -> Run {
    let mut h = start_hostile();
    let (out, err) = (tmp(&format!("{name}.stdout")), tmp(&format!("{name}.stderr")));
    let mut lt = leaktrace()
        .args(["trace", "-p", &h.pid.to_string(), "--min-age", "0s"])
        .args(args)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    wait_in_file(&err, &format!("tracing pid {}", h.pid));
    let mut stdin = h.child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    h.out.wait_for("done");
    during(h.pid);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGINT) };
    let st = wait_with_timeout(&mut lt);
    drop(stdin);
    wait_with_timeout(&mut h.child);
    let run = Run {
        pid: h.pid,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    };
    assert!(st.success(), "leaktrace exited with {st}; stderr: {}", String::from_utf8_lossy(&run.stderr));
    assert_no_controls("stderr", &run.stderr);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!("tracing pid {} ({COMM_SHOWN})", run.pid)),
        "stderr names the process escaped: {stderr}"
    );
    run
}

#[test]
fn text_report_shows_hostile_names_escaped() {
    require_kernel!();
    let run = trace_hostile("hostile-text", &[], |_| {});
    assert_no_controls("text report", &run.stdout);
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(text.contains(&format!("PID {} ({COMM_SHOWN})", run.pid)), "{text}");
    let frame = text
        .lines()
        .find(|l| l.trim_start().starts_with(FUNC_SHOWN))
        .unwrap_or_else(|| panic!("no frame of the hostile function: {text}"));
    assert!(frame.contains(&format!("{FILE_SHOWN}:")), "{frame}");
}

#[test]
fn json_keeps_the_raw_names_correctly_escaped() {
    require_kernel!();
    let path = tmp("hostile.json");
    let run = trace_hostile("hostile-json", &["--format", "json", "-o", path.to_str().unwrap()], |_| {});
    let bytes = std::fs::read(&path).unwrap();
    assert_no_controls("JSON", &bytes);
    let r = common::last_report(&path);
    let p = &r["processes"][0];
    assert_eq!(p["pid"], run.pid);
    assert_eq!(p["comm"], COMM, "JSON keeps the raw comm");
    let frames = p["stacks"][0]["frames"].as_array().unwrap();
    assert!(
        frames.iter().any(|f| {
            f["function"] == FUNC && f["file"].as_str().is_some_and(|p| p.ends_with(FILE))
        }),
        "JSON keeps the raw symbol and file names: {frames:#?}"
    );
}

#[test]
fn folded_lines_keep_one_frame_list_and_one_count() {
    require_kernel!();
    let run = trace_hostile("hostile-folded", &["--format", "folded"], |_| {});
    let text = String::from_utf8(run.stdout.clone()).unwrap();
    assert_no_controls("folded", &run.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let (frames, count) = l.rsplit_once(' ').unwrap_or_else(|| panic!("no count: {l:?}"));
        assert!(count.parse::<u64>().is_ok(), "count of {l:?}");
        assert!(!frames.contains(' '), "one space per line, before the count: {l:?}");
        assert!(frames.split(';').all(|f| !f.is_empty()), "{l:?}");
    }
    let ours: Vec<&&str> = lines.iter().filter(|l| l.contains(FUNC_FOLDED)).collect();
    assert_eq!(ours.len(), 1, "{lines:#?}");
    let first = ours[0].split(';').next().unwrap();
    assert_eq!(first, format!("ev\\e[2Jil\\n\\x3bx<&_({})", run.pid));
}

#[test]
fn svg_is_well_formed_xml_with_the_names_visible() {
    require_kernel!();
    let path = tmp("hostile.svg");
    trace_hostile("hostile-svg", &["--format", "svg", "-o", path.to_str().unwrap()], |_| {});
    let text = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
    assert_no_controls("SVG", text.as_bytes());
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, opts)
        .unwrap_or_else(|e| panic!("the SVG is not well-formed XML: {e}"));
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(texts.iter().any(|t| t.starts_with(FUNC_FOLDED)), "{texts:#?}");
    assert!(texts.iter().any(|t| t.contains(COMM_SHOWN)), "title names the process: {texts:#?}");
    // inferno writes the entities; nothing is escaped twice.
    assert!(!text.contains("&amp;lt;") && !text.contains("&amp;amp;"), "double-escaped");
}

#[test]
fn pprof_top_keeps_one_line_per_function() {
    require_kernel!();
    if Command::new("go").arg("version").output().is_err() {
        println!("SKIPPED pprof_top_keeps_one_line_per_function: go is not installed");
        return;
    }
    let path = tmp("hostile.pb.gz");
    trace_hostile("hostile-pprof", &["--format", "pprof", "-o", path.to_str().unwrap()], |_| {});
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=inuse_space"])
        .arg(&path)
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .env("GOCACHE", tmp("gocache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_no_controls("go tool pprof -top", &out.stdout);
    // pprof shortens what looks like C++ template arguments (`<&>`) in names; the rest shows.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"bad;name\\x07\\e[2J\""), "{text}");
}

/// A port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The body of GET /metrics (HTTP/1.0, no keep-alive).
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

#[test]
fn metrics_escape_the_comm_label_as_prometheus_requires() {
    require_kernel!();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut body = String::new();
    trace_hostile("hostile-metrics", &["--metrics-addr", &addr.to_string()], |pid| {
        let label = format!("pid=\"{pid}\"");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            body = scrape(addr);
            if body.lines().any(|l| l.starts_with("leaktrace_outstanding_bytes{") && l.contains(&label)) {
                break;
            }
            assert!(Instant::now() < deadline, "no series for {pid}: {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // Prometheus's text format escapes backslash, double quote and newline in label values;
    // anything else is the label's UTF-8 text.
    let want = "comm=\"ev\x1b[2Jil\\n;x<&\"";
    assert!(body.contains(want), "{body}");
    for l in body.lines() {
        let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
        assert!(l.starts_with('#') || value.parse::<f64>().is_ok(), "{series} / {value}");
    }
    let have = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have {
        println!("SKIPPED promtool part: promtool is not installed");
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn audit_table_shows_hostile_names_escaped() {
    require_kernel!();
    let mut h = start_hostile();
    let (out, err) = (tmp("hostile-audit.stdout"), tmp("hostile-audit.stderr"));
    let mut lt = leaktrace()
        .args(["audit", "-p", &h.pid.to_string(), "--duration", "2s", "--min-age", "0s"])
        .args(["--sample-rate", "0"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    wait_in_file(&err, "auditing");
    let mut stdin = h.child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    h.out.wait_for("done");
    let st = wait_with_timeout(&mut lt);
    drop(stdin);
    wait_with_timeout(&mut h.child);
    let (stdout, stderr) = (std::fs::read(&out).unwrap(), std::fs::read(&err).unwrap());
    assert!(st.success(), "audit exited with {st}: {}", String::from_utf8_lossy(&stderr));
    assert_no_controls("audit stderr", &stderr);
    assert_no_controls("audit table", &stdout);
    let text = String::from_utf8_lossy(&stdout);
    assert!(text.contains(&format!("{COMM_SHOWN} ({}): leaking stacks", h.pid)), "{text}");
    assert!(text.contains(&format!(" {COMM_SHOWN} ")), "table row: {text}");
    assert!(text.contains(FUNC_SHOWN), "{text}");
}

/// Runs `hold 0 sample` (20000 leaked and 20000 freed 1000 B blocks) sampled at 64 KiB with a
/// sampled set of 16: the set fills with leaked blocks, so later sampled blocks' frees are not
/// seen and they show as leaks.
fn full_sampled_set(format: &str, out: &Path) -> String {
    let hold = common::fixture("hold", &[]);
    let o = leaktrace()
        .args(["trace", "--min-age", "0s", "--sample-rate", "64KiB", "--max-sampled", "16"])
        .args(["--format", format, "-o"])
        .arg(out)
        .arg("--")
        .arg(&hold)
        .args(["0", "sample"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn a_full_sampled_set_is_a_warning_and_an_unreliable_estimate() {
    require_kernel!();
    let text = full_sampled_set("text", &tmp("fullset.txt"));
    let warning = text
        .lines()
        .find(|l| l.contains("warning") && l.contains("--max-sampled"))
        .unwrap_or_else(|| panic!("no warning about the full sampled set: {text}"));
    assert!(warning.contains("unreliable"), "{warning}");
    let footer = text.lines().last().unwrap();
    let full: u64 = footer
        .split("sampled set full: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("footer lacks the sampled set: {footer}"));
    assert!(full > 0, "{footer}");

    let path = tmp("fullset.json");
    full_sampled_set("json", &path);
    let r = common::last_report(&path);
    assert!(r["sampled_set_full"].as_u64() > Some(0), "{r:#}");
    assert_eq!(r["estimate_unreliable"], true, "{r:#}");
    let why = r["estimate_unreliable_reason"].as_str().unwrap_or_default();
    assert!(why.contains("--max-sampled"), "{why}");
}

#[test]
fn top_zero_says_how_many_stacks_it_hides() {
    require_kernel!();
    let leaky = common::fixture("leaky", &[]);
    let o = leaktrace()
        .args(["trace", "--min-age", "0s", "--top", "0", "--"])
        .arg(&leaky)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!text.contains("  #1 "), "--top 0 lists no stack: {text}");
    let hint = text
        .lines()
        .find(|l| l.contains("more stacks (raise --top to see them)"))
        .unwrap_or_else(|| panic!("no hint: {text}"));
    let n: usize = hint.trim().trim_start_matches("... ").split(' ').next().unwrap().parse().unwrap();
    assert!(n >= 8, "{hint}");
    let footer = text.lines().last().unwrap();
    assert!(footer.contains("sampled set full: 0"), "{footer}");
}

/// The OOM report's text (`NAME.txt` and what `oom` prints) names the victim, its command line,
/// its cgroup and the other big processes: all chosen by them.
#[test]
fn oom_text_report_shows_hostile_names_escaped() {
    use leaktrace::{
        oom::report::{OomReport, Victim, render_text},
        procinfo::{Consumer, ProcSnapshot},
    };
    let r = OomReport {
        reason: "oom_kill",
        threshold: None,
        time: "2026-11-23T00:00:00.000Z".into(),
        victim: Victim {
            pid: 7,
            comm: COMM.into(),
            cmdline: Some(vec!["./x".into(), "\x1b]0;pwned\x07".into()]),
            cgroup: Some("/user.slice/ev\nil".into()),
            ..Victim::default()
        },
        missing_fields: vec![],
        oom_scope: "unknown",
        oom_scope_reason: String::new(),
        memcg: None,
        proc: ProcSnapshot::default(),
        tracked: false,
        untracked_reason: Some(format!("start leaktrace oom with --track-comm {COMM} to record them")),
        rss_history: vec![],
        rss_trend: None,
        top_consumers: vec![Consumer {
            pid: 8,
            comm: "\x1b[31mred".into(),
            rss_bytes: 1 << 20,
        }],
        stacks: vec![],
        lost_events: 0,
        stack_errors: 0,
        dropped_reports: 0,
    };
    let mut out = Vec::new();
    render_text(&r, &mut out).unwrap();
    assert_no_controls("OOM text", &out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with(&format!("OOM kill of pid 7 ({COMM_SHOWN}) at ")), "{text}");
    assert!(text.contains("  command: ./x \\e]0;pwned\\x07\n"), "{text}");
    assert!(text.contains("  memory cgroup: /user.slice/ev\\nil\n"), "{text}");
    assert!(text.contains("        8 \\e[31mred "), "{text}");
    assert!(text.contains(&format!("--track-comm {COMM_SHOWN} ")), "{text}");
}

/// `leaktrace diff` prints names read from saved reports, which a traced process chose.
#[test]
fn diff_text_shows_hostile_names_escaped() {
    let report = |bytes: u64| {
        serde_json::json!({
            "report": "final",
            "processes": [{
                "pid": 7, "comm": COMM, "leaked_bytes": bytes, "outstanding_bytes": bytes,
                "stacks": [{
                    "kind": "heap", "bytes": bytes, "count": 1,
                    "frames": [{
                        "address": "0x1", "function": FUNC, "file": FILE, "line": 2,
                        "module": "/x", "inlined": false
                    }]
                }]
            }]
        })
    };
    let (old, new) = (tmp("hostile-old.json"), tmp("hostile-new.json"));
    std::fs::write(&old, report(1000).to_string()).unwrap();
    std::fs::write(&new, report(5000).to_string()).unwrap();
    let o = leaktrace().arg("diff").arg(&old).arg(&new).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_no_controls("diff", &o.stdout);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(&format!("\n{COMM_SHOWN} (pid 7 -> 7")), "{text}");
    assert!(text.contains(&format!("  {FUNC_SHOWN} (heap)")), "{text}");
}
