//! The Prometheus endpoint of a running trace: the metric families (`leaktrace_*`), how a
//! once-a-second snapshot of the traced processes becomes their values, and the small HTTP
//! server that exposes them at `GET /metrics` in the Prometheus text formats.
//!
//! It owns the cardinality policy: at most `max_processes` processes get series of their own,
//! the rest are folded into `pid="other", comm="other"`, and an exited process's series are
//! removed, so that a long-running watcher does not accumulate dead PIDs. It does not compute
//! the numbers (the aggregator does) and does not decide when to update them (the trace loop
//! does).
//!
//! `GET /metrics` answers in OpenMetrics when the client asks for it (Prometheus does) and in
//! the Prometheus text format 0.0.4 otherwise (curl, `promtool check metrics`), as the Go client
//! does: prometheus-client writes only OpenMetrics, whose counter families are named without
//! `_total`, which 0.0.4 readers take for a family with no samples.
//!
//! The HTTP server is `server`'s. It runs as one task on the caller's tokio runtime
//! (current_thread is fine): nothing here awaits while holding a lock, and rendering is
//! synchronous.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

mod server;
pub use server::{MAX_CONNECTIONS, ServerHandle, serve};

/// How many processes get series of their own unless the caller says otherwise.
pub const DEFAULT_MAX_PROCESSES: usize = 100;
/// The port that error messages suggest (the OpenTelemetry Prometheus exporter's default).
pub const DEFAULT_PORT: u16 = 9464;
/// The label value of the series that folded processes are summed into.
pub const OTHER: &str = "other";
/// The content type of the OpenMetrics 1.0 exposition, served to clients that accept it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format, served to every other client.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";


/// Parses the value of `--metrics-addr`: `127.0.0.1:9464`, `0.0.0.0:9464`, `[::1]:9464`,
/// `localhost:9464`, `:9464` or a bare `9464`. Without a host it listens on 127.0.0.1 only:
/// exposing the endpoint to the network is a choice the user spells out (`0.0.0.0:PORT`).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let hint = "type PORT, :PORT or IP:PORT, e.g. 9464, 127.0.0.1:9464, 0.0.0.0:9464 or [::1]:9464";
    let t = s.trim();
    let port = |p: &str| {
        p.parse::<u16>().map_err(|_| {
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                format!("invalid address '{s}': port {p} is out of range (0 to 65535)")
            } else {
                format!("invalid address '{s}': {hint}")
            }
        })
    };
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(SocketAddr::new(localhost, port(t)?));
    }
    if let Some(p) = t.strip_prefix(':') {
        return Ok(SocketAddr::new(localhost, port(p)?));
    }
    if let Some(p) = t.strip_prefix("localhost:") {
        return Ok(SocketAddr::new(localhost, port(p)?));
    }
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    // An IP without a port, or a port that does not parse after a valid IP: say which.
    if t.parse::<IpAddr>().is_ok() || t.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        return Err(format!(
            "invalid address '{s}': add a port, e.g. {t}:{DEFAULT_PORT}"
        ));
    }
    if let Some((host, p)) = t.rsplit_once(':')
        && host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok()
    {
        port(p)?;
    }
    Err(format!("invalid address '{s}': {hint}"))
}

/// One traced, still running process as the trace loop sees it at one moment. The totals are
/// counted since tracing began and never decrease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessSample {
    pub pid: u32,
    pub comm: String,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    /// Outstanding blocks older than `--min-age`.
    pub suspect_bytes: u64,
    pub suspect_count: u64,
    pub allocations: u64,
    pub frees: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: String,
    comm: String,
}

impl ProcessLabels {
    fn of(pid: u32, comm: &str) -> Self {
        ProcessLabels {
            pid: pid.to_string(),
            comm: comm.to_string(),
        }
    }

