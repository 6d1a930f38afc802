//! The headers of each operation, as rkyv archives (see [`crate::wire`] for the framing).
//!
//! Value bytes are never a field here: they travel as the frame's raw payload. Times are
//! durations relative to when the server answered, never absolute clock readings, so the
//! two ends need no synchronised clocks.

use rkyv::{Archive, Deserialize, Serialize};

/// The header of an error response, and the failure of one item of a batch. Converted to
/// and from [`Error`](crate::Error) here and nowhere else: a code this build does not
/// know becomes `Internal` (the message still says what happened).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    /// A stable [`ErrorCode`](crate::ErrorCode) number.
    pub code: u16,
    /// What went wrong, for humans.
    pub message: String,
}

impl From<&crate::Error> for ErrorFrame {
    fn from(e: &crate::Error) -> ErrorFrame {
        ErrorFrame {
            code: e.code().as_u16(),
            message: e.message().to_owned(),
        }
    }
}

impl From<ErrorFrame> for crate::Error {
    fn from(f: ErrorFrame) -> crate::Error {
        let code = crate::ErrorCode::from_u16(f.code).unwrap_or(crate::ErrorCode::Internal);
        crate::Error::new(code, f.message)
    }
}

/// [`Opcode::Handshake`](crate::wire::Opcode::Handshake) request.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// The client's crate version, for the server's logs.
    pub client_version: String,
    /// The shared auth token, when the server requires one.
    pub auth_token: Option<String>,
    /// The client means to move bytes over the TCP data plane: the server then offers it
    /// ([`DataPlaneOffer`]) and signs every lease it grants this session.
    pub data_plane: bool,
}

/// The hard limits of [`crate::limits`] as the server applies them.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// [`crate::limits::MAX_KEY_LEN`].
    pub max_key_len: u32,
    /// [`crate::limits::MAX_BATCH_KEYS`].
    pub max_batch_keys: u32,
    /// [`crate::limits::MAX_PREFIX_GROUPS`].
    pub max_prefix_groups: u32,
    /// [`crate::limits::MAX_GROUP_KEYS`].
    pub max_group_keys: u32,
    /// [`crate::limits::MAX_HEADER_LEN`].
    pub max_header_len: u32,
    /// The largest value the server's tiers can ever hold.
    pub max_value_len: u64,
}

/// [`Opcode::Handshake`](crate::wire::Opcode::Handshake) response.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// The server's crate version.
    pub server_version: String,
    /// The protocol version it speaks.
    pub protocol: u8,
    /// Identifies the server's host (same value: same machine), so a client can tell
    /// whether same-host transports apply.
    pub host_id: String,
    /// How long read leases last, in milliseconds.
    pub lease_ttl_ms: u64,
    /// How long a reservation may stay uncommitted, in milliseconds.
    pub put_timeout_ms: u64,
    /// What the server accepts.
    pub limits: Limits,
    /// Random per server start: leases and locations from another instance mean nothing
    /// here (a client that reconnects to a restarted server drops what it cached).
    pub instance: u64,
    /// How a client on this host maps the dram tier, when the server shares it.
    pub shm: Option<ShmOffer>,
    /// The device tier, when the server has one: a client on this host opens the same
    /// backend and imports segments by their handles ([`Opcode::DeviceSegments`](crate::wire::Opcode::DeviceSegments)).
    pub device: Option<DeviceOffer>,
    /// The TCP data plane, when the server runs one and the client asked for it.
    pub data_plane: Option<DataPlaneOffer>,
}

/// The TCP data plane, as told in the handshake ([`crate::data`] has the exchange).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DataPlaneOffer {
    /// The port, on the host the client reached QUIC at.
    pub port: u16,
    /// This session's number, which a data connection names in its proof.
    pub session: u64,
    /// This session's secret: the key of the proof ([`crate::data::session_proof`]).
    /// It never travels on the data plane itself.
    pub secret: Vec<u8>,
    /// Data connections speak TLS (with the QUIC certificate) before anything else.
    pub tls: bool,
    /// Tiers whose values the server sends from memory in place, so a range of a value
    /// costs only its bytes: values there are worth striping over several connections.
    pub in_place_tiers: Vec<u8>,
}

