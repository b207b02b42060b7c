//! Raw command-line arguments (clap) and their validated form. `Config::try_from(cli)` turns
//! strings into `Duration`s and sizes and rejects nonsense with a message that says what to type.
use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::Error;

#[derive(Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    about = "eBPF memory-leak tracer: attach to running processes and report the call stacks \
             that hold memory they never give back",
    after_help = "Exit codes: 0 success; 1 failure while tracing; 2 bad input or unusable \
                  environment (not root, no such process, no BTF/uprobes)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace processes by PID (-p) or launch a command (after --) and report surviving allocations.
    Trace(TraceArgs),
    /// Watch for OOM kills and write a forensic report for each (run it as a service).
    Oom(OomArgs),
    /// Trace processes for a bounded window and rank them by leak rate (cron/systemd-friendly).
    Audit(AuditArgs),
    /// Compare two saved JSON reports (trace or audit): growth per process and per stack.
    Diff(DiffArgs),
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The earlier report.
    pub old: PathBuf,
    /// The later report.
    pub new: PathBuf,
    /// text or json.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Largest report read (e.g. 1GiB); a larger one is refused.
    #[arg(long, allow_hyphen_values = true, default_value = "256MiB", value_name = "BYTES")]
    pub max_input_size: String,
}

impl DiffArgs {
    /// The validated `--max-input-size`.
    pub fn max_input_size(&self) -> Result<u64, Error> {
        parse_max_input_size(&self.max_input_size)
    }
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// How long to watch.
    #[arg(long, allow_hyphen_values = true, default_value = "60s", value_name = "DURATION")]
    pub duration: String,
    /// Every process on the machine (the default when no -p, --comm or --cgroup is given).
    #[arg(long)]
    pub all: bool,
    /// Audit this process (repeatable; a thread id stands for its process).
    #[arg(short = 'p', long = "pid", allow_hyphen_values = true, value_name = "PID")]
    pub pids: Vec<String>,
    /// At most N processes get probes: more -p is refused; more --comm/--cgroup matches are
    /// counted in the report, not audited (--all probes per library and is not capped).
    #[arg(long, default_value_t = crate::target::DEFAULT_MAX_TARGETS, value_name = "N")]
    pub max_targets: usize,
    /// Audit processes with this name, including ones started during the audit (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Audit processes in this cgroup (its path as in /proc/PID/cgroup, v1 memory or v2; repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,
    /// Allocations younger than this at the end are not leaks.
    #[arg(long, allow_hyphen_values = true, default_value = "10s", value_name = "DURATION")]
    pub min_age: String,
    /// Exit 1 when a process leaks faster than RATE (e.g. 1MiB/min, 100KiB/s).
    #[arg(long, allow_hyphen_values = true, value_name = "RATE")]
    pub fail_above: Option<String>,
    /// An earlier audit's JSON: show growth since then per process (matched by executable and
    /// command line) and per stack.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Stacks to show per process.
    #[arg(long, allow_negative_numbers = true, default_value_t = 5, value_name = "N")]
    pub top: usize,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report to FILE instead of stdout (mode 0600, through a temporary and a rename;
    /// never through a symbolic link).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Sample allocations by bytes (each byte with probability 1/BYTES) and scale the estimates;
    /// 0 traces every allocation. Sampling keeps an audit of a whole machine cheap.
    #[arg(long, allow_hyphen_values = true, default_value = "512KiB", value_name = "BYTES")]
    pub sample_rate: String,
    /// With sampling: how many sampled live blocks the kernel remembers (overflow is counted).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1 << 20, value_name = "N")]
    pub max_sampled: u32,
    /// Ring buffer size (a power of two from 4KiB to 1GiB, e.g. 32MiB).
    #[arg(long, allow_hyphen_values = true, default_value = "32MiB", value_name = "BYTES")]
    pub ring_size: String,
    /// Largest --baseline file read (e.g. 1GiB); a larger one is refused.
    #[arg(long, allow_hyphen_values = true, default_value = "256MiB", value_name = "BYTES")]
    pub max_input_size: String,
}

/// Which processes an audit covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Chosen {
        pids: Vec<u32>,
        comms: Vec<String>,
        cgroups: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub duration: Duration,
    pub selection: Selection,
    pub min_age: Duration,
    pub fail_above: Option<f64>,
    pub baseline: Option<PathBuf>,
    pub top: usize,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub tuning: crate::probes::Tuning,
    pub ring_size: u32,
    /// Largest --baseline file read, in bytes.
    pub max_input_size: u64,
    pub max_targets: usize,
}

