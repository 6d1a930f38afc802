//! Frame layout of the QUIC protocol, and the encoders and decoders of its headers.
//!
//! Every request is one QUIC bi-directional stream carrying one request frame; the server
//! answers on the same stream with one response frame and finishes it.
//!
//! ```text
//! request:   version u8 | opcode u8 | flags u16 | header_len u32 | header | payload
//! response:  status u8  | header_len u32                         | header | payload
//! ```
//!
//! * Integers are little-endian. `header_len` counts only the header.
//! * `header` is an rkyv archive of the opcode's request type (see [`crate::msg`]), or of its
//!   response type when `status` is [`Status::Ok`], or an [`ErrorFrame`](crate::msg::ErrorFrame)
//!   when it is [`Status::Error`]. Operations without arguments or results send
//!   `header_len = 0`. A receiver copies the header into aligned memory and validates it
//!   with bytecheck before reading a field ([`decode`]).
//! * `payload` is raw value bytes, never passed through rkyv: a put's value after its
//!   header, a get's value after its response header. Its length is a field of the header;
//!   the sender finishes the stream right after it, so a payload shorter or longer than
//!   announced is detected.
//! * `flags` are reserved: a request with a flag this version does not know is refused.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::limits::MAX_HEADER_LEN;
use crate::{Error, ErrorCode, Result};

/// The protocol version this build speaks, as its handshake announces it. The first byte
/// of a request is the version that introduced its opcode ([`Opcode::since`]), not this
/// one: a request an older server knows reaches it as the version it speaks, and one it
/// does not know is refused by version, never misread. Versions add opcodes; the frames
/// are the same in all of them.
/// * 1: every opcode up to [`Opcode::ClusterView`].
/// * 2: [`Opcode::PrefixLocations`], a prefix lookup that answers with the leases.
pub const PROTOCOL_VERSION: u8 = 2;

/// The oldest protocol version a server of this build serves.
pub const MIN_PROTOCOL_VERSION: u8 = 1;

/// The TLS application protocol (ALPN) both ends announce.
pub const ALPN: &[u8] = b"strata/1";

/// Bytes before a request's header.
pub const REQUEST_HEAD_LEN: usize = 8;

/// Bytes before a response's header.
pub const RESPONSE_HEAD_LEN: usize = 5;

/// QUIC application error code the server closes a connection with after a wrong auth
/// token; clients map it to [`ErrorCode::Unauthorized`].
pub const CLOSE_UNAUTHORIZED: u32 = 0x5354_0001;

/// QUIC application error code of a connection closed because the server shuts down.
pub const CLOSE_SHUTDOWN: u32 = 0x5354_0002;

/// Application close code: the server holds as many connections as it takes; the reason
/// says how many. Try again later.
pub const CLOSE_BUSY: u32 = 0x5354_0004;

/// QUIC application error code a server stops a request stream with once it has answered
/// (for example with an error) before reading the whole payload.
pub const STOP_ANSWERED: u32 = 0x5354_0003;

/// QUIC transport settings both ends apply, tuned for multi-MiB values (quinn's defaults
/// are sized for web traffic: a 1.25 MB stream window and 100 concurrent streams).
pub mod tuning {
    use std::time::Duration;

    /// Concurrent request streams a peer may open: batch gets fan out one stream per key.
    pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
    /// Bytes one stream may have in flight unread: a whole 16 MiB value without stalls.
    pub const STREAM_RECEIVE_WINDOW: u32 = 16 << 20;
    /// Bytes a whole connection may have in flight unread (16 concurrent 8 MiB values).
    pub const CONNECTION_RECEIVE_WINDOW: u32 = 128 << 20;
    /// Bytes a sender keeps in flight across all its streams.
    pub const SEND_WINDOW: u64 = 128 << 20;
    /// Keep-alive interval: idle engine connections outlive NAT and idle timeouts.
    pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
    /// A connection with no traffic (keep-alives included) for this long is dead.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

    /// These settings as quinn's transport configuration (both ends use it).
    #[cfg(feature = "quinn")]
    pub fn transport_config() -> quinn::TransportConfig {
        use quinn::VarInt;
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_STREAMS))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
            .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
            .send_window(SEND_WINDOW)
            .keep_alive_interval(Some(KEEP_ALIVE))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("30 s fits a VarInt"),
            ));
        t
    }
}

