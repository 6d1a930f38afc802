//! The systems the workloads measure, as one type: strata in this process, strata over a
//! transport (shared memory, TCP, QUIC: one client each), strata with the engine's pool in
//! device memory, Redis, memcached with extstore, and foyer. Every workload's tasks call
//! them through the same operations: `kvcache` looks up, stores and loads a request's
//! blocks; `mixed` gets and puts single values. Which systems a run sets up, and with what
//! budgets, is the workload's; what each operation means for each system is decided here,
//! once.

use std::sync::Arc;

use strata_client::device::DeviceMemory;
use strata_client::{BufferId, Client, ErrorCode, Transport};
use strata_engine::{PutOptions, Store};

use crate::peers::Memcached;
use crate::values::Values;

/// A system under test, connected, as a workload's task uses it. Cheap to clone: every
/// variant is a handle.
#[derive(Clone)]
pub(crate) enum System {
    /// The engine in this process: no transport at all.
    Embedded(Arc<Store>),
    /// A strata client on the transport it was made for.
    Strata(Arc<Client>),
    /// A strata client whose engine keeps its KV cache in device memory: loads go
    /// device-to-device into each task's pool.
    Device(DeviceInstance),
    /// Values as strings; lookups as pipelined EXISTS, loads as pipelined GET.
    Redis(redis::aio::MultiplexedConnection),
    /// One connection per task.
    Memcached(Arc<Vec<tokio::sync::Mutex<Memcached>>>),
    /// The hybrid cache in this process.
    Foyer(foyer::HybridCache<String, Vec<u8>>),
}

/// The strata clients every workload measures, by the name `--systems` takes: one per
/// transport.
pub(crate) const STRATA_TRANSPORTS: [(&str, Transport); 3] = [
    ("strata-shm", Transport::Shm),
    ("strata-tcp", Transport::Tcp),
    ("strata-quic", Transport::Quic),
];

fn missing(key: &str) -> strata_client::Error {
    strata_client::Error::new(ErrorCode::NotFound, format!("{key} is not stored"))
}

/// An engine instance whose KV-cache pool is device memory (the host-sim backend: shared
/// memory behind the device module's C ABI, its copies memcpy). The blocks sit in the
/// server's device tier; a load takes the batch's leases in one round trip and the module
/// copies each block device-to-device into the task's pool.
#[derive(Clone)]
pub(crate) struct DeviceInstance {
    pub client: Arc<Client>,
    /// Every task's pool (one request's blocks), shared by the instances.
    pub pools: Arc<Vec<DeviceMemory>>,
    /// The pools as registered with this instance's client, by task.
    pub ids: Arc<Vec<BufferId>>,
}

impl System {
    /// The strata client behind this instance, if it has one.
    pub fn client(&self) -> Option<&Arc<Client>> {
        match self {
            System::Strata(c) => Some(c),
            System::Device(d) => Some(&d.client),
            _ => None,
        }
    }
}

impl System {
    /// Leading blocks all of whose rank keys are stored.
    pub async fn lookup(&self, groups: &[Vec<String>]) -> usize {
        match self {
            System::Embedded(s) => s.prefix_len(groups, false).expect("prefix_len").len,
            // Leased, as the engines' backends look up (the load that follows cannot
            // miss): with a protocol 2 server the reply brings the locations too.
            System::Strata(_) | System::Device(_) => {
                let c = self.client().expect("a strata client");
                c.prefix_len_leased(groups).await.expect("prefix_len").len
            }
            System::Redis(conn) => {
                let mut pipe = redis::pipe();
                for key in groups.iter().flatten() {
                    pipe.exists(key);
                }
                let found: Vec<bool> = pipe
                    .query_async(&mut conn.clone())
                    .await
                    .expect("redis EXISTS");
                let ranks = groups.first().map_or(1, Vec::len).max(1);
                found
                    .chunks(ranks)
                    .take_while(|g| g.iter().all(|&f| f))
                    .count()
            }
            System::Memcached(conns) => {
                let mut conn = conns[0].lock().await;
                let mut found = 0;
                for group in groups {
                    for key in group {
                        if !conn.contains(key).await.expect("memcached mg") {
                            return found;
                        }
                    }
                    found += 1;
                }
                found
            }
            System::Foyer(cache) => groups
                .iter()
                .take_while(|g| g.iter().all(|k| cache.contains(k)))
                .count(),
        }
    }