impl TryFrom<AuditArgs> for AuditConfig {
    type Error = Error;

    fn try_from(a: AuditArgs) -> Result<Self, Error> {
        let ring_size = parse_ring_size(&a.ring_size)?;
        let max_input_size = parse_max_input_size(&a.max_input_size)?;
        check_output(a.format, &a.output)?;
        check_max_targets(a.max_targets)?;
        let duration =
            parse_duration(&a.duration).map_err(|e| Error::Usage(format!("--duration: {e}")))?;
        if duration.is_zero() {
            return Err(Error::Usage("--duration: must be more than zero (e.g. 60s)".into()));
        }
        let min_age =
            parse_duration(&a.min_age).map_err(|e| Error::Usage(format!("--min-age: {e}")))?;
        if duration <= min_age {
            return Err(Error::Usage(format!(
                "--duration {}: must be longer than --min-age {} (survivors must have time to age)",
                a.duration, a.min_age
            )));
        }
        let chosen = !(a.pids.is_empty() && a.comms.is_empty() && a.cgroups.is_empty());
        if a.all && chosen {
            return Err(Error::Usage(
                "give --all or a choice of processes (-p, --comm, --cgroup), not both".into(),
            ));
        }
        let selection = if chosen {
            Selection::Chosen {
                pids: a.pids.iter().map(|p| parse_pid(p)).collect::<Result<_, _>>()?,
                comms: a.comms,
                cgroups: a.cgroups,
            }
        } else {
            Selection::All
        };
        Ok(AuditConfig {
            duration,
            selection,
            min_age,
            fail_above: a
                .fail_above
                .as_deref()
                .map(|r| {
                    crate::units::parse_rate(r).map_err(|e| Error::Usage(format!("--fail-above: {e}")))
                })
                .transpose()?,
            baseline: a.baseline,
            top: a.top,
            format: a.format,
            output: a.output,
            tuning: crate::probes::Tuning {
                sample_rate: parse_sample_rate(&a.sample_rate)?,
                max_sampled: a.max_sampled,
                empty: false,
                overflow_only: false,
                sample_seed: None,
            },
            ring_size,
            max_input_size,
            max_targets: a.max_targets,
        })
    }
}

