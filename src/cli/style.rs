//! Terminal styling: colour only on a TTY and never with `NO_COLOR`.

use std::io::IsTerminal;

/// Whether stdout / stderr may be coloured.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub stdout: bool,
    pub stderr: bool,
}

impl Style {
    /// Decides from the environment and the terminals.
    pub fn detect() -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            stdout: !no_color && std::io::stdout().is_terminal(),
            stderr: !no_color && std::io::stderr().is_terminal(),
        }
    }

    /// No colour anywhere.
    pub fn plain() -> Style {
        Style {
            stdout: false,
            stderr: false,
        }
    }
}

fn paint(on: bool, code: &str, s: &str) -> String {
    if on {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

pub fn red(on: bool, s: &str) -> String {
    paint(on, "1;31", s)
}
pub fn green(on: bool, s: &str) -> String {
    paint(on, "32", s)
}
pub fn yellow(on: bool, s: &str) -> String {
    paint(on, "33", s)
}
pub fn dim(on: bool, s: &str) -> String {
    paint(on, "2", s)
}
pub fn bold(on: bool, s: &str) -> String {
    paint(on, "1", s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_means_plain() {
        assert_eq!(red(false, "x"), "x");
        assert_eq!(dim(true, "x"), "\x1b[2mx\x1b[0m");
    }
}
