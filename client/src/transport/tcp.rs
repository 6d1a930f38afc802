//! The TCP data plane, client side: a small pool of data connections to one server, each
//! proven to belong to this client's QUIC session ([`strata_proto::data`]), over which
//! transfers run pipelined.
//!
//! A transfer is a list of [`Job`]s (ranges of leased values to read, ranges of reserved
//! values to write). They are dealt over the pool's connections; on each connection every
//! request is written while the answers are read, so a batch pays one round trip per
//! connection, not per value. A large value is cut into [`DataPlane::stripes`] that go out
//! on different connections at once.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rustls::pki_types::ServerName;
use strata_proto::data::{self, HELLO_LEN};
use strata_proto::msg::{DataGetRequest, DataPlaneOffer, LeaseGrant, Location, PutWriteRequest};
use strata_proto::wire::{self, encode_request, Opcode, ResponseHead, Status, RESPONSE_HEAD_LEN};
use strata_proto::{Error, ErrorCode, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{Mutex, MutexGuard};
use tokio_rustls::TlsConnector;

use strata_copy::give_way::{self, GIVE_WAY_EVERY};

use crate::copy_pool::{off_reactor, BLOCKING_COPY};

/// A data connection: plain TCP or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// One piece of a transfer.
pub(crate) enum Job<'a> {
    /// Read bytes `offset..offset + dst.len()` of the value leased on `key` into `dst`.
    Get {
        key: &'a [u8],
        location: Location,
        grant: LeaseGrant,
        offset: u64,
        dst: &'a mut [u8],
    },
    /// Write `src` at `offset` of the value `writer` reserved for `key`.
    Put {
        key: &'a [u8],
        writer: u64,
        offset: u64,
        src: &'a [u8],
    },
}

impl Job<'_> {
    /// The bytes it moves.
    fn len(&self) -> usize {
        match self {
            Job::Get { dst, .. } => dst.len(),
            Job::Put { src, .. } => src.len(),
        }
    }
}

/// The data plane of one QUIC session.
pub(crate) struct DataPlane {
    addr: SocketAddr,
    session: u64,
    secret: Vec<u8>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    in_place_tiers: Vec<u8>,
    stripe: u64,
    connect_timeout: Duration,
    /// The pool: a slot is empty until first used, and again after its connection failed.
    slots: Vec<Mutex<Option<Box<dyn Stream>>>>,
    next: AtomicUsize,
}

/// How a [`DataPlane`] is set up.
pub(crate) struct DataPlaneSettings {
    pub connections: usize,
    pub stripe: u64,
    pub connect_timeout: Duration,
    /// TLS configuration and the name to check, for a server that asks for TLS.
    pub tls: (Arc<rustls::ClientConfig>, ServerName<'static>),
}

fn lost(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Unavailable, format!("data connection: {e}"))
}

