//! What /proc and cgroupfs say about a process: its name (comm, read as bytes) and command line
//! (capped), its RSS, a forensic snapshot (cmdline, exe, selected `status` and `smaps_rollup`
//! lines), its cgroup paths and memory cgroup counters, the system's largest processes, and
//! whether an OOM kill was the cgroup's or the whole system's.
//!
//! Readers are written for a process that is being killed: each file is read once, in order
//! of value, never panics, and every failure is recorded rather than aborting the rest. The
//! kernel's line formats are parsed by `procfs` where it has a parser (statm, cgroup,
//! mountinfo); the `status`/`smaps_rollup` lines are kept verbatim. This module does not
//! watch for OOM events (that is the tracepoint) and does not render reports.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use procfs::process::{MountInfo, StatM};
use procfs::{FromBufRead, FromRead, ProcessCGroups};
use serde::Serialize;

use crate::units::human_bytes;

/// Resident set size from `/proc/PID/statm`: one small read, no parsing of the long
/// `status` file, so it is cheap enough to sample many processes often.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let raw = fs::read(format!("/proc/{pid}/statm")).ok()?;
    let statm = StatM::from_read(&raw[..]).ok()?;
    statm.resident.checked_mul(procfs::page_size())
}

/// The name of `pid` from `/proc/PID/comm`: the bytes the process chose (`prctl(PR_SET_NAME)`,
/// up to 15 of them, any but NUL), as lossy UTF-8 with only the kernel's newline removed. A name
/// that is not UTF-8 is still a name: the process is never skipped for it.
pub fn comm(pid: u32) -> Option<String> {
    read_comm(Path::new(&format!("/proc/{pid}/comm")))
}

fn read_comm(path: &Path) -> Option<String> {
    // The kernel writes at most TASK_COMM_LEN bytes and a newline.
    let (raw, _) = read_capped(path, 64).ok()?;
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    Some(String::from_utf8_lossy(raw).into_owned())
}

/// Whether a name given with `--comm`/`--track-comm` is the name `comm` read by [`comm`]: the
/// kernel keeps the first 15 bytes of a name, so a longer one matches its truncation (cut inside
/// a character, it reads as that character's replacement, as `comm` does).
pub fn comm_matches(name: &str, comm: &str) -> bool {
    let b = name.as_bytes();
    String::from_utf8_lossy(&b[..b.len().min(15)]) == comm
}

/// Caps on /proc files a target controls the size of: its command line (up to the kernel's
/// argument limit, which `ulimit -s` raises), and the small text files, which a cap only
/// protects against a kernel surprise. A capped read is said in `unavailable`.
const CMDLINE_CAP: u64 = 256 << 10;
const SMALL_FILE_CAP: u64 = 256 << 10;

/// Reads at most `cap` bytes of `path`; the flag says whether the file had more.
fn read_capped(path: &Path, cap: u64) -> std::io::Result<(Vec<u8>, bool)> {
    use std::io::Read;
    let mut buf = Vec::new();
    fs::File::open(path)?.take(cap + 1).read_to_end(&mut buf)?;
    let capped = buf.len() as u64 > cap;
    buf.truncate(cap as usize);
    Ok((buf, capped))
}

/// The arguments of `pid` (None when it has none: a kernel thread, or a process whose memory is
/// already released) and whether they were cut at [`CMDLINE_CAP`].
pub fn cmdline(pid: u32) -> std::io::Result<(Option<Vec<String>>, bool)> {
    let (raw, capped) = read_capped(Path::new(&format!("/proc/{pid}/cmdline")), CMDLINE_CAP)?;
    Ok((parse_cmdline(&raw), capped))
}

