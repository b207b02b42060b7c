//! pprof rendering: one gzip-compressed profile.proto per report, laid out as a Go heap profile
//! (`alloc_objects`, `alloc_space`, `inuse_objects`, `inuse_space`) so that `go tool pprof`
//! and anything else that reads Go heap profiles shows leaks the way it shows Go's own.
//!
//! Owns the protobuf messages (written by hand with prost's derive: there is no protoc here) and
//! the mapping from the report model to them. It does not decide which stacks or mappings go in:
//! the report builder does (`Context::for_pprof`).
use std::{collections::HashMap, io::Write};

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::{Frame, MappingReport, ProcessReport, Report};

/// The messages of github.com/google/pprof/proto/profile.proto, field numbers as there.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, packed = "true", tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, packed = "true", tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        /// Innermost (inlined) function first; the last is the caller they were inlined into.
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
        #[prost(int64, tag = "3")]
        pub column: i64,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

use proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

pub fn render(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let bytes = build(r).encode_to_vec();
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&bytes)?;
    gz.finish()?;
    Ok(())
}

/// The profile for `r`, uncompressed.
pub fn build(r: &Report) -> Profile {
    let mut b = Builder::default();
    b.intern("");
    let vt = |b: &mut Builder, t: &str, u: &str| ValueType {
        r#type: b.intern(t),
        unit: b.intern(u),
    };
    // Go's order; its tools (and ours) find the values by name, but some readers by position.
    b.p.sample_type = vec![
        vt(&mut b, "alloc_objects", "count"),
        vt(&mut b, "alloc_space", "bytes"),
        vt(&mut b, "inuse_objects", "count"),
        vt(&mut b, "inuse_space", "bytes"),
    ];
    b.p.default_sample_type = b.intern("inuse_space");
    b.p.period_type = Some(vt(&mut b, "space", "bytes"));
    // pprof's own reader of unsampled legacy heap profiles sets period 1; values are never
    // scaled by it, only shown.
    b.p.period = r.sample_rate.filter(|&n| n > 1).map_or(1, |n| n as i64);
    b.p.time_nanos = rfc3339_unix_nanos(&r.time).unwrap_or(0);
    b.p.duration_nanos = (r.elapsed_ms as i64).saturating_mul(1_000_000);
    let comment = format!(
        "leaktrace: inuse_* are blocks still live and older than {} ms; alloc_* are every allocation seen",
        r.min_age_ms
    );
    b.p.comment = vec![b.intern(&comment)];
    for p in &r.processes {
        b.process(p);
    }
    let mut p = std::mem::take(&mut b.p);
    p.string_table = b.strings;
    p
}

#[derive(Default)]
struct Builder {
    p: Profile,
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    /// (name, filename) string ids -> function id.
    functions: HashMap<(i64, i64), u64>,
    /// (pid, address) -> location id.
    locations: HashMap<(u32, u64), u64>,
}