    fn other() -> Self {
        ProcessLabels {
            pid: OTHER.into(),
            comm: OTHER.into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommLabel {
    comm: String,
}

type U64Gauge = Gauge<u64, AtomicU64>;

/// What `update` remembers of a live process between two snapshots.
#[derive(Debug)]
struct Tracked {
    comm: String,
    /// Has series of its own; otherwise it is folded into "other".
    own: bool,
    /// The totals at the previous snapshot, so that folded processes add their growth (not
    /// their totals) to the "other" counters, which must never go backwards.
    allocations: u64,
    frees: u64,
}

#[derive(Debug, Default)]
struct State {
    tracked: HashMap<u32, Tracked>,
    /// The command names that have an OOM-kill series of their own.
    oom_comms: HashSet<String>,
}

/// The registry and its families. Shared between the trace loop (which calls `update` and
/// `oom_kill`) and the HTTP server (which calls `render`) behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    max_processes: usize,
    state: Mutex<State>,
    outstanding_bytes: Family<ProcessLabels, U64Gauge>,
    outstanding_allocations: Family<ProcessLabels, U64Gauge>,
    suspect_bytes: Family<ProcessLabels, U64Gauge>,
    suspect_allocations: Family<ProcessLabels, U64Gauge>,
    allocations: Family<ProcessLabels, Counter>,
    frees: Family<ProcessLabels, Counter>,
    lost_events: Counter,
    oom_kills: Family<CommLabel, Counter>,
    folded_processes: U64Gauge,
    connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(DEFAULT_MAX_PROCESSES)
    }
}

impl Metrics {
    /// At most `max_processes` processes (and as many OOM-killed command names) get series of
    /// their own; 0 folds every process into "other".
    pub fn new(max_processes: usize) -> Self {
        let mut registry = Registry::with_prefix("leaktrace");
        let m = Metrics {
            registry: Registry::default(),
            max_processes,
            state: Mutex::default(),
            outstanding_bytes: Family::default(),
            outstanding_allocations: Family::default(),
            suspect_bytes: Family::default(),
            suspect_allocations: Family::default(),
            allocations: Family::default(),
            frees: Family::default(),
            lost_events: Counter::default(),
            oom_kills: Family::default(),
            folded_processes: Gauge::default(),
            connections_refused: Counter::default(),
        };
        registry.register_with_unit(
            "outstanding",
            "Bytes allocated and not yet freed, per traced process",
            Unit::Bytes,
            m.outstanding_bytes.clone(),
        );
        registry.register(
            "outstanding_allocations",
            "Blocks allocated and not yet freed, per traced process",
            m.outstanding_allocations.clone(),
        );
        registry.register_with_unit(
            "suspect",
            "Bytes in outstanding blocks older than --min-age (leak suspects), per traced process",
            Unit::Bytes,
            m.suspect_bytes.clone(),
        );
        registry.register(
            "suspect_allocations",
            "Outstanding blocks older than --min-age (leak suspects), per traced process",
            m.suspect_allocations.clone(),
        );
        registry.register(
            "allocations",
            "Allocations seen since tracing began, per traced process",
            m.allocations.clone(),
        );
        registry.register(
            "frees",
            "Frees seen since tracing began, per traced process",
            m.frees.clone(),
        );
        registry.register(
            "lost_events",
            "Events the kernel dropped because leaktrace fell behind (counts are low by as much)",
            m.lost_events.clone(),
        );
        registry.register(
            "oom_kills",
            "Processes killed by the OOM killer, by command name",
            m.oom_kills.clone(),
        );
        registry.register(
            "metrics_folded_processes",
            "Traced processes beyond the series limit, summed into the series labelled other",
            m.folded_processes.clone(),
        );
        registry.register(
            "metrics_connections_refused",
            "Connections to this endpoint closed unserved because MAX_CONNECTIONS (64) were open",
            m.connections_refused.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Connections refused so far because the cap was reached.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.get()
    }

    /// Sets every family from one snapshot of the traced processes that are still running. A
    /// process seen before and absent now has exited: its series are removed. `lost_events` is
    /// the total since tracing began.
    pub fn update(&self, snapshot: &[ProcessSample], lost_events: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now: HashMap<u32, &ProcessSample> = snapshot.iter().map(|s| (s.pid, s)).collect();

        // Exited processes, and processes whose comm changed (exec): drop their series. A
        // renamed process gets new series below, its counters starting at its totals.
        state.tracked.retain(|pid, t| {
            let gone = now.get(pid).is_none_or(|s| s.comm != t.comm);
            if gone && t.own {
                self.remove_process(&ProcessLabels::of(*pid, &t.comm));
            }
            !gone
        });
        for s in now.values() {
            state.tracked.entry(s.pid).or_insert_with(|| Tracked {
                comm: s.comm.clone(),
                own: false,
                allocations: 0,
                frees: 0,
            });
        }

        // Free slots go to the folded processes holding the most outstanding bytes; a process
        // keeps its slot until it exits, so series do not flap between "other" and their own.
        let own = state.tracked.values().filter(|t| t.own).count();
        let mut folded: Vec<&ProcessSample> = now
            .values()
            .copied()
            .filter(|s| !state.tracked[&s.pid].own)
            .collect();
        folded.sort_by_key(|s| (std::cmp::Reverse(s.outstanding_bytes), s.pid));
        for s in folded.iter().take(self.max_processes.saturating_sub(own)) {
            state.tracked.get_mut(&s.pid).expect("tracked above").own = true;
        }

        let mut other = ProcessSample::default();
        let mut n_folded = 0;
        for s in now.values() {
            let t = state.tracked.get_mut(&s.pid).expect("tracked above");
            if t.own {
                let l = ProcessLabels::of(s.pid, &s.comm);
                self.outstanding_bytes
                    .get_or_create(&l)
                    .set(s.outstanding_bytes);
                self.outstanding_allocations
                    .get_or_create(&l)
                    .set(s.outstanding_count);
                self.suspect_bytes.get_or_create(&l).set(s.suspect_bytes);
                self.suspect_allocations
                    .get_or_create(&l)
                    .set(s.suspect_count);
                raise_to(&self.allocations.get_or_create(&l), s.allocations);
                raise_to(&self.frees.get_or_create(&l), s.frees);
            } else {
                n_folded += 1;
                other.outstanding_bytes += s.outstanding_bytes;
                other.outstanding_count += s.outstanding_count;
                other.suspect_bytes += s.suspect_bytes;
                other.suspect_count += s.suspect_count;
                other.allocations += s.allocations.saturating_sub(t.allocations);
                other.frees += s.frees.saturating_sub(t.frees);
            }
            t.allocations = t.allocations.max(s.allocations);
            t.frees = t.frees.max(s.frees);
        }

        let l = ProcessLabels::other();
        if n_folded > 0 {
            self.outstanding_bytes
                .get_or_create(&l)
                .set(other.outstanding_bytes);
            self.outstanding_allocations
                .get_or_create(&l)
                .set(other.outstanding_count);
            self.suspect_bytes
                .get_or_create(&l)
                .set(other.suspect_bytes);
            self.suspect_allocations
                .get_or_create(&l)
                .set(other.suspect_count);
            self.allocations.get_or_create(&l).inc_by(other.allocations);
            self.frees.get_or_create(&l).inc_by(other.frees);
        } else {
            // The gauges describe folded processes that are running now: none. The "other"
            // counters stay, since removing and re-creating them would read as a reset.
            self.outstanding_bytes.remove(&l);
            self.outstanding_allocations.remove(&l);
            self.suspect_bytes.remove(&l);
            self.suspect_allocations.remove(&l);
        }
        self.folded_processes.set(n_folded);
        raise_to(&self.lost_events, lost_events);
    }

    /// Counts one process killed by the OOM killer. Command names beyond `max_processes`
    /// distinct ones are counted under comm="other".
    pub fn oom_kill(&self, comm: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let own = state.oom_comms.contains(comm)
            || (state.oom_comms.len() < self.max_processes && state.oom_comms.insert(comm.into()));
        let comm = if own { comm } else { OTHER };
        self.oom_kills
            .get_or_create(&CommLabel { comm: comm.into() })
            .inc();
    }

    /// The OpenMetrics text exposition, ending in `# EOF`.
    pub fn render_openmetrics(&self) -> String {
        // Under the lock, so that a scrape never sees half of an update.
        let _state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The Prometheus text format 0.0.4: the same samples, for readers that predate OpenMetrics.
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render_openmetrics())
    }

