//! Output: one table format everywhere, JSON for machines, and errors.

use std::fmt::Write;

use super::style;

/// A tabwriter-style table: columns left-aligned, separated by two spaces.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Table {
        Table {
            rows: vec![header.into_iter().map(Into::into).collect()],
        }
    }

    /// A table with no header (key/value listings).
    pub fn bare() -> Table {
        Table::default()
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut width = vec![0usize; cols];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(c);
                } else {
                    let _ = write!(line, "{c:<w$}  ", w = width[i]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Pretty JSON for `--json`.
pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")) + "\n"
}

/// What kind of failure a [`CliError`] is; callers decide by this, never
/// by the label text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The daemon refused or failed the request, with this code.
    Rpc(crate::protocol::ErrorCode),
    /// Nothing listens on the daemon socket.
    DaemonNotRunning,
    /// The daemon could not be started.
    DaemonStart,
    /// The connection to the daemon broke (it crashed or is exiting).
    Connection,
    /// Bad flags, values, names or paths: nothing was sent.
    Usage,
    /// A local problem: a file, a tool, the terminal.
    Local,
    /// The user interrupted the command.
    Interrupted,
    /// The daemon answered something this CLI does not understand.
    Protocol,
}

/// A user-facing error: `banger: <label>: <message> (request <request_id>)`, or
/// `banger: <message>` when the label would say nothing (a failed
/// operation's message is the error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub kind: ErrorKind,
    pub label: String,
    pub message: String,
    pub request_id: Option<String>,
    pub exit_code: u8,
}

impl CliError {
    pub fn new(kind: ErrorKind, label: impl Into<String>, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            label: label.into(),
            message: message.into(),
            request_id: None,
            exit_code: 1,
        }
    }

    /// Bad input caught before anything was sent.
    pub fn usage(label: impl Into<String>, message: impl Into<String>) -> CliError {
        CliError::new(ErrorKind::Usage, label, message)
    }

    /// A local failure (file, tool, terminal).
    pub fn local(label: impl Into<String>, message: impl Into<String>) -> CliError {
        CliError::new(ErrorKind::Local, label, message)
    }

    /// Whether the daemon answered with `code`.
    pub fn is_rpc(&self, code: crate::protocol::ErrorCode) -> bool {
        self.kind == ErrorKind::Rpc(code)
    }

    /// Renders the error line (colour on `color`).
    pub fn render(&self, color: bool) -> String {
        let mut s = if self.label.is_empty() {
            format!("{} {}", style::red(color, "banger:"), self.message)
        } else {
            format!(
                "{} {}: {}",
                style::red(color, "banger:"),
                self.label,
                self.message
            )
        };
        if let Some(op) = self.request_id.as_deref().filter(|o| !o.is_empty()) {
            s.push(' ');
            s.push_str(&style::dim(color, &format!("(request {op})")));
        }
        s
    }
}

impl From<crate::protocol::RpcError> for CliError {
    fn from(e: crate::protocol::RpcError) -> Self {
        use crate::protocol::ErrorCode;
        CliError {
            kind: ErrorKind::Rpc(e.code),
            label: match e.code {
                ErrorCode::OperationFailed => String::new(),
                c => c.label().to_string(),
            },
            message: e.message,
            request_id: (!e.request_id.is_empty()).then_some(e.request_id),
            exit_code: 1,
        }
    }
}

/// Human duration: `850ms`, `3.2s`, `4m05s`, `2h03m`.
pub fn human_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// Age of a unix timestamp: `5s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn age(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let d = now.saturating_sub(unix);
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86_399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86_400),
    }
}

/// Quotes one argument for a POSIX shell.
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r#"'\''"#))
    }
}

/// The remote command line for `argv`, run in `cwd` when given.
pub fn command_line(argv: &[String], cwd: Option<&str>) -> String {
    let cmd = argv
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    match cwd {
        Some(d) => format!("cd {} && {cmd}", shell_quote(d)),
        None => cmd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_arguments_whole() {
        assert_eq!(shell_quote("echo"), "echo");
        assert_eq!(shell_quote("exit 42"), "'exit 42'");
        assert_eq!(shell_quote("it's"), r#"'it'\''s'"#);
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        let argv: Vec<String> = ["sh", "-c", "exit 42"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(command_line(&argv, None), "sh -c 'exit 42'");
        assert_eq!(
            command_line(&argv, Some("/root/repo")),
            "cd /root/repo && sh -c 'exit 42'"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(["NAME", "STATE"]);
        t.row(["a", "running"]);
        t.row(["longer-name", "stopped"]);
        assert_eq!(
            t.render(),
            "NAME         STATE\na            running\nlonger-name  stopped\n"
        );
    }

    #[test]
    fn error_line_format() {
        use crate::protocol::{ErrorCode, RpcError};
        let e: CliError = RpcError::not_found("no VM named \"x\"")
            .with_request("abcd1234")
            .into();
        assert_eq!(
            e.render(false),
            "banger: not found: no VM named \"x\" (request abcd1234)"
        );
        assert!(e.is_rpc(ErrorCode::NotFound));
        // A failed operation's message is the error: no `failed:` label.
        let e: CliError = RpcError::failed("qemu-img is not installed").into();
        assert_eq!(e.render(false), "banger: qemu-img is not installed");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(3200), "3.2s");
        assert_eq!(human_duration(245_000), "4m05s");
    }
}
