//! End to end: the real server binary, real clients over QUIC on loopback.

use std::sync::Arc;
use std::time::Duration;

use strata_client::{BlockHasher, Client, ClientConfig, ErrorCode, KeyFormatter, Transport};
use strata_proto::msg::{ErrorFrame, HandshakeRequest, Ping, PutRequest};
use strata_proto::wire::{self, Opcode, RequestHead, ResponseHead, Status};
use strata_tests::{block_value, cli_binary, eventually, ServerProcess};

const BLOCK_TOKENS: usize = 128;
const BLOCK_BYTES: usize = 256 << 10;

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) ^ salt)
        .collect()
}

fn groups(hashes: &[strata_client::BlockHash]) -> Vec<Vec<String>> {
    let keys = KeyFormatter::new("e2e-model");
    hashes.iter().map(|h| keys.group(1, *h)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_finds_and_reads_the_first_instances_prefix() {
    let server = ServerProcess::start(&[]);
    let hasher = BlockHasher::new(0, BLOCK_TOKENS).with_extra_key("e2e-model");

    // Instance 1 computes and stores the 8 blocks of a 1024-token prompt.
    let instance1 = Client::connect(server.client_config()).await.unwrap();
    let tokens = prompt(1024, 0);
    let hashes = hasher.block_hashes(&tokens);
    assert_eq!(hashes.len(), 8);
    let positions = groups(&hashes);
    let values: Vec<Vec<u8>> = (0..8).map(|i| block_value(i, BLOCK_BYTES)).collect();
    let items: Vec<(&[u8], &[u8])> = positions
        .iter()
        .zip(&values)
        .map(|(g, v)| (g[0].as_bytes(), v.as_slice()))
        .collect();
    for r in instance1.batch_put_from(&items).await {
        r.unwrap();
    }

    // Instance 2, a separate client with its own hasher, computes the same keys.
    let instance2 = Client::connect(server.client_config()).await.unwrap();
    let hashes2 = BlockHasher::new(0, BLOCK_TOKENS)
        .with_extra_key("e2e-model")
        .block_hashes(&tokens);
    let positions2 = groups(&hashes2);
    assert_eq!(positions2, positions);
    let matched = instance2.prefix_len_leased(&positions2).await.unwrap();
    assert_eq!(matched.len, 8);
    assert!(matched.leased_until.is_some());
    let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; BLOCK_BYTES]; 8];
    let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let keys: Vec<&str> = positions2.iter().map(|g| g[0].as_str()).collect();
    for r in instance2.batch_get_into(&keys, &mut slices).await {
        assert_eq!(r.unwrap(), BLOCK_BYTES);
    }
    assert_eq!(bufs, values, "blocks must arrive byte-identical");

    // A third prompt shares the first 5 blocks (640 tokens), then diverges.
    let mut third = tokens[..640].to_vec();
    third.extend(prompt(384, 0xDEAD));
    let positions3 = groups(&hasher.block_hashes(&third));
    assert_eq!(positions3[..5], positions[..5]);
    assert_eq!(instance2.prefix_len(&positions3).await.unwrap(), 5);

    // get -> Bytes agrees with get_into, and a missing key is NotFound.
    let one = instance2.get(keys[3].as_bytes()).await.unwrap();
    assert_eq!(&one[..], &values[3][..]);
    let missing = instance2
        .get(positions3[6][0].as_bytes())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_report_per_key_and_two_phase_puts_commit_or_vanish() {
    let server = ServerProcess::start(&[]);
    // QUIC: a shared-memory get leases what it reads, which would change what the
    // unforced removals at the end may remove.
    let config = ClientConfig {
        transport: Transport::Quic,
        ..server.client_config()
    };
    let client = Client::connect(config).await.unwrap();
    client.put_from(b"present", b"value").await.unwrap();
    // Putting the same key again is success (same hash, same bytes).
    client.put_from(b"present", b"value").await.unwrap();

    let exists = client
        .batch_exists(&[&b"present"[..], b"absent", b""])
        .await;
    assert_eq!(exists[0].as_ref().unwrap(), &true);
    assert_eq!(exists[1].as_ref().unwrap(), &false);
    assert_eq!(
        exists[2].as_ref().unwrap_err().code(),
        ErrorCode::InvalidKey
    );

    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    let mut tiny = [0u8; 2];
    let mut bufs: Vec<&mut [u8]> = vec![&mut a, &mut b, &mut tiny];
    let got = client
        .batch_get_into(&[&b"present"[..], b"absent", b"present"], &mut bufs)
        .await;
    assert_eq!(got[0].as_ref().unwrap(), &5);
    assert_eq!(got[1].as_ref().unwrap_err().code(), ErrorCode::NotFound);
    assert_eq!(
        got[2].as_ref().unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(&a[..5], b"value");

    // Two-phase put over the wire: invisible until put_end.
    let r = client.put_start(b"two-phase", 8).await.unwrap();
    client
        .put_write(b"two-phase", r.writer, 0, b"abcd")
        .await
        .unwrap();
    client
        .put_write(b"two-phase", r.writer, 4, b"efgh")
        .await
        .unwrap();
    assert!(!client.exists(b"two-phase").await.unwrap());
    let past_end = client.put_write(b"two-phase", r.writer, 6, b"xyz").await;
    assert_eq!(past_end.unwrap_err().code(), ErrorCode::InvalidArgument);
    let wrong_writer = client.put_end(b"two-phase", r.writer + 1000).await;
    assert_eq!(wrong_writer.unwrap_err().code(), ErrorCode::NotWriter);
    client.put_end(b"two-phase", r.writer).await.unwrap();
    assert_eq!(&client.get(b"two-phase").await.unwrap()[..], b"abcdefgh");

    // A reservation left open by a connection that goes away is revoked with it.
    let leaver = Client::connect(server.client_config()).await.unwrap();
    leaver.put_start(b"abandoned", 1 << 20).await.unwrap();
    assert_eq!(client.stats().await.unwrap().pending, 1);
    leaver.close().await;
    assert!(
        no_pending_reservations(&client).await,
        "the abandoned reservation must be revoked"
    );
    let revoked = client.put_start(b"revoked", 4).await.unwrap();
    client.put_revoke(b"revoked", revoked.writer).await.unwrap();
    assert!(!client.exists(b"revoked").await.unwrap());

    // remove and remove_all.
    let leased = client.prefix_len_leased(&[[b"present"]]).await.unwrap();
    assert_eq!(leased.len, 1);
    let refused = client.remove(b"present", false).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Leased);
    client.remove(b"present", true).await.unwrap();
    assert_eq!(
        client.remove(b"present", false).await.unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert_eq!(client.remove_all(false).await.unwrap(), 1);
    assert_eq!(client.stats().await.unwrap().objects, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_locations_skip_the_server_until_their_lease_ends() {
    let server = ServerProcess::start(&["--default-kv-lease-ttl", "1500"]);
    let config = ClientConfig {
        lease_margin: Duration::from_millis(500),
        ..server.client_config()
    };
    let reader = Client::connect(config).await.unwrap();
    let other = Client::connect(server.client_config()).await.unwrap();
    other
        .put_from(b"block", &block_value(9, 4096))
        .await
        .unwrap();

    let fetched = std::time::Instant::now();
    let first = reader.get_locations(&[b"block"]).await.remove(0).unwrap();
    assert_eq!(first.location.len, 4096);
    // Removed behind the reader's back (forced past the lease): the reader's cache still
    // answers, proving it made no round trip.
    other.remove(b"block", true).await.unwrap();
    let cached = reader.get_locations(&[b"block"]).await.remove(0).unwrap();
    assert_eq!(cached, first);
    // Once the lease is within the margin of its end (1500 - 500 ms), the cache asks the
    // server again, which no longer has the key — and not before.
    let r = &reader;
    let expired = eventually(Duration::from_secs(5), || async move {
        let answer = r.get_locations(&[b"block"]).await.remove(0);
        answer.is_err_and(|e| e.code() == ErrorCode::NotFound)
    })
    .await;
    assert!(expired, "the cached location must expire with its lease");
    let lived = fetched.elapsed();
    assert!(
        lived >= Duration::from_millis(900),
        "expired after only {lived:?}"
    );
}

/// Whether the server reports no pending reservation within a bounded wait (a revoke on
/// connection loss or stream reset happens as the server notices it, not instantly).
async fn no_pending_reservations(client: &Client) -> bool {
    eventually(Duration::from_secs(5), || async move {
        client.stats().await.is_ok_and(|s| s.pending == 0)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_auth_token_is_refused() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let wrong = ClientConfig {
        auth_token: Some("guess".into()),
        ..server.client_config()
    };
    let e = Client::connect(wrong)
        .await
        .err()
        .expect("wrong token accepted");
    assert_eq!(e.code(), ErrorCode::Unauthorized, "{e}");
    assert!(e.message().contains("wrong auth token"), "{e}");

    let e = Client::connect(server.client_config())
        .await
        .err()
        .expect("no token accepted");
    assert_eq!(e.code(), ErrorCode::Unauthorized, "{e}");

    let right = ClientConfig {
        auth_token: Some("s3cret".into()),
        ..server.client_config()
    };
    let client = Client::connect(right).await.unwrap();
    client.put_from(b"k", b"v").await.unwrap();

    // A raw connection that skips the handshake is refused request by request.
    let raw = RawConnection::open(&server).await;
    let ping = wire::encode_request(Opcode::Ping, &Ping { nonce: 1 });
    assert_eq!(raw.error_code(&ping).await, Some(ErrorCode::Unauthorized));
    // Nor may it make the server buffer a large header: refused from the head alone.
    let big_put = RequestHead::new(Opcode::Put, 8 << 20).encode();
    assert_eq!(
        raw.error_code(&big_put).await,
        Some(ErrorCode::Unauthorized)
    );
    let big_hello = RequestHead::new(Opcode::Handshake, 8 << 20).encode();
    assert_eq!(raw.error_code(&big_hello).await, Some(ErrorCode::TooLarge));
}

/// A bare QUIC connection to the server that sends whatever bytes a test likes.
struct RawConnection {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

enum Answer {
    Frame(Status, Vec<u8>),
    Reset,
}

impl RawConnection {
    async fn open(server: &ServerProcess) -> RawConnection {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&server.cert).unwrap();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![wire::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint
            .connect(server.addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        RawConnection {
            _endpoint: endpoint,
            conn,
        }
    }

    /// Sends `bytes` as a whole request stream and reads what comes back.
    async fn send(&self, bytes: &[u8]) -> Answer {
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
            // The server may stop the stream before reading everything: not an error here.
            let _ = send.write_all(bytes).await;
            let _ = send.finish();
            let mut head = [0u8; wire::RESPONSE_HEAD_LEN];
            if recv.read_exact(&mut head).await.is_err() {
                return Answer::Reset;
            }
            let head = ResponseHead::decode(head).expect("a valid response head");
            let mut header = vec![0u8; head.header_len as usize];
            recv.read_exact(&mut header)
                .await
                .expect("the whole header");
            Answer::Frame(head.status, header)
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the server answers every request")
    }

    /// The error code the server answers `bytes` with (None: a success or a reset).
    async fn error_code(&self, bytes: &[u8]) -> Option<ErrorCode> {
        match self.send(bytes).await {
            Answer::Frame(Status::Error, header) => {
                let frame: ErrorFrame = wire::decode(&header).expect("a valid error frame");
                assert!(!frame.message.is_empty());
                ErrorCode::from_u16(frame.code)
            }
            _ => None,
        }
    }

    async fn handshake(&self) {
        let hello = HandshakeRequest {
            client_version: "raw".into(),
            auth_token: None,
            data_plane: false,
        };
        let frame = wire::encode_request(Opcode::Handshake, &hello);
        assert!(matches!(
            self.send(&frame).await,
            Answer::Frame(Status::Ok, _)
        ));
    }

    async fn ping_works(&self) -> bool {
        let frame = wire::encode_request(Opcode::Ping, &Ping { nonce: 77 });
        match self.send(&frame).await {
            Answer::Frame(Status::Ok, header) => wire::decode::<Ping>(&header).unwrap().nonce == 77,
            _ => false,
        }
    }
}

fn put_frame(key: &[u8], len: u64) -> Vec<u8> {
    let header = PutRequest {
        key: key.to_vec(),
        len,
        pin: false,
        placement: Default::default(),
    };
    wire::encode_request(Opcode::Put, &header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_abuse_gets_error_frames_and_the_server_keeps_serving() {
    let server = ServerProcess::start(&[]);
    let normal = Client::connect(server.client_config()).await.unwrap();
    let raw = RawConnection::open(&server).await;
    raw.handshake().await;

    let good_head = RequestHead::new(Opcode::Ping, 0);
    let mut cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("garbage", vec![0xA5; 64], ErrorCode::Protocol),
        ("short head", vec![1, 2, 3], ErrorCode::Protocol),
        (
            "unknown opcode",
            RequestHead {
                opcode: 99,
                ..good_head
            }
            .encode()
            .to_vec(),
            ErrorCode::Protocol,
        ),
        (
            "wrong version",
            RequestHead {
                version: 7,
                ..good_head
            }
            .encode()
            .to_vec(),
            ErrorCode::Protocol,
        ),
        (
            "unknown flags",
            RequestHead {
                flags: 0x8000,
                ..good_head
            }
            .encode()
            .to_vec(),
            ErrorCode::Protocol,
        ),
        (
            "header_len past the limit",
            RequestHead::new(Opcode::Put, u32::MAX).encode().to_vec(),
            ErrorCode::TooLarge,
        ),
        (
            "header shorter than announced",
            {
                let mut f = RequestHead::new(Opcode::Put, 500).encode().to_vec();
                f.extend_from_slice(&[0; 10]);
                f
            },
            ErrorCode::Protocol,
        ),
        (
            "malformed header",
            {
                let mut f = RequestHead::new(Opcode::Put, 64).encode().to_vec();
                f.extend_from_slice(&[0xEE; 64]);
                f
            },
            ErrorCode::Protocol,
        ),
        (
            "stats with a header",
            {
                let mut f = RequestHead::new(Opcode::Stats, 4).encode().to_vec();
                f.extend_from_slice(&[0; 4]);
                f
            },
            ErrorCode::Protocol,
        ),
        (
            "value over the protocol limit",
            put_frame(b"huge", u64::MAX),
            ErrorCode::TooLarge,
        ),
        (
            "value larger than any tier",
            put_frame(b"big", 1 << 33),
            ErrorCode::TooLarge,
        ),
    ];
    let mut short = put_frame(b"torn", 1000);
    short.extend_from_slice(&[1; 10]);
    cases.push(("payload shorter than announced", short, ErrorCode::Protocol));
    let mut long = put_frame(b"overlong", 10);
    long.extend_from_slice(&[1; 30]);
    cases.push(("payload longer than announced", long, ErrorCode::Protocol));

    for (name, bytes, expected) in &cases {
        let got = raw.error_code(bytes).await;
        assert_eq!(got, Some(*expected), "{name}");
        assert!(
            raw.ping_works().await,
            "connection still serves after {name}"
        );
    }

    // A client that resets its stream mid-payload gets no answer, and nothing leaks.
    {
        let (mut send, _recv) = raw.conn.open_bi().await.unwrap();
        send.write_all(&put_frame(b"reset", 1 << 20)).await.unwrap();
        send.write_all(&[7; 4096]).await.unwrap();
        send.reset(1u8.into()).unwrap();
    }

    // Nothing torn became visible, no reservation leaked, and a normal client works.
    for key in [&b"torn"[..], b"overlong", b"reset"] {
        assert!(!normal.exists(key).await.unwrap());
    }
    assert!(
        no_pending_reservations(&normal).await,
        "aborted puts must release their reservations"
    );
    normal.put_from(b"after", b"still fine").await.unwrap();
    assert_eq!(&normal.get(b"after").await.unwrap()[..], b"still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_in(dir.path(), "127.0.0.1:0", &[]);
    let addr = server.addr;
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        ..server.client_config()
    };
    let client = Client::connect(config).await.unwrap();
    client.put_from(b"before", b"1").await.unwrap();

    let status = server.terminate();
    assert!(
        status.success(),
        "graceful shutdown must exit 0, got {status}"
    );
    let down = client.exists(b"before").await.unwrap_err();
    assert_eq!(down.code(), ErrorCode::Unavailable, "{down}");

    // Same address, same data dir: same certificate, so the client trusts it again.
    let _restarted = ServerProcess::start_in(dir.path(), &addr.to_string(), &[]);
    client.put_from(b"after", b"2").await.unwrap();
    assert_eq!(&client.get(b"after").await.unwrap()[..], b"2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_over_its_timeout_is_a_timeout_error() {
    let server = ServerProcess::start(&[]);
    let impatient = ClientConfig {
        transfer_timeout: Duration::from_millis(1),
        ..server.client_config()
    };
    let client = Client::connect(impatient).await.unwrap();
    let value = block_value(1, 64 << 20);
    let e = client.put_from(b"slow", &value).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");

    // The server is unharmed and the abandoned put left nothing behind.
    let patient = Client::connect(server.client_config()).await.unwrap();
    assert!(patient.ping().await.is_ok());
    assert!(
        no_pending_reservations(&patient).await,
        "the timed-out put must release its reservation"
    );
}

#[test]
fn the_command_line_client_round_trips_and_reports_exit_codes() {
    let server = ServerProcess::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    std::fs::write(&input, block_value(5, 300_000)).unwrap();
    let strata = |args: &[&str]| {
        std::process::Command::new(cli_binary())
            .args(args)
            .env("STRATA_SERVER", server.addr.to_string())
            .env("STRATA_CA", &server.cert)
            .env_remove("STRATA_AUTH_TOKEN")
            .output()
            .unwrap()
    };
    let code = |out: &std::process::Output| out.status.code();

    assert_eq!(
        code(&strata(&["put", "blk", input.to_str().unwrap()])),
        Some(0)
    );
    let get = strata(&["get", "blk", "-o", output.to_str().unwrap()]);
    assert_eq!(code(&get), Some(0));
    assert_eq!(
        std::fs::read(&output).unwrap(),
        std::fs::read(&input).unwrap()
    );

    let exists = strata(&["exists", "blk", "nope"]);
    assert_eq!(code(&exists), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&exists.stdout),
        "blk\ttrue\nnope\tfalse\n"
    );
    let prefix = strata(&["prefix", "blk", "nope", "blk"]);
    assert_eq!(String::from_utf8_lossy(&prefix.stdout).trim(), "1");

    let missing = strata(&["get", "nope"]);
    assert_eq!(code(&missing), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound (1)"));

    let stats = strata(&["stats", "--json"]);
    assert_eq!(code(&stats), Some(0));
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("\"objects\":1"), "{text}");
    // Every field of the stats message, by its name there.
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "connections",
            "corrupt",
            "demotions",
            "evicted_bytes",
            "evictions",
            "expired_reservations",
            "get_bytes",
            "get_hits",
            "get_misses",
            "index_bytes",
            "key_bytes",
            "no_space",
            "objects",
            "pending",
            "promotions",
            "put_bytes",
            "puts",
            "removes",
            "tiers",
            "unmounted_objects",
        ]
    );
    assert!(json["tiers"][0]["capacity"].as_u64().unwrap() > 0, "{text}");
    assert_eq!(code(&strata(&["ping"])), Some(0));
    assert_eq!(code(&strata(&["rm", "blk"])), Some(0));
    assert_eq!(code(&strata(&["rm", "blk"])), Some(1));

    let bad = std::process::Command::new(cli_binary())
        .args(["--server", "not an address", "ping"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("InvalidArgument (7)"));
}

/// The server's count of requests of `op` so far.
fn requests_of(server: &ServerProcess, op: &str) -> u64 {
    let sample = format!("strata_requests_total{{op=\"{op}\"}} ");
    server
        .scrape()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&sample)
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .map_or(0, |v| v as u64)
}

/// A leased lookup answers with the matched keys' leases (protocol 2), so the load that
/// follows reads every block with no get_locations round trip, over shared memory and
/// over the TCP data plane; the bytes are the stored ones, and the match stops where the
/// prefix does. A QUIC client, which reads by key, keeps the lookup that returns no leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_lookup_brings_the_locations_so_a_load_is_one_round_trip() {
    let server = ServerProcess::start(&["--device-plugin", "off"]);
    let hasher = BlockHasher::new(0, BLOCK_TOKENS).with_extra_key("e2e-model");
    let tokens = prompt(1024, 7);
    let positions = groups(&hasher.block_hashes(&tokens));
    let values: Vec<Vec<u8>> = (0..8).map(|i| block_value(100 + i, BLOCK_BYTES)).collect();
    let writer = Client::connect(server.client_config()).await.unwrap();
    // The first 6 blocks are stored; the lookup asks for all 8.
    let items: Vec<(&[u8], &[u8])> = positions[..6]
        .iter()
        .zip(&values)
        .map(|(g, v)| (g[0].as_bytes(), v.as_slice()))
        .collect();
    for r in writer.batch_put_from(&items).await {
        r.unwrap();
    }
    for transport in [Transport::Shm, Transport::Tcp, Transport::Quic] {
        // A fresh client: nothing in its location cache.
        let config = ClientConfig {
            transport,
            ..server.client_config()
        };
        let reader = Client::connect(config).await.unwrap();
        assert_eq!(reader.transport().await.unwrap(), transport);
        let (located, listed) = (
            requests_of(&server, "prefix_locations"),
            requests_of(&server, "get_locations"),
        );
        let matched = reader.prefix_len_leased(&positions).await.unwrap();
        assert_eq!(matched.len, 6, "{transport:?}");
        assert!(matched.leased_until.is_some(), "{transport:?}");
        let keys: Vec<&str> = positions[..6].iter().map(|g| g[0].as_str()).collect();
        let mut bufs = vec![vec![0u8; BLOCK_BYTES]; 6];
        let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        for r in reader.batch_get_into(&keys, &mut slices).await {
            assert_eq!(r.unwrap(), BLOCK_BYTES, "{transport:?}");
        }
        assert_eq!(
            bufs[..],
            values[..6],
            "{transport:?}: other bytes than stored"
        );
        let direct = transport != Transport::Quic;
        assert_eq!(
            requests_of(&server, "prefix_locations") - located,
            u64::from(direct),
            "{transport:?}"
        );
        assert_eq!(
            requests_of(&server, "get_locations") - listed,
            0,
            "{transport:?}: the load asked for locations again"
        );
        reader.close().await;
    }
}

/// A request for the protocol 2 opcode stamped with version 1 (what a server of protocol 1
/// would be sent by mistake) is refused with a protocol error that names both versions;
/// every older opcode still travels as version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leased_lookup_is_refused_under_the_old_version() {
    let server = ServerProcess::start(&["--device-plugin", "off", "--ssd-path", "off"]);
    let raw = RawConnection::open(&server).await;
    raw.handshake().await;
    let request = strata_proto::msg::PrefixLenRequest {
        keys: strata_proto::msg::KeyList::new([&b"k"[..]]),
        group_ends: vec![1],
        lease: true,
    };
    let mut frame = wire::encode_request(Opcode::PrefixLocations, &request);
    assert_eq!(frame[0], 2);
    assert!(matches!(
        raw.send(&frame).await,
        Answer::Frame(Status::Ok, _)
    ));
    frame[0] = 1;
    match raw.send(&frame).await {
        Answer::Frame(Status::Error, header) => {
            let e: ErrorFrame = wire::decode(&header).expect("a valid error frame");
            assert_eq!(ErrorCode::from_u16(e.code), Some(ErrorCode::Protocol));
            assert!(
                e.message.contains("prefix_locations is protocol 2"),
                "{}",
                e.message
            );
        }
        _ => panic!("a version 1 prefix_locations must be refused"),
    }
    assert!(raw.ping_works().await, "the connection still serves");
    assert_eq!(wire::encode_request(Opcode::PrefixLen, &request)[0], 1);
}
