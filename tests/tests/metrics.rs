//! Metrics end to end: a real server, real clients on every transport, the exporter's
//! scrape, and a real Prometheus evaluating every query of the Grafana dashboard.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_client::{Client, ClientConfig, ErrorCode, Transport};
use strata_server::metrics::catalog::{Kind, ALL};
use strata_tests::{
    block_value, eventually, external_program, http_get, metric, try_http_get, ServerProcess,
};

const VALUE_LEN: usize = 256 << 10;

/// `dram` of memory over an ssd tier, so traffic evicts, demotes and reads the ssd back;
/// short leases and put deadlines, so both expire within the test. (Leases hold objects
/// in dram: with one-second leases, a round every ~100 ms keeps dozens of blocks leased,
/// so the dram must hold well more than that or puts are rightly refused with NoSpace.)
fn metrics_server(dram: &str) -> ServerProcess {
    ServerProcess::start(&[
        "--device-plugin",
        "off",
        "--dram-capacity",
        dram,
        "--ssd-capacity",
        "64MiB",
        // Past the clients' 500 ms safety margin, yet short enough to expire in the test.
        "--default-kv-lease-ttl",
        "1000",
        "--put-timeout",
        "1500",
    ])
}

async fn client(server: &ServerProcess, transport: Transport) -> Client {
    let config = ClientConfig {
        transport,
        ..server.client_config()
    };
    let client = Client::connect(config).await.expect("connect");
    assert_eq!(client.transport().await.unwrap(), transport);
    client
}

/// One round of what an inference engine does, on `client`: store blocks, look up a
/// prefix, load blocks (and miss one), lease locations, abandon a write.
async fn round(client: &Client, tag: &str, round: u64) {
    let keys: Vec<Vec<u8>> = (0..8)
        .map(|i| format!("{tag}-{round}-{i}").into_bytes())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let value = block_value(round * 100 + i as u64, VALUE_LEN);
        if let Err(e) = client.put_from(key, &value).await {
            panic!("{tag} put {i} of round {round}: {e}");
        }
    }
    // Read the oldest twice: by now it was demoted to ssd, and the second read promotes.
    for key in [&keys[0], &keys[0], &keys[7]] {
        let got = client.get(key).await.expect("get");
        assert_eq!(got.len(), VALUE_LEN);
    }
    let missing = format!("{tag}-{round}-missing").into_bytes();
    let e = client.get(&missing).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    let groups = [vec![keys[6].clone()], vec![keys[7].clone()], vec![missing]];
    assert_eq!(client.prefix_len(&groups).await.unwrap(), 2);
    let leased = client.get_locations(&[&keys[7]]).await;
    assert!(leased[0].is_ok(), "{:?}", leased[0]);
    let revoked = format!("{tag}-{round}-revoked").into_bytes();
    let r = client.put_start(&revoked, 4096).await.unwrap();
    client.put_revoke(&revoked, r.writer).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_counts_real_traffic_on_every_transport() {
    let server = metrics_server("8MiB");
    let addr = server.metrics.expect("metrics are on by default");
    assert_eq!(
        http_get(&format!("http://{addr}/health")),
        (200, "ok\n".into())
    );
    assert_eq!(http_get(&format!("http://{addr}/nothing")).0, 404);
    let clients = [
        ("shm", client(&server, Transport::Shm).await),
        ("tcp", client(&server, Transport::Tcp).await),
        ("quic", client(&server, Transport::Quic).await),
    ];
    // Two rounds: 12 MiB of blocks into 8 MiB of dram.
    for r in 0..2 {
        for (tag, c) in &clients {
            round(c, tag, r).await;
        }
    }
    // A writer that never finishes: its reservation expires (its connection stays open,
    // which would revoke it instead).
    let quic = &clients[2].1;
    quic.put_start(b"abandoned", 4096).await.unwrap();

    let settled = |s: &str| {
        metric(s, "strata_reservations_expired_total") >= Some(1.0)
            && metric(s, "strata_leases_expired_total") >= Some(3.0)
            && metric(s, "strata_tier_demotions_total{tier=\"dram\"}") >= Some(1.0)
    };
    let done = eventually(Duration::from_secs(15), || async {
        settled(&server.scrape())
    })
    .await;
    assert!(done, "leases, reservations or demotions never expired");
    // Read every block back: the demoted ones come from the ssd.
    for r in 0..2 {
        for (tag, _) in &clients {
            for i in 0..8 {
                let key = format!("{tag}-{r}-{i}");
                assert_eq!(quic.get(key.as_bytes()).await.unwrap().len(), VALUE_LEN);
            }
        }
    }
    let scrape = server.scrape();
    for d in ALL {
        let sample = match d.kind {
            Kind::Histogram => format!("{}_bucket{{", d.name),
            _ => d.name.to_owned(),
        };
        assert!(
            scrape.lines().any(|l| l.starts_with(&sample)),
            "{} is missing from the scrape",
            d.name
        );
    }
    let at_least = |series: &str, floor: f64| {
        let v = metric(&scrape, series).unwrap_or_else(|| panic!("{series} not in the scrape"));
        assert!(v >= floor, "{series} = {v}, expected at least {floor}");
    };
    let block = VALUE_LEN as f64;
    // Each transport carried its client's bytes: 8 puts and 3 gets of whole blocks (the
    // shm client's values that land on ssd go through the server, on quic).
    for (transport, puts) in [("shm", 1.0), ("tcp", 8.0), ("quic", 8.0)] {
        at_least(
            &format!("strata_transport_bytes_total{{transport=\"{transport}\",direction=\"in\"}}"),
            puts * block,
        );
        at_least(
            &format!("strata_transport_bytes_total{{transport=\"{transport}\",direction=\"out\"}}"),
            block,
        );
    }
    at_least("strata_requests_total{op=\"put\"}", 8.0);
    at_least("strata_requests_total{op=\"data_put\"}", 8.0);
    at_least("strata_requests_total{op=\"data_get\"}", 1.0);
    at_least("strata_requests_total{op=\"get_locations\"}", 2.0);
    at_least("strata_requests_total{op=\"prefix_len\"}", 3.0);
    at_least("strata_request_duration_seconds_count{op=\"get\"}", 1.0);
    at_least(
        "strata_request_errors_total{op=\"get\",code=\"NotFound\"}",
        1.0,
    );
    at_least("strata_connections{transport=\"quic\"}", 3.0);
    at_least("strata_connections_accepted_total{transport=\"tcp\"}", 1.0);
    // Prefix lookups: 3 blocks asked per client and round, 2 found.
    let exactly =
        |series: &str, want: f64| assert_eq!(metric(&scrape, series), Some(want), "{series}");
    exactly("strata_prefix_lookups_total", 6.0);
    exactly("strata_prefix_blocks_asked_total", 18.0);
    exactly("strata_prefix_keys_asked_total", 18.0);
    exactly("strata_prefix_hit_blocks_total", 12.0);
    exactly("strata_reservations_revoked_total", 6.0);
    at_least("strata_leases_granted_total", 3.0);
    at_least("strata_tier_evictions_total{tier=\"dram\"}", 1.0);
    at_least("strata_ssd_io_ops_total{op=\"write\"}", 1.0);
    at_least("strata_ssd_io_ops_total{op=\"read\"}", 1.0);
    at_least("strata_ssd_io_duration_seconds_count{op=\"read\"}", 1.0);
    at_least("strata_store_gets_total{result=\"hit\"}", 3.0);
    assert_eq!(
        metric(&scrape, "strata_tier_capacity_bytes{tier=\"dram\"}"),
        Some((8 << 20) as f64)
    );
    for (_, c) in &clients {
        c.close().await;
    }
}