/// The server's device tier, as told in the handshake.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeviceOffer {
    /// The tier's index ([`Location::tier`]).
    pub tier: u8,
    /// The backend, as `--device-plugin` spells it (`host-sim`, `cuda`, `ascend`, a path).
    pub backend: String,
    /// The device's index on the host.
    pub device_index: u32,
    /// How often an owner must heart-beat a mounted segment, in milliseconds, before the
    /// server drops it with its objects.
    pub heartbeat_timeout_ms: u64,
}

/// One segment of the device tier.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeviceSegmentInfo {
    /// Its number in locations ([`Location::segment`]); never reused for other memory
    /// while the server runs.
    pub segment: u32,
    /// Its size in bytes.
    pub size: u64,
    /// The IPC handle to import it with (the backend's bytes).
    pub handle: Vec<u8>,
    /// Contributed by a client (`mount_segment`) rather than allocated by the server.
    pub mounted: bool,
}

/// [`Opcode::DeviceSegments`](crate::wire::Opcode::DeviceSegments) response.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeviceSegmentsResponse {
    /// Every segment the device tier has now.
    pub segments: Vec<DeviceSegmentInfo>,
}

/// [`Opcode::MountSegment`](crate::wire::Opcode::MountSegment) request.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MountSegmentRequest {
    /// The backend the memory was allocated with; must be the server's.
    pub backend: String,
    /// The device it is on; must be the server's.
    pub device_index: u32,
    /// The IPC handle of the allocation.
    pub handle: Vec<u8>,
    /// Its size in bytes.
    pub size: u64,
    /// Who contributes it (for logs): process and host.
    pub owner: String,
}

/// A mounted segment, named by its number ([`MountSegmentRequest`]'s answer, and the
/// request of heartbeat and unmount).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentRef {
    /// The device tier's index.
    pub tier: u8,
    /// The segment's number ([`DeviceSegmentInfo::segment`]).
    pub segment: u32,
}

/// [`Opcode::UnmountSegment`](crate::wire::Opcode::UnmountSegment) response.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmountResponse {
    /// Objects moved down a tier.
    pub moved: u64,
    /// Objects that could not be moved (no space below, or still leased at the end of
    /// the wait) and were dropped.
    pub dropped: u64,
}

/// Where a put asks its value to be placed.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// The highest tier under its high watermark.
    #[default]
    Auto,
    /// The device tier.
    Device,
    /// The dram tier.
    Dram,
}

/// One shared-memory segment of a tier.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The tier it belongs to ([`Location::tier`]).
    pub tier: u8,
    /// Its number within the tier ([`Location::segment`]).
    pub segment: u32,
    /// Its size in bytes.
    pub size: u64,
}

/// One file of a tier read through I/O (ssd) that a same-host client may read itself.
/// A record at [`Location::offset`] holds its value `value_offset` bytes further on,
/// padded to `align`, which reads of the file (opened O_DIRECT) must keep: buffer
/// address, file offset and length all multiples of it.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The tier it belongs to ([`Location::tier`]).
    pub tier: u8,
    /// Its number within the tier ([`Location::segment`]).
    pub segment: u32,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes from a location's offset to the first byte of its value.
    pub value_offset: u64,
    /// Alignment of reads, in bytes (a power of two).
    pub align: u32,
}

/// The offer of the shared-memory transport, made in the handshake to every session.
///
/// The client connects to `socket` (a Unix seqpacket socket only the server's user can
/// open), sends `ticket`, and receives one descriptor per segment, in `segments` order,
/// then one per file, in `files` order ([`crate::shm`] has the exchange's layout).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShmOffer {
    /// Path of the server's descriptor socket.
    pub socket: String,
    /// Single-use proof that the one asking holds this (authenticated) session.
    pub ticket: Vec<u8>,
    /// The segments the descriptors map, in the order they are sent.
    pub segments: Vec<SegmentInfo>,
    /// The ssd files whose read-only descriptors follow the segments': a client reads
    /// values there itself, under its leases, instead of through the server.
    pub files: Vec<FileInfo>,
}

