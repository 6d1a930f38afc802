//! `strata-bench quic`: the QUIC service end to end (a server and its clients in this
//! process, on loopback), next to a raw quinn stream on the same transport settings.
//!
//! The raw stream is the ceiling: a server that answers each request stream with `size`
//! bytes from memory it already holds (or swallows `size` bytes), with the same TLS,
//! windows and stream limits as strata's service. Whatever strata adds (framing, index,
//! the copy out of the store, checksums) shows as the gap to it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_client::{Client, ClientConfig};
use strata_server::net::{tls, TlsSource};

use crate::harness::{loopback_tls, runtime, serve, timed};
use crate::report::{Record, Report};

/// What to run.
pub struct QuicParams {
    pub seconds: f64,
    pub sizes: Vec<u64>,
    pub concurrency: Vec<usize>,
    /// Keys in each batch_exists request; positions (groups of `ranks` keys) for prefix_len.
    pub batch_keys: usize,
    pub ranks: usize,
}

impl QuicParams {
    pub fn full() -> QuicParams {
        QuicParams {
            seconds: 2.0,
            sizes: vec![1 << 20, 4 << 20],
            concurrency: vec![1, 4, 16],
            batch_keys: 1024,
            ranks: 8,
        }
    }

    pub fn quick() -> QuicParams {
        QuicParams {
            seconds: 0.1,
            sizes: vec![1 << 20],
            concurrency: vec![1, 4],
            batch_keys: 128,
            ranks: 8,
        }
    }
}

pub fn run(p: &QuicParams, report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir for the certificate");
    let server_rt = runtime(2);
    let client_rt = runtime(2);
    let tls_source = loopback_tls(dir.path());

    // strata's service.
    let served = serve(&server_rt, 2 << 30, tls_source.clone(), None);
    let (addr, cert) = (served.addr, served.cert.clone());

    // The raw quinn ceiling, same identity and transport settings.
    let raw_addr = server_rt.block_on(async { spawn_raw_server(&tls_source) });

    let client = client_rt.block_on(async {
        let config = ClientConfig {
            server: addr.to_string(),
            ca_cert: Some(cert.clone()),
            transfer_timeout: Duration::from_secs(60),
            ..ClientConfig::default()
        };
        Client::connect(config).await.expect("connect")
    });
    let raw = client_rt.block_on(raw_client(raw_addr, &cert));

    for &size in &p.sizes {
        for &c in &p.concurrency {
            transfer_round(p, &client_rt, &client, &raw, size, c, report);
        }
    }
    small_gets(p, &client_rt, &client, &raw, report);
    key_lookups(p, &client_rt, &client, report);

    served.stop(&server_rt);
}

fn transfer_round(
    p: &QuicParams,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    raw: &RawClient,
    size: u64,
    c: usize,
    report: &mut Report,
) {
    let value = Bytes::from(crate::engine::pattern(size));
    let round = format!("{size}-{c}");

    // put: distinct keys, so every put writes (the store evicts as it fills).
    let (cl, v, r) = (client.clone(), value.clone(), round.clone());
    let (n, t, h) = timed(rt, c, p.seconds, move |task, i| {
        let (cl, v) = (cl.clone(), v.clone());
        let key = format!("put-{r}-{task}-{i}");
        async move { cl.put(key.as_bytes(), v).await.expect("put") }
    });
    report.add(
        Record::new("quic", "strata-quic", "put", "cold")
            .size(size)
            .concurrency(c as u32)
            .timed(n, n * size, t, Some(&h)),
    );

    // get: a warm set of keys, read round robin into per-task buffers.
    let keys: Vec<String> = (0..32).map(|i| format!("get-{round}-{i}")).collect();
    rt.block_on(async {
        for k in &keys {
            client
                .put(k.as_bytes(), value.clone())
                .await
                .expect("warm put");
        }
    });
    let keys = Arc::new(keys);
    let cl = client.clone();
    let (n, t, h) = timed(rt, c, p.seconds, move |task, i| {
        let (cl, keys) = (cl.clone(), Arc::clone(&keys));
        async move {
            let key = &keys[(task * 7 + i as usize) % keys.len()];
            let got = cl.get(key.as_bytes()).await.expect("get");
            assert_eq!(got.len() as u64, size);
        }
    });
    let get = Record::new("quic", "strata-quic", "get", "warm")
        .size(size)
        .concurrency(c as u32)
        .timed(n, n * size, t, Some(&h));

    // The ceiling: the same bytes over a raw quinn stream.
    let rc = raw.clone();
    let (n, t, h) = timed(rt, c, p.seconds, move |_, _| {
        let rc = rc.clone();
        async move { rc.read(size).await }
    });
    let ceiling = Record::new("quic", "raw-quic", "read", "ceiling")
        .size(size)
        .concurrency(c as u32)
        .timed(n, n * size, t, Some(&h));
    let ratio = get.bytes_per_s() / ceiling.bytes_per_s().max(1.0);
    report.add(get.with("vs_raw_quic", crate::engine::round3(ratio)));
    report.add(ceiling);

    let rc = raw.clone();
    let v = value.clone();
    let (n, t, h) = timed(rt, c, p.seconds, move |_, _| {
        let (rc, v) = (rc.clone(), v.clone());
        async move { rc.write(v).await }
    });
    report.add(
        Record::new("quic", "raw-quic", "write", "ceiling")
            .size(size)
            .concurrency(c as u32)
            .timed(n, n * size, t, Some(&h)),
    );
}

