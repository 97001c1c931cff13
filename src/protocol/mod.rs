//! The wire protocol between `banger` and `bangerd`, and between `bangerd` and
//! `bangerd-root`.
//!
//! A frame is a `u32` big-endian length followed by a bincode 2 (serde)
//! payload, at most [`MAX_FRAME`] bytes. A connection opens with [`Hello`],
//! answered by [`HelloReply`]. Then the client sends [`Call`]s; each is answered
//! by zero or more [`Response::Event`]s and exactly one [`Response::Final`],
//! each wrapped in an [`Envelope`] carrying the call's request id: calls may be
//! pipelined on one connection and are served concurrently.
//! A malformed frame closes that connection only, after an error the peer can
//! print where one can still be sent.
//!
//! The two message sets are separate types: [`cli`] (rich, user-facing) and
//! [`helper`] (small, typed privileged operations). Only this module derives
//! `Serialize` for the wire.

pub mod cli;
pub mod conn;
pub mod error;
pub mod frame;
pub mod helper;

pub use error::{ErrorCode, RpcError};
pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Bumped on any incompatible change to either message set.
pub const PROTOCOL_VERSION: u32 = 11;

/// First frame from a client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u32,
    pub client_version: String,
}

impl Hello {
    pub fn current() -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            client_version: crate::version::version().to_string(),
        }
    }
}

/// The server's answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum HelloReply {
    Welcome {
        protocol_version: u32,
        server_version: String,
        server_pid: u32,
    },
    Error(RpcError),
}

/// One request with its operation id (echoed in errors and logs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call<R> {
    pub request_id: String,
    pub request: R,
}

/// What a client sends after the handshake: calls, and the inputs of calls
/// in flight (stdin, signals, resizes of a `vm exec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientFrame<R> {
    Call(Call<R>),
    Input {
        request_id: String,
        input: cli::Input,
    },
}

/// A decoded client frame.
#[derive(Debug)]
pub enum Incoming<R> {
    Call(Call<R>),
    Input {
        request_id: String,
        input: cli::Input,
    },
}

/// Decodes a [`ClientFrame`] payload, telling unknown methods apart from
/// garbage.
pub fn decode_client_frame<R: Methods>(payload: &[u8]) -> Result<Incoming<R>, CallDecodeError> {
    let (tag, rest): (u32, _) = decode_head(payload)?;
    match tag {
        0 => decode_call(rest).map(Incoming::Call),
        1 => {
            let ((request_id, input), tail): ((String, cli::Input), _) = decode_head(rest)?;
            if !tail.is_empty() {
                return Err(CallDecodeError::Malformed {
                    request_id: Some(request_id),
                    message: "trailing bytes after an input".into(),
                });
            }
            Ok(Incoming::Input { request_id, input })
        }
        t => Err(CallDecodeError::Malformed {
            request_id: None,
            message: format!("unknown frame type {t}"),
        }),
    }
}

/// What the server sends back for a [`Call`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response<E, R> {
    Event(E),
    Final(Result<R, RpcError>),
}

/// A [`Response`] tagged with the request id of the call it answers, so several
/// calls can be in flight on one connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<E, R> {
    pub request_id: String,
    pub body: Response<E, R>,
}

/// A request enum whose variants are methods; lets the server tell an unknown
/// method (a newer client) from a malformed request.
pub trait Methods: DeserializeOwned {
    /// Number of variants; bincode tags them `0..COUNT`.
    const COUNT: u32;
}

/// Why a [`Call`] frame could not be decoded.
#[derive(Debug)]
pub enum CallDecodeError {
    /// The request id was readable, the method tag was not one we know.
    UnknownMethod { request_id: String, tag: u32 },
    /// Anything else; `request_id` when it could be read.
    Malformed {
        request_id: Option<String>,
        message: String,
    },
}

/// Decodes one value from the front of `payload`, returning what follows.
fn decode_head<T: DeserializeOwned>(payload: &[u8]) -> Result<(T, &[u8]), CallDecodeError> {
    let (v, used) =
        bincode::serde::decode_from_slice(payload, frame::bincode_config()).map_err(|e| {
            CallDecodeError::Malformed {
                request_id: None,
                message: e.to_string(),
            }
        })?;
    Ok((v, &payload[used..]))
}

