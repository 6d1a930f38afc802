//! [`Client`]: every store operation as an async method.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use quinn::{RecvStream, SendStream};
use rkyv::util::AlignedVec;
use strata_proto::limits::MAX_BATCH_KEYS;
use strata_proto::msg::{
    BatchExistsResponse, BatchKeysRequest, ExistsResponse, GetLocationsResponse, GetResponse,
    KeyList, KeyRequest, LeaseResult, Location, Ping, Placement, PrefixLenRequest,
    PrefixLenResponse, PrefixLocationsResponse, PutRequest, PutStartResponse, PutWriteRequest,
    RemoveAllRequest, RemoveAllResponse, RemoveRequest, StatsResponse, WriterRequest,
};
use strata_proto::wire::{self, decode, encode_bare_request, encode_request, Opcode};
use strata_proto::{Error, ErrorCode, Result};

use crate::buffers::Buffers;
use crate::cache::{LeasedLocation, LocationCache};
use crate::config::{ClientConfig, Transport};
use crate::connection::{read_error, read_response, Connector, Link, Payload, ServerInfo};
use crate::stats::{Counters, TransportStats};
use crate::transport::Route;

/// The store's figures, as `strata stats` prints them.
pub type ServerStats = StatsResponse;

/// A server's view of its cluster ([`Client::cluster_view`]).
pub type ClusterView = strata_proto::msg::ClusterViewResponse;

/// A write reservation made with [`Client::put_start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The writer id to pass to put_write, put_end and put_revoke.
    pub writer: u64,
    /// Where the value goes in the server's tiers.
    pub location: Location,
    /// When the server revokes the reservation if it is not committed.
    pub deadline: Instant,
}

/// The result of [`Client::prefix_len_leased`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Leading positions whose keys are all stored.
    pub len: usize,
    /// Until when the matched objects are leased (none when nothing matched).
    pub leased_until: Option<Instant>,
}

/// A client of one strata server. Cheap to clone; clones share the connection, the
/// location cache and the registered buffers.
///
/// Every operation is bounded by `transfer_timeout` (a timeout is an error, never a hang)
/// and reconnects if the connection was lost.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: ClientConfig,
    pub connector: Arc<Connector>,
    pub cache: LocationCache,
    pub buffers: Mutex<Buffers>,
    pub counters: Counters,
}

pub(crate) fn timed_out(what: &str, after: Duration) -> Error {
    Error::new(
        ErrorCode::Timeout,
        format!("{what} did not finish within {after:?}"),
    )
}

