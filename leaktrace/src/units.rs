//! Units that users type and read: byte sizes (`64MiB`), percentages (`80%`), human byte
//! counts (`1.5 KiB`) and UTC timestamps (RFC 3339 and a file-name-safe form).
//!
//! Owns only the text <-> number conversions. It does not know which option a value came
//! from (the caller prefixes `--snapshot-rss: ` and the like) and does no I/O.

use std::time::{SystemTime, UNIX_EPOCH};

const SIZE_HINT: &str = "use a number with B, KiB, MiB, GiB or TiB (e.g. 64MiB)";

/// Parses a byte size: `4096`, `512K`, `512KiB`, `64M`, `64MiB`, `1G`, `1.5GiB`, `2T`.
///
/// Every prefix is a power of 1024, whether it is spelled `K`, `KB` or `KiB`: nobody sizing a
/// memory limit means 10^6 by `64M`, and the kernel's own `memory.limit_in_bytes` accepts
/// `64M` as 64 MiB too. Suffixes are case-insensitive and may follow a space. A bare number is
/// bytes. Fractions are allowed and rounded to the nearest byte.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size '{s}': {SIZE_HINT}");
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("invalid size '{s}': must not be negative ({SIZE_HINT})"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let too_large = || format!("invalid size '{s}': too large (at most {} bytes)", u64::MAX);
    if num.contains('.') {
        // Integers take the exact path below; only fractions go through f64, whose 53-bit
        // mantissa is plenty for "1.5GiB".
        let v: f64 = num.parse().map_err(|_| bad())?;
        let bytes = (v * (1u64 << shift) as f64).round();
        // 2^64 is exactly representable; anything at or above it does not fit.
        if !bytes.is_finite() || bytes >= 18_446_744_073_709_551_616.0 {
            return Err(too_large());
        }
        Ok(bytes as u64)
    } else {
        let v: u64 = num.parse().map_err(|_| too_large())?;
        v.checked_mul(1u64 << shift).ok_or_else(too_large)
    }
}

/// Parses a percentage in (0, 100]: `80`, `80%`, `92.5`.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim_end();
    // f64::from_str also takes "inf", "NaN" and "1e2"; only plain decimals are meant here.
    let plain = !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.');
    match t.parse::<f64>() {
        Ok(v) if plain && v > 0.0 && v <= 100.0 => Ok(v),
        _ => Err(format!(
            "invalid percentage '{s}': use a number above 0 and at most 100 (e.g. 80 or 80%)"
        )),
    }
}

/// 1536 -> "1.5 KiB", 512 -> "512 B". Powers of 1024, one decimal.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Formats `t` in UTC as (`2026-11-23T11:44:30.123Z`, `20261123T114430.123Z`).
///
/// The second form has no `:` so it can name a file on any filesystem and still sorts by
/// time. Milliseconds are truncated, not rounded, so a timestamp never points past the event.
/// Times before 1970 are formatted too (a clock set to 0 should not make a report unwritable).
pub fn utc_timestamp(t: SystemTime) -> (String, String) {
    let ms: i64 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |m| -m),
    };
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (h, mi, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z"),
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{milli:03}Z"),
    )
}

/// Days since 1970-01-01 -> proleptic Gregorian (year, month 1..=12, day 1..=31).
///
/// Howard Hinnant's `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>):
/// shift the epoch to 0000-03-01 so the leap day ends the year, then split into 400-year eras
/// of 146097 days. Exact for every `i64` day count this module can produce.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of March-based year, [0, 365]
    let mp = (5 * doy + 2) / 153; // March = 0, [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size(" 8M "), Ok(8 << 20));
    }

    #[test]
    fn bad_sizes_name_the_input_and_say_what_to_type() {
        assert_eq!(
            parse_size("12parsecs"),
            Err("invalid size '12parsecs': use a number with B, KiB, MiB, GiB or TiB (e.g. 64MiB)".into())
        );
        for s in [
            "", "MiB", "-1M", "1.M", ".5M", "1.2.3G", "1e3", "64 M i B", "NaN",
        ] {
            let e = parse_size(s).unwrap_err();
            assert!(
                e.contains(&format!("'{s}'")) && e.contains("64MiB"),
                "{s}: {e}"
            );
        }
        for s in [
            "99999999999999999999",
            "16777216TiB",
            "20000000000000000000.5",
        ] {
            let e = parse_size(s).unwrap_err();
            assert!(e.contains("too large"), "{s}: {e}");
        }
        assert_eq!(parse_size("16777215TiB"), Ok(16_777_215 << 40));
    }

    #[test]
    fn percents() {
        assert_eq!(parse_percent("80"), Ok(80.0));
        assert_eq!(parse_percent("80%"), Ok(80.0));
        assert_eq!(parse_percent("92.5"), Ok(92.5));
        assert_eq!(parse_percent("100"), Ok(100.0));
        assert_eq!(parse_percent(" 0.1 % "), Ok(0.1));
        for s in [
            "0", "0%", "100.01", "-5", "", "%", "abc", "inf", "NaN", "1e2", "80%%",
        ] {
            let e = parse_percent(s).unwrap_err();
            assert!(
                e.starts_with(&format!("invalid percentage '{s}'")),
                "{s}: {e}"
            );
        }
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(48 << 20), "48.0 MiB");
    }

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn timestamps() {
        let ts = |t| utc_timestamp(t);
        assert_eq!(
            ts(at(0, 0)),
            (
                "1970-01-01T00:00:00.000Z".into(),
                "19700101T000000.000Z".into()
            )
        );
        assert_eq!(ts(at(951_782_400, 0)).0, "2000-02-29T00:00:00.000Z");
        assert_eq!(ts(at(951_782_400 - 1, 999)).0, "2000-02-28T23:59:59.999Z");
        assert_eq!(
            ts(at(1_795_434_270, 123)),
            (
                "2026-11-23T11:44:30.123Z".into(),
                "20261123T114430.123Z".into()
            )
        );
        // 2100 is not a leap year: Feb 28 is followed by Mar 1.
        assert_eq!(ts(at(4_107_542_400, 0)).0, "2100-03-01T00:00:00.000Z");
        assert_eq!(
            ts(at(4_107_542_400 - 86_400, 0)).0,
            "2100-02-28T00:00:00.000Z"
        );
        // Sub-millisecond parts are truncated.
        assert_eq!(
            ts(at(0, 0) + Duration::from_micros(1999)).0,
            "1970-01-01T00:00:00.001Z"
        );
        // Before the epoch.
        assert_eq!(
            ts(UNIX_EPOCH - Duration::from_millis(1)).0,
            "1969-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }
}

/// Parses a rate such as `1MiB/min`, `100KiB/s`, `64KiB/s`, `2GiB/h` into bytes per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let bad = || {
        format!("invalid rate '{s}': use a size per time unit, e.g. 100KiB/s, 1MiB/min, 1GiB/h")
    };
    let (size, per) = s.trim().split_once('/').ok_or_else(bad)?;
    let bytes = parse_size(size).map_err(|_| bad())? as f64;
    let secs = match per.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86400.0,
        _ => return Err(bad()),
    };
    Ok(bytes / secs)
}

#[cfg(test)]
mod rate_tests {
    use super::parse_rate;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100KiB/s"), Ok(102400.0));
        assert_eq!(parse_rate("1MiB/min"), Ok(1048576.0 / 60.0));
        assert_eq!(parse_rate("1GiB/h"), Ok(1073741824.0 / 3600.0));
        assert!(parse_rate("12parsecs").unwrap_err().contains("invalid rate '12parsecs'"));
        assert!(parse_rate("1MiB/fortnight").is_err());
    }
}
