//! Abuse refused, the server (and the command line) up: what an outside tester found and
//! what must stay true (docs/security.md lists each with its test).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_client::Client;
use strata_tests::{cli_binary, ServerProcess};

fn cli(server: &ServerProcess) -> Command {
    let mut command = Command::new(cli_binary());
    command
        .arg("--server")
        .arg(server.addr.to_string())
        .arg("--ca")
        .arg(&server.cert);
    command
}

/// A server of dram alone and a client of it over the TCP data plane.
async fn tcp_client_of_a_dram_server() -> (ServerProcess, Client) {
    let server = ServerProcess::start(&["--device-plugin", "off", "--ssd-path", "off"]);
    let config = strata_client::ClientConfig {
        transport: strata_client::Transport::Tcp,
        ..server.client_config()
    };
    let client = Client::connect(config).await.unwrap();
    (server, client)
}

/// The data plane the server offered `client`'s session.
async fn data_plane_offer(client: &Client) -> strata_proto::msg::DataPlaneOffer {
    let info = client.server_info().await.unwrap();
    info.data_plane.expect("a data plane")
}

/// A new connection to the data plane at `port`, after the server's hello; its nonce.
async fn open_data_connection(
    port: u16,
) -> (tokio::net::TcpStream, [u8; strata_proto::data::NONCE_LEN]) {
    use tokio::io::AsyncReadExt;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut hello = [0u8; strata_proto::data::HELLO_LEN];
    conn.read_exact(&mut hello).await.unwrap();
    (conn, strata_proto::data::decode_hello(&hello).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_from_standard_input_past_the_limit_is_refused_as_it_arrives() {
    let server = ServerProcess::start(&[
        "--device-plugin",
        "off",
        "--ssd-path",
        "off",
        "--dram-capacity",
        "64MiB",
    ]);
    let limit = Client::connect(server.client_config())
        .await
        .unwrap()
        .server_info()
        .await
        .unwrap()
        .limits
        .max_value_len;
    let mut child = cli(&server)
        .args(["put", "big", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // An endless stream of zeros, up to 1 GiB: the CLI must stop reading past the limit.
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        while sent < 1 << 30 {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "strata put - did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    let sent = feeder.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("TooLarge") && err.contains("standard input"),
        "{err}"
    );
    // What it took in: the limit, one more chunk, and what sat in the pipe.
    assert!(
        sent <= limit + (8 << 20),
        "read {sent} bytes past a limit of {limit}"
    );
    let client = Client::connect(server.client_config()).await.unwrap();
    assert!(!client.exists(b"big").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_into_a_closed_pipe_ends_quietly() {
    let server = ServerProcess::start(&["--device-plugin", "off", "--ssd-path", "off"]);
    let client = Client::connect(server.client_config()).await.unwrap();
    client.put(b"k", vec![7u8; 1 << 20].into()).await.unwrap();
    for args in [vec!["stats"], vec!["get", "k"], vec!["exists", "k"]] {
        // A pipe whose reader is gone before the CLI writes a byte: every write fails
        // with EPIPE.
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        drop(reader);
        let output = cli(&server)
            .args(&args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!err.contains("panicked"), "strata {args:?}: {err}");
        assert_eq!(output.status.code(), Some(0), "strata {args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_connection_that_never_claims_a_session_is_closed() {
    use tokio::io::AsyncReadExt;
    let (_server, client) = tcp_client_of_a_dram_server().await;
    let port = data_plane_offer(&client).await.port;
    let opened = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // The server says hello, then waits for a claim that never comes, then hangs up.
    let mut everything = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read_to_end(&mut everything))
        .await
        .expect("the server kept a silent data connection open");
    assert!(read.is_ok() || everything.len() >= strata_proto::data::HELLO_LEN);
    assert!(
        strata_proto::data::decode_hello(everything.first_chunk().unwrap()).is_ok(),
        "the connection opened with the server's hello"
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(4),
        "closed before its 5 s"
    );
    // And the session the client holds still moves bytes.
    client.put_from(b"after", &[3u8; 1 << 20]).await.unwrap();
    assert_eq!(client.get(b"after").await.unwrap().len(), 1 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_connection_limit_the_server_refuses_clearly_and_serves_the_rest() {
    let server = ServerProcess::start(&["--max-connections", "3", "--device-plugin", "off"]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::connect(server.client_config()).await.unwrap());
    }
    let refused = Client::connect(server.client_config())
        .await
        .err()
        .expect("a 4th connection");
    assert_eq!(refused.code(), strata_client::ErrorCode::Busy, "{refused}");
    assert!(refused.message().contains("at most 3"), "{refused}");
    // The ones it holds are served meanwhile.
    held[0].put(b"k", vec![1u8; 4096].into()).await.unwrap();
    assert_eq!(held[2].get(b"k").await.unwrap().len(), 4096);
    // Churn: as connections close, new ones get in, and the count never drifts.
    for round in 0..20 {
        held.pop().unwrap().close().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let next = loop {
            match Client::connect(server.client_config()).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "round {round}: no room after a close: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        held.push(next);
    }
    let again = Client::connect(server.client_config())
        .await
        .err()
        .expect("a 4th connection");
    assert_eq!(again.code(), strata_client::ErrorCode::Busy, "{again}");
    let text = server.scrape();
    assert!(
        strata_tests::metric(
            &text,
            "strata_connections_refused_total{transport=\"quic\"}"
        )
        .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_claim_replayed_on_another_connection_is_refused() {
    use strata_proto::data;
    use strata_proto::wire::{decode_error, ResponseHead, Status};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, client) = tcp_client_of_a_dram_server().await;
    let offer = data_plane_offer(&client).await;
    let open = || open_data_connection(offer.port);
    let answer = |mut conn: tokio::net::TcpStream| async move {
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
    };
    // A genuine claim on its own connection opens it...
    let (mut first, nonce) = open().await;
    let claim = data::encode_claim(
        offer.session,
        &data::session_proof(&offer.secret, &nonce, offer.session),
    );
    first.write_all(&claim).await.unwrap();
    assert_eq!(answer(first).await, Ok(()));
    // ...and the same bytes, seen on the wire and replayed on a new connection (a fresh
    // nonce), open nothing.
    let (mut second, _) = open().await;
    second.write_all(&claim).await.unwrap();
    let refused = answer(second).await.unwrap_err();
    assert!(refused.contains("wrong proof"), "{refused}");
    // The client's own session goes on.
    client.put_from(b"still", &[9u8; 8192]).await.unwrap();
    assert_eq!(client.get(b"still").await.unwrap().len(), 8192);
    let refused = strata_tests::metric(
        &server.scrape(),
        "strata_handoffs_refused_total{transport=\"tcp\"}",
    );
    assert_eq!(refused, Some(1.0));
}

/// Opens a data connection for `client`'s session and proves it; the connection, ready
/// for request frames.
async fn proven_data_connection(client: &Client) -> tokio::net::TcpStream {
    use strata_proto::data;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let offer = data_plane_offer(client).await;
    let (mut conn, nonce) = open_data_connection(offer.port).await;
    let proof = data::session_proof(&offer.secret, &nonce, offer.session);
    conn.write_all(&data::encode_claim(offer.session, &proof))
        .await
        .unwrap();
    let mut ok = [0u8; 5];
    conn.read_exact(&mut ok).await.unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_truncated_data_frames_get_an_error_and_the_server_serves_on() {
    use strata_proto::wire::{decode_error, Opcode, RequestHead, ResponseHead, Status};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_server, client) = tcp_client_of_a_dram_server().await;
    // A header announced past the limit: refused before a byte of it is read.
    let mut conn = proven_data_connection(&client).await;
    let head = RequestHead::new(Opcode::DataGet, strata_proto::limits::MAX_HEADER_LEN + 1);
    conn.write_all(&head.encode()).await.unwrap();
    let mut answer = [0u8; 5];
    conn.read_exact(&mut answer).await.unwrap();
    let answer = ResponseHead::decode(answer).unwrap();
    assert_eq!(answer.status, Status::Error);
    let mut header = vec![0u8; answer.header_len as usize];
    conn.read_exact(&mut header).await.unwrap();
    let e = decode_error(&header);
    assert_eq!(e.code(), strata_client::ErrorCode::TooLarge, "{e}");
    // A header cut short by the peer's close: nothing to answer, nothing kept.
    let mut conn = proven_data_connection(&client).await;
    let head = RequestHead::new(Opcode::DataGet, 4096);
    conn.write_all(&head.encode()).await.unwrap();
    conn.write_all(&[0u8; 100]).await.unwrap();
    drop(conn);
    // Garbage where a head should be: an error frame, not a crash.
    let mut conn = proven_data_connection(&client).await;
    conn.write_all(&[0xA5u8; 64]).await.unwrap();
    let mut answer = [0u8; 5];
    let got = tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut answer)).await;
    assert!(got.is_ok(), "no answer to garbage");
    // The server goes on serving, over the data plane too.
    client.put_from(b"fine", &[4u8; 1 << 20]).await.unwrap();
    assert_eq!(client.get(b"fine").await.unwrap().len(), 1 << 20);
    assert_eq!(client.stats().await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_connections_cost_bounded_memory_and_are_given_back() {
    let server = ServerProcess::start(&["--device-plugin", "off", "--ssd-path", "off"]);
    let quic = strata_client::ClientConfig {
        transport: strata_client::Transport::Quic,
        ..server.client_config()
    };
    let probe = Client::connect(quic.clone()).await.unwrap();
    probe.ping().await.unwrap();
    let before = server.rss();
    let mut clients = Vec::new();
    for _ in 0..200 {
        let c = Client::connect(quic.clone()).await.unwrap();
        c.ping().await.unwrap();
        clients.push(c);
    }
    let during = server.rss();
    let per_connection = during.saturating_sub(before) / 200;
    eprintln!(
        "RSS {} MiB -> {} MiB with 200 more connections ({per_connection} bytes each)",
        before >> 20,
        during >> 20
    );
    assert!(
        per_connection < 256 << 10,
        "{per_connection} bytes per connection"
    );
    assert_eq!(probe.stats().await.unwrap().connections, 201);
    for c in clients {
        c.close().await;
    }
    let closed = strata_tests::eventually(Duration::from_secs(10), || async {
        probe.stats().await.unwrap().connections == 1
    })
    .await;
    assert!(
        closed,
        "connections still counted: {}",
        probe.stats().await.unwrap().connections
    );
}
