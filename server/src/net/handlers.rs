//! One function per opcode: decode the header, call the engine, answer.
//!
//! Every handler either answers itself (and finishes the stream) or returns a
//! [`Failure`], which the caller turns into an error frame. Nothing here panics on input:
//! headers are validated by bytecheck before any field is read, and the engine checks
//! keys, lengths and batch sizes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use quinn::{RecvStream, SendStream};
use rkyv::util::AlignedVec;
use strata_device::IpcHandle;
use strata_proto::limits::{check_paired, MAX_VALUE_LEN};
use strata_proto::msg::{
    ArchivedMountSegmentRequest, ArchivedPlacement, DeviceSegmentInfo, DeviceSegmentsResponse,
    MountSegmentRequest, Placement, SegmentRef, UnmountResponse,
};
use strata_proto::msg::{
    BatchExistsResponse, BatchKeysRequest, BatchPutFinishRequest, BatchPutFinishResponse,
    BatchPutStartRequest, BatchPutStartResponse, ErrorFrame, ExistsResponse, GetLocationsResponse,
    GetResponse, HandshakeRequest, HandshakeResponse, KeyError, KeyRequest, Lease, LeaseResult,
    Location, Ping, PrefixLenRequest, PrefixLenResponse, PutRequest, PutStartResponse,
    PutStartResult, PutWriteRequest, RemoveAllRequest, RemoveAllResponse, RemoveRequest,
    StatsResponse, TierStats, WriterRequest,
};
use strata_proto::wire::{access, encode_bare_response, encode_response, Opcode};
use strata_proto::{Error, ErrorCode};
use tokio_util::sync::CancellationToken;

use super::data::{DataCredentials, DataPlane};
use super::shm::ShmExport;
use super::stream::{
    expect_no_header, read_head, read_header, receive_payload, reply, reply_with_payload, Failure,
};
use crate::metrics::Metrics;
use strata_engine::{Extent, PutOptions, Store, TierKind, WriteReservation, WriterId};

/// Largest handshake header an unauthenticated connection may send (a version string and
/// a token).
const MAX_HANDSHAKE_LEN: u32 = 64 << 10;

/// What every connection of one server shares.
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub auth_token: Option<String>,
    pub hello: HandshakeResponse,
    pub connections: AtomicU64,
    /// The shared-memory transport, when on: each handshake gets an offer with a ticket.
    pub shm: Option<Arc<ShmExport>>,
    /// The TCP data plane, when on: sessions that ask get an offer and signed leases.
    pub data: Option<Arc<DataPlane>>,
    pub metrics: Arc<Metrics>,
}

/// Per-connection state.
#[derive(Default)]
pub(crate) struct Session {
    authenticated: AtomicBool,
    /// Reservations made by put_start on this connection. They belong to it: when the
    /// connection ends they are dropped, which revokes the uncommitted ones at once rather
    /// than at their deadline.
    reservations: Mutex<HashMap<u64, WriteReservation>>,
    /// The session's data-plane number and secret, once its handshake asked for them.
    pub data: OnceLock<DataCredentials>,
    /// Cancelled when the QUIC connection ends: its data connections close too.
    pub closed: CancellationToken,
    /// This session's client mapped the dram tier through the shared-memory transport
    /// (it redeemed its ticket): it copies dram values itself.
    pub shm_mapped: Arc<AtomicBool>,
    /// This session's client asked for the device segments' IPC handles: it copies device
    /// values itself.
    device_mapped: AtomicBool,
}

impl Session {
    /// Whether this session holds `writer`'s reservation on `key`.
    pub fn holds(&self, key: &[u8], writer: u64) -> bool {
        self.reservations
            .lock()
            .get(&writer)
            .is_some_and(|r| r.key() == key)
    }

    /// Revokes `writer`'s reservation now, if this session holds it.
    pub fn revoke(&self, writer: u64) {
        let taken = self.reservations.lock().remove(&writer);
        drop(taken); // revokes it
    }

