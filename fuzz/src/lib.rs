//! The fuzz targets: one function per parser that reads bytes from outside a strata
//! process, each taking any bytes and required never to panic, hang or read out of
//! bounds. `fuzz_targets/` wraps each for libFuzzer (`fuzz/run`); `tests/replay.rs`
//! replays the committed corpus (`fuzz/corpus/<target>/`) through them in every test run,
//! so a crash once found stays fixed. [`seeds`] makes each target's seed inputs with the
//! real encoders (`fuzz/run --seed`).
//!
//! | target | what reads those bytes |
//! | --- | --- |
//! | [`quic_request`] | the server: a request frame's head and its rkyv header, as every opcode's handler checks it |
//! | [`response`] | the client: a response frame's head and every response header, error frames too |
//! | [`data_plane`] | both ends of the TCP data plane: the hello, the claim and its proof, the data frames' headers |
//! | [`shm_reply`] | the client: the shm socket's packets; the server: a ticket |
//! | [`ssd_record`] | the ssd tier: a superblock and a record header block |
//! | [`ssd_scan`] | recovery's scan over a whole (damaged) tier file |
//! | [`config`] | the server: its TOML config file, resolved into settings |

use std::io::Write;

use rkyv::util::AlignedVec;
use strata_engine::tier::ssd::record::{RecordHeader, Superblock, BLOCK};
use strata_proto::msg::{
    BatchExistsResponse, BatchKeysRequest, BatchPutFinishRequest, BatchPutFinishResponse,
    BatchPutStartRequest, BatchPutStartResponse, ClusterViewResponse, DataGetRequest,
    DeviceSegmentsResponse, ExistsResponse, GetLocationsResponse, GetResponse, HandshakeRequest,
    HandshakeResponse, KeyRequest, MountSegmentRequest, Ping, PrefixLenRequest, PrefixLenResponse,
    PutRequest, PutStartResponse, PutWriteRequest, RemoveAllRequest, RemoveAllResponse,
    RemoveRequest, SegmentRef, StatsResponse, UnmountResponse, WriterRequest,
};
use strata_proto::wire::{
    access, decode, decode_error, RequestHead, ResponseHead, REQUEST_HEAD_LEN, RESPONSE_HEAD_LEN,
};

/// The bytes after a frame's head, in memory aligned as rkyv wants (the server receives
/// headers so).
fn aligned(bytes: &[u8]) -> AlignedVec {
    let mut v = AlignedVec::with_capacity(bytes.len());
    v.extend_from_slice(bytes);
    v
}

/// A request frame as the server reads it: the head, then the header as the opcode's
/// handler checks and reads it.
pub fn quic_request(data: &[u8]) {
    let Some((head, header)) = data.split_first_chunk::<REQUEST_HEAD_LEN>() else {
        return;
    };
    let head = RequestHead::decode(*head);
    let _ = head.check();
    let header = aligned(header);
    // Every request header type, whatever the opcode said: a handler only ever checks
    // its own type, and each type's check must hold against any bytes.
    let _ = access::<HandshakeRequest>(&header);
    let _ = access::<Ping>(&header);
    let _ = access::<PutRequest>(&header);
    let _ = access::<PutWriteRequest>(&header);
    let _ = access::<WriterRequest>(&header);
    let _ = access::<KeyRequest>(&header);
    let _ = access::<BatchPutStartRequest>(&header);
    let _ = access::<BatchPutFinishRequest>(&header);
    let _ = access::<RemoveRequest>(&header);
    let _ = access::<RemoveAllRequest>(&header);
    let _ = access::<MountSegmentRequest>(&header);
    let _ = access::<SegmentRef>(&header);
    if let Ok(r) = access::<BatchKeysRequest>(&header) {
        let _ = r.keys.keys();
    }
    if let Ok(r) = access::<PrefixLenRequest>(&header) {
        let _ = r.groups();
    }
}