impl Builder {
    /// Every string goes through [`crate::escape::text`]: `go tool pprof -top` and its peers print
    /// them raw, and names the traced process chose must not drive the reader's terminal.
    fn intern(&mut self, s: &str) -> i64 {
        let s = &*crate::escape::text(s);
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    fn process(&mut self, p: &ProcessReport) {
        // Mapping ids are profile-wide; this process's mappings are `first..first + len`.
        let first = self.p.mapping.len() as u64 + 1;
        for (i, m) in p.mappings.iter().enumerate() {
            let mapping = Mapping {
                id: first + i as u64,
                memory_start: m.start,
                memory_limit: m.end,
                file_offset: m.offset,
                filename: self.intern(&m.path),
                build_id: self.intern(m.build_id.as_deref().unwrap_or("")),
                ..Mapping::default()
            };
            self.p.mapping.push(mapping);
        }
        let pid_key = self.intern("pid");
        let comm_key = self.intern("comm");
        let kind_key = self.intern("kind");
        let comm = self.intern(&p.comm);
        for s in &p.stacks {
            let value = [s.alloc_count, s.alloc_bytes, s.count, s.bytes].map(|v| v as i64);
            if value.iter().all(|&v| v == 0) {
                continue;
            }
            let location_id = inline_groups(&s.frames)
                .map(|group| self.location(p, first, group))
                .collect();
            let kind = self.intern(s.kind);
            self.p.sample.push(Sample {
                location_id,
                value: value.to_vec(),
                label: vec![
                    Label {
                        key: pid_key,
                        num: i64::from(p.pid),
                        ..Label::default()
                    },
                    Label {
                        key: comm_key,
                        str: comm,
                        ..Label::default()
                    },
                    Label {
                        key: kind_key,
                        str: kind,
                        ..Label::default()
                    },
                ],
            });
        }
    }

    /// The location of one address of `p`'s stack: `group` is its frames, innermost first.
    fn location(&mut self, p: &ProcessReport, first_mapping: u64, group: &[Frame]) -> u64 {
        let address = parse_address(&group[0].address);
        if let Some(&id) = self.locations.get(&(p.pid, address)) {
            return id;
        }
        let mapping = p
            .mappings
            .iter()
            .position(|m| m.start <= address && address < m.end)
            .map(|i| (first_mapping + i as u64, &p.mappings[i]));
        let mut line = Vec::with_capacity(group.len());
        for f in group {
            let name = match &f.function {
                Some(n) => n.clone(),
                None => unnamed(f, address, mapping.map(|m| m.1)),
            };
            let function_id = self.function(&name, f.file.as_deref().unwrap_or(""));
            line.push(Line {
                function_id,
                line: f.line.map_or(0, i64::from),
                column: 0,
            });
        }
        let mapping_id = match mapping {
            Some((id, _)) => {
                let m = &mut self.p.mapping[(id - 1) as usize];
                m.has_functions |= group.iter().any(|f| f.function.is_some());
                m.has_filenames |= group.iter().any(|f| f.file.is_some());
                m.has_line_numbers |= group.iter().any(|f| f.line.is_some());
                m.has_inline_frames |= group.len() > 1;
                id
            }
            None => 0,
        };
        let id = self.p.location.len() as u64 + 1;
        self.p.location.push(Location {
            id,
            mapping_id,
            // Every frame is a return address (the symbolizer looks up `address - 1` too); pprof
            // wants an address inside the call instruction, as Go writes it, so that its own
            // symbolization and disassembly land on the call.
            address: address.saturating_sub(1),
            line,
            is_folded: false,
        });
        self.locations.insert((p.pid, address), id);
        id
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (self.intern(name), self.intern(file));
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.p.function.len() as u64 + 1;
        self.p.function.push(Function {
            id,
            name: key.0,
            system_name: key.0,
            filename: key.1,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }
}

/// Consecutive frames of one address: the inlined ones, then the frame they were inlined into.
fn inline_groups(frames: &[Frame]) -> impl Iterator<Item = &[Frame]> {
    let mut rest = frames;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // A group ends at its first non-inlined frame, or where the address changes (an inlined
        // frame whose caller is missing); a recursive call at one address stays several groups.
        let mut n = 1;
        while n < rest.len() && rest[n - 1].inlined && rest[n].address == rest[0].address {
            n += 1;
        }
        let (group, tail) = rest.split_at(n);
        rest = tail;
        Some(group)
    })
}

/// A name for a frame the symbolizer could not name: `module+0xOFFSET`, else its address.
fn unnamed(f: &Frame, address: u64, mapping: Option<&MappingReport>) -> String {
    match mapping {
        Some(m) => {
            let path = f.module.as_deref().unwrap_or(&m.path);
            let base = path.rsplit('/').next().unwrap_or(path);
            format!("{base}+{:#x}", address - m.start + m.offset)
        }
        None => f.address.clone(),
    }
}

fn parse_address(s: &str) -> u64 {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(hex, 16).unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` -> nanoseconds since the Unix epoch.
fn rfc3339_unix_nanos(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && matches!(&tz[..1], "+" | "-") && &tz[3..4] == ":" => {
            let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if &tz[..1] == "-" { -m } else { m }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset * 60;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Proleptic Gregorian date -> days since 1970-01-01 (Howard Hinnant's `days_from_civil`, the
/// inverse of `units::civil_from_days`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::{
        config::GroupBy,
        report::{MappingReport, StackReport},
    };

    fn frame(addr: &str, func: Option<&str>, line: Option<u32>, inlined: bool) -> Frame {
        Frame {
            address: addr.into(),
            function: func.map(Into::into),
            file: func.map(|_| "/src/app.c".into()),
            line,
            module: Some("/usr/bin/app".into()),
            inlined,
        }
    }

    fn stack(bytes: u64, count: u64, alloc: (u64, u64), frames: Vec<Frame>) -> StackReport {
        StackReport {
            kind: "heap",
            bytes,
            count,
            oldest_age_ms: 0,
            stack_id: Some(1),
            alloc_count: alloc.0,
            alloc_bytes: alloc.1,
            growth: None,
            frames,
        }
    }

    fn report() -> Report {
        let leak = stack(
            3000,
            3,
            (5, 5000),
            vec![
                frame("0x7f0000001010", Some("malloc"), None, false),
                // 0x1234: helper() inlined into leak(), which was inlined into main().
                frame("0x555500001234", Some("helper"), Some(7), true),
                frame("0x555500001234", Some("leak"), Some(12), true),
                frame("0x555500001234", Some("main"), Some(30), false),
                // No symbol: named after the module and its file offset.
                frame("0x555500002000", None, None, false),
            ],
        );
        let freed = stack(
            0,
            0,
            (4, 400),
            vec![
                frame("0x7f0000001010", Some("malloc"), None, false),
                frame("0x555500001300", Some("main"), Some(31), false),
                // Outside every mapping.
                Frame {
                    address: "0x10".into(),
                    ..Frame::default()
                },
            ],
        );
        let process = ProcessReport {
            pid: 42,
            comm: "app".into(),
            exited: true,
            leaked_bytes: 3000,
            leaked_count: 3,
            outstanding_bytes: 3000,
            outstanding_count: 3,
            allocations: 9,
            frees: 6,
            stacks_total: 1,
            stacks: vec![leak, freed],
            loader_bytes: 0,
            mappings: vec![
                MappingReport {
                    start: 0x5555_0000_0000,
                    end: 0x5555_0001_0000,
                    offset: 0x1000,
                    path: "/usr/bin/app".into(),
                    build_id: Some("abcdef".into()),
                },
                MappingReport {
                    start: 0x7f00_0000_0000,
                    end: 0x7f00_0010_0000,
                    offset: 0,
                    path: "/lib/libc.so.6".into(),
                    build_id: None,
                },
            ],
        };
        Report {
            report: "final",
            time: "2026-11-23T11:44:30.123Z".into(),
            elapsed_ms: 1500,
            min_age_ms: 0,
            processes: vec![process],
            lost_events: 0,
            stack_errors: 0,
            missed_returns: 0,
            malformed_events: 0,
            symbolization_failures: 0,
            mapping_records_lost: 0,
            sampled_set_full: 0,
            estimate_unreliable: false,
            estimate_unreliable_reason: None,
            events: 0,
            leaked_bytes: 3000,
            leaked_count: 3,
            group_by: GroupBy::Stack,
            sample_rate: None,
        }
    }

    fn decode(r: &Report) -> Profile {
        let mut gz = Vec::new();
        render(r, &mut gz).unwrap();
        assert_eq!(&gz[..2], b"\x1f\x8b", "gzip magic");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        Profile::decode(&raw[..]).unwrap()
    }

    fn s(p: &Profile, i: i64) -> &str {
        &p.string_table[i as usize]
    }

    /// (function name, line) of each Line of location `id`.
    fn lines(p: &Profile, id: u64) -> Vec<(String, i64)> {
        let loc = &p.location[(id - 1) as usize];
        assert_eq!(loc.id, id);
        loc.line
            .iter()
            .map(|l| {
                let f = &p.function[(l.function_id - 1) as usize];
                (s(p, f.name).to_string(), l.line)
            })
            .collect()
    }

    #[test]
    fn header_is_a_go_heap_profile() {
        let p = decode(&report());
        assert_eq!(p.string_table[0], "");
        let types: Vec<_> = p
            .sample_type
            .iter()
            .map(|t| (s(&p, t.r#type), s(&p, t.unit)))
            .collect();
        assert_eq!(
            types,
            [
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes")
            ]
        );
        assert_eq!(s(&p, p.default_sample_type), "inuse_space");
        let pt = p.period_type.unwrap();
        assert_eq!((s(&p, pt.r#type), s(&p, pt.unit)), ("space", "bytes"));
        assert_eq!(p.period, 1);
        assert_eq!(p.time_nanos, 1_795_434_270_123_000_000);
        assert_eq!(p.duration_nanos, 1_500_000_000);
        assert!(s(&p, p.comment[0]).contains("older than 0 ms"));
        // Every string once.
        let mut seen = std::collections::HashSet::new();
        assert!(p.string_table.iter().all(|x| seen.insert(x)));
    }

    #[test]
    fn sampling_rate_is_the_period() {
        let mut r = report();
        r.sample_rate = Some(512 * 1024);
        assert_eq!(decode(&r).period, 512 * 1024);
    }

    #[test]
    fn samples_carry_values_labels_and_inline_lines() {
        let p = decode(&report());
        assert_eq!(p.sample.len(), 2);
        let leak = &p.sample[0];
        assert_eq!(leak.value, [5, 5000, 3, 3000]);
        let labels: Vec<_> = leak
            .label
            .iter()
            .map(|l| (s(&p, l.key), s(&p, l.str), l.num))
            .collect();
        assert_eq!(
            labels,
            [("pid", "", 42), ("comm", "app", 0), ("kind", "heap", 0)]
        );
        // Five frames, three locations: the inlined chain is one location, innermost first.
        assert_eq!(leak.location_id.len(), 3);
        let l = |v: &[(&str, i64)]| {
            v.iter()
                .map(|(n, l)| (n.to_string(), *l))
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(&p, leak.location_id[0]), l(&[("malloc", 0)]));
        assert_eq!(
            lines(&p, leak.location_id[1]),
            l(&[("helper", 7), ("leak", 12), ("main", 30)])
        );
        // 0x555500002000 - 0x555500000000 + file offset 0x1000.
        assert_eq!(lines(&p, leak.location_id[2]), l(&[("app+0x3000", 0)]));

        let freed = &p.sample[1];
        assert_eq!(freed.value, [4, 400, 0, 0]);
        // malloc's location is shared; main at another address is a new location, same function.
        assert_eq!(freed.location_id[0], leak.location_id[0]);
        assert_eq!(lines(&p, freed.location_id[1]), l(&[("main", 31)]));
        assert_eq!(lines(&p, freed.location_id[2]), l(&[("0x10", 0)]));
        assert_eq!(p.location.len(), 5);
        let main_fns: Vec<_> = p
            .function
            .iter()
            .filter(|f| s(&p, f.name) == "main")
            .collect();
        assert_eq!(main_fns.len(), 1);
    }

    #[test]
    fn locations_point_at_their_mappings() {
        let p = decode(&report());
        assert_eq!(p.mapping.len(), 2);
        let app = &p.mapping[0];
        assert_eq!(
            (app.id, s(&p, app.filename), s(&p, app.build_id)),
            (1, "/usr/bin/app", "abcdef")
        );
        assert_eq!(
            (app.memory_start, app.memory_limit, app.file_offset),
            (0x5555_0000_0000, 0x5555_0001_0000, 0x1000)
        );
        assert!(
            app.has_functions && app.has_filenames && app.has_line_numbers && app.has_inline_frames
        );
        let libc = &p.mapping[1];
        assert_eq!(
            (libc.id, s(&p, libc.filename), s(&p, libc.build_id)),
            (2, "/lib/libc.so.6", "")
        );
        assert!(libc.has_functions && !libc.has_line_numbers && !libc.has_inline_frames);
        let by_addr: HashMap<u64, u64> = p
            .location
            .iter()
            .map(|l| (l.address, l.mapping_id))
            .collect();
        // Inside the call instruction: one before the return address.
        assert_eq!(by_addr[&0x7f00_0000_100f], 2);
        assert_eq!(by_addr[&0x5555_0000_1233], 1);
        assert_eq!(by_addr[&0xf], 0);
    }

    #[test]
    fn processes_share_functions_but_not_locations_or_mappings() {
        let mut r = report();
        let mut other = r.processes[0].clone();
        other.pid = 43;
        r.processes.push(other);
        let p = decode(&r);
        assert_eq!(p.sample.len(), 4);
        assert_eq!(p.mapping.len(), 4);
        assert_eq!(p.location.len(), 10);
        assert_eq!(p.function.len(), 6); // malloc helper leak main app+0x3000 0x10
        let ids: Vec<_> = p.mapping.iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        let second = &p.sample[2];
        assert_eq!(second.label[0].num, 43);
        let loc = &p.location[(second.location_id[0] - 1) as usize];
        assert_eq!(loc.mapping_id, 4);
    }

    #[test]
    fn recursion_at_one_address_stays_separate_locations() {
        let frames = vec![
            frame("0x1", Some("f"), Some(1), false),
            frame("0x1", Some("f"), Some(1), false),
            frame("0x2", Some("g"), Some(2), true),
            frame("0x2", Some("h"), Some(3), false),
        ];
        let groups: Vec<usize> = inline_groups(&frames).map(<[Frame]>::len).collect();
        assert_eq!(groups, [1, 1, 2]);
    }

    #[test]
    fn rfc3339_timestamps() {
        assert_eq!(rfc3339_unix_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_unix_nanos("1970-01-01T00:00:00.5Z"),
            Some(500_000_000)
        );
        assert_eq!(
            rfc3339_unix_nanos("2000-02-29T00:00:00.000Z"),
            Some(951_782_400_000_000_000)
        );
        assert_eq!(
            rfc3339_unix_nanos("2000-02-29T02:00:00.000000001+02:00"),
            Some(951_782_400_000_000_001)
        );
        assert_eq!(rfc3339_unix_nanos("2026-11-23T11:44:30"), None);
        assert_eq!(rfc3339_unix_nanos("yesterday"), None);
        // Round trip with the formatter the report uses.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(4_102_444_800_999);
        let text = crate::units::utc_timestamp(t).0;
        assert_eq!(rfc3339_unix_nanos(&text), Some(4_102_444_800_999_000_000));
    }
}
