//! [`ClusterClient`]: many servers as one pool. Connect to any member; the client learns
//! the members from it, places every key by `strata_proto::placement` (the servers'
//! spec), and talks to each owner directly, through the most direct path that member
//! offers (shared memory on its host, the TCP data plane or QUIC elsewhere).
//!
//! Placement decides only where the client looks; a server accepts any key. So a stale
//! view costs misses, never wrong data. Failure rules (docs/cluster.md):
//! - an owner that does not answer within the lookup timeout counts as a miss, and is
//!   skipped (a miss at once) for [`ClusterOptions::retry_after`];
//! - a run whose owner joined within the cluster's join window is also looked up at its
//!   previous owner (second in the ranking), in the same parallel round trip, and loaded
//!   from there when the owner misses it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::{Mutex, RwLock};
use strata_proto::msg::{MemberInfo, MemberState};
use strata_proto::placement::{self, Candidate};
use strata_proto::{Error, ErrorCode, Result};
use tokio::sync::OnceCell;

use crate::client::{Client, ClusterView, ServerStats};
use crate::config::ClientConfig;

/// Members whose joins are closer than this joined together: neither took runs from the
/// other (clocks and start-up jitter are well inside it).
const JOIN_ORDER_SLACK_MS: u64 = 1_000;

/// How a [`ClusterClient`] follows the cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// How often the member view is fetched again.
    pub view_refresh: Duration,
    /// Bound on one member's answer to a lookup; past it the member's runs are misses.
    pub lookup_timeout: Duration,
    /// A member that failed to answer is skipped this long.
    pub retry_after: Duration,
    /// Pretend only this member shares the client's host: every other member is reached
    /// over its TCP data plane whatever its host (a cluster benchmarked or tested on one
    /// host). `None`: each member by the transport the client's config names.
    pub local_node: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            view_refresh: Duration::from_millis(500),
            lookup_timeout: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            local_node: None,
        }
    }
}

/// The result of [`ClusterClient::prefix_len_leased`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterMatch {
    /// Leading positions whose keys are all stored (on the members the runs place on).
    pub len: usize,
    /// Until when the matched objects are leased, at the earliest.
    pub leased_until: Option<Instant>,
    /// Servers asked (all in parallel).
    pub servers: usize,
}

/// What a [`ClusterClient`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterCounters {
    /// Prefix lookups.
    pub lookups: u64,
    /// Servers those lookups asked, all together (servers per lookup: this / lookups).
    pub lookup_servers: u64,
    /// Runs found at their previous owner in a join window, by lookups and loads.
    pub second_rank_hits: u64,
    /// Calls that found their member unreachable (or skipped it as such).
    pub unreachable: u64,
    /// Views fetched that differed from the one held.
    pub view_changes: u64,
}

/// A client of a whole cluster (or of one server alone, which is a cluster of one).
/// Cheap to clone.
#[derive(Clone)]
pub struct ClusterClient {
    inner: Arc<Inner>,
}

struct Inner {
    base: ClientConfig,
    options: ClusterOptions,
    /// The member connected to first: asked for the view, and used alone when the
    /// server runs alone.
    bootstrap: Client,
    view: RwLock<Arc<Placed>>,
    members: Mutex<HashMap<String, Arc<Member>>>,
    /// Members that left the view, kept (with their connections) for [`DEPARTED_GRACE`]
    /// after they left: a load whose lookup a member leased just before it left is read
    /// there, since a draining server serves its leased reads until it exits.
    departed: Mutex<Vec<(Arc<Member>, Instant)>>,
    counters: Counters,
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How long a member that left the view is still asked for a key its successor lacks:
/// past the servers' default lease TTL (10 s), so every lease it granted has lapsed.
const DEPARTED_GRACE: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    lookup_servers: AtomicU64,
    second_rank_hits: AtomicU64,
    unreachable: AtomicU64,
    view_changes: AtomicU64,
}

/// A view and what placement needs of it.
struct Placed {
    view: ClusterView,
    /// When the view was fetched (members' ages count from then).
    fetched: Instant,
    /// The active members, the ones runs are placed on.
    active: Vec<MemberInfo>,
}

impl Placed {
    fn new(view: ClusterView) -> Placed {
        let active = view
            .members
            .iter()
            .filter(|m| m.state == MemberState::Active)
            .cloned()
            .collect();
        Placed {
            view,
            fetched: Instant::now(),
            active,
        }
    }

