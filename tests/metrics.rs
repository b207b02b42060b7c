//! `leaktrace trace --metrics-addr` on the real kernel: the Prometheus endpoint of a running
//! trace of tests/fixtures/leaky.c shows the fixture's outstanding and suspect bytes, its text
//! passes `promtool check metrics`, and a taken port or an unparsable address is bad input.
mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{Lines, leaktrace, wait_with_timeout};

/// What `leaky wait` leaves outstanding: the leak set of tests/trace.rs run on two threads.
/// The process holds other blocks too (libc's), so the metrics show at least this much.
const LEAKED_BYTES: u64 = 2 * (4000 + 3072 + 5000 + 12288 + 4096 + 8192 + 6000 + 262144);

/// The Accept header Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A port free on 127.0.0.1 right now (the kernel picks it; nobody else is expected to take it
/// in the moment before leaktrace binds it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 GET, as a scraper without keep-alive sends it: (status line, headers, body).
fn get(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> std::io::Result<(String, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Ok((
        status.to_string(),
        headers.to_ascii_lowercase(),
        body.to_string(),
    ))
}

/// The value of `family` for the series labelled `pid="PID"`, if there is one.
fn value(text: &str, family: &str, pid: u32) -> Option<u64> {
    let label = format!("pid=\"{pid}\"");
    text.lines()
        .filter(|l| {
            l.strip_prefix(family).is_some_and(|r| r.starts_with('{')) && l.contains(&label)
        })
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// `promtool check metrics` on `text`, installing Debian's prometheus package for it if need be.
/// Err says why it could not run (the caller prints it as a skip); a lint failure panics.
fn promtool_check(text: &str) -> Result<String, String> {
    let have = || {
        Command::new("promtool")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have() {
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(["-o", "DPkg::Lock::Timeout=600"])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run apt-get: {e}"))
        };
        let install = ["install", "-y", "--no-install-recommends", "prometheus"];
        let out = apt(&install)?;
        if !out.status.success() {
            apt(&["update"])?;
            let out = apt(&install)?;
            if !out.status.success() {
                return Err(format!(
                    "promtool is missing and `apt-get install prometheus` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        if !have() {
            return Err("the prometheus package installed no working promtool".into());
        }
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}): {said}\ntext:\n{text}",
        out.status
    );
    Ok(said)
}

#[test]
fn serves_the_outstanding_bytes_of_a_traced_pid() {
    require_kernel!();
    let leaky = common::fixture("leaky", &[]);
    let mut fx = Command::new(&leaky)
        .arg("wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let fx_out = Lines::new(fx.stdout.take().unwrap());
    fx_out.wait_for("ready pid=");
    let pid = fx.id();

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut lt = leaktrace()
        .args(["trace", "-p", &pid.to_string(), "--min-age", "0s"])
        .args(["--metrics-addr", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lt_err = Lines::new(lt.stderr.take().unwrap());
    // Printed once serving, before the probes are attached.
    lt_err.wait_for(&format!("leaktrace: metrics on http://{addr}/metrics"));
    lt_err.wait_for(&format!("tracing pid {pid}"));

    let mut stdin = fx.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    fx_out.wait_for("done");

    // The trace loop updates the metrics about once a second: poll until the leaks show.
    let deadline = Instant::now() + common::TIMEOUT;
    let text = loop {
        let (status, headers, body) = get(addr, "/metrics", None).expect("scrape /metrics");
        assert!(status.ends_with(" 200 OK"), "{status}");
        assert!(
            headers.contains("content-type: text/plain; version=0.0.4"),
            "{headers}"
        );
        if value(&body, "leaktrace_outstanding_bytes", pid).is_some_and(|b| b >= LEAKED_BYTES) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "outstanding bytes of pid {pid} never reached {LEAKED_BYTES}; last scrape:\n{body}"
        );
        // Polling a condition with a deadline, at the rate the values change.
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{text}");
    // --min-age 0s: every outstanding block is a suspect.
    let suspect = value(&text, "leaktrace_suspect_bytes", pid);
    assert!(
        suspect.is_some_and(|b| b >= LEAKED_BYTES),
        "suspect bytes {suspect:?}:\n{text}"
    );
    // Per leak set and thread: 4 + 3 + 1 + 1 + 2 + 2 + 2 + 1 blocks.
    let blocks = value(&text, "leaktrace_outstanding_allocations", pid);
    assert!(
        blocks.is_some_and(|n| n >= 2 * 16),
        "outstanding allocations {blocks:?}:\n{text}"
    );
    let allocs = value(&text, "leaktrace_allocations_total", pid);
    let frees = value(&text, "leaktrace_frees_total", pid);
    assert!(
        allocs.is_some_and(|a| a >= 2 * 16) && frees.is_some(),
        "allocs {allocs:?}, frees {frees:?}"
    );
    assert!(
        text.lines().any(|l| l == "leaktrace_lost_events_total 0"),
        "lost events:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "leaktrace_metrics_folded_processes 0"),
        "{text}"
    );
    assert!(
        text.contains(&format!("pid=\"{pid}\",comm=\"leaky\"")),
        "{text}"
    );

    match promtool_check(&text) {
        Ok(said) => println!("promtool check metrics: ok {said}"),
        Err(why) => println!("SKIPPED promtool part: {why}"),
    }

    // Prometheus asks for OpenMetrics and gets it, ending in the EOF marker.
    let (status, headers, body) = get(addr, "/metrics", Some(PROMETHEUS_ACCEPT)).unwrap();
    assert!(status.ends_with(" 200 OK"), "{status}");
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    assert!(
        body.contains("\n# TYPE leaktrace_allocations counter\n"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    // Nothing else is served.
    let (status, _, _) = get(addr, "/", None).unwrap();
    assert!(status.ends_with(" 404 Not Found"), "{status}");

    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGINT) };
    let st = wait_with_timeout(&mut lt);
    assert!(
        st.success(),
        "leaktrace exited with {st}; stderr: {:?}",
        lt_err.rest()
    );
    // Stopped with leaktrace: the port is free again.
    assert!(
        TcpListener::bind(addr).is_ok(),
        "{addr} still taken after leaktrace exited"
    );
    drop(stdin);
    wait_with_timeout(&mut fx);
}

/// Exit 2 and exactly one stderr line containing every needle, no panic.
fn assert_usage_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

fn run(args: &[&str]) -> Output {
    let child = leaktrace()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn unparsable_metrics_address() {
    // Parsed with the rest of the command line: needs neither root nor a kernel.
    let out = run(&["trace", "-p", "1", "--metrics-addr", "nonsense"]);
    assert_usage_error(&out, &["--metrics-addr", "nonsense", "127.0.0.1:9464"]);
    let out = run(&["trace", "-p", "1", "--metrics-addr", "127.0.0.1:70000"]);
    assert_usage_error(&out, &["--metrics-addr", "out of range"]);
}

#[test]
fn metrics_port_already_in_use() {
    require_kernel!();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // PID 1 always exists; leaktrace must give up on the port before it traces anything.
    let out = run(&["trace", "-p", "1", "--metrics-addr", &addr]);
    assert_usage_error(&out, &["--metrics-addr", &addr, "already in use"]);
    drop(taken);
}
