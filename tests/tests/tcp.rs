//! End to end over the TCP data plane: a real server process, clients forced to tcp.

use std::time::{Duration, Instant};

use strata_client::{Client, ClientConfig, ErrorCode, Transport};
use strata_proto::data;
use strata_proto::msg::PutWriteRequest;
use strata_proto::wire::{decode_error, encode_request, Opcode, ResponseHead, Status};
use strata_tests::{block_value, eventually, metric, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn over_tcp(server: &ServerProcess) -> ClientConfig {
    ClientConfig {
        transport: Transport::Tcp,
        ..server.client_config()
    }
}

async fn tcp_client(server: &ServerProcess) -> Client {
    let client = Client::connect(over_tcp(server))
        .await
        .expect("connect over tcp");
    assert_eq!(client.transport().await.unwrap(), Transport::Tcp);
    client
}

/// A server whose values sit in dram, which the data plane sends in place.
fn dram_server(extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--device-plugin", "off", "--ssd-path", "off"];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_every_size_round_trip_byte_identical() {
    let server = dram_server(&[]);
    let client = tcp_client(&server).await;
    let sizes = [1usize, 4 << 10, 1 << 20, 64 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        let key = format!("size-{len}");
        let value = block_value(i as u64, len);
        client.put_from(key.as_bytes(), &value).await.unwrap();
        let got = client.get(key.as_bytes()).await.unwrap();
        assert!(got[..] == value[..], "{len}-byte value differs after get");
        let mut buf = vec![0u8; len + 7];
        let n = client.get_into(key.as_bytes(), &mut buf).await.unwrap();
        assert_eq!(n, len);
        assert!(
            buf[..len] == value[..],
            "{len}-byte value differs after get_into"
        );
    }
    let stats = client.transport_stats();
    assert_eq!(stats.tcp_puts, sizes.len() as u64);
    assert_eq!(stats.tcp_gets, 2 * sizes.len() as u64);
    assert_eq!((stats.quic_puts, stats.quic_gets), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn striped_values_and_batches_land_whole() {
    let server = dram_server(&[]);
    // Slices of 64 KiB over 3 connections: a 1 MiB value goes out in 3 uneven stripes.
    let config = ClientConfig {
        data_connections: 3,
        stripe_size: 64 << 10,
        ..over_tcp(&server)
    };
    let client = Client::connect(config).await.unwrap();
    let items: Vec<(Vec<u8>, Vec<u8>)> = (0..24)
        .map(|i| {
            let len = [1 << 20, 100_003, 4096, 3][i % 4];
            (
                format!("batch-{i}").into_bytes(),
                block_value(100 + i as u64, len),
            )
        })
        .collect();
    for r in client.batch_put_from(&items).await {
        r.unwrap();
    }
    let keys: Vec<&[u8]> = items.iter().map(|(k, _)| &k[..]).collect();
    let mut bufs: Vec<Vec<u8>> = items.iter().map(|(_, v)| vec![0u8; v.len()]).collect();
    let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
    let results = client.batch_get_into(&keys, &mut slices).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), items[i].1.len());
        assert!(bufs[i] == items[i].1, "value {i} differs");
    }
    let stats = client.transport_stats();
    assert_eq!((stats.tcp_puts, stats.tcp_gets), (24, 24), "{stats:?}");
    // A value bigger than the buffer is refused, and nothing is written past it.
    let mut small = vec![0u8; 10];
    let e = client.get_into(keys[0], &mut small).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_on_device_and_ssd_tiers_come_through_staging() {
    // A small device tier and a small dram tier: later puts push earlier values down to
    // ssd, so the data plane serves from all three.
    let server = ServerProcess::start(&[
        "--device-capacity",
        "4MiB",
        "--dram-capacity",
        "4MiB",
        "--ssd-capacity",
        "64MiB",
    ]);
    let client = tcp_client(&server).await;
    let values: Vec<Vec<u8>> = (0..24).map(|i| block_value(500 + i, 1 << 20)).collect();
    for (i, v) in values.iter().enumerate() {
        client
            .put_from(format!("tiered-{i}").as_bytes(), v)
            .await
            .unwrap();
    }
    let stats = client.stats().await.unwrap();
    let on: Vec<u64> = stats.tiers.iter().map(|t| t.objects).collect();
    assert!(
        on.iter().filter(|&&n| n > 0).count() >= 2,
        "objects per tier: {on:?}"
    );
    for (i, v) in values.iter().enumerate() {
        let got = client.get(format!("tiered-{i}").as_bytes()).await.unwrap();
        assert!(got[..] == v[..], "value {i} differs");
    }
}

/// A value on ssd read over the data plane moves into dram on its second read, and the
/// client's next get reads it there: a lease on an ssd location is not kept for reuse,
/// since the read it served may have moved the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssd_value_read_twice_over_tcp_is_then_read_from_dram() {
    let server = ServerProcess::start(&[
        "--device-plugin",
        "off",
        "--dram-capacity",
        "8MiB",
        "--ssd-capacity",
        "64MiB",
    ]);
    let client = tcp_client(&server).await;
    let values: Vec<Vec<u8>> = (0..16).map(|i| block_value(700 + i, 1 << 20)).collect();
    for (i, v) in values.iter().enumerate() {
        client
            .put_from(format!("cold-{i}").as_bytes(), v)
            .await
            .unwrap();
    }
    // Maintenance demotes past the watermark in the background: wait until dram is back
    // under it, so the first value is on ssd before it is read.
    let settled = eventually(Duration::from_secs(10), || async {
        let dram = client.stats().await.unwrap().tiers[0].clone();
        dram.used as f64 <= dram.capacity as f64 * 0.9
    })
    .await;
    assert!(settled, "dram stayed past its watermark");
    let ssd_reads = || async {
        let stats = client.stats().await.unwrap();
        let ssd = stats.tiers.iter().find(|t| t.kind == "ssd").unwrap();
        (ssd.read_ops, stats.promotions)
    };
    let mut seen = Vec::new();
    for _ in 0..3 {
        let got = client.get(b"cold-0").await.unwrap();
        assert!(got[..] == values[0][..], "the value differs");
        seen.push(ssd_reads().await);
    }
    let (reads, promotions): (Vec<u64>, Vec<u64>) = seen.into_iter().unzip();
    assert_eq!(promotions, [0, 1, 1], "moved up on its second read");
    assert!(
        reads[1] > reads[0] && reads[2] == reads[1],
        "the third read came off the disk again: ssd reads after each get {reads:?}"
    );
}