/// A Prometheus child process, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

/// Starts Prometheus scraping `target` every second; waits (bounded) until it is ready.
async fn start_prometheus(binary: &Path, target: SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: strata\n    static_configs:\n      \
             - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let port = free_loopback_port();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning prometheus");
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let ready = format!("{}/-/ready", prometheus.url);
    let up = eventually(Duration::from_secs(30), || async {
        try_http_get(&ready).is_ok_and(|(status, _)| status == 200)
    })
    .await;
    assert!(up, "prometheus not ready within 30 s");
    prometheus
}

/// Evaluates `expr` now; the samples' values (NaN included).
fn query(prometheus: &Prometheus, expr: &str) -> Result<Vec<f64>, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        prometheus.url,
        percent_encode(expr)
    );
    let (status, body) = http_get(&url);
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    let answer: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let result = answer["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("no result in {body}"))?;
    Ok(result
        .iter()
        .filter_map(|r| r["value"][1].as_str()?.parse().ok())
        .collect())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every PromQL expression of the dashboard, with its Grafana variables bound as a user
/// with one server and the default interval would have them.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../grafana/dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let bound = expr
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            out.push((panel["title"].as_str().unwrap().to_owned(), bound));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_server_and_every_dashboard_query_returns_data() {
    let (Some(prometheus_bin), Some(promtool)) = (
        external_program("prometheus", "prometheus"),
        external_program("promtool", "prometheus"),
    ) else {
        return;
    };
    let server = metrics_server("32MiB");
    let clients = [
        ("shm", client(&server, Transport::Shm).await),
        ("tcp", client(&server, Transport::Tcp).await),
        ("quic", client(&server, Transport::Quic).await),
    ];
    let quic = &clients[2].1;
    quic.put_start(b"abandoned", 4096).await.unwrap();
    let prometheus = start_prometheus(&prometheus_bin, server.metrics.unwrap()).await;

    // Traffic while Prometheus scrapes, until it holds enough samples for a rate():
    // bounded by rounds and by time.
    let started = Instant::now();
    let mut rounds = 0;
    let enough = loop {
        for (tag, c) in &clients {
            round(c, tag, rounds).await;
        }
        rounds += 1;
        let samples = query(
            &prometheus,
            "count_over_time(strata_requests_total{op=\"put\"}[1m])",
        );
        if samples.is_ok_and(|s| s.first().is_some_and(|&n| n >= 4.0)) {
            break true;
        }
        if rounds >= 1000 || started.elapsed() > Duration::from_secs(60) {
            break false;
        }
    };
    assert!(
        enough,
        "prometheus took fewer than 4 scrapes in {rounds} rounds"
    );
    let up = query(&prometheus, "up{job=\"strata\"}").unwrap();
    assert_eq!(up, vec![1.0], "the scrape target is up");

    let queries = dashboard_queries();
    assert!(queries.len() >= 30, "the dashboard has its panels");
    let mut failures = Vec::new();
    for (title, expr) in &queries {
        match query(&prometheus, expr) {
            Ok(values) if values.iter().any(|v| v.is_finite()) => {}
            Ok(values) => failures.push(format!("{title}: {expr} -> {values:?}")),
            Err(e) => failures.push(format!("{title}: {expr} -> {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard queries without data:\n{}",
        failures.join("\n")
    );

    // The exposition passes Prometheus' own lint.
    let scrape = server.scrape();
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning promtool");
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), scrape.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    for (_, c) in &clients {
        c.close().await;
    }
}
