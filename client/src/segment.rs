//! Device memory an engine process contributes to the server's device tier.
//!
//! [`Client::mount_segment`] allocates through the device module in this process, exports
//! the allocation and has the server import it; a background task heart-beats it. The
//! [`MountedSegment`] owns the memory: [`MountedSegment::unmount`] gives it back gracefully
//! (the server moves the objects out first), and dropping it without that unmounts in the
//! background before the memory is freed. If the process dies, the heart-beats stop and
//! the server drops the segment with its objects.

use std::sync::Arc;
use std::time::Duration;

use strata_device::{Device, DeviceMemory};
use strata_proto::msg::{MountSegmentRequest, SegmentRef, UnmountResponse};
use strata_proto::wire::{decode, encode_request, Opcode};
use strata_proto::{Error, ErrorCode, Result};

use crate::client::{exchange_on, Client};
use crate::connection::Connector;
use crate::transport::device::device_error;

/// A segment of device memory mounted into the server's device tier.
pub struct MountedSegment {
    segment: SegmentRef,
    /// Taken by `unmount`; otherwise freed by the drop's background unmount.
    memory: Option<DeviceMemory>,
    connector: Arc<Connector>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MountedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountedSegment")
            .field("segment", &self.segment.segment)
            .field("memory", &self.memory)
            .finish()
    }
}

async fn send_unmount(connector: &Connector, segment: SegmentRef) -> Result<UnmountResponse> {
    let link = connector.link().await?;
    let frame = encode_request(Opcode::UnmountSegment, &segment);
    decode::<UnmountResponse>(&exchange_on(&link, &frame, &[]).await?)
}

impl MountedSegment {
    /// The segment's number in the server's device tier.
    pub fn segment(&self) -> u32 {
        self.segment.segment
    }

    /// The memory (this process allocated it; the server places objects in it).
    pub fn memory(&self) -> &DeviceMemory {
        self.memory.as_ref().expect("present until unmount")
    }

    /// Takes the segment back: the server stops placing objects there, moves the ones it
    /// holds down to dram (waiting at most a lease time for leased ones) and says how many
    /// moved and how many it had to drop. The memory is freed after the server let go.
    pub async fn unmount(mut self) -> Result<UnmountResponse> {
        self.heartbeat.abort();
        let answer = send_unmount(&self.connector, self.segment).await;
        drop(self.memory.take());
        answer
    }
}

impl Drop for MountedSegment {
    fn drop(&mut self) {
        self.heartbeat.abort();
        let Some(memory) = self.memory.take() else {
            return; // unmounted
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to tell the server: it drops the segment when heart-beats stop.
            // The memory must outlive the server's import meanwhile.
            std::mem::forget(memory);
            return;
        };
        let connector = Arc::clone(&self.connector);
        let segment = self.segment;
        runtime.spawn(async move {
            let bound = Duration::from_secs(30);
            let _ = tokio::time::timeout(bound, send_unmount(&connector, segment)).await;
            drop(memory);
        });
    }
}

impl Client {
    /// Allocates `size` bytes on `device` (opened through the device module in this
    /// process) and mounts them as a segment of the server's device tier, which must be on
    /// the same backend and device. The returned guard heart-beats the segment until it is
    /// unmounted or dropped.
    pub async fn mount_segment(
        &self,
        device: &Arc<dyn Device>,
        size: u64,
    ) -> Result<MountedSegment> {
        let link = self.inner.connector.link().await?;
        let Some(offer) = link.info.device.clone() else {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "the server has no device tier to mount a segment into",
            ));
        };
        let memory = DeviceMemory::alloc(device, size).map_err(device_error)?;
        let handle = memory.export().map_err(device_error)?;
        let request = MountSegmentRequest {
            backend: offer.backend.clone(),
            device_index: device.index(),
            handle: handle.0.to_vec(),
            size,
            owner: format!("pid {} on {}", std::process::id(), strata_proto::host_id()),
        };
        if device.backend() != strata_device::Backend::parse(&offer.backend).spec()
            && device.backend() != offer.backend
        {
            let msg = format!(
                "the memory is on a {} device, the server's device tier on {}",
                device.backend(),
                offer.backend
            );
            return Err(Error::new(ErrorCode::InvalidArgument, msg));
        }
        let frame = encode_request(Opcode::MountSegment, &request);
        let segment = decode::<SegmentRef>(&exchange_on(&link, &frame, &[]).await?)?;
        let every =
            Duration::from_millis(offer.heartbeat_timeout_ms / 3).max(Duration::from_millis(10));
        let connector = Arc::clone(&self.inner.connector);
        let heartbeat = tokio::spawn(async move {
            let frame = encode_request(Opcode::SegmentHeartbeat, &segment);
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let beat = async {
                    let link = connector.link().await?;
                    exchange_on(&link, &frame, &[]).await
                };
                match tokio::time::timeout(every, beat).await {
                    Ok(Err(e)) if e.code() == ErrorCode::NotFound => {
                        tracing::warn!(
                            "device segment {} was unmounted by the server: {e}",
                            segment.segment
                        );
                        return;
                    }
                    Ok(Err(e)) => tracing::debug!("segment heartbeat failed: {e}"),
                    _ => {}
                }
            }
        });
        Ok(MountedSegment {
            segment,
            memory: Some(memory),
            connector: Arc::clone(&self.inner.connector),
            heartbeat,
        })
    }
}
