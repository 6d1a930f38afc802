//! This server's membership of a cluster: its record in etcd, kept alive by a lease, and
//! the view of every member that the service hands to clients.
//!
//! Layout under `/strata/v1/<cluster-id>/` (docs/cluster.md): `config` (JSON
//! [`ClusterRecord`], written once by the first server) and `members/<node-id>` (JSON
//! [`MemberRecord`], bound to the member's lease). Nothing per key lives in etcd.
//!
//! One thread renews the lease every TTL/3 and reads the members every TTL/8 (at most
//! 1 s). When etcd cannot be reached the last view stands and the service goes on; once
//! etcd answers again the thread renews or re-registers, and for one TTL after an outage
//! the view only gains members, so members whose leases lapsed while etcd was away (and
//! are re-registering) do not flap out of the clients' views.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use strata_proto::msg::{ClusterViewResponse, MemberInfo, MemberState};
use strata_proto::placement;

use super::etcd::{Etcd, EtcdError};

/// How this server takes part in a cluster (the `--etcd-endpoints` family of flags).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// etcd's client URLs.
    pub etcd_endpoints: Vec<String>,
    /// TLS for `https://` endpoints.
    pub etcd_tls: super::etcd::EtcdTls,
    /// Which cluster: the etcd prefix `/strata/v1/<cluster_id>/`.
    pub cluster_id: String,
    /// This server's stable id.
    pub node_id: String,
    /// `host:port` clients reach this server's QUIC service at.
    pub advertise: String,
    /// The member key's lease TTL.
    pub member_ttl: Duration,
    /// This server's share of the keys relative to the others.
    pub weight: f64,
    /// Positions per run: the cluster's, if `None`; must match it otherwise.
    pub run_blocks: Option<u32>,
    /// Placement seed: the cluster's, if `None`; must match it otherwise.
    pub seed: Option<u64>,
    /// After a member joins, a miss at it is also looked up at the run's previous owner
    /// for this long.
    pub join_window: Duration,
}

/// What this server says about itself in its member record.
#[derive(Clone, Debug)]
pub struct LocalMember {
    /// Host id ([`strata_proto::host_id`]).
    pub host_id: String,
    /// Bytes of all its tiers.
    pub capacity: u64,
    /// Its self-signed certificate (PEM), or empty under an operator's CA.
    pub cert_pem: String,
}

/// `config` in etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// [`placement::SCHEME`].
    pub scheme: String,
    /// Placement seed.
    pub seed: u64,
    /// Positions per run.
    pub run_blocks: u32,
}

/// `members/<node-id>` in etcd.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Node id (the key's last part, repeated for readers of the value alone).
    pub node_id: String,
    /// QUIC `host:port`.
    pub addr: String,
    /// Host id.
    pub host_id: String,
    /// Weight.
    pub weight: f64,
    /// `active` or `draining`.
    pub state: String,
    /// Bytes of all its tiers.
    pub capacity: u64,
    /// Self-signed certificate (PEM), or empty.
    pub cert_pem: String,
    /// When it registered, milliseconds since the Unix epoch by its clock.
    pub joined_unix_ms: u64,
}

impl MemberRecord {
    fn info(&self, now_unix_ms: u64) -> MemberInfo {
        MemberInfo {
            node_id: self.node_id.clone(),
            addr: self.addr.clone(),
            host_id: self.host_id.clone(),
            weight: self.weight,
            state: if self.state == "draining" {
                MemberState::Draining
            } else {
                MemberState::Active
            },
            capacity: self.capacity,
            cert_pem: self.cert_pem.clone(),
            joined_ms_ago: now_unix_ms.saturating_sub(self.joined_unix_ms),
        }
    }
}

/// The member view the service answers `ClusterView` with (empty for a server alone),
/// and how membership is faring, for the metrics.
#[derive(Default)]
pub struct ClusterState {
    view: RwLock<Option<(Arc<ClusterViewResponse>, Instant)>>,
    /// The last etcd call was answered.
    pub etcd_up: AtomicBool,
    /// etcd calls that got no answer.
    pub etcd_errors: AtomicU64,
    /// Member records registered (1 at join, +1 per re-registration).
    pub registrations: AtomicU64,
}

impl ClusterState {
    /// The view now (members' ages advanced to the present), or the empty view of a
    /// server running alone.
    pub fn view(&self) -> ClusterViewResponse {
        match &*self.view.read() {
            Some((view, at)) => {
                let mut view = (**view).clone();
                let since = at.elapsed().as_millis() as u64;
                for m in &mut view.members {
                    m.joined_ms_ago = m.joined_ms_ago.saturating_add(since);
                }
                view
            }
            None => ClusterViewResponse {
                cluster_id: String::new(),
                epoch: 0,
                scheme: placement::SCHEME.into(),
                seed: 0,
                run_blocks: 0,
                join_window_ms: 0,
                node_id: String::new(),
                members: Vec::new(),
            },
        }
    }

