//! The client's operations when value bytes move through shared memory: the control round
//! trips on QUIC (leases, reservations, commits), the copies in this process
//! ([`SharedSegments`] does each copy and its checks). The put machinery (reserve, move,
//! commit) serves the TCP data plane too (`crate::tcp`).
//!
//! Batches pay one control round trip per phase, not one per key: one get_locations for a
//! batch of gets; one batch_put_start and one batch_put_finish for a batch of puts. Large
//! batches copy on several threads, because one core's copy does not reach the memory
//! bandwidth of the machine; large copies run on the copy pool ([`crate::copy_pool`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::msg::{
    BatchPutFinishRequest, BatchPutFinishResponse, BatchPutStartRequest, BatchPutStartResponse,
    KeyList, Location, PutStartResult, PutWriteRequest,
};
use strata_proto::wire::{decode, encode_request, Opcode};
use strata_proto::{Error, ErrorCode, Result};
use tokio::runtime::Handle;

use crate::cache::LeasedLocation;
use crate::client::{exchange_on, missing_answer, Client};
use crate::connection::Link;
use crate::copy_pool::{copy_all, off_reactor};
use crate::stats::Counters;
use crate::transport::{Direct, Path, Route};

/// What reading `location` weighs for [`off_reactor`] and [`copy_all`]: its bytes, or, for
/// a read of a file, which waits on the disk however small it is, as much as any copy.
fn read_weight(segments: &Direct, location: &Location) -> usize {
    match segments.path(location) {
        Some(Path::SsdFile) => usize::MAX,
        _ => location.len as usize,
    }
}

/// Whether a direct read's failure should be settled by reading through the server: an
/// ssd record that failed its checksum here is either corrupt (the server's read drops
/// it and says so) or was reused after a forced removal (the server finds what the key
/// holds now).
fn needs_the_server(path: Option<Path>, result: &Result<usize>) -> bool {
    path == Some(Path::SsdFile) && matches!(result, Err(e) if e.code() == ErrorCode::Corrupt)
}

/// Reservations made but neither committed nor revoked yet. Dropped with any left (a copy
/// failed, or the caller dropped the future), it revokes them in the background, so their
/// space returns now rather than at the deadline.
struct Unfinished {
    link: Arc<Link>,
    keys: Vec<Vec<u8>>,
    writers: Vec<u64>,
}

impl Unfinished {
    fn take(&mut self, writer: u64) {
        if let Some(i) = self.writers.iter().position(|&w| w == writer) {
            self.writers.swap_remove(i);
            self.keys.swap_remove(i);
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.writers.is_empty() {
            return;
        }
        let Ok(runtime) = Handle::try_current() else {
            return; // no runtime left: the server revokes at the deadline or disconnect
        };
        let request = BatchPutFinishRequest {
            keys: KeyList::new(&self.keys),
            writers: std::mem::take(&mut self.writers),
            checksums: Vec::new(),
            commit: false,
        };
        let frame = encode_request(Opcode::BatchPutFinish, &request);
        let link = Arc::clone(&self.link);
        runtime.spawn(async move {
            let bound = Duration::from_secs(5);
            let _ = tokio::time::timeout(bound, exchange_on(&link, &frame, &[])).await;
        });
    }
}

/// Sends a batch put_start from a task of its own and waits for its answer. If the caller
/// gives up first (its timeout drops this future) after the server reserved space, the
/// task still reads the answer and revokes what was reserved, rather than leave it held
/// until its deadline.
async fn start_batch(
    link: &Arc<Link>,
    frame: Vec<u8>,
    keys: Vec<Vec<u8>>,
) -> Result<Vec<PutStartResult>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let link = Arc::clone(link);
    tokio::spawn(async move {
        // Bounded like any transfer: the connection's idle timeout ends it anyway.
        let bound = Duration::from_secs(30);
        let answer = match tokio::time::timeout(bound, exchange_on(&link, &frame, &[])).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::new(ErrorCode::Timeout, "put_start got no answer")),
        };
        let answer = answer
            .and_then(|h| decode::<BatchPutStartResponse>(&h))
            .and_then(|r| {
                (r.results.len() == keys.len())
                    .then_some(r.results)
                    .ok_or_else(missing_answer)
            });
        if let Err(Ok(results)) = tx.send(answer) {
            let mut orphaned = Unfinished {
                link,
                keys: Vec::new(),
                writers: Vec::new(),
            };
            for (key, result) in keys.into_iter().zip(results) {
                if let PutStartResult::Started(s) = result {
                    orphaned.keys.push(key);
                    orphaned.writers.push(s.writer);
                }
            }
            drop(orphaned); // Revokes them.
        }
    });
    rx.await
        .unwrap_or_else(|_| Err(Error::new(ErrorCode::Internal, "the put_start task ended")))
}