/// [`Opcode::Ping`](crate::wire::Opcode::Ping) request and response.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    /// Echoed back unchanged.
    pub nonce: u64,
}

/// [`Opcode::Put`](crate::wire::Opcode::Put) and [`Opcode::PutStart`](crate::wire::Opcode::PutStart)
/// request. A put's payload is the `len` value bytes; a put_start has none.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PutRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The value's length in bytes.
    pub len: u64,
    /// Never evict the object.
    pub pin: bool,
    /// Which tier the value should go to.
    pub placement: Placement,
}

/// Where an object's bytes are in the server's tiers.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Tier index, top (fastest) first.
    pub tier: u8,
    /// Segment within the tier.
    pub segment: u32,
    /// Byte offset within the segment.
    pub offset: u64,
    /// Value length in bytes.
    pub len: u64,
}

/// [`Opcode::PutStart`](crate::wire::Opcode::PutStart) response.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutStartResponse {
    /// The writer id; pass it to put_write, put_end and put_revoke.
    pub writer: u64,
    /// Where the value goes (for same-host transports).
    pub location: Location,
    /// Milliseconds until an uncommitted reservation is revoked.
    pub deadline_ms: u64,
}

/// [`Opcode::PutWrite`](crate::wire::Opcode::PutWrite) request; the payload is `len` bytes
/// written at `offset` of the reserved value.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PutWriteRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The writer id from put_start.
    pub writer: u64,
    /// Where in the value the payload goes.
    pub offset: u64,
    /// Payload length.
    pub len: u64,
}

/// [`Opcode::PutEnd`](crate::wire::Opcode::PutEnd) and
/// [`Opcode::PutRevoke`](crate::wire::Opcode::PutRevoke) request.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WriterRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The writer id from put_start.
    pub writer: u64,
}

/// A request naming one key: get, exists.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyRequest {
    /// The key.
    pub key: Vec<u8>,
}

/// [`Opcode::BatchPutStart`](crate::wire::Opcode::BatchPutStart) request: reserve space
/// for each key (`lens[i]` bytes for `keys[i]`).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BatchPutStartRequest {
    /// The keys.
    pub keys: KeyList,
    /// Each value's length, paired with `keys` by position.
    pub lens: Vec<u64>,
    /// Never evict the objects.
    pub pin: bool,
    /// Which tier the values should go to.
    pub placement: Placement,
}

/// The outcome of one reservation of a batch.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PutStartResult {
    /// Reserved.
    Started(PutStartResponse),
    /// Refused (`AlreadyExists`, `Busy`, `NoSpace`, ...).
    Failed(ErrorFrame),
}

/// [`Opcode::BatchPutStart`](crate::wire::Opcode::BatchPutStart) response, one result per
/// key in request order.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BatchPutStartResponse {
    /// Per key.
    pub results: Vec<PutStartResult>,
}

/// [`Opcode::BatchPutFinish`](crate::wire::Opcode::BatchPutFinish) request: commit (or,
/// with `commit` false, cancel) the reservations `writers[i]` holds on `keys[i]`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BatchPutFinishRequest {
    /// The keys.
    pub keys: KeyList,
    /// The writer ids from put_start, paired with `keys`.
    pub writers: Vec<u64>,
    /// xxh3-64 of each value as the writer wrote it, paired with `keys`; 0 lets the
    /// server compute it. Ignored when cancelling.
    pub checksums: Vec<u64>,
    /// Commit (true) or cancel (false).
    pub commit: bool,
}

/// [`Opcode::BatchPutFinish`](crate::wire::Opcode::BatchPutFinish) response.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BatchPutFinishResponse {
    /// The keys that failed, with why; the others are committed (or cancelled).
    pub errors: Vec<KeyError>,
}

/// [`Opcode::Get`](crate::wire::Opcode::Get) response; the payload is the `len` value bytes.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetResponse {
    /// Value length.
    pub len: u64,
    /// xxh3-64 of the value as committed (0 when the server records none).
    pub checksum: u64,
}

