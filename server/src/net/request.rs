//! One function per opcode: decode the header, call the engine, answer.
//!
//! Every handler either answers itself (and finishes the stream) or returns a
//! [`Failure`], which the caller turns into an error frame. Nothing here panics on input:
//! headers are validated by bytecheck before any field is read, and the engine checks
//! keys, lengths and batch sizes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
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
    Location, Ping, PrefixLenRequest, PrefixLenResponse, PrefixLocationsResponse, PutRequest,
    PutStartResponse, PutStartResult, PutWriteRequest, RemoveAllRequest, RemoveAllResponse,
    RemoveRequest, StatsResponse, TierStats, WriterRequest,
};
use strata_proto::wire::{access, encode_bare_response, encode_response, Opcode};
use strata_proto::{Error, ErrorCode};

use super::data::DataPlane;
use super::session::Session;
use super::shm::ShmExport;
use crate::cluster::ClusterState;
use crate::metrics::Metrics;
use strata_engine::{Extent, PutOptions, Store, TierKind, WriteReservation, WriterId};

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

pub(crate) fn protocol(msg: String) -> Failure {
    Failure::Reply(Error::new(ErrorCode::Protocol, msg))
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

/// A request's answer, ready to send: a response frame, and after it, for a get, the
/// value (sent without a copy).
#[derive(Debug)]
pub(crate) enum Response {
    Frame(Vec<u8>),
    WithPayload(Vec<u8>, Bytes),
}

/// Where a request's payload comes from: the rest of its QUIC stream, or a buffer in the
/// tests.
pub(crate) trait Payload {
    /// Fills `buf` from the payload; the bytes it holds when the payload ends first
    /// (`Ok(n)` with `n < buf.len()`). `Failure::Broken` when the stream broke.
    async fn fill(&mut self, buf: &mut [u8]) -> Result<usize, Failure>;

    /// Whether the payload has ended (no byte follows what was read).
    async fn at_end(&mut self) -> Result<bool, Failure>;
}

/// Bytes of payload gathered before they are copied into the store: big enough that the
/// per-copy index check is noise, small enough to stay in cache.
const STAGING_LEN: usize = 256 << 10;

/// Receives exactly `len` payload bytes and hands them to `sink(offset, bytes)` in pieces
/// of up to [`STAGING_LEN`]; then checks the payload ended right after.
pub(crate) async fn receive_payload<P: Payload>(
    payload: &mut P,
    len: u64,
    mut sink: impl FnMut(u64, &[u8]) -> Result<(), Error>,
) -> Result<(), Failure> {
    let mut staging = vec![0u8; STAGING_LEN.min(len as usize)];
    let mut offset = 0u64;
    while offset < len {
        let want = staging.len().min((len - offset) as usize);
        let got = payload.fill(&mut staging[..want]).await?;
        if got < want {
            return Err(protocol(format!(
                "payload ended after {} of the {len} bytes announced",
                offset + got as u64
            )));
        }
        sink(offset, &staging[..want])?;
        offset += want as u64;
    }
    if payload.at_end().await? {
        Ok(())
    } else {
        Err(protocol(format!(
            "payload is longer than the {len} bytes announced"
        )))
    }
}

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
    /// The cluster's members as this server sees them (empty when it runs alone).
    pub cluster: Arc<ClusterState>,
    /// QUIC connections served at once, at most.
    pub max_connections: u64,
}

impl Shared {
    /// Counts `len` bytes this session's client copies itself into (`inbound`) or out of
    /// tier `tier`, if it does.
    fn count_direct(&self, session: &Session, tier: u8, len: u64, inbound: bool) {
        let kind = self.store.tier_kind(tier);
        if session.copies_itself(kind) {
            if let Some(counter) = kind.and_then(|k| self.metrics.bytes.direct(k, inbound)) {
                counter.increment(len);
            }
        }
    }

    /// Ends the session: its data connections close and its reservations are revoked.
    pub fn close_session(&self, session: &Session) {
        session.closed.cancel();
        let reservations = std::mem::take(&mut *session.reservations.lock());
        drop(reservations);
        if let (Some(data), Some(c)) = (&self.data, session.data.get()) {
            data.forget(c.session);
        }
    }
}

