//! What goes to the terminal: colour only on a terminal (and never with `NO_COLOR`), and errors
//! as a sentence of causes, never a Rust `Debug` dump or stray escape sequences.

use std::io::IsTerminal;

/// Whether to colour a stream: only a terminal, and only without `NO_COLOR` (any non-empty
/// value disables colour, as no-color.org says).
pub fn colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// [`colour`] for stderr (where logs and errors go).
pub fn stderr_colour() -> bool {
    colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// [`colour`] for stdout.
pub fn stdout_colour() -> bool {
    colour(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// An error and its causes, outermost first, each said once, as one line.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = strip_ansi(cause.to_string().trim());
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a file or a pipe gets no colour");
        assert!(!colour(true, Some(OsStr::new("1"))), "NO_COLOR=1");
        assert!(
            colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
    }

    #[test]
    fn errors_are_causes_once_and_without_escapes() {
        let e = anyhow::anyhow!("connection refused")
            .context("could not reach 127.0.0.1:9990 (connection refused)")
            .context("\u{1b}[31mweft proxies\u{1b}[0m");
        assert_eq!(
            error_text(&e),
            "weft proxies: could not reach 127.0.0.1:9990 (connection refused)"
        );
    }
}