/// Many keys in two flat arrays: the keys' bytes end to end, and where each one ends.
///
/// Flat on purpose: building it is one copy per key into one buffer, validating it is
/// O(1) for bytecheck plus one pass over `ends`, and reading it allocates nothing —
/// a `Vec<Vec<u8>>` costs an allocation per key to build and a pointer check per key to
/// validate.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyList {
    /// Every key's bytes, concatenated.
    pub bytes: Vec<u8>,
    /// End offset of each key in `bytes`; non-decreasing, the last one is `bytes.len()`.
    pub ends: Vec<u32>,
}

impl KeyList {
    /// The list of `keys`, in order.
    pub fn new<K: AsRef<[u8]>>(keys: impl IntoIterator<Item = K>) -> KeyList {
        let mut list = KeyList::default();
        for k in keys {
            list.push(k.as_ref());
        }
        list
    }

    /// Appends one key.
    pub fn push(&mut self, key: &[u8]) {
        self.bytes.extend_from_slice(key);
        self.ends.push(self.bytes.len() as u32);
    }
}

impl ArchivedKeyList {
    /// The keys as slices of the archive, or a `Protocol` error if the offsets do not
    /// describe `bytes`.
    pub fn keys(&self) -> crate::Result<Vec<&[u8]>> {
        let bytes = self.bytes.as_slice();
        let mut out = Vec::with_capacity(self.ends.len());
        let mut start = 0usize;
        for end in self.ends.iter() {
            let end = end.to_native() as usize;
            let Some(key) = bytes.get(start..end) else {
                return Err(crate::Error::new(
                    crate::ErrorCode::Protocol,
                    format!(
                        "key list offset {end} is out of order or past {} bytes",
                        bytes.len()
                    ),
                ));
            };
            out.push(key);
            start = end;
        }
        if start != bytes.len() {
            return Err(crate::Error::new(
                crate::ErrorCode::Protocol,
                "key list has bytes after its last key",
            ));
        }
        Ok(out)
    }
}

/// A request naming a batch of keys: get_locations, batch_exists.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BatchKeysRequest {
    /// The keys.
    pub keys: KeyList,
}

/// [`Opcode::BatchExists`](crate::wire::Opcode::BatchExists) request.
pub type BatchExistsRequest = BatchKeysRequest;

/// A read lease on one object.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Where the bytes are.
    pub location: Location,
    /// xxh3-64 of the value (0 when the server records none).
    pub checksum: u64,
    /// Nanoseconds the lease still had when the server answered.
    pub remaining_ns: u64,
    /// The lease signed for the data plane, when this session asked for it.
    pub grant: Option<LeaseGrant>,
    /// A copy of the value the server made in shared memory while answering (the lease
    /// moved the object up from a tier the client reads from files). No lease protects
    /// it: a same-host client may read it instead of `location` only when the bytes hash
    /// to `checksum` (never 0 here), and reads `location` otherwise.
    pub copy: Option<Location>,
}

/// A read lease as the data plane checks it: the server signed it for one session.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// When the lease ends, on the server's clock (opaque to the client).
    pub expires_at: u64,
    /// The server's MAC over the session, key, location and `expires_at`.
    pub token: [u8; 16],
}

/// [`Opcode::DataGet`](crate::wire::Opcode::DataGet) request: bytes `offset..offset + len`
/// of the value leased at `location`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DataGetRequest {
    /// The key the lease was granted on.
    pub key: Vec<u8>,
    /// Where the lease said the value is.
    pub location: Location,
    /// The lease, as granted.
    pub grant: LeaseGrant,
    /// First byte wanted.
    pub offset: u64,
    /// Bytes wanted.
    pub len: u64,
}

/// The outcome for one key of a batch.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum LeaseResult {
    /// Found and leased.
    Leased(Lease),
    /// Not found, or invalid.
    Failed(ErrorFrame),
}

/// [`Opcode::GetLocations`](crate::wire::Opcode::GetLocations) response, one result per key
/// in request order.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GetLocationsResponse {
    /// Per key.
    pub results: Vec<LeaseResult>,
}

/// [`Opcode::Exists`](crate::wire::Opcode::Exists) response.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExistsResponse {
    /// Whether a complete object has the key.
    pub present: bool,
}