    fn remove_process(&self, l: &ProcessLabels) {
        self.outstanding_bytes.remove(l);
        self.outstanding_allocations.remove(l);
        self.suspect_bytes.remove(l);
        self.suspect_allocations.remove(l);
        self.allocations.remove(l);
        self.frees.remove(l);
    }
}

/// Rewrites prometheus-client's OpenMetrics output as Prometheus text 0.0.4. For the output of
/// this module's registry (integer values, plain help texts, no exemplars) the two differ only
/// in this: 0.0.4 names a counter's HELP and TYPE after its `_total` samples, and has no UNIT
/// or EOF lines.
fn openmetrics_to_text(om: &str) -> String {
    let counters: HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 16 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let (name, rest) = line.strip_prefix(p)?.split_once(' ')?;
            counters.contains(name).then_some((p, name, rest))
        });
        match meta {
            Some((p, name, rest)) => out.extend([p, name, "_total ", rest]),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Counters are set from totals: add the difference, and never go backwards.
fn raise_to(c: &Counter, total: u64) {
    let cur = c.get();
    if total > cur {
        c.inc_by(total - cur);
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn sample(pid: u32, comm: &str, bytes: u64, allocs: u64, frees: u64) -> ProcessSample {
        ProcessSample {
            pid,
            comm: comm.into(),
            outstanding_bytes: bytes,
            outstanding_count: allocs - frees,
            suspect_bytes: bytes / 2,
            suspect_count: (allocs - frees) / 2,
            allocations: allocs,
            frees,
        }
    }

    /// The value of the one sample line starting with `series` (name and labels, exact).
    fn value(text: &str, series: &str) -> Option<u64> {
        let mut hits = text
            .lines()
            .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok());
        let v = hits.next();
        assert!(hits.next().is_none(), "{series} appears twice in:\n{text}");
        v
    }

    fn series_of(text: &str, pid: &str) -> usize {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("pid=\"{pid}\"")))
            .count()
    }

    #[test]
    fn addresses() {
        let ok = |s: &str| parse_addr(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:9464"), "127.0.0.1:9464");
        assert_eq!(ok("0.0.0.0:9464"), "0.0.0.0:9464");
        assert_eq!(ok("[::1]:9464"), "[::1]:9464");
        assert_eq!(ok("[::]:80"), "[::]:80");
        assert_eq!(ok(":9464"), "127.0.0.1:9464");
        assert_eq!(ok("9464"), "127.0.0.1:9464");
        assert_eq!(ok(" 9464 "), "127.0.0.1:9464");
        assert_eq!(ok("localhost:9464"), "127.0.0.1:9464");
        assert_eq!(ok("127.0.0.1:0"), "127.0.0.1:0");
        for bad in [
            "nonsense",
            "",
            ":",
            "127.0.0.1",
            "::1",
            "[::1]",
            "host.example:9464",
            "127.0.0.1:x",
        ] {
            let e = parse_addr(bad).unwrap_err();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
        assert!(
            parse_addr("nonsense")
                .unwrap_err()
                .contains("e.g. 9464, 127.0.0.1:9464")
        );
        assert!(
            parse_addr("127.0.0.1")
                .unwrap_err()
                .contains("add a port, e.g. 127.0.0.1:9464")
        );
        assert!(parse_addr("70000").unwrap_err().contains("out of range"));
        assert!(
            parse_addr("127.0.0.1:70000")
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn exposition_after_update() {
        let m = Metrics::default();
        m.update(
            &[
                sample(42, "leaky", 609_584, 40, 4),
                sample(7, "a \"b\"", 10, 3, 1),
            ],
            5,
        );
        m.oom_kill("hog");
        m.oom_kill("hog");
        let t = m.render_openmetrics();
        let l = r#"{pid="42",comm="leaky"}"#;
        assert_eq!(
            value(&t, &format!("leaktrace_outstanding_bytes{l}")),
            Some(609_584)
        );
        assert_eq!(
            value(&t, &format!("leaktrace_outstanding_allocations{l}")),
            Some(36)
        );
        assert_eq!(
            value(&t, &format!("leaktrace_suspect_bytes{l}")),
            Some(304_792)
        );
        assert_eq!(
            value(&t, &format!("leaktrace_suspect_allocations{l}")),
            Some(18)
        );
        assert_eq!(
            value(&t, &format!("leaktrace_allocations_total{l}")),
            Some(40)
        );
        assert_eq!(value(&t, &format!("leaktrace_frees_total{l}")), Some(4));
        // Label values are escaped.
        assert_eq!(
            value(&t, r#"leaktrace_allocations_total{pid="7",comm="a \"b\""}"#),
            Some(3)
        );
        assert_eq!(value(&t, "leaktrace_lost_events_total"), Some(5));
        assert_eq!(
            value(&t, r#"leaktrace_oom_kills_total{comm="hog"}"#),
            Some(2)
        );
        assert_eq!(value(&t, "leaktrace_metrics_folded_processes"), Some(0));
        assert_eq!(series_of(&t, OTHER), 0, "nothing folded:\n{t}");
        // OpenMetrics: typed families, units, counters with _total, and the end marker.
        for line in [
            "# TYPE leaktrace_outstanding_bytes gauge",
            "# UNIT leaktrace_outstanding_bytes bytes",
            "# TYPE leaktrace_allocations counter",
            "# TYPE leaktrace_lost_events counter",
            "# TYPE leaktrace_oom_kills counter",
        ] {
            assert!(t.lines().any(|l| l == line), "no {line:?} in:\n{t}");
        }
        assert!(t.ends_with("# EOF\n"));
    }

    #[test]
    fn text_format_names_counters_by_their_samples() {
        let m = Metrics::new(1);
        m.update(&[sample(1, "a", 5, 3, 1), sample(2, "b", 1, 3, 0)], 2);
        m.oom_kill("hog");
        let t = m.render_text();
        for line in [
            "# HELP leaktrace_allocations_total Allocations seen since tracing began, per traced process.",
            "# TYPE leaktrace_allocations_total counter",
            "# TYPE leaktrace_lost_events_total counter",
            "# TYPE leaktrace_oom_kills_total counter",
            "# TYPE leaktrace_outstanding_bytes gauge",
            "leaktrace_lost_events_total 2",
        ] {
            assert!(t.lines().any(|l| l == line), "no {line:?} in:\n{t}");
        }
        assert!(!t.contains("# UNIT") && !t.contains("# EOF"), "{t}");
        // Same samples as OpenMetrics.
        let samples = |s: &str| s.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples(&t), samples(&m.render_openmetrics()));
        // 0.0.4 escapes only backslash and newline in HELP: keep help texts clear of both, and
        // of the quote that OpenMetrics escapes.
        for l in t.lines().filter(|l| l.starts_with("# HELP ")) {
            assert!(!l.contains(['\\', '"']), "{l}");
        }
    }

    #[test]
    fn folds_processes_beyond_the_limit() {
        let m = Metrics::new(2);
        let snap = [
            sample(1, "small", 10, 5, 0),
            sample(2, "big", 1000, 7, 0),
            sample(3, "mid", 100, 11, 0),
            sample(4, "tiny", 1, 13, 0),
        ];
        m.update(&snap, 0);
        let t = m.render_openmetrics();
        // The two largest get their own series; the others are summed.
        assert_eq!(
            value(&t, r#"leaktrace_outstanding_bytes{pid="2",comm="big"}"#),
            Some(1000)
        );
        assert_eq!(
            value(&t, r#"leaktrace_outstanding_bytes{pid="3",comm="mid"}"#),
            Some(100)
        );
        assert_eq!(series_of(&t, "1") + series_of(&t, "4"), 0, "{t}");
        assert_eq!(
            value(
                &t,
                r#"leaktrace_outstanding_bytes{pid="other",comm="other"}"#
            ),
            Some(11)
        );
        assert_eq!(
            value(
                &t,
                r#"leaktrace_allocations_total{pid="other",comm="other"}"#
            ),
            Some(18)
        );
        assert_eq!(value(&t, "leaktrace_metrics_folded_processes"), Some(2));

        // A slot frees up when "big" exits: the largest folded process takes it, with its
        // counters at its totals; "other" keeps what it counted.
        m.update(
            &[
                snap[0].clone(),
                snap[2].clone(),
                sample(4, "tiny", 1, 20, 0),
            ],
            0,
        );
        let t = m.render_openmetrics();
        assert_eq!(series_of(&t, "2"), 0, "{t}");
        assert_eq!(
            value(&t, r#"leaktrace_allocations_total{pid="1",comm="small"}"#),
            Some(5)
        );
        assert_eq!(
            value(
                &t,
                r#"leaktrace_outstanding_bytes{pid="other",comm="other"}"#
            ),
            Some(1)
        );
        assert_eq!(
            value(
                &t,
                r#"leaktrace_allocations_total{pid="other",comm="other"}"#
            ),
            Some(25)
        );
        assert_eq!(value(&t, "leaktrace_metrics_folded_processes"), Some(1));

        // Nothing folded any more: the "other" gauges go, its counters stay.
        m.update(&[snap[0].clone()], 0);
        let t = m.render_openmetrics();
        assert_eq!(
            value(
                &t,
                r#"leaktrace_outstanding_bytes{pid="other",comm="other"}"#
            ),
            None
        );
        assert_eq!(
            value(
                &t,
                r#"leaktrace_allocations_total{pid="other",comm="other"}"#
            ),
            Some(25)
        );
        assert_eq!(value(&t, "leaktrace_metrics_folded_processes"), Some(0));
    }

    #[test]
    fn many_processes_stay_bounded() {
        let m = Metrics::default();
        let snap: Vec<_> = (0..1000)
            .map(|p| sample(p, "worker", u64::from(p), 1, 0))
            .collect();
        m.update(&snap, 0);
        let t = m.render_openmetrics();
        let series = t
            .lines()
            .filter(|l| l.starts_with("leaktrace_outstanding_bytes{"))
            .count();
        assert_eq!(series, DEFAULT_MAX_PROCESSES + 1);
        assert_eq!(value(&t, "leaktrace_metrics_folded_processes"), Some(900));
        // The largest ones are the ones named.
        assert_eq!(
            value(
                &t,
                r#"leaktrace_outstanding_bytes{pid="999",comm="worker"}"#
            ),
            Some(999)
        );
        assert_eq!(series_of(&t, "899"), 0);
    }

    #[test]
    fn exited_processes_lose_their_series() {
        let m = Metrics::default();
        m.update(&[sample(10, "a", 1, 1, 0), sample(11, "b", 2, 2, 0)], 0);
        m.update(&[sample(11, "b", 2, 2, 0)], 0);
        let t = m.render_openmetrics();
        assert_eq!(series_of(&t, "10"), 0, "{t}");
        assert_eq!(series_of(&t, "11"), 6, "{t}");
        assert_eq!(m.state.lock().unwrap().tracked.len(), 1);
        // exec changes comm: the old series go, new ones come.
        m.update(&[sample(11, "b2", 2, 3, 0)], 0);
        let t = m.render_openmetrics();
        assert_eq!(
            value(&t, r#"leaktrace_allocations_total{pid="11",comm="b"}"#),
            None
        );
        assert_eq!(
            value(&t, r#"leaktrace_allocations_total{pid="11",comm="b2"}"#),
            Some(3)
        );
        m.update(&[], 0);
        assert_eq!(series_of(&m.render_openmetrics(), "11"), 0);
    }

    #[test]
    fn counters_never_go_backwards() {
        let m = Metrics::new(1);
        m.update(&[sample(1, "a", 5, 10, 2), sample(2, "b", 1, 4, 0)], 3);
        // Totals that shrink (a caller's bug, or a folded process leaving) leave counters be.
        m.update(&[sample(1, "a", 5, 8, 1), sample(2, "b", 1, 3, 0)], 1);
        let t = m.render_openmetrics();
        assert_eq!(
            value(&t, r#"leaktrace_allocations_total{pid="1",comm="a"}"#),
            Some(10)
        );
        assert_eq!(
            value(&t, r#"leaktrace_frees_total{pid="1",comm="a"}"#),
            Some(2)
        );
        assert_eq!(
            value(
                &t,
                r#"leaktrace_allocations_total{pid="other",comm="other"}"#
            ),
            Some(4)
        );
        assert_eq!(value(&t, "leaktrace_lost_events_total"), Some(3));
        // The folded process exits, a new one is folded: "other" only grows.
        m.update(&[sample(1, "a", 5, 12, 2), sample(3, "c", 1, 2, 0)], 7);
        let t = m.render_openmetrics();
        assert_eq!(
            value(&t, r#"leaktrace_allocations_total{pid="1",comm="a"}"#),
            Some(12)
        );
        assert_eq!(
            value(
                &t,
                r#"leaktrace_allocations_total{pid="other",comm="other"}"#
            ),
            Some(6)
        );
        assert_eq!(value(&t, "leaktrace_lost_events_total"), Some(7));
    }

    #[test]
    fn oom_kill_names_are_bounded() {
        let m = Metrics::new(2);
        for c in ["a", "b", "c", "d", "a"] {
            m.oom_kill(c);
        }
        let t = m.render_openmetrics();
        assert_eq!(value(&t, r#"leaktrace_oom_kills_total{comm="a"}"#), Some(2));
        assert_eq!(value(&t, r#"leaktrace_oom_kills_total{comm="b"}"#), Some(1));
        assert_eq!(
            value(&t, r#"leaktrace_oom_kills_total{comm="other"}"#),
            Some(2)
        );
    }

    /// A comm the traced process chose: prometheus-client escapes what the text format
    /// requires in a label value (backslash, double quote, newline), so nothing is added here;
    /// other bytes are UTF-8 text in the format, ESC included.
    #[test]
    fn hostile_comm_label_is_escaped_by_prometheus_client() {
        let m = Metrics::default();
        m.update(&[sample(9, "ev\x1b[2Jil\n;x<&\\\"", 10, 3, 1)], 0);
        m.oom_kill("a\nb");
        let t = m.render_openmetrics();
        let l = r#"{pid="9",comm="ev\x1b[2Jil\n;x<&\\\""}"#.replace("\\x1b", "\x1b");
        assert_eq!(value(&t, &format!("leaktrace_frees_total{l}")), Some(1), "{t}");
        assert_eq!(value(&t, r#"leaktrace_oom_kills_total{comm="a\nb"}"#), Some(1), "{t}");
    }
}
