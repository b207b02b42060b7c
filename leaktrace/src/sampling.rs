//! Byte sampling, userspace half: the exponential draws the kernel's per-CPU countdowns are
//! refilled from (BPF has no floating point). The countdown itself is
//! `leaktrace_common::countdown_step`, shared with the kernel; the weighting of sampled blocks
//! is `aggregate::weight`. The tests here run those three together over seeded synthetic leaks.

/// A seed from the clock: the sampling needs independence between runs, not secrecy.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
}

/// xorshift64: small, seedable, and plenty for sampling.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams; never 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        XorShift((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let x = &mut self.0;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }
}

/// `n` draws of an exponential distribution with mean `rate` (the gaps between samples of a
/// Poisson process over bytes), at least 1 each, from `seed`.
///
/// Rounded up, not to the nearest: a draw `ceil(X)` is at most `size` exactly when `X` is, so an
/// allocation is sampled with probability `1 - exp(-size / rate)`, the probability its weight
/// assumes (`aggregate::weight`), and the leftover countdown stays memoryless. Rounding to the
/// nearest sampled a 16-byte block at a 4 KiB rate 3% too often, and underestimated it as much.
pub fn exponential_draws(rate: u64, n: u32, seed: u64) -> Vec<u64> {
    let mut rng = XorShift::new(seed);
    (0..n)
        .map(|_| {
            // u in (0, 1]: never ln(0).
            let u = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            ((-u.ln()) * rate as f64).ceil().max(1.0) as u64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use leaktrace_common::{Event, EventKind, SAMPLE_DRAWS, countdown_step};

    use super::*;
    use crate::aggregate::{Aggregator, Pid, StackId};

    const P: u32 = 100;

    #[test]
    fn exponential_draws_have_the_rate_as_mean() {
        let d = exponential_draws(65536, 100_000, 7);
        let mean = d.iter().sum::<u64>() as f64 / d.len() as f64;
        assert!((mean / 65536.0 - 1.0).abs() < 0.02, "mean {mean}");
        assert!(d.iter().all(|&x| x >= 1));
        assert_eq!(
            d,
            exponential_draws(65536, 100_000, 7),
            "a seed gives the same draws"
        );
    }

    /// A fresh draw is at most `size` with the probability the weights assume,
    /// `1 - exp(-size / rate)`, even for sizes of a few bytes (rates go down to 1 B).
    #[test]
    fn draws_are_at_most_a_size_with_the_weighted_probability() {
        const RATE: u64 = 64;
        let draws: Vec<u64> = (0..100)
            .flat_map(|seed| exponential_draws(RATE, SAMPLE_DRAWS, seed))
            .collect();
        for size in [1u64, 8, 32] {
            let seen = draws.iter().filter(|&&d| d <= size).count() as f64 / draws.len() as f64;
            let p = 1.0 / crate::aggregate::weight(size, RATE);
            assert!(
                (seen / p - 1.0).abs() < 0.04,
                "size {size}: P(draw <= size) = {seen:.4}, weighted as {p:.4}"
            );
        }
    }

    /// One run of the byte sampler as the probes run it: the kernel's countdown step on per-CPU
    /// countdowns (fresh, as a newly loaded program's are), refilled from this run's pool of
    /// draws at random indices, and every sampled allocation and its free fed to the aggregator,
    /// which weights what stays outstanding.
    struct Run {
        pool: Vec<u64>,
        pick: XorShift,
        countdown: Vec<i64>,
        agg: Aggregator,
        sampled: std::collections::HashSet<u64>,
        next_addr: u64,
    }

    impl Run {
        fn new(rate: u64, cpus: usize, seed: u64) -> Self {
            let mut agg = Aggregator::new(Duration::ZERO);
            agg.track(Pid(P));
            agg.set_sample_rate(rate);
            Run {
                pool: exponential_draws(rate, SAMPLE_DRAWS, seed),
                pick: XorShift::new(!seed),
                countdown: vec![0; cpus],
                agg,
                sampled: Default::default(),
                next_addr: 0x1000,
            }
        }

        fn event(&mut self, kind: EventKind, addr: u64, size: u64) {
            let ev = Event {
                kind: kind as u32,
                pid: P,
                tid: P,
                ts_ns: 1,
                addr,
                size,
                ..Event::default()
            };
            self.agg.apply(&ev, StackId(1));
        }

        /// An allocation of `size` on `cpu`; returns its address.
        fn alloc(&mut self, cpu: usize, size: u64) -> u64 {
            let addr = self.next_addr;
            self.next_addr += size.max(1);
            let (pool, pick) = (&self.pool, &mut self.pick);
            let draw = || {
                // As the kernel: bpf_get_prandom_u32() % SAMPLE_DRAWS, a draw of at least 1.
                let i = (pick.next_u64() >> 32) as usize % SAMPLE_DRAWS as usize;
                (pool[i] as i64).max(1)
            };
            if countdown_step(&mut self.countdown[cpu], size, draw) {
                self.sampled.insert(addr);
                self.event(EventKind::Alloc, addr, size);
            }
            addr
        }

        fn free(&mut self, addr: u64) {
            // The kernel reports the free of a sampled block only.
            if self.sampled.remove(&addr) {
                self.event(EventKind::Free, addr, 0);
            }
        }

        fn estimate(&self) -> f64 {
            self.agg.stats(Pid(P)).unwrap().outstanding_bytes as f64
        }
    }

    /// The criterion: over 50 seeded runs at 4 KiB, 64 KiB and 1 MiB, the mean estimate
    /// of a known leak is within 10% of its true total. The leak mixes sizes far below and
    /// above the rates, spread over 4 CPUs among as many allocations that are freed.
    #[test]
    fn the_mean_estimate_of_a_known_leak_is_its_true_total() {
        const SIZES: [u64; 5] = [16, 200, 1000, 4096, 100_000];
        let leaked: u64 = 4000 * SIZES.iter().sum::<u64>();
        for rate in [4 << 10, 64 << 10, 1 << 20] {
            let mut estimates = Vec::new();
            for seed in 0..50u64 {
                let mut run = Run::new(rate, 4, seed);
                let mut cpu_rng = XorShift::new(seed ^ 0x5eed);
                for i in 0..20_000usize {
                    let cpu = (cpu_rng.next_u64() % 4) as usize;
                    run.alloc(cpu, SIZES[i % SIZES.len()]);
                    let churn = run.alloc(cpu, SIZES[(i + 2) % SIZES.len()]);
                    run.free(churn);
                }
                estimates.push(run.estimate());
            }
            let mean = estimates.iter().sum::<f64>() / estimates.len() as f64;
            let err = mean / leaked as f64 - 1.0;
            eprintln!(
                "rate {rate}: mean of 50 estimates {mean:.0}, true {leaked} ({:+.2}%)",
                100.0 * err
            );
            assert!(
                err.abs() < 0.10,
                "rate {rate}: mean estimate {mean:.0}, true {leaked} ({:+.1}%)",
                100.0 * err
            );
        }
    }

    /// A fresh CPU's first allocation is sampled with its probability, not for certain: one
    /// 33 KB block first on each of 64 CPUs, over 1000 seeded runs at 1 MiB, is estimated at
    /// 33 KB on average (it was 32 times that when every countdown started at 0); at 1 GiB it
    /// is essentially never sampled (it was estimated at about 1 GiB).
    #[test]
    fn the_first_allocation_on_each_cpu_is_weighted_fairly() {
        const SIZE: u64 = 33_000;
        const CPUS: usize = 64;
        let mut total = 0.0;
        for seed in 0..1000u64 {
            let mut run = Run::new(1 << 20, CPUS, seed);
            for cpu in 0..CPUS {
                run.alloc(cpu, SIZE);
            }
            total += run.estimate();
        }
        let mean = total / (1000 * CPUS) as f64;
        eprintln!("first allocations of {SIZE} B at 1 MiB: mean estimate {mean:.0}");
        assert!(
            (mean / SIZE as f64 - 1.0).abs() < 0.10,
            "mean estimate {mean:.0} of a {SIZE}-byte block"
        );

        let mut sampled = 0;
        for seed in 0..1000u64 {
            let mut run = Run::new(1 << 30, 2, seed);
            run.alloc(0, SIZE);
            run.alloc(1, SIZE);
            sampled += run.sampled.len();
        }
        // Expected: 2000 x 33000 / 2^30 = 0.06.
        assert!(
            sampled <= 1,
            "{sampled} of 2000 first allocations sampled at 1 GiB"
        );
    }
}