    /// Value bytes this instance's client has sent to its server, over every transport;
    /// `None` for a backend that is not a strata client.
    pub fn bytes_put(&self) -> Option<u64> {
        let c = self.client()?;
        let t = c.transport_stats();
        Some(t.shm_put_bytes + t.quic_put_bytes + t.device_put_bytes + t.tcp_put_bytes)
    }

    /// Stores `keys`; returns how many it stored. A block found stored or being stored by
    /// another request is skipped, moves no bytes, and is not counted. The client cannot
    /// tell a key it found stored from one it stored (it answers `Ok` to both, as the
    /// brief has clients do), so for it the phase counts the bytes its transports moved.
    pub async fn store(&self, keys: &[&str], values: &Values) -> usize {
        use strata_client::ErrorCode::{AlreadyExists, Busy};
        let stored = |result: &strata_client::Result<()>| match result {
            Ok(()) => true,
            // Another request stored the shared block first, or is storing it now (prompts
            // sharing a prefix, looked up before either stored it): an engine skips it.
            Err(e) if e.code() == AlreadyExists || e.code() == Busy => false,
            Err(e) => panic!("store: {e}"),
        };
        match self {
            System::Embedded(s) => {
                let items: Vec<(&str, &[u8])> = keys.iter().map(|&k| (k, values.of(k))).collect();
                s.batch_put(&items, PutOptions::default())
                    .iter()
                    .filter(|r| stored(r))
                    .count()
            }
            System::Strata(_) | System::Device(_) => {
                // From host memory, as for every system: the rows compare loads.
                let c = self.client().expect("a strata client");
                let items: Vec<(&str, &[u8])> = keys.iter().map(|&k| (k, values.of(k))).collect();
                c.batch_put_from(&items)
                    .await
                    .iter()
                    .filter(|r| stored(r))
                    .count()
            }
            System::Redis(conn) => {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.set(key, values.of(key)).ignore();
                }
                let () = pipe
                    .query_async(&mut conn.clone())
                    .await
                    .expect("redis SET");
                keys.len() // SET stores (overwrites) every one
            }
            System::Memcached(conns) => {
                let mut conn = conns[0].lock().await;
                let mut stored = 0;
                for key in keys {
                    stored +=
                        usize::from(conn.set(key, values.of(key)).await.expect("memcached set"));
                }
                stored
            }
            System::Foyer(cache) => {
                for key in keys {
                    cache.insert(key.to_string(), values.of(key).to_vec());
                }
                keys.len()
            }
        }
    }

    /// Loads `keys` into task `task`'s buffers (the engine's own: `bufs` in host memory,
    /// or its device pool), checking each holds its key's value.
    pub async fn load(&self, keys: &[&str], task: usize, bufs: &mut [Vec<u8>], values: &Values) {
        if let System::Device(d) = self {
            let block = values.of(keys.first().copied().unwrap_or_default()).len();
            let offsets: Vec<usize> = (0..keys.len()).map(|k| k * block).collect();
            let results = d
                .client
                .batch_get_into_buffer(keys, d.ids[task], &offsets)
                .await;
            let pool = &d.pools[task];
            for ((result, key), offset) in results.into_iter().zip(keys).zip(offsets) {
                assert_eq!(result.expect("load"), block);
                let read = |at: usize, buf: &mut [u8]| {
                    pool.read((offset + at) as u64, buf).expect("device read");
                };
                assert!(
                    values.check_by(key, read),
                    "{key}: loaded other bytes than stored"
                );
            }
            return;
        }
        let bufs = &mut bufs[..keys.len()];
        let lens: Vec<usize> = bufs.iter().map(Vec::len).collect();
        let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        let results = match self {
            System::Embedded(s) => s.batch_get_into(keys, &mut slices),
            System::Strata(c) => c.batch_get_into(keys, &mut slices).await,
            System::Device(_) => unreachable!("loaded above"),
            System::Redis(conn) => {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.get(key);
                }
                let got: Vec<Vec<u8>> = pipe
                    .query_async(&mut conn.clone())
                    .await
                    .expect("redis GET");
                for (buf, value) in slices.iter_mut().zip(&got) {
                    buf.copy_from_slice(value);
                }
                vec![Ok(lens[0]); keys.len()]
            }
            System::Memcached(conns) => {
                let mut conn = conns[task % conns.len()].lock().await;
                let mut results = Vec::with_capacity(keys.len());
                for (key, buf) in keys.iter().zip(slices.iter_mut()) {
                    let hit = conn.get_into(key, buf).await.expect("memcached get");
                    results.push(if hit {
                        Ok(buf.len())
                    } else {
                        Err(missing(key))
                    });
                }
                results
            }
            System::Foyer(cache) => {
                let mut results = Vec::with_capacity(keys.len());
                for (key, buf) in keys.iter().zip(slices.iter_mut()) {
                    results.push(match cache.get(*key).await.expect("foyer get") {
                        Some(entry) => {
                            buf.copy_from_slice(entry.value());
                            Ok(buf.len())
                        }
                        None => Err(missing(key)),
                    });
                }
                results
            }
        };
        for ((result, len), (key, buf)) in results.into_iter().zip(lens).zip(keys.iter().zip(bufs))
        {
            assert_eq!(result.expect("load"), len);
            assert!(
                values.check(key, buf),
                "{key}: loaded other bytes than stored"
            );
        }
    }
}

