//! Thin entry point: parse, validate, run, map the result to an exit code.
use clap::Parser;
use leaktrace::{
    config::{AuditConfig, Cli, Command, OomConfig, TraceConfig},
    error::{EXIT_USAGE, Error},
};

fn diff(args: &leaktrace::config::DiffArgs) -> Result<i32, Error> {
    use leaktrace::config::Format;
    if !matches!(args.format, Format::Text | Format::Json) {
        return Err(Error::Usage("diff --format: text or json".into()));
    }
    let d = leaktrace::diff::diff(&args.old, &args.new)?;
    let mut out = std::io::stdout().lock();
    match leaktrace::diff::render(&d, args.format, &mut out) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

fn main() {
    // The aggregator's tables grow by doubling and free the old table. glibc raises its mmap
    // threshold to the size of each mmapped block freed (up to 32 MiB), so the next tables
    // come from the heap and, once freed, stay in it: 20 MiB of a tracer holding 2,000,000
    // blocks. A fixed threshold keeps big tables mmapped and returns them when freed.
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
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
            eprintln!("leaktrace: {}", leaktrace::escape::text(&e.to_string()));
            std::process::exit(e.exit_code());
        }
    }
}
