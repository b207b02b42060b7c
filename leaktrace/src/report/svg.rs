//! A flame graph of the surviving bytes per stack, rendered by inferno from the folded lines,
//! titled with the processes and the totals. The frames come escaped from the folded lines and
//! the title's comms from [`escape::text`]: no control character (which XML 1.0 forbids, even
//! as a character reference) reaches the SVG. inferno writes `<>&"'` as entities itself, so
//! nothing is entity-escaped here (that would show `&amp;lt;`).
use std::io::Write;

use super::{Report, folded, human_bytes};
use crate::escape;

pub fn render(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let procs: Vec<String> = r
        .processes
        .iter()
        .map(|p| format!("{} ({})", escape::text(&p.comm), p.pid))
        .collect();
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!(
        "leaktrace: {} in {} blocks older than {:.1}s — {}",
        human_bytes(r.leaked_bytes),
        r.leaked_count,
        r.min_age_ms as f64 / 1000.0,
        procs.join(", ")
    );
    opts.count_name = "bytes".into();
    opts.name_type = "Stack:".into();
    // A leak is often a thin sliver beside a big live heap: draw every stack, however narrow.
    opts.min_width = 0.0;
    if let Some(why) = &r.estimate_unreliable_reason {
        opts.subtitle = Some(format!("estimates unreliable: {why}"));
    }
    let lines = folded::lines(r);
    if lines.is_empty() {
        // inferno refuses an empty profile; an empty graph says "nothing leaked" just as well.
        opts.subtitle.get_or_insert_with(|| "no surviving allocations".into());
        let placeholder = ["(none) 1".to_string()];
        return inferno::flamegraph::from_lines(&mut opts, placeholder.iter().map(String::as_str), out)
            .map_err(std::io::Error::other);
    }
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
        .map_err(std::io::Error::other)
}