/// A response frame as the client reads it.
pub fn response(data: &[u8]) {
    let Some((head, header)) = data.split_first_chunk::<RESPONSE_HEAD_LEN>() else {
        return;
    };
    let _ = ResponseHead::decode(*head);
    let _ = decode_error(header);
    let _ = decode::<HandshakeResponse>(header);
    let _ = decode::<Ping>(header);
    let _ = decode::<GetResponse>(header);
    let _ = decode::<PutStartResponse>(header);
    let _ = decode::<BatchPutStartResponse>(header);
    let _ = decode::<BatchPutFinishResponse>(header);
    let _ = decode::<GetLocationsResponse>(header);
    let _ = decode::<ExistsResponse>(header);
    let _ = decode::<BatchExistsResponse>(header);
    let _ = decode::<PrefixLenResponse>(header);
    let _ = decode::<RemoveAllResponse>(header);
    let _ = decode::<StatsResponse>(header);
    let _ = decode::<DeviceSegmentsResponse>(header);
    let _ = decode::<UnmountResponse>(header);
    let _ = decode::<ClusterViewResponse>(header);
}

/// The data plane's opening exchange and its frames: the client reads the hello, the
/// server the claim (checked against a session secret), then request headers.
pub fn data_plane(data: &[u8]) {
    use strata_proto::data::{
        decode_claim, decode_hello, verify_session_proof, CLAIM_LEN, HELLO_LEN, NONCE_LEN,
    };
    if let Some(hello) = data.first_chunk::<HELLO_LEN>() {
        let _ = decode_hello(hello);
    }
    if let Some(claim) = data.first_chunk::<CLAIM_LEN>() {
        let (session, proof) = decode_claim(claim);
        let nonce = [7u8; NONCE_LEN];
        let _ = verify_session_proof(&[1u8; 32], &nonce, session, proof);
    }
    if let Some((head, header)) = data.split_first_chunk::<REQUEST_HEAD_LEN>() {
        let _ = RequestHead::decode(*head).check();
        let header = aligned(header);
        let _ = access::<DataGetRequest>(&header);
        let _ = access::<PutWriteRequest>(&header);
    }
}

/// A packet from the shm descriptor socket as the client reads it.
pub fn shm_reply(data: &[u8]) {
    let _ = strata_proto::shm::decode_reply(data);
}

/// One block as the ssd tier reads it: a superblock, and a record header (the file id
/// from the input's first bytes, so matching and foreign ids both occur).
pub fn ssd_record(data: &[u8]) {
    let mut block = vec![0u8; BLOCK as usize];
    let n = data.len().min(block.len());
    block[..n].copy_from_slice(&data[..n]);
    let _ = Superblock::decode(&block);
    let file_id = data
        .first_chunk::<8>()
        .map_or(0, |b| u64::from_le_bytes(*b));
    let _ = RecordHeader::decode(&block, file_id);
}

/// Recovery's scan over a whole tier file holding `data` (values verified).
pub fn ssd_scan(data: &[u8]) {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::Builder::new()
            .prefix("strata-fuzz-ssd-")
            .tempdir_in(scratch())
            .expect("a scratch dir");
    }
    DIR.with(|dir| {
        let path = dir.path().join("strata-000.ssd");
        let mut file = std::fs::File::create(&path).expect("the scratch file");
        file.write_all(data).expect("writing the scratch file");
        drop(file);
        let _ = strata_engine::tier::ssd::scan_file(&path, true);
    });
}

/// Memory-backed where there is one: the scan writes a file per input.
fn scratch() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The server's config file: parsed, then resolved into settings as at start (the host
/// left out, so no name is looked up).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut args) = toml::from_str::<strata_server::settings::ServerArgs>(text) else {
        return;
    };
    args.host = None;
    args.config = None;
    let _ = args.resolve();
}

/// A fuzz target: any bytes in, never a panic.
pub type Target = fn(&[u8]);

/// Every target's name and function.
pub const TARGETS: &[(&str, Target)] = &[
    ("quic_request", quic_request),
    ("response", response),
    ("data_plane", data_plane),
    ("shm_reply", shm_reply),
    ("ssd_record", ssd_record),
    ("ssd_scan", ssd_scan),
    ("config", config),
];