    fn alone(&self) -> bool {
        self.view.members.is_empty()
    }

    /// Active members by rank for an anchor: owner first.
    fn ranking(&self, anchor: &[u8]) -> Vec<&MemberInfo> {
        let candidates: Vec<Candidate<'_>> = self
            .active
            .iter()
            .map(|m| Candidate {
                node_id: &m.node_id,
                weight: m.weight,
            })
            .collect();
        placement::rank(self.view.seed, &candidates, anchor)
            .into_iter()
            .map(|i| &self.active[i])
            .collect()
    }

    /// Whether `m` joined within the join window.
    fn recent(&self, m: &MemberInfo) -> bool {
        let age = m.joined_ms_ago as u128 + self.fetched.elapsed().as_millis();
        age < self.view.join_window_ms as u128
    }

    /// The owner of an anchor, and its previous owner: the second-ranked member, when
    /// the owner joined within the join window and after it (the run lived there before
    /// the owner came). Members that joined within [`JOIN_ORDER_SLACK_MS`] of each other
    /// (a cluster starting) count as joining together.
    fn owners(&self, anchor: &[u8]) -> (Option<String>, Option<String>) {
        let ranking = self.ranking(anchor);
        let owner = ranking.first().map(|m| m.node_id.clone());
        let previous = match (ranking.first(), ranking.get(1)) {
            (Some(first), Some(second))
                if self.recent(first)
                    && second.joined_ms_ago > first.joined_ms_ago + JOIN_ORDER_SLACK_MS =>
            {
                Some(second.node_id.clone())
            }
            _ => None,
        };
        (owner, previous)
    }
}

/// One member: its address and (once used) its client.
struct Member {
    info: MemberInfo,
    client: OnceCell<Client>,
    skip_until: Mutex<Option<Instant>>,
    /// Its lookups' round trips, smoothed (nanoseconds; 0 before the first).
    lookup_ns: AtomicU64,
}

impl Member {
    fn new(info: MemberInfo, client: OnceCell<Client>) -> Member {
        Member {
            info,
            client,
            skip_until: Mutex::new(None),
            lookup_ns: AtomicU64::new(0),
        }
    }

    /// Folds one lookup's round trip into the smoothed figure (weight 1/8).
    fn observe(&self, took: Duration) {
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        let old = self.lookup_ns.load(Ordering::Relaxed);
        let new = if old == 0 { ns } else { old - old / 8 + ns / 8 };
        self.lookup_ns.store(new, Ordering::Relaxed);
    }
}

/// Which member a call goes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    /// The member connected to first (a server alone, or the cluster's member of that id).
    Bootstrap,
    Node(String),
}

impl ClusterClient {
    /// Connects to the server of `config` and fetches its view of the cluster. A server
    /// alone (or one too old to know clusters) gives a cluster of one.
    pub async fn connect(config: ClientConfig, options: ClusterOptions) -> Result<ClusterClient> {
        let bootstrap = Client::connect(config.clone()).await?;
        let view = bootstrap.cluster_view().await?;
        let mut members = HashMap::new();
        if let Some(me) = view.members.iter().find(|m| m.node_id == view.node_id) {
            let member = Member::new(me.clone(), OnceCell::new_with(Some(bootstrap.clone())));
            members.insert(me.node_id.clone(), Arc::new(member));
        }
        let inner = Arc::new(Inner {
            base: config,
            options,
            bootstrap,
            view: RwLock::new(Arc::new(Placed::new(view))),
            members: Mutex::new(members),
            departed: Mutex::new(Vec::new()),
            counters: Counters::default(),
            refresher: Mutex::new(None),
        });
        if !inner.view.read().alone() {
            let weak = Arc::downgrade(&inner);
            let every = inner.options.view_refresh;
            *inner.refresher.lock() = Some(tokio::spawn(refresh_views(weak, every)));
        }
        Ok(ClusterClient { inner })
    }

    /// The view in use: members, their states, and the placement settings.
    pub fn view(&self) -> ClusterView {
        self.inner.view.read().view.clone()
    }

    /// What this client counted.
    pub fn counters(&self) -> ClusterCounters {
        let c = &self.inner.counters;
        ClusterCounters {
            lookups: c.lookups.load(Ordering::Relaxed),
            lookup_servers: c.lookup_servers.load(Ordering::Relaxed),
            second_rank_hits: c.second_rank_hits.load(Ordering::Relaxed),
            unreachable: c.unreachable.load(Ordering::Relaxed),
            view_changes: c.view_changes.load(Ordering::Relaxed),
        }
    }

