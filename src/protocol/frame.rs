//! Length-prefixed bincode frames.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload either side accepts or sends (16 MiB).
pub const MAX_FRAME: usize = 16 << 20;

/// The one bincode configuration used on the wire.
pub fn bincode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME>,
> {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Errors reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("cannot encode frame: {0}")]
    Encode(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `value` as a frame payload.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let payload = bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(payload.len()));
    }
    Ok(payload)
}

/// Decodes a whole payload as `T` (trailing bytes are an error).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (v, used) = bincode::serde::decode_from_slice(payload, bincode_config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes",
            payload.len() - used
        )));
    }
    Ok(v)
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, value: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let payload = encode(value)?;
    write_raw(w, &payload).await
}

/// Writes an already-encoded payload as a frame.
pub async fn write_raw<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame's payload. The length is checked before anything is
/// allocated, so a hostile length prefix costs nothing.
pub async fn read_raw<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Closed
            } else {
                FrameError::Truncated
            });
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(payload)
}

/// Reads and decodes one frame.
pub async fn read_frame<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let payload = read_raw(r).await?;
    decode(&payload)
}

/// Frames read through a buffer that outlives each read: a read cancelled
/// by `select!` (another branch won) loses no byte, where [`read_frame`]'s
/// would lose the part of a frame it had read, and the stream would be out
/// of step from then on.
#[derive(Default)]
pub struct BufferedFrames {
    buf: Vec<u8>,
}

impl BufferedFrames {
    /// The next frame, decoded. Cancellation-safe.
    pub async fn next<R, T>(&mut self, r: &mut R) -> Result<T, FrameError>
    where
        R: AsyncRead + Unpin,
        T: DeserializeOwned,
    {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > MAX_FRAME {
                    return Err(FrameError::TooLarge(len));
                }
                if self.buf.len() >= 4 + len {
                    let v = decode(&self.buf[4..4 + len]);
                    self.buf.drain(..4 + len);
                    return v;
                }
                self.buf.reserve(4 + len - self.buf.len());
            } else {
                self.buf.reserve(4096);
            }
            // `read_buf` keeps what it read even when this future is dropped.
            if r.read_buf(&mut self.buf).await? == 0 {
                return Err(if self.buf.is_empty() {
                    FrameError::Closed
                } else {
                    FrameError::Truncated
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_cancelled_mid_frame_loses_nothing() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let big = vec![7u8; 100_000];
        let mut bytes = Vec::new();
        for v in [&big, &vec![1u8, 2, 3]] {
            let p = encode(v).unwrap();
            bytes.extend((p.len() as u32).to_be_bytes());
            bytes.extend(p);
        }
        // Half of the first frame, then a read that is given up on.
        let half = bytes.len() / 3;
        a.write_all(&bytes[..half]).await.unwrap();
        let mut frames = BufferedFrames::default();
        let cancelled = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            frames.next::<_, Vec<u8>>(&mut b),
        )
        .await;
        assert!(cancelled.is_err(), "the frame is not whole yet");
        a.write_all(&bytes[half..]).await.unwrap();
        let first: Vec<u8> = frames.next(&mut b).await.unwrap();
        assert_eq!(first, big);
        let second: Vec<u8> = frames.next(&mut b).await.unwrap();
        assert_eq!(second, vec![1, 2, 3]);
        drop(a);
        assert!(matches!(
            frames.next::<_, Vec<u8>>(&mut b).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &("hello".to_string(), 42u64))
            .await
            .unwrap();
        let v: (String, u64) = read_frame(&mut b).await.unwrap();
        assert_eq!(v, ("hello".to_string(), 42));
    }

    #[tokio::test]
    async fn huge_length_is_refused_without_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        match read_raw(&mut b).await {
            Err(FrameError::TooLarge(n)) => assert_eq!(n, 1 << 30),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn truncated_frame_is_reported() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&100u32.to_be_bytes()).await.unwrap();
        a.write_all(&[1, 2, 3]).await.unwrap();
        drop(a);
        assert!(matches!(read_raw(&mut b).await, Err(FrameError::Truncated)));
    }

    #[tokio::test]
    async fn clean_close_between_frames() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(matches!(read_raw(&mut b).await, Err(FrameError::Closed)));
    }

    #[test]
    fn oversized_inner_length_is_a_decode_error() {
        // A Vec<u8> claiming 1 GiB inside a tiny payload.
        let mut payload = vec![0xfc]; // varint marker for u32 follows
        payload.extend_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(decode::<Vec<u8>>(&payload).is_err());
    }
}