/// Valid inputs for `target`, made with the real encoders: where fuzzing starts.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use strata_proto::msg::{ErrorFrame, KeyList};
    use strata_proto::wire::{encode_bare_response, encode_request, encode_response, Opcode};
    let keys = |n: usize| KeyList::new((0..n).map(|i| format!("m@tp0@{i:032x}")));
    match target {
        "quic_request" => vec![
            encode_request(
                Opcode::Handshake,
                &HandshakeRequest {
                    client_version: "0.1.0".into(),
                    auth_token: Some("t".into()),
                    data_plane: true,
                },
            ),
            encode_request(Opcode::Ping, &Ping { nonce: 7 }),
            encode_request(
                Opcode::Get,
                &KeyRequest {
                    key: b"some-key".to_vec(),
                },
            ),
            encode_request(
                Opcode::BatchExists,
                &BatchKeysRequest { keys: keys(4) },
            ),
            encode_request(
                Opcode::PrefixLen,
                &PrefixLenRequest {
                    keys: keys(6),
                    group_ends: vec![2, 4, 6],
                    lease: true,
                },
            ),
            encode_request(
                Opcode::Remove,
                &RemoveRequest {
                    key: b"k".to_vec(),
                    force: false,
                },
            ),
        ],
        "response" => vec![
            encode_bare_response().to_vec(),
            encode_response(&Ping { nonce: 9 }),
            encode_response(&ExistsResponse { present: true }),
            encode_response(&PrefixLenResponse {
                len: 3,
                lease_remaining_ns: Some(5),
            }),
            strata_proto::wire::encode_error(&strata_proto::Error::new(
                strata_proto::ErrorCode::NotFound,
                "gone",
            )),
            encode_response(&ErrorFrame {
                code: 1,
                message: "x".into(),
            }),
        ],
        "data_plane" => {
            use strata_proto::data::{encode_claim, encode_hello, session_proof};
            let nonce = [7u8; 32];
            let proof = session_proof(&[1u8; 32], &nonce, 42);
            vec![
                encode_hello(&nonce).to_vec(),
                encode_claim(42, &proof).to_vec(),
                encode_request(
                    Opcode::DataGet,
                    &DataGetRequest {
                        key: b"k".to_vec(),
                        location: strata_proto::msg::Location {
                            tier: 1,
                            segment: 0,
                            offset: 0,
                            len: 4096,
                        },
                        grant: strata_proto::msg::LeaseGrant {
                            expires_at: 1 << 40,
                            token: [5; 16],
                        },
                        offset: 0,
                        len: 4096,
                    },
                ),
            ]
        }
        "shm_reply" => vec![
            strata_proto::shm::encode_descriptors(3).to_vec(),
            strata_proto::shm::encode_refusal("unknown, used or expired ticket"),
        ],
        "ssd_record" | "ssd_scan" => ssd_seeds(target == "ssd_scan"),
        "config" => vec![
            b"port = 50088\ndram-capacity = \"64MiB\"\nssd-path = \"off\"\n".to_vec(),
            b"etcd-endpoints = \"http://127.0.0.1:2379\"\ncluster-id = \"c\"\nnode-id = \"n1\"\nmember-ttl = 5\n"
                .to_vec(),
            b"device-plugin = \"off\"\neviction-high-watermark-ratio = 0.9\nshards = 64\n".to_vec(),
        ],
        _ => Vec::new(),
    }
}

/// A superblock and records as the ssd tier writes them.
fn ssd_seeds(whole_file: bool) -> Vec<Vec<u8>> {
    let file_id = 0x1234_5678_9abc_def0;
    let mut file = vec![0u8; 3 * BLOCK as usize];
    Superblock {
        file_id,
        file_size: 3 * BLOCK,
    }
    .encode(&mut file[..BLOCK as usize]);
    let value = b"value bytes of one record";
    let header = RecordHeader {
        file_id,
        sequence: 1,
        value_len: value.len() as u64,
        value_checksum: xxhash_rust::xxh3::xxh3_64(value),
        key: b"key-1".to_vec(),
    };
    header.encode(&mut file[BLOCK as usize..2 * BLOCK as usize]);
    file[2 * BLOCK as usize..2 * BLOCK as usize + value.len()].copy_from_slice(value);
    if whole_file {
        vec![file]
    } else {
        vec![
            file[..BLOCK as usize].to_vec(),
            file[BLOCK as usize..2 * BLOCK as usize].to_vec(),
        ]
    }
}
