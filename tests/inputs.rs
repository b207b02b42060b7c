//! Bounded, typed reading of saved reports (`diff`, `audit --baseline`): endless and huge inputs
//! stop at the size limit with one line naming the file, the limit and the option; wrong types
//! name the file and the field; deltas never wrap. Every child runs under a 1 GiB address-space
//! limit, so a reader that does not bound its input fails here instead of exhausting the machine.
mod common;

use std::{
    io::{Read, Write},
    os::unix::{fs::OpenOptionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use common::{leaktrace, wait_with_timeout};

struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with a 1 GiB address-space limit and the common deadline.
fn run(cmd: &mut Command) -> Out {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let o = drain(Box::new(child.stdout.take().unwrap()));
    let e = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait_with_timeout(&mut child);
    Out {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// Exit 2, exactly one stderr line containing every needle, no panic.
fn assert_usage_error(out: &Out, needles: &[&str]) {
    let err = &out.stderr;
    assert_eq!(out.status.code(), Some(2), "status {:?}, stderr: {err}", out.status);
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

fn dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inputs");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(name: &str, text: &str) -> PathBuf {
    let p = dir().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn stack(func: &str, bytes: &str, count: &str) -> String {
    format!(
        r#"{{"kind":"heap","bytes":{bytes},"count":{count},"oldest_age_ms":1,"stack_id":1,
        "alloc_count":1,"alloc_bytes":1,"frames":[{{"address":"0x1","function":"{func}",
        "file":null,"line":null,"module":"/bin/x","inlined":false}}]}}"#
    )
}

/// A trace report (one JSON Lines document) of one process `svc` with the given stacks.
fn trace_report(leaked: &str, stacks: &[String]) -> String {
    format!(
        r#"{{"report":"final","time":"t","elapsed_ms":1,"min_age_ms":0,"processes":[{{"pid":7,
        "comm":"svc","exited":false,"leaked_bytes":{leaked},"leaked_count":1,
        "outstanding_bytes":1,"outstanding_count":1,"allocations":1,"frees":0,"stacks_total":1,
        "stacks":[{}],"loader_bytes":0,"mappings":[]}}],"lost_events":0,"stack_errors":0,
        "missed_returns":0,"malformed_events":0,"sampled_set_full":0,"events":1,
        "leaked_bytes":1,"leaked_count":1,"group_by":"stack","sample_rate":null}}"#,
        stacks.join(",")
    )
    .replace('\n', "")
        + "\n"
}

fn good() -> PathBuf {
    write("good.json", &trace_report("100", &[stack("a", "100", "1")]))
}

#[test]
fn diff_of_dev_zero_is_refused() {
    let out = run(leaktrace().arg("diff").arg("/dev/zero").arg(good()));
    assert_usage_error(&out, &["/dev/zero", "not JSON"]);
}

#[test]
fn diff_of_dev_urandom_is_refused() {
    let out = run(leaktrace().arg("diff").arg(good()).arg("/dev/urandom"));
    assert_usage_error(&out, &["/dev/urandom"]);
    // Refused for what its first bytes are (not JSON, or a number or string where a report
    // belongs), never read on until memory or the limit runs out.
    let err = &out.stderr;
    assert!(!err.contains("cannot read it") && !err.contains("larger than"), "{err}");
}

/// A FIFO whose writer never stops (whitespace, which a JSON reader skips forever): the read
/// stops at the limit.
#[test]
fn diff_of_an_endless_fifo_stops_at_the_limit() {
    let fifo = dir().join("endless.fifo");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(writer_path).unwrap();
        let chunk = [b' '; 64 << 10];
        // Ends when the reader closes its end (EPIPE; SIGPIPE is ignored in Rust programs).
        while f.write_all(&chunk).is_ok() {}
    });
    let out = run(leaktrace()
        .args(["diff", "--max-input-size", "1MiB"])
        .arg(&fifo)
        .arg(good()));
    // If leaktrace never opened the FIFO, the writer still waits in open(): a reader that comes
    // and goes lets it open and then fail with EPIPE.
    let _ = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
    writer.join().unwrap();
    assert_usage_error(&out, &[fifo.to_str().unwrap(), "1.0 MiB", "--max-input-size"]);
}

