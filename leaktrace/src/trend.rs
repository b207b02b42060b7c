//! RSS history and its shape: a bounded ring of (time, RSS) samples and a classifier that
//! says whether memory was growing (leak-like), tidal (fills and frees back), flat, or unknown.
//!
//! Pure: it does no sampling (see `procinfo::rss_bytes`) and no rendering beyond the one
//! `explanation` sentence. `oom` uses it on the victim's last seconds, `audit` on each audited
//! process's window.

use std::collections::VecDeque;

use serde::Serialize;

use crate::units::human_bytes;

/// One RSS reading. `t_ms` is milliseconds on any clock that is monotonic within one
/// history (the sampler's `Instant` offset); only differences are used.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub t_ms: u64,
    pub rss_bytes: u64,
}

/// A bounded ring of samples: pushing into a full ring drops the oldest, so a long-lived
/// process costs a fixed amount of memory and the classifier sees the recent window.
#[derive(Clone, Debug)]
pub struct History {
    cap: usize,
    ring: VecDeque<Sample>,
}

impl History {
    /// A ring holding at most `capacity` samples (at least 1).
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(1);
        History {
            cap,
            ring: VecDeque::with_capacity(cap),
        }
    }

    pub fn push(&mut self, s: Sample) {
        if self.ring.len() == self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back(s);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.ring.iter().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TrendClass {
    Growing,
    Tidal,
    Flat,
    Unknown,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Trend {
    pub class: TrendClass,
    /// Least-squares slope over the whole window.
    pub slope_bytes_per_s: f64,
    pub samples: usize,
    pub min_bytes: u64,
    pub max_bytes: u64,
    pub first_bytes: u64,
    pub last_bytes: u64,
    /// Fraction of consecutive steps that did not go down (0 with fewer than 2 samples).
    pub monotonic_fraction: f64,
    /// Significant falls: peak-to-trough declines of at least a quarter of the range
    /// (0 when Flat, where a quarter of the range is noise).
    pub drops: usize,
    /// One sentence with the numbers behind `class`.
    pub explanation: String,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Classifies a window of samples (oldest first; out-of-order times are the caller's bug
/// and only make the slope meaningless, never panic).
///
/// Let `range = max - min` and `q = range / 4`. The rules, in order:
///
/// 1. **Unknown** with fewer than 2 samples, or when all samples share one timestamp.
/// 2. **Flat** when `range < max(1 MiB, 5% of the mean)`: allocator noise, not a trend.
/// 3. **Growing** when the slope is positive and either
///    - *steady*: no significant drop, at least 80% of steps non-negative, and the last
///      sample within 10% of the range of the maximum (it has not fallen back); or
///    - *climbing floor* (a sawtooth whose baseline rises: a leak under a workload that
///      also frees): the lowest sample of the last quarter of the window is at least half
///      the range above the lowest sample of the first quarter, and no fill-and-free cycle
///      returned to the baseline after the first quarter. The floor is what the process never
///      gives back, so when it rises by half the range the upward trend explains most of
///      the movement, whatever the teeth do. The baseline-return condition keeps a
///      fill-free-fill workload that the window cuts off mid-fill (its last-quarter minimum
///      is also about half the range up) Tidal rather than Growing.
/// 4. **Tidal** when at least one full cycle happened: a rise of at least `q` to a peak, then
///    a fall of at least `q` to a trough within `q` of the window's minimum.
/// 5. Otherwise **Unknown** (e.g. a steady decline, or a single step up that then fell
///    part of the way back); the explanation gives the numbers.
///
/// Peaks and troughs come from a zig-zag with hysteresis `q`, so noise smaller than a
/// quarter of the range neither splits one fall into two nor counts as a fall.
pub fn classify(samples: &[Sample]) -> Trend {
    let n = samples.len();
    let mut t = Trend {
        class: TrendClass::Unknown,
        slope_bytes_per_s: 0.0,
        samples: n,
        min_bytes: samples.iter().map(|s| s.rss_bytes).min().unwrap_or(0),
        max_bytes: samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0),
        first_bytes: samples.first().map_or(0, |s| s.rss_bytes),
        last_bytes: samples.last().map_or(0, |s| s.rss_bytes),
        monotonic_fraction: 0.0,
        drops: 0,
        explanation: String::new(),
    };
    if n < 2 {
        t.explanation = format!(
            "only {n} sample{}; a trend needs at least 2",
            if n == 1 { "" } else { "s" }
        );
        return t;
    }
    let t0 = samples[0].t_ms;
    let span_s = samples[n - 1].t_ms.saturating_sub(t0) as f64 / 1000.0;
    let slope = match least_squares_slope(samples) {
        Some(s) => s,
        None => {
            t.explanation = format!("all {n} samples share one timestamp; no rate to compute");
            return t;
        }
    };
    t.slope_bytes_per_s = slope;
    let ups = samples
        .windows(2)
        .filter(|w| w[1].rss_bytes >= w[0].rss_bytes)
        .count();
    t.monotonic_fraction = ups as f64 / (n - 1) as f64;

    let (min, max) = (t.min_bytes as f64, t.max_bytes as f64);
    let range = max - min;
    let mean = samples.iter().map(|s| s.rss_bytes as f64).sum::<f64>() / n as f64;
    let q = range / 4.0;

    let span = format!("{span_s:.1} s");
    let rate = format!("{}/s", signed_bytes(slope));
    let flat_band = MIB.max(0.05 * mean);
    if range < flat_band {
        t.class = TrendClass::Flat;
        t.explanation = format!(
            "stayed within {} (between {} and {}) over {span}",
            human_bytes(range as u64),
            human_bytes(t.min_bytes),
            human_bytes(t.max_bytes),
        );
        return t;
    }
    // After the Flat check: a quarter of a noise band is noise, so Flat reports 0 drops.
    let z = zigzag(samples, min, q);
    t.drops = z.drops;

    let quarter = n.div_ceil(4);
    let floor = |s: &[Sample]| s.iter().map(|s| s.rss_bytes).min().unwrap_or(0) as f64;
    let floor_rise = floor(&samples[n - quarter..]) - floor(&samples[..quarter]);
    let late_return = z.baseline_returns.iter().any(|&i| i >= quarter);
    let last = t.last_bytes as f64;
    let steady = z.drops == 0 && t.monotonic_fraction >= 0.8 && max - last <= 0.1 * range;
    let climbing_floor = floor_rise >= 0.5 * range && !late_return;
    let growth = signed_bytes(last - t.first_bytes as f64);
    let pct_up = (t.monotonic_fraction * 100.0).round();
    if slope > 0.0 && steady {
        t.class = TrendClass::Growing;
        t.explanation = format!("grew {growth} over {span} ({rate}), {pct_up}% of steps up");
    } else if slope > 0.0 && climbing_floor {
        t.class = TrendClass::Growing;
        t.explanation = format!(
            "grew {growth} over {span} ({rate}) in a sawtooth: it fell back along the way, but its floor rose {} ({:.0}% of the {} range)",
            human_bytes(floor_rise as u64),
            floor_rise / range * 100.0,
            human_bytes(range as u64),
        );
    } else if !z.baseline_returns.is_empty() {
        let k = z.baseline_returns.len();
        t.class = TrendClass::Tidal;
        t.explanation = format!(
            "rose and fell back to its {} baseline {} over {span} (range {}, peak {}, slope {rate})",
            human_bytes(t.min_bytes),
            if k == 1 {
                "once".to_string()
            } else {
                format!("{k} times")
            },
            human_bytes(range as u64),
            human_bytes(t.max_bytes),
        );
    } else {
        t.explanation = format!(
            "no clear pattern: went from {} to {} over {span} ({rate}), range {}, {} significant drop{}, {pct_up}% of steps up",
            human_bytes(t.first_bytes),
            human_bytes(t.last_bytes),
            human_bytes(range as u64),
            z.drops,
            if z.drops == 1 { "" } else { "s" },
        );
    }
    t
}

/// Bytes per second of the least-squares line through the samples, or None when the times
/// do not vary. Times are taken relative to the first sample so that f64 keeps precision.
fn least_squares_slope(samples: &[Sample]) -> Option<f64> {
    let n = samples.len() as f64;
    let t0 = samples.first()?.t_ms as f64;
    let xs = samples.iter().map(|s| (s.t_ms as f64 - t0) / 1000.0);
    let mx = xs.clone().sum::<f64>() / n;
    let my = samples.iter().map(|s| s.rss_bytes as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, s) in xs.zip(samples) {
        sxy += (x - mx) * (s.rss_bytes as f64 - my);
        sxx += (x - mx) * (x - mx);
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

struct Zigzag {
    drops: usize,
    /// Sample index of each trough that ended a full cycle (a rise of at least `q`, then a
    /// fall of at least `q`) within `q` of the window minimum.
    baseline_returns: Vec<usize>,
}

/// Walks peaks and troughs with hysteresis `q`: a fall counts once it is `q` below the peak,
/// and ends once the series climbs `q` above the trough.
fn zigzag(samples: &[Sample], min: f64, q: f64) -> Zigzag {
    let mut z = Zigzag {
        drops: 0,
        baseline_returns: Vec::new(),
    };
    let Some(first) = samples.first() else {
        return z;
    };
    let v0 = first.rss_bytes as f64;
    let (mut peak, mut low_before_peak, mut run_min) = (v0, v0, v0);
    let mut falling = false;
    let (mut trough, mut trough_at, mut rose) = (v0, 0, false);
    // A fall that followed a real rise and ended near the window minimum is a full cycle.
    let end_fall = |z: &mut Zigzag, rose: bool, trough: f64, at: usize| {
        if rose && trough - min <= q {
            z.baseline_returns.push(at);
        }
    };
    for (i, s) in samples.iter().enumerate().skip(1) {
        let v = s.rss_bytes as f64;
        if !falling {
            run_min = run_min.min(v);
            if v > peak {
                peak = v;
                low_before_peak = run_min;
            } else if q > 0.0 && peak - v >= q {
                falling = true;
                z.drops += 1;
                rose = peak - low_before_peak >= q;
                (trough, trough_at) = (v, i);
            }
        } else if v < trough {
            (trough, trough_at) = (v, i);
        } else if v - trough >= q {
            end_fall(&mut z, rose, trough, trough_at);
            falling = false;
            (peak, low_before_peak, run_min) = (v, trough, trough);
        }
    }
    if falling {
        end_fall(&mut z, rose, trough, trough_at);
    }
    z
}

/// "+1.5 MiB" / "-512 B": human_bytes with a sign, for slopes and net changes.
fn signed_bytes(v: f64) -> String {
    let sign = if v < 0.0 { "-" } else { "" };
    format!("{sign}{}", human_bytes(v.abs().round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    /// Samples every 100 ms from the given RSS values.
    fn series(values: impl IntoIterator<Item = u64>) -> Vec<Sample> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, rss_bytes)| Sample {
                t_ms: 1_000 + i as u64 * 100,
                rss_bytes,
            })
            .collect()
    }

    fn show(name: &str, t: &Trend) {
        println!(
            "{name}: {:?} slope {:.0} drops {} mono {:.2}: {}",
            t.class, t.slope_bytes_per_s, t.drops, t.monotonic_fraction, t.explanation
        );
    }

    #[test]
    fn ring_drops_oldest() {
        let mut h = History::new(3);
        assert!(h.is_empty());
        for i in 0..5 {
            h.push(Sample {
                t_ms: i,
                rss_bytes: i * 10,
            });
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.capacity(), 3);
        let ts: Vec<u64> = h.samples().iter().map(|s| s.t_ms).collect();
        assert_eq!(ts, [2, 3, 4]);
        assert_eq!(History::new(0).capacity(), 1);
    }

    #[test]
    fn linear_ramp_is_growing() {
        // 100 MiB + 1 MiB per 100 ms for 3 s.
        let s = series((0..=30).map(|i| 100 * MB + i * MB));
        let t = classify(&s);
        show("ramp", &t);
        assert_eq!(t.class, TrendClass::Growing);
        assert!(
            (t.slope_bytes_per_s - 10.0 * MB as f64).abs() < 1.0,
            "{}",
            t.slope_bytes_per_s
        );
        assert_eq!(
            (t.first_bytes, t.last_bytes, t.min_bytes, t.max_bytes),
            (100 * MB, 130 * MB, 100 * MB, 130 * MB)
        );
        assert_eq!(t.monotonic_fraction, 1.0);
        assert_eq!(t.drops, 0);
        assert_eq!(
            t.explanation,
            "grew 30.0 MiB over 3.0 s (10.0 MiB/s), 100% of steps up"
        );
    }

    #[test]
    fn fill_and_free_three_times_is_tidal() {
        // Baseline 50 MiB, fill by 10 MiB steps to 150 MiB, free back, three times.
        let cycle = (0..10).map(|i| 50 * MB + i * 10 * MB);
        let s = series(
            cycle
                .clone()
                .chain(cycle.clone())
                .chain(cycle)
                .chain([50 * MB]),
        );
        let t = classify(&s);
        show("tidal", &t);
        assert_eq!(t.class, TrendClass::Tidal);
        assert_eq!(t.drops, 3);
        assert!(t.explanation.contains("3 times"), "{}", t.explanation);
    }

    #[test]
    fn fill_free_fill_cut_off_mid_fill_is_tidal() {
        let cycle = (0..=10).map(|i| 50 * MB + i * 10 * MB);
        let s = series(cycle.clone().chain(cycle));
        let t = classify(&s);
        show("tidal2", &t);
        assert_eq!(t.class, TrendClass::Tidal);
        assert_eq!(t.drops, 1);
        assert!(t.explanation.contains("baseline once"), "{}", t.explanation);
    }

    #[test]
    fn noise_is_flat() {
        // 200 MiB +- 100 KiB, deterministic pseudo-noise.
        let s = series((0..50u64).map(|i| 200 * MB - 100 * 1024 + (i * 7919 % 201) * 1024));
        let t = classify(&s);
        show("flat", &t);
        assert_eq!(t.class, TrendClass::Flat);
        assert!(
            t.explanation.starts_with("stayed within"),
            "{}",
            t.explanation
        );
        assert_eq!(t.drops, 0);
    }

    #[test]
    fn climbing_sawtooth_is_growing() {
        // Each tooth climbs 60 MiB and frees 45 MiB: the floor rises 15 MiB a tooth.
        // Ends just after a free, so the last sample is well below the maximum.
        let mut v = Vec::new();
        for k in 0..10u64 {
            let base = 100 * MB + k * 15 * MB;
            v.extend((0..=6).map(|i| base + i * 10 * MB));
        }
        v.push(100 * MB + 10 * 15 * MB);
        let t = classify(&series(v));
        show("sawtooth", &t);
        assert_eq!(t.class, TrendClass::Growing);
        assert!(t.last_bytes + 20 * MB < t.max_bytes, "not the steady rule");
        assert!(t.explanation.contains("floor rose"), "{}", t.explanation);
    }

    #[test]
    fn one_sample_is_unknown() {
        let t = classify(&series([5 * MB]));
        assert_eq!(t.class, TrendClass::Unknown);
        assert_eq!(
            (t.samples, t.first_bytes, t.last_bytes),
            (1, 5 * MB, 5 * MB)
        );
        assert_eq!(t.explanation, "only 1 sample; a trend needs at least 2");
        assert_eq!(classify(&[]).class, TrendClass::Unknown);
    }

    #[test]
    fn two_rising_samples_are_growing() {
        let t = classify(&series([100 * MB, 110 * MB]));
        show("two", &t);
        assert_eq!(t.class, TrendClass::Growing);
        assert!((t.slope_bytes_per_s - 100.0 * MB as f64).abs() < 1.0);
    }

    #[test]
    fn decline_and_same_time_are_unknown() {
        let t = classify(&series((0..20).map(|i| 300 * MB - i * 10 * MB)));
        show("decline", &t);
        assert_eq!(t.class, TrendClass::Unknown);
        assert_eq!(t.drops, 1);
        let same = [
            Sample {
                t_ms: 5,
                rss_bytes: 0,
            },
            Sample {
                t_ms: 5,
                rss_bytes: 100 * MB,
            },
        ];
        assert_eq!(classify(&same).class, TrendClass::Unknown);
    }

    #[test]
    fn serializes_snake_case() {
        let t = classify(&series([100 * MB, 110 * MB]));
        let j = serde_json::to_value(&t).unwrap();
        assert_eq!(j["class"], "growing");
        assert_eq!(j["samples"], 2);
    }
}
