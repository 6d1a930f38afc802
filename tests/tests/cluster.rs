//! A cluster end to end: a real etcd (Debian's `etcd-server`) on free loopback ports and
//! real `strata-server` processes joining it (docs/cluster.md), with member TTL 2 s and
//! a kvcache-shaped workload: prompt families of 8 shared blocks, each prompt then 16 to
//! 48 blocks of its own, two TP ranks per block.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use strata_client::{Client, ClusterClient, ClusterOptions, ErrorCode, MemberState};
use strata_tests::{
    block_value, cli_binary, metric, run_bounded, server_binary, EtcdProcess, ServerProcess,
};

const TTL_S: u64 = 2;
const VALUE_LEN: usize = 2048;
const RUN: usize = 16;

/// A member of cluster `cluster` with node id `node` (fresh data dir, no ssd tier unless
/// `extra` names one).
fn member(etcd: &EtcdProcess, cluster: &str, node: &str, extra: &[&str]) -> ServerProcess {
    ServerProcess::start(
        &member_args(etcd, cluster, node, extra)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
}

fn member_args(etcd: &EtcdProcess, cluster: &str, node: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--cluster-id",
        cluster,
        "--node-id",
        node,
        "--member-ttl",
        &TTL_S.to_string(),
        "--device-plugin",
        "off",
        "--dram-capacity",
        "128MiB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--ssd-path") {
        args.extend(["--ssd-path".to_owned(), "off".to_owned()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn options() -> ClusterOptions {
    ClusterOptions {
        view_refresh: Duration::from_millis(200),
        lookup_timeout: Duration::from_millis(1500),
        retry_after: Duration::from_millis(500),
        local_node: None,
    }
}

/// A client of the cluster `via` belongs to, once its view holds `members` members.
async fn cluster_client(via: &ServerProcess, members: usize) -> ClusterClient {
    let client = ClusterClient::connect(via.client_config(), options())
        .await
        .expect("connecting to the cluster");
    let deadline = Instant::now() + Duration::from_secs(10);
    while active(&client).len() != members {
        assert!(
            Instant::now() < deadline,
            "the view never held {members} members"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.refresh_view().await.expect("refreshing the view");
    }
    client
}

/// etcd, three members n1..n3 of `cluster` (with `extra` flags), and a client whose view
/// holds all three; `None` where etcd is not installed (the test then skips).
async fn cluster_of_three(
    cluster: &str,
    extra: &[&str],
) -> Option<(EtcdProcess, Vec<ServerProcess>, ClusterClient)> {
    let etcd = EtcdProcess::start()?;
    let servers: Vec<ServerProcess> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| member(&etcd, cluster, n, extra))
        .collect();
    let client = cluster_client(&servers[0], 3).await;
    Some((etcd, servers, client))
}

/// A prompt: per position (block) its two TP ranks' keys.
type Chain = Vec<Vec<String>>;

/// `families` families of `per_family` prompts: 8 blocks shared in a family, then 16 to
/// 48 of the prompt's own. Keys as an engine names them: model, rank, chained hash.
fn workload(tag: &str, families: usize, per_family: usize) -> Vec<Chain> {
    let mut prompts = Vec::new();
    for f in 0..families {
        for p in 0..per_family {
            let own = 16 + (f * 7 + p * 13) % 33;
            let chain = (0..8 + own)
                .map(|b| {
                    let hash = if b < 8 {
                        format!("{tag}-f{f}-b{b}")
                    } else {
                        format!("{tag}-f{f}-p{p}-b{b}")
                    };
                    (0..2).map(|r| format!("m@tp{r}@{hash}")).collect()
                })
                .collect();
            prompts.push(chain);
        }
    }
    prompts
}

fn value_of(key: &str) -> Vec<u8> {
    block_value(xxhash_rust::xxh3::xxh3_64(key.as_bytes()), VALUE_LEN)
}

fn values(chain: &[Vec<String>]) -> Vec<Vec<u8>> {
    chain.iter().flatten().map(|k| value_of(k)).collect()
}

async fn put_all(client: &ClusterClient, prompts: &[Chain]) {
    for chain in prompts {
        for r in client.batch_put_chain(chain, &values(chain)).await {
            r.expect("put at the owner");
        }
    }
}

/// Loads the first `len` positions of `chain` and checks every byte.
async fn load_and_check(client: &ClusterClient, chain: &[Vec<String>], len: usize) {
    let keys: Vec<&String> = chain[..len].iter().flatten().collect();
    let mut bufs = vec![vec![0u8; VALUE_LEN]; keys.len()];
    let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
    let results = client.batch_get_chain_into(chain, &mut slices).await;
    for ((key, r), buf) in keys.iter().zip(results).zip(&bufs) {
        assert_eq!(
            r.unwrap_or_else(|e| panic!("{key}: {e}")),
            VALUE_LEN,
            "{key}"
        );
        assert!(buf == &value_of(key), "{key}: wrong bytes");
    }
}

/// Prefix blocks found over all prompts, as a fraction of all their blocks.
async fn found_share(client: &ClusterClient, prompts: &[Chain]) -> f64 {
    let (mut found, mut all) = (0, 0);
    for chain in prompts {
        found += client.prefix_len(chain).await.expect("lookup");
        all += chain.len();
    }
    found as f64 / all as f64
}

/// The node ids in `client`'s view that are active.
fn active(client: &ClusterClient) -> Vec<String> {
    client
        .view()
        .members
        .iter()
        .filter(|m| m.state == MemberState::Active)
        .map(|m| m.node_id.clone())
        .collect()
}

/// The node ids a server sees, by asking it directly.
async fn seen_by(server: &ServerProcess) -> Vec<String> {
    let client = Client::connect(server.client_config()).await.unwrap();
    let view = client.cluster_view().await.unwrap();
    view.members.into_iter().map(|m| m.node_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_equal_one_servers_and_each_run_lives_at_its_owner() {
    let Some(etcd) = EtcdProcess::start() else {
        return;
    };
    let servers: Vec<ServerProcess> = ["n1", "n2", "n3"]
        .iter()
        // No previous-owner lookups: this test counts the servers a lookup asks.
        .map(|n| member(&etcd, "agree", n, &["--join-window", "0"]))
        .collect();
    let alone = ServerProcess::start(&["--device-plugin", "off", "--ssd-path", "off"]);
    let cluster = cluster_client(&servers[0], 3).await;
    assert_eq!(active(&cluster), ["n1", "n2", "n3"]);
    let single = ClusterClient::connect(alone.client_config(), options())
        .await
        .unwrap();
    assert!(
        single.view().members.is_empty(),
        "a server alone is a cluster of one"
    );

    // Stored: whole prompts, prompts cut at any block, and a prompt with one rank's key
    // missing in the middle of its second run.
    let prompts = workload("agree", 6, 3);
    let mut stored: Vec<Chain> = Vec::new();
    for (i, chain) in prompts.iter().enumerate() {
        let keep = match i % 3 {
            0 => chain.len(),
            1 => 5 + i % 27,
            _ => chain.len(),
        };
        stored.push(chain[..keep.min(chain.len())].to_vec());
    }
    put_all(&cluster, &stored).await;
    put_all(&single, &stored).await;
    let names = ["n1", "n2", "n3"];
    let clients: Vec<Client> = connect_each(&servers).await;
    // The hole: removed from the single server, and from its run's owner in the cluster.
    let hole = prompts[2][20][1].as_bytes();
    single.remove(hole, true).await.unwrap();
    let hole_owner = cluster.owner_of_position(&prompts[2], 20).unwrap();
    let at = names.iter().position(|n| *n == hole_owner).unwrap();
    clients[at].remove(hole, true).await.unwrap();

    // Every answer equals the single server's; a lookup asks at most ceil(len / R)
    // servers, in one round.
    for chain in &prompts {
        let want = single.prefix_len(chain).await.unwrap();
        let got = cluster.prefix_len_leased(chain).await.unwrap();
        assert_eq!(got.len, want, "prefix of a chain of {}", chain.len());
        assert!(
            got.servers <= chain.len().div_ceil(RUN),
            "{} servers",
            got.servers
        );
        if got.len > 0 {
            assert!(got.leased_until.is_some());
            load_and_check(&cluster, chain, got.len).await;
        }
    }
    assert_eq!(cluster.prefix_len(&prompts[2]).await.unwrap(), 20);

    // Each key lives at the owner the client computes, and nowhere else.
    for chain in stored.iter().take(6) {
        for (p, group) in chain.iter().enumerate() {
            let owner = cluster.owner_of_position(chain, p).unwrap();
            for key in group {
                if key == &prompts[2][20][1] {
                    continue;
                }
                for (name, c) in names.iter().zip(&clients) {
                    let here = c.exists(key.as_bytes()).await.unwrap();
                    assert_eq!(here, *name == owner, "{key} at {name}, owner {owner}");
                }
            }
        }
    }
    // Keys outside a chain place by themselves, and still round-trip.
    for i in 0..50 {
        let key = format!("single-{i}");
        cluster.put(key.as_bytes(), &value_of(&key)).await.unwrap();
        assert_eq!(
            &cluster.get(key.as_bytes()).await.unwrap()[..],
            &value_of(&key)[..]
        );
        let owner = cluster.owner_of_key(key.as_bytes()).unwrap();
        let at = names.iter().position(|n| *n == owner).unwrap();
        assert!(clients[at].exists(key.as_bytes()).await.unwrap());
    }
    let counters = cluster.counters();
    assert!(counters.lookups > 0 && counters.lookup_servers >= counters.lookups);

    // The CLI shows the members and each one's fill; `stats` names the cluster.
    let cli = |args: &[&str]| {
        let mut command = Command::new(cli_binary());
        command
            .arg("--server")
            .arg(servers[1].addr.to_string())
            .arg("--ca")
            .arg(&servers[1].cert)
            .args(args);
        let (status, out, err) = run_bounded(&mut command, Duration::from_secs(30));
        assert!(status.success(), "strata {args:?}: {err}");
        out
    };
    let view: serde_json::Value = serde_json::from_str(&cli(&["cluster", "--json"])).unwrap();
    assert_eq!(view["cluster_id"], "agree");
    let listed = view["members"].as_array().unwrap();
    let ids: Vec<&str> = listed
        .iter()
        .map(|m| m["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, names);
    for m in listed {
        assert!(m["stats"]["objects"].as_u64().unwrap() > 0, "{m}");
        assert!(m.get("cert_pem").is_none());
    }
    let table = cli(&["cluster"]);
    assert!(table.contains("n3") && table.contains("active"), "{table}");
    let stats = cli(&["stats"]);
    assert!(stats.contains("cluster agree"), "{stats}");

    let text = servers[0].scrape();
    assert_eq!(
        metric(&text, "strata_cluster_members{state=\"active\"}"),
        Some(3.0)
    );
    assert_eq!(metric(&text, "strata_cluster_etcd_up"), Some(1.0));
    assert_eq!(
        metric(&text, "strata_cluster_registrations_total"),
        Some(1.0)
    );
    assert!(metric(&text, "strata_cluster_view_epoch").unwrap() > 0.0);
}

async fn connect_each(servers: &[ServerProcess]) -> Vec<Client> {
    let mut clients = Vec::new();
    for s in servers {
        clients.push(Client::connect(s.client_config()).await.unwrap());
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_follow_the_members_weights() {
    let Some(etcd) = EtcdProcess::start() else {
        return;
    };
    for (cluster_id, weights, want) in [
        ("equal", ["1", "1", "1"], [1.0 / 3.0; 3]),
        ("weighted", ["1", "1", "2"], [0.25, 0.25, 0.5]),
    ] {
        let servers: Vec<ServerProcess> = ["n1", "n2", "n3"]
            .iter()
            .zip(weights)
            .map(|(n, w)| member(&etcd, cluster_id, n, &["--weight", w]))
            .collect();
        let client = cluster_client(&servers[0], 3).await;
        let mut owned: HashMap<String, usize> = HashMap::new();
        let runs = 30_000;
        for i in 0..runs {
            let anchor = format!("m@tp0@run-{i}");
            *owned
                .entry(client.owner_of_key(anchor.as_bytes()).unwrap())
                .or_default() += 1;
        }
        for (node, want) in ["n1", "n2", "n3"].iter().zip(want) {
            let share = owned[*node] as f64 / runs as f64;
            assert!(
                (share - want).abs() <= 0.02,
                "{cluster_id}: {node} owns {share}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_costs_only_its_runs() {
    let Some((_etcd, mut servers, client)) = cluster_of_three("loss", &[]).await else {
        return;
    };
    let prompts = workload("loss", 48, 2);
    put_all(&client, &prompts).await;
    assert_eq!(found_share(&client, &prompts).await, 1.0);

    // What the client placed on n3, before it dies: per prompt, per position.
    let on_n3: Vec<Vec<bool>> = prompts
        .iter()
        .map(|c| {
            (0..c.len())
                .map(|p| client.owner_of_position(c, p).as_deref() == Some("n3"))
                .collect()
        })
        .collect();
    assert!(on_n3.iter().flatten().any(|x| *x));

    let killed_at = Instant::now();
    servers[2].kill_hard();
    // No call blocks past its timeout while the dead member is still in the view.
    let looker = {
        let (client, chain) = (client.clone(), prompts[0].clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while killed_at.elapsed() < Duration::from_secs(TTL_S + 2) {
                let started = Instant::now();
                client
                    .prefix_len(&chain)
                    .await
                    .expect("a lookup never fails for a lost member");
                slowest = slowest.max(started.elapsed());
            }
            slowest
        })
    };
    let gone = |nodes: Vec<String>| !nodes.contains(&"n3".to_owned());
    let (mut client_at, mut servers_at) = (None, [None, None]);
    while client_at.is_none() || servers_at.iter().any(Option::is_none) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(TTL_S + 3),
            "n3 was never dropped"
        );
        if client_at.is_none() && gone(active(&client)) {
            client_at = Some(killed_at.elapsed());
        }
        for (at, s) in servers_at.iter_mut().zip(&servers[..2]) {
            if at.is_none() && gone(seen_by(s).await) {
                *at = Some(killed_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let within = Duration::from_secs(TTL_S + 1);
    for (who, at) in [
        ("n1", servers_at[0]),
        ("n2", servers_at[1]),
        ("the client", client_at),
    ] {
        let at = at.unwrap();
        assert!(at <= within, "{who} dropped n3 after {at:?}");
    }
    let slowest = looker.await.unwrap();
    assert!(
        slowest < options().lookup_timeout + Duration::from_millis(500),
        "a lookup took {slowest:?}"
    );

    // Keys of live owners: all there, every byte. Lost: exactly n3's share.
    let share = found_share(&client, &prompts).await;
    eprintln!("n3 dropped by n1, n2, the client after {servers_at:?}, {client_at:?}; slowest lookup {slowest:?}; prefix blocks still found: {share:.2}");
    assert!(
        share >= 0.45,
        "found {share:.2} of the prefix blocks after the loss"
    );
    for (chain, on_n3) in prompts.iter().zip(&on_n3) {
        let keys: Vec<&String> = chain.iter().flatten().collect();
        let mut bufs = vec![vec![0u8; VALUE_LEN]; keys.len()];
        let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        let results = client.batch_get_chain_into(chain, &mut slices).await;
        for (p, group) in chain.iter().enumerate() {
            let was_on_n3 = on_n3[p];
            for (r, key) in group.iter().enumerate() {
                let at = p * 2 + r;
                match &results[at] {
                    Ok(_) => {
                        assert!(!was_on_n3, "{key} was on n3 and is still found");
                        assert!(bufs[at] == value_of(key), "{key}: wrong bytes");
                    }
                    Err(e) => {
                        assert!(was_on_n3, "{key} lost though its owner lives: {e}");
                        assert_eq!(e.code(), ErrorCode::NotFound, "{key}: {e}");
                    }
                }
            }
        }
    }
    // One re-put pass (at the runs' new owners) and every prefix is whole again.
    put_all(&client, &prompts).await;
    assert_eq!(found_share(&client, &prompts).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_node_id_and_a_different_config_are_refused() {
    let Some(etcd) = EtcdProcess::start() else {
        return;
    };
    let _first = member(&etcd, "dup", "n1", &[]);
    let dir = tempfile::tempdir().unwrap();
    let endpoint = etcd.endpoint();
    let attempt = |extra: &[&str]| {
        let mut command = Command::new(server_binary());
        command
            .args(["--port", "0", "--metrics-addr", "off", "--data-port", "0"])
            .args(["--device-plugin", "off", "--ssd-path", "off"])
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--etcd-endpoints",
                &endpoint,
                "--cluster-id",
                "dup",
                "--member-ttl",
                "2",
            ])
            .args(extra);
        run_bounded(&mut command, Duration::from_secs(20))
    };
    let (status, _, err) = attempt(&["--node-id", "n1"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("node id \"n1\" is already a live member"),
        "{err}"
    );
    let (status, _, err) = attempt(&["--node-id", "n2", "--run-blocks", "8"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("refusing to join"), "{err}");
    let (status, _, err) = attempt(&["--node-id", "bad/id"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--node-id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_at_once_and_leased_reads_complete() {
    let Some((etcd, mut servers, client)) = cluster_of_three("term", &[]).await else {
        return;
    };
    let prompts = workload("term", 12, 2);
    put_all(&client, &prompts).await;
    // Leased lookups answered before the signal; their loads run after it.
    let mut matched = Vec::new();
    for chain in &prompts {
        let m = client.prefix_len_leased(chain).await.unwrap();
        assert_eq!(m.len, chain.len());
        matched.push(m.len);
    }
    assert!(prompts
        .iter()
        .any(|c| (0..c.len()).any(|p| client.owner_of_position(c, p).as_deref() == Some("n3"))));
    let signalled = Instant::now();
    servers[2].signal("TERM");
    // The loads start once the client's own view has dropped n3: the blocks n3 leased are
    // read there all the same, since a draining member serves its leased reads.
    while active(&client).contains(&"n3".to_owned()) {
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "n3 stayed in the client's view"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (chain, len) in prompts.iter().zip(&matched) {
        load_and_check(&client, chain, *len).await;
    }
    let loads_took = signalled.elapsed();
    let mut n1_dropped = None;
    while n1_dropped.is_none() {
        if !seen_by(&servers[0]).await.contains(&"n3".to_owned()) {
            n1_dropped = Some(signalled.elapsed());
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "n3 stayed in n1's view"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n1_dropped = n1_dropped.unwrap();
    eprintln!("loads after SIGTERM took {loads_took:?}; n1 dropped n3 after {n1_dropped:?}");
    assert!(
        n1_dropped <= Duration::from_millis(500),
        "n3 left n1's view after {n1_dropped:?}"
    );
    assert_eq!(etcd.count_prefix("/strata/v1/term/members/"), Some(2));
    let status = servers[2].wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "a SIGTERMed member exits cleanly: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_takes_a_quarter_of_the_runs_and_warm_prefixes_keep_hitting() {
    let Some((etcd, mut servers, client)) = cluster_of_three("join", &[]).await else {
        return;
    };
    let prompts = workload("join", 24, 2);
    put_all(&client, &prompts).await;
    let anchors: Vec<String> = (0..10_000).map(|i| format!("m@tp0@run-{i}")).collect();
    let before: Vec<String> = anchors
        .iter()
        .map(|a| client.owner_of_key(a.as_bytes()).unwrap())
        .collect();
    let stats_before = object_counts(&client).await;
    // A joiner comes later than the members it takes runs from (members that join
    // within a second of each other count as starting together).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    servers.push(member(&etcd, "join", "n4", &[]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while active(&client).len() != 4 {
        assert!(Instant::now() < deadline, "n4 never showed in the view");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved = anchors
        .iter()
        .zip(&before)
        .filter(|(a, was)| {
            let now = client.owner_of_key(a.as_bytes()).unwrap();
            assert!(
                now == **was || now == "n4",
                "a run moved between old members"
            );
            now != **was
        })
        .count();
    let share = moved as f64 / anchors.len() as f64;
    assert!(
        (share - 0.25).abs() <= 0.05,
        "{share:.3} of the runs changed owner"
    );
    // Warm prefixes still hit in full, loaded from the previous owners; nothing moved.
    assert_eq!(found_share(&client, &prompts).await, 1.0);
    for chain in &prompts {
        load_and_check(&client, chain, chain.len()).await;
    }
    assert!(client.counters().second_rank_hits > 0);
    let stats_after = object_counts(&client).await;
    assert_eq!(
        stats_after.get("n4"),
        Some(&0),
        "bytes migrated to the joiner"
    );
    for node in ["n1", "n2", "n3"] {
        assert_eq!(
            stats_after[node], stats_before[node],
            "{node}'s objects changed"
        );
    }
}

/// Objects per member, from each member's stats.
async fn object_counts(client: &ClusterClient) -> HashMap<String, u64> {
    client
        .member_stats()
        .await
        .into_iter()
        .map(|(m, stats)| (m.node_id, stats.expect("member stats").objects))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_serves_its_recovered_blocks_without_a_re_put() {
    let Some(etcd) = EtcdProcess::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ssd = dir.path().join("ssd");
    let n3_args = member_args(
        &etcd,
        "restart",
        "n3",
        &["--ssd-path", ssd.to_str().unwrap(), "--persist-on-shutdown"],
    );
    let n3_args: Vec<&str> = n3_args.iter().map(String::as_str).collect();
    let mut servers = [
        member(&etcd, "restart", "n1", &[]),
        member(&etcd, "restart", "n2", &[]),
        ServerProcess::start_in(dir.path(), "127.0.0.1:0", &n3_args),
    ];
    let client = cluster_client(&servers[0], 3).await;
    let prompts = workload("restart", 12, 2);
    put_all(&client, &prompts).await;
    servers[2].signal("TERM");
    assert!(servers[2].wait_exit(Duration::from_secs(20)).success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while active(&client).len() != 2 {
        assert!(Instant::now() < deadline, "n3 stayed in the view");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        found_share(&client, &prompts).await < 1.0,
        "n3 held none of the runs"
    );
    // Same node id, same data dir (a new port): its ssd tier recovers, its runs come back.
    servers[2] = ServerProcess::start_in(dir.path(), "127.0.0.1:0", &n3_args);
    let deadline = Instant::now() + Duration::from_secs(5);
    while active(&client).len() != 3 {
        assert!(Instant::now() < deadline, "n3 never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(found_share(&client, &prompts).await, 1.0);
    for chain in &prompts {
        load_and_check(&client, chain, chain.len()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_changes_nothing_for_live_members() {
    let Some((mut etcd, servers, client)) = cluster_of_three("outage", &[]).await else {
        return;
    };
    let prompts = workload("outage", 12, 2);
    put_all(&client, &prompts).await;
    let members = "/strata/v1/outage/members/";
    for (outage, stop) in [("SIGSTOP", true), ("kill and restart", false)] {
        if stop {
            etcd.signal("STOP");
        } else {
            etcd.kill();
        }
        let began = Instant::now();
        let mut rounds = 0;
        while began.elapsed() < Duration::from_secs(10) {
            // Every operation against the live members goes on working, and no member
            // leaves anyone's view.
            let chain = &prompts[rounds % prompts.len()];
            assert_eq!(
                client.prefix_len(chain).await.unwrap(),
                chain.len(),
                "{outage}"
            );
            load_and_check(&client, chain, chain.len()).await;
            let key = format!("outage-{outage}-{rounds}");
            client.put(key.as_bytes(), &value_of(&key)).await.unwrap();
            assert_eq!(active(&client).len(), 3, "{outage}: a member flapped out");
            if rounds % 10 == 0 {
                for s in &servers {
                    assert_eq!(
                        seen_by(s).await.len(),
                        3,
                        "{outage}: a server lost a member"
                    );
                }
            }
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if stop {
            etcd.signal("CONT");
        } else {
            etcd.restart();
        }
        let back = Instant::now();
        while etcd.count_prefix(members) != Some(3) {
            assert!(
                back.elapsed() < Duration::from_secs(5),
                "{outage}: members never re-registered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = back.elapsed();
        eprintln!("{outage}: {rounds} rounds of operations, members registered {took:?} after etcd's return");
        assert!(
            took <= Duration::from_secs(2),
            "{outage}: re-registered after {took:?}"
        );
        // And they stay: no lease left to lapse a TTL later.
        tokio::time::sleep(Duration::from_secs(TTL_S + 1)).await;
        assert_eq!(
            etcd.count_prefix(members),
            Some(3),
            "{outage}: a member lapsed later"
        );
        for s in &servers {
            assert_eq!(seen_by(s).await.len(), 3);
        }
    }
    let text = servers[0].scrape();
    assert!(metric(&text, "strata_cluster_etcd_errors_total").unwrap() > 0.0);
    assert_eq!(metric(&text, "strata_cluster_etcd_up"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_reach_an_etcd_that_requires_tls_and_client_certificates() {
    let Some(etcd) = EtcdProcess::start_tls() else {
        return;
    };
    let files = etcd.tls().unwrap().clone();
    let (ca, cert, key) = (
        files.ca.to_str().unwrap(),
        files.client_cert.to_str().unwrap(),
        files.client_key.to_str().unwrap(),
    );
    let tls = ["--etcd-ca", ca, "--etcd-cert", cert, "--etcd-key", key];
    let servers: Vec<ServerProcess> = ["n1", "n2"]
        .iter()
        .map(|n| member(&etcd, "tls", n, &tls))
        .collect();
    let client = cluster_client(&servers[1], 2).await;
    let prompts = workload("tls", 4, 2);
    put_all(&client, &prompts).await;
    assert_eq!(found_share(&client, &prompts).await, 1.0);
    assert_eq!(etcd.count_prefix("/strata/v1/tls/members/"), Some(2));

    // Without the client certificate etcd refuses the handshake: the server says so.
    let dir = tempfile::tempdir().unwrap();
    let endpoint = etcd.endpoint();
    let mut command = Command::new(server_binary());
    command
        .args(["--port", "0", "--metrics-addr", "off", "--data-port", "0"])
        .args(["--device-plugin", "off", "--ssd-path", "off"])
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--etcd-endpoints",
            &endpoint,
            "--cluster-id",
            "tls",
            "--node-id",
            "n3",
        ])
        .args(["--etcd-ca", ca]);
    let (status, _, err) = run_bounded(&mut command, Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("etcd unreachable"), "{err}");
}