impl Client {
    /// Connects to the server of `config` and completes the handshake (authenticating
    /// when a token is given).
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let connector = Arc::new(Connector::new(&config)?);
        connector.link().await?;
        let cache = LocationCache::new(config.location_cache_capacity, config.lease_margin);
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                connector,
                cache,
                buffers: Mutex::new(Buffers::default()),
                counters: Counters::default(),
            }),
        })
    }

    /// What the server said about itself in the last handshake.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        Ok(self.inner.connector.link().await?.info.clone())
    }

    /// How value bytes travel now: [`Transport::Shm`] when the server's segments are
    /// mapped into this process, [`Transport::Tcp`] over the server's data plane, else
    /// [`Transport::Quic`].
    pub async fn transport(&self) -> Result<Transport> {
        let link = self.inner.connector.link().await?;
        Ok(link.route.transport())
    }

    /// Waits until this process's page tables cover the server's shared segments. The
    /// client builds them on a background thread after mapping the segments, so that
    /// copies do not stop at a page fault every 4 KiB; until it is done the first copies
    /// into untouched pages are slower. An engine that wants its first requests at full
    /// speed calls this after connecting. Returns at once when bytes do not travel through
    /// shared memory.
    pub async fn shm_prefaulted(&self) -> Result<()> {
        let link = self.inner.connector.link().await?;
        if let Some(segments) = link.route.shm() {
            segments.prefaulted().await;
        }
        Ok(())
    }

    /// How this client has moved value bytes so far.
    pub fn transport_stats(&self) -> TransportStats {
        self.inner.counters.snapshot()
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Closes the connection politely (the server frees its state for it at once).
    pub async fn close(&self) {
        self.inner.connector.close().await;
    }

    /// [`Client::bounded`] for a batch: a timeout fails each of its `n` items.
    pub(crate) async fn bounded_batch<T>(
        &self,
        what: &str,
        n: usize,
        op: impl Future<Output = Vec<Result<T>>>,
    ) -> Vec<Result<T>> {
        let limit = self.inner.config.transfer_timeout;
        match tokio::time::timeout(limit, op).await {
            Ok(results) => results,
            Err(_) => {
                self.probe_after_timeout();
                let e = timed_out(what, limit);
                (0..n).map(|_| Err(e.clone())).collect()
            }
        }
    }

    /// Runs `op` under the transfer timeout. On timeout the connection is probed in the
    /// background and dropped if the server does not answer, so the next call reconnects
    /// instead of waiting on a dead connection.
    pub(crate) async fn bounded<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.inner.config.transfer_timeout;
        match tokio::time::timeout(limit, op).await {
            Ok(result) => result,
            Err(_) => {
                self.probe_after_timeout();
                Err(timed_out(what, limit))
            }
        }
    }

    fn probe_after_timeout(&self) {
        let connector = Arc::clone(&self.inner.connector);
        let bound = self
            .inner
            .config
            .connect_timeout
            .min(Duration::from_secs(2));
        tokio::spawn(async move {
            let Ok(link) = connector.link().await else {
                return;
            };
            let frame = encode_request(Opcode::Ping, &Ping { nonce: 0 });
            let probe = exchange_on(&link, &frame, &[]);
            if !matches!(tokio::time::timeout(bound, probe).await, Ok(Ok(_))) {
                connector.discard(&link);
            }
        });
    }

    /// Opens a request stream, reconnecting once if the connection turns out to be gone.
    async fn open(&self) -> Result<(SendStream, RecvStream)> {
        let link = self.inner.connector.link().await?;
        match link.conn.open_bi().await {
            Ok(streams) => Ok(streams),
            Err(_) => {
                self.inner.connector.discard(&link);
                let link = self.inner.connector.link().await?;
                link.conn
                    .open_bi()
                    .await
                    .map_err(|e| crate::connection::connection_error(&e))
            }
        }
    }

    /// Sends `frame` and `payload` on a new stream; returns the response header and the
    /// stream positioned at the response payload.
    async fn request(&self, frame: &[u8], payload: &[u8]) -> Result<(RecvStream, AlignedVec)> {
        self.request_with(frame, Payload::Borrowed(payload)).await
    }

    async fn request_with(
        &self,
        frame: &[u8],
        payload: Payload<'_>,
    ) -> Result<(RecvStream, AlignedVec)> {
        let (mut send, mut recv) = self.open().await?;
        crate::connection::send_request(&mut send, frame, payload).await?;
        let header = read_response(&mut recv).await?;
        Ok((recv, header))
    }

    /// Stores `value` under `key`, handing its bytes to QUIC without a copy. An existing
    /// key counts as success: the same block hash means the same bytes, and values are
    /// immutable.
    pub async fn put(&self, key: &[u8], value: Bytes) -> Result<()> {
        let len = value.len() as u64;
        self.put_with(key, len, Payload::Owned(value), false, Placement::Auto)
            .await
    }

    /// Stores a copy of `value` under `key` (see [`Client::put`]).
    pub async fn put_from(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let len = value.len() as u64;
        self.put_with(key, len, Payload::Borrowed(value), false, Placement::Auto)
            .await
    }

    /// Stores `value` under `key` pinned: it is never evicted (it can still be removed).
    pub async fn put_pinned(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let len = value.len() as u64;
        self.put_with(key, len, Payload::Borrowed(value), true, Placement::Auto)
            .await
    }

    /// Stores `value` under `key` in the tier `placement` names (`Device`: the device
    /// tier, `Dram`: host memory) instead of the highest tier under its watermark.
    /// `InvalidArgument` if the server has no such tier.
    pub async fn put_placed(&self, key: &[u8], value: &[u8], placement: Placement) -> Result<()> {
        let len = value.len() as u64;
        self.put_with(key, len, Payload::Borrowed(value), false, placement)
            .await
    }

    async fn put_with(
        &self,
        key: &[u8],
        len: u64,
        value: Payload<'_>,
        pin: bool,
        placement: Placement,
    ) -> Result<()> {
        let link = self.inner.connector.link().await?;
        if !matches!(link.route, Route::Quic) {
            let bytes = match &value {
                Payload::Borrowed(b) => *b,
                Payload::Owned(b) => &b[..],
            };
            let item = [(key, bytes)];
            let op = self.direct_put(&link, &item, pin, placement);
            let mut results = self.bounded_batch("put", 1, op).await;
            return results.pop().unwrap_or_else(|| Err(missing_answer()));
        }
        let header = PutRequest {
            key: key.to_vec(),
            len,
            pin,
            placement,
        };
        let frame = encode_request(Opcode::Put, &header);
        let result = self.bounded("put", self.request_with(&frame, value)).await;
        match result {
            Ok(_) => {
                Counters::count(
                    (
                        &self.inner.counters.quic_puts,
                        &self.inner.counters.quic_put_bytes,
                    ),
                    len as usize,
                );
                Ok(())
            }
            Err(e) if e.code() == ErrorCode::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Per-item [`Client::put_from`], up to `batch_concurrency` in flight; one failure never
    /// fails the others.
    ///
    /// Through shared memory, the whole batch takes one reservation round trip and one
    /// commit round trip (per [`MAX_BATCH_KEYS`] items), and the copies run in parallel.
    pub async fn batch_put_from<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
    ) -> Vec<Result<()>> {
        if let Ok(link) = self.inner.connector.link().await {
            if !matches!(link.route, Route::Quic) {
                let mut out = Vec::with_capacity(items.len());
                for chunk in items.chunks(MAX_BATCH_KEYS) {
                    let pairs: Vec<(&[u8], &[u8])> = chunk
                        .iter()
                        .map(|(k, v)| (k.as_ref(), v.as_ref()))
                        .collect();
                    let op = self.direct_put(&link, &pairs, false, Placement::Auto);
                    out.extend(self.bounded_batch("batch_put", pairs.len(), op).await);
                }
                return out;
            }
        }
        // The futures are made before they are streamed: a stream that maps with a closure
        // over borrowed items makes the batch's future fail `Send` for tokio::spawn.
        let puts: Vec<_> = items
            .iter()
            .map(|(k, v)| self.put_from(k.as_ref(), v.as_ref()))
            .collect();
        stream::iter(puts)
            .buffered(self.inner.config.batch_concurrency.max(1))
            .collect()
            .await
    }

    /// Reserves space for a `len`-byte value (two-phase put): write it with
    /// [`Client::put_write`], then commit with [`Client::put_end`]. The reservation
    /// belongs to this connection: if the connection ends first, the server revokes it.
    pub async fn put_start(&self, key: &[u8], len: u64) -> Result<Reservation> {
        let header = PutRequest {
            key: key.to_vec(),
            len,
            pin: false,
            placement: Placement::Auto,
        };
        let frame = encode_request(Opcode::PutStart, &header);
        let sent = Instant::now();
        let (_, header) = self.bounded("put_start", self.request(&frame, &[])).await?;
        let r = decode::<PutStartResponse>(&header)?;
        Ok(Reservation {
            writer: r.writer,
            location: r.location,
            deadline: sent + Duration::from_millis(r.deadline_ms),
        })
    }

    /// Writes `data` at `offset` of the value reserved by `writer`.
    pub async fn put_write(&self, key: &[u8], writer: u64, offset: u64, data: &[u8]) -> Result<()> {
        let header = PutWriteRequest {
            key: key.to_vec(),
            writer,
            offset,
            len: data.len() as u64,
        };
        let frame = encode_request(Opcode::PutWrite, &header);
        self.bounded("put_write", self.request(&frame, data))
            .await?;
        Ok(())
    }

    /// Commits the reservation: the value becomes visible.
    pub async fn put_end(&self, key: &[u8], writer: u64) -> Result<()> {
        self.finish_put(Opcode::PutEnd, key, writer).await
    }

    /// Cancels the reservation and frees its space.
    pub async fn put_revoke(&self, key: &[u8], writer: u64) -> Result<()> {
        self.finish_put(Opcode::PutRevoke, key, writer).await
    }

    async fn finish_put(&self, opcode: Opcode, key: &[u8], writer: u64) -> Result<()> {
        let header = WriterRequest {
            key: key.to_vec(),
            writer,
        };
        let frame = encode_request(opcode, &header);
        self.bounded(opcode.name(), self.request(&frame, &[]))
            .await?;
        Ok(())
    }

    /// The value of `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Bytes> {
        self.bounded("get", async {
            let link = self.inner.connector.link().await?;
            match &link.route {
                Route::Local(segments) => {
                    if let Some(lease) = self.shm_lease(&link, segments, key).await? {
                        let mut value = vec![0u8; lease.location.len as usize];
                        self.shm_read(segments, key, &lease, &mut value).await?;
                        return Ok(Bytes::from(value));
                    }
                }
                Route::Tcp(data) => return self.tcp_get(&link, data, key).await,
                Route::Quic => {}
            }
            let (mut recv, response) = self.get_request(key).await?;
            let mut value = vec![0u8; response.len as usize];
            recv.read_exact(&mut value).await.map_err(read_error)?;
            self.verify(key, &value, response.checksum)?;
            self.count_quic_get(value.len());
            Ok(Bytes::from(value))
        })
        .await
    }

    pub(crate) fn count_quic_get(&self, bytes: usize) {
        let c = &self.inner.counters;
        Counters::count((&c.quic_gets, &c.quic_get_bytes), bytes);
    }

    /// Copies the value of `key` into the front of `buf`; returns its length.
    /// `InvalidArgument` if `buf` is too small.
    ///
    /// Through shared memory: a lease (from the cache while one holds, else one round
    /// trip), a copy straight from the server's segment into `buf`, and a check that the
    /// lease still held when the copy ended (`LeaseExpired` if not).
    pub async fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<usize> {
        self.bounded("get", async {
            let link = self.inner.connector.link().await?;
            match &link.route {
                Route::Local(segments) => {
                    if let Some(lease) = self.shm_lease(&link, segments, key).await? {
                        return self.shm_read(segments, key, &lease, buf).await;
                    }
                }
                Route::Tcp(data) => {
                    let mut bufs = [buf];
                    let mut results = self
                        .tcp_batch_get_into(&link, data, &[key], &mut bufs)
                        .await;
                    return results.pop().unwrap_or_else(|| Err(missing_answer()));
                }
                Route::Quic => {}
            }
            self.quic_get_into(key, buf).await
        })
        .await
    }

    /// get_into on a QUIC stream (no timeout of its own).
    pub(crate) async fn quic_get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<usize> {
        {
            let (mut recv, response) = self.get_request(key).await?;
            let len = response.len as usize;
            let Some(dst) = buf.get_mut(..len) else {
                let _ = recv.stop(wire::STOP_ANSWERED.into());
                let msg = format!(
                    "buffer of {} bytes is too small for a value of {len} bytes",
                    buf.len()
                );
                return Err(Error::new(ErrorCode::InvalidArgument, msg));
            };
            recv.read_exact(dst).await.map_err(read_error)?;
            self.verify(key, dst, response.checksum)?;
            self.count_quic_get(len);
            Ok(len)
        }
    }

    async fn get_request(&self, key: &[u8]) -> Result<(RecvStream, GetResponse)> {
        let frame = encode_request(Opcode::Get, &KeyRequest { key: key.to_vec() });
        let (recv, header) = self.request(&frame, &[]).await?;
        Ok((recv, decode::<GetResponse>(&header)?))
    }

    pub(crate) fn verify(&self, key: &[u8], value: &[u8], checksum: u64) -> Result<()> {
        if !self.inner.config.verify_checksums || checksum == 0 {
            return Ok(());
        }
        let got = xxhash_rust::xxh3::xxh3_64(value);
        if got != checksum {
            let msg = format!(
                "value of {} arrived corrupted (checksum {got:#x}, stored {checksum:#x})",
                String::from_utf8_lossy(key)
            );
            return Err(Error::new(ErrorCode::Internal, msg));
        }
        Ok(())
    }

    /// Per-key [`Client::get_into`]; one failure never fails the others. `keys` and `bufs`
    /// pair up by position.
    ///
    /// Through shared memory: one get_locations round trip for the batch (per
    /// [`MAX_BATCH_KEYS`] keys), then the copies, in parallel when the batch is large.
    /// Over QUIC: up to `batch_concurrency` gets in flight.
    pub async fn batch_get_into<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<usize>> {
        if let Err(e) = strata_proto::limits::check_paired(keys.len(), bufs.len()) {
            return vec![Err(e); keys.len()];
        }
        if let Ok(link) = self.inner.connector.link().await {
            match &link.route {
                Route::Local(segments) => {
                    let op = self.shm_batch_get_into(&link, segments, keys, bufs);
                    return self.bounded_batch("batch_get", keys.len(), op).await;
                }
                Route::Tcp(data) => {
                    let op = self.tcp_batch_get_into(&link, data, keys, bufs);
                    return self.bounded_batch("batch_get", keys.len(), op).await;
                }
                Route::Quic => {}
            }
        }
        // Made before streaming, as in batch_put_from, so the future stays `Send`.
        let gets: Vec<_> = keys
            .iter()
            .zip(bufs.iter_mut())
            .map(|(k, b)| self.get_into(k.as_ref(), b))
            .collect();
        stream::iter(gets)
            .buffered(self.inner.config.batch_concurrency.max(1))
            .collect()
            .await
    }

    /// Where each key's bytes are, under a read lease (from the cache while a cached
    /// lease holds, else from the server, which leases them anew).
    pub async fn get_locations<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<Result<LeasedLocation>> {
        match self.inner.connector.link().await {
            Ok(link) => self.leases_on(&link, keys).await,
            Err(e) => keys.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    /// get_locations on `link` (each round trip bounded): the leases are good for that
    /// link's server instance.
    pub(crate) async fn leases_on<K: AsRef<[u8]>>(
        &self,
        link: &Link,
        keys: &[K],
    ) -> Vec<Result<LeasedLocation>> {
        let instance = link.info.instance;
        let mut out: Vec<Option<Result<LeasedLocation>>> = keys
            .iter()
            .map(|k| self.inner.cache.get(k.as_ref(), instance).map(Ok))
            .collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        for chunk in missing.chunks(MAX_BATCH_KEYS) {
            let request = BatchKeysRequest {
                keys: KeyList::new(chunk.iter().map(|&i| keys[i].as_ref())),
            };
            let frame = encode_request(Opcode::GetLocations, &request);
            let sent = Instant::now();
            let answer = self
                .bounded("get_locations", exchange_on(link, &frame, &[]))
                .await
                .and_then(|h| decode::<GetLocationsResponse>(&h));
            let results = match answer {
                Ok(r) if r.results.len() == chunk.len() => r.results,
                Ok(_) => {
                    let e = Error::new(ErrorCode::Protocol, "server answered a different count");
                    chunk.iter().for_each(|&i| out[i] = Some(Err(e.clone())));
                    continue;
                }
                Err(e) => {
                    chunk.iter().for_each(|&i| out[i] = Some(Err(e.clone())));
                    continue;
                }
            };
            for (&i, result) in chunk.iter().zip(results) {
                out[i] = Some(match result {
                    LeaseResult::Leased(lease) => {
                        let leased = LeasedLocation {
                            location: lease.location,
                            checksum: lease.checksum,
                            valid_until: sent + Duration::from_nanos(lease.remaining_ns),
                            instance,
                            grant: lease.grant,
                            key: bytes::Bytes::copy_from_slice(keys[i].as_ref()),
                            copy: lease.copy,
                        };
                        self.inner.cache.insert(keys[i].as_ref(), leased.clone());
                        Ok(leased)
                    }
                    LeaseResult::Failed(f) => Err(f.into()),
                });
            }
        }
        out.into_iter()
            .map(|r| r.expect("every key was answered"))
            .collect()
    }

    /// Whether `key` is stored (complete). Takes no lease.
    pub async fn exists(&self, key: &[u8]) -> Result<bool> {
        let frame = encode_request(Opcode::Exists, &KeyRequest { key: key.to_vec() });
        let (_, header) = self.bounded("exists", self.request(&frame, &[])).await?;
        Ok(decode::<ExistsResponse>(&header)?.present)
    }

    /// Per-key [`Client::exists`] in one round trip per [`MAX_BATCH_KEYS`] keys.
    pub async fn batch_exists<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<Result<bool>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_BATCH_KEYS) {
            let request = BatchKeysRequest {
                keys: KeyList::new(chunk),
            };
            let frame = encode_request(Opcode::BatchExists, &request);
            let answer = self
                .bounded("batch_exists", self.request(&frame, &[]))
                .await
                .and_then(|(_, h)| decode::<BatchExistsResponse>(&h));
            match answer {
                Ok(r) if r.present.len() == chunk.len() => {
                    let start = out.len();
                    out.extend(r.present.iter().map(|&p| Ok(p == 1)));
                    for e in r.errors {
                        if let Some(slot) = out.get_mut(start + e.index as usize) {
                            *slot = Err(e.error.into());
                        }
                    }
                }
                Ok(_) => {
                    let e = Error::new(ErrorCode::Protocol, "server answered a different count");
                    out.extend(chunk.iter().map(|_| Err(e.clone())));
                }
                Err(e) => out.extend(chunk.iter().map(|_| Err(e.clone()))),
            }
        }
        out
    }

    /// The number of leading positions whose keys are all stored. A position is a group:
    /// all tensor-parallel ranks' keys of one block.
    pub async fn prefix_len<G, K>(&self, groups: &[G]) -> Result<usize>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        Ok(self.prefix(groups, false).await?.len)
    }

    /// [`Client::prefix_len`], and the matched objects are leased so the gets that follow
    /// cannot miss.
    pub async fn prefix_len_leased<G, K>(&self, groups: &[G]) -> Result<PrefixMatch>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        self.prefix(groups, true).await
    }

    async fn prefix<G, K>(&self, groups: &[G], lease: bool) -> Result<PrefixMatch>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        let mut keys = KeyList::default();
        let mut group_ends = Vec::with_capacity(groups.len());
        for g in groups {
            for k in g.as_ref() {
                keys.push(k.as_ref());
            }
            group_ends.push(keys.ends.len() as u32);
        }
        let request = PrefixLenRequest {
            keys,
            group_ends,
            lease,
        };
        if lease {
            let link = self.inner.connector.link().await?;
            let speaks = link.info.protocol >= Opcode::PrefixLocations.since();
            // Leases are worth sending back only to a client that reads the locations
            // itself; over QUIC the get names the key.
            if speaks && !matches!(link.route, Route::Quic) {
                return self.prefix_located(&link, groups, &request).await;
            }
        }
        let frame = encode_request(Opcode::PrefixLen, &request);
        let sent = Instant::now();
        let (_, header) = self
            .bounded("prefix_len", self.request(&frame, &[]))
            .await?;
        let r = decode::<PrefixLenResponse>(&header)?;
        Ok(PrefixMatch {
            len: r.len as usize,
            leased_until: r
                .lease_remaining_ns
                .map(|ns| sent + Duration::from_nanos(ns)),
        })
    }

    /// [`Client::prefix_len_leased`] in one round trip: the server answers with the matched
    /// keys' leases, which go into the location cache, so the load that follows finds
    /// every location there and makes no get_locations round trip.
    async fn prefix_located<G, K>(
        &self,
        link: &Link,
        groups: &[G],
        request: &PrefixLenRequest,
    ) -> Result<PrefixMatch>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        let frame = encode_request(Opcode::PrefixLocations, request);
        let sent = Instant::now();
        let header = self
            .bounded("prefix_len", exchange_on(link, &frame, &[]))
            .await?;
        let r = decode::<PrefixLocationsResponse>(&header)?;
        let len = r.len as usize;
        let matched = groups
            .iter()
            .take(len)
            .map(|g| g.as_ref().len())
            .sum::<usize>();
        if len > groups.len() || r.leases.len() != matched {
            let e = format!(
                "server matched {len} of {} positions with {} leases for {matched} keys",
                groups.len(),
                r.leases.len()
            );
            return Err(Error::new(ErrorCode::Protocol, e));
        }
        let keys = groups.iter().take(len).flat_map(|g| g.as_ref().iter());
        let mut leased_until: Option<Instant> = None;
        for (key, lease) in keys.zip(r.leases) {
            let key = key.as_ref();
            let valid_until = sent + Duration::from_nanos(lease.remaining_ns);
            leased_until = Some(leased_until.map_or(valid_until, |t| t.min(valid_until)));
            let leased = LeasedLocation {
                location: lease.location,
                checksum: lease.checksum,
                valid_until,
                instance: link.info.instance,
                grant: lease.grant,
                key: Bytes::copy_from_slice(key),
                copy: lease.copy,
            };
            self.inner.cache.insert(key, leased);
        }
        Ok(PrefixMatch { len, leased_until })
    }

    /// Removes `key`. A leased or still-written object is refused unless `force`.
    pub async fn remove(&self, key: &[u8], force: bool) -> Result<()> {
        self.inner.cache.invalidate(key);
        let request = RemoveRequest {
            key: key.to_vec(),
            force,
        };
        let frame = encode_request(Opcode::Remove, &request);
        self.bounded("remove", self.request(&frame, &[])).await?;
        Ok(())
    }

    /// Removes every object (leased ones only with `force`); returns how many.
    pub async fn remove_all(&self, force: bool) -> Result<u64> {
        self.inner.cache.clear();
        let frame = encode_request(Opcode::RemoveAll, &RemoveAllRequest { force });
        let (_, header) = self
            .bounded("remove_all", self.request(&frame, &[]))
            .await?;
        Ok(decode::<RemoveAllResponse>(&header)?.removed)
    }

    /// The server's figures.
    pub async fn stats(&self) -> Result<ServerStats> {
        let frame = encode_bare_request(Opcode::Stats);
        let (_, header) = self.bounded("stats", self.request(&frame, &[])).await?;
        decode::<StatsResponse>(&header)
    }

    /// The cluster this server belongs to, as it sees it: its members and placement
    /// settings; the empty view (no members) for a server running alone, and for a
    /// server too old to know the call.
    pub async fn cluster_view(&self) -> Result<ClusterView> {
        let frame = encode_bare_request(Opcode::ClusterView);
        match self
            .bounded("cluster_view", self.request(&frame, &[]))
            .await
        {
            Ok((_, header)) => decode::<ClusterView>(&header),
            Err(e) if e.code() == ErrorCode::Protocol && e.message().contains("unknown opcode") => {
                Ok(ClusterView {
                    cluster_id: String::new(),
                    epoch: 0,
                    scheme: strata_proto::placement::SCHEME.into(),
                    seed: 0,
                    run_blocks: 0,
                    join_window_ms: 0,
                    node_id: String::new(),
                    members: Vec::new(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// One round trip with no work; returns how long it took.
    pub async fn ping(&self) -> Result<Duration> {
        static NEXT_NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let nonce = NEXT_NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let frame = encode_request(Opcode::Ping, &Ping { nonce });
        let start = Instant::now();
        let (_, header) = self.bounded("ping", self.request(&frame, &[])).await?;
        if decode::<Ping>(&header)?.nonce != nonce {
            return Err(Error::new(
                ErrorCode::Protocol,
                "ping answered another nonce",
            ));
        }
        Ok(start.elapsed())
    }
}

pub(crate) fn missing_answer() -> Error {
    Error::new(ErrorCode::Protocol, "the server answered a different count")
}

pub(crate) async fn exchange_on(link: &Link, frame: &[u8], payload: &[u8]) -> Result<AlignedVec> {
    let (_, header) = crate::connection::exchange(&link.conn, frame, payload).await?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawnable<T: Send + 'static>(_: T) {}

    /// Engines run store calls in spawned tasks: every operation's future must be `Send`.
    /// (Checked by the compiler; the closure is never called.)
    #[test]
    fn operation_futures_are_send() {
        let _ = |client: Client, keys: Vec<String>, items: Vec<(String, Bytes)>| {
            spawnable(async move {
                let mut bufs = vec![vec![0u8; 8]; keys.len()];
                let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                client.batch_get_into(&keys, &mut slices).await;
                client.batch_put_from(&items).await;
                client.get_into(b"k", &mut bufs[0]).await.ok();
                client.put_from(b"k", b"v").await.ok();
                client.get_locations(&keys).await;
                client.prefix_len(std::slice::from_ref(&keys)).await.ok();
                client.batch_exists(&keys).await;
            });
        };
    }
}