/// `read_capped` as text (lossy), noting a cap in `unavailable` under `what`.
fn read_text_capped(path: &Path, cap: u64, what: &str, unavailable: &mut Vec<String>) -> std::io::Result<String> {
    let (raw, capped) = read_capped(path, cap)?;
    if capped {
        unavailable.push(format!("{what}: longer than {}, the rest not read", human_bytes(cap)));
    }
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// The `/proc/PID/status` lines kept in a snapshot.
pub const STATUS_FIELDS: [&str; 10] = [
    "VmPeak", "VmSize", "VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSwap", "VmPTE",
    "Threads",
];

#[derive(Serialize, Default, Clone, Debug)]
pub struct ProcSnapshot {
    pub cmdline: Option<Vec<String>>,
    pub exe: Option<String>,
    pub cgroup: Option<CgroupPaths>,
    /// `STATUS_FIELDS` as the kernel prints them, e.g. "VmRSS" -> "65536 kB".
    pub status: BTreeMap<String, String>,
    /// Every `Key: value` line of `/proc/PID/smaps_rollup` (Rss, Pss, Anonymous, Swap, ...).
    pub smaps_rollup: BTreeMap<String, String>,
    /// One entry per thing that could not be read, e.g.
    /// "status: No such file or directory (os error 2)".
    pub unavailable: Vec<String>,
}

/// Reads what is left of `pid`. Never fails: whatever cannot be read is named in
/// `unavailable`.
///
/// Order matters for a victim that vanishes within milliseconds: `status` first (it alone
/// has the memory numbers), then the cheap identity files, and `smaps_rollup` last because
/// it walks every mapping under the mm lock and is by far the slowest.
pub fn snapshot(pid: u32) -> ProcSnapshot {
    let mut s = ProcSnapshot::default();
    let dir = PathBuf::from(format!("/proc/{pid}"));

    // First: an exiting process leaves its cgroup early, and the cgroup is what an OOM report
    // needs most.
    match cgroup_paths(pid) {
        Ok(c) => s.cgroup = Some(c),
        Err(e) => s.unavailable.push(format!("cgroup: {e}")),
    }

    match read_text_capped(&dir.join("status"), SMALL_FILE_CAP, "status", &mut s.unavailable) {
        Ok(text) => {
            s.status = key_values(&text, Some(&STATUS_FIELDS));
            let missing: Vec<&str> = STATUS_FIELDS
                .iter()
                .copied()
                .filter(|k| !s.status.contains_key(*k))
                .collect();
            if !missing.is_empty() {
                // A kernel thread, or a process whose mm is already gone, has no Vm* lines.
                s.unavailable.push(format!(
                    "status: no {} line (kernel thread, or memory already released)",
                    missing.join(", ")
                ));
            }
        }
        Err(e) => s.unavailable.push(format!("status: {e}")),
    }

    // A process already past cgroup_exit shows the root cgroup: that is not where it lived.
    let exiting = !s.status.contains_key("VmRSS");
    let at_root = s.cgroup.as_ref().is_some_and(|c| {
        c.memory_v1.as_deref().unwrap_or("/") == "/" && c.unified.as_deref().unwrap_or("/") == "/"
    });
    if exiting && at_root {
        s.cgroup = None;
        s.unavailable
            .push("cgroup: the process had already left its cgroup (exiting)".to_string());
    }

    match cmdline(pid) {
        Ok((args, capped)) => match args {
            Some(args) if capped => {
                s.unavailable.push(format!(
                    "cmdline: longer than {}, the last argument cut and the rest not read",
                    human_bytes(CMDLINE_CAP)
                ));
                s.cmdline = Some(args);
            }
            Some(args) => s.cmdline = Some(args),
            None => s
                .unavailable
                .push("cmdline: empty (kernel thread, or memory already released)".to_string()),
        },
        Err(e) => s.unavailable.push(format!("cmdline: {e}")),
    }

    match fs::read_link(dir.join("exe")) {
        Ok(p) => s.exe = Some(p.to_string_lossy().into_owned()),
        Err(e) => s.unavailable.push(format!("exe: {e}")),
    }

    match read_text_capped(&dir.join("smaps_rollup"), SMALL_FILE_CAP, "smaps_rollup", &mut s.unavailable) {
        Ok(text) => {
            s.smaps_rollup = key_values(&text, None);
            if s.smaps_rollup.is_empty() {
                s.unavailable.push(
                    "smaps_rollup: empty (kernel thread, or memory already released)".to_string(),
                );
            }
        }
        Err(e) => s.unavailable.push(format!("smaps_rollup: {e}")),
    }
    s
}

/// `Key:<spaces>value` lines -> key -> value with surrounding blanks trimmed, so the value
/// stays as the kernel printed it ("65536 kB"). `keep` selects keys; None keeps every line
/// whose key is a plain identifier (which skips the address-range header of smaps_rollup).
///
/// Not `procfs::process::Status`: that parses two dozen fields into numbers and fails as a
/// whole if any one is missing or odd, which would lose everything for a dying process.
pub(crate) fn key_values(text: &str, keep: Option<&[&str]>) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .filter(|(k, _)| keep.is_none_or(|keep| keep.contains(k)))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// NUL-separated arguments; None when there are none.
pub(crate) fn parse_cmdline(raw: &[u8]) -> Option<Vec<String>> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Where a process sits in each cgroup hierarchy that matters for memory.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct CgroupPaths {
    /// Path within the v1 memory hierarchy, e.g. "/leaktest".
    pub memory_v1: Option<String>,
    /// The cgroup2 ("0::") path.
    pub unified: Option<String>,
}

/// Reads `/proc/PID/cgroup`. Paths are relative to the reader's cgroup namespace, which
/// is also the view `memcg` resolves them in. Err only when the file cannot be read.
pub fn cgroup_paths(pid: u32) -> Result<CgroupPaths, String> {
    let path = format!("/proc/{pid}/cgroup");
    // Read whole: the kernel writes one line per hierarchy, a path of at most PATH_MAX each.
    fs::read_to_string(&path)
        .map(|text| parse_cgroup(&text))
        .map_err(|e| format!("{path}: {e}"))
}

/// Pure part of `cgroup_paths`. Parsed line by line so one odd line costs only itself.
pub(crate) fn parse_cgroup(text: &str) -> CgroupPaths {
    let mut out = CgroupPaths {
        memory_v1: None,
        unified: None,
    };
    for line in text.lines() {
        let Ok(groups) = ProcessCGroups::from_buf_read(line.as_bytes()) else {
            continue;
        };
        for g in groups {
            if g.hierarchy == 0 && g.controllers.is_empty() {
                out.unified.get_or_insert(g.pathname);
            } else if g.controllers.iter().any(|c| c == "memory") {
                out.memory_v1.get_or_insert(g.pathname);
            }
        }
    }
    out
}

/// One mount of a cgroup hierarchy: `root` is the directory of the hierarchy that appears
/// at `mount_point` ("/" normally, a subdirectory inside some containers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub(crate) root: String,
    pub(crate) mount_point: PathBuf,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CgroupMounts {
    pub(crate) memory_v1: Vec<CgroupMount>,
    pub(crate) unified: Vec<CgroupMount>,
}

/// Finds the v1 memory controller and cgroup2 mounts in mountinfo text. Looked up rather
/// than assumed: cgroup2 is at /sys/fs/cgroup on pure-v2 systems, /sys/fs/cgroup/unified on
/// hybrid ones, and v1 controllers may be co-mounted ("cpu,memory").
pub(crate) fn parse_mountinfo(text: &str) -> CgroupMounts {
    let mut out = CgroupMounts::default();
    for m in text.lines().filter_map(|l| MountInfo::from_line(l).ok()) {
        let mount = CgroupMount {
            root: m.root,
            mount_point: m.mount_point,
        };
        match m.fs_type.as_str() {
            "cgroup2" => out.unified.push(mount),
            "cgroup" if m.super_options.contains_key("memory") => out.memory_v1.push(mount),
            _ => {}
        }
    }
    out
}

/// The directory of cgroup `path` under the first mount that contains it.
fn resolve(mounts: &[CgroupMount], path: &str) -> Option<PathBuf> {
    mounts.iter().find_map(|m| {
        let root = m.root.trim_end_matches('/');
        let rest = path.strip_prefix(root)?;
        (rest.is_empty() || rest.starts_with('/'))
            .then(|| m.mount_point.join(rest.trim_start_matches('/')))
    })
}

/// A memory cgroup's limit and counters, read right after the kill.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Memcg {
    /// 1 or 2.
    pub version: u8,
    pub path: String,
    /// None = unlimited ("max" in v2, v1's page-rounded LONG_MAX), or no limit file (v2 root).
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    /// v1 memory.max_usage_in_bytes, v2 memory.peak (Linux 5.19+).
    pub max_usage_bytes: Option<u64>,
    /// v1 memory.failcnt: how often a charge hit the limit. Always None on v2.
    pub failcnt: Option<u64>,
    /// "oom_kill N" from v1 memory.oom_control or v2 memory.events. Note the kernel counts
    /// every OOM kill of a member here, global ones included.
    pub oom_kills: Option<u64>,
}