impl DataPlane {
    /// The data plane `offer` describes, at `host` (where QUIC reached the server), with
    /// one connection opened to check it is reachable and accepts this session.
    pub async fn open(
        offer: &DataPlaneOffer,
        host: std::net::IpAddr,
        settings: DataPlaneSettings,
    ) -> Result<DataPlane> {
        let tls = offer.tls.then(|| {
            let (config, name) = settings.tls;
            let mut config = (*config).clone();
            config.alpn_protocols = vec![strata_proto::data::ALPN.to_vec()];
            (TlsConnector::from(Arc::new(config)), name)
        });
        let plane = DataPlane {
            addr: SocketAddr::new(host, offer.port),
            session: offer.session,
            secret: offer.secret.clone(),
            tls,
            in_place_tiers: offer.in_place_tiers.clone(),
            stripe: settings.stripe.max(1),
            connect_timeout: settings.connect_timeout,
            slots: (0..settings.connections.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        };
        let first = plane.connect().await?;
        *plane.slots[0].lock().await = Some(first);
        Ok(plane)
    }

    /// Whether the server sends the value at `location` from its tier's memory, rather
    /// than reading it from a disk first (ssd).
    pub fn sent_in_place(&self, location: &Location) -> bool {
        self.in_place_tiers.contains(&location.tier)
    }

    /// The ranges a value of `len` bytes at `location` moves in: one per connection for a
    /// large value the server sends in place, else one. A write is always striped (the
    /// server receives any range without staging the whole value).
    pub fn stripes(&self, location: &Location, write: bool) -> Vec<Range<u64>> {
        let len = location.len;
        let in_place = write || self.sent_in_place(location);
        let n = if in_place {
            len.div_ceil(self.stripe).clamp(1, self.slots.len() as u64)
        } else {
            1
        };
        let step = len.div_ceil(n);
        (0..n)
            .map(|i| (i * step).min(len)..((i + 1) * step).min(len))
            .filter(|r| !r.is_empty())
            .collect()
    }

    async fn connect(&self) -> Result<Box<dyn Stream>> {
        let opening = async {
            let tcp = TcpStream::connect(self.addr).await.map_err(|e| {
                let msg = format!("cannot reach the data plane at {}: {e}", self.addr);
                Error::new(ErrorCode::Unavailable, msg)
            })?;
            tcp.set_nodelay(true).map_err(lost)?;
            let mut conn: Box<dyn Stream> = match &self.tls {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| lost(format!("TLS: {e}")))?,
                ),
            };
            let mut hello = [0u8; HELLO_LEN];
            conn.read_exact(&mut hello).await.map_err(lost)?;
            let nonce = data::decode_hello(&hello).map_err(lost)?;
            let proof = data::session_proof(&self.secret, &nonce, self.session);
            conn.write_all(&data::encode_claim(self.session, &proof))
                .await
                .map_err(lost)?;
            read_answer(&mut conn).await?;
            Ok(conn)
        };
        tokio::time::timeout(self.connect_timeout, opening)
            .await
            .unwrap_or_else(|_| {
                let msg = format!("no data-plane answer from {} in time", self.addr);
                Err(Error::new(ErrorCode::Unavailable, msg))
            })
    }

    /// Runs `jobs`, pipelined over the pool; one result per job, in order. A job on a
    /// connection that failed gets that failure (the connection is replaced next time).
    ///
    /// The jobs go to idle connections, the lowest-numbered first, up to one per job: so
    /// the pool grows only as far as transfers overlap, and a transfer never queues
    /// behind another (a value the server first reads from a disk holds its connection
    /// for milliseconds) while a connection is free. With none free, the transfer waits
    /// for one, taken in turn.
    ///
    /// A transfer of [`BLOCKING_COPY`] bytes or more runs on the copy pool
    /// ([`crate::copy_pool`]), as a large shm copy does: its socket reads copy the bytes,
    /// and on the caller's runtime they held up every other task (a lookup's reply waited
    /// behind 25 loads' reads). The pool's thread drives it to its end while the
    /// runtime's own threads go on serving the sockets' readiness and everything else.
    pub async fn run(&self, jobs: Vec<Job<'_>>) -> Vec<Result<()>> {
        let bytes: usize = jobs.iter().map(Job::len).sum();
        match Handle::try_current() {
            Ok(handle)
                if bytes >= BLOCKING_COPY
                    && handle.runtime_flavor() == RuntimeFlavor::MultiThread =>
            {
                let transfer = self.run_here(jobs);
                off_reactor(bytes, move || handle.block_on(transfer))
            }
            // A current-thread runtime's one thread must stay free to drive the sockets.
            _ => self.run_here(jobs).await,
        }
    }

    async fn run_here(&self, jobs: Vec<Job<'_>>) -> Vec<Result<()>> {
        let mut held = Vec::new();
        for slot in &self.slots {
            if held.len() == jobs.len() {
                break;
            }
            if let Ok(guard) = slot.try_lock() {
                held.push(guard);
            }
        }
        if held.is_empty() {
            let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
            held.push(self.slots[turn].lock().await);
        }
        let count = jobs.len();
        let mut dealt: Vec<Vec<(usize, Job<'_>)>> = held.iter().map(|_| Vec::new()).collect();
        let n = dealt.len();
        for (i, job) in jobs.into_iter().enumerate() {
            dealt[i % n].push((i, job));
        }
        let per_connection = held
            .into_iter()
            .zip(dealt)
            .filter(|(_, jobs)| !jobs.is_empty())
            .map(|(guard, jobs)| self.run_on(guard, jobs));
        let mut results: Vec<Option<Result<()>>> = (0..count).map(|_| None).collect();
        for done in join_all(per_connection).await {
            for (i, r) in done {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(lost("job not run"))))
            .collect()
    }

    async fn run_on<'j>(
        &self,
        mut guard: MutexGuard<'_, Option<Box<dyn Stream>>>,
        jobs: Vec<(usize, Job<'j>)>,
    ) -> Vec<(usize, Result<()>)> {
        // Taken out while in use: if this future is dropped mid-transfer, the connection
        // (in an unknown state) goes with it.
        let conn = match guard.take() {
            Some(conn) => Ok(conn),
            None => self.connect().await,
        };
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(e) => return jobs.into_iter().map(|(i, _)| (i, Err(e.clone()))).collect(),
        };
        let (results, healthy) = pipeline(&mut conn, jobs).await;
        if healthy {
            *guard = Some(conn);
        }
        results
    }
}

