//! The client's operations when value bytes move over the TCP data plane: leases and
//! reservations on QUIC, the bytes on the data connections ([`DataPlane`] runs them).
//!
//! A get takes its leases in one round trip per batch (or from the cache), then reads every
//! value, striped when large, pipelined over the pool. A value whose read fails for a
//! reason a fresh start can mend (the lease lapsed, the object moved, a data connection
//! broke) is read again over QUIC, so a get never fails because of the data plane alone.
//! Puts use the reserve / move / commit machinery of `direct_put`, moving with
//! [`Client::send_in`].

use bytes::Bytes;
use strata_proto::{ErrorCode, Result};

use crate::cache::LeasedLocation;
use crate::client::{missing_answer, Client};
use crate::connection::Link;
use crate::direct::{Moved, Reserved};
use crate::stats::Counters;
use crate::transport::reader::{check_value_fits, destination};
use crate::transport::tcp::{DataPlane, Job};
use crate::transport::Path;

/// Whether a failed data-plane read is worth one more try over QUIC.
fn retry_over_quic(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::LeaseExpired | ErrorCode::Unavailable | ErrorCode::Unauthorized
    )
}

impl Client {
    /// The value of `key`, read over the data plane.
    pub(crate) async fn tcp_get(&self, link: &Link, data: &DataPlane, key: &[u8]) -> Result<Bytes> {
        let lease = self
            .leases_on(link, &[key])
            .await
            .pop()
            .unwrap_or_else(|| Err(missing_answer()))?;
        let mut value = vec![0u8; lease.location.len as usize];
        let mut bufs = [&mut value[..]];
        let mut read = self
            .tcp_read(data, &[key], vec![Ok(lease)], &mut bufs)
            .await;
        read.pop().unwrap_or_else(|| Err(missing_answer()))?;
        Ok(Bytes::from(value))
    }

