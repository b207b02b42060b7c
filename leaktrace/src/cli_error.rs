//! Command-line errors as one line. clap renders a usage error over several lines (usage,
//! tips, lists of values), which breaks the promise of one line per error that scripts and
//! logs rely on; this module turns clap's structured error into that line. Help and version
//! are not errors and are not its business (main prints them as clap does).

/// clap's error as one line, `<option>: <what>; <what to do>`, for stderr after `leaktrace: `.
///
/// clap's own rendering spans several lines (usage, tips, the list of values), which breaks the
/// promise of one line per error that scripts and logs rely on. `args` are the raw arguments,
/// to name the subcommand whose help to read. Control characters a user typed are escaped.
pub fn usage_line(e: &clap::Error, args: &[std::ffi::OsString]) -> String {
    use clap::{
        CommandFactory,
        error::{ContextKind as C, ContextValue as V, ErrorKind as K},
    };
    let get = |k| match e.get(k) {
        Some(V::String(s)) => Some(s.clone()),
        Some(V::Strings(v)) => Some(v.join(", ")),
        Some(V::StyledStr(s)) => Some(s.to_string()),
        Some(V::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    // "--format <FORMAT>" -> "--format"; a positional "<NEW>" stays as it is.
    let name = |a: String| {
        if a.starts_with('-') {
            a.split([' ', '=']).next().unwrap_or_default().to_string()
        } else {
            a
        }
    };
    let cli = crate::config::Cli::command();
    let subs: Vec<String> =
        cli.get_subcommands().map(|c| c.get_name().to_string()).filter(|n| n != "help").collect();
    let sub = args.iter().skip(1).find_map(|a| subs.iter().find(|s| a.to_str() == Some(s.as_str())));
    let help = match sub {
        Some(s) => format!("see `leaktrace {s} --help`"),
        None => "see `leaktrace --help`".to_string(),
    };
    let arg = get(C::InvalidArg)
        .or_else(|| get(C::InvalidSubcommand))
        .map(name)
        .unwrap_or_else(|| "argument".into());
    let value = get(C::InvalidValue).unwrap_or_default();
    let suggest = get(C::SuggestedArg)
        .or_else(|| get(C::SuggestedSubcommand))
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default();
    let line = match e.kind() {
        K::InvalidValue if value.is_empty() => format!("{arg}: a value is required; {help}"),
        K::InvalidValue => match get(C::ValidValue) {
            Some(valid) => format!("{arg}: invalid value '{value}'; use one of: {valid}"),
            None => format!("{arg}: invalid value '{value}'; {help}"),
        },
        K::ValueValidation => {
            let why = std::error::Error::source(e).map(|s| format!(" ({s})")).unwrap_or_default();
            format!("{arg}: invalid value '{value}'{why}; {help}")
        }
        K::UnknownArgument if arg.starts_with('-') => {
            format!("{arg}: unknown option{suggest}; {help}")
        }
        K::UnknownArgument => format!("{arg}: unexpected argument{suggest}; {help}"),
        K::InvalidSubcommand => {
            format!("{arg}: unknown subcommand{suggest}; use one of: {}", subs.join(", "))
        }
        K::MissingSubcommand | K::DisplayHelpOnMissingArgumentOrSubcommand => format!(
            "missing subcommand; use one of: {} (see `leaktrace --help`)",
            subs.join(", ")
        ),
        K::MissingRequiredArgument => {
            let missing = match e.get(C::InvalidArg) {
                Some(V::Strings(v)) => v.iter().cloned().map(name).collect::<Vec<_>>().join(", "),
                _ => arg,
            };
            format!("{missing}: required; {help}")
        }
        K::ArgumentConflict => match get(C::PriorArg).map(name) {
            Some(prior) if prior != arg => format!("{arg}: cannot be used with {prior}; {help}"),
            _ => format!("{arg}: given more than once; give it once"),
        },
        K::NoEquals => format!("{arg}: give its value as {arg}=VALUE; {help}"),
        K::TooManyValues | K::TooFewValues | K::WrongNumberOfValues => {
            format!("{arg}: wrong number of values; {help}")
        }
        K::InvalidUtf8 => format!("an argument is not valid UTF-8; {help}"),
        _ => {
            let rendered = e.render().to_string();
            let first = rendered.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
            format!("{}; {help}", first.strip_prefix("error: ").unwrap_or(first))
        }
    };
    line.chars()
        .flat_map(|c| {
            let esc: Vec<char> =
                if c.is_control() { c.escape_default().collect() } else { vec![c] };
            esc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::Parser;

    fn line(args: &[&str]) -> String {
        let args: Vec<std::ffi::OsString> =
            std::iter::once("leaktrace").chain(args.iter().copied()).map(Into::into).collect();
        usage_line(&Cli::try_parse_from(&args).unwrap_err(), &args)
    }

    #[test]
    fn clap_errors_are_one_line_naming_the_option() {
        assert_eq!(line(&["trace", "--bogus"]), "--bogus: unknown option; see `leaktrace trace --help`");
        assert_eq!(
            line(&["trace", "--format", "xml"]),
            "--format: invalid value 'xml'; use one of: text, json, pprof, folded, svg"
        );
        assert_eq!(line(&["trace", "--min-age"]), "--min-age: a value is required; see `leaktrace trace --help`");
        assert!(line(&[]).starts_with("missing subcommand; use one of: trace, oom, audit, diff"));
        assert_eq!(line(&["diff", "a", "b", "--format", "json", "--format", "text"]),
            "--format: given more than once; give it once");
        assert_eq!(line(&["oom"]), "--dir: required; see `leaktrace oom --help`");
        assert!(line(&["trace", "--bo\ngus"]).starts_with("--bo\\ngus: unknown option"));
        assert!(line(&["frobnicate"]).starts_with("frobnicate: unknown subcommand"));
    }
}
