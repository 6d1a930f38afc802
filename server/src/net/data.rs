//! The TCP data plane, server side: value bytes between hosts, beside the QUIC control plane.
//!
//! A data connection opens with the exchange of [`strata_proto::data`]: the server sends a
//! fresh nonce, the client answers with its QUIC session's number and a MAC of the nonce
//! keyed by that session's secret. From then on the connection acts for that session and
//! carries two requests, answered in order:
//!
//! * `DataGet` names a read lease by its grant, which the server signed for this session
//!   when it granted the lease (so a lease cannot be borrowed from another session or
//!   forged), and asks for a range of the value. The server sends the range straight from
//!   the tier's memory, a socket buffer at a time, checking under an epoch pin before each
//!   step that the value is still where the lease found it (`engine::in_place`). Values in
//!   tiers read through I/O or device copies are read whole into a staging buffer first.
//! * `DataPut` names a reservation this session holds (by writer id and key) and a range of
//!   it; the server receives from the socket straight into the reserved extent, the same
//!   way. The client then commits over QUIC.
//!
//! A refused get is answered with an error frame and the connection goes on. A refused put
//! is answered with an error frame and the connection closes, since its payload is on the
//! way and is not read. A connection that dies or stalls past the transfer timeout in the
//! middle of a put has that reservation revoked at once; in the middle of a get, nothing
//! was changed. When the QUIC session ends, its data connections close.

use std::collections::HashMap;
use std::io::{ErrorKind, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ring::hmac;
use rkyv::util::AlignedVec;
use strata_proto::data::{self, CLAIM_LEN, NONCE_LEN, SECRET_LEN};
use strata_proto::msg::{DataGetRequest, DataPlaneOffer, LeaseGrant, Location, PutWriteRequest};
use strata_proto::wire::{
    decode, encode_bare_response, encode_error, Opcode, RequestHead, REQUEST_HEAD_LEN,
};
use strata_proto::{Error, ErrorCode, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::task::TaskTracker;

use strata_copy::give_way::{self, GIVE_WAY_EVERY};

use super::session::{DataCredentials, Session};
use crate::metrics::{Metrics, LOST};
use strata_engine::{Store, WriterId};

/// How long a new connection has for the TLS handshake and its claim.
const OPENING_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes staged per step where bytes cannot move in place (TLS, device and ssd tiers).
const STAGING_LEN: usize = GIVE_WAY_EVERY;

/// The data plane threads' nice value (0 is the default, 19 the lowest): the same as the
/// client's copy threads, and for the same reason.
const DATA_NICE: i32 = 10;

/// The threads the data plane runs on: a runtime of its own, below the default priority.
///
/// A get over the data plane is a stream of `write` calls; the kernel copies the value
/// into the socket inside them, on the calling thread. With 25 loads in flight those
/// calls kept the QUIC runtime's threads busy, and a lookup that arrived waited for a
/// thread to come back to the reactor: the engine's scheduler blocks on that lookup. On
/// threads of their own at nice 10, moving at most [`GIVE_WAY_EVERY`] bytes per call and
/// offering the core between calls ([`strata_copy::give_way`]), the transfers leave the
/// cores to a woken control thread within one step and still take all the time it
/// leaves idle.
pub(crate) struct DataRuntime(Option<tokio::runtime::Runtime>);

impl DataRuntime {
    /// As many threads as cores (the transfers are bound by copies).
    pub(crate) fn start() -> Result<DataRuntime> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("strata-data")
            .on_thread_start(|| {
                lower_priority();
                give_way::bulk_thread();
            })
            .enable_all()
            .build()
            .map(|rt| DataRuntime(Some(rt)))
            .map_err(|e| Error::new(ErrorCode::Internal, format!("data plane threads: {e}")))
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until drop").handle()
    }
}

impl Drop for DataRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is refused inside another runtime (the service
        // is dropped in one); its tasks have ended or are abandoned by then.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority to [`DATA_NICE`] (on Linux a nice value belongs to
/// the thread). A refusal leaves it as it was: transfers then share the cores equally.
fn lower_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, DATA_NICE) {
        tracing::debug!("data plane thread keeps its priority: {e}");
    }
}

/// How the data plane listens.
#[derive(Clone, Debug)]
pub struct DataPlaneConfig {
    /// TCP address to listen on.
    pub listen: SocketAddr,
    /// Data connections speak TLS with the QUIC certificate.
    pub tls: bool,
    /// Bound on one transfer (request head to last byte).
    pub transfer_timeout: Duration,
}

