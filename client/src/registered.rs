//! Copies into and out of registered memory: an engine's KV-cache pool, host or device,
//! registered once ([`Client::register_buffer`]) and then named by id and offset. The one
//! place where the client turns an address into a slice or hands it to the device module;
//! each does so under the registration's contract.

use strata_device::MemoryKind;
use strata_proto::{Error, ErrorCode, Result};

use crate::buffers::{fits, no_device_transport, BufferId};
use crate::cache::LeasedLocation;
use crate::client::{missing_answer, Client};
use crate::stats::Counters;

impl Client {
    /// Registers the memory region `[addr, addr + len)` (for example an engine's KV-cache
    /// pool) for direct copies, saying whether it is host memory or device memory of the
    /// device the server's device tier is on. [`Client::get_into_buffer`] and
    /// [`Client::put_from_buffer`] then pick the copy kind: device-to-device into a device
    /// buffer, device-to-host into a host buffer. Overlapping regions are refused.
    ///
    /// # Safety
    /// The region must be valid memory of `kind` (device memory: of the server's device
    /// tier's backend and device) for as long as it stays registered, and must not be
    /// accessed by anything else while a copy into or out of it runs.
    pub unsafe fn register_buffer(
        &self,
        addr: usize,
        len: usize,
        kind: MemoryKind,
    ) -> Result<BufferId> {
        self.inner.buffers.lock().register(addr, len, kind)
    }

    /// The registered region `id` as (address, length, kind).
    fn buffer(&self, id: BufferId) -> Result<(usize, usize, MemoryKind)> {
        self.inner.buffers.lock().region(id)
    }

