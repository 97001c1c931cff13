//! The CLI's connection to `bangerd`, starting the daemon when needed.

use std::time::Duration;

use super::render::{CliError, ErrorKind};
use crate::host::process::{spawn_service, Started};
use crate::paths::{sibling_binary, Layout};
use crate::protocol::cli::{Event, Reply, Request};
use crate::protocol::conn::{Client, ClientError};

/// A client of the daemon.
pub type DaemonClient = Client<Request, Event, Reply>;

/// Turns a client-side failure into the line the user sees.
pub fn client_error(e: ClientError, layout: &Layout) -> CliError {
    match e {
        ClientError::NotRunning { path } => CliError::new(
            ErrorKind::DaemonNotRunning,
            "daemon not running",
            format!(
                "nothing is listening on {}; start it with: banger daemon start",
                path.display()
            ),
        ),
        ClientError::PermissionDenied { path, hint } => CliError::new(
            ErrorKind::Rpc(crate::protocol::ErrorCode::Unauthorized),
            "unauthorized",
            format!("cannot open {}: {hint}", path.display()),
        ),
        ClientError::Refused(e) | ClientError::Rpc(e) => e.into(),
        ClientError::Frame(f) => CliError::new(
            ErrorKind::Connection,
            "connection failed",
            format!(
                "{f}; the daemon may have crashed, see {}",
                layout.daemon_log().display()
            ),
        ),
        other => CliError::new(
            ErrorKind::Connection,
            "connection failed",
            other.to_string(),
        ),
    }
}

/// Connects to the daemon; with `autostart`, starts it first if nothing
/// listens.
pub async fn connect(layout: &Layout, autostart: bool) -> Result<DaemonClient, CliError> {
    let socket = layout.daemon_socket();
    // A daemon on its way out (killed, or stopping) can still take a
    // connection and then drop it mid-greeting, and can still hold its lock
    // while a new one starts: both are retried for a bounded time.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut started = false;
    loop {
        let retry = std::time::Instant::now() < deadline;
        match DaemonClient::connect(&socket).await {
            Ok(c) => return Ok(c),
            Err(e) if retry && vanishing(&e) => {}
            // A service that systemd has just (re)started: its socket
            // comes within moments.
            Err(ClientError::NotRunning { .. })
                if autostart
                    && layout.system
                    && retry
                    && matches!(
                        crate::system::unit_state(crate::system::DAEMON_UNIT).as_str(),
                        "active" | "activating"
                    ) => {}
            Err(ClientError::NotRunning { .. }) if autostart && layout.system => {
                return Err(CliError::new(
                    ErrorKind::DaemonNotRunning,
                    "daemon not running",
                    "the bangerd service is not running; start it with: sudo systemctl start bangerd",
                ))
            }
            Err(ClientError::NotRunning { .. }) if autostart && !started => {
                start_daemon(layout).await?;
                started = true;
                continue;
            }
            Err(ClientError::NotRunning { .. }) if autostart && retry => {
                // "already running" came from one that is going away: start
                // again once it has.
                started = false;
            }
            Err(e) => return Err(client_error(e, layout)),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a connection failed the way one to an exiting daemon does: it was
/// accepted (queued) and then closed before the greeting completed.
fn vanishing(e: &ClientError) -> bool {
    use crate::protocol::frame::FrameError;
    match e {
        ClientError::Frame(FrameError::Closed | FrameError::Truncated) => true,
        ClientError::Connect { source, .. } => source.kind() == std::io::ErrorKind::ConnectionReset,
        ClientError::Frame(FrameError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Starts `bangerd` in the background and waits until it is ready.
pub async fn start_daemon(layout: &Layout) -> Result<(), CliError> {
    let program = sibling_binary("bangerd");
    let log = layout.daemon_log();
    let res = tokio::task::spawn_blocking(move || {
        spawn_service(&program, &[], &log, Duration::from_secs(60))
    })
    .await
    .map_err(|e| {
        CliError::new(
            ErrorKind::DaemonStart,
            "daemon failed to start",
            e.to_string(),
        )
    })?;
    match res {
        Ok(Started::Ready(_)) | Ok(Started::AlreadyRunning) => Ok(()),
        Err(msg) => Err(CliError::new(
            ErrorKind::DaemonStart,
            "daemon failed to start",
            msg,
        )),
    }
}

/// Sends one request and returns its reply, rendering events with `on_event`.
pub async fn request(
    client: &mut DaemonClient,
    layout: &Layout,
    req: Request,
    on_event: impl FnMut(Event),
) -> Result<Reply, CliError> {
    client
        .call(req, on_event)
        .await
        .map_err(|e| client_error(e, layout))
}

/// A reply of an unexpected kind (a version skew bug).
pub fn unexpected(reply: Reply) -> CliError {
    CliError::new(
        ErrorKind::Protocol,
        "protocol error",
        format!(
            "unexpected reply from the daemon: {reply:?}; run matching banger and bangerd binaries"
        ),
    )
}