/// Admits a request by its frame head alone, before its header is read: an
/// unauthenticated session may send only a handshake, and a small one, so it cannot make
/// the server buffer up to `MAX_HEADER_LEN` per stream.
pub(crate) fn admit(
    shared: &Shared,
    session: &Session,
    opcode: Opcode,
    header_len: u32,
) -> Result<(), Failure> {
    if shared.auth_token.is_some() && !session.authenticated.load(Ordering::Acquire) {
        if opcode != Opcode::Handshake {
            return Err(Error::new(
                ErrorCode::Unauthorized,
                "this server requires an auth token: send a handshake with it first",
            )
            .into());
        }
        if header_len > MAX_HANDSHAKE_LEN {
            let msg = format!("a handshake header is at most {MAX_HANDSHAKE_LEN} bytes");
            return Err(Error::new(ErrorCode::TooLarge, msg).into());
        }
    }
    Ok(())
}

/// Answers one admitted request of `session`: its decoded `header`, and its `payload`
/// (the value of a put) read as the operation needs it. Knows no socket: the QUIC stream
/// layer feeds it and sends what it returns, and the tests call it directly.
pub(crate) async fn answer<P: Payload>(
    shared: &Shared,
    session: &Arc<Session>,
    opcode: Opcode,
    header: &AlignedVec,
    payload: &mut P,
) -> Result<Response, Failure> {
    let store = &*shared.store;
    match opcode {
        Opcode::Handshake => handshake(shared, session, header).await,
        Opcode::Ping => {
            let ping = access::<Ping>(header)?;
            let echo = Ping {
                nonce: ping.nonce.to_native(),
            };
            Ok(Response::Frame(encode_response(&echo)))
        }
        Opcode::Put => put(shared, payload, header).await,
        Opcode::PutStart => put_start(store, session, header).await,
        Opcode::PutWrite => put_write(shared, payload, header).await,
        Opcode::PutEnd | Opcode::PutRevoke => {
            let req = access::<WriterRequest>(header)?;
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
            Ok(Response::Frame(encode_bare_response().to_vec()))
        }
        Opcode::BatchPutStart => batch_put_start(store, session, header).await,
        Opcode::BatchPutFinish => batch_put_finish(shared, session, header).await,
        Opcode::Get => get(shared, header).await,
        Opcode::GetLocations => get_locations(shared, session, header).await,
        Opcode::Exists => {
            let req = access::<KeyRequest>(header)?;
            let present = store.exists(req.key.as_slice())?;
            Ok(Response::Frame(encode_response(&ExistsResponse {
                present,
            })))
        }
        Opcode::BatchExists => batch_exists(store, header).await,
        Opcode::PrefixLen => prefix_len(shared, header).await,
        Opcode::PrefixLocations => prefix_locations(shared, session, header).await,
        Opcode::Remove => {
            let req = access::<RemoveRequest>(header)?;
            store.remove(req.key.as_slice(), req.force)?;
            Ok(Response::Frame(encode_bare_response().to_vec()))
        }
        Opcode::RemoveAll => {
            let req = access::<RemoveAllRequest>(header)?;
            let removed = store.remove_all(req.force);
            Ok(Response::Frame(encode_response(&RemoveAllResponse {
                removed,
            })))
        }
        Opcode::Stats => {
            expect_no_header(header)?;
            let stats = stats(shared);
            Ok(Response::Frame(encode_response(&stats)))
        }
        Opcode::ClusterView => {
            expect_no_header(header)?;
            Ok(Response::Frame(encode_response(&shared.cluster.view())))
        }
        Opcode::DeviceSegments => {
            expect_no_header(header)?;
            let segments = device_segments(store)?;
            session.device_mapped.store(true, Ordering::Relaxed);
            Ok(Response::Frame(encode_response(&segments)))
        }
        Opcode::MountSegment => {
            let req = access::<MountSegmentRequest>(header)?;
            let segment = mount_segment(store, req)?;
            Ok(Response::Frame(encode_response(&segment)))
        }
        Opcode::SegmentHeartbeat => {
            let req = access::<SegmentRef>(header)?;
            store.heartbeat_segment(req.segment.to_native())?;
            Ok(Response::Frame(encode_bare_response().to_vec()))
        }
        Opcode::UnmountSegment => {
            let segment = access::<SegmentRef>(header)?.segment.to_native();
            // Waits for leases on the segment's objects: off the reactor.
            let store = Arc::clone(&shared.store);
            let report = tokio::task::spawn_blocking(move || store.unmount_segment(segment))
                .await
                .map_err(|e| Error::new(ErrorCode::Internal, format!("unmount task: {e}")))??;
            let answer = UnmountResponse {
                moved: report.moved,
                dropped: report.dropped,
            };
            Ok(Response::Frame(encode_response(&answer)))
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
    header: &AlignedVec,
) -> Result<Response, Failure> {
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
    Ok(Response::Frame(encode_response(&hello)))
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

async fn put<P: Payload>(
    shared: &Shared,
    payload: &mut P,
    header: &AlignedVec,
) -> Result<Response, Failure> {
    let mut reservation = reserve(&shared.store, header)?;
    let len = reservation.len();
    // Dropped on any early return below, which revokes it: a torn put is never visible.
    receive_payload(payload, len, |offset, bytes| {
        reservation.write_at(offset, bytes)
    })
    .await?;
    reservation.commit()?;
    shared.metrics.bytes.quic_in.increment(len);
    Ok(Response::Frame(encode_bare_response().to_vec()))
}

async fn put_start(
    store: &Store,
    session: &Session,
    header: &AlignedVec,
) -> Result<Response, Failure> {
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
    Ok(Response::Frame(encode_response(&response)))
}

async fn put_write<P: Payload>(
    shared: &Shared,
    payload: &mut P,
    header: &AlignedVec,
) -> Result<Response, Failure> {
    let store = &*shared.store;
    let req = access::<PutWriteRequest>(header)?;
    let key = req.key.as_slice();
    let writer = WriterId::from_raw(req.writer.to_native());
    let base = req.offset.to_native();
    receive_payload(payload, req.len.to_native(), |offset, bytes| {
        let at = base
            .checked_add(offset)
            .ok_or_else(|| Error::new(ErrorCode::InvalidArgument, "write offset overflows"))?;
        store.put_write(key, writer, at, bytes)
    })
    .await?;
    shared.metrics.bytes.quic_in.increment(req.len.to_native());
    Ok(Response::Frame(encode_bare_response().to_vec()))
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
            shared.count_direct(session, extent.tier, extent.len, true);
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
    header: &AlignedVec,
) -> Result<Response, Failure> {
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
    Ok(Response::Frame(encode_response(&BatchPutStartResponse {
        results,
    })))
}

async fn batch_put_finish(
    shared: &Shared,
    session: &Session,
    header: &AlignedVec,
) -> Result<Response, Failure> {
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
    Ok(Response::Frame(encode_response(&BatchPutFinishResponse {
        errors,
    })))
}

async fn get(shared: &Shared, header: &AlignedVec) -> Result<Response, Failure> {
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
    Ok(Response::WithPayload(encode_response(&response), value))
}

async fn get_locations(
    shared: &Shared,
    session: &Session,
    header: &AlignedVec,
) -> Result<Response, Failure> {
    let req = access::<BatchKeysRequest>(header)?;
    let keys = req.keys.keys()?;
    let results = leases(shared, session, &keys).await;
    let response = GetLocationsResponse { results };
    Ok(Response::Frame(encode_response(&response)))
}

/// Leases `keys` for `session`: each key's location, checksum and time left, signed for
/// the data plane where the session moves bytes there, with the copy a promotion made
/// for a reader of ssd files.
async fn leases(shared: &Shared, session: &Session, keys: &[&[u8]]) -> Vec<LeaseResult> {
    let store = &*shared.store;
    // Sessions that move bytes over the data plane get each lease signed for them.
    let signer = shared
        .data
        .as_deref()
        .zip(session.data.get())
        .filter(|(_, c)| c.admitted.load(Ordering::Acquire));
    let mut leases = store.get_locations(keys);
    let copies = if session.shm_mapped.load(Ordering::Relaxed) {
        promote_for_file_readers(&shared.store, keys, &mut leases).await
    } else {
        Vec::new()
    };
    // Read after the leases were granted and any promotion read its record (milliseconds
    // on a busy disk), so the time left on each lease is never overstated.
    let now = store.clock().now();
    leases
        .into_iter()
        .zip(keys)
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
                    shared.count_direct(session, location.tier, location.len, false);
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
        .collect()
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

async fn batch_exists(store: &Store, header: &AlignedVec) -> Result<Response, Failure> {
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
    Ok(Response::Frame(encode_response(&response)))
}

async fn prefix_len(shared: &Shared, header: &AlignedVec) -> Result<Response, Failure> {
    let store = &*shared.store;
    let req = access::<PrefixLenRequest>(header)?;
    let groups = req.groups()?;
    let matched = store.prefix_len(&groups, req.lease)?;
    count_prefix(shared, &groups, matched.len);
    let now = store.clock().now();
    let response = PrefixLenResponse {
        len: matched.len as u64,
        lease_remaining_ns: matched.leased_until.map(|t| t.saturating_sub(now)),
    };
    Ok(Response::Frame(encode_response(&response)))
}

/// Counts a prefix lookup of `groups` that matched `hits` positions.
fn count_prefix(shared: &Shared, groups: &[Vec<&[u8]>], hits: usize) {
    let m = &shared.metrics.prefix;
    m.lookups.increment(1);
    m.blocks.increment(groups.len() as u64);
    m.keys
        .increment(groups.iter().map(|g| g.len() as u64).sum::<u64>());
    m.hits.increment(hits as u64);
}

/// A prefix lookup that leases the matched keys and answers with their leases: the
/// client's load that follows needs no get_locations. The prefix is found as `prefix_len`
/// finds it, then its keys are leased as `get_locations` leases them; a key evicted in
/// between ends the match at its position (the leases after it lapse with their TTL).
async fn prefix_locations(
    shared: &Shared,
    session: &Session,
    header: &AlignedVec,
) -> Result<Response, Failure> {
    let req = access::<PrefixLenRequest>(header)?;
    let groups = req.groups()?;
    let matched = shared.store.prefix_len(&groups, false)?;
    // Leased last to first, as prefix_len touches them: the head of the prefix ends up
    // the most recently used, the last to be evicted.
    let keys: Vec<&[u8]> = groups[..matched.len]
        .iter()
        .flatten()
        .rev()
        .copied()
        .collect();
    let mut results = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(strata_proto::limits::MAX_BATCH_KEYS) {
        results.extend(leases(shared, session, chunk).await);
    }
    let mut results = results.into_iter().rev();
    let mut len = 0;
    let mut granted = Vec::with_capacity(keys.len());
    'positions: for group in &groups[..matched.len] {
        let start = granted.len();
        for _ in group.iter() {
            match results.next() {
                Some(LeaseResult::Leased(lease)) => granted.push(lease),
                _ => {
                    granted.truncate(start);
                    break 'positions;
                }
            }
        }
        len += 1;
    }
    count_prefix(shared, &groups, len);
    let response = PrefixLocationsResponse {
        len: len as u64,
        leases: granted,
    };
    Ok(Response::Frame(encode_response(&response)))
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

/// The request core on its own: decoded requests in, response frames out, no socket.
#[cfg(test)]
mod tests {
    use super::*;
    use rkyv::util::AlignedVec;
    use strata_engine::{StoreConfig, TierConfig};
    use strata_proto::msg::{HandshakeRequest, Limits};
    use strata_proto::wire::{
        decode, decode_error, encode_request, RequestHead, ResponseHead, Status,
    };
    use strata_proto::wire::{PROTOCOL_VERSION, REQUEST_HEAD_LEN, RESPONSE_HEAD_LEN};

    /// A payload held in memory, as a client would send it after the header.
    struct Sent {
        bytes: Vec<u8>,
        at: usize,
    }

    impl Sent {
        fn of(bytes: &[u8]) -> Sent {
            Sent {
                bytes: bytes.to_vec(),
                at: 0,
            }
        }
    }

    impl Payload for Sent {
        async fn fill(&mut self, buf: &mut [u8]) -> Result<usize, Failure> {
            let n = buf.len().min(self.bytes.len() - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }

        async fn at_end(&mut self) -> Result<bool, Failure> {
            Ok(self.at == self.bytes.len())
        }
    }

    fn shared(auth_token: Option<&str>) -> Shared {
        let store = Store::open(StoreConfig {
            tiers: vec![TierConfig::dram(16 << 20)],
            ..StoreConfig::default()
        })
        .unwrap();
        let hello = HandshakeResponse {
            server_version: "test".into(),
            protocol: PROTOCOL_VERSION,
            host_id: "host".into(),
            lease_ttl_ms: 10_000,
            put_timeout_ms: 30_000,
            limits: Limits {
                max_key_len: 1024,
                max_batch_keys: 1024,
                max_prefix_groups: 1024,
                max_group_keys: 64,
                max_header_len: 1 << 20,
                max_value_len: store.max_value_len(),
            },
            instance: 7,
            shm: None,
            device: None,
            data_plane: None,
        };
        Shared {
            store: Arc::new(store),
            auth_token: auth_token.map(str::to_owned),
            hello,
            connections: AtomicU64::new(0),
            shm: None,
            data: None,
            metrics: Arc::new(Metrics::new()),
            cluster: Arc::default(),
            max_connections: u64::MAX,
        }
    }

    /// Answers a request `frame` as the stream layer would: its head admitted, its header
    /// decoded, `payload` after it.
    async fn call(
        shared: &Shared,
        session: &Arc<Session>,
        frame: Vec<u8>,
        payload: &[u8],
    ) -> Result<Response, Failure> {
        let head: [u8; REQUEST_HEAD_LEN] = frame[..REQUEST_HEAD_LEN].try_into().unwrap();
        let head = RequestHead::decode(head);
        let opcode = head.check()?;
        admit(shared, session, opcode, head.header_len)?;
        let mut header = AlignedVec::new();
        header.extend_from_slice(&frame[REQUEST_HEAD_LEN..]);
        answer(shared, session, opcode, &header, &mut Sent::of(payload)).await
    }

    /// The frame's status and header body.
    fn frame(response: &Response) -> (Status, &[u8]) {
        let bytes = match response {
            Response::Frame(f) | Response::WithPayload(f, _) => f,
        };
        let head: [u8; RESPONSE_HEAD_LEN] = bytes[..RESPONSE_HEAD_LEN].try_into().unwrap();
        (
            ResponseHead::decode(head).unwrap().status,
            &bytes[RESPONSE_HEAD_LEN..],
        )
    }

    fn failed_with(result: Result<Response, Failure>) -> ErrorCode {
        match result {
            Err(Failure::Reply(e) | Failure::Refuse(e)) => e.code(),
            Err(Failure::Broken) => panic!("broken"),
            Ok(r) => {
                let (status, body) = frame(&r);
                assert_eq!(status, Status::Error, "expected a failure, got {r:?}");
                decode_error(body).code()
            }
        }
    }

    fn put(key: &[u8], len: u64) -> PutRequest {
        PutRequest {
            key: key.to_vec(),
            len,
            pin: false,
            placement: Placement::Auto,
        }
    }

    #[tokio::test]
    async fn a_put_then_a_get_return_the_bytes_with_their_checksum() {
        let shared = shared(None);
        let session = Arc::new(Session::default());
        let value: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let r = call(
            &shared,
            &session,
            encode_request(Opcode::Put, &put(b"k", 300_000)),
            &value,
        )
        .await;
        assert_eq!(frame(&r.unwrap()).0, Status::Ok);

        let got = call(
            &shared,
            &session,
            encode_request(Opcode::Get, &KeyRequest { key: b"k".to_vec() }),
            &[],
        )
        .await
        .unwrap();
        let Response::WithPayload(head, bytes) = &got else {
            panic!("a get answers with the value: {got:?}");
        };
        let meta = decode::<GetResponse>(&head[RESPONSE_HEAD_LEN..]).unwrap();
        assert_eq!(meta.len, 300_000);
        assert_eq!(meta.checksum, xxhash_rust::xxh3::xxh3_64(&value));
        assert!(bytes[..] == value[..]);

        let r = call(
            &shared,
            &session,
            encode_request(Opcode::Ping, &Ping { nonce: 42 }),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(decode::<Ping>(frame(&r).1).unwrap().nonce, 42);
    }

    #[tokio::test]
    async fn a_payload_shorter_or_longer_than_announced_stores_nothing() {
        let shared = shared(None);
        let session = Arc::new(Session::default());
        let short = call(
            &shared,
            &session,
            encode_request(Opcode::Put, &put(b"short", 10)),
            &[1; 9],
        )
        .await;
        assert_eq!(failed_with(short), ErrorCode::Protocol);
        let long = call(
            &shared,
            &session,
            encode_request(Opcode::Put, &put(b"long", 10)),
            &[1; 11],
        )
        .await;
        assert_eq!(failed_with(long), ErrorCode::Protocol);
        for key in [&b"short"[..], b"long"] {
            assert!(!shared.store.exists(key).unwrap());
        }
        assert_eq!(
            shared.store.stats().pending,
            0,
            "the torn puts were revoked"
        );
    }

    #[tokio::test]
    async fn a_session_without_the_token_may_only_hand_it_over() {
        let shared = shared(Some("s3cret"));
        let session = Arc::new(Session::default());
        let ping = call(
            &shared,
            &session,
            encode_request(Opcode::Ping, &Ping { nonce: 1 }),
            &[],
        )
        .await;
        assert_eq!(failed_with(ping), ErrorCode::Unauthorized);
        // Judged by the head alone: a large header is refused before it is read.
        assert!(admit(&shared, &session, Opcode::Handshake, MAX_HANDSHAKE_LEN + 1).is_err());

        let hello = |token: &str| HandshakeRequest {
            client_version: "test".into(),
            auth_token: Some(token.into()),
            data_plane: false,
        };
        let wrong = call(
            &shared,
            &session,
            encode_request(Opcode::Handshake, &hello("guess")),
            &[],
        )
        .await;
        assert!(
            matches!(wrong, Err(Failure::Refuse(ref e)) if e.code() == ErrorCode::Unauthorized)
        );
        let right = call(
            &shared,
            &session,
            encode_request(Opcode::Handshake, &hello("s3cret")),
            &[],
        )
        .await;
        let answer = decode::<HandshakeResponse>(frame(&right.unwrap()).1).unwrap();
        assert_eq!(answer.instance, 7);
        let ping = call(
            &shared,
            &session,
            encode_request(Opcode::Ping, &Ping { nonce: 2 }),
            &[],
        )
        .await;
        assert_eq!(frame(&ping.unwrap()).0, Status::Ok);
    }

    #[tokio::test]
    async fn reservations_belong_to_their_session_and_end_with_it() {
        let shared = shared(None);
        let session = Arc::new(Session::default());
        let r = call(
            &shared,
            &session,
            encode_request(Opcode::PutStart, &put(b"pending", 4096)),
            &[],
        )
        .await
        .unwrap();
        let started = decode::<PutStartResponse>(frame(&r).1).unwrap();
        assert!(session.holds(b"pending", started.writer));
        assert_eq!(shared.store.stats().pending, 1);
        shared.close_session(&session);
        assert_eq!(
            shared.store.stats().pending,
            0,
            "closing the session revoked it"
        );

        let data = call(
            &shared,
            &session,
            encode_request(Opcode::DataGet, &KeyRequest { key: b"k".to_vec() }),
            &[],
        )
        .await;
        assert_eq!(
            failed_with(data),
            ErrorCode::Protocol,
            "data-plane ops are not QUIC's"
        );
    }
}