    /// Per member connected to so far, its lookups' round trip (smoothed; zero before the
    /// first).
    pub fn member_latencies(&self) -> Vec<(String, Duration)> {
        let mut out: Vec<(String, Duration)> = self
            .inner
            .members
            .lock()
            .iter()
            .map(|(id, m)| {
                (
                    id.clone(),
                    Duration::from_nanos(m.lookup_ns.load(Ordering::Relaxed)),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// How this client moved value bytes, over every member it has connected to (a server
    /// alone: its one connection).
    pub fn transport_stats(&self) -> crate::TransportStats {
        let mut clients = vec![self.inner.bootstrap.clone()];
        for m in self.inner.members.lock().values() {
            if let Some(c) = m.client.get() {
                if !Arc::ptr_eq(&c.inner, &self.inner.bootstrap.inner) {
                    clients.push(c.clone());
                }
            }
        }
        clients
            .iter()
            .map(Client::transport_stats)
            .fold(crate::TransportStats::default(), |a, b| a.sum(&b))
    }

    /// Fetches the view now (it is also fetched every `view_refresh`).
    pub async fn refresh_view(&self) -> Result<()> {
        self.inner.refresh().await
    }

    /// The node id that owns `key` placed alone (`None` for a server alone).
    pub fn owner_of_key(&self, key: &[u8]) -> Option<String> {
        self.inner.view.read().owners(key).0
    }

    /// The node id that owns position `position` of `chain` (`None` for a server alone).
    pub fn owner_of_position<G, K>(&self, chain: &[G], position: usize) -> Option<String>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        let placed = self.inner.view.read();
        let r = placed.view.run_blocks.max(1) as usize;
        let anchor = first_key(chain, position / r * r)?;
        placed.owners(anchor).0
    }

    /// How many leading positions of `chain` are stored, each position's keys all present
    /// (see [`Client::prefix_len`]), asking each run's owner.
    pub async fn prefix_len<G, K>(&self, chain: &[G]) -> Result<usize>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        Ok(self.lookup(chain, false).await?.len)
    }

    /// [`ClusterClient::prefix_len`], leasing what matched so a following load cannot
    /// miss. Leases the owners took past the match are left to lapse at their TTL.
    pub async fn prefix_len_leased<G, K>(&self, chain: &[G]) -> Result<ClusterMatch>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        self.lookup(chain, true).await
    }

    async fn lookup<G, K>(&self, chain: &[G], lease: bool) -> Result<ClusterMatch>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        let inner = &self.inner;
        inner.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let placed = Arc::clone(&inner.view.read());
        if placed.alone() {
            inner
                .counters
                .lookup_servers
                .fetch_add(1, Ordering::Relaxed);
            return Ok(match lease {
                true => {
                    let m = inner.bootstrap.prefix_len_leased(chain).await?;
                    ClusterMatch {
                        len: m.len,
                        leased_until: m.leased_until,
                        servers: 1,
                    }
                }
                false => ClusterMatch {
                    len: inner.bootstrap.prefix_len(chain).await?,
                    leased_until: None,
                    servers: 1,
                },
            });
        }
        let runs: Vec<Range<usize>> =
            placement::runs(chain.len(), placed.view.run_blocks).collect();
        // Per member, the runs to ask it for, in chain order: the runs it owns, then
        // (a separate query) the runs it owned before a recent joiner took them.
        let mut queries: Vec<(String, bool, Vec<usize>)> = Vec::new();
        let mut add = |node: String, previous: bool, run: usize| match queries
            .iter_mut()
            .find(|(n, p, _)| *n == node && *p == previous)
        {
            Some((_, _, list)) => list.push(run),
            None => queries.push((node, previous, vec![run])),
        };
        for (i, run) in runs.iter().enumerate() {
            let Some(anchor) = first_key(chain, run.start) else {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    "a position has no key",
                ));
            };
            let (owner, previous) = placed.owners(anchor);
            let Some(owner) = owner else {
                return Ok(ClusterMatch {
                    len: 0,
                    leased_until: None,
                    servers: 0,
                });
            };
            add(owner, false, i);
            if let Some(previous) = previous {
                add(previous, true, i);
            }
        }
        let servers = {
            let mut nodes: Vec<&String> = queries.iter().map(|(n, _, _)| n).collect();
            nodes.sort();
            nodes.dedup();
            nodes.len()
        };
        inner
            .counters
            .lookup_servers
            .fetch_add(servers as u64, Ordering::Relaxed);
        let asked = queries.iter().map(|(node, _, list)| {
            let groups: Vec<&[K]> = list
                .iter()
                .flat_map(|&i| chain[runs[i].clone()].iter().map(|g| g.as_ref()))
                .collect();
            async move {
                let Some(client) = inner.client_for(node).await else {
                    return Ok((0, None));
                };
                let started = Instant::now();
                let answer = tokio::time::timeout(inner.options.lookup_timeout, async {
                    if lease {
                        client
                            .prefix_len_leased(&groups)
                            .await
                            .map(|m| (m.len, m.leased_until))
                    } else {
                        client.prefix_len(&groups).await.map(|n| (n, None))
                    }
                })
                .await;
                match answer {
                    Ok(Ok(found)) => {
                        inner.observe(node, started.elapsed());
                        Ok(found)
                    }
                    Ok(Err(e)) if !unreachable(&e) => Err(e),
                    _ => {
                        inner.mark_unreachable(node);
                        Ok((0, None))
                    }
                }
            }
        });
        let answers = join_all(asked).await;
        // Per run: positions found from its start, at the owner or the previous owner.
        let mut found = vec![(0usize, None::<Instant>, false); runs.len()];
        for ((_, previous, list), answer) in queries.iter().zip(answers) {
            let (mut left, until) = answer?;
            for &i in list {
                let got = left.min(runs[i].len());
                left -= got;
                if got > found[i].0 {
                    found[i] = (got, until, *previous);
                }
                if got < runs[i].len() {
                    break;
                }
            }
        }
        let mut len = 0;
        let mut leased_until: Option<Instant> = None;
        for (i, run) in runs.iter().enumerate() {
            let (got, until, from_previous) = found[i];
            if got > 0 {
                leased_until = match (leased_until, until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if from_previous {
                    inner
                        .counters
                        .second_rank_hits
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            len += got;
            if got < run.len() {
                break;
            }
        }
        Ok(ClusterMatch {
            len,
            leased_until,
            servers,
        })
    }

    /// Stores each key of `chain` (position after position, each position's keys in
    /// order) with its value in `values`, at its run's owner; per key the result.
    pub async fn batch_put_chain<G, K, V>(&self, chain: &[G], values: &[V]) -> Vec<Result<()>>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let placed = Arc::clone(&self.inner.view.read());
        let keys = chain_keys(&placed, chain);
        if keys.len() != values.len() {
            let msg = format!("{} keys in the chain, {} values", keys.len(), values.len());
            return vec![Err(Error::new(ErrorCode::InvalidArgument, msg)); values.len()];
        }
        let mut by_owner: HashMap<Target, Vec<usize>> = HashMap::new();
        for (i, (_, target, _)) in keys.iter().enumerate() {
            by_owner.entry(target.clone()).or_default().push(i);
        }
        let mut out: Vec<Result<()>> = vec![Ok(()); keys.len()];
        let puts = by_owner.into_iter().map(|(target, idx)| {
            let items: Vec<(&[u8], &[u8])> = idx
                .iter()
                .map(|&i| (keys[i].0, values[i].as_ref()))
                .collect();
            async move {
                let results = match self.inner.target_client(&target).await {
                    Some(client) => client.batch_put_from(&items).await,
                    None => vec![Err(self.inner.unreachable_error(&target)); items.len()],
                };
                (idx, results)
            }
        });
        for (idx, results) in join_all(puts).await {
            for (i, r) in idx.into_iter().zip(results) {
                out[i] = r;
            }
        }
        out
    }

    /// Loads the first `bufs.len()` keys of `chain` (in [`ClusterClient::batch_put_chain`]'s
    /// order) into `bufs`, each from its run's owner (or, in a join window, its previous
    /// owner); per key the value's length.
    pub async fn batch_get_chain_into<G, K>(
        &self,
        chain: &[G],
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<usize>>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        let placed = Arc::clone(&self.inner.view.read());
        let keys = chain_keys(&placed, chain);
        if bufs.len() > keys.len() {
            let msg = format!("{} buffers for {} keys", bufs.len(), keys.len());
            return vec![Err(Error::new(ErrorCode::InvalidArgument, msg)); bufs.len()];
        }
        let mut slots: Vec<Option<&mut [u8]>> = bufs.iter_mut().map(|b| Some(&mut **b)).collect();
        let mut by_owner: HashMap<Target, Vec<usize>> = HashMap::new();
        for (i, (_, target, _)) in keys.iter().take(slots.len()).enumerate() {
            by_owner.entry(target.clone()).or_default().push(i);
        }
        let mut out: Vec<Option<Result<usize>>> = (0..slots.len()).map(|_| None).collect();
        let mut jobs = Vec::new();
        for (target, idx) in by_owner {
            let mut mine: Vec<&mut [u8]> = idx
                .iter()
                .map(|&i| slots[i].take().expect("each key is in one group"))
                .collect();
            let ks: Vec<&[u8]> = idx.iter().map(|&i| keys[i].0).collect();
            let inner = &self.inner;
            jobs.push(async move {
                let results = match inner.target_client(&target).await {
                    Some(client) => client.batch_get_into(&ks, &mut mine).await,
                    None => vec![Err(inner.unreachable_error(&target)); ks.len()],
                };
                (idx, results, mine)
            });
        }
        let mut retry: HashMap<Target, Vec<(usize, &mut [u8])>> = HashMap::new();
        let mut orphans: Vec<(usize, &mut [u8])> = Vec::new();
        for (idx, results, bufs) in join_all(jobs).await {
            for ((i, r), buf) in idx.into_iter().zip(results).zip(bufs) {
                match (&r, &keys[i].2) {
                    (Err(e), Some(previous)) if e.code() == ErrorCode::NotFound => {
                        retry.entry(previous.clone()).or_default().push((i, buf));
                    }
                    (Err(e), None) if e.code() == ErrorCode::NotFound => {
                        out[i] = Some(r);
                        orphans.push((i, buf));
                    }
                    _ => out[i] = Some(r),
                }
            }
        }
        self.inner.read_at_departed(&keys, orphans, &mut out).await;
        let retries = retry.into_iter().map(|(target, list)| {
            let inner = &self.inner;
            let (idx, mut mine): (Vec<usize>, Vec<&mut [u8]>) = list.into_iter().unzip();
            let ks: Vec<&[u8]> = idx.iter().map(|&i| keys[i].0).collect();
            async move {
                let results = match inner.target_client(&target).await {
                    Some(client) => client.batch_get_into(&ks, &mut mine).await,
                    None => vec![Err(inner.unreachable_error(&target)); ks.len()],
                };
                (idx, results)
            }
        });
        for (idx, results) in join_all(retries).await {
            for (i, r) in idx.into_iter().zip(results) {
                if r.is_ok() {
                    self.inner
                        .counters
                        .second_rank_hits
                        .fetch_add(1, Ordering::Relaxed);
                }
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every key answered"))
            .collect()
    }

    /// Stores one key at its owner (placed by the key itself).
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let (target, _) = self.inner.place_key(key);
        match self.inner.target_client(&target).await {
            Some(client) => client.put_from(key, value).await,
            None => Err(self.inner.unreachable_error(&target)),
        }
    }

    /// Reads one key from its owner (or, in a join window, its previous owner).
    pub async fn get(&self, key: &[u8]) -> Result<Bytes> {
        let (target, previous) = self.inner.place_key(key);
        let first = match self.inner.target_client(&target).await {
            Some(client) => client.get(key).await,
            None => Err(self.inner.unreachable_error(&target)),
        };
        match (first, previous) {
            (Err(e), Some(previous)) if e.code() == ErrorCode::NotFound => {
                let Some(client) = self.inner.target_client(&previous).await else {
                    return Err(e);
                };
                let value = client.get(key).await?;
                self.inner
                    .counters
                    .second_rank_hits
                    .fetch_add(1, Ordering::Relaxed);
                Ok(value)
            }
            (r, _) => r,
        }
    }

    /// Whether one key is stored at its owner.
    pub async fn exists(&self, key: &[u8]) -> Result<bool> {
        let (target, _) = self.inner.place_key(key);
        match self.inner.target_client(&target).await {
            Some(client) => client.exists(key).await,
            None => Ok(false),
        }
    }

    /// Removes one key from its owner.
    pub async fn remove(&self, key: &[u8], force: bool) -> Result<()> {
        let (target, _) = self.inner.place_key(key);
        match self.inner.target_client(&target).await {
            Some(client) => client.remove(key, force).await,
            None => Err(self.inner.unreachable_error(&target)),
        }
    }

    /// Every member and its figures (or why they could not be read).
    pub async fn member_stats(&self) -> Vec<(MemberInfo, Result<ServerStats>)> {
        let placed = Arc::clone(&self.inner.view.read());
        let asks = placed.view.members.iter().map(|m| async move {
            let target = Target::Node(m.node_id.clone());
            let stats = match self.inner.target_client(&target).await {
                Some(c) => c.stats().await,
                None => Err(self.inner.unreachable_error(&target)),
            };
            (m.clone(), stats)
        });
        join_all(asks).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.lock().take() {
            task.abort();
        }
    }
}

/// Every key of a chain with where it goes: (key, owner, previous owner in a join window).
fn chain_keys<'a, G, K>(placed: &Placed, chain: &'a [G]) -> Vec<(&'a [u8], Target, Option<Target>)>
where
    G: AsRef<[K]>,
    K: AsRef<[u8]> + 'a,
{
    let mut keys = Vec::new();
    if placed.alone() {
        for g in chain {
            for k in g.as_ref() {
                keys.push((k.as_ref(), Target::Bootstrap, None));
            }
        }
        return keys;
    }
    for run in placement::runs(chain.len(), placed.view.run_blocks) {
        let (owner, previous) = first_key(chain, run.start)
            .map(|anchor| placed.owners(anchor))
            .unwrap_or((None, None));
        let owner = owner.map_or(Target::Bootstrap, Target::Node);
        let previous = previous.map(Target::Node);
        for g in &chain[run] {
            for k in g.as_ref() {
                keys.push((k.as_ref(), owner.clone(), previous.clone()));
            }
        }
    }
    keys
}

fn first_key<'a, G, K>(chain: &'a [G], position: usize) -> Option<&'a [u8]>
where
    G: AsRef<[K]>,
    K: AsRef<[u8]> + 'a,
{
    chain.get(position)?.as_ref().first().map(|k| k.as_ref())
}