    /// batch_get_into over the data plane: one lease round trip, then the reads.
    pub(crate) async fn tcp_batch_get_into<K: AsRef<[u8]>>(
        &self,
        link: &Link,
        data: &DataPlane,
        keys: &[K],
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<usize>> {
        let leases = self.leases_on(link, keys).await;
        self.tcp_read(data, keys, leases, bufs).await
    }

    /// Reads each leased value into its buffer; keys whose lease failed keep the failure.
    async fn tcp_read<K: AsRef<[u8]>>(
        &self,
        data: &DataPlane,
        keys: &[K],
        leases: Vec<Result<LeasedLocation>>,
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<usize>> {
        let mut results: Vec<Result<usize>> = Vec::with_capacity(keys.len());
        let mut jobs = Vec::new();
        let mut owner = Vec::new();
        for (i, (lease, buf)) in leases.iter().zip(bufs.iter_mut()).enumerate() {
            let lease = match lease {
                Ok(l) => l,
                Err(e) => {
                    results.push(Err(e.clone()));
                    continue;
                }
            };
            let len = lease.location.len;
            results.push(Ok(len as usize));
            let Some(grant) = lease.grant else {
                // Not signed for the data plane (cannot happen with a server that offered
                // it): read over QUIC below.
                results[i] = Err(strata_proto::Error::new(
                    ErrorCode::Unauthorized,
                    "lease not signed for the data plane",
                ));
                continue;
            };
            let mut rest = match destination(buf, len as usize) {
                Ok(dst) => dst,
                Err(e) => {
                    results[i] = Err(e);
                    continue;
                }
            };
            for stripe in data.stripes(&lease.location, false) {
                let (dst, tail) = rest.split_at_mut((stripe.end - stripe.start) as usize);
                rest = tail;
                jobs.push(Job::Get {
                    key: keys[i].as_ref(),
                    location: lease.location,
                    grant,
                    offset: stripe.start,
                    dst,
                });
                owner.push(i);
            }
        }
        for (i, done) in owner.into_iter().zip(data.run(jobs).await) {
            if let (Err(e), Ok(_)) = (done, &results[i]) {
                results[i] = Err(e);
            }
        }
        for (i, result) in results.iter_mut().enumerate() {
            let key = keys[i].as_ref();
            match result {
                Ok(n) => {
                    let checksum = leases[i].as_ref().map_or(0, |l| l.checksum);
                    if let Err(e) = self.verify(key, &bufs[i][..*n], checksum) {
                        *result = Err(e);
                    } else {
                        Counters::count(self.inner.counters.gets_by(Some(Path::Tcp)), *n);
                    }
                    let on_disk = leases[i]
                        .as_ref()
                        .is_ok_and(|l| !data.sent_in_place(&l.location));
                    if on_disk {
                        // The read may have moved the object into dram: the next get asks
                        // for a fresh lease, which names the dram copy if it did, rather
                        // than keep reading the disk for the cached lease's whole life.
                        self.inner.cache.invalidate(key);
                    }
                }
                Err(e) if leases[i].is_ok() && retry_over_quic(e.code()) => {
                    tracing::debug!("data-plane read of a value failed, reading over QUIC: {e}");
                    self.inner.cache.invalidate(key);
                    *result = self.quic_get_into(key, bufs[i]).await;
                }
                Err(_) => {}
            }
        }
        results
    }

    /// Reads the value at a lease taken earlier, striped when large; no QUIC retry (the
    /// caller asked for this lease's bytes).
    pub(crate) async fn tcp_read_leased(
        &self,
        data: &DataPlane,
        lease: &LeasedLocation,
        buf: &mut [u8],
    ) -> Result<usize> {
        let Some(grant) = lease.grant else {
            return Err(strata_proto::Error::new(
                ErrorCode::InvalidArgument,
                "the lease is not signed for the data plane (taken on another transport)",
            ));
        };
        let key = &lease.key;
        let len = lease.location.len as usize;
        let mut rest = destination(buf, len)?;
        let mut jobs = Vec::new();
        for stripe in data.stripes(&lease.location, false) {
            let (dst, tail) = rest.split_at_mut((stripe.end - stripe.start) as usize);
            rest = tail;
            jobs.push(Job::Get {
                key,
                location: lease.location,
                grant,
                offset: stripe.start,
                dst,
            });
        }
        for done in data.run(jobs).await {
            done?;
        }
        self.verify(key, &buf[..len], lease.checksum)?;
        Counters::count(self.inner.counters.gets_by(Some(Path::Tcp)), len);
        Ok(len)
    }

    /// Sends reserved values over the data plane, striped and pipelined; each with the
    /// checksum of what was sent.
    pub(crate) async fn send_in(
        &self,
        data: &DataPlane,
        items: &[(&[u8], &[u8])],
        reserved: Vec<Reserved>,
    ) -> Vec<Moved> {
        let mut outcome: Vec<Result<()>> = reserved
            .iter()
            .map(|r| check_value_fits(&r.location, items[r.index].1))
            .collect();
        let mut jobs = Vec::new();
        let mut owner = Vec::new();
        for (n, r) in reserved.iter().enumerate() {
            if outcome[n].is_err() {
                continue;
            }
            let (key, value) = items[r.index];
            for stripe in data.stripes(&r.location, true) {
                jobs.push(Job::Put {
                    key,
                    writer: r.writer,
                    offset: stripe.start,
                    src: &value[stripe.start as usize..stripe.end as usize],
                });
                owner.push(n);
            }
        }
        for (n, done) in owner.into_iter().zip(data.run(jobs).await) {
            if let (Err(e), Ok(())) = (done, &outcome[n]) {
                outcome[n] = Err(e);
            }
        }
        reserved
            .into_iter()
            .zip(outcome)
            .map(|(r, sent)| {
                let checksum = sent.map(|()| xxhash_rust::xxh3::xxh3_64(items[r.index].1));
                (r, checksum, Some(Path::Tcp))
            })
            .collect()
    }
}