/// The data-plane pool opens connections only as transfers overlap: gets one after another
/// reuse the connection opened at connect (a pool that dealt transfers round the slots
/// opened all of them), concurrent gets take idle ones, never more than
/// `data_connections`, and every value arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_pool_opens_connections_only_as_transfers_overlap() {
    let server = dram_server(&[]);
    let config = ClientConfig {
        data_connections: 6,
        ..over_tcp(&server)
    };
    let client = Client::connect(config).await.unwrap();
    let accepted = || {
        let scrape = server.scrape();
        metric(
            &scrape,
            "strata_connections_accepted_total{transport=\"tcp\"}",
        )
        .expect("the tcp connection count in the scrape")
    };
    let value = block_value(900, 1 << 20);
    client.put_from(b"pooled", &value).await.unwrap();
    for _ in 0..20 {
        let got = client.get(b"pooled").await.unwrap();
        assert!(got[..] == value[..], "the value differs");
    }
    assert_eq!(
        accepted(),
        1.0,
        "one transfer at a time needs one connection"
    );

    let (client, value) = (std::sync::Arc::new(client), std::sync::Arc::new(value));
    let readers: Vec<_> = (0..12)
        .map(|_| {
            let (client, value) = (client.clone(), value.clone());
            tokio::spawn(async move {
                for _ in 0..5 {
                    let got = client.get(b"pooled").await.unwrap();
                    assert!(got[..] == value[..], "the value differs");
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    let opened = accepted();
    assert!(
        (1.0..=6.0).contains(&opened),
        "{opened} data connections for a pool of 6"
    );
}

/// The data-plane secret of `client`'s session (as its handshake received it).
async fn session_secret(client: &Client) -> Vec<u8> {
    let info = client.server_info().await.unwrap();
    info.data_plane
        .expect("the server offers a data plane")
        .secret
}

/// Opens a raw data connection for `client`'s session, proving it with `secret`.
async fn raw_data_connection(client: &Client, secret: &[u8]) -> (TcpStream, Result<(), String>) {
    let info = client.server_info().await.unwrap();
    let offer = info.data_plane.expect("the server offers a data plane");
    let mut conn = TcpStream::connect(("127.0.0.1", offer.port)).await.unwrap();
    let mut hello = [0u8; data::HELLO_LEN];
    conn.read_exact(&mut hello).await.unwrap();
    let nonce = data::decode_hello(&hello).unwrap();
    let proof = data::session_proof(secret, &nonce, offer.session);
    conn.write_all(&data::encode_claim(offer.session, &proof))
        .await
        .unwrap();
    let answer = read_answer(&mut conn).await;
    (conn, answer)
}

async fn read_answer(conn: &mut TcpStream) -> Result<(), String> {
    let mut head = [0u8; 5];
    conn.read_exact(&mut head)
        .await
        .map_err(|e| e.to_string())?;
    let head = ResponseHead::decode(head).unwrap();
    let mut header = vec![0u8; head.header_len as usize];
    conn.read_exact(&mut header).await.unwrap();
    match head.status {
        Status::Ok => Ok(()),
        Status::Error => Err(decode_error(&header).to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_proof_or_lease_is_refused() {
    let server = dram_server(&[]);
    let client = tcp_client(&server).await;
    let secret = session_secret(&client).await;

    let (_, genuine) = raw_data_connection(&client, &secret).await;
    assert_eq!(genuine, Ok(()));
    let mut forged = secret.clone();
    forged[0] ^= 1;
    let (mut conn, refused) = raw_data_connection(&client, &forged).await;
    let why = refused.unwrap_err();
    assert!(why.contains("wrong proof"), "{why}");
    let mut rest = Vec::new();
    let n = conn.read_to_end(&mut rest).await.unwrap_or(0);
    assert_eq!(n, 0, "the server closes a refused connection");

    // A lease whose location was altered does not match its grant.
    client
        .put_from(b"leased", &block_value(1, 8192))
        .await
        .unwrap();
    let mut lease = client
        .get_locations(&[b"leased"])
        .await
        .pop()
        .unwrap()
        .unwrap();
    lease.location.offset += 4096;
    lease.location.len -= 4096;
    let mut buf = vec![0u8; 8192];
    let e = client.read_leased(&lease, &mut buf).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized, "{e}");
    assert!(
        buf.iter().all(|&b| b == 0),
        "a refused read wrote into the buffer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_after_its_lease_ended_is_refused() {
    let server = dram_server(&["--default-kv-lease-ttl", "300"]);
    let client = tcp_client(&server).await;
    let value = block_value(2, 64 << 10);
    client.put_from(b"short-lease", &value).await.unwrap();
    let lease = client
        .get_locations(&[b"short-lease"])
        .await
        .pop()
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; value.len()];
    assert_eq!(
        client.read_leased(&lease, &mut buf).await.unwrap(),
        value.len()
    );
    assert!(buf == value);
    // The server refuses the lease once it ends (300 ms): poll until it does, bounded.
    let refused = eventually(Duration::from_secs(5), || {
        let (client, lease) = (client.clone(), lease.clone());
        async move {
            let mut buf = vec![0u8; lease.location.len as usize];
            match client.read_leased(&lease, &mut buf).await {
                Ok(_) => false,
                Err(e) => {
                    assert_eq!(e.code(), ErrorCode::LeaseExpired, "{e}");
                    assert!(buf.iter().all(|&b| b == 0), "a refused read wrote bytes");
                    true
                }
            }
        }
    })
    .await;
    assert!(refused, "a lease past its end was still honoured");
    assert!(
        Instant::now() >= lease.valid_until,
        "refused before the lease ended"
    );
    // A plain get takes a fresh lease and succeeds.
    assert!(client.get(b"short-lease").await.unwrap()[..] == value[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_connection_killed_mid_put_leaves_nothing_behind() {
    let server = dram_server(&[]);
    let client = tcp_client(&server).await;
    let used = |stats: &strata_client::ServerStats| stats.tiers.iter().map(|t| t.used).sum::<u64>();
    let before = used(&client.stats().await.unwrap());
    let len = 8u64 << 20;
    let reservation = client.put_start(b"torn", len).await.unwrap();
    assert!(used(&client.stats().await.unwrap()) >= before + len);

    let secret = session_secret(&client).await;
    let (mut conn, admitted) = raw_data_connection(&client, &secret).await;
    admitted.unwrap();
    let header = PutWriteRequest {
        key: b"torn".to_vec(),
        writer: reservation.writer,
        offset: 0,
        len,
    };
    conn.write_all(&encode_request(Opcode::DataPut, &header))
        .await
        .unwrap();
    conn.write_all(&block_value(3, 1 << 20)).await.unwrap();
    drop(conn); // mid-put

    let reclaimed = eventually(Duration::from_secs(10), || async {
        used(&client.stats().await.unwrap()) == before
    })
    .await;
    assert!(reclaimed, "the torn put's space was not reclaimed");
    assert!(!client.exists(b"torn").await.unwrap());
    let e = client
        .put_end(b"torn", reservation.writer)
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), ErrorCode::NotFound | ErrorCode::LeaseExpired),
        "{e}"
    );
    // The server goes on serving the data plane.
    let value = block_value(4, 2 << 20);
    client.put_from(b"after", &value).await.unwrap();
    assert!(client.get(b"after").await.unwrap()[..] == value[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_quic_without_a_data_plane_and_tcp_refuses() {
    let server = ServerProcess::start(&[
        "--data-plane",
        "off",
        "--shm-socket",
        "off",
        "--device-plugin",
        "off",
    ]);
    let started = Instant::now();
    let e = Client::connect(over_tcp(&server))
        .await
        .err()
        .expect("tcp refused");
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let auto = Client::connect(server.client_config()).await.unwrap();
    assert_eq!(auto.transport().await.unwrap(), Transport::Quic);
    auto.put_from(b"k", b"v").await.unwrap();
    assert_eq!(&auto.get(b"k").await.unwrap()[..], b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_speaks_tls_when_asked() {
    let server = dram_server(&["--data-tls", "--dram-capacity", "64MiB"]);
    let client = tcp_client(&server).await;
    let info = client.server_info().await.unwrap();
    assert!(info.data_plane.as_ref().unwrap().tls);
    let values: Vec<(Vec<u8>, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("tls-{i}").into_bytes(),
                block_value(900 + i, 3 << 20),
            )
        })
        .collect();
    for r in client.batch_put_from(&values).await {
        r.unwrap();
    }
    for (k, v) in &values {
        assert!(client.get(k).await.unwrap()[..] == v[..]);
    }
    // Many puts in a row, the store evicting as it goes: an answer TLS held back unflushed
    // once stalled this loop.
    let value = block_value(901, 4 << 20);
    for i in 0..100 {
        let key = format!("tls-loop-{i}");
        client.put_from(key.as_bytes(), &value).await.unwrap();
    }
    assert!(client.get(b"tls-loop-99").await.unwrap()[..] == value[..]);
    // A peer that skips TLS gets no hello, only a failed handshake.
    let port = info.data_plane.unwrap().port;
    let mut plain = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    plain.write_all(&[0u8; data::CLAIM_LEN]).await.unwrap();
    let mut hello = [0u8; data::HELLO_LEN];
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read_exact(&mut hello)).await;
    assert!(
        !matches!(read, Ok(Ok(_))),
        "a plain-TCP peer got a hello from a TLS data plane"
    );
}
