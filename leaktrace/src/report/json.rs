//! JSON rendering: one compact document per report, one per line (JSON Lines), so that
//! `--interval` output can be streamed into `jq` or a log pipeline.
use std::io::Write;

use super::Report;

pub fn render(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, r).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}