/// 4 KiB gets with one request in flight: the round-trip cost of a get.
fn small_gets(
    p: &QuicParams,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    raw: &RawClient,
    report: &mut Report,
) {
    const SIZE: u64 = 4096;
    let value = Bytes::from(crate::engine::pattern(SIZE));
    rt.block_on(async {
        for i in 0..64 {
            let key = format!("small-{i}");
            client
                .put(key.as_bytes(), value.clone())
                .await
                .expect("put");
        }
    });
    let cl = client.clone();
    let (n, t, h) = timed(rt, 1, p.seconds, move |_, i| {
        let cl = cl.clone();
        async move {
            let key = format!("small-{}", i % 64);
            cl.get(key.as_bytes()).await.expect("get");
        }
    });
    let get = Record::new("quic", "strata-quic", "get", "warm")
        .size(SIZE)
        .timed(n, n * SIZE, t, Some(&h));
    let rc = raw.clone();
    let (n, t, h) = timed(rt, 1, p.seconds, move |_, _| {
        let rc = rc.clone();
        async move { rc.read(SIZE).await }
    });
    let ceiling = Record::new("quic", "raw-quic", "read", "ceiling")
        .size(SIZE)
        .timed(n, n * SIZE, t, Some(&h));
    let ratio = get.ops_per_s() / ceiling.ops_per_s().max(1.0);
    report.add(get.with("vs_raw_quic", crate::engine::round3(ratio)));
    report.add(ceiling);
}

/// batch_exists of `batch_keys` keys and prefix_len of `batch_keys / ranks` positions.
fn key_lookups(p: &QuicParams, rt: &tokio::runtime::Runtime, client: &Client, report: &mut Report) {
    let positions = p.batch_keys / p.ranks;
    let keys: Vec<Vec<String>> = (0..positions)
        .map(|b| {
            (0..p.ranks)
                .map(|r| {
                    format!(
                        "model@tp_rank:{r}@{:032x}",
                        (b as u128) * 0x9E37_79B9_7F4A_7C15
                    )
                })
                .collect()
        })
        .collect();
    rt.block_on(async {
        let flat: Vec<(&[u8], &[u8])> = keys
            .iter()
            .flatten()
            .map(|k| (k.as_bytes(), &b"kv"[..]))
            .collect();
        for r in client.batch_put_from(&flat).await {
            r.expect("put");
        }
    });
    let flat: Arc<Vec<String>> = Arc::new(keys.iter().flatten().cloned().collect());
    let cl = client.clone();
    let f = Arc::clone(&flat);
    let (n, t, h) = timed(rt, 1, p.seconds, move |_, _| {
        let (cl, f) = (cl.clone(), Arc::clone(&f));
        async move {
            let r = cl.batch_exists(&f).await;
            assert!(r.iter().all(|x| matches!(x, Ok(true))));
        }
    });
    report.add(
        Record::new("quic", "strata-quic", "exists", "batch")
            .batch(flat.len() as u32)
            .timed(n * flat.len() as u64, 0, t, Some(&h))
            .with("requests", n),
    );

    let groups = Arc::new(keys);
    let cl = client.clone();
    let g = Arc::clone(&groups);
    let (n, t, h) = timed(rt, 1, p.seconds, move |_, _| {
        let (cl, g) = (cl.clone(), Arc::clone(&g));
        async move {
            let len = cl.prefix_len(&g).await.expect("prefix_len");
            assert_eq!(len, g.len());
        }
    });
    report.add(
        Record::new("quic", "strata-quic", "prefix_len", "hit")
            .batch(flat.len() as u32)
            .timed(n * flat.len() as u64, 0, t, Some(&h))
            .with("requests", n)
            .with("positions", groups.len()),
    );
}