/// Whether an error says the member is gone (or too slow), not that the request was bad.
fn unreachable(e: &Error) -> bool {
    matches!(e.code(), ErrorCode::Unavailable | ErrorCode::Timeout)
}

impl Inner {
    fn place_key(&self, key: &[u8]) -> (Target, Option<Target>) {
        let placed = self.view.read();
        if placed.alone() {
            return (Target::Bootstrap, None);
        }
        let (owner, previous) = placed.owners(key);
        (
            owner.map_or(Target::Bootstrap, Target::Node),
            previous.map(Target::Node),
        )
    }

    async fn target_client(&self, target: &Target) -> Option<Client> {
        match target {
            Target::Bootstrap => Some(self.bootstrap.clone()),
            Target::Node(node) => self.client_for(node).await,
        }
    }

    fn unreachable_error(&self, target: &Target) -> Error {
        let who = match target {
            Target::Bootstrap => self.base.server.clone(),
            Target::Node(n) => format!("member {n}"),
        };
        Error::new(
            ErrorCode::Unavailable,
            format!(
                "{who} is unreachable (skipped for up to {:?})",
                self.options.retry_after
            ),
        )
    }

    fn observe(&self, node: &str, took: Duration) {
        if let Some(m) = self.members.lock().get(node) {
            m.observe(took);
        }
    }