    /// Whether this session's client copies the values of a tier of `kind` itself.
    fn copies_itself(&self, kind: Option<TierKind>) -> bool {
        match kind {
            // The shared-memory transport hands out the ssd files with the segments.
            Some(TierKind::Dram | TierKind::Ssd) => self.shm_mapped.load(Ordering::Relaxed),
            Some(TierKind::Device) => self.device_mapped.load(Ordering::Relaxed),
            _ => false,
        }
    }

    /// Counts `len` bytes this session's client copies itself into (`inbound`) or out of
    /// tier `tier`, if it does.
    fn count_direct(&self, shared: &Shared, tier: u8, len: u64, inbound: bool) {
        let kind = shared.store.tier_kind(tier);
        if self.copies_itself(kind) {
            if let Some(counter) = kind.and_then(|k| shared.metrics.bytes.direct(k, inbound)) {
                counter.increment(len);
            }
        }
    }

    /// Ends the session: its data connections close and its reservations are revoked.
    pub fn close(&self, shared: &Shared) {
        self.closed.cancel();
        let reservations = std::mem::take(&mut *self.reservations.lock());
        drop(reservations);
        if let (Some(data), Some(c)) = (&shared.data, self.data.get()) {
            data.forget(c.session);
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
    // Judge the connection before reading the header: an unauthenticated peer must not
    // make the server buffer up to MAX_HEADER_LEN per stream.
    if shared.auth_token.is_some() && !session.authenticated.load(Ordering::Acquire) {
        if opcode != Opcode::Handshake {
            return Err(Error::new(
                ErrorCode::Unauthorized,
                "this server requires an auth token: send a handshake with it first",
            )
            .into());
        }
        if head.header_len > MAX_HANDSHAKE_LEN {
            let msg = format!("a handshake header is at most {MAX_HANDSHAKE_LEN} bytes");
            return Err(Error::new(ErrorCode::TooLarge, msg).into());
        }
    }
    let header = read_header(recv, head.header_len).await?;
    let store = &*shared.store;
    match opcode {
        Opcode::Handshake => handshake(shared, session, send, &header).await,
        Opcode::Ping => {
            let ping = access::<Ping>(&header)?;
            let echo = Ping {
                nonce: ping.nonce.to_native(),
            };
            reply(send, &encode_response(&echo)).await
        }
        Opcode::Put => put(shared, send, recv, &header).await,
        Opcode::PutStart => put_start(store, session, send, &header).await,
        Opcode::PutWrite => put_write(shared, send, recv, &header).await,
        Opcode::PutEnd | Opcode::PutRevoke => {
            let req = access::<WriterRequest>(&header)?;
            let finish = Finish {
                commit: opcode == Opcode::PutEnd,
                checksum: None,
            };
            finish_one(
                shared,
                session,
                req.key.as_slice(),
                req.writer.to_native(),
                finish,
            )?;
            reply(send, &encode_bare_response()).await
        }
        Opcode::BatchPutStart => batch_put_start(store, session, send, &header).await,
        Opcode::BatchPutFinish => batch_put_finish(shared, session, send, &header).await,
        Opcode::Get => get(shared, send, &header).await,
        Opcode::GetLocations => get_locations(shared, session, send, &header).await,
        Opcode::Exists => {
            let req = access::<KeyRequest>(&header)?;
            let present = store.exists(req.key.as_slice())?;
            reply(send, &encode_response(&ExistsResponse { present })).await
        }
        Opcode::BatchExists => batch_exists(store, send, &header).await,
        Opcode::PrefixLen => prefix_len(shared, send, &header).await,
        Opcode::Remove => {
            let req = access::<RemoveRequest>(&header)?;
            store.remove(req.key.as_slice(), req.force)?;
            reply(send, &encode_bare_response()).await
        }
        Opcode::RemoveAll => {
            let req = access::<RemoveAllRequest>(&header)?;
            let removed = store.remove_all(req.force);
            reply(send, &encode_response(&RemoveAllResponse { removed })).await
        }
        Opcode::Stats => {
            expect_no_header(&header)?;
            let stats = stats(shared);
            reply(send, &encode_response(&stats)).await
        }
        Opcode::DeviceSegments => {
            expect_no_header(&header)?;
            let segments = device_segments(store)?;
            session.device_mapped.store(true, Ordering::Relaxed);
            reply(send, &encode_response(&segments)).await
        }
        Opcode::MountSegment => {
            let req = access::<MountSegmentRequest>(&header)?;
            let segment = mount_segment(store, req)?;
            reply(send, &encode_response(&segment)).await
        }
        Opcode::SegmentHeartbeat => {
            let req = access::<SegmentRef>(&header)?;
            store.heartbeat_segment(req.segment.to_native())?;
            reply(send, &encode_bare_response()).await
        }
        Opcode::UnmountSegment => {
            let segment = access::<SegmentRef>(&header)?.segment.to_native();
            // Waits for leases on the segment's objects: off the reactor.
            let store = Arc::clone(&shared.store);
            let report = tokio::task::spawn_blocking(move || store.unmount_segment(segment))
                .await
                .map_err(|e| Error::new(ErrorCode::Internal, format!("unmount task: {e}")))??;
            let answer = UnmountResponse {
                moved: report.moved,
                dropped: report.dropped,
            };
            reply(send, &encode_response(&answer)).await
        }
        Opcode::DataGet | Opcode::DataPut => {
            let msg = format!("{} is served on the data plane only", opcode.name());
            Err(Error::new(ErrorCode::Protocol, msg).into())
        }
    }
}

/// The device tier's segments with their IPC handles.
fn device_segments(store: &Store) -> Result<DeviceSegmentsResponse, Error> {
    let (_, device) = store.device()?;
    let segments = device
        .describe()
        .into_iter()
        .map(|d| DeviceSegmentInfo {
            segment: d.segment,
            size: d.size,
            handle: d.handle.0.to_vec(),
            mounted: d.mounted,
        })
        .collect();
    Ok(DeviceSegmentsResponse { segments })
}

fn mount_segment(store: &Store, req: &ArchivedMountSegmentRequest) -> Result<SegmentRef, Error> {
    let (tier, device) = store.device()?;
    let theirs = (req.backend.as_str(), req.device_index.to_native());
    let ours = device.options();
    if theirs != (ours.backend.spec().as_str(), ours.index) {
        let msg = format!(
            "the segment is on {} device {}, the server's device tier on {} device {}",
            theirs.0, theirs.1, ours.backend, ours.index
        );
        return Err(Error::new(ErrorCode::InvalidArgument, msg));
    }
    let handle = IpcHandle::from_bytes(req.handle.as_slice()).ok_or_else(|| {
        let msg = format!(
            "an IPC handle is {} bytes, got {}",
            strata_device::IPC_HANDLE_BYTES,
            req.handle.len()
        );
        Error::new(ErrorCode::InvalidArgument, msg)
    })?;
    let segment = store.mount_segment(&handle, req.size.to_native(), req.owner.as_str())?;
    Ok(SegmentRef { tier, segment })
}

async fn handshake(
    shared: &Shared,
    session: &Arc<Session>,
    send: &mut SendStream,
    header: &AlignedVec,
) -> Result<(), Failure> {
    let req = access::<HandshakeRequest>(header)?;
    if let Some(expected) = &shared.auth_token {
        let given = req.auth_token.as_ref().map(|t| t.as_str()).unwrap_or("");
        // Constant-time: how long the comparison takes must not hint at the token.
        let equal: bool =
            subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes()).into();
        if !equal {
            let why = if req.auth_token.is_none() {
                "this server requires an auth token and none was given"
            } else {
                "wrong auth token"
            };
            return Err(Failure::Refuse(Error::new(ErrorCode::Unauthorized, why)));
        }
        session.authenticated.store(true, Ordering::Release);
    }
    let mut hello = shared.hello.clone();
    hello.shm = shared
        .shm
        .as_ref()
        .and_then(|s| s.offer(Arc::clone(&session.shm_mapped)));
    if req.data_plane {
        if let Some(data) = &shared.data {
            hello.data_plane = Some(data.offer(session)?);
        }
    }
    reply(send, &encode_response(&hello)).await
}

fn placement(p: &ArchivedPlacement) -> Placement {
    match p {
        ArchivedPlacement::Auto => Placement::Auto,
        ArchivedPlacement::Device => Placement::Device,
        ArchivedPlacement::Dram => Placement::Dram,
    }
}

fn location(e: Extent) -> Location {
    Location {
        tier: e.tier,
        segment: u32::from(e.segment),
        offset: e.offset,
        len: e.len,
    }
}

fn check_value_len(len: u64) -> Result<(), Error> {
    if len > MAX_VALUE_LEN {
        let msg = format!("value of {len} bytes is over the limit of {MAX_VALUE_LEN}");
        return Err(Error::new(ErrorCode::TooLarge, msg));
    }
    Ok(())
}

/// Reserves space for the value a put or put_start header announces.
fn reserve(store: &Store, header: &AlignedVec) -> Result<WriteReservation, Error> {
    let req = access::<PutRequest>(header)?;
    let len = req.len.to_native();
    check_value_len(len)?;
    let options = PutOptions {
        pin: req.pin,
        placement: placement(&req.placement),
    };
    store.put_start(req.key.as_slice(), len, options)
}

async fn put(
    shared: &Shared,
    send: &mut SendStream,
    recv: &mut RecvStream,
    header: &AlignedVec,
) -> Result<(), Failure> {
    let mut reservation = reserve(&shared.store, header)?;
    let len = reservation.len();
    // Dropped on any early return below, which revokes it: a torn put is never visible.
    receive_payload(recv, len, |offset, bytes| {
        reservation.write_at(offset, bytes)
    })
    .await?;
    reservation.commit()?;
    shared.metrics.bytes.quic_in.increment(len);
    reply(send, &encode_bare_response()).await
}

async fn put_start(
    store: &Store,
    session: &Session,
    send: &mut SendStream,
    header: &AlignedVec,
) -> Result<(), Failure> {
    let reservation = reserve(store, header)?;
    let response = PutStartResponse {
        writer: reservation.writer().get(),
        location: location(reservation.extent()),
        deadline_ms: store.config().put_timeout.as_millis() as u64,
    };
    session
        .reservations
        .lock()
        .insert(reservation.writer().get(), reservation);
    reply(send, &encode_response(&response)).await
}

async fn put_write(
    shared: &Shared,
    send: &mut SendStream,
    recv: &mut RecvStream,
    header: &AlignedVec,
) -> Result<(), Failure> {
    let store = &*shared.store;
    let req = access::<PutWriteRequest>(header)?;
    let key = req.key.as_slice();
    let writer = WriterId::from_raw(req.writer.to_native());
    let base = req.offset.to_native();
    receive_payload(recv, req.len.to_native(), |offset, bytes| {
        let at = base
            .checked_add(offset)
            .ok_or_else(|| Error::new(ErrorCode::InvalidArgument, "write offset overflows"))?;
        store.put_write(key, writer, at, bytes)
    })
    .await?;
    shared.metrics.bytes.quic_in.increment(req.len.to_native());
    reply(send, &encode_bare_response()).await
}

/// How to end a reservation.
#[derive(Clone, Copy)]
struct Finish {
    commit: bool,
    /// The writer's checksum of what it wrote (commit only); `None`: the engine computes it.
    checksum: Option<u64>,
}

/// Commits or revokes `writer`'s reservation on `key`.
fn finish_one(
    shared: &Shared,
    session: &Session,
    key: &[u8],
    writer: u64,
    finish: Finish,
) -> Result<(), Error> {
    let store = &*shared.store;
    let own = session.reservations.lock().remove(&writer);
    match own {
        Some(r) if r.key() == key => {
            let extent = r.extent();
            match (finish.commit, finish.checksum) {
                (true, Some(c)) => r.commit_with_checksum(c),
                (true, None) => r.commit(),
                (false, _) => return r.revoke(),
            }?;
            session.count_direct(shared, extent.tier, extent.len, true);
            Ok(())
        }
        other => {
            // Not this connection's reservation (or another key): put it back and ask
            // the engine, which checks the writer itself.
            if let Some(r) = other {
                session.reservations.lock().insert(writer, r);
            }
            let id = WriterId::from_raw(writer);
            match (finish.commit, finish.checksum) {
                (true, Some(c)) => store.put_end_with_checksum(key, id, c),
                (true, None) => store.put_end(key, id),
                (false, _) => store.put_revoke(key, id),
            }
        }
    }
}

async fn batch_put_start(
    store: &Store,
    session: &Session,
    send: &mut SendStream,
    header: &AlignedVec,
) -> Result<(), Failure> {
    let req = access::<BatchPutStartRequest>(header)?;
    let keys = req.keys.keys()?;
    check_paired(keys.len(), req.lens.len())?;
    let options = PutOptions {
        pin: req.pin,
        placement: placement(&req.placement),
    };
    let deadline_ms = store.config().put_timeout.as_millis() as u64;
    let results = keys
        .iter()
        .zip(req.lens.iter())
        .map(|(key, len)| {
            let len = len.to_native();
            let started = check_value_len(len).and_then(|()| store.put_start(key, len, options));
            match started {
                Ok(reservation) => {
                    let response = PutStartResponse {
                        writer: reservation.writer().get(),
                        location: location(reservation.extent()),
                        deadline_ms,
                    };
                    session
                        .reservations
                        .lock()
                        .insert(reservation.writer().get(), reservation);
                    PutStartResult::Started(response)
                }
                Err(e) => PutStartResult::Failed(ErrorFrame::from(&e)),
            }
        })
        .collect();
    reply(send, &encode_response(&BatchPutStartResponse { results })).await
}

async fn batch_put_finish(
    shared: &Shared,
    session: &Session,
    send: &mut SendStream,
    header: &AlignedVec,
) -> Result<(), Failure> {
    let req = access::<BatchPutFinishRequest>(header)?;
    let keys = req.keys.keys()?;
    check_paired(keys.len(), req.writers.len())?;
    if req.commit {
        check_paired(keys.len(), req.checksums.len())?;
    }
    let mut errors = Vec::new();
    for (i, (key, writer)) in keys.iter().zip(req.writers.iter()).enumerate() {
        let finish = Finish {
            commit: req.commit,
            checksum: req
                .checksums
                .get(i)
                .map(|c| c.to_native())
                .filter(|&c| c != 0),
        };
        if let Err(e) = finish_one(shared, session, key, writer.to_native(), finish) {
            errors.push(KeyError {
                index: i as u32,
                error: ErrorFrame::from(&e),
            });
        }
    }
    reply(send, &encode_response(&BatchPutFinishResponse { errors })).await
}

async fn get(shared: &Shared, send: &mut SendStream, header: &AlignedVec) -> Result<(), Failure> {
    let store = &shared.store;
    let req = access::<KeyRequest>(header)?;
    // Copy out under the read guard (an epoch pin, which cannot be held across an await),
    // then stream the copy: the pin is held for one memcpy, not for a network transfer.
    let in_memory = match store.read_in_memory(req.key.as_slice())? {
        // Host memory: one copy, into memory that is not zeroed first.
        Some(guard) => guard
            .bytes()
            .map(|bytes| (Bytes::copy_from_slice(bytes), guard.checksum())),
        None => None,
    };
    let (value, checksum) = match in_memory {
        Some(found) => found,
        // On ssd: the read blocks on the device, so it runs off the reactor.
        None => {
            let store = Arc::clone(store);
            let key = req.key.as_slice().to_vec();
            tokio::task::spawn_blocking(move || {
                let guard = store.read(&key)?;
                let mut value = vec![0u8; guard.len() as usize];
                guard.copy_to(&mut value)?;
                Ok::<_, Error>((Bytes::from(value), guard.checksum()))
            })
            .await
            .map_err(|e| Error::new(ErrorCode::Internal, format!("ssd read task: {e}")))??
        }
    };
    let response = GetResponse {
        len: value.len() as u64,
        checksum,
    };
    shared.metrics.bytes.quic_out.increment(value.len() as u64);
    reply_with_payload(send, encode_response(&response), value).await
}

async fn get_locations(
    shared: &Shared,
    session: &Session,
    send: &mut SendStream,
    header: &AlignedVec,
) -> Result<(), Failure> {
    let store = &*shared.store;
    let req = access::<BatchKeysRequest>(header)?;
    let keys = req.keys.keys()?;
    // Sessions that move bytes over the data plane get each lease signed for them.
    let signer = shared
        .data
        .as_deref()
        .zip(session.data.get())
        .filter(|(_, c)| c.admitted.load(Ordering::Acquire));
    let mut leases = store.get_locations(&keys);
    let copies = if session.shm_mapped.load(Ordering::Relaxed) {
        promote_for_file_readers(&shared.store, &keys, &mut leases).await
    } else {
        Vec::new()
    };
    // Read after the leases were granted and any promotion read its record (milliseconds
    // on a busy disk), so the time left on each lease is never overstated.
    let now = store.clock().now();
    let results = leases
        .into_iter()
        .zip(&keys)
        .enumerate()
        .map(|(i, (r, key))| match r {
            Ok(lease) => {
                // Offered only with a checksum, the copy's one safeguard.
                let copy = copies.get(i).copied().flatten();
                let copy = copy.filter(|_| lease.checksum != 0).map(location);
                let location = location(lease.extent);
                let grant =
                    signer.map(|(data, c)| data.grant(c.session, key, &location, lease.expires_at));
                if grant.is_none() {
                    session.count_direct(shared, location.tier, location.len, false);
                }
                LeaseResult::Leased(Lease {
                    location,
                    checksum: lease.checksum,
                    remaining_ns: lease.expires_at.saturating_sub(now),
                    grant,
                    copy,
                })
            }
            Err(e) => LeaseResult::Failed(ErrorFrame::from(&e)),
        })
        .collect();
    let response = GetLocationsResponse { results };
    reply(send, &encode_response(&response)).await
}

/// For a client that reads leased ssd records from the tier's files itself: counts each
/// such lease as the read it stands for, and moves an object that read makes due to move
/// up into dram now (reading the record here, off the reactor), before the client reads
/// it. Returns, per key, where such a move put the copy: the client may read that copy,
/// checked against the checksum, instead of the record (its lease still names the
/// record). Where the record turns out corrupt, the lease becomes that error.
async fn promote_for_file_readers(
    store: &Arc<Store>,
    keys: &[&[u8]],
    leases: &mut [Result<strata_engine::ReadLease, Error>],
) -> Vec<Option<Extent>> {
    let mut copies = vec![None; keys.len()];
    let due: Vec<(usize, Vec<u8>, Extent)> = leases
        .iter()
        .zip(keys)
        .enumerate()
        .filter_map(|(i, (lease, key))| {
            let extent = lease.as_ref().ok()?.extent;
            let on_ssd = store.tier_kind(extent.tier) == Some(TierKind::Ssd);
            (on_ssd && store.count_file_read(key, extent)).then(|| (i, key.to_vec(), extent))
        })
        .collect();
    if due.is_empty() {
        return copies;
    }
    let store = Arc::clone(store);
    let promoted = tokio::task::spawn_blocking(move || {
        due.into_iter()
            .map(|(i, key, extent)| (i, store.promote_for_file_reader(&key, extent)))
            .collect::<Vec<_>>()
    })
    .await;
    for (i, outcome) in promoted.into_iter().flatten() {
        match outcome {
            Ok(copy) => copies[i] = copy,
            Err(corrupt) => leases[i] = Err(corrupt),
        }
    }
    copies
}

async fn batch_exists(
    store: &Store,
    send: &mut SendStream,
    header: &AlignedVec,
) -> Result<(), Failure> {
    let req = access::<BatchKeysRequest>(header)?;
    let keys = req.keys.keys()?;
    let mut present = Vec::with_capacity(keys.len());
    let mut errors = Vec::new();
    for (i, r) in store.batch_exists(&keys).into_iter().enumerate() {
        match r {
            Ok(p) => present.push(u8::from(p)),
            Err(e) => {
                present.push(0);
                errors.push(KeyError {
                    index: i as u32,
                    error: ErrorFrame::from(&e),
                });
            }
        }
    }
    let response = BatchExistsResponse { present, errors };
    reply(send, &encode_response(&response)).await
}

async fn prefix_len(
    shared: &Shared,
    send: &mut SendStream,
    header: &AlignedVec,
) -> Result<(), Failure> {
    let store = &*shared.store;
    let req = access::<PrefixLenRequest>(header)?;
    let groups = req.groups()?;
    let matched = store.prefix_len(&groups, req.lease)?;
    let m = &shared.metrics.prefix;
    m.lookups.increment(1);
    m.blocks.increment(groups.len() as u64);
    m.keys
        .increment(groups.iter().map(|g| g.len() as u64).sum::<u64>());
    m.hits.increment(matched.len as u64);
    let now = store.clock().now();
    let response = PrefixLenResponse {
        len: matched.len as u64,
        lease_remaining_ns: matched.leased_until.map(|t| t.saturating_sub(now)),
    };
    reply(send, &encode_response(&response)).await
}

fn stats(shared: &Shared) -> StatsResponse {
    let s = shared.store.stats();
    let c = &s.counters;
    StatsResponse {
        tiers: s
            .tiers
            .iter()
            .map(|t| TierStats {
                kind: t.kind.name().to_owned(),
                capacity: t.capacity,
                used: t.used,
                objects: t.objects,
                largest_free_extent: t.largest_free_extent,
                io_engine: t.io.as_ref().map_or("", |io| io.engine).to_owned(),
                read_ops: t.io.as_ref().map_or(0, |io| io.read_ops),
                read_bytes: t.io.as_ref().map_or(0, |io| io.read_bytes),
                write_ops: t.io.as_ref().map_or(0, |io| io.write_ops),
                write_bytes: t.io.as_ref().map_or(0, |io| io.write_bytes),
            })
            .collect(),
        objects: s.objects,
        pending: s.pending,
        index_bytes: s.index_bytes,
        key_bytes: s.key_bytes,
        puts: c.ops.puts,
        put_bytes: c.ops.put_bytes,
        get_hits: c.ops.get_hits,
        get_misses: c.ops.get_misses,
        get_bytes: c.ops.get_bytes,
        removes: c.ops.removes,
        evictions: c.evictions,
        evicted_bytes: c.evicted_bytes,
        expired_reservations: c.expired_reservations,
        no_space: c.no_space,
        demotions: c.demotions,
        promotions: c.promotions,
        corrupt: c.corrupt,
        unmounted_objects: c.unmounted_objects,
        connections: shared.connections.load(Ordering::Relaxed),
    }
}
