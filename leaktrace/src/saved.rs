//! Reading saved JSON reports back in: `trace --format json` files (JSON Lines, one document per
//! report; the last one counts) and `audit --format json` documents, for `diff` and
//! `audit --baseline`. The one reader of saved reports.
//!
//! The input is hostile until proven otherwise: a user may hand it `/dev/zero`, a FIFO that
//! never ends, or a report edited by hand. So reading is bounded (at most `limit` bytes, then a
//! message naming the file, the limit and `--max-input-size`), streamed (documents are parsed
//! from a buffered reader one at a time, never slurped), and typed (a number where a string
//! belongs, a negative byte count, a missing field are refused with the field's path). This
//! module does not compare reports; `diff` and `audit::report` do.
use std::{
    cell::Cell,
    fs::File,
    io::{BufReader, Read},
    path::Path,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{report::Frame, units::human_bytes};

/// Default bound on a saved report (`--max-input-size`): far above any real report (a trace of
/// 10,000 stacks is a few MiB), far below what would hurt the machine.
pub const DEFAULT_MAX_INPUT: u64 = 256 << 20;

/// One stack of a saved report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedStack {
    /// "heap" or "mmap".
    pub kind: String,
    pub bytes: u64,
    pub count: u64,
    pub frames: Vec<Frame>,
}

/// One process of a saved report. `exe`, `cmdline` and `leak_rate_bytes_per_s` are in audits
/// only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedProcess {
    pub pid: u32,
    pub comm: String,
    #[serde(default)]
    pub exe: Option<String>,
    #[serde(default)]
    pub cmdline: Option<Vec<String>>,
    pub leaked_bytes: u64,
    pub outstanding_bytes: u64,
    #[serde(default)]
    pub leak_rate_bytes_per_s: Option<f64>,
    pub stacks: Vec<SavedStack>,
}

/// A saved trace or audit report: the fields the readers use, every other one ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedReport {
    /// Audits only: the length of the audit window.
    #[serde(default)]
    pub duration_s: Option<f64>,
    pub processes: Vec<SavedProcess>,
}

impl SavedReport {
    pub fn is_audit(&self) -> bool {
        self.duration_s.is_some()
    }
}

/// Why a saved report could not be read. Each names the file; `Display` is the whole message.
#[derive(Debug, Error)]
pub enum SavedError {
    #[error("{path}: cannot read it: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "{path}: larger than {} (the limit on a saved report); raise it with --max-input-size BYTES \
         if the file is a real report",
        human_bytes(*limit)
    )]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: not JSON ({why}): give a file written by `leaktrace trace --format json` or \
             `leaktrace audit --format json`")]
    NotJson { path: String, why: String },
    #[error("{path}: not a leaktrace report ({why}): give a file written by \
             `leaktrace trace --format json` or `leaktrace audit --format json`")]
    NotAReport { path: String, why: String },
    #[error("{path}: field {field}: {why}: is it a report written by this version of leaktrace?")]
    Field { path: String, field: String, why: String },
    #[error("{path}: empty: give a file written by `leaktrace trace --format json` or \
             `leaktrace audit --format json`")]
    Empty { path: String },
}

/// Counts the bytes that go through, so that hitting the limit can be told from a short file.
struct Counting<'a, R> {
    inner: R,
    seen: &'a Cell<u64>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.set(self.seen.get() + n as u64);
        Ok(n)
    }
}

/// Reads the report in `path`: the only document of an audit, the last of a trace's JSON Lines.
pub fn load(path: &Path, limit: u64) -> Result<SavedReport, SavedError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| SavedError::Read {
        path: name.clone(),
        source,
    })?;
    read(file, &name, limit)
}

