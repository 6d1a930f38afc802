//! End to end, the shared-memory transport: a real server process, clients on the same
//! host that map its dram segments, and client processes that crash or close.

use std::io::{BufRead, BufReader};
use std::mem::MaybeUninit;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_client::{Client, ClientConfig, ErrorCode, Transport};
use strata_tests::{block_value, eventually, shm_client_binary, ServerProcess};

const MIB: usize = 1 << 20;

/// These tests are about the dram tier's transport: no device tier above it (the device
/// transport has its own tests in device.rs).
const SHM_ONLY: &[&str] = &["--device-plugin", "off"];

fn with_transport(server: &ServerProcess, transport: Transport) -> ClientConfig {
    ClientConfig {
        transport,
        ..server.client_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_clients_move_bytes_through_shared_memory_and_see_quic_writes() {
    let server = ServerProcess::start(SHM_ONLY);
    let shm = Client::connect(server.client_config()).await.unwrap();
    assert_eq!(
        shm.transport().await.unwrap(),
        Transport::Shm,
        "auto picks shm"
    );
    let quic = Client::connect(with_transport(&server, Transport::Quic))
        .await
        .unwrap();
    assert_eq!(quic.transport().await.unwrap(), Transport::Quic);
    // The background prefault ends; without shared memory there is nothing to wait for.
    for c in [&shm, &quic] {
        tokio::time::timeout(Duration::from_secs(60), c.shm_prefaulted())
            .await
            .expect("shm_prefaulted never returned")
            .unwrap();
    }

    // Single values of several sizes, through shared memory both ways.
    for (i, len) in [1, 4095, 4 * MIB, 16 * MIB + 3].into_iter().enumerate() {
        let key = format!("single-{i}");
        let value = block_value(i as u64, len);
        shm.put_from(key.as_bytes(), &value).await.unwrap();
        let mut buf = vec![0u8; len + 10];
        let n = shm.get_into(key.as_bytes(), &mut buf).await.unwrap();
        assert_eq!(n, len);
        assert!(buf[..n] == value[..], "value {key} came back different");
        assert!(shm.get(key.as_bytes()).await.unwrap() == value[..]);
        // The QUIC client reads what the shm client wrote (the server recorded the
        // checksum the shm writer computed, and the QUIC client verifies it).
        assert!(quic.get(key.as_bytes()).await.unwrap() == value[..]);
    }

    // Batches: one reservation and one commit round trip, parallel copies.
    let values: Vec<Vec<u8>> = (0..32).map(|i| block_value(100 + i, MIB)).collect();
    let keys: Vec<String> = (0..32).map(|i| format!("batch-{i}")).collect();
    let items: Vec<(&[u8], &[u8])> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| (k.as_bytes(), v.as_slice()))
        .collect();
    for r in shm.batch_put_from(&items).await {
        r.unwrap();
    }
    // Writing them again is success (same key, same bytes) and reserves nothing.
    for r in shm.batch_put_from(&items[..4]).await {
        r.unwrap();
    }
    let mut bufs = vec![vec![0u8; MIB]; 33];
    let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let mut batch_keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    batch_keys.push("missing");
    let results = shm.batch_get_into(&batch_keys, &mut slices).await;
    for (i, r) in results.iter().enumerate().take(32) {
        assert_eq!(*r.as_ref().unwrap(), MIB);
        assert!(bufs[i] == values[i], "batch value {i} came back different");
    }
    assert_eq!(
        results[32].as_ref().unwrap_err().code(),
        ErrorCode::NotFound
    );

    // The shm client reads what the QUIC client wrote.
    let from_quic = block_value(7, 3 * MIB);
    quic.put_from(b"from-quic", &from_quic).await.unwrap();
    assert!(shm.get(b"from-quic").await.unwrap() == from_quic[..]);

    let stats = shm.transport_stats();
    assert_eq!(stats.shm_puts, 4 + 32, "{stats:?}");
    assert_eq!(stats.shm_gets, 4 * 2 + 32 + 1, "{stats:?}");
    assert_eq!((stats.quic_gets, stats.quic_puts), (0, 0), "{stats:?}");
    assert_eq!(
        stats.shm_get_bytes,
        2 * (4 * MIB + 16 * MIB + 3 + 4096) as u64 + 32 * MIB as u64 + 3 * MIB as u64
    );
    let quic_stats = quic.transport_stats();
    assert_eq!((quic_stats.shm_gets, quic_stats.shm_puts), (0, 0));
    assert_eq!(quic_stats.quic_gets, 4);

    // Nothing is left reserved, and the server counted every commit.
    let server_stats = quic.stats().await.unwrap();
    assert_eq!(server_stats.pending, 0);
    assert_eq!(server_stats.objects, 4 + 32 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_lease_ended_never_returns_bytes() {
    // Short leases and a small tier, so leases lapse and eviction reuses space quickly.
    let server = ServerProcess::start(&[
        "--default-kv-lease-ttl",
        "400",
        "--dram-capacity",
        "16MiB",
        "--device-plugin",
        "off",
    ]);
    let config = ClientConfig {
        lease_margin: Duration::from_millis(100),
        ..with_transport(&server, Transport::Shm)
    };
    let reader = Client::connect(config).await.unwrap();
    let writer = Client::connect(with_transport(&server, Transport::Shm))
        .await
        .unwrap();
    let original = block_value(1, 2 * MIB);
    writer.put_from(b"victim", &original).await.unwrap();

    // While the lease holds, filling the tier cannot evict the leased object.
    let lease = reader.get_locations(&[b"victim"]).await.remove(0).unwrap();
    for i in 0..8 {
        let key = format!("filler-{i}");
        writer
            .put_from(key.as_bytes(), &block_value(10 + i, 2 * MIB))
            .await
            .unwrap();
    }
    let mut buf = vec![0u8; 2 * MIB];
    if Instant::now() + Duration::from_millis(100) < lease.valid_until {
        let n = reader.read_leased(&lease, &mut buf).await.unwrap();
        assert!(
            buf[..n] == original[..],
            "a leased object changed under its lease"
        );
    }

    // After the lease: remove it (an unforced remove succeeds once the server's lease
    // has ended, a little after the client's conservative end) and overwrite the space.
    let w = &writer;
    let removed = eventually(Duration::from_secs(5), || async move {
        w.remove(b"victim", false).await.is_ok()
    })
    .await;
    assert!(removed, "the lease never ended on the server");
    assert!(Instant::now() >= lease.valid_until);
    for i in 0..8 {
        let key = format!("overwrite-{i}");
        writer
            .put_from(key.as_bytes(), &block_value(50 + i, 2 * MIB))
            .await
            .unwrap();
    }
    // The stale lease is refused, never read as if it held.
    let stale = reader.read_leased(&lease, &mut buf).await.unwrap_err();
    assert_eq!(stale.code(), ErrorCode::LeaseExpired);
    // A fresh read does not find the removed value either.
    let gone = reader.get_into(b"victim", &mut buf).await.unwrap_err();
    assert_eq!(gone.code(), ErrorCode::NotFound);
    assert_eq!(reader.transport_stats().lease_expired, 1);

    // Evicted rather than removed: a value whose lease lapsed is pushed out by others,
    // and a later get says NotFound rather than handing back another value's bytes.
    let evictee = block_value(2, 2 * MIB);
    writer.put_from(b"evictee", &evictee).await.unwrap();
    writer.put_from(b"sentinel", b"s").await.unwrap();
    // Leased in one request, the sentinel's lease ends no earlier than the evictee's:
    // once an unforced remove of the sentinel succeeds, the evictee is evictable.
    let mut leases = reader.get_locations(&[&b"evictee"[..], b"sentinel"]).await;
    leases.truncate(1);
    let lease = leases.remove(0).unwrap();
    let ended = eventually(Duration::from_secs(5), || async move {
        w.remove(b"sentinel", false).await.is_ok()
    })
    .await;
    assert!(ended, "the lease never ended on the server");
    for i in 0..16 {
        let key = format!("pressure-{i}");
        writer
            .put_from(key.as_bytes(), &block_value(200 + i, 2 * MIB))
            .await
            .unwrap();
    }
    let stats = writer.stats().await.unwrap();
    assert!(stats.evictions > 0, "the tier never evicted: {stats:?}");
    match reader.get_into(b"evictee", &mut buf).await {
        Ok(n) => assert!(buf[..n] == evictee[..], "returned another value's bytes"),
        Err(e) => assert_eq!(e.code(), ErrorCode::NotFound),
    }
    let stale = reader.read_leased(&lease, &mut buf).await.unwrap_err();
    assert_eq!(stale.code(), ErrorCode::LeaseExpired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_writers_reservation_is_reclaimed() {
    let server = ServerProcess::start(&["--put-timeout", "1500", "--device-plugin", "off"]);
    let mut child = Command::new(shm_client_binary())
        .args([
            &server.addr.to_string(),
            server.cert.to_str().unwrap(),
            "hold",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the writer");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(
        line.as_deref(),
        Ok("reserved"),
        "the writer did not reserve"
    );

    let observer = Client::connect(server.client_config()).await.unwrap();
    let before = observer.stats().await.unwrap();
    assert_eq!(before.pending, 1);
    let committed_bytes = before.tiers[0].used;

    child.kill().expect("killing the writer");
    let _ = child.wait();

    // The reservation ends at its deadline (or when the server notices the connection is
    // gone), and its space returns.
    let o = &observer;
    let reclaimed = eventually(Duration::from_secs(10), || async move {
        let s = o.stats().await.unwrap();
        s.pending == 0 && s.tiers[0].used < committed_bytes
    })
    .await;
    assert!(
        reclaimed,
        "the crashed writer's reservation was not reclaimed"
    );
    let after = observer.stats().await.unwrap();
    assert_eq!(
        after.tiers[0].used,
        (1 << 20),
        "only the committed value holds space"
    );
    assert!(
        !observer.exists(b"torn").await.unwrap(),
        "a torn write is visible"
    );
    assert!(observer.get(b"committed").await.unwrap() == block_value(1, 1 << 20)[..]);

    // The key is free again for another writer.
    let value = block_value(3, 8 << 20);
    observer.put_from(b"torn", &value).await.unwrap();
    assert!(observer.get(b"torn").await.unwrap() == value[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_client_unmaps_the_segments() {
    let server = ServerProcess::start(SHM_ONLY);
    let out = Command::new(shm_client_binary())
        .args([
            &server.addr.to_string(),
            server.cert.to_str().unwrap(),
            "unmap",
        ])
        .output()
        .expect("running the client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<&str> = text.lines().collect();
    assert_eq!(counts.len(), 2, "{text}");
    assert_ne!(counts[0], "mapped 0", "nothing was mapped while connected");
    assert_eq!(counts[1], "mapped 0", "segments still mapped after close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shared_memory_auto_uses_the_data_plane_and_shm_refuses() {
    let server = ServerProcess::start(&["--shm-socket", "off", "--device-plugin", "off"]);
    let auto = Client::connect(server.client_config()).await.unwrap();
    assert_eq!(auto.transport().await.unwrap(), Transport::Tcp);
    auto.put_from(b"k", b"v").await.unwrap();
    assert_eq!(&auto.get(b"k").await.unwrap()[..], b"v");
    let forced = Client::connect(with_transport(&server, Transport::Shm)).await;
    let e = forced
        .err()
        .expect("shm cannot be forced on a server without it");
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert!(e.message().contains("does not share"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_follows_the_auth_token_and_refuses_bad_tickets() {
    let server = ServerProcess::start(&["--auth-token", "s3cret", "--device-plugin", "off"]);
    let config = ClientConfig {
        auth_token: Some("s3cret".into()),
        ..with_transport(&server, Transport::Shm)
    };
    let client = Client::connect(config).await.unwrap();
    client.put_from(b"k", &block_value(5, MIB)).await.unwrap();
    assert_eq!(client.transport_stats().shm_puts, 1);

    // The socket is the server user's only, and hands nothing out without a ticket a
    // session was given.
    let socket = server.data_dir.join("shm.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let reply = ask_with_ticket(&socket, &[0u8; 16]);
    assert!(reply.starts_with("refused:"), "{reply}");
    assert!(reply.contains("ticket"), "{reply}");
    let reply = ask_with_ticket(&socket, b"short");
    assert!(reply.starts_with("refused:"), "{reply}");
    // The server still serves.
    assert!(client.get(b"k").await.unwrap() == block_value(5, MIB)[..]);
}

/// Presents `ticket` on the descriptor socket; returns what came back (descriptors are
/// closed at once).
fn ask_with_ticket(socket: &std::path::Path, ticket: &[u8]) -> String {
    use rustix::net::{self, AddressFamily, RecvAncillaryBuffer, RecvFlags, SocketType};
    let fd = net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    net::sockopt::set_socket_timeout(
        &fd,
        net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    net::connect(&fd, &net::SocketAddrUnix::new(socket).unwrap()).unwrap();
    net::send(&fd, ticket, net::SendFlags::NOSIGNAL).unwrap();
    let mut packet = [0u8; 512];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(64))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = net::recvmsg(
        &fd,
        &mut [std::io::IoSliceMut::new(&mut packet)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .unwrap();
    let descriptors = control.drain().count();
    match strata_proto::shm::decode_reply(&packet[..got.bytes]).unwrap() {
        strata_proto::shm::Reply::Refused(why) => format!("refused: {why}"),
        strata_proto::shm::Reply::Descriptors { count } => {
            format!("{count} descriptors ({descriptors} messages)")
        }
    }
}

/// Reads one packet from a descriptor-socket peer (bounded by `within`): the refusal's
/// text, or what else came.
fn next_reply(fd: &std::os::fd::OwnedFd, within: Duration) -> String {
    use rustix::net::{self, RecvFlags};
    net::sockopt::set_socket_timeout(fd, net::sockopt::Timeout::Recv, Some(within)).unwrap();
    let mut packet = [0u8; 512];
    match net::recv(fd, &mut packet, RecvFlags::empty()) {
        Ok((_, 0)) => "closed".into(),
        Ok((_, n)) => match strata_proto::shm::decode_reply(&packet[..n]).unwrap() {
            strata_proto::shm::Reply::Refused(why) => format!("refused: {why}"),
            other => format!("{other:?}"),
        },
        Err(e) => format!("error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_shm_peers_hold_no_threads_and_are_cut_off() {
    use rustix::net::{self, AddressFamily, SocketType};
    let server = ServerProcess::start(&["--device-plugin", "off", "--ssd-path", "off"]);
    let client = Client::connect(with_transport(&server, Transport::Quic))
        .await
        .unwrap();
    client.put_from(b"k", &block_value(7, MIB)).await.unwrap();
    let threads_before = server.threads();
    let socket = net::SocketAddrUnix::new(server.data_dir.join("shm.sock")).unwrap();
    // 300 local peers that connect and never send a ticket.
    let silent: Vec<_> = (0..300)
        .map(|_| {
            let fd = net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
            net::connect(&fd, &socket).unwrap();
            fd
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let threads_during = server.threads();
    assert!(
        threads_during <= threads_before + 4,
        "{threads_before} threads before, {threads_during} with 300 silent peers"
    );
    // The server goes on serving meanwhile.
    assert!(client.get(b"k").await.unwrap() == block_value(7, MIB)[..]);
    // Past the exchanges it runs at once, a peer is refused at once...
    let last = next_reply(silent.last().unwrap(), Duration::from_secs(1));
    assert!(last.contains("hand-offs are in progress"), "{last}");
    // ...and a silent one in the running exchanges is told it timed out, then closed.
    let first = next_reply(&silent[0], Duration::from_secs(5));
    assert!(first.contains("timed out"), "{first}");
    assert_eq!(next_reply(&silent[0], Duration::from_secs(1)), "closed");
    // Once they are gone, a same-host client still gets the segments.
    drop(silent);
    let shm = Client::connect(with_transport(&server, Transport::Shm))
        .await
        .unwrap();
    assert!(shm.get(b"k").await.unwrap() == block_value(7, MIB)[..]);
    assert_eq!(shm.transport_stats().shm_gets, 1);
    // Every refusal was counted: the ones past the limit and the ones that timed out.
    let refused = strata_tests::metric(
        &server.scrape(),
        "strata_handoffs_refused_total{transport=\"shm\"}",
    );
    assert!(refused.unwrap() >= 236.0, "{refused:?}");
}