/// One value of a put batch, reserved and waiting for its bytes.
pub(crate) struct Reserved {
    pub index: usize,
    pub writer: u64,
    pub location: strata_proto::msg::Location,
    pub deadline: Instant,
}

/// A reserved value after its bytes moved: its checksum (0: let the server compute it),
/// and the path to count it under (none: already counted).
pub(crate) type Moved = (Reserved, Result<u64>, Option<Path>);

impl Client {
    /// The lease on `key` when its bytes can be copied from `segments`; `None` when they
    /// lie in a tier this process cannot map (the caller then reads through the server).
    pub(crate) async fn shm_lease(
        &self,
        link: &Link,
        segments: &Direct,
        key: &[u8],
    ) -> Result<Option<LeasedLocation>> {
        let lease = self
            .leases_on(link, &[key])
            .await
            .pop()
            .unwrap_or_else(|| Err(missing_answer()))?;
        self.import_device_segments(link, [&lease.location]).await;
        if segments.covers(&lease.location) {
            return Ok(Some(lease));
        }
        // Not in shared memory (an ssd object, read through the server by key): the lease
        // buys nothing, and a cached one would keep this key off shared memory after the
        // server promotes the object into it.
        self.inner.cache.invalidate(key);
        Ok(None)
    }

    /// Copies the leased value of `key` into `buf`.
    pub(crate) async fn shm_read(
        &self,
        segments: &Direct,
        key: &[u8],
        lease: &LeasedLocation,
        buf: &mut [u8],
    ) -> Result<usize> {
        let leased = segments.path(&lease.location);
        let weight = read_weight(segments, &lease.location);
        let (path, result) = off_reactor(weight, || self.copy_out(segments, lease, buf));
        self.after_read(key, leased, path, &result);
        if needs_the_server(path, &result) {
            return self.quic_get_into(key, buf).await;
        }
        result
    }

    fn copy_out(
        &self,
        segments: &Direct,
        lease: &LeasedLocation,
        buf: &mut [u8],
    ) -> (Option<Path>, Result<usize>) {
        segments.read_lease(lease, buf, self.inner.config.verify_shm_checksums)
    }

    /// Counts a read by the `path` it took, and forgets the key's cached lease where the
    /// next read should ask the server again.
    fn after_read(
        &self,
        key: &[u8],
        leased: Option<Path>,
        path: Option<Path>,
        result: &Result<usize>,
    ) {
        let c = &self.inner.counters;
        match result {
            Ok(n) if leased == Some(Path::SsdFile) => {
                Counters::count(c.gets_by(path), *n);
                // The next read of the key asks the server again: its lease is the only
                // sign of the read the server gets, and it may have moved the object up.
                self.inner.cache.invalidate(key);
            }
            Ok(n) => Counters::count(c.gets_by(path), *n),
            Err(e) if e.code() == ErrorCode::LeaseExpired => {
                c.lease_expired
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.inner.cache.invalidate(key);
            }
            Err(_) => self.inner.cache.invalidate(key),
        }
    }