/// Writes every job's request while reading the answers. Returns the results and whether
/// the connection is still in step (usable for the next transfer).
async fn pipeline<'j>(
    conn: &mut Box<dyn Stream>,
    jobs: Vec<(usize, Job<'j>)>,
) -> (Vec<(usize, Result<()>)>, bool) {
    let mut requests = Vec::with_capacity(jobs.len());
    let mut answers = Vec::with_capacity(jobs.len());
    for (i, job) in jobs {
        match job {
            Job::Get {
                key,
                location,
                grant,
                offset,
                dst,
            } => {
                let header = DataGetRequest {
                    key: key.to_vec(),
                    location,
                    grant,
                    offset,
                    len: dst.len() as u64,
                };
                requests.push((encode_request(Opcode::DataGet, &header), &[][..]));
                answers.push((i, Some(dst)));
            }
            Job::Put {
                key,
                writer,
                offset,
                src,
            } => {
                let header = PutWriteRequest {
                    key: key.to_vec(),
                    writer,
                    offset,
                    len: src.len() as u64,
                };
                requests.push((encode_request(Opcode::DataPut, &header), src));
                answers.push((i, None));
            }
        }
    }
    let (mut reader, mut writer) = tokio::io::split(&mut **conn);
    let write = async {
        for (frame, payload) in requests {
            writer.write_all(&frame).await?;
            // A step at a time, so that a copy thread offers its core between steps.
            for step in payload.chunks(GIVE_WAY_EVERY) {
                writer.write_all(step).await?;
                give_way::moved(step.len());
            }
        }
        writer.flush().await
    };
    let read = async {
        let mut results = Vec::with_capacity(answers.len());
        let mut healthy = true;
        for (i, dst) in answers {
            if !healthy {
                results.push((i, Err(lost("closed by the server after an error"))));
                continue;
            }
            let result = match read_answer(&mut reader).await {
                Ok(()) => match dst {
                    Some(dst) => read_value(&mut reader, dst).await.map_err(|e| {
                        healthy = false;
                        lost(format!("value cut short ({e}): removed with force?"))
                    }),
                    None => Ok(()),
                },
                Err(e) => {
                    // A refused put closes the connection; a refused get does not. A
                    // connection that failed is out of step either way.
                    if dst.is_none() || e.code() == ErrorCode::Unavailable {
                        healthy = false;
                    }
                    Err(e)
                }
            };
            results.push((i, result));
        }
        (results, healthy)
    };
    let (written, (results, healthy)) = tokio::join!(write, read);
    (results, healthy && written.is_ok())
}

/// Reads a value's bytes into `dst` a step at a time: each read copies at most
/// [`GIVE_WAY_EVERY`] bytes in the kernel, and a copy thread offers its core between steps.
async fn read_value<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    dst: &mut [u8],
) -> std::io::Result<()> {
    for step in dst.chunks_mut(GIVE_WAY_EVERY) {
        reader.read_exact(step).await?;
        give_way::moved(step.len());
    }
    Ok(())
}

/// Reads one answer's head and header: `Ok` for success, the error an error frame carries.
async fn read_answer<R: AsyncRead + Unpin + ?Sized>(conn: &mut R) -> Result<()> {
    let mut head = [0u8; RESPONSE_HEAD_LEN];
    conn.read_exact(&mut head).await.map_err(lost)?;
    let head = ResponseHead::decode(head)?;
    if head.header_len > strata_proto::limits::MAX_HEADER_LEN {
        return Err(lost(format!("answer header of {} bytes", head.header_len)));
    }
    let mut header = vec![0u8; head.header_len as usize];
    conn.read_exact(&mut header).await.map_err(lost)?;
    match head.status {
        Status::Ok => Ok(()),
        Status::Error => Err(wire::decode_error(&header)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(connections: usize, stripe: u64) -> DataPlane {
        DataPlane {
            addr: "127.0.0.1:1".parse().unwrap(),
            session: 1,
            secret: Vec::new(),
            tls: None,
            in_place_tiers: vec![0],
            stripe,
            connect_timeout: Duration::from_secs(1),
            slots: (0..connections).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    fn at(tier: u8, len: u64) -> Location {
        Location {
            tier,
            segment: 0,
            offset: 0,
            len,
        }
    }

    #[test]
    fn stripes_cover_the_value_once_and_only_where_they_pay() {
        let p = plane(4, 1 << 20);
        let whole = |r: &[Range<u64>]| r.to_vec();
        // Small values, and reads of tiers the server stages, go whole.
        assert_eq!(whole(&p.stripes(&at(0, 4096), false)), vec![0..4096]);
        assert_eq!(whole(&p.stripes(&at(1, 8 << 20), false)), vec![0..8 << 20]);
        // Large ones: one stripe per connection at most, contiguous, covering it all.
        for (len, n) in [((1 << 20) + 1, 2), (3 << 20, 3), (64 << 20, 4), (7, 1)] {
            for write in [false, true] {
                let s = p.stripes(&at(0, len), write);
                assert_eq!(s.len(), n, "{len} bytes");
                assert_eq!(s[0].start, 0);
                assert_eq!(s.last().unwrap().end, len);
                assert!(s.windows(2).all(|w| w[0].end == w[1].start));
            }
        }
        // Writes stripe on any tier: the server receives a range without staging it all.
        assert_eq!(p.stripes(&at(1, 8 << 20), true).len(), 4);
    }
}