/// What a request asks for. The numbers are part of the protocol: only append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Authenticate (when the server has a token) and learn the server's identity and limits.
    Handshake = 1,
    /// Round trip with no work; echoes a nonce.
    Ping = 2,
    /// A whole put: header, then the value as payload.
    Put = 3,
    /// Reserve space for a value (two-phase put); answers with the writer id.
    PutStart = 4,
    /// Write part of a reserved value; payload is the bytes.
    PutWrite = 5,
    /// Commit a reservation.
    PutEnd = 6,
    /// Cancel a reservation.
    PutRevoke = 7,
    /// Read a value; the response payload is its bytes.
    Get = 8,
    /// Locations and read leases of a batch of keys.
    GetLocations = 9,
    /// Whether one key is stored.
    Exists = 10,
    /// Whether each key of a batch is stored.
    BatchExists = 11,
    /// Length of the stored prefix of a sequence of key groups.
    PrefixLen = 12,
    /// Remove one key.
    Remove = 13,
    /// Remove every key.
    RemoveAll = 14,
    /// Store-wide figures.
    Stats = 15,
    /// Reserve space for a batch of values (same-host writers copy into it themselves).
    BatchPutStart = 16,
    /// Commit or cancel a batch of reservations.
    BatchPutFinish = 17,
    /// The device tier's segments and their IPC handles (same-host device transport).
    DeviceSegments = 18,
    /// A client contributes device memory it allocated as a segment of the device tier.
    MountSegment = 19,
    /// The owner of a mounted segment is alive.
    SegmentHeartbeat = 20,
    /// The owner takes its segment back: objects move down a tier first.
    UnmountSegment = 21,
    /// Data plane only: send a leased value's bytes (or a range of them).
    DataGet = 22,
    /// Data plane only: receive bytes into a reserved value; payload is the bytes.
    DataPut = 23,
    /// The cluster's members and placement settings, as this server sees them.
    ClusterView = 24,
    /// A leased prefix lookup that answers with each matched key's lease and location, so
    /// a load needs no get_locations round trip (protocol 2).
    PrefixLocations = 25,
}

impl Opcode {
    /// Every opcode, in numeric order.
    pub const ALL: [Opcode; 25] = [
        Opcode::Handshake,
        Opcode::Ping,
        Opcode::Put,
        Opcode::PutStart,
        Opcode::PutWrite,
        Opcode::PutEnd,
        Opcode::PutRevoke,
        Opcode::Get,
        Opcode::GetLocations,
        Opcode::Exists,
        Opcode::BatchExists,
        Opcode::PrefixLen,
        Opcode::Remove,
        Opcode::RemoveAll,
        Opcode::Stats,
        Opcode::BatchPutStart,
        Opcode::BatchPutFinish,
        Opcode::DeviceSegments,
        Opcode::MountSegment,
        Opcode::SegmentHeartbeat,
        Opcode::UnmountSegment,
        Opcode::DataGet,
        Opcode::DataPut,
        Opcode::ClusterView,
        Opcode::PrefixLocations,
    ];

    /// The opcode with this number, if there is one.
    pub fn from_u8(n: u8) -> Option<Opcode> {
        Opcode::ALL.into_iter().find(|o| *o as u8 == n)
    }

    /// A short lower-case name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Handshake => "handshake",
            Opcode::Ping => "ping",
            Opcode::Put => "put",
            Opcode::PutStart => "put_start",
            Opcode::PutWrite => "put_write",
            Opcode::PutEnd => "put_end",
            Opcode::PutRevoke => "put_revoke",
            Opcode::Get => "get",
            Opcode::GetLocations => "get_locations",
            Opcode::Exists => "exists",
            Opcode::BatchExists => "batch_exists",
            Opcode::PrefixLen => "prefix_len",
            Opcode::Remove => "remove",
            Opcode::RemoveAll => "remove_all",
            Opcode::Stats => "stats",
            Opcode::BatchPutStart => "batch_put_start",
            Opcode::BatchPutFinish => "batch_put_finish",
            Opcode::DeviceSegments => "device_segments",
            Opcode::MountSegment => "mount_segment",
            Opcode::SegmentHeartbeat => "segment_heartbeat",
            Opcode::UnmountSegment => "unmount_segment",
            Opcode::DataGet => "data_get",
            Opcode::DataPut => "data_put",
            Opcode::ClusterView => "cluster_view",
            Opcode::PrefixLocations => "prefix_locations",
        }
    }

    /// The protocol version that introduced this opcode: what its requests carry in
    /// their first byte, and the least a server must announce to be sent one.
    pub fn since(self) -> u8 {
        match self {
            Opcode::PrefixLocations => 2,
            _ => 1,
        }
    }
}