/// The largest read the raw server answers.
pub(crate) const RAW_MAX: u64 = 16 << 20;

/// Listens with strata's identity and transport settings; each request stream carries an
/// 8-byte little-endian size. A size with the top bit clear asks for that many bytes;
/// with it set, the client sends that many bytes, which the server reads and drops.
pub(crate) fn spawn_raw_server(source: &TlsSource) -> std::net::SocketAddr {
    let identity = tls::load_identity(source).expect("identity");
    let rustls = tls::rustls_config(identity).expect("tls config");
    let config = tls::server_config(rustls).expect("server config");
    let endpoint =
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).expect("raw endpoint");
    let addr = endpoint.local_addr().expect("raw address");
    let payload = Bytes::from(vec![0x5Au8; RAW_MAX as usize]);
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let payload = payload.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let payload = payload.clone();
                    tokio::spawn(async move {
                        let mut b = [0u8; 8];
                        if recv.read_exact(&mut b).await.is_err() {
                            return;
                        }
                        let n = u64::from_le_bytes(b);
                        if n >> 63 == 1 {
                            let mut left = (n & !(1 << 63)) as usize;
                            while left > 0 {
                                match recv.read_chunk(left, true).await {
                                    Ok(Some(c)) => left -= c.bytes.len(),
                                    _ => return,
                                }
                            }
                            let _ = send.write_all(&[1]).await;
                        } else {
                            let _ = send.write_chunk(payload.slice(..n as usize)).await;
                        }
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    addr
}

#[derive(Clone)]
pub(crate) struct RawClient {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl RawClient {
    /// Asks for `size` bytes and reads them into a fresh buffer, as a get does.
    pub(crate) async fn read(&self, size: u64) {
        let (mut send, mut recv) = self.conn.open_bi().await.expect("raw stream");
        send.write_all(&size.to_le_bytes())
            .await
            .expect("raw request");
        let _ = send.finish();
        let mut buf = vec![0u8; size as usize];
        recv.read_exact(&mut buf).await.expect("raw payload");
    }

    /// Sends `value` and waits for the one-byte acknowledgement, as a put does.
    async fn write(&self, value: Bytes) {
        let (mut send, mut recv) = self.conn.open_bi().await.expect("raw stream");
        let n = value.len() as u64 | 1 << 63;
        send.write_all(&n.to_le_bytes()).await.expect("raw request");
        send.write_chunk(value).await.expect("raw payload");
        let _ = send.finish();
        let mut ack = [0u8; 1];
        recv.read_exact(&mut ack).await.expect("raw ack");
    }
}

pub(crate) async fn raw_client(addr: std::net::SocketAddr, cert: &std::path::Path) -> RawClient {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).expect("cert") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![strata_proto::wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(strata_proto::wire::tuning::transport_config()));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client");
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("raw connection");
    RawClient {
        conn,
        _endpoint: endpoint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick run completes, and strata and its ceiling are measured side by side.
    #[test]
    fn quick_run_measures_strata_next_to_raw_quic() {
        let mut report = Report::new();
        run(&QuicParams::quick(), &mut report);
        let recs = report.records();
        let has = |system: &str, op: &str| recs.iter().any(|r| r.system == system && r.op == op);
        assert!(has("strata-quic", "put") && has("strata-quic", "get"));
        assert!(has("raw-quic", "read") && has("raw-quic", "write"));
        assert!(has("strata-quic", "exists") && has("strata-quic", "prefix_len"));
        for r in recs {
            assert!(r.ops > 0, "{:?}", r.to_json());
        }
        let get = recs
            .iter()
            .find(|r| r.op == "get" && r.value_size == 1 << 20)
            .unwrap();
        assert!(get.extra["vs_raw_quic"].as_f64().unwrap() > 0.0);
    }
}