/// An error that belongs to one key of a batch.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyError {
    /// Position of the key in the request.
    pub index: u32,
    /// What went wrong.
    pub error: ErrorFrame,
}

/// [`Opcode::BatchExists`](crate::wire::Opcode::BatchExists) response.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BatchExistsResponse {
    /// One byte per key in request order: 1 present, 0 absent or failed.
    pub present: Vec<u8>,
    /// The keys that failed (invalid), with why.
    pub errors: Vec<KeyError>,
}

/// [`Opcode::PrefixLen`](crate::wire::Opcode::PrefixLen) request.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PrefixLenRequest {
    /// Every position's keys (for example one per tensor-parallel rank), position after
    /// position: all of a position's keys must be present for it to count.
    pub keys: KeyList,
    /// End of each position in `keys` (a count of keys, non-decreasing).
    pub group_ends: Vec<u32>,
    /// Lease the matched objects so a following get cannot miss.
    pub lease: bool,
}

impl ArchivedPrefixLenRequest {
    /// The positions as slices of keys, or a `Protocol` error if the offsets are invalid.
    pub fn groups(&self) -> crate::Result<Vec<Vec<&[u8]>>> {
        let keys = self.keys.keys()?;
        let mut groups = Vec::with_capacity(self.group_ends.len());
        let mut start = 0usize;
        for end in self.group_ends.iter() {
            let end = end.to_native() as usize;
            let Some(group) = keys.get(start..end) else {
                return Err(crate::Error::new(
                    crate::ErrorCode::Protocol,
                    format!(
                        "position end {end} is out of order or past {} keys",
                        keys.len()
                    ),
                ));
            };
            groups.push(group.to_vec());
            start = end;
        }
        if start != keys.len() {
            return Err(crate::Error::new(
                crate::ErrorCode::Protocol,
                "prefix request has keys after its last position",
            ));
        }
        Ok(groups)
    }
}

/// [`Opcode::PrefixLen`](crate::wire::Opcode::PrefixLen) response.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixLenResponse {
    /// Leading positions whose keys are all present.
    pub len: u64,
    /// With `lease`: nanoseconds the leases still had when the server answered.
    pub lease_remaining_ns: Option<u64>,
}

/// [`Opcode::PrefixLocations`](crate::wire::Opcode::PrefixLocations) response (its request
/// is a [`PrefixLenRequest`], always leased).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PrefixLocationsResponse {
    /// Leading positions whose keys are all present and leased.
    pub len: u64,
    /// The leases of the matched positions' keys, in request order (a position whose
    /// lease failed ends the match).
    pub leases: Vec<Lease>,
}

/// [`Opcode::Remove`](crate::wire::Opcode::Remove) request.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RemoveRequest {
    /// The key.
    pub key: Vec<u8>,
    /// Remove even when leased or being written.
    pub force: bool,
}

/// [`Opcode::RemoveAll`](crate::wire::Opcode::RemoveAll) request.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoveAllRequest {
    /// Remove leased objects and cancel reservations too.
    pub force: bool,
}

/// [`Opcode::RemoveAll`](crate::wire::Opcode::RemoveAll) response.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoveAllResponse {
    /// Entries removed.
    pub removed: u64,
}

/// One tier's figures.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TierStats {
    /// `device`, `dram` or `ssd`.
    pub kind: String,
    /// Bytes the tier can hold.
    pub capacity: u64,
    /// Bytes allocated.
    pub used: u64,
    /// Objects whose bytes are here.
    pub objects: u64,
    /// Largest value that could be placed without evicting.
    pub largest_free_extent: u64,
    /// The I/O engine of a tier that does I/O (`io_uring` or `psync`); empty otherwise.
    pub io_engine: String,
    /// Device reads (ssd).
    pub read_ops: u64,
    /// Bytes read from the device.
    pub read_bytes: u64,
    /// Device writes (ssd).
    pub write_ops: u64,
    /// Bytes written to the device.
    pub write_bytes: u64,
}

