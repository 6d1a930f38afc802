//! Reading and writing one request's frames on a QUIC stream (the layout is documented in
//! `strata_proto::wire`).

use std::time::Duration;

use bytes::Bytes;
use quinn::{ReadExactError, RecvStream, SendStream};
use rkyv::util::AlignedVec;
use strata_proto::wire::{self, RequestHead, REQUEST_HEAD_LEN};
use strata_proto::{Error, ErrorCode};

/// Bytes of payload gathered before they are copied into the store: big enough that the
/// per-copy index check is noise, small enough to stay in cache.
const STAGING_LEN: usize = 256 << 10;

/// How long a client may take to send a request's head and header once it opened the
/// stream. Payloads are bounded by the reservation deadline instead.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request did not complete.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Answer with this error frame; the stream is still usable.
    Reply(Error),
    /// Answer with this error frame, then close the whole connection (wrong auth token).
    Refuse(Error),
    /// The stream or connection broke (reset by the peer, connection lost): nobody to
    /// answer.
    Broken,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Reply(e)
    }
}

fn protocol(msg: String) -> Failure {
    Failure::Reply(Error::new(ErrorCode::Protocol, msg))
}

/// Reads the fixed request head.
pub(crate) async fn read_head(recv: &mut RecvStream) -> Result<RequestHead, Failure> {
    let mut b = [0u8; REQUEST_HEAD_LEN];
    let read = tokio::time::timeout(HEADER_TIMEOUT, recv.read_exact(&mut b)).await;
    match read {
        Ok(Ok(())) => Ok(RequestHead::decode(b)),
        Ok(Err(ReadExactError::FinishedEarly(n))) => Err(protocol(format!(
            "request ended after {n} bytes, inside the {REQUEST_HEAD_LEN}-byte frame head"
        ))),
        Ok(Err(ReadExactError::ReadError(_))) => Err(Failure::Broken),
        Err(_) => Err(timed_out("the request head")),
    }
}

fn timed_out(what: &str) -> Failure {
    let msg = format!("{what} did not arrive within {HEADER_TIMEOUT:?}");
    Failure::Reply(Error::new(ErrorCode::Timeout, msg))
}

/// Reads a `len`-byte header into aligned memory, ready for `wire::access`.
pub(crate) async fn read_header(recv: &mut RecvStream, len: u32) -> Result<AlignedVec, Failure> {
    let len = len as usize;
    let mut buf = AlignedVec::<16>::with_capacity(len);
    buf.resize(len, 0);
    let read = tokio::time::timeout(HEADER_TIMEOUT, recv.read_exact(&mut buf)).await;
    match read {
        Ok(Ok(())) => Ok(buf),
        Ok(Err(ReadExactError::FinishedEarly(n))) => Err(protocol(format!(
            "request ended after {n} of the {len} header bytes announced"
        ))),
        Ok(Err(ReadExactError::ReadError(_))) => Err(Failure::Broken),
        Err(_) => Err(timed_out("the request header")),
    }
}

/// Refuses a header on an operation that takes none.
pub(crate) fn expect_no_header(header: &AlignedVec) -> Result<(), Failure> {
    if header.is_empty() {
        Ok(())
    } else {
        Err(protocol(format!(
            "this operation takes no header, got {} bytes",
            header.len()
        )))
    }
}

/// Receives exactly `len` payload bytes and hands them to `sink(offset, bytes)` in pieces
/// of up to [`STAGING_LEN`]; then checks the sender finished the stream right after.
pub(crate) async fn receive_payload(
    recv: &mut RecvStream,
    len: u64,
    mut sink: impl FnMut(u64, &[u8]) -> Result<(), Error>,
) -> Result<(), Failure> {
    let mut staging = vec![0u8; STAGING_LEN.min(len as usize)];
    let mut offset = 0u64;
    while offset < len {
        let want = staging.len().min((len - offset) as usize);
        match recv.read_exact(&mut staging[..want]).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(n)) => {
                return Err(protocol(format!(
                    "payload ended after {} of the {len} bytes announced",
                    offset + n as u64
                )))
            }
            Err(ReadExactError::ReadError(_)) => return Err(Failure::Broken),
        }
        sink(offset, &staging[..want])?;
        offset += want as u64;
    }
    let mut probe = [0u8; 1];
    match recv.read(&mut probe).await {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(protocol(format!(
            "payload is longer than the {len} bytes announced"
        ))),
        Err(_) => Err(Failure::Broken),
    }
}

/// Sends a complete response frame and finishes the stream.
pub(crate) async fn reply(send: &mut SendStream, frame: &[u8]) -> Result<(), Failure> {
    send.write_all(frame).await.map_err(|_| Failure::Broken)?;
    send.finish().map_err(|_| Failure::Broken)
}

/// Sends a response frame followed by a payload, without copying the payload.
pub(crate) async fn reply_with_payload(
    send: &mut SendStream,
    frame: Vec<u8>,
    payload: Bytes,
) -> Result<(), Failure> {
    let mut chunks = [Bytes::from(frame), payload];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(|_| Failure::Broken)?;
    send.finish().map_err(|_| Failure::Broken)
}

/// Answers a failed request: an error frame when there is someone to answer, and a stop
/// so the client does not keep sending a payload nobody will read.
pub(crate) async fn reply_error(send: &mut SendStream, recv: &mut RecvStream, error: &Error) {
    let _ = recv.stop(wire::STOP_ANSWERED.into());
    let _ = reply(send, &wire::encode_error(error)).await;
}