    /// Copies the value of `key` into registered buffer `id` at `offset`; returns its
    /// length. A device-tier value is copied by the device module (device-to-device or
    /// device-to-host as the buffer's kind says); any other value arrives by shared memory
    /// or QUIC and, for a device buffer, is copied host-to-device.
    pub async fn get_into_buffer(&self, key: &[u8], id: BufferId, offset: usize) -> Result<usize> {
        let region = self.buffer(id)?;
        let (addr, len, kind) = region;
        let room = len.saturating_sub(offset);
        let dst = addr + offset.min(len);
        self.bounded("get", async {
            let link = self.inner.connector.link().await?;
            if let Some(device) = link.route.device() {
                let lease = self
                    .leases_on(&link, &[key])
                    .await
                    .pop()
                    .unwrap_or_else(|| Err(missing_answer()))?;
                self.import_device_segments(&link, [&lease.location]).await;
                if device.covers(&lease.location) {
                    return self.copy_from_device(device, key, &lease, region, offset);
                }
            }
            match kind {
                MemoryKind::Host => {
                    // SAFETY: registered host memory, valid and unshared during the copy
                    // (the registration's contract), `room` bytes from `dst`.
                    let buf = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, room) };
                    self.get_into(key, buf).await
                }
                MemoryKind::Device => {
                    let Some(device) = link.route.device() else {
                        return Err(no_device_transport());
                    };
                    let value = self.get(key).await?;
                    fits(value.len() as u64, room)?;
                    // SAFETY: `dst` is registered device memory with room for the value
                    // (checked); the source is a live host buffer of that length.
                    unsafe {
                        device.device().copy_raw(
                            dst as u64,
                            value.as_ptr() as u64,
                            value.len() as u64,
                            strata_device::CopyKind::HostToDevice,
                        )
                    }
                    .map_err(crate::transport::device::device_error)?;
                    Ok(value.len())
                }
            }
        })
        .await
    }

    /// [`Client::get_into_buffer`] for a batch, as an engine loads a stored prefix into
    /// its KV-cache pool: value `i` goes to `offsets[i]` of buffer `id`; per-key results,
    /// one failure never failing the others. The leases for the whole batch come in one
    /// round trip (per [`MAX_BATCH_KEYS`] keys) and device-tier values are copied by the
    /// device module; a value on another tier comes as [`Client::get_into_buffer`] brings
    /// it. The copies may run side by side, so a value whose range would overlap an
    /// earlier one's is refused (`InvalidArgument`) rather than raced with it.
    pub async fn batch_get_into_buffer<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        id: BufferId,
        offsets: &[usize],
    ) -> Vec<Result<usize>> {
        if let Err(e) = strata_proto::limits::check_paired(keys.len(), offsets.len()) {
            return vec![Err(e); keys.len()];
        }
        let region = match self.buffer(id) {
            Ok(region) => region,
            Err(e) => return vec![Err(e); keys.len()],
        };
        let op = async {
            let link = match self.inner.connector.link().await {
                Ok(link) => link,
                Err(e) => return vec![Err(e); keys.len()],
            };
            let leases = match link.route.device() {
                Some(_) => self.leases_on(&link, keys).await,
                None => vec![Err(no_device_transport()); keys.len()],
            };
            let leased = leases.iter().filter_map(|l| l.as_ref().ok());
            self.import_device_segments(&link, leased.map(|l| &l.location))
                .await;
            let mut out: Vec<Option<Result<usize>>> = vec![None; keys.len()];
            // Copies may run side by side: refuse a value whose range overlaps another's.
            let mut by_offset: Vec<(usize, usize)> = (leases.iter().enumerate())
                .filter_map(|(i, l)| Some((i, l.as_ref().ok()?.location.len as usize)))
                .collect();
            by_offset.sort_unstable_by_key(|&(i, _)| offsets[i]);
            let mut end = 0;
            for (i, len) in by_offset {
                if offsets[i] < end {
                    let msg = format!(
                        "the value for offset {} overlaps another value of the batch",
                        offsets[i]
                    );
                    out[i] = Some(Err(Error::new(ErrorCode::InvalidArgument, msg)));
                } else {
                    end = offsets[i].saturating_add(len);
                }
            }
            let mut copies = Vec::new();
            for (i, lease) in leases.into_iter().enumerate() {
                match (link.route.device(), lease) {
                    _ if out[i].is_some() => {}
                    (Some(device), Ok(lease)) if device.covers(&lease.location) => {
                        copies.push((i, keys[i].as_ref(), lease));
                    }
                    (Some(_), Err(e)) => out[i] = Some(Err(e)),
                    _ => {}
                }
            }
            let bytes = copies.iter().map(|(_, _, l)| l.location.len as usize).sum();
            if let Some(device) = link.route.device() {
                // Off the reactor, on several threads when the batch is large: a
                // prefix's copies would otherwise hold a runtime worker for milliseconds.
                let threads = self.inner.config.shm_copy_threads;
                let copied =
                    crate::copy_pool::copy_all(copies, bytes, threads, |(i, key, lease)| {
                        (
                            i,
                            self.copy_from_device(device, key, &lease, region, offsets[i]),
                        )
                    });
                for (i, result) in copied {
                    out[i] = Some(result);
                }
            }
            let mut results = Vec::with_capacity(keys.len());
            for (i, done) in out.into_iter().enumerate() {
                results.push(match done {
                    Some(result) => result,
                    // Not on the device tier, or no device transport: one at a time.
                    None => self.get_into_buffer(keys[i].as_ref(), id, offsets[i]).await,
                });
            }
            results
        };
        self.bounded_batch("batch_get", keys.len(), op).await
    }

    /// Copies the device-tier value `lease` names into the registered `region` at
    /// `offset`, with the module's copy (device-to-device or device-to-host as the
    /// region's kind says).
    fn copy_from_device(
        &self,
        device: &crate::transport::device::DeviceSegments,
        key: &[u8],
        lease: &LeasedLocation,
        (addr, len, kind): (usize, usize, MemoryKind),
        offset: usize,
    ) -> Result<usize> {
        fits(lease.location.len, len.saturating_sub(offset))?;
        let dst = addr + offset.min(len);
        // SAFETY: the registered region is valid memory of `kind` (the registration's
        // contract) and the value fits at `offset` (checked).
        let copied =
            unsafe { device.read_raw(&lease.location, dst as u64, kind, lease.valid_until) };
        let c = &self.inner.counters;
        if let Ok(n) = copied {
            Counters::count((&c.device_gets, &c.device_get_bytes), n);
        } else {
            self.inner.cache.invalidate(key);
        }
        copied
    }

    /// Stores `len` bytes at `offset` of registered buffer `id` under `key`. Into the
    /// device tier the module copies them (device-to-device from a device buffer);
    /// elsewhere a device buffer is first copied to the host.
    pub async fn put_from_buffer(
        &self,
        key: &[u8],
        id: BufferId,
        offset: usize,
        len: usize,
    ) -> Result<()> {
        let (addr, size, kind) = self.buffer(id)?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{len} bytes at {offset} run past the {size}-byte buffer"),
            ));
        }
        let src = addr + offset;
        let link = self.inner.connector.link().await?;
        match (kind, link.route.device()) {
            (MemoryKind::Host, _) => {
                // SAFETY: registered host memory, valid and not written during the put.
                let value = unsafe { std::slice::from_raw_parts(src as *const u8, len) };
                self.put_from(key, value).await
            }
            (MemoryKind::Device, None) => Err(no_device_transport()),
            (MemoryKind::Device, Some(device)) => {
                let reservation = match self.put_start(key, len as u64).await {
                    Err(e) if e.code() == ErrorCode::AlreadyExists => return Ok(()),
                    other => other?,
                };
                self.import_device_segments(&link, [&reservation.location])
                    .await;
                if !device.covers(&reservation.location) {
                    // Not in the device tier: the bytes go by the host.
                    self.put_revoke(key, reservation.writer).await?;
                    let mut staged = vec![0u8; len];
                    // SAFETY: `src` is registered device memory of `len` bytes; `staged` is
                    // a live host buffer of that length.
                    unsafe {
                        device.device().copy_raw(
                            staged.as_mut_ptr() as u64,
                            src as u64,
                            len as u64,
                            strata_device::CopyKind::DeviceToHost,
                        )
                    }
                    .map_err(crate::transport::device::device_error)?;
                    return self.put_from(key, &staged).await;
                }
                let margin = self.inner.config.lease_margin;
                // SAFETY: registered device memory holding `len` bytes at `src`.
                let written = unsafe {
                    device.write_raw(
                        &reservation.location,
                        src as u64,
                        kind,
                        reservation.deadline,
                        margin,
                    )
                };
                let result = match written {
                    Ok(()) => self.put_end(key, reservation.writer).await,
                    Err(e) => Err(e),
                };
                match &result {
                    Ok(()) => {
                        let c = &self.inner.counters;
                        Counters::count((&c.device_puts, &c.device_put_bytes), len);
                    }
                    Err(_) => {
                        let _ = self.put_revoke(key, reservation.writer).await;
                    }
                }
                result
            }
        }
    }

    /// Forgets a region registered with [`Client::register_buffer`].
    pub fn unregister_buffer(&self, id: BufferId) -> Result<()> {
        self.inner.buffers.lock().unregister(id)
    }

    /// The device module this client copies device memory with: the backend and device of
    /// the server's device tier, when the server is on this host and has one (`None`
    /// otherwise). Callers that copy pieces of registered device memory themselves use it,
    /// so their copies and the client's go through the same module.
    pub async fn device(&self) -> Result<Option<std::sync::Arc<dyn strata_device::Device>>> {
        let link = self.inner.connector.link().await?;
        Ok(link
            .route
            .device()
            .map(|segments| segments.device().clone()))
    }

    /// The registered region holding all of `[addr, addr + len)`: its id, the offset of
    /// `addr` in it, and its memory kind. `InvalidArgument` (naming the address) when no
    /// one region holds the range.
    pub fn registered_containing(
        &self,
        addr: usize,
        len: usize,
    ) -> Result<(BufferId, usize, MemoryKind)> {
        self.inner.buffers.lock().containing(addr, len)
    }

    /// The id of the registered region that starts at `addr` (`NotFound` if none does).
    pub fn registered_at(&self, addr: usize) -> Result<BufferId> {
        self.inner.buffers.lock().starting_at(addr)
    }

    /// The registered regions as `(addr, len)`, by address.
    pub fn registered_buffers(&self) -> Vec<(usize, usize)> {
        self.inner.buffers.lock().list()
    }
}