impl System {
    /// Gets `key` into `buf`; false on a miss.
    pub async fn get(&self, task: usize, key: &str, buf: &mut [u8]) -> bool {
        match self {
            System::Embedded(store) => match store.get_into(key.as_bytes(), buf) {
                Ok(_) => true,
                Err(e) if e.code() == ErrorCode::NotFound => false,
                Err(e) => panic!("embedded get: {e}"),
            },
            System::Strata(client) | System::Device(DeviceInstance { client, .. }) => {
                match client.get_into(key.as_bytes(), buf).await {
                    Ok(_) => true,
                    Err(e) if e.code() == ErrorCode::NotFound => false,
                    Err(e) => panic!("strata get: {e}"),
                }
            }
            System::Memcached(conns) => conns[task]
                .lock()
                .await
                .get_into(key, buf)
                .await
                .expect("memcached get"),
            System::Foyer(cache) => match cache.get(key).await.expect("foyer get") {
                Some(entry) => {
                    buf.copy_from_slice(entry.value());
                    true
                }
                None => false,
            },
            System::Redis(conn) => {
                let got: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn.clone())
                    .await
                    .expect("redis GET");
                got.map(|v| buf.copy_from_slice(&v)).is_some()
            }
        }
    }

    /// Puts `key`; false where the system refused it for want of space. A key stored, or
    /// being stored, by another writer counts as taken: two tasks that missed the same
    /// block both put it back, and an engine skips a block another one is storing.
    pub async fn put(&self, task: usize, key: &str, value: &[u8]) -> bool {
        let refused = |e: strata_client::Error, what: &str| match e.code() {
            ErrorCode::NoSpace => false,
            ErrorCode::AlreadyExists | ErrorCode::Busy => true,
            _ => panic!("{what} put: {e}"),
        };
        match self {
            System::Embedded(store) => {
                match store.put(key.as_bytes(), value, PutOptions::default()) {
                    Ok(()) => true,
                    Err(e) => refused(e, "embedded"),
                }
            }
            System::Strata(client) | System::Device(DeviceInstance { client, .. }) => {
                match client.put_from(key.as_bytes(), value).await {
                    Ok(()) => true,
                    Err(e) => refused(e, "strata"),
                }
            }
            System::Memcached(conns) => conns[task]
                .lock()
                .await
                .set(key, value)
                .await
                .expect("memcached set"),
            System::Foyer(cache) => {
                cache.insert(key.to_string(), value.to_vec());
                true
            }
            System::Redis(conn) => {
                let () = redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .query_async(&mut conn.clone())
                    .await
                    .expect("redis SET");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{expect_installed, MemcachedServer, RedisServer};
    use strata_engine::{StoreConfig, TierConfig};

    /// Every operation of each workload on `system`: kvcache's store, lookup and load of a
    /// two-block prompt (one rank), and mixed's put and get of single values, checked.
    async fn both_workloads_on(name: &str, system: &System) {
        let values = Values::new(4096);
        let keys = [format!("{name}-block-0"), format!("{name}-block-1")];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let groups: Vec<Vec<String>> = keys.iter().map(|k| vec![k.to_string()]).collect();
        assert_eq!(
            system.lookup(&groups).await,
            0,
            "{name}: nothing stored yet"
        );
        assert_eq!(system.store(&keys, &values).await, 2, "{name}");
        let missing = vec![vec![format!("{name}-missing")]];
        let prompt: Vec<Vec<String>> = groups.iter().cloned().chain(missing).collect();
        assert_eq!(system.lookup(&prompt).await, 2, "{name}: the stored prefix");
        let mut bufs = vec![vec![0u8; 4096]; 2];
        system.load(&keys, 0, &mut bufs, &values).await; // checks the bytes itself

        let key = format!("{name}-single");
        assert!(system.put(0, &key, values.of(&key)).await, "{name}");
        let mut buf = vec![0u8; 4096];
        assert!(system.get(0, &key, &mut buf).await, "{name}");
        assert!(values.check(&key, &buf), "{name}: get returned other bytes");
        assert!(
            !system.get(0, &format!("{name}-absent"), &mut buf).await,
            "{name}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_system_answers_both_workloads_operations() {
        let store = Store::open(StoreConfig {
            tiers: vec![TierConfig::dram(16 << 20)],
            ..StoreConfig::default()
        })
        .unwrap();
        both_workloads_on("embedded", &System::Embedded(Arc::new(store))).await;

        let dir = tempfile::tempdir().unwrap();
        let foyer = {
            use foyer::DeviceBuilder;
            let device = foyer::FsDeviceBuilder::new(dir.path().join("foyer"))
                .with_capacity(16 << 20)
                .build()
                .unwrap();
            foyer::HybridCacheBuilder::new()
                .memory(4 << 20)
                .with_weighter(|_key: &String, value: &Vec<u8>| value.len())
                .storage()
                .with_engine_config(foyer::BlockEngineConfig::new(device))
                .build()
                .await
                .unwrap()
        };
        both_workloads_on("foyer", &System::Foyer(foyer.clone())).await;
        foyer.close().await.unwrap();

        if expect_installed("redis-server", "redis-server") {
            let server = RedisServer::start().expect("redis-server starts");
            let client = redis::Client::open(server.url()).unwrap();
            let conn = client.get_multiplexed_async_connection().await.unwrap();
            both_workloads_on("redis", &System::Redis(conn)).await;
        }
        if expect_installed("memcached", "memcached") {
            let mc_dir = dir.path().join("memcached");
            std::fs::create_dir_all(&mc_dir).unwrap();
            let server =
                MemcachedServer::start(64 << 20, 64 << 20, &mc_dir).expect("memcached starts");
            let conn = Memcached::connect(server.port).await.unwrap();
            let conns = Arc::new(vec![tokio::sync::Mutex::new(conn)]);
            both_workloads_on("memcached", &System::Memcached(conns)).await;
        }
    }
}
