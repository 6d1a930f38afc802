//! One request on a QUIC stream: read its frame head and header, hand them and the rest
//! of the stream (its payload) to the request core ([`super::request`]), and send what it
//! answers (the layout is documented in `strata_proto::wire`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{ReadExactError, RecvStream, SendStream};
use rkyv::util::AlignedVec;
use strata_proto::wire::Opcode;
use strata_proto::wire::{self, RequestHead, REQUEST_HEAD_LEN};
use strata_proto::{Error, ErrorCode};

use super::request::{self, protocol, Failure, Payload, Response, Shared};
use super::session::Session;

/// How long a client may take to send a request's head and header once it opened the
/// stream. Payloads are bounded by the reservation deadline instead.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

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

impl Payload for RecvStream {
    async fn fill(&mut self, buf: &mut [u8]) -> Result<usize, Failure> {
        match self.read_exact(buf).await {
            Ok(()) => Ok(buf.len()),
            Err(ReadExactError::FinishedEarly(n)) => Ok(n),
            Err(ReadExactError::ReadError(_)) => Err(Failure::Broken),
        }
    }

    async fn at_end(&mut self) -> Result<bool, Failure> {
        let mut probe = [0u8; 1];
        match self.read(&mut probe).await {
            Ok(None) => Ok(true),
            Ok(Some(_)) => Ok(false),
            Err(_) => Err(Failure::Broken),
        }
    }
}

/// Serves one request stream from head to answer; `op` is set once the opcode is known.
pub(crate) async fn serve(
    shared: &Shared,
    session: &Arc<Session>,
    send: &mut SendStream,
    recv: &mut RecvStream,
    op: &mut Option<Opcode>,
) -> Result<(), Failure> {
    let head = read_head(recv).await?;
    let opcode = head.check()?;
    *op = Some(opcode);
    request::admit(shared, session, opcode, head.header_len)?;
    let header = read_header(recv, head.header_len).await?;
    match request::answer(shared, session, opcode, &header, recv).await? {
        Response::Frame(frame) => reply(send, &frame).await,
        Response::WithPayload(frame, value) => reply_with_payload(send, frame, value).await,
    }
}