/// `load` on any reader; `name` is what messages call it.
pub fn read(input: impl Read, name: &str, limit: u64) -> Result<SavedReport, SavedError> {
    let seen = Cell::new(0u64);
    // One byte past the limit is read so that a file of exactly `limit` bytes passes.
    let bounded = Counting {
        inner: input.take(limit.saturating_add(1)),
        seen: &seen,
    };
    let over = || seen.get() > limit;
    let too_large = || SavedError::TooLarge {
        path: name.to_string(),
        limit,
    };
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(64 << 10, bounded));
    let mut last = None;
    loop {
        // Whitespace between documents (and after the last) is skipped here; `end` fails when
        // something other than whitespace follows, which is the next document.
        if de.end().is_ok() {
            break;
        }
        match serde_path_to_error::deserialize::<_, SavedReport>(&mut de) {
            Ok(doc) => last = Some(doc),
            Err(_) if over() => return Err(too_large()),
            Err(e) => return Err(classify(name, e)),
        }
    }
    if over() {
        return Err(too_large());
    }
    last.ok_or_else(|| SavedError::Empty {
        path: name.to_string(),
    })
}

fn classify(name: &str, e: serde_path_to_error::Error<serde_json::Error>) -> SavedError {
    let path = name.to_string();
    let field = e.path().to_string();
    let inner = e.into_inner();
    use serde_json::error::Category;
    match inner.classify() {
        Category::Io => SavedError::Read {
            path,
            source: inner.into(),
        },
        Category::Syntax | Category::Eof => SavedError::NotJson {
            path,
            why: inner.to_string(),
        },
        Category::Data if field == "." => SavedError::NotAReport {
            path,
            why: inner.to_string(),
        },
        Category::Data => SavedError::Field {
            path,
            field,
            why: inner.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(bytes: &str) -> String {
        format!(
            r#"{{"report":"final","processes":[{{"pid":3,"comm":"svc","leaked_bytes":5,
            "outstanding_bytes":5,"stacks":[{{"kind":"heap","bytes":{bytes},"count":1,"frames":[]}}]}}]}}"#
        )
    }

    fn r(text: &str, limit: u64) -> Result<SavedReport, SavedError> {
        read(text.as_bytes(), "f.json", limit)
    }

    #[test]
    fn last_of_json_lines_and_one_pretty_document() {
        let lines = format!("{}\n{}\n", doc("1"), doc("2"));
        assert_eq!(r(&lines, 1 << 20).unwrap().processes[0].stacks[0].bytes, 2);
        let v: serde_json::Value = serde_json::from_str(&doc("7")).unwrap();
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let rep = r(&pretty, 1 << 20).unwrap();
        assert_eq!(rep.processes[0].stacks[0].bytes, 7);
        assert!(!rep.is_audit());
    }

    #[test]
    fn the_limit_is_exact() {
        let d = doc("1");
        let n = d.len() as u64;
        assert!(r(&d, n).is_ok());
        let e = r(&d, n - 1).unwrap_err().to_string();
        assert!(e.contains("f.json") && e.contains("--max-input-size"), "{e}");
        // Whitespace after the document counts too: an endless blank stream is cut off.
        let e = r(&format!("{d}{}", " ".repeat(100)), n + 10).unwrap_err();
        assert!(matches!(e, SavedError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = r(&doc("\"x\""), 1 << 20).unwrap_err().to_string();
        assert!(e.contains("processes[0].stacks[0].bytes"), "{e}");
        let e = r(&doc("-1"), 1 << 20).unwrap_err().to_string();
        assert!(e.contains("processes[0].stacks[0].bytes"), "{e}");
        let e = r(&doc("1").replace("\"comm\":\"svc\",", ""), 1 << 20).unwrap_err().to_string();
        assert!(e.contains("missing field `comm`"), "{e}");
        let e = r("5", 1 << 20).unwrap_err();
        assert!(matches!(e, SavedError::NotAReport { .. }), "{e}");
        let e = r(r#"{"x":1}"#, 1 << 20).unwrap_err();
        assert!(matches!(e, SavedError::NotAReport { .. }) && e.to_string().contains("`processes`"), "{e}");
        assert!(matches!(r("", 10).unwrap_err(), SavedError::Empty { .. }));
        assert!(matches!(r("   \n", 10).unwrap_err(), SavedError::Empty { .. }));
        let e = r(&format!("{}\n{{\"processes\":[", doc("1")), 1 << 20).unwrap_err();
        assert!(matches!(e, SavedError::NotJson { .. }), "truncated last line: {e}");
        let e = r("\0\0\0", 1 << 20).unwrap_err();
        assert!(matches!(e, SavedError::NotJson { .. }), "{e}");
    }
}