    fn mark_unreachable(&self, node: &str) {
        self.counters.unreachable.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = self.members.lock().get(node) {
            *m.skip_until.lock() = Some(Instant::now() + self.options.retry_after);
        }
    }

    /// The client of member `node`, connected on first use; `None` while it is skipped
    /// as unreachable (or left the view).
    async fn client_for(&self, node: &str) -> Option<Client> {
        let placed = Arc::clone(&self.view.read());
        let member = {
            let mut members = self.members.lock();
            match members.get(node) {
                Some(m) => Arc::clone(m),
                None => {
                    let info = placed.view.members.iter().find(|m| m.node_id == node)?;
                    let m = Arc::new(Member::new(info.clone(), OnceCell::new()));
                    members.insert(node.to_owned(), Arc::clone(&m));
                    m
                }
            }
        };
        if member.skip_until.lock().is_some_and(|t| Instant::now() < t) {
            self.counters.unreachable.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let connect = member.client.get_or_try_init(|| {
            let mut config = self.base.clone();
            config.server = member.info.addr.clone();
            config.server_name = None;
            if self.options.local_node.as_ref().is_some_and(|l| l != node) {
                config.transport = crate::config::Transport::Tcp;
            }
            if !member.info.cert_pem.is_empty() {
                config.trusted_pem = Some(member.info.cert_pem.clone());
            }
            Client::connect(config)
        });
        match connect.await {
            Ok(c) => Some(c.clone()),
            Err(e) => {
                tracing::debug!("member {node} at {}: {e}", member.info.addr);
                self.mark_unreachable(node);
                None
            }
        }
    }

    /// Reads keys their owner lacks at the members that left the view lately, in the
    /// order they left: the owner's predecessor may still serve a read it leased before it
    /// left. A key found there replaces its `NotFound` in `out`.
    async fn read_at_departed(
        &self,
        keys: &[(&[u8], Target, Option<Target>)],
        mut orphans: Vec<(usize, &mut [u8])>,
        out: &mut [Option<Result<usize>>],
    ) {
        let departed: Vec<Client> = {
            let now = Instant::now();
            let departed = self.departed.lock();
            departed
                .iter()
                .filter(|(_, left)| now.duration_since(*left) < DEPARTED_GRACE)
                .filter_map(|(m, _)| m.client.get().cloned())
                .collect()
        };
        for client in departed {
            if orphans.is_empty() {
                return;
            }
            let ks: Vec<&[u8]> = orphans.iter().map(|(i, _)| keys[*i].0).collect();
            let mut bufs: Vec<&mut [u8]> = orphans.iter_mut().map(|(_, b)| &mut **b).collect();
            let results = client.batch_get_into(&ks, &mut bufs).await;
            drop(bufs);
            let mut left = Vec::new();
            for ((i, buf), r) in orphans.into_iter().zip(results) {
                if r.is_ok() {
                    out[i] = Some(r);
                } else {
                    left.push((i, buf));
                }
            }
            orphans = left;
        }
    }

    /// Fetches the view from the first member that answers (the bootstrap first).
    async fn refresh(&self) -> Result<()> {
        let mut last = None;
        let candidates: Vec<Target> = {
            let placed = self.view.read();
            if placed.alone() {
                vec![Target::Bootstrap]
            } else {
                placed
                    .view
                    .members
                    .iter()
                    .map(|m| Target::Node(m.node_id.clone()))
                    .collect()
            }
        };
        for target in candidates {
            let Some(client) = self.target_client(&target).await else {
                continue;
            };
            match tokio::time::timeout(self.options.lookup_timeout, client.cluster_view()).await {
                Ok(Ok(view)) if !view.members.is_empty() => {
                    self.install(view);
                    return Ok(());
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => last = Some(e),
                Err(_) => {}
            }
            if let Target::Node(n) = &target {
                self.mark_unreachable(n);
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::new(
                ErrorCode::Unavailable,
                "no member answered for the cluster view",
            )
        }))
    }

    fn install(&self, view: ClusterView) {
        let mut current = self.view.write();
        let changed = current
            .view
            .members
            .iter()
            .map(|m| (&m.node_id, &m.addr, m.state))
            .ne(view.members.iter().map(|m| (&m.node_id, &m.addr, m.state)));
        // An older epoch from a member that polls etcd later than another: keep ours.
        if view.epoch < current.view.epoch && view.cluster_id == current.view.cluster_id {
            return;
        }
        if changed {
            self.counters.view_changes.fetch_add(1, Ordering::Relaxed);
            // Forget members that left or moved; a member that left is kept apart for a
            // while, for the leased reads it still serves.
            let mut members = self.members.lock();
            let mut departed = self.departed.lock();
            let now = Instant::now();
            departed.retain(|(_, left)| now.duration_since(*left) < DEPARTED_GRACE);
            members.retain(|id, m| {
                let stays = view
                    .members
                    .iter()
                    .any(|v| &v.node_id == id && v.addr == m.info.addr);
                let left = !view.members.iter().any(|v| &v.node_id == id);
                if left && m.client.initialized() {
                    departed.push((Arc::clone(m), now));
                }
                stays
            });
        }
        *current = Arc::new(Placed::new(view));
    }
}

async fn refresh_views(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(e) = inner.refresh().await {
            tracing::debug!("cluster view not refreshed: {e}");
        }
    }
}