    /// Copies the value at a location leased earlier (by [`Client::get_locations`]) into
    /// the front of `buf`, through shared memory; returns its length. For engines that
    /// lease a prefix's blocks first and load them later.
    ///
    /// `LeaseExpired` if the lease ended before the copy did (the bytes may have been
    /// overwritten; they are never returned), or if it came from a server instance that
    /// is gone. Over the TCP data plane the server checks the lease: `LeaseExpired` once it
    /// ended, `Unauthorized` for a lease not granted to this client's session.
    /// `InvalidArgument` when this client uses neither shared memory nor the data plane.
    /// An ssd record that fails its checksum here is read again through the server,
    /// which drops a damaged record and answers `Corrupt` (or answers what the key holds
    /// now, if the record was removed and its space reused since the lease).
    pub async fn read_leased(&self, lease: &LeasedLocation, buf: &mut [u8]) -> Result<usize> {
        let link = self.inner.connector.link().await?;
        if lease.instance != link.info.instance {
            return Err(Error::new(
                ErrorCode::LeaseExpired,
                "the lease came from a server instance that is gone",
            ));
        }
        if let Route::Tcp(data) = &link.route {
            let op = self.tcp_read_leased(data, lease, buf);
            return self.bounded("read_leased", op).await;
        }
        let Some(segments) = link.route.local() else {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "reading at a leased location needs the shared-memory transport or the \
                 data plane; use get_into",
            ));
        };
        if lease.instance != segments.instance() {
            return Err(Error::new(
                ErrorCode::LeaseExpired,
                "the lease came from a server instance that is gone",
            ));
        }
        if !segments.covers(&lease.location) {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "the location is in a tier this client cannot map; use get_into",
            ));
        }
        self.shm_read(segments, &lease.key, lease, buf).await
    }

    /// batch_get_into through shared memory: one lease round trip, then the copies; keys
    /// whose bytes cannot be mapped go through the server.
    pub(crate) async fn shm_batch_get_into<K: AsRef<[u8]>>(
        &self,
        link: &Link,
        segments: &Direct,
        keys: &[K],
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<usize>> {
        let leases = self.leases_on(link, keys).await;
        let located = leases
            .iter()
            .filter_map(|l| l.as_ref().ok())
            .map(|l| &l.location);
        self.import_device_segments(link, located).await;
        let mut results: Vec<Option<Result<usize>>> = (0..keys.len()).map(|_| None).collect();
        let mut direct = Vec::new();
        let mut via_server = Vec::new();
        let mut bytes = 0usize;
        for (i, (lease, buf)) in leases.into_iter().zip(bufs.iter_mut()).enumerate() {
            match lease {
                Err(e) => results[i] = Some(Err(e)),
                Ok(l) if segments.covers(&l.location) => {
                    bytes = bytes.saturating_add(read_weight(segments, &l.location));
                    direct.push((i, l, &mut **buf));
                }
                Ok(_) => {
                    // As in `shm_lease`: do not keep a lease on a location served by key.
                    self.inner.cache.invalidate(keys[i].as_ref());
                    via_server.push((i, &mut **buf));
                }
            }
        }
        let threads = self.inner.config.shm_copy_threads;
        let copied = copy_all(direct, bytes, threads, |(i, lease, buf)| {
            let leased = segments.path(&lease.location);
            let (path, result) = self.copy_out(segments, &lease, buf);
            (i, leased, path, result, buf)
        });
        for (i, leased, path, result, buf) in copied {
            self.after_read(keys[i].as_ref(), leased, path, &result);
            if needs_the_server(path, &result) {
                via_server.push((i, buf));
            } else {
                results[i] = Some(result);
            }
        }
        for (i, buf) in via_server {
            results[i] = Some(self.quic_get_into(keys[i].as_ref(), buf).await);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(missing_answer())))
            .collect()
    }

    /// Puts that move their bytes themselves (shared memory, device copies, the TCP data
    /// plane): reserve every item in one round trip, move each value into its reserved
    /// extent, commit the moved ones in one round trip (with the checksums the client
    /// computed, so the server reads no bytes). An item that already exists counts as
    /// stored. Failed or abandoned reservations are revoked.
    pub(crate) async fn direct_put(
        &self,
        link: &Arc<Link>,
        items: &[(&[u8], &[u8])],
        pin: bool,
        placement: strata_proto::msg::Placement,
    ) -> Vec<Result<()>> {
        let mut results: Vec<Option<Result<()>>> = (0..items.len()).map(|_| None).collect();
        let request = BatchPutStartRequest {
            keys: KeyList::new(items.iter().map(|(k, _)| k)),
            lens: items.iter().map(|(_, v)| v.len() as u64).collect(),
            pin,
            placement,
        };
        let frame = encode_request(Opcode::BatchPutStart, &request);
        let sent = Instant::now();
        let keys = items.iter().map(|(k, _)| k.to_vec()).collect();
        let answer = start_batch(link, frame, keys).await;
        let started = match answer {
            Ok(started) => started,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut unfinished = Unfinished {
            link: Arc::clone(link),
            keys: Vec::new(),
            writers: Vec::new(),
        };
        let mut reserved = Vec::new();
        for (index, result) in started.into_iter().enumerate() {
            match result {
                PutStartResult::Started(s) => {
                    unfinished.keys.push(items[index].0.to_vec());
                    unfinished.writers.push(s.writer);
                    reserved.push(Reserved {
                        index,
                        writer: s.writer,
                        location: s.location,
                        deadline: sent + Duration::from_millis(s.deadline_ms),
                    });
                }
                PutStartResult::Failed(f) => {
                    let e = Error::from(f);
                    // Same key, same bytes: a value already stored is this one.
                    results[index] = Some(if e.code() == ErrorCode::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    });
                }
            }
        }

        let written = match &link.route {
            Route::Local(segments) => self.copy_in(link, segments, items, reserved).await,
            Route::Tcp(data) => self.send_in(data, items, reserved).await,
            Route::Quic => {
                let e = Error::new(ErrorCode::Internal, "a QUIC route moves no bytes itself");
                reserved
                    .into_iter()
                    .map(|r| (r, Err(e.clone()), None))
                    .collect()
            }
        };

        // The copy runs off the reactor, where the caller's timeout cannot interrupt it:
        // enforce the transfer timeout here, before committing (what was reserved is
        // revoked by `unfinished`).
        let limit = self.inner.config.transfer_timeout;
        if sent.elapsed() > limit {
            let e = crate::client::timed_out("put", limit);
            return items.iter().map(|_| Err(e.clone())).collect();
        }
        let mut commit = Vec::new();
        for (r, copied, path) in written {
            match copied {
                Ok(checksum) => commit.push((r, checksum, path)),
                Err(e) => results[r.index] = Some(Err(e)),
            }
        }
        if !commit.is_empty() {
            let request = BatchPutFinishRequest {
                keys: KeyList::new(commit.iter().map(|(r, _, _)| items[r.index].0)),
                writers: commit.iter().map(|(r, _, _)| r.writer).collect(),
                checksums: commit.iter().map(|(_, c, _)| *c).collect(),
                commit: true,
            };
            let frame = encode_request(Opcode::BatchPutFinish, &request);
            let answer = exchange_on(link, &frame, &[])
                .await
                .and_then(|h| decode::<BatchPutFinishResponse>(&h));
            match answer {
                Ok(finished) => {
                    let c = &self.inner.counters;
                    for (r, _, path) in &commit {
                        unfinished.take(r.writer);
                        let len = items[r.index].1.len();
                        if let Some(path) = path {
                            Counters::count(c.puts_by(*path), len);
                        }
                        results[r.index] = Some(Ok(()));
                    }
                    for failed in finished.errors {
                        let Some((r, _, _)) = commit.get(failed.index as usize) else {
                            continue;
                        };
                        results[r.index] = Some(Err(failed.error.into()));
                    }
                }
                Err(e) => {
                    for (r, _, _) in &commit {
                        results[r.index] = Some(Err(e.clone()));
                    }
                }
            }
        }
        drop(unfinished); // revokes what was not committed
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(missing_answer())))
            .collect()
    }

    /// Copies reserved values in this process (shared memory, device copies); values in a
    /// tier this process cannot map go through the server. Each with the path that moved
    /// it, when that path still has to be counted.
    async fn copy_in(
        &self,
        link: &Link,
        segments: &Direct,
        items: &[(&[u8], &[u8])],
        reserved: Vec<Reserved>,
    ) -> Vec<Moved> {
        self.import_device_segments(link, reserved.iter().map(|r| &r.location))
            .await;
        let (mapped, elsewhere): (Vec<Reserved>, Vec<Reserved>) = reserved
            .into_iter()
            .partition(|r| segments.covers_for_write(&r.location));
        let bytes = mapped.iter().map(|r| r.location.len as usize).sum();
        let margin = self.inner.config.lease_margin;
        let threads = self.inner.config.shm_copy_threads;
        let mut written = copy_all(mapped, bytes, threads, |r| {
            let value = items[r.index].1;
            let copied = segments.write(&r.location, value, r.deadline, margin);
            let path = segments.path(&r.location);
            (r, copied, path)
        });
        for r in elsewhere {
            // A tier this process cannot map: the bytes go through the server (counted
            // there).
            let copied = self
                .put_write_on(link, items[r.index].0, &r, items[r.index].1)
                .await;
            written.push((r, copied.map(|()| 0), None));
        }
        written
    }

    /// Imports the device segments `locations` name that this process has not imported
    /// yet (one round trip for the server's list; nothing when all are known or the link
    /// has no device transport). A failure leaves those locations to the server.
    pub(crate) async fn import_device_segments<'l>(
        &self,
        link: &Link,
        locations: impl IntoIterator<Item = &'l strata_proto::msg::Location>,
    ) {
        let Some(device) = link.route.device() else {
            return;
        };
        if !locations.into_iter().any(|l| device.missing(l)) {
            return;
        }
        let frame = strata_proto::wire::encode_bare_request(Opcode::DeviceSegments);
        let listed = exchange_on(link, &frame, &[])
            .await
            .and_then(|h| decode::<strata_proto::msg::DeviceSegmentsResponse>(&h));
        match listed {
            Ok(listed) => {
                let device = Arc::clone(device);
                let import = move || device.refresh(&listed.segments);
                // Importing maps memory: off the reactor.
                let _ = tokio::task::spawn_blocking(import).await;
            }
            Err(e) => tracing::debug!("device segments not listed: {e}"),
        }
    }

    async fn put_write_on(
        &self,
        link: &Link,
        key: &[u8],
        r: &Reserved,
        value: &[u8],
    ) -> Result<()> {
        let header = PutWriteRequest {
            key: key.to_vec(),
            writer: r.writer,
            offset: 0,
            len: value.len() as u64,
        };
        let frame = encode_request(Opcode::PutWrite, &header);
        exchange_on(link, &frame, value).await?;
        let c = &self.inner.counters;
        Counters::count((&c.quic_puts, &c.quic_put_bytes), value.len());
        Ok(())
    }
}
