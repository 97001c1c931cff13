//! What travels on one yamux stream of the agent channel.
//!
//! Every message is `kind: u8`, `len: u32` big-endian, `len` bytes (at most
//! [`MAX_MSG`]). A stream starts with one [`REQUEST`] (JSON [`Request`]).
//! Simple requests get one [`RESPONSE`] (JSON `Result<T, String>`) and the
//! stream ends. `Exec` streams continue with the frames below.
//!
//! Host → agent on an exec stream: [`STDIN`] data, [`STDIN_EOF`], [`SIGNAL`]
//! (4 bytes, the signal number), [`RESIZE`] (rows, cols: 2 + 2 bytes).
//! Agent → host: [`STARTED`] (the pid, 4 bytes) or [`PORT`] (TCP stdin: the
//! port, 2 bytes, then `STARTED`), [`STDOUT`], [`STDERR`] data, then one of
//! [`EXIT`] (JSON [`ExitStatus`]) or [`ERROR`] (JSON [`ExecError`]).

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bumped on any incompatible change to what follows.
pub const VERSION: u32 = 3;

/// Largest message either side sends or accepts.
pub const MAX_MSG: usize = 1 << 20;

pub const REQUEST: u8 = 1;
pub const RESPONSE: u8 = 2;
pub const STDIN: u8 = 3;
pub const STDIN_EOF: u8 = 4;
pub const SIGNAL: u8 = 5;
pub const RESIZE: u8 = 6;
pub const STARTED: u8 = 7;
pub const STDOUT: u8 = 8;
pub const STDERR: u8 = 9;
pub const EXIT: u8 = 10;
pub const ERROR: u8 = 11;
pub const PORT: u8 = 12;

/// What the host asks on a new stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Answers `Pong` at once: the round-trip floor.
    Ping,
    /// Answers `api::Healthz`.
    Health,
    /// Answers `Vec<api::Port>`.
    Ports,
    /// Answers `Vec<api::HostKey>` (empty until sshd's keys exist).
    HostKeys,
    /// Flushes the guest's filesystems; answers `api::Ack`.
    Sync,
    /// Syncs and powers the guest off; answers `api::Ack` first.
    Poweroff,
    /// Runs a command (the stream continues with exec frames).
    Exec(ExecRequest),
    /// Answers `api::GuestStats` (an agent older than this answers "bad
    /// request": the host says to rebuild the image).
    Stats,
    /// A VM restored from a snapshot takes its own identity; answers
    /// `api::Ack` (its detail lists what could not be done).
    Reidentify(Identity),
    /// Waits (at most `wait_ms`) until the guest is ready for commands
    /// and, with `settled`, until its boot is over; with `ssh`, a restored
    /// clone also until sshd serves its own host key (a VM reported
    /// running is reachable; one made for a single command needs no
    /// sshd). Answers `api::Readiness` (`ready.rs` says what each means).
    Ready {
        settled: bool,
        wait_ms: u64,
        #[serde(default)]
        ssh: bool,
    },
    /// The name servers to use from now on (NAT switched on or off while
    /// the guest runs); answers `api::Ack`.
    Dns { servers: Vec<std::net::Ipv4Addr> },
}

/// Who a restored clone is now: everything a snapshot's guest shares with
/// its other clones and must not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub ip: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub gw: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// `02:xx:xx:xx:xx:xx`.
    pub mac: String,
    /// The address the snapshot's guest had (removed).
    pub old_ip: Option<std::net::Ipv4Addr>,
    /// Random bytes from the host (hex, 32 to 512 bytes): mixed into the
    /// kernel's RNG, which then reseeds.
    pub seed: String,
    /// The host's clock.
    pub now_secs: u64,
    pub now_nanos: u32,
}

/// The answer to `Ping`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pong {
    pub version: u32,
}

/// A command to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecRequest {
    /// Run exactly this argv (no shell).
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    /// Added to the agent's environment (PATH, HOME, TERM ...).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Run on a pseudo-terminal of this size.
    #[serde(default)]
    pub tty: Option<Tty>,
    #[serde(default)]
    pub stdin: Stdin,
}