/// [`Opcode::Stats`](crate::wire::Opcode::Stats) response (the request has no header).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct StatsResponse {
    /// Per tier, top first.
    pub tiers: Vec<TierStats>,
    /// Complete objects.
    pub objects: u64,
    /// Pending reservations.
    pub pending: u64,
    /// Heap bytes of the index, keys excluded.
    pub index_bytes: u64,
    /// Bytes of keys held by the index.
    pub key_bytes: u64,
    /// Puts committed.
    pub puts: u64,
    /// Bytes committed by puts.
    pub put_bytes: u64,
    /// Gets that found their key.
    pub get_hits: u64,
    /// Gets that did not.
    pub get_misses: u64,
    /// Bytes read by gets.
    pub get_bytes: u64,
    /// Removals.
    pub removes: u64,
    /// Objects evicted (dropped or demoted).
    pub evictions: u64,
    /// Bytes evicted.
    pub evicted_bytes: u64,
    /// Reservations revoked at their deadline.
    pub expired_reservations: u64,
    /// Puts refused for lack of space.
    pub no_space: u64,
    /// Objects moved down a tier by eviction (dram to ssd).
    pub demotions: u64,
    /// Objects moved up a tier on their second read (ssd to dram).
    pub promotions: u64,
    /// Objects dropped because their stored bytes failed their checksum.
    pub corrupt: u64,
    /// Objects dropped with a device segment that was unmounted.
    pub unmounted_objects: u64,
    /// Connections the server holds now.
    pub connections: u64,
}

/// A member's state in a cluster.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum MemberState {
    /// Serving and placed on: clients put and look up its runs here.
    Active,
    /// Stopping: finishes what is in flight, takes no new puts, placed on by no one.
    Draining,
}

/// One member of a cluster, as its record in etcd says (docs/cluster.md).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct MemberInfo {
    /// The stable node id placement ranks by.
    pub node_id: String,
    /// `host:port` of its QUIC service, as clients reach it.
    pub addr: String,
    /// The host it runs on ([`crate::host_id`]): a client on the same host reads through
    /// shared memory.
    pub host_id: String,
    /// Its share of the keys relative to the other members.
    pub weight: f64,
    /// Active or draining.
    pub state: MemberState,
    /// Bytes its tiers hold, all together.
    pub capacity: u64,
    /// Its TLS certificate (PEM) when self-signed, so a client that trusts the member it
    /// asked trusts the rest; empty when the operator's CA issued it.
    pub cert_pem: String,
    /// Milliseconds since it joined (by its own clock when it registered; the join
    /// window is minutes, so clock skew of seconds does not matter).
    pub joined_ms_ago: u64,
}

/// [`Opcode::ClusterView`](crate::wire::Opcode::ClusterView) response (the request has no
/// header).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ClusterViewResponse {
    /// The cluster's id; empty for a server running alone (then `members` is empty).
    pub cluster_id: String,
    /// The etcd revision this view was read at: larger is newer.
    pub epoch: u64,
    /// The placement scheme ([`crate::placement::SCHEME`]).
    pub scheme: String,
    /// The placement seed.
    pub seed: u64,
    /// Positions per run.
    pub run_blocks: u32,
    /// Milliseconds after a member joins during which a miss at it is also looked up at
    /// the run's previous owner.
    pub join_window_ms: u64,
    /// The answering member's node id.
    pub node_id: String,
    /// Every member, active and draining.
    pub members: Vec<MemberInfo>,
}

#[cfg(test)]
mod error_frame_tests {
    use super::ErrorFrame;
    use crate::{Error, ErrorCode};

    #[test]
    fn an_error_crosses_the_wire_as_it_was_and_an_unknown_code_reads_internal() {
        for code in ErrorCode::ALL {
            let e = Error::new(code, "what happened");
            assert_eq!(Error::from(ErrorFrame::from(&e)), e);
        }
        let from_a_newer_peer = ErrorFrame {
            code: 999,
            message: "a code from the future".into(),
        };
        let e = Error::from(from_a_newer_peer);
        assert_eq!(e.code(), ErrorCode::Internal);
        assert_eq!(e.message(), "a code from the future");
    }
}