/// The fixed part of a request frame, as received (not yet checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Protocol version of the sender.
    pub version: u8,
    /// Raw opcode number.
    pub opcode: u8,
    /// Reserved flag bits; none are defined yet.
    pub flags: u16,
    /// Length of the rkyv header that follows.
    pub header_len: u32,
}

impl RequestHead {
    /// A head for `opcode`, at the version that introduced it.
    pub fn new(opcode: Opcode, header_len: u32) -> RequestHead {
        RequestHead {
            version: opcode.since(),
            opcode: opcode as u8,
            flags: 0,
            header_len,
        }
    }

    /// The head's bytes on the wire.
    pub fn encode(&self) -> [u8; REQUEST_HEAD_LEN] {
        let mut b = [0u8; REQUEST_HEAD_LEN];
        b[0] = self.version;
        b[1] = self.opcode;
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        b[4..8].copy_from_slice(&self.header_len.to_le_bytes());
        b
    }

    /// Parses the bytes of a head (any bytes parse; [`RequestHead::check`] judges them).
    pub fn decode(b: [u8; REQUEST_HEAD_LEN]) -> RequestHead {
        RequestHead {
            version: b[0],
            opcode: b[1],
            flags: u16::from_le_bytes([b[2], b[3]]),
            header_len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// The opcode, if this head is one this build serves: known version, opcode and flags,
    /// and a header within [`MAX_HEADER_LEN`].
    pub fn check(&self) -> Result<Opcode> {
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&self.version) {
            let msg = format!(
                "protocol version {} is not supported (this server speaks \
                 {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})",
                self.version
            );
            return Err(Error::new(ErrorCode::Protocol, msg));
        }
        let opcode = Opcode::from_u8(self.opcode).ok_or_else(|| {
            Error::new(
                ErrorCode::Protocol,
                format!("unknown opcode {}", self.opcode),
            )
        })?;
        if opcode.since() > self.version {
            let msg = format!(
                "{} is protocol {}, the request says {}",
                opcode.name(),
                opcode.since(),
                self.version
            );
            return Err(Error::new(ErrorCode::Protocol, msg));
        }
        if self.flags != 0 {
            let msg = format!("unknown request flags {:#06x}", self.flags);
            return Err(Error::new(ErrorCode::Protocol, msg));
        }
        if self.header_len > MAX_HEADER_LEN {
            let msg = format!(
                "header of {} bytes is over the limit of {MAX_HEADER_LEN}",
                self.header_len
            );
            return Err(Error::new(ErrorCode::TooLarge, msg));
        }
        Ok(opcode)
    }
}

/// Whether a response carries a result or an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The header is the opcode's response type (and a payload may follow).
    Ok = 0,
    /// The header is an [`ErrorFrame`](crate::msg::ErrorFrame); no payload follows.
    Error = 1,
}

/// The fixed part of a response frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Result or error.
    pub status: Status,
    /// Length of the rkyv header that follows.
    pub header_len: u32,
}

impl ResponseHead {
    /// The head's bytes on the wire.
    pub fn encode(&self) -> [u8; RESPONSE_HEAD_LEN] {
        let mut b = [0u8; RESPONSE_HEAD_LEN];
        b[0] = self.status as u8;
        b[1..5].copy_from_slice(&self.header_len.to_le_bytes());
        b
    }

    /// Parses and checks the bytes of a response head.
    pub fn decode(b: [u8; RESPONSE_HEAD_LEN]) -> Result<ResponseHead> {
        let status = match b[0] {
            0 => Status::Ok,
            1 => Status::Error,
            n => {
                let msg = format!("unknown response status {n}");
                return Err(Error::new(ErrorCode::Protocol, msg));
            }
        };
        let header_len = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
        if header_len > MAX_HEADER_LEN {
            let msg = format!("response header of {header_len} bytes is over the limit");
            return Err(Error::new(ErrorCode::Protocol, msg));
        }
        Ok(ResponseHead { status, header_len })
    }
}

