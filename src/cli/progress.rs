//! Rendering streamed events: a spinner on a TTY, plain lines otherwise.

use std::io::IsTerminal;
use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::render::human_duration;
use crate::protocol::cli::Event;

/// Shows progress events on stderr.
pub struct ProgressView {
    bar: Option<ProgressBar>,
}

impl ProgressView {
    /// A spinner when stderr is a terminal, plain lines otherwise.
    pub fn new() -> ProgressView {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        ProgressView { bar }
    }

    /// Plain lines only (for command output, which must not be garbled).
    pub fn plain() -> ProgressView {
        ProgressView { bar: None }
    }

    /// Renders one event; stdout/stderr chunks are passed through.
    pub fn event(&self, ev: Event) {
        match ev {
            Event::Stage {
                stage,
                elapsed_ms,
                done: true,
                ..
            } if stage == "ready" => {
                let line = format!("ready in {}", human_duration(elapsed_ms));
                match &self.bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::Stage {
                stage,
                detail,
                elapsed_ms,
                done,
            } => {
                let line = if done {
                    format!("{stage}: {detail} ({})", human_duration(elapsed_ms))
                } else {
                    format!("{stage}: {detail}")
                };
                match &self.bar {
                    Some(b) if done => b.println(format!("  ✓ {line}")),
                    Some(b) => b.set_message(line),
                    None => eprintln!("  {line}"),
                }
            }
            Event::Log(l) => match &self.bar {
                Some(b) => b.println(format!("  {l}")),
                None => eprintln!("  {l}"),
            },
            Event::Stdout(d) => {
                self.suspend(|| {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(&d);
                    let _ = o.flush();
                });
            }
            // `vm run`'s own events are handled by its client.
            Event::Spec { .. } | Event::CommandStarted | Event::Patch(_) | Event::PatchDone => {}
            Event::Stderr(d) => {
                self.suspend(|| {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(&d);
                    let _ = e.flush();
                });
            }
        }
    }

    /// One line on stderr as it is (no indent), above the spinner.
    pub fn suspend_line(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn suspend(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    /// Removes the spinner.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Default for ProgressView {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        self.finish();
    }
}
