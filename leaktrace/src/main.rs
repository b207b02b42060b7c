//! Thin entry point: parse, validate, run, map the result to an exit code.
use std::io::Write;

use clap::Parser;
use leaktrace::{
    config::{AuditConfig, Cli, Command, OomConfig, TraceConfig},
    error::{EXIT_USAGE, Error},
    sink::{Mode, Sink},
};

fn diff(args: &leaktrace::config::DiffArgs) -> Result<i32, Error> {
    use leaktrace::config::Format;
    if !matches!(args.format, Format::Text | Format::Json) {
        return Err(Error::Usage("diff --format: text or json".into()));
    }
    let d = leaktrace::diff::diff(&args.old, &args.new, args.max_input_size()?)?;
    // Rendered whole, then written: a reader gone away (`| head`) is exit 0 in every format.
    let mut out = Sink::stdout(Mode::Replace);
    out.emit(|buf| leaktrace::diff::render(&d, args.format, buf))?;
    Ok(0)
}

fn main() {
    // Before anything opens a file that could take the number of a closed stdout.
    leaktrace::sink::guard_std_fds();
    // The aggregator's tables grow by doubling and free the old table. glibc raises its mmap
    // threshold to the size of each mmapped block freed (up to 32 MiB), so the next tables
    // come from the heap and, once freed, stay in it: 20 MiB of a tracer holding 2,000,000
    // blocks. A fixed threshold keeps big tables mmapped and returns them when freed.
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) };
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        // Help and version: clap prints them to stdout, exit 0.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            std::process::exit(0);
        }
        // Usage errors: one line, like every other error (clap's own span several).
        Err(e) => {
            // Not eprintln!: with stderr a closed pipe it panics, and the exit code is lost.
            let _ = writeln!(std::io::stderr(), "leaktrace: {}", leaktrace::cli_error::usage_line(&e, &args));
            std::process::exit(EXIT_USAGE);
        }
    };
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::from)
    };
    let result = match cli.command {
        Command::Trace(args) => TraceConfig::try_from(args)
            .and_then(|cfg| runtime()?.block_on(leaktrace::trace::run(cfg)))
            .map(|()| 0),
        Command::Oom(args) => OomConfig::try_from(args)
            .and_then(|cfg| runtime()?.block_on(leaktrace::oom::run(cfg)))
            .map(|()| 0),
        Command::Audit(args) => AuditConfig::try_from(args)
            .and_then(|cfg| runtime()?.block_on(leaktrace::audit::run(cfg))),
        Command::Diff(args) => diff(&args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Errors can name what the traced process chose (its comm, its libraries' paths).
            let _ = writeln!(std::io::stderr(), "leaktrace: {}", leaktrace::escape::text(&e.to_string()));
            std::process::exit(e.exit_code());
        }
    }
}