fn check_max_targets(n: usize) -> Result<(), Error> {
    if n == 0 {
        return Err(Error::Usage("--max-targets 0: must be at least 1 (default 256)".into()));
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct OomArgs {
    /// Directory for reports (created 0700 if missing): DIR/<UTC time>-<pid>-<comm>.{json,txt}.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Exit 0 after the first OOM-kill report (for scripts and tests).
    #[arg(long)]
    pub once: bool,
    /// Track processes with this name (repeatable; also ones started later): their allocations
    /// are traced and their RSS sampled, so a kill of one reports the stacks holding memory.
    #[arg(long = "track-comm", value_name = "NAME")]
    pub track_comms: Vec<String>,
    /// Track this process (repeatable; a thread id stands for its process).
    #[arg(long = "track-pid", allow_hyphen_values = true, value_name = "PID")]
    pub track_pids: Vec<String>,
    /// At most N processes are tracked at once: more --track-pid is refused; processes taking a
    /// --track-comm name beyond the cap are not tracked, and each is warned about.
    #[arg(long, default_value_t = crate::target::DEFAULT_MAX_TARGETS, value_name = "N")]
    pub max_targets: usize,
    /// Also write a report (reason "threshold") when a tracked process's RSS crosses SIZE
    /// (e.g. 512MiB), once per crossing.
    #[arg(long, allow_hyphen_values = true, value_name = "SIZE")]
    pub snapshot_rss: Option<String>,
    /// Also write a report when a tracked process's memory cgroup usage crosses PERCENT of its
    /// limit, once per crossing.
    #[arg(long, allow_hyphen_values = true, value_name = "PERCENT")]
    pub snapshot_memcg: Option<String>,
    /// Format of the one line printed on stdout per report (json: a JSON object; pprof, folded,
    /// svg: also write the victim's stacks as NAME.pb.gz, .folded or .svg beside the report).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Serve Prometheus metrics at http://ADDR/metrics (`:9464` or a bare port: on 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Ring buffer size (a power of two from 4KiB to 1GiB, e.g. 8MiB).
    #[arg(long, allow_hyphen_values = true, default_value = "8MiB", value_name = "BYTES")]
    pub ring_size: String,
}

#[derive(Debug, Clone)]
pub struct OomConfig {
    pub dir: PathBuf,
    pub once: bool,
    pub track_comms: Vec<String>,
    pub track_pids: Vec<u32>,
    pub max_targets: usize,
    pub snapshot_rss: Option<u64>,
    pub snapshot_memcg: Option<f64>,
    pub format: Format,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub ring_size: u32,
}

impl TryFrom<OomArgs> for OomConfig {
    type Error = Error;

    fn try_from(a: OomArgs) -> Result<Self, Error> {
        let ring_size = parse_ring_size(&a.ring_size)?;
        check_max_targets(a.max_targets)?;
        Ok(OomConfig {
            dir: a.dir,
            max_targets: a.max_targets,
            once: a.once,
            track_comms: a.track_comms,
            track_pids: a
                .track_pids
                .iter()
                .map(|p| parse_pid(p))
                .collect::<Result<Vec<_>, _>>()?,
            snapshot_rss: a
                .snapshot_rss
                .as_deref()
                .map(|s| crate::units::parse_size(s).map_err(|e| Error::Usage(format!("--snapshot-rss: {e}"))))
                .transpose()?,
            snapshot_memcg: a
                .snapshot_memcg
                .as_deref()
                .map(|s| {
                    crate::units::parse_percent(s)
                        .map_err(|e| Error::Usage(format!("--snapshot-memcg: {e}")))
                })
                .transpose()?,
            format: a.format,
            metrics_addr: parse_metrics_addr(a.metrics_addr.as_deref())?,
            ring_size,
        })
    }
}

/// Ring buffer sizes: BPF wants a power of two and a multiple of the page size; above 1 GiB
/// is locked kernel memory nobody needs.
const RING_SIZES: std::ops::RangeInclusive<u64> = 4096..=1 << 30;

fn parse_ring_size(s: &str) -> Result<u32, Error> {
    let bytes =
        crate::units::parse_size(s).map_err(|e| Error::Usage(format!("--ring-size: {e}")))?;
    match u32::try_from(bytes) {
        Ok(b) if b.is_power_of_two() && RING_SIZES.contains(&bytes) => Ok(b),
        _ => Err(Error::Usage(format!(
            "--ring-size {s}: must be a power of two from 4KiB to 1GiB (e.g. 8MiB, 16MiB)"
        ))),
    }
}

/// The largest byte-sampling rate: past 1 GiB a sample is rarer than most leaks are large.
pub const MAX_SAMPLE_RATE: u64 = 1 << 30;

fn parse_sample_rate(s: &str) -> Result<u64, Error> {
    let rate =
        crate::units::parse_size(s).map_err(|e| Error::Usage(format!("--sample-rate: {e}")))?;
    if rate > MAX_SAMPLE_RATE {
        return Err(Error::Usage(format!(
            "--sample-rate {s}: must be 0 (trace every allocation) or from 1B to 1GiB (e.g. 512KiB)"
        )));
    }
    Ok(rate)
}

fn parse_max_input_size(s: &str) -> Result<u64, Error> {
    match crate::units::parse_size(s) {
        Ok(0) => Err(Error::Usage(format!(
            "--max-input-size {s}: must be more than zero (e.g. 256MiB, 1GiB)"
        ))),
        Ok(n) => Ok(n),
        Err(e) => Err(Error::Usage(format!("--max-input-size: {e}"))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// gzip-compressed profile.proto (`go tool pprof`), Go heap-profile sample types.
    Pprof,
    /// One line per stack, frames root-first joined by `;`, weighted by surviving bytes.
    Folded,
    /// A flame graph (inferno).
    Svg,
}

impl Format {
    /// Binary or markup formats that make no sense on a terminal.
    pub fn needs_file(self) -> bool {
        matches!(self, Format::Pprof | Format::Svg)
    }
}

/// How top views group stacks, as pprof's `top` groups by function or line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Stack,
    Function,
    Line,
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Process to trace (repeatable; a thread id stands for its process). Mutually exclusive
    /// with a command after `--`.
    #[arg(short = 'p', long = "pid", allow_hyphen_values = true, value_name = "PID")]
    pub pids: Vec<String>,
    /// At most N processes (each gets its own probes); a longer -p list is refused.
    #[arg(long, default_value_t = crate::target::DEFAULT_MAX_TARGETS, value_name = "N")]
    pub max_targets: usize,
    /// Allocations younger than this are not reported as leaks (e.g. 500ms, 5s, 1m).
    #[arg(long, allow_hyphen_values = true, default_value = "5s", value_name = "DURATION")]
    pub min_age: String,
    /// Stop after this long (default: until Ctrl-C, SIGTERM or all targets exit).
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Also print a report every interval.
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION")]
    pub interval: Option<String>,
    /// Stacks to show per process (text and JSON; the other formats hold every stack).
    #[arg(long, allow_negative_numbers = true, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// Report format. JSON prints one document per report, one per line; pprof and svg need -o
    /// (with --interval the file is replaced by each report).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write reports to FILE instead of stdout (mode 0600, through a temporary and a rename;
    /// never through a symbolic link).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Group the top view by stack, by allocating function or by source line.
    #[arg(long, value_enum, default_value_t = GroupBy::Stack)]
    pub group_by: GroupBy,
    /// Serve Prometheus metrics at http://ADDR/metrics (`:9464` or a bare port: on 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Sample allocations by bytes (each byte with probability 1/BYTES, e.g. 512KiB) and scale
    /// the estimates; 0 traces every allocation.
    #[arg(long, allow_hyphen_values = true, default_value = "0", value_name = "BYTES")]
    pub sample_rate: String,
    /// With sampling: how many sampled live blocks the kernel remembers (overflow is counted).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1 << 20, value_name = "N")]
    pub max_sampled: u32,
    /// Attach the same probes with programs that do nothing (measures the probe floor).
    #[arg(long, hide = true)]
    pub empty_probes: bool,
    /// Keep in-flight allocator calls in the overflow map only (tests of the path taken when
    /// two threads' ids share an array slot).
    #[arg(long, hide = true)]
    pub pending_overflow_only: bool,
    /// Ring buffer size (a power of two from 4KiB to 1GiB, e.g. 16MiB). Events that find it
    /// full are lost (counted); it absorbs the drain's pauses.
    #[arg(long, allow_hyphen_values = true, default_value = "16MiB", value_name = "BYTES")]
    pub ring_size: String,
    /// Seed of the sampling draws, for reproducible tests (default: from the clock).
    #[arg(long, hide = true, value_name = "N")]
    pub sample_seed: Option<u64>,
    /// Command to launch and trace from its first allocation.
    // Arguments are passed to the command byte for byte, UTF-8 or not.
    #[arg(last = true, value_name = "CMD", value_parser = clap::value_parser!(std::ffi::OsString))]
    pub command: Vec<std::ffi::OsString>,
}

/// What to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pids(Vec<u32>),
    Launch(Vec<std::ffi::OsString>),
}

#[derive(Debug, Clone)]
pub struct TraceConfig {
    pub target: Target,
    pub min_age: Duration,
    pub duration: Option<Duration>,
    pub interval: Option<Duration>,
    pub top: usize,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub group_by: GroupBy,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub tuning: crate::probes::Tuning,
    pub ring_size: u32,
    pub max_targets: usize,
}

fn parse_metrics_addr(a: Option<&str>) -> Result<Option<std::net::SocketAddr>, Error> {
    a.map(|s| crate::metrics::parse_addr(s).map_err(|e| Error::Usage(format!("--metrics-addr: {e}"))))
        .transpose()
}

/// pprof and SVG are not for a terminal.
fn check_output(format: Format, output: &Option<PathBuf>) -> Result<(), Error> {
    use std::io::IsTerminal;
    if format.needs_file() && output.is_none() && std::io::stdout().is_terminal() {
        let ext = if format == Format::Svg { "svg" } else { "pb.gz" };
        return Err(Error::Usage(format!(
            "--format {}: this is not for a terminal; write it to a file with -o report.{ext}",
            if format == Format::Svg { "svg" } else { "pprof" }
        )));
    }
    Ok(())
}

impl TryFrom<TraceArgs> for TraceConfig {
    type Error = Error;

    fn try_from(a: TraceArgs) -> Result<Self, Error> {
        let target = match (a.pids.is_empty(), a.command.is_empty()) {
            (true, true) => {
                return Err(Error::Usage(
                    "nothing to trace: give -p PID, or a command after `--` (leaktrace trace -- ./prog)"
                        .into(),
                ));
            }
            (false, false) => {
                return Err(Error::Usage(
                    "give either -p PID or a command after `--`, not both".into(),
                ));
            }
            (false, true) => Target::Pids(
                a.pids
                    .iter()
                    .map(|p| parse_pid(p))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            (true, false) => Target::Launch(a.command),
        };
        let positive = |name: &str, v: &str| -> Result<Duration, Error> {
            let d = parse_duration(v).map_err(|e| Error::Usage(format!("--{name}: {e}")))?;
            if d.is_zero() {
                return Err(Error::Usage(format!(
                    "--{name}: must be more than zero (e.g. 500ms, 30s)"
                )));
            }
            Ok(d)
        };
        let ring_size = parse_ring_size(&a.ring_size)?;
        check_max_targets(a.max_targets)?;
        check_output(a.format, &a.output)?;
        let min_age =
            parse_duration(&a.min_age).map_err(|e| Error::Usage(format!("--min-age: {e}")))?;
        let duration = a.duration.as_deref().map(|v| positive("duration", v)).transpose()?;
        // As in audit: a block must outlive --min-age to be reported, and none can in a trace
        // no longer than that.
        if let (Some(d), Some(v)) = (duration, a.duration.as_deref())
            && d <= min_age
        {
            return Err(Error::Usage(format!(
                "--duration {v}: must be longer than --min-age {} (nothing could be reported \
                 otherwise)",
                a.min_age
            )));
        }
        Ok(TraceConfig {
            target,
            min_age,
            duration,
            interval: a.interval.as_deref().map(|v| positive("interval", v)).transpose()?,
            top: a.top,
            format: a.format,
            output: a.output,
            group_by: a.group_by,
            metrics_addr: parse_metrics_addr(a.metrics_addr.as_deref())?,
            tuning: crate::probes::Tuning {
                sample_rate: parse_sample_rate(&a.sample_rate)?,
                max_sampled: a.max_sampled,
                empty: a.empty_probes,
                overflow_only: a.pending_overflow_only,
                sample_seed: a.sample_seed,
            },
            ring_size,
            max_targets: a.max_targets,
        })
    }
}

fn parse_pid(s: &str) -> Result<u32, Error> {
    match s.trim().parse::<u32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Error::Usage(format!(
            "invalid PID '{s}': give a positive process id, as shown by `pgrep NAME`"
        ))),
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `1.5s`. A bare number is rejected: the unit is required
/// so that nobody has to guess it.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("invalid duration '{s}': must not be negative (e.g. 0s, 500ms, 30s)"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("invalid duration '{s}': add a unit, e.g. 500ms, 30s, 5m"))?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{s}': expected a number then ms, s, m or h"))?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "invalid duration '{s}': unknown unit '{unit}', use ms, s, m or h"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("invalid duration '{s}': too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5").unwrap_err().contains("add a unit"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("").is_err());
    }
}

#[cfg(test)]
mod cli_tests {
    use super::*;
    use clap::Parser;

    fn trace(args: &[&str]) -> Result<TraceConfig, Error> {
        let args = std::iter::once("leaktrace").chain(["trace", "-p", "1"]).chain(args.iter().copied());
        match Cli::try_parse_from(args).unwrap().command {
            Command::Trace(t) => TraceConfig::try_from(t),
            _ => unreachable!(),
        }
    }

    #[test]
    fn byte_options_take_units_and_ranges() {
        assert_eq!(trace(&["--ring-size", "16MiB"]).unwrap().ring_size, 16 << 20);
        assert_eq!(trace(&["--ring-size", "4096"]).unwrap().ring_size, 4096);
        assert_eq!(trace(&["--ring-size", "1GiB"]).unwrap().ring_size, 1 << 30);
        for bad in ["2GiB", "4GiB", "3MiB", "2048", "0"] {
            let e = trace(&["--ring-size", bad]).unwrap_err().to_string();
            assert!(e.contains("power of two from 4KiB to 1GiB"), "{bad}: {e}");
        }
        for (rate, want) in [("0", 0), ("1", 1), ("1B", 1), ("512KiB", 512 << 10), ("1GiB", 1 << 30)] {
            assert_eq!(trace(&["--sample-rate", rate]).unwrap().tuning.sample_rate, want);
        }
        for bad in ["1073741825", "2GiB", "1TiB", "18446744073709551615"] {
            let e = trace(&["--sample-rate", bad]).unwrap_err().to_string();
            assert!(e.contains("from 1B to 1GiB"), "{bad}: {e}");
        }
        assert!(trace(&["--min-age", "1h", "--duration", "1s"]).unwrap_err().to_string()
            .contains("must be longer than --min-age 1h"));
        assert!(trace(&["--min-age", "2s", "--duration", "2s"]).is_err());
        assert!(trace(&["--min-age", "1s", "--duration", "2s"]).is_ok());
        assert!(trace(&["--min-age", "-1s"]).unwrap_err().to_string().contains("must not be negative"));
    }
}