/// v1 reports "no limit" as LONG_MAX rounded down to a page (9223372036854771712); any value
/// this large is no limit on a real machine.
const UNLIMITED_FROM: u64 = 1 << 62;

/// Reads the memory cgroup of `paths`: the v1 memory hierarchy when the process has a v1
/// memory path and that controller is mounted (on hybrid systems cgroup2 then carries no
/// memory controller), else cgroup2. None when the mounts or the cgroup directory cannot be
/// found, e.g. because the cgroup was removed along with its last process.
pub fn memcg(paths: &CgroupPaths) -> Option<Memcg> {
    // Our own mount table, read whole: only root mounts in leaktrace's mount namespace.
    let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").ok()?);
    if let Some(p) = &paths.memory_v1
        && let Some(dir) = resolve(&mounts.memory_v1, p)
    {
        return dir.is_dir().then(|| read_v1(&dir, p));
    }
    let p = paths.unified.as_ref()?;
    let dir = resolve(&mounts.unified, p)?;
    dir.is_dir().then(|| read_v2(&dir, p))
}

fn read_v1(dir: &Path, path: &str) -> Memcg {
    let num = |f: &str| read_u64(&dir.join(f));
    Memcg {
        version: 1,
        path: path.to_string(),
        limit_bytes: num("memory.limit_in_bytes").filter(|&l| l < UNLIMITED_FROM),
        usage_bytes: num("memory.usage_in_bytes"),
        max_usage_bytes: num("memory.max_usage_in_bytes"),
        failcnt: num("memory.failcnt"),
        oom_kills: keyed_file(&dir.join("memory.oom_control"), "oom_kill"),
    }
}