#[test]
fn a_report_over_the_limit_is_refused_and_the_option_raises_it() {
    let mut text = " ".repeat(2 << 20);
    text.push_str(&trace_report("100", &[stack("a", "300", "3")]));
    let big = write("big.json", &text);
    let out = run(leaktrace()
        .args(["diff", "--max-input-size", "1MiB"])
        .arg(good())
        .arg(&big));
    assert_usage_error(&out, &[big.to_str().unwrap(), "1.0 MiB", "--max-input-size"]);
    let out = run(leaktrace().args(["diff", "--max-input-size", "4MiB"]).arg(good()).arg(&big));
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("+200 B"), "{}", out.stdout);
}

#[test]
fn wrong_types_name_the_file_and_the_field() {
    let bad = write("string-bytes.json", &trace_report("100", &[stack("a", "\"lots\"", "1")]));
    let out = run(leaktrace().arg("diff").arg(good()).arg(&bad));
    assert_usage_error(&out, &[bad.to_str().unwrap(), "processes[0].stacks[0].bytes"]);
    let neg = write("negative.json", &trace_report("-5", &[stack("a", "1", "1")]));
    let out = run(leaktrace().arg("diff").arg(&neg).arg(good()));
    assert_usage_error(&out, &[neg.to_str().unwrap(), "processes[0].leaked_bytes"]);
    let missing = write("missing.json", &trace_report("100", &[stack("a", "1", "1")]).replace("\"count\":1,", ""));
    let out = run(leaktrace().arg("diff").arg(&missing).arg(good()));
    assert_usage_error(&out, &[missing.to_str().unwrap(), "count"]);
}

#[test]
fn deltas_do_not_wrap_around() {
    let old = write(
        "huge.json",
        &trace_report("18446744073709551615", &[stack("a", "18446744073709551615", "1")]),
    );
    let new = write("small.json", &trace_report("6144", &[stack("a", "6144", "1")]));
    let out = run(leaktrace().arg("diff").arg(&old).arg(&new));
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(!out.stdout.contains("+6.0 KiB"), "wrapped: {}", out.stdout);
    assert!(out.stdout.contains("leaked -16777216.0 TiB"), "{}", out.stdout);
    let out = run(leaktrace().args(["diff", "--format", "json"]).arg(&old).arg(&new));
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    // 6144 - (2^64 - 1), exactly.
    assert!(out.stdout.contains("-18446744073709545471"), "{}", out.stdout);
    assert!(!out.stdout.contains("6145"), "{}", out.stdout);
}

#[test]
fn baseline_of_dev_zero_is_refused() {
    require_kernel!();
    let out = run(leaktrace().args([
        "audit", "-p", "1", "--duration", "2s", "--min-age", "1s", "--baseline", "/dev/zero",
    ]));
    assert_usage_error(&out, &["--baseline", "/dev/zero", "not JSON"]);
}

#[test]
fn baseline_over_the_limit_names_the_option() {
    require_kernel!();
    let big = write("big-baseline.json", &" ".repeat(2 << 20));
    let out = run(leaktrace()
        .args(["audit", "-p", "1", "--duration", "2s", "--min-age", "1s"])
        .args(["--max-input-size", "1MiB", "--baseline"])
        .arg(&big));
    assert_usage_error(&out, &["--baseline", big.to_str().unwrap(), "1.0 MiB", "--max-input-size"]);
}

/// A process's command line is whatever it was started with (up to the kernel's argument
/// limit, which `ulimit -s` raises): a snapshot reads at most 256 KiB of it and says so.
#[test]
fn a_huge_command_line_is_capped_and_the_cap_said() {
    // One argument may be at most 128 KiB (MAX_ARG_STRLEN): three make 300 KiB.
    let big = "x".repeat(100 << 10);
    let mut sh = Command::new("sh")
        .args(["-c", "sleep 60; :", "sh", &big, &big, &big])
        .spawn()
        .unwrap();
    // spawn returns after the exec: /proc/PID/cmdline already holds the new arguments.
    let snap = leaktrace::procinfo::snapshot(sh.id());
    sh.kill().unwrap();
    wait_with_timeout(&mut sh);
    let args = snap.cmdline.expect("a command line");
    // The arguments and the NULs between them.
    let len: usize = args.iter().map(|a| a.len()).sum::<usize>() + args.len() - 1;
    assert!(len <= 256 << 10, "read {len} bytes");
    assert_eq!(args[..3], ["sh", "-c", "sleep 60; :"]);
    assert!(
        snap.unavailable.iter().any(|u| u.starts_with("cmdline: longer than 256.0 KiB")),
        "{:?}",
        snap.unavailable
    );
}
