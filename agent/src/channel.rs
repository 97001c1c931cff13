//! The agent channel: one byte stream between the host and the guest agent
//! (a virtio-serial port on QEMU, one vsock connection on Firecracker) that
//! carries a yamux session. Around yamux, a thin framing layer lets the host
//! start a fresh session at any time, whatever the other side's parser was
//! doing (a daemon restart, a guest agent restart, a VM restored from a
//! snapshot that still holds an old session in memory):
//!
//! ```text
//! frame   = MAGIC (2 bytes) kind (1) len (2, big-endian) payload (len)
//! HELLO   host → guest   payload: session id (8 bytes); start a session
//! ACK     guest → host   payload: the session id it now serves
//! DATA    both ways      payload: yamux bytes of the current session
//! RESET   guest → host   payload: empty; the agent (re)started, no session
//! ```
//!
//! A reader that meets bytes that are not a frame drops them up to the next
//! MAGIC. The host repeats HELLO until it reads the matching ACK, so a HELLO
//! lost in a resync is sent again; a guest ignores a HELLO for the session it
//! already serves (duplicates queued while it booted).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Marks the start of every frame.
pub const MAGIC: [u8; 2] = [0xB6, 0x47];
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;
/// The vsock port the agent listens on (Firecracker).
pub const VSOCK_PORT: u32 = 1024;
/// The name of the virtio-serial port (QEMU).
pub const PORT_NAME: &str = "banger.agent";

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    Ack = 2,
    Data = 3,
    Reset = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Ack,
            3 => Kind::Data,
            4 => Kind::Reset,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(u64),
    Ack(u64),
    Data(Vec<u8>),
    Reset,
}