/// A type that travels as a frame header: serialisable with rkyv, and checkable and
/// deserialisable from untrusted bytes.
pub trait Message:
    Archive + for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>> + Sized
where
    Self::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<Self, HighDeserializer<rancor::Error>>,
{
}

impl<T> Message for T
where
    T: Archive + for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
}

fn serialize<T: Message>(header: &T) -> AlignedVec
where
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    // Serialising plain data into a growable buffer has no failure mode; a failure here
    // is a bug in a message type.
    rkyv::to_bytes::<rancor::Error>(header).expect("message types always serialise")
}

/// A request frame up to its payload: head and header, ready to send.
pub fn encode_request<T: Message>(opcode: Opcode, header: &T) -> Vec<u8>
where
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let body = serialize(header);
    frame(&RequestHead::new(opcode, body.len() as u32).encode(), &body)
}

/// A request frame of an operation that takes no arguments.
pub fn encode_bare_request(opcode: Opcode) -> [u8; REQUEST_HEAD_LEN] {
    RequestHead::new(opcode, 0).encode()
}

/// A success response up to its payload.
pub fn encode_response<T: Message>(header: &T) -> Vec<u8>
where
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let body = serialize(header);
    let head = ResponseHead {
        status: Status::Ok,
        header_len: body.len() as u32,
    };
    frame(&head.encode(), &body)
}

/// A success response with no header.
pub fn encode_bare_response() -> [u8; RESPONSE_HEAD_LEN] {
    ResponseHead {
        status: Status::Ok,
        header_len: 0,
    }
    .encode()
}

/// An error response.
pub fn encode_error(error: &Error) -> Vec<u8> {
    let frame_body = crate::msg::ErrorFrame::from(error);
    let body = serialize(&frame_body);
    let head = ResponseHead {
        status: Status::Error,
        header_len: body.len() as u32,
    };
    frame(&head.encode(), &body)
}

fn frame(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head);
    out.extend_from_slice(body);
    out
}

/// Checks `bytes` as an archived `T` and returns a reference into them, without copying.
/// `bytes` must be aligned for rkyv: receive headers into an [`AlignedVec`].
pub fn access<T: Message>(bytes: &AlignedVec) -> Result<&T::Archived>
where
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    rkyv::access::<T::Archived, rancor::Error>(bytes).map_err(|e| malformed::<T>(e))
}

/// Checks `bytes` as an archived `T` and deserialises it. Copies into aligned memory first
/// when `bytes` is not aligned, so any received slice can be passed.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T>
where
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|e| malformed::<T>(e))
}

/// Turns an error frame's header into the error it carries.
pub fn decode_error(bytes: &[u8]) -> Error {
    match decode::<crate::msg::ErrorFrame>(bytes) {
        Ok(f) => f.into(),
        Err(e) => e,
    }
}