fn read_v2(dir: &Path, path: &str) -> Memcg {
    let num = |f: &str| read_u64(&dir.join(f));
    Memcg {
        version: 2,
        path: path.to_string(),
        // "max" does not parse as a number and so reads as None, like a missing file.
        limit_bytes: num("memory.max").filter(|&l| l < UNLIMITED_FROM),
        usage_bytes: num("memory.current"),
        max_usage_bytes: num("memory.peak"),
        failcnt: None,
        oom_kills: keyed_file(&dir.join("memory.events"), "oom_kill"),
    }
}

// cgroupfs counters are a number or a few `key value` lines: read whole.
fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

pub(crate) fn keyed_file(p: &Path, key: &str) -> Option<u64> {
    keyed_u64(&fs::read_to_string(p).ok()?, key)
}

/// The value of a "key N" line (memory.events, memory.oom_control, memory.stat).
fn keyed_u64(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

#[derive(Serialize, Clone, Debug)]
pub struct Consumer {
    pub pid: u32,
    pub comm: String,
    pub rss_bytes: u64,
}

/// The `n` processes with the largest RSS, largest first (ties by pid). Kernel threads
/// (RSS 0) and processes that exit or cannot be read mid-scan are skipped silently: this is
/// context for a report, not a census.
pub fn top_consumers(n: usize) -> Vec<Consumer> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut all: Vec<Consumer> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let rss_bytes = rss_bytes(pid).filter(|&r| r > 0)?;
            Some(Consumer {
                pid,
                comm: comm(pid)?,
                rss_bytes,
            })
        })
        .collect();
    all.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
    all.truncate(n);
    all
}