/// The data plane's listener and what it knows of the QUIC sessions.
pub(crate) struct DataPlane {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    sessions: Mutex<HashMap<u64, Weak<Session>>>,
    next_session: AtomicU64,
    /// Signs lease grants; never leaves the server, new at every start.
    lease_key: hmac::Key,
    store: Arc<Store>,
    in_place_tiers: Vec<u8>,
    transfer_timeout: Duration,
    metrics: Arc<Metrics>,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out)
        .map_err(|e| Error::new(ErrorCode::Internal, format!("no randomness: {e}")))?;
    Ok(out)
}

/// Why a transfer ended early.
enum Broken {
    /// Answer with this error frame and go on serving the connection.
    Reply(Error),
    /// Answer with this error frame, then close the connection.
    ReplyAndClose(Error),
    /// The connection failed (or timed out) mid-transfer: nobody to answer.
    Lost,
}

impl From<Error> for Broken {
    fn from(e: Error) -> Broken {
        Broken::Reply(e)
    }
}

impl DataPlane {
    /// Binds the TCP listener; `tls` is the server's TLS configuration when data
    /// connections must speak TLS. Call inside a tokio runtime.
    pub fn bind(
        config: &DataPlaneConfig,
        store: Arc<Store>,
        tls: Option<rustls::ServerConfig>,
        metrics: Arc<Metrics>,
    ) -> Result<DataPlane> {
        let std_listener = std::net::TcpListener::bind(config.listen).map_err(|e| {
            let msg = format!("data plane cannot listen on {}: {e}", config.listen);
            Error::new(ErrorCode::Unavailable, msg)
        })?;
        std_listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(std_listener))
            .map_err(|e| Error::new(ErrorCode::Internal, format!("data plane socket: {e}")))
            .and_then(|listener| {
                let tls = tls.map(|mut c| {
                    c.alpn_protocols = vec![strata_proto::data::ALPN.to_vec()];
                    TlsAcceptor::from(Arc::new(c))
                });
                let key = random::<32>()?;
                let mut tiers: Vec<u8> = store.shared_segments().iter().map(|(t, _)| *t).collect();
                tiers.dedup(); // one entry per segment, in tier order
                Ok(DataPlane {
                    listener,
                    tls,
                    sessions: Mutex::new(HashMap::new()),
                    next_session: AtomicU64::new(1),
                    lease_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
                    store,
                    in_place_tiers: tiers,
                    transfer_timeout: config.transfer_timeout,
                    metrics,
                })
            })
    }

    /// The address the data plane listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Gives `session` its data-plane number and secret (once) and the offer for its
    /// handshake answer.
    pub fn offer(&self, session: &Arc<Session>) -> Result<DataPlaneOffer> {
        let credentials = match session.data.get() {
            Some(c) => c,
            None => {
                let fresh = DataCredentials {
                    session: self.next_session.fetch_add(1, Ordering::Relaxed),
                    secret: random::<SECRET_LEN>()?,
                    admitted: AtomicBool::new(false),
                };
                let id = fresh.session;
                let c = session.data.get_or_init(|| fresh);
                if c.session == id {
                    self.sessions.lock().insert(id, Arc::downgrade(session));
                }
                c
            }
        };
        Ok(DataPlaneOffer {
            port: self.local_addr().port(),
            session: credentials.session,
            secret: credentials.secret.to_vec(),
            tls: self.tls.is_some(),
            in_place_tiers: self.in_place_tiers.clone(),
        })
    }

    /// Forgets a session whose QUIC connection ended.
    pub fn forget(&self, session: u64) {
        self.sessions.lock().remove(&session);
    }

    /// The grant of a lease on `key` at `location` until `expires_at`, for `session`.
    pub fn grant(
        &self,
        session: u64,
        key: &[u8],
        location: &Location,
        expires_at: u64,
    ) -> LeaseGrant {
        let tag = hmac::sign(
            &self.lease_key,
            &grant_input(session, key, location, expires_at),
        );
        let mut token = [0u8; 16];
        token.copy_from_slice(&tag.as_ref()[..16]);
        LeaseGrant { expires_at, token }
    }

    /// Whether `req` names a lease granted to `session` that has not ended.
    fn check_grant(&self, session: u64, req: &DataGetRequest) -> Result<()> {
        let expected = self.grant(session, &req.key, &req.location, req.grant.expires_at);
        let genuine: bool =
            subtle::ConstantTimeEq::ct_eq(&expected.token[..], &req.grant.token[..]).into();
        if !genuine {
            return Err(Error::new(
                ErrorCode::Unauthorized,
                "the lease was not granted to this session (or not for this key and location)",
            ));
        }
        if self.store.clock().now() >= req.grant.expires_at {
            return Err(Error::new(
                ErrorCode::LeaseExpired,
                "the lease ended: take a new one with get_locations",
            ));
        }
        Ok(())
    }

    /// Accepts data connections until `stop` turns true.
    pub async fn serve(self: Arc<Self>, mut stop: watch::Receiver<bool>, tasks: TaskTracker) {
        loop {
            let accepted = tokio::select! {
                _ = stop.changed() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let plane = Arc::clone(&self);
                    let stop = stop.clone();
                    tasks.spawn(async move {
                        if let Err(why) = plane.serve_connection(stream, stop).await {
                            tracing::debug!("data connection from {peer} ended: {why}");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, most likely: back off rather than spin.
                    tracing::warn!("accepting a data connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn serve_connection(
        &self,
        stream: TcpStream,
        mut stop: watch::Receiver<bool>,
    ) -> std::result::Result<(), String> {
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let opening = async {
            let mut conn = match &self.tls {
                None => Either::Left(stream),
                Some(acceptor) => Either::Right(
                    acceptor
                        .accept(stream)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?,
                ),
            };
            let session = self.admit(&mut conn).await?;
            Ok::<_, String>((conn, session))
        };
        let opened = tokio::time::timeout(OPENING_TIMEOUT, opening)
            .await
            .map_err(|_| "no claim in time".to_owned())
            .and_then(|o| o);
        if opened.is_err() {
            self.metrics.tcp_connections.handoffs_refused.increment(1);
        }
        let (mut conn, session) = opened?;
        let credentials = session
            .data
            .get()
            .expect("admitted sessions have credentials");
        let id = credentials.session;
        let _open = self.metrics.tcp_connections.open();
        loop {
            let mut head = [0u8; REQUEST_HEAD_LEN];
            tokio::select! {
                read = conn.read_exact(&mut head) => {
                    if read.is_err() {
                        return Ok(()); // the client closed it
                    }
                }
                () = session.closed.cancelled() => return Ok(()),
                _ = stop.changed() => return Ok(()),
            }
            let started = Instant::now();
            let head = RequestHead::decode(head);
            let served = tokio::time::timeout(
                self.transfer_timeout,
                self.serve_request(&mut conn, &session, id, head),
            )
            .await
            .unwrap_or(Err(Broken::Lost));
            let error = match &served {
                Ok(()) => None,
                Err(Broken::Reply(e) | Broken::ReplyAndClose(e)) => Some(e.code().name()),
                Err(Broken::Lost) => Some(LOST),
            };
            self.metrics.request(head.check().ok(), started, error);
            match served {
                Ok(()) => {}
                Err(Broken::Reply(e)) => {
                    write_all(&mut conn, &encode_error(&e)).await?;
                }
                Err(Broken::ReplyAndClose(e)) => {
                    let _ = write_all(&mut conn, &encode_error(&e)).await;
                    let _ = conn.shutdown().await;
                    return Err(e.to_string());
                }
                Err(Broken::Lost) => return Err("lost mid-transfer".into()),
            }
        }
    }

    /// Runs the opening exchange; the session the connection proved it belongs to.
    async fn admit<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut S,
    ) -> std::result::Result<Arc<Session>, String> {
        let nonce = random::<NONCE_LEN>().map_err(|e| e.to_string())?;
        write_all(conn, &data::encode_hello(&nonce)).await?;
        let mut claim = [0u8; CLAIM_LEN];
        conn.read_exact(&mut claim)
            .await
            .map_err(|e| format!("reading the claim: {e}"))?;
        let (id, proof) = data::decode_claim(&claim);
        let session = self.sessions.lock().get(&id).and_then(Weak::upgrade);
        let proven = session.filter(|s| {
            !s.closed.is_cancelled()
                && s.data
                    .get()
                    .is_some_and(|c| data::verify_session_proof(&c.secret, &nonce, id, proof))
        });
        let Some(session) = proven else {
            let e = Error::new(
                ErrorCode::Unauthorized,
                "data connection refused: no live session with that number, or a wrong proof",
            );
            let _ = write_all(conn, &encode_error(&e)).await;
            let _ = conn.shutdown().await;
            return Err(e.to_string());
        };
        if let Some(c) = session.data.get() {
            c.admitted.store(true, Ordering::Release);
        }
        write_all(conn, &encode_bare_response()).await?;
        Ok(session)
    }

    async fn serve_request(
        &self,
        conn: &mut Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>,
        session: &Session,
        id: u64,
        head: RequestHead,
    ) -> std::result::Result<(), Broken> {
        let opcode = head.check().map_err(Broken::ReplyAndClose)?;
        let mut header = AlignedVec::<16>::with_capacity(head.header_len as usize);
        header.resize(head.header_len as usize, 0);
        conn.read_exact(&mut header)
            .await
            .map_err(|_| Broken::Lost)?;
        match opcode {
            Opcode::DataGet => {
                let req = decode::<DataGetRequest>(&header).map_err(Broken::ReplyAndClose)?;
                self.check_grant(id, &req)?;
                self.send_value(conn, &req).await?;
                self.metrics.bytes.tcp_out.increment(req.len);
                Ok(())
            }
            Opcode::DataPut => {
                let req = decode::<PutWriteRequest>(&header).map_err(Broken::ReplyAndClose)?;
                let writer = WriterId::from_raw(req.writer);
                if !session.holds(&req.key, req.writer) {
                    return Err(Broken::ReplyAndClose(Error::new(
                        ErrorCode::NotWriter,
                        "this session holds no such reservation on this key",
                    )));
                }
                let received = self.receive_value(conn, &req).await;
                match received {
                    Ok(()) => self.metrics.bytes.tcp_in.increment(req.len),
                    // Half-written: revoke now rather than at the deadline.
                    Err(Broken::Lost) => session.revoke(writer.get()),
                    Err(_) => {}
                }
                received
            }
            other => Err(Broken::ReplyAndClose(Error::new(
                ErrorCode::Protocol,
                format!("{} is not served on the data plane", other.name()),
            ))),
        }
    }

    /// Sends the requested range of a leased value: the response head, then its bytes.
    async fn send_value(
        &self,
        conn: &mut Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>,
        req: &DataGetRequest,
    ) -> std::result::Result<(), Broken> {
        let start = req.offset;
        let end = start
            .checked_add(req.len)
            .filter(|&e| e <= req.location.len);
        let Some(end) = end else {
            let msg = format!(
                "bytes {start}..+{} are not within the {}-byte value",
                req.len, req.location.len
            );
            return Err(Broken::Reply(Error::new(ErrorCode::InvalidArgument, msg)));
        };
        let store = &*self.store;
        // Refuse before the first byte while the answer can still be an error frame.
        let in_place = store
            .with_value_bytes(&req.key, &req.location, start..start, |_| ())?
            .is_some();
        let head = encode_bare_response();
        match conn {
            Either::Left(tcp) if in_place => {
                send_in_place(tcp, store, req, start..end, &head).await
            }
            _ if in_place => {
                write_all(conn, &head).await.map_err(|_| Broken::Lost)?;
                let mut staging = vec![0u8; STAGING_LEN.min((end - start) as usize)];
                let mut at = start;
                while at < end {
                    let n = staging.len().min((end - at) as usize);
                    let chunk = &mut staging[..n];
                    store
                        .with_value_bytes(&req.key, &req.location, at..at + n as u64, |b| {
                            chunk.copy_from_slice(b)
                        })
                        .map_err(|_| Broken::Lost)?;
                    write_all(conn, chunk).await.map_err(|_| Broken::Lost)?;
                    give_way::moved(n);
                    at += n as u64;
                }
                Ok(())
            }
            _ => {
                let staged = self.read_whole(req).await?;
                write_all(conn, &head).await.map_err(|_| Broken::Lost)?;
                for step in staged[start as usize..end as usize].chunks(GIVE_WAY_EVERY) {
                    write_all(conn, step).await.map_err(|_| Broken::Lost)?;
                    give_way::moved(step.len());
                }
                Ok(())
            }
        }
    }

    /// The whole value, read off the reactor (a tier read through I/O or device copies).
    async fn read_whole(&self, req: &DataGetRequest) -> std::result::Result<Vec<u8>, Broken> {
        let store = Arc::clone(&self.store);
        let key = req.key.clone();
        let location = req.location;
        tokio::task::spawn_blocking(move || {
            let mut value = vec![0u8; location.len as usize];
            store.read_value_at(&key, &location, &mut value)?;
            Ok::<_, Error>(value)
        })
        .await
        .map_err(|e| Error::new(ErrorCode::Internal, format!("read task: {e}")))?
        .map_err(Broken::Reply)
    }

    /// Receives a put's range into its reservation, then answers.
    async fn receive_value(
        &self,
        conn: &mut Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>,
        req: &PutWriteRequest,
    ) -> std::result::Result<(), Broken> {
        let start = req.offset;
        let Some(end) = start.checked_add(req.len) else {
            let msg = "write range overflows".to_owned();
            return Err(Broken::ReplyAndClose(Error::new(
                ErrorCode::InvalidArgument,
                msg,
            )));
        };
        let writer = WriterId::from_raw(req.writer);
        let store = &*self.store;
        let mut at = start;
        if let Either::Left(tcp) = conn {
            at = receive_in_place(tcp, store, &req.key, writer, start..end).await?;
        }
        // What could not land in place (TLS, or a tier that is not host memory) is staged.
        let mut staging = vec![0u8; STAGING_LEN.min((end - at) as usize)];
        while at < end {
            let n = staging.len().min((end - at) as usize);
            let chunk = &mut staging[..n];
            conn.read_exact(chunk).await.map_err(|_| Broken::Lost)?;
            store
                .put_write(&req.key, writer, at, chunk)
                .map_err(|e| Broken::ReplyAndClose(strata_engine::reservation_gone(e)))?;
            give_way::moved(n);
            at += n as u64;
        }
        write_all(conn, &encode_bare_response())
            .await
            .map_err(|_| Broken::Lost)
    }
}

/// Sends `head`, then `range` of the value, from the tier's memory: each step pins, checks
/// the value is still in place, and hands the kernel what the socket buffer takes.
async fn send_in_place(
    tcp: &TcpStream,
    store: &Store,
    req: &DataGetRequest,
    range: std::ops::Range<u64>,
    head: &[u8],
) -> std::result::Result<(), Broken> {
    let mut head_left = head.len();
    let mut at = range.start;
    while head_left > 0 || at < range.end {
        tcp.writable().await.map_err(|_| Broken::Lost)?;
        let step_end = range.end.min(at + GIVE_WAY_EVERY as u64);
        let step = store.with_value_bytes(&req.key, &req.location, at..step_end, |bytes| {
            let slices = [
                IoSlice::new(&head[head.len() - head_left..]),
                IoSlice::new(bytes),
            ];
            tcp.try_write_vectored(&slices)
        });
        match step {
            Ok(Some(Ok(n))) => {
                let from_head = n.min(head_left);
                head_left -= from_head;
                at += (n - from_head) as u64;
                give_way::moved(n);
            }
            Ok(Some(Err(e))) if e.kind() == ErrorKind::WouldBlock => {}
            // Gone since the first check (removed with force): the client sees the
            // connection end short of the length and retries with a new lease.
            Ok(Some(Err(_))) | Ok(None) | Err(_) => return Err(Broken::Lost),
        }
    }
    Ok(())
}

/// Receives `range` of a put from the socket straight into the reservation. Returns where
/// it stopped: `range.end`, or earlier when the tier is not host memory.
async fn receive_in_place(
    tcp: &TcpStream,
    store: &Store,
    key: &[u8],
    writer: WriterId,
    range: std::ops::Range<u64>,
) -> std::result::Result<u64, Broken> {
    let mut at = range.start;
    while at < range.end {
        tcp.readable().await.map_err(|_| Broken::Lost)?;
        let step_end = range.end.min(at + GIVE_WAY_EVERY as u64);
        let step = store.with_reserved_bytes(key, writer, at..step_end, |dst| tcp.try_read(dst));
        match step {
            Ok(Some(Ok(0))) => return Err(Broken::Lost), // closed mid-put
            Ok(Some(Ok(n))) => {
                at += n as u64;
                give_way::moved(n);
            }
            Ok(Some(Err(e))) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(Some(Err(_))) => return Err(Broken::Lost),
            Ok(None) => break,
            Err(e) => return Err(Broken::ReplyAndClose(e)),
        }
    }
    Ok(at)
}

/// Writes `bytes` and flushes them: TLS may hold encrypted bytes back until flushed, and
/// an answer held back is a client waiting forever.
async fn write_all<S: AsyncWrite + Unpin>(
    conn: &mut S,
    bytes: &[u8],
) -> std::result::Result<(), String> {
    conn.write_all(bytes)
        .await
        .map_err(|e| format!("writing: {e}"))?;
    conn.flush().await.map_err(|e| format!("writing: {e}"))
}

fn grant_input(session: u64, key: &[u8], l: &Location, expires_at: u64) -> Vec<u8> {
    let mut input = Vec::with_capacity(8 * 5 + 1 + key.len());
    input.extend_from_slice(&session.to_le_bytes());
    input.extend_from_slice(&expires_at.to_le_bytes());
    input.push(l.tier);
    input.extend_from_slice(&l.segment.to_le_bytes());
    input.extend_from_slice(&l.offset.to_le_bytes());
    input.extend_from_slice(&l.len.to_le_bytes());
    input.extend_from_slice(key);
    input
}
