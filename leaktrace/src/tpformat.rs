//! Tracepoint record layouts read at run time from tracefs `format` files, so that a field's
//! offset comes from the running kernel, not from constants for one version. Owns parsing the
//! format text and reading typed fields out of a raw record; which fields an event needs is the
//! caller's business.
use std::{collections::HashMap, path::PathBuf};

/// The tracefs root, overridable (LEAKTRACE_TRACEFS) so that tests can show what happens on a
/// kernel without a tracepoint.
pub fn tracefs() -> PathBuf {
    std::env::var_os("LEAKTRACE_TRACEFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys/kernel/tracing"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: usize,
    pub size: usize,
    pub signed: bool,
    /// `__data_loc` fields hold (length << 16 | offset) of bytes elsewhere in the record.
    pub data_loc: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Layout {
    fields: HashMap<String, Field>,
}

impl Layout {
    /// Reads `events/CATEGORY/EVENT/format` under tracefs.
    pub fn load(category: &str, event: &str) -> Result<Self, String> {
        let path = tracefs().join("events").join(category).join(event).join("format");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// Parses lines like `field:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;`.
    pub fn parse(text: &str) -> Self {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let mut decl = None;
            let mut f = Field {
                offset: 0,
                size: 0,
                signed: false,
                data_loc: false,
            };
            for part in line.trim().split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d.trim().to_string());
                } else if let Some(v) = part.strip_prefix("offset:") {
                    f.offset = v.parse().unwrap_or(usize::MAX);
                } else if let Some(v) = part.strip_prefix("size:") {
                    f.size = v.parse().unwrap_or(0);
                } else if let Some(v) = part.strip_prefix("signed:") {
                    f.signed = v == "1";
                }
            }
            let Some(decl) = decl else { continue };
            f.data_loc = decl.starts_with("__data_loc");
            // The name is the last word, without any array suffix: `char comm[16]` -> comm.
            let Some(name) = decl
                .split_whitespace()
                .last()
                .map(|n| n.split('[').next().unwrap_or(n).to_string())
            else {
                continue;
            };
            if f.offset != usize::MAX && f.size > 0 {
                fields.insert(name, f);
            }
        }
        Layout { fields }
    }

    pub fn field(&self, name: &str) -> Option<Field> {
        self.fields.get(name).copied()
    }

    /// An integer field, sign-extended when the kernel says it is signed; None when the field
    /// does not exist in this kernel or the record is too short.
    pub fn int(&self, raw: &[u8], name: &str) -> Option<i64> {
        let f = self.field(name)?;
        // Offsets come from a file: checked, so that a huge one is "absent", not an overflow.
        let b = raw.get(f.offset..f.offset.checked_add(f.size)?)?;
        let mut v = [0u8; 8];
        match f.size {
            1 | 2 | 4 | 8 => v[..f.size].copy_from_slice(b),
            _ => return None,
        }
        let u = u64::from_le_bytes(v);
        Some(if f.signed {
            let shift = 64 - 8 * f.size as u32;
            ((u << shift) as i64) >> shift
        } else {
            u as i64
        })
    }

    /// A string field, `__data_loc` or fixed-size char array, up to its first NUL.
    pub fn string(&self, raw: &[u8], name: &str) -> Option<String> {
        let f = self.field(name)?;
        let bytes = if f.data_loc {
            let loc = u32::from_le_bytes(raw.get(f.offset..f.offset.checked_add(4)?)?.try_into().ok()?);
            let (off, len) = ((loc & 0xffff) as usize, (loc >> 16) as usize);
            raw.get(off..off + len)?
        } else {
            raw.get(f.offset..f.offset.checked_add(f.size)?)?
        };
        let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /sys/kernel/tracing/events/oom/mark_victim/format on Linux 6.18.
    const MARK_VICTIM: &str = "name: mark_victim
ID: 609
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;
";

    #[test]
    fn reads_fields_at_their_offsets() {
        let l = Layout::parse(MARK_VICTIM);
        let mut raw = vec![0u8; 128];
        raw[8..12].copy_from_slice(&4242i32.to_le_bytes());
        raw[12..16].copy_from_slice(&((6u32 << 16) | 80).to_le_bytes());
        raw[80..86].copy_from_slice(b"leaky\0");
        raw[24..32].copy_from_slice(&65536u64.to_le_bytes());
        raw[64..66].copy_from_slice(&(-1000i16).to_le_bytes());
        assert_eq!(l.int(&raw, "pid"), Some(4242));
        assert_eq!(l.string(&raw, "comm").as_deref(), Some("leaky"));
        assert_eq!(l.int(&raw, "anon_rss"), Some(65536));
        assert_eq!(l.int(&raw, "oom_score_adj"), Some(-1000));
        assert_eq!(l.int(&raw, "pgtables"), None, "absent in this format");
        assert_eq!(l.int(&raw[..20], "anon_rss"), None, "short record");
    }

    #[test]
    fn this_kernel_has_mark_victim() {
        match Layout::load("oom", "mark_victim") {
            Ok(l) => assert!(l.field("anon_rss").is_some()),
            Err(e) => eprintln!("SKIPPED this_kernel_has_mark_victim: {e}"),
        }
    }
}
