//! Escaping of the strings a traced process controls, applied when a report is rendered.
//!
//! A process picks its own comm (`prctl(PR_SET_NAME)`), its symbol and source file names, its
//! command line and the paths it maps. Printed raw, an ESC or BEL in one of them drives the
//! reader's terminal, a newline forges a line of the report, a `;` splits a folded frame and a
//! control byte makes the SVG invalid XML (XML 1.0 forbids most of them even as `&#N;`). The
//! report model keeps the raw strings (JSON keeps them too: serde escapes what JSON requires);
//! every renderer for people and line-oriented tools passes them through here.
//!
//! One visible escape is used everywhere, so the same name reads the same in every format:
//! `\\` for a backslash (so the mapping can be undone), `\n` `\r` `\t` `\e`, `\xNN` for the
//! other C0 controls and DEL, and `\u{NNNN}` for C1 controls (an 8-bit terminal reads U+009B as
//! CSI), line and paragraph separators, bidirectional overrides ("Trojan source") and the two
//! non-characters XML forbids. Prometheus label values are left to prometheus-client, which
//! escapes `\`, `"` and newline as its text format requires.
//!
//! Not owned here: XML entities. inferno writes every SVG text through quick-xml, which turns
//! `<>&"'` into entities; escaping them here too would show `&amp;lt;` to the reader.
use std::{borrow::Cow, fmt::Write};

/// Whether `c` must be shown as an escape rather than written.
fn needs_escape(c: char) -> bool {
    matches!(c,
        '\\'
        | '\0'..='\x1f'
        | '\x7f'..='\u{9f}'
        | '\u{061c}'
        | '\u{200e}' | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{fffe}' | '\u{ffff}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x1b' => out.push_str("\\e"),
        '\0'..='\x1f' | '\x7f' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        _ => {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
    }
}

/// `s` as one line of text for a terminal, a `.txt` report or a log: every control character
/// visible as a backslash escape, a backslash doubled. Borrowed when nothing needed escaping.
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` as one frame of a folded-stack line (`frame;frame;frame COUNT`): escaped as [`text`],
/// `;` (the frame separator) as `\x3b`, and a space as `_` so that the last space of a line is
/// always the one before its count.
pub fn folded_frame(s: &str) -> Cow<'_, str> {
    let t = text(s);
    if !t.contains([';', ' ']) {
        return t;
    }
    Cow::Owned(t.replace(';', "\\x3b").replace(' ', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_borrowed_unchanged() {
        for s in ["leaky", "std::vec::Vec<T>::push", "/usr/lib/libc.so.6", "été", ""] {
            assert!(matches!(text(s), Cow::Borrowed(b) if b == s), "{s}");
        }
    }

    #[test]
    fn control_characters_become_visible() {
        assert_eq!(text("ev\x1b[2Jil\n;x<&"), "ev\\e[2Jil\\n;x<&");
        assert_eq!(text("a\x07b\tc\rd\0e\x7f"), "a\\x07b\\tc\\rd\\x00e\\x7f");
        assert_eq!(text("csi\u{9b}2J"), "csi\\u{009b}2J");
        assert_eq!(text("rtl\u{202e}gnp.exe"), "rtl\\u{202e}gnp.exe");
        assert_eq!(text("ls\u{2028}x"), "ls\\u{2028}x");
        assert_eq!(text("\u{fffe}"), "\\u{fffe}");
    }

    #[test]
    fn backslashes_are_doubled_so_the_mapping_is_unambiguous() {
        // A literal `\e` in a name and a real ESC must not print alike.
        assert_eq!(text("a\\e"), "a\\\\e");
        assert_ne!(text("a\\e"), text("a\x1b"));
    }

    #[test]
    fn escaped_text_is_one_line_without_controls() {
        let every: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let t = text(&every);
        assert!(!t.chars().any(|c| c.is_control()), "{t}");
        assert!(!t.contains(['\u{2028}', '\u{2029}', '\u{202e}']));
    }

    #[test]
    fn folded_frames_have_no_separator_space_or_newline() {
        assert_eq!(folded_frame("bad;name<&>\x07"), "bad\\x3bname<&>\\x07");
        assert_eq!(folded_frame("operator new(unsigned long)"), "operator_new(unsigned_long)");
        assert_eq!(folded_frame("x\n123"), "x\\n123");
        assert!(matches!(folded_frame("main"), Cow::Borrowed("main")));
    }
}
