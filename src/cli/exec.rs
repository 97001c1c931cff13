//! `vm exec` on the CLI side: the command's stdin, terminal and signals.
//! Stdin is forwarded when it is not a terminal (a pipe, a file), or with
//! `-i`/`-t`; with `-t` the local terminal goes raw and its size follows
//! the window. Ctrl-C is delivered to the guest process (a second one kills
//! it); in a raw terminal it is just a byte the guest's terminal handles.

use std::io::{IsTerminal, Read};
use std::os::fd::AsFd;

use tokio::sync::mpsc;

use super::progress::ProgressView;
use super::render::CliError;
use super::{client, Ctx};
use crate::domain::Signal;
use crate::protocol::cli::{Input, Reply, Request, TtySize};

/// How to run it.
#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    /// A pseudo-terminal (`-t`).
    pub tty: bool,
    /// Forward stdin even from a terminal (`-i`).
    pub interactive: bool,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub auto_prepare: bool,
}

/// How the command ended.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub code: i32,
    /// Why it could not run (126, 127).
    pub message: Option<String>,
    /// The user pressed Ctrl-C while it ran.
    pub interrupted: bool,
}

/// Restores the terminal's settings on drop.
pub(super) struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    pub(super) fn enter() -> Result<RawMode, CliError> {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())
            .map_err(|e| CliError::local("terminal", format!("reading its settings: {e}")))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw)
            .map_err(|e| CliError::local("terminal", format!("making it raw: {e}")))?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// The size of the terminal on stdout (else stdin), if any.
pub fn window_size() -> Option<TtySize> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    for fd in [1, 0] {
        // SAFETY: TIOCGWINSZ fills a winsize.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some(TtySize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            });
        }
    }
    None
}

/// Reads stdin on a thread (it blocks) into `tx`, then says EOF.
pub(super) fn pump_stdin(tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Input::Stdin(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.blocking_send(Input::StdinEof);
    });
}

/// Which phase a run is in, for Ctrl-C: before its command starts a
/// Ctrl-C stops the run after its current step (`before` is said once);
/// then it goes to the command.
pub(super) struct Phase {
    pub started: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub before: &'static str,
}

/// Forwards Ctrl-C (INT, then KILL), SIGTERM and SIGHUP to the guest, and
/// window size changes; marks `interrupted`.
pub(super) fn forward_signals(
    tx: mpsc::Sender<Input>,
    tty: bool,
    interrupted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    phase: Option<Phase>,
) {
    use std::sync::atomic::Ordering;
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let mut int = signal(SignalKind::interrupt()).ok();
        let mut term = signal(SignalKind::terminate()).ok();
        let mut hup = signal(SignalKind::hangup()).ok();
        let mut winch = signal(SignalKind::window_change()).ok();
        let mut noted = false;
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        loop {
            let input = tokio::select! {
                _ = next(&mut int) => match &phase {
                    Some(p) if !p.started.load(Ordering::SeqCst) => {
                        if !std::mem::replace(&mut noted, true) {
                            eprintln!("banger: interrupted; {}", p.before);
                        }
                        Input::Signal(Signal::Int)
                    }
                    _ => {
                        let again = interrupted.swap(true, Ordering::SeqCst);
                        if !again {
                            eprintln!("\r\nbanger: interrupting the command (Ctrl-C again kills it)");
                        }
                        Input::Signal(if again { Signal::Kill } else { Signal::Int })
                    }
                },
                _ = next(&mut term) => Input::Signal(Signal::Term),
                _ = next(&mut hup) => Input::Signal(Signal::Hup),
                _ = next(&mut winch), if tty => match window_size() {
                    Some(s) => Input::Resize { rows: s.rows, cols: s.cols },
                    None => continue,
                },
            };
            if tx.send(input).await.is_err() {
                return;
            }
        }
    });
}

/// Whether stdin is forwarded (a pipe or file, or `-i`/`-t`), and the
/// terminal's size with `-t` (which needs one on stdin).
pub(super) fn terminal(opts: &ExecOpts) -> Result<(bool, Option<TtySize>), CliError> {
    let stdin_tty = std::io::stdin().is_terminal();
    if opts.tty && !stdin_tty {
        return Err(CliError::usage(
            "invalid flags",
            "-t needs a terminal on stdin; drop -t to pipe input",
        ));
    }
    let forward = opts.tty || opts.interactive || !stdin_tty;
    let tty = opts
        .tty
        .then(|| window_size().unwrap_or(TtySize { rows: 24, cols: 80 }));
    Ok((forward, tty))
}

/// Runs `argv` in the VM `name`, output to our stdout and stderr.
pub async fn exec(
    ctx: &Ctx,
    name: &str,
    argv: Vec<String>,
    opts: ExecOpts,
) -> Result<ExecResult, CliError> {
    let (forward, tty) = terminal(&opts)?;
    let mut c = client::connect(&ctx.layout, true).await?;
    let (tx, rx) = mpsc::channel(64);
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    forward_signals(tx.clone(), opts.tty, interrupted.clone(), None);
    let _raw = match opts.tty {
        true => Some(RawMode::enter()?),
        false => None,
    };
    if forward {
        pump_stdin(tx);
    } else {
        drop(tx);
    }
    let view = ProgressView::plain();
    let req = Request::VmExec {
        name: name.into(),
        argv,
        cwd: opts.cwd,
        env: opts.env,
        tty,
        stdin: forward,
        auto_prepare: opts.auto_prepare,
    };
    let r = c
        .call_with_inputs(
            crate::protocol::new_request_id(),
            req,
            |e| view.event(e),
            Some(rx),
        )
        .await
        .map_err(|e| client::client_error(e, &ctx.layout));
    drop(_raw);
    match r? {
        Reply::Exit { code, message } => Ok(ExecResult {
            code,
            message,
            interrupted: interrupted.load(std::sync::atomic::Ordering::SeqCst),
        }),
        other => Err(client::unexpected(other)),
    }
}

/// `KEY=VALUE` for `--env`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v))
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}