/// Encodes a frame header and payload.
pub fn encode(kind: Kind, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let mut v = Vec::with_capacity(5 + payload.len());
    v.extend_from_slice(&MAGIC);
    v.push(kind as u8);
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> io::Result<()> {
    let buf = match f {
        Frame::Hello(id) => encode(Kind::Hello, &id.to_be_bytes()),
        Frame::Ack(id) => encode(Kind::Ack, &id.to_be_bytes()),
        Frame::Data(d) => encode(Kind::Data, d),
        Frame::Reset => encode(Kind::Reset, &[]),
    };
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads frames from a byte stream, resynchronising on garbage.
pub struct FrameReader<R> {
    r: R,
    buf: Vec<u8>,
    /// Bytes dropped while resynchronising (for logs and tests).
    pub dropped: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(r: R) -> Self {
        FrameReader {
            r,
            buf: Vec::with_capacity(2 * (MAX_PAYLOAD + 5)),
            dropped: 0,
        }
    }

    async fn fill(&mut self, want: usize) -> io::Result<()> {
        let mut chunk = [0u8; 16 << 10];
        while self.buf.len() < want {
            let n = self.r.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }

    /// Drops bytes up to the next MAGIC (at least one byte).
    fn resync(&mut self) {
        let at = self.buf[1..]
            .windows(2)
            .position(|w| w == MAGIC)
            .map(|p| p + 1)
            .unwrap_or_else(|| {
                // Keep a last byte that may be the first half of MAGIC.
                if self.buf.last() == Some(&MAGIC[0]) {
                    self.buf.len() - 1
                } else {
                    self.buf.len()
                }
            });
        self.dropped += at as u64;
        self.buf.drain(..at);
    }

    /// The next well-formed frame. EOF ends the stream with an error.
    pub async fn next(&mut self) -> io::Result<Frame> {
        loop {
            self.fill(5).await?;
            if self.buf[..2] != MAGIC {
                self.resync();
                continue;
            }
            let Some(kind) = Kind::from_u8(self.buf[2]) else {
                self.resync();
                continue;
            };
            let len = u16::from_be_bytes([self.buf[3], self.buf[4]]) as usize;
            let fixed = match kind {
                Kind::Hello | Kind::Ack => Some(8),
                Kind::Reset => Some(0),
                Kind::Data => None,
            };
            if fixed.is_some_and(|f| f != len) {
                self.resync();
                continue;
            }
            self.fill(5 + len).await?;
            let payload: Vec<u8> = self.buf[5..5 + len].to_vec();
            self.buf.drain(..5 + len);
            let id = || u64::from_be_bytes(payload[..8].try_into().unwrap_or([0; 8]));
            return Ok(match kind {
                Kind::Hello => Frame::Hello(id()),
                Kind::Ack => Frame::Ack(id()),
                Kind::Data => Frame::Data(payload),
                Kind::Reset => Frame::Reset,
            });
        }
    }
}

/// Why a session over the channel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer asked for a new session (HELLO with another id, or RESET).
    Restart(Option<u64>),
    /// The channel closed or failed.
    Closed(String),
    /// The yamux side closed (its session ended).
    Local,
}

/// Runs one session's framing between the channel (`rd`, `wr`) and `pipe`
/// (the other end of the duplex yamux runs over), until one side ends.
/// `id` is the session's id: on the guest a HELLO with the same id is a
/// duplicate and ignored, any other ends the session.
pub async fn pump<R, W, P>(rd: &mut FrameReader<R>, wr: &mut W, pipe: P, id: u64) -> SessionEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    P: AsyncRead + AsyncWrite + Unpin,
{
    let (mut prd, mut pwr) = tokio::io::split(pipe);
    let inbound = async {
        loop {
            match rd.next().await {
                Ok(Frame::Data(d)) => {
                    if pwr.write_all(&d).await.is_err() {
                        return SessionEnd::Local;
                    }
                }
                Ok(Frame::Hello(other)) if other == id => {}
                Ok(Frame::Hello(other)) => return SessionEnd::Restart(Some(other)),
                Ok(Frame::Reset) => return SessionEnd::Restart(None),
                Ok(Frame::Ack(_)) => {}
                Err(e) => return SessionEnd::Closed(e.to_string()),
            }
        }
    };
    let outbound = async {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        loop {
            let n = match prd.read(&mut buf).await {
                Ok(0) | Err(_) => return SessionEnd::Local,
                Ok(n) => n,
            };
            if let Err(e) = write_frame(wr, &Frame::Data(buf[..n].to_vec())).await {
                return SessionEnd::Closed(e.to_string());
            }
        }
    };
    tokio::select! {
        e = inbound => e,
        e = outbound => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames_of(bytes: Vec<u8>) -> (Vec<Frame>, u64) {
        let mut r = FrameReader::new(&bytes[..]);
        let mut out = Vec::new();
        while let Ok(f) = r.next().await {
            out.push(f);
        }
        (out, r.dropped)
    }

    #[tokio::test]
    async fn frames_round_trip_and_garbage_is_skipped() {
        let mut bytes = b"garbage\xb6".to_vec();
        bytes.extend(encode(Kind::Hello, &7u64.to_be_bytes()));
        bytes.extend(b"\xb6\x47\x09junk");
        bytes.extend(encode(Kind::Data, b"payload"));
        // A HELLO with a wrong length is not taken for one.
        bytes.extend(encode(Kind::Hello, b"short"));
        bytes.extend(encode(Kind::Reset, &[]));
        bytes.extend(encode(Kind::Ack, &9u64.to_be_bytes()));
        let (frames, dropped) = frames_of(bytes).await;
        assert_eq!(
            frames,
            vec![
                Frame::Hello(7),
                Frame::Data(b"payload".to_vec()),
                Frame::Reset,
                Frame::Ack(9)
            ]
        );
        assert!(dropped > 10, "{dropped}");
    }

    #[tokio::test]
    async fn a_frame_split_across_reads_is_reassembled() {
        let (a, mut b) = tokio::io::duplex(8);
        let writer = tokio::spawn(async move {
            for byte in encode(Kind::Data, &[1u8; 300]) {
                b.write_all(&[byte]).await.unwrap();
            }
        });
        let mut r = FrameReader::new(a);
        assert_eq!(r.next().await.unwrap(), Frame::Data(vec![1u8; 300]));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_new_hello_ends_the_session_and_a_duplicate_does_not() {
        let mut bytes = encode(Kind::Hello, &5u64.to_be_bytes());
        bytes.extend(encode(Kind::Data, b"abc"));
        bytes.extend(encode(Kind::Hello, &6u64.to_be_bytes()));
        let mut rd = FrameReader::new(&bytes[..]);
        let mut sink = Vec::new();
        let (pipe, mut far) = tokio::io::duplex(1024);
        let end = pump(&mut rd, &mut sink, pipe, 5).await;
        assert_eq!(end, SessionEnd::Restart(Some(6)));
        let mut got = [0u8; 3];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
    }
}