impl ExecRequest {
    /// `argv` in `cwd`, no input, no terminal.
    pub fn new(argv: Vec<String>, cwd: &str) -> ExecRequest {
        ExecRequest {
            argv,
            cwd: Some(cwd.into()),
            env: vec![],
            tty: None,
            stdin: Stdin::Null,
        }
    }
}

/// A terminal's size and type.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tty {
    pub rows: u16,
    pub cols: u16,
}

/// Where the command's stdin comes from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stdin {
    /// `/dev/null`.
    #[default]
    Null,
    /// [`STDIN`] frames on the stream, then [`STDIN_EOF`].
    Stream,
    /// The first TCP connection to the reported [`PORT`] that presents the
    /// first half of this token (hex, at least 64 digits), answered with
    /// the second half: bulk data at virtio-net speed.
    Tcp { token: String },
}

/// How a command ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// Why a command could not run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecError {
    pub kind: ExecErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExecErrorKind {
    /// The program does not exist (exit code 127).
    NotFound,
    /// It exists but cannot be run, or its directory is missing (126).
    NotExecutable,
    /// The request itself was wrong.
    BadRequest,
    /// Anything else.
    Other,
}

impl ExecErrorKind {
    /// The exit code a shell (and `docker run`) gives this failure.
    pub fn exit_code(self) -> i32 {
        match self {
            ExecErrorKind::NotFound => 127,
            ExecErrorKind::NotExecutable => 126,
            ExecErrorKind::BadRequest | ExecErrorKind::Other => 126,
        }
    }
}

/// Writes one message.
pub async fn write_msg<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    data: &[u8],
) -> std::io::Result<()> {
    if data.len() > MAX_MSG {
        return Err(std::io::Error::other("message too large"));
    }
    // One write: a header and its data in separate writes would become two
    // yamux frames, each a trip through the channel.
    let mut buf = Vec::with_capacity(5 + data.len());
    buf.push(kind);
    buf.extend_from_slice(&(data.len() as u32).to_be_bytes());
    buf.extend_from_slice(data);
    w.write_all(&buf).await
}

/// Writes a JSON message.
pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    kind: u8,
    value: &T,
) -> std::io::Result<()> {
    let data = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_msg(w, kind, &data).await?;
    w.flush().await
}

/// Reads one message of at most `max` bytes (never allocating more). `None`
/// at a clean end of the stream.
pub async fn read_msg<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut hdr = [0u8; 5];
    let mut got = 0;
    while got < 5 {
        let n = r.read(&mut hdr[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    if len > max.min(MAX_MSG) {
        return Err(std::io::Error::other(format!(
            "a message of {len} bytes exceeds the {}-byte limit",
            max.min(MAX_MSG)
        )));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    Ok(Some((hdr[0], data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_oversize_is_refused_before_allocating() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_json(
            &mut a,
            REQUEST,
            &Request::Exec(ExecRequest::new(vec!["true".into()], "/")),
        )
        .await
        .unwrap();
        let (k, d) = read_msg(&mut b, 4096).await.unwrap().unwrap();
        assert_eq!(k, REQUEST);
        let r: Request = serde_json::from_slice(&d).unwrap();
        assert!(matches!(r, Request::Exec(e) if e.argv == ["true"]));
        a.write_all(&[STDOUT, 0xff, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        assert!(read_msg(&mut b, 4096).await.is_err());
        drop(a);
        let (_a, mut c) = tokio::io::duplex(16);
        drop(_a);
        assert!(read_msg(&mut c, 16).await.unwrap().is_none());
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let s = ExitStatus {
            code: None,
            signal: Some(9),
        };
        assert_eq!(s.shell_code(), 137);
        assert_eq!(ExecErrorKind::NotFound.exit_code(), 127);
        assert_eq!(ExecErrorKind::NotExecutable.exit_code(), 126);
    }
}