/// Decodes a [`Call`] payload, telling unknown methods apart from garbage.
pub fn decode_call<R: Methods>(payload: &[u8]) -> Result<Call<R>, CallDecodeError> {
    let cfg = frame::bincode_config();
    let (request_id, rest): (String, _) = decode_head(payload)?;
    let (tag, _): (u32, usize) =
        bincode::serde::decode_from_slice(rest, cfg).map_err(|e| CallDecodeError::Malformed {
            request_id: Some(request_id.clone()),
            message: e.to_string(),
        })?;
    if tag >= R::COUNT {
        return Err(CallDecodeError::UnknownMethod { request_id, tag });
    }
    let (request, used2): (R, usize) =
        bincode::serde::decode_from_slice(rest, cfg).map_err(|e| CallDecodeError::Malformed {
            request_id: Some(request_id.clone()),
            message: e.to_string(),
        })?;
    if used2 != rest.len() {
        return Err(CallDecodeError::Malformed {
            request_id: Some(request_id),
            message: format!("{} trailing bytes after the request", rest.len() - used2),
        });
    }
    Ok(Call {
        request_id,
        request,
    })
}

/// A fresh operation id: 8 hex digits, enough to grep a log.
pub fn new_request_id() -> String {
    use rand::RngExt;
    format!("{:08x}", rand::rng().random::<u32>())
}

/// Checks a client's [`Hello`] and builds the reply.
pub fn answer_hello(hello: &Hello) -> HelloReply {
    if hello.protocol_version != PROTOCOL_VERSION {
        return HelloReply::Error(RpcError::new(
            ErrorCode::BadVersion,
            format!(
                "client {} speaks protocol {}, this server ({}) speaks {}; run matching banger binaries (restart the daemon after an upgrade: banger daemon stop)",
                hello.client_version,
                hello.protocol_version,
                crate::version::version(),
                PROTOCOL_VERSION
            ),
        ));
    }
    HelloReply::Welcome {
        protocol_version: PROTOCOL_VERSION,
        server_version: crate::version::version().to_string(),
        server_pid: std::process::id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::cli::Request;

    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(v, frame::bincode_config()).unwrap()
    }

    #[test]
    fn method_count_matches_the_enum() {
        // The last variant must carry tag COUNT-1; a new variant without a COUNT
        // bump fails here.
        let last = Request::last_variant_for_tests();
        let bytes = encode(&Call {
            request_id: "x".into(),
            request: last,
        });
        let (tag, _): (u32, usize) =
            bincode::serde::decode_from_slice(&bytes[2..], frame::bincode_config()).unwrap();
        assert_eq!(tag, Request::COUNT - 1);
        assert!(decode_call::<Request>(&bytes).is_ok());
    }

    #[test]
    fn client_frames_carry_calls_and_inputs() {
        let call = encode(&ClientFrame::Call(Call {
            request_id: "a".into(),
            request: Request::Ping,
        }));
        assert!(matches!(
            decode_client_frame::<Request>(&call),
            Ok(Incoming::Call(c)) if c.request_id == "a"
        ));
        let input = encode(&ClientFrame::<Request>::Input {
            request_id: "a".into(),
            input: cli::Input::Stdin(b"hi".to_vec()),
        });
        assert!(matches!(
            decode_client_frame::<Request>(&input),
            Ok(Incoming::Input { input: cli::Input::Stdin(d), .. }) if d == b"hi"
        ));
        let mut junk = input.clone();
        junk.push(0);
        assert!(decode_client_frame::<Request>(&junk).is_err());
        assert!(decode_client_frame::<Request>(&[7]).is_err());
    }

    #[test]
    fn helper_method_count_matches_the_enum() {
        use crate::protocol::helper::PrivRequest;
        let last = PrivRequest::last_variant_for_tests();
        let bytes = encode(&Call {
            request_id: "x".into(),
            request: last,
        });
        let (tag, _): (u32, usize) =
            bincode::serde::decode_from_slice(&bytes[2..], frame::bincode_config()).unwrap();
        assert_eq!(tag, PrivRequest::COUNT - 1);
        assert!(decode_call::<PrivRequest>(&bytes).is_ok());
    }

    #[test]
    fn unknown_method_is_told_apart() {
        let mut bytes = encode(&"op1".to_string());
        bytes.push(200); // varint tag 200, beyond any method
        match decode_call::<Request>(&bytes) {
            Err(CallDecodeError::UnknownMethod { request_id, tag }) => {
                assert_eq!(request_id, "op1");
                assert_eq!(tag, 200);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut seed = 0x1234_5678_u64;
        for len in 0..2000usize {
            let buf: Vec<u8> = (0..len % 97)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode_call::<Request>(&buf);
        }
    }

    #[test]
    fn wrong_version_is_refused() {
        let r = answer_hello(&Hello {
            protocol_version: 999,
            client_version: "x".into(),
        });
        match r {
            HelloReply::Error(e) => assert_eq!(e.code, ErrorCode::BadVersion),
            other => panic!("{other:?}"),
        }
    }
}