    /// Members in the view (0 alone), and its epoch.
    pub fn summary(&self) -> (usize, u64) {
        match &*self.view.read() {
            Some((v, _)) => (v.members.len(), v.epoch),
            None => (0, 0),
        }
    }

    /// Active and draining members in the view, and its epoch.
    pub fn counts(&self) -> (usize, usize, u64) {
        match &*self.view.read() {
            Some((v, _)) => {
                let active = v
                    .members
                    .iter()
                    .filter(|m| m.state == MemberState::Active)
                    .count();
                (active, v.members.len() - active, v.epoch)
            }
            None => (0, 0, 0),
        }
    }

    fn set(&self, view: ClusterViewResponse) {
        *self.view.write() = Some((Arc::new(view), Instant::now()));
    }
}

/// A registered membership; [`Membership::leave`] ends it.
pub struct Membership {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    etcd: Etcd,
    config: ClusterConfig,
    cluster: ClusterRecord,
    member_key: String,
    record: Mutex<MemberRecord>,
    lease: Mutex<i64>,
    state: Arc<ClusterState>,
    /// Set to stop the thread; the condvar wakes it.
    stop: (Mutex<bool>, Condvar),
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn prefix(cluster_id: &str) -> String {
    format!("/strata/v1/{cluster_id}/")
}

/// Checks a node or cluster id: what may stand in an etcd key and a metric label.
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {id:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'"
        ))
    }
}