fn malformed<T>(e: rancor::Error) -> Error {
    let name = std::any::type_name::<T>().rsplit("::").next().unwrap_or("");
    Error::new(ErrorCode::Protocol, format!("malformed {name} header: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{BatchExistsRequest, BatchKeysRequest, PutRequest};

    #[test]
    fn request_head_round_trips_and_is_little_endian() {
        let head = RequestHead::new(Opcode::Get, 0x0102_0304);
        let b = head.encode();
        assert_eq!(b, [1, 8, 0, 0, 4, 3, 2, 1]);
        assert_eq!(RequestHead::decode(b), head);
        assert_eq!(head.check(), Err(too_large_header()));
    }

    fn too_large_header() -> Error {
        Error::new(
            ErrorCode::TooLarge,
            format!("header of 16909060 bytes is over the limit of {MAX_HEADER_LEN}"),
        )
    }

    /// Each request carries the version of its opcode: protocol 1's opcodes still reach a
    /// protocol 1 server as version 1, and a protocol 2 opcode claimed at version 1 is
    /// refused rather than read.
    #[test]
    fn requests_carry_their_opcode_s_version() {
        for op in Opcode::ALL {
            let head = RequestHead::new(op, 0);
            assert_eq!(head.version, op.since(), "{op:?}");
            assert_eq!(head.check(), Ok(op));
        }
        assert_eq!(RequestHead::new(Opcode::PrefixLen, 0).version, 1);
        let early = RequestHead {
            version: 1,
            ..RequestHead::new(Opcode::PrefixLocations, 0)
        };
        let e = early.check().unwrap_err();
        assert_eq!(e.code(), ErrorCode::Protocol);
        assert!(
            e.to_string().contains("prefix_locations is protocol 2"),
            "{e}"
        );
    }

    #[test]
    fn check_refuses_version_opcode_and_flags() {
        let ok = RequestHead::new(Opcode::Stats, 0);
        assert_eq!(ok.check(), Ok(Opcode::Stats));
        for bad in [
            RequestHead { version: 9, ..ok },
            RequestHead { version: 0, ..ok },
            RequestHead { opcode: 0, ..ok },
            RequestHead { opcode: 200, ..ok },
            RequestHead { flags: 1, ..ok },
        ] {
            assert_eq!(bad.check().unwrap_err().code(), ErrorCode::Protocol);
        }
    }

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        let req = PutRequest {
            key: b"model@tp_rank:0@abc".to_vec(),
            len: 4096,
            pin: true,
            placement: crate::msg::Placement::Device,
        };
        let frame = encode_request(Opcode::Put, &req);
        let head = RequestHead::decode(frame[..8].try_into().unwrap());
        assert_eq!(head.check(), Ok(Opcode::Put));
        assert_eq!(head.header_len as usize, frame.len() - 8);
        // Unaligned on purpose: decode must copy before validating.
        let back: PutRequest = decode(&frame[8..]).unwrap();
        assert_eq!(back, req);

        for garbage in [&b""[..], b"\xff", &[0xAB; 64][..], &frame[9..]] {
            let e = decode::<PutRequest>(garbage).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Protocol, "{garbage:?}");
        }
        // A structurally valid archive of another type does not pass as this one when
        // its lengths point outside the buffer.
        let other = encode_request(
            Opcode::BatchExists,
            &BatchExistsRequest {
                keys: crate::msg::KeyList::new([[1u8; 40]; 3]),
            },
        );
        let _ = decode::<PutRequest>(&other[8..]); // must not panic, whatever it returns
    }

    #[test]
    fn key_lists_round_trip_and_bad_offsets_are_refused() {
        use crate::msg::{KeyList, PrefixLenRequest};
        let list = KeyList::new([&b"ab"[..], b"", b"cde"]);
        let bytes = rkyv::to_bytes::<rancor::Error>(&BatchKeysRequest { keys: list }).unwrap();
        let archived = access::<BatchKeysRequest>(&bytes).unwrap();
        assert_eq!(archived.keys.keys().unwrap(), vec![&b"ab"[..], b"", b"cde"]);

        for ends in [vec![3, 2, 5], vec![2, 9], vec![2]] {
            let bad = KeyList {
                bytes: b"abcde".to_vec(),
                ends,
            };
            let bytes = rkyv::to_bytes::<rancor::Error>(&BatchKeysRequest { keys: bad }).unwrap();
            let archived = access::<BatchKeysRequest>(&bytes).unwrap();
            let e = archived.keys.keys().unwrap_err();
            assert_eq!(e.code(), ErrorCode::Protocol);
        }

        let prefix = PrefixLenRequest {
            keys: KeyList::new([&b"a0"[..], b"a1", b"b0", b"b1"]),
            group_ends: vec![2, 4],
            lease: false,
        };
        let bytes = rkyv::to_bytes::<rancor::Error>(&prefix).unwrap();
        let groups = access::<PrefixLenRequest>(&bytes)
            .unwrap()
            .groups()
            .unwrap();
        assert_eq!(
            groups,
            vec![vec![&b"a0"[..], b"a1"], vec![&b"b0"[..], b"b1"]]
        );
        let bad = PrefixLenRequest {
            group_ends: vec![3, 5],
            ..prefix
        };
        let bytes = rkyv::to_bytes::<rancor::Error>(&bad).unwrap();
        let e = access::<PrefixLenRequest>(&bytes)
            .unwrap()
            .groups()
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Protocol);
    }

    #[test]
    fn error_frames_carry_code_and_message() {
        let e = Error::new(ErrorCode::Busy, "another writer");
        let frame = encode_error(&e);
        let head = ResponseHead::decode(frame[..5].try_into().unwrap()).unwrap();
        assert_eq!(head.status, Status::Error);
        assert_eq!(decode_error(&frame[5..]), e);
        assert!(ResponseHead::decode([7, 0, 0, 0, 0]).is_err());
    }
}