/// Whose OOM was it: ("cgroup", why) when the victim's memory cgroup has a limit and was
/// at >= 90% of it or counts an OOM kill; ("global", why) when the cgroup has no limit, so
/// only the system as a whole can have run out; ("unknown", why) otherwise.
///
/// Caveat: the kernel increments `oom_kill` for global kills too, and this is read after the
/// kill, so with a limit far from full a non-zero counter is weak evidence. The reason
/// sentence gives the numbers so the reader can judge.
pub fn oom_scope(m: Option<&Memcg>) -> (&'static str, String) {
    let Some(m) = m else {
        return (
            "unknown",
            "the memory cgroup could not be read, so it is not known whether a cgroup limit \
             or the whole system ran out of memory"
                .to_string(),
        );
    };
    let cg = format!("memory cgroup {} (v{})", m.path, m.version);
    let Some(limit) = m.limit_bytes else {
        return (
            "global",
            format!("{cg} has no memory limit, so the system ran out of memory"),
        );
    };
    let usage = match m.usage_bytes {
        Some(u) => format!(
            "usage {} is {:.0}% of its {} limit",
            human_bytes(u),
            u as f64 / limit.max(1) as f64 * 100.0,
            human_bytes(limit)
        ),
        None => format!("usage unreadable, limit {}", human_bytes(limit)),
    };
    let kills = match m.oom_kills {
        Some(k) => format!("{k} OOM kill{}", if k == 1 { "" } else { "s" }),
        None => "OOM kill count unreadable".to_string(),
    };
    // u * 10 >= limit * 9 in u128: exact, no overflow near u64::MAX.
    let near_limit = m
        .usage_bytes
        .is_some_and(|u| u128::from(u) * 10 >= u128::from(limit) * 9);
    if near_limit || m.oom_kills.is_some_and(|k| k > 0) {
        ("cgroup", format!("{cg}: {usage}, {kills}"))
    } else {
        (
            "unknown",
            format!("{cg}: {usage}, {kills}; not at its limit"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    #[test]
    fn a_name_that_is_not_utf8_is_read_not_skipped() {
        let path = std::thread::spawn(|| {
            // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
            unsafe { libc::prctl(libc::PR_SET_NAME, c"\xffhog\x1b".as_ptr()) };
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let path = PathBuf::from(format!("/proc/self/task/{tid}/comm"));
            // Read while the thread lives: its entry goes with it.
            (read_comm(&path), fs::read_to_string(&path).is_err())
        })
        .join()
        .unwrap();
        assert_eq!(path.0.as_deref(), Some("\u{fffd}hog\x1b"));
        assert!(path.1, "read_to_string (used before) refuses the name");
    }

    /// `spawn` returns when the child's old memory is released, before the kernel has set the
    /// new program's arguments: until then its cmdline reads empty.
    fn cmdline_once_exec_done(pid: u32) -> std::io::Result<(Option<Vec<String>>, bool)> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let got = cmdline(pid)?;
            if got.0.is_some() || std::time::Instant::now() > until {
                return Ok(got);
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_command_line_over_the_cap_is_cut_and_says_so() {
        // One argument is at most 128 KiB (MAX_ARG_STRLEN): three make 300 KiB.
        let arg = "x".repeat(100 << 10);
        // `read`, a builtin, keeps the shell itself waiting (a last `sleep` would be exec'd).
        let mut child = Command::new("/bin/sh")
            .args(["-c", "read x", &arg, &arg, &arg])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let got = cmdline_once_exec_done(child.id());
        let _ = child.kill();
        let _ = child.wait();
        let (args, capped) = got.unwrap();
        assert!(capped);
        let args = args.unwrap();
        assert_eq!(args[..2], ["/bin/sh", "-c"]);
        // Each argument and its NUL, but the last one, which is cut.
        assert_eq!(args.iter().map(|a| a.len() + 1).sum::<usize>() - 1, CMDLINE_CAP as usize);

        let mut child =
            Command::new("/bin/sh").args(["-c", "read x"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
        let got = cmdline_once_exec_done(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(got.unwrap(), (Some(vec!["/bin/sh".into(), "-c".into(), "read x".into()]), false));
    }

    #[test]
    fn a_long_name_matches_the_kernels_15_bytes() {
        assert!(comm_matches("abcdefghijklmnopq", "abcdefghijklmno"));
        assert!(!comm_matches("abc", "abcd"));
        // 9 two-byte characters: the kernel keeps 7 and half of the 8th.
        assert!(comm_matches("ééééééééé", "ééééééé\u{fffd}"));
    }

    #[test]
    fn key_values_keep_kernel_text() {
        let status = "Name:\tcat\nVmPeak:\t    8160 kB\nVmRSS:\t    1024 kB\nThreads:\t1\n\
                      Cpus_allowed_list:\t0-3\nGroups:\t\n";
        let m = key_values(status, Some(&STATUS_FIELDS));
        assert_eq!(m.len(), 3);
        assert_eq!(m["VmPeak"], "8160 kB");
        assert_eq!(m["VmRSS"], "1024 kB");
        assert_eq!(m["Threads"], "1");

        let rollup = "55d5c4a1e000-7ffd8b3fd000 ---p 00000000 00:00 0    [rollup]\n\
                      Rss:                1536 kB\nPss_Anon:            256 kB\nSwap:  0 kB\n";
        let m = key_values(rollup, None);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["Pss_Anon", "Rss", "Swap"]);
        assert_eq!(m["Rss"], "1536 kB");
        assert!(key_values("", None).is_empty());
        assert!(key_values("garbage\n: x\n", None).is_empty());
    }

    #[test]
    fn cmdline_splits_on_nul() {
        assert_eq!(
            parse_cmdline(b"sleep\x0030\x00"),
            Some(vec!["sleep".into(), "30".into()])
        );
        assert_eq!(
            parse_cmdline(b"a\x00\x00b\x00"),
            Some(vec!["a".into(), "".into(), "b".into()])
        );
        assert_eq!(parse_cmdline(b""), None);
        assert_eq!(parse_cmdline(b"\x00"), None);
    }

    #[test]
    fn cgroup_lines() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/78be\n1:cpu:/\n0::/user.slice\n";
        assert_eq!(
            parse_cgroup(hybrid),
            CgroupPaths {
                memory_v1: Some("/process_api/78be".into()),
                unified: Some("/user.slice".into())
            }
        );
        let comounted = "5:cpu,memory,foo:/leak:test\n";
        assert_eq!(
            parse_cgroup(comounted).memory_v1.as_deref(),
            Some("/leak:test")
        );
        let v2 = "0::/system.slice/leaktest.service\n";
        assert_eq!(
            parse_cgroup(v2),
            CgroupPaths {
                memory_v1: None,
                unified: Some("/system.slice/leaktest.service".into())
            }
        );
        // Odd lines cost only themselves; "memoryx" is not "memory".
        let odd = "garbage\nx:memory:/bad\n3:memoryx:/no\n4:memory:/ok\n";
        assert_eq!(parse_cgroup(odd).memory_v1.as_deref(), Some("/ok"));
        assert_eq!(
            parse_cgroup(""),
            CgroupPaths {
                memory_v1: None,
                unified: None
            }
        );
    }

    #[test]
    fn cgroup_of_self() {
        let p = cgroup_paths(std::process::id());
        println!("{p:?}");
        let p = p.unwrap();
        assert!(p.memory_v1.is_some() || p.unified.is_some());
        assert!(
            cgroup_paths(u32::MAX)
                .unwrap_err()
                .contains("/proc/4294967295/cgroup")
        );
    }

    #[test]
    fn mountinfo_lines() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
36 31 0:40 /kubepods /sys/fs/cgroup/cpu,memory rw - cgroup cgroup rw,cpu,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
99 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
not a mountinfo line
";
        let m = parse_mountinfo(text);
        let mount = |root: &str, p: &str| CgroupMount {
            root: root.into(),
            mount_point: p.into(),
        };
        assert_eq!(
            m.memory_v1,
            [
                mount("/", "/sys/fs/cgroup/memory"),
                mount("/kubepods", "/sys/fs/cgroup/cpu,memory")
            ]
        );
        assert_eq!(
            m.unified,
            [
                mount("/", "/sys/fs/cgroup/unified"),
                mount("/", "/sys/fs/cgroup")
            ]
        );
        assert_eq!(parse_mountinfo(""), CgroupMounts::default());
    }

    #[test]
    fn resolve_against_mount_root() {
        let mounts = [
            CgroupMount {
                root: "/kubepods".into(),
                mount_point: "/mnt/a".into(),
            },
            CgroupMount {
                root: "/".into(),
                mount_point: "/mnt/b".into(),
            },
        ];
        assert_eq!(
            resolve(&mounts, "/kubepods/pod1"),
            Some("/mnt/a/pod1".into())
        );
        assert_eq!(resolve(&mounts, "/kubepods"), Some("/mnt/a".into()));
        // "/kubepodsX" is not inside "/kubepods".
        assert_eq!(
            resolve(&mounts, "/kubepodsX"),
            Some("/mnt/b/kubepodsX".into())
        );
        assert_eq!(resolve(&mounts, "/"), Some("/mnt/b".into()));
        assert_eq!(resolve(&mounts[..1], "/other"), None);
    }

    #[test]
    fn keyed_counters() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_u64(oom_control, "oom_kill"), Some(3));
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_u64(events, "oom_kill"), Some(1));
        assert_eq!(keyed_u64(events, "oom"), Some(1));
        assert_eq!(keyed_u64(events, "missing"), None);
        assert_eq!(keyed_u64("oom_kill x\n", "oom_kill"), None);
    }

    #[test]
    fn snapshot_of_self() {
        let s = snapshot(std::process::id());
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        assert!(s.unavailable.is_empty(), "{:?}", s.unavailable);
        assert!(!s.cmdline.as_ref().unwrap().is_empty());
        assert!(s.exe.is_some());
        assert!(s.status["VmRSS"].ends_with(" kB"), "{:?}", s.status);
        assert_eq!(s.status.len(), STATUS_FIELDS.len());
        assert!(s.smaps_rollup.contains_key("Rss"));
        assert!(s.cgroup.is_some());
    }

    #[test]
    fn snapshot_of_missing_pid() {
        let s = snapshot(u32::MAX);
        println!("{:?}", s.unavailable);
        let what: Vec<&str> = s
            .unavailable
            .iter()
            .filter_map(|u| u.split(':').next())
            .collect();
        // The cgroup is read first: an exiting process leaves it early.
        assert_eq!(what, ["cgroup", "status", "cmdline", "exe", "smaps_rollup"]);
        assert!(
            s.unavailable[0].contains("No such file or directory"),
            "{}",
            s.unavailable[0]
        );
        assert!(s.cmdline.is_none() && s.exe.is_none() && s.cgroup.is_none());
        assert!(s.status.is_empty() && s.smaps_rollup.is_empty());
        assert_eq!(rss_bytes(u32::MAX), None);
    }

    #[test]
    fn rss_of_self() {
        let r = rss_bytes(std::process::id());
        assert!(r.is_some_and(|r| r > 0), "{r:?}");
    }

    #[test]
    fn top_consumers_sorted() {
        let top = top_consumers(5);
        println!("{top:?}");
        assert!(!top.is_empty() && top.len() <= 5);
        assert!(top.windows(2).all(|w| w[0].rss_bytes >= w[1].rss_bytes));
        assert!(top.iter().all(|c| c.rss_bytes > 0 && !c.comm.is_empty()));
        assert!(top_consumers(0).is_empty());
    }

    #[test]
    fn memcg_of_self() {
        let paths = cgroup_paths(std::process::id()).unwrap();
        let m = memcg(&paths);
        println!("{paths:?}\n{m:?}\n{:?}", oom_scope(m.as_ref()));
        let Some(m) = m else {
            println!(
                "SKIPPED: no memory cgroup found for this process (no memory controller mounted?)"
            );
            return;
        };
        assert!(m.version == 1 || m.version == 2);
        if m.version == 1 {
            assert_eq!(Some(&m.path), paths.memory_v1.as_ref());
            assert!(m.usage_bytes.is_some());
        }
    }

    #[test]
    fn scope_rules() {
        let m = |limit: Option<u64>, usage: Option<u64>, kills: Option<u64>| Memcg {
            version: 2,
            path: "/leaktest".into(),
            limit_bytes: limit,
            usage_bytes: usage,
            max_usage_bytes: None,
            failcnt: None,
            oom_kills: kills,
        };
        const MB: u64 = 1 << 20;
        let (scope, why) = oom_scope(Some(&m(Some(64 * MB), Some(63 * MB), Some(0))));
        assert_eq!(scope, "cgroup");
        assert_eq!(
            why,
            "memory cgroup /leaktest (v2): usage 63.0 MiB is 98% of its 64.0 MiB limit, 0 OOM kills"
        );
        assert_eq!(
            oom_scope(Some(&m(Some(64 * MB), Some(MB), Some(1)))).0,
            "cgroup"
        );
        assert_eq!(
            oom_scope(Some(&m(Some(64 * MB), None, Some(2)))).0,
            "cgroup"
        );
        let (scope, why) = oom_scope(Some(&m(Some(64 * MB), Some(MB), Some(0))));
        assert_eq!(scope, "unknown");
        assert!(why.ends_with("not at its limit"), "{why}");
        assert_eq!(oom_scope(Some(&m(Some(64 * MB), None, None))).0, "unknown");
        let (scope, why) = oom_scope(Some(&m(None, Some(u64::MAX), Some(5))));
        assert_eq!(scope, "global");
        assert!(why.contains("no memory limit"), "{why}");
        assert_eq!(oom_scope(None).0, "unknown");
        assert_eq!(
            oom_scope(Some(&m(Some(u64::MAX), Some(u64::MAX), None))).0,
            "cgroup"
        );
        assert_eq!(oom_scope(Some(&m(Some(0), Some(0), None))).0, "cgroup");
    }

    /// A v1 memory cgroup with a `sleep` in it; Drop kills the sleep and removes the cgroup
    /// even when an assertion failed.
    struct V1Fixture {
        dir: PathBuf,
        child: Option<Child>,
    }

    impl Drop for V1Fixture {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            // The cgroup is only removable once its last task is gone; after wait() it is.
            for _ in 0..50 {
                if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            eprintln!("could not remove {}", self.dir.display());
        }
    }

    #[test]
    fn real_v1_memcg() {
        let mounts = fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t));
        let Some(mount) = mounts
            .ok()
            .and_then(|m| m.memory_v1.into_iter().find(|m| m.root == "/"))
        else {
            println!("SKIPPED: the cgroup v1 memory controller is not mounted");
            return;
        };
        let name = format!("leaktrace-procinfo-test-{}", std::process::id());
        let dir = mount.mount_point.join(&name);
        if let Err(e) = fs::create_dir(&dir) {
            println!("SKIPPED: cannot create {} (needs root): {e}", dir.display());
            return;
        }
        let mut fx = V1Fixture {
            dir: dir.clone(),
            child: None,
        };
        fs::write(dir.join("memory.limit_in_bytes"), "64M").unwrap();
        fx.child = Some(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = fx.child.as_ref().map(|c| c.id()).unwrap();
        fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();

        let paths = cgroup_paths(pid).unwrap();
        println!("{paths:?}");
        let v1 = paths.memory_v1.clone().unwrap();
        assert!(v1.ends_with(&format!("/{name}")), "{v1}");
        let m = memcg(&paths).unwrap();
        println!("{m:?}\n{:?}", oom_scope(Some(&m)));
        assert_eq!(m.version, 1);
        assert_eq!(m.path, v1);
        assert_eq!(m.limit_bytes, Some(67_108_864));
        assert!(m.usage_bytes.is_some() && m.failcnt.is_some() && m.oom_kills.is_some());
        // A fresh cgroup far below its limit with no kills: not the cgroup's OOM.
        assert_eq!(oom_scope(Some(&m)).0, "unknown");
    }
}