impl Membership {
    /// Joins the cluster: checks (or writes) its config, registers this server's record
    /// under a new lease, reads the first view into `state`, and starts the thread that
    /// keeps all three. Blocking. Refuses a config that differs from this server's flags
    /// and a node id another live server holds.
    pub fn join(
        config: ClusterConfig,
        me: LocalMember,
        state: Arc<ClusterState>,
    ) -> Result<Membership, String> {
        check_id("cluster id", &config.cluster_id)?;
        check_id("node id", &config.node_id)?;
        if !(config.weight.is_finite() && config.weight > 0.0) {
            return Err(format!(
                "weight {} must be a positive number",
                config.weight
            ));
        }
        let timeout =
            (config.member_ttl / 3).clamp(Duration::from_millis(300), Duration::from_secs(2));
        let etcd = Etcd::new(&config.etcd_endpoints, timeout, &config.etcd_tls)?;
        let cluster_id = config.cluster_id.clone();
        let etcd_err = move |e: EtcdError| format!("joining cluster {cluster_id}: {e}");
        let cluster = agree_on_config(&etcd, &config).map_err(|e| match e {
            Agreement::Etcd(e) => etcd_err(e),
            Agreement::Refused(msg) => msg,
        })?;
        let member_key = format!("{}members/{}", prefix(&config.cluster_id), config.node_id);
        let record = MemberRecord {
            node_id: config.node_id.clone(),
            addr: config.advertise.clone(),
            host_id: me.host_id,
            weight: config.weight,
            state: "active".into(),
            capacity: me.capacity,
            cert_pem: me.cert_pem,
            joined_unix_ms: now_unix_ms(),
        };
        let value = serde_json::to_vec(&record).expect("a member record serializes");
        let lease = etcd.grant(config.member_ttl).map_err(&etcd_err)?;
        // A server restarted after a kill finds its old record until that lease lapses:
        // wait that out; a record still there after it belongs to a live server.
        let deadline = Instant::now() + config.member_ttl + Duration::from_secs(1);
        loop {
            if etcd.create(&member_key, &value, lease).map_err(&etcd_err)? {
                break;
            }
            if Instant::now() >= deadline {
                let _ = etcd.revoke(lease);
                let holder = etcd
                    .get(&member_key)
                    .ok()
                    .flatten()
                    .and_then(|kv| serde_json::from_slice::<MemberRecord>(&kv.value).ok())
                    .map_or_else(
                        || "another server".to_owned(),
                        |r| format!("the server at {}", r.addr),
                    );
                return Err(format!(
                    "node id {:?} is already a live member of cluster {:?} ({holder}); give \
                     this server its own --node-id (or stop the other one)",
                    config.node_id, config.cluster_id
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        tracing::info!(
            cluster = %config.cluster_id,
            node = %config.node_id,
            lease = format_args!("{lease:x}"),
            "joined the cluster"
        );
        state.registrations.fetch_add(1, Ordering::Relaxed);
        state.etcd_up.store(true, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            etcd,
            config,
            cluster,
            member_key,
            record: Mutex::new(record),
            lease: Mutex::new(lease),
            state,
            stop: (Mutex::new(false), Condvar::new()),
        });
        let mut keeper = Keeper::new(&shared);
        keeper.poll(&shared).map_err(&etcd_err)?;
        let thread = std::thread::Builder::new()
            .name("strata-membership".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || keeper.run(&shared)
            })
            .map_err(|e| format!("starting the membership thread: {e}"))?;
        Ok(Membership {
            shared,
            thread: Some(thread),
        })
    }

    /// Leaves the cluster: marks this member draining, stops renewing and revokes its
    /// lease, which deletes its record at once. Blocking; etcd being away only logs.
    pub fn leave(mut self) {
        self.stop_thread();
        let s = &self.shared;
        let lease = *s.lease.lock().unwrap();
        let draining = {
            let mut r = s.record.lock().unwrap();
            r.state = "draining".into();
            serde_json::to_vec(&*r).expect("a member record serializes")
        };
        if let Err(e) = s.etcd.put(&s.member_key, &draining, lease) {
            tracing::warn!("marking this member draining: {e}");
        }
        match s.etcd.revoke(lease) {
            Ok(()) => tracing::info!(node = %s.config.node_id, "left the cluster"),
            Err(e) => tracing::warn!("revoking the member lease (it lapses by itself): {e}"),
        }
    }

    fn stop_thread(&mut self) {
        let (stop, wake) = &self.shared.stop;
        *stop.lock().unwrap() = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

enum Agreement {
    Etcd(EtcdError),
    Refused(String),
}

/// Reads the cluster's config, writing this server's if there is none; refuses a
/// config that differs from what this server was told.
fn agree_on_config(etcd: &Etcd, config: &ClusterConfig) -> Result<ClusterRecord, Agreement> {
    let key = format!("{}config", prefix(&config.cluster_id));
    let mine = ClusterRecord {
        scheme: placement::SCHEME.into(),
        seed: config.seed.unwrap_or(placement::DEFAULT_SEED),
        run_blocks: config.run_blocks.unwrap_or(placement::DEFAULT_RUN_BLOCKS),
    };
    let value = serde_json::to_vec(&mine).expect("a config serializes");
    if etcd.create(&key, &value, 0).map_err(Agreement::Etcd)? {
        tracing::info!(cluster = %config.cluster_id, ?mine, "wrote the cluster's config");
        return Ok(mine);
    }
    let theirs = etcd
        .get(&key)
        .map_err(Agreement::Etcd)?
        .ok_or_else(|| Agreement::Refused(format!("{key} vanished while joining")))?;
    let theirs: ClusterRecord = serde_json::from_slice(&theirs.value)
        .map_err(|e| Agreement::Refused(format!("{key} in etcd is not a strata config: {e}")))?;
    let differs = theirs.scheme != mine.scheme
        || config.seed.is_some_and(|s| s != theirs.seed)
        || config.run_blocks.is_some_and(|r| r != theirs.run_blocks);
    if differs {
        return Err(Agreement::Refused(format!(
            "cluster {:?} places by {} (seed {}, runs of {} blocks) but this server was \
             started for {} (seed {}, runs of {}): refusing to join; drop the placement \
             flags or fix them",
            config.cluster_id,
            theirs.scheme,
            theirs.seed,
            theirs.run_blocks,
            mine.scheme,
            mine.seed,
            mine.run_blocks
        )));
    }
    Ok(theirs)
}

/// The membership thread's state.
struct Keeper {
    renew_every: Duration,
    poll_every: Duration,
    next_renewal: Instant,
    /// etcd did not answer the last call.
    in_outage: bool,
    /// Until then the view only gains members (one TTL after an outage ends).
    hold_members_until: Option<Instant>,
}

impl Keeper {
    fn new(shared: &Shared) -> Keeper {
        let ttl = shared.config.member_ttl;
        Keeper {
            renew_every: ttl / 3,
            poll_every: (ttl / 8).clamp(Duration::from_millis(100), Duration::from_secs(1)),
            next_renewal: Instant::now() + ttl / 3,
            in_outage: false,
            hold_members_until: None,
        }
    }

    fn run(&mut self, shared: &Shared) {
        loop {
            {
                let (stop, wake) = &shared.stop;
                let stopped = stop.lock().unwrap();
                let (stopped, _) = wake
                    .wait_timeout_while(stopped, self.poll_every, |s| !*s)
                    .unwrap();
                if *stopped {
                    return;
                }
            }
            if Instant::now() >= self.next_renewal {
                self.renew(shared);
            }
            if let Err(e) = self.poll(shared) {
                self.outage(shared, &e);
            }
        }
    }

    fn outage(&mut self, shared: &Shared, e: &EtcdError) {
        shared.state.etcd_errors.fetch_add(1, Ordering::Relaxed);
        shared.state.etcd_up.store(false, Ordering::Relaxed);
        if !self.in_outage {
            tracing::warn!("etcd unreachable, serving with the last cluster view: {e}");
        }
        self.in_outage = true;
    }

    fn back(&mut self, shared: &Shared) {
        shared.state.etcd_up.store(true, Ordering::Relaxed);
        if self.in_outage {
            tracing::info!("etcd answers again");
            self.in_outage = false;
            self.hold_members_until = Some(Instant::now() + shared.config.member_ttl);
        }
    }

    fn renew(&mut self, shared: &Shared) {
        let lease = *shared.lease.lock().unwrap();
        match shared.etcd.keep_alive(lease) {
            Ok(Some(_)) => {
                self.back(shared);
                self.next_renewal = Instant::now() + self.renew_every;
            }
            Ok(None) => {
                self.back(shared);
                match self.register_again(shared) {
                    Ok(()) => self.next_renewal = Instant::now() + self.renew_every,
                    Err(e) => {
                        tracing::warn!("re-registering: {e}");
                        self.next_renewal = Instant::now();
                    }
                }
            }
            Err(e) => {
                self.outage(shared, &e);
                // Try again at the next poll: the lease may still be saved.
                self.next_renewal = Instant::now();
            }
        }
    }

    /// The lease lapsed (etcd was away longer than the TTL): a new lease, the same record.
    fn register_again(&mut self, shared: &Shared) -> Result<(), String> {
        let lease = shared
            .etcd
            .grant(shared.config.member_ttl)
            .map_err(|e| e.to_string())?;
        let value = serde_json::to_vec(&*shared.record.lock().unwrap()).expect("serializes");
        if !shared
            .etcd
            .create(&shared.member_key, &value, lease)
            .map_err(|e| e.to_string())?
        {
            let _ = shared.etcd.revoke(lease);
            return Err(format!(
                "{} is held by another server: this node id is taken",
                shared.member_key
            ));
        }
        *shared.lease.lock().unwrap() = lease;
        shared.state.registrations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            lease = format_args!("{lease:x}"),
            "registered again after the lease lapsed"
        );
        Ok(())
    }

    /// Reads the members into the view.
    fn poll(&mut self, shared: &Shared) -> Result<(), EtcdError> {
        let members_prefix = format!("{}members/", prefix(&shared.config.cluster_id));
        let (epoch, kvs) = shared.etcd.range_prefix(&members_prefix)?;
        self.back(shared);
        let now = now_unix_ms();
        let mut members: Vec<MemberInfo> = kvs
            .iter()
            .filter_map(
                |kv| match serde_json::from_slice::<MemberRecord>(&kv.value) {
                    Ok(r) => Some(r.info(now)),
                    Err(e) => {
                        let key = String::from_utf8_lossy(&kv.key);
                        tracing::warn!("ignoring member record {key}: {e}");
                        None
                    }
                },
            )
            .collect();
        let me = &shared.config.node_id;
        if !members.iter().any(|m| &m.node_id == me) {
            // Re-registering, or etcd answered before our record: we are still serving.
            members.push(shared.record.lock().unwrap().info(now));
        }
        if self.hold_members_until.is_some_and(|t| Instant::now() < t) {
            for old in shared.state.view().members {
                if !members.iter().any(|m| m.node_id == old.node_id) {
                    members.push(old);
                }
            }
        } else {
            self.hold_members_until = None;
        }
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        shared.state.set(ClusterViewResponse {
            cluster_id: shared.config.cluster_id.clone(),
            epoch,
            scheme: shared.cluster.scheme.clone(),
            seed: shared.cluster.seed,
            run_blocks: shared.cluster.run_blocks,
            join_window_ms: shared.config.join_window.as_millis() as u64,
            node_id: me.clone(),
            members,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("node id", "node-1.a_b").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            let e = check_id("node id", bad).unwrap_err();
            assert!(e.contains("node id"), "{e}");
        }
    }

    #[test]
    fn a_server_alone_has_an_empty_view() {
        let s = ClusterState::default();
        assert!(s.view().members.is_empty());
        assert_eq!(s.summary(), (0, 0));
    }
}
