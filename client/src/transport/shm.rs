//! The shared-memory transport, client side: map the server's dram segments and copy value
//! bytes in and out of them directly, under the leases and reservations the server gave.
//!
//! The rules that keep it safe (`docs/shm.md` explains them in full):
//! * bytes are only ever touched at a location the server named in a lease (reads) or a
//!   reservation (writes), and only after checking that location lies inside the mapping;
//! * a read copies, *then* checks that the lease still held when the copy ended: if it
//!   lapsed, the bytes may have been overwritten and the read fails with `LeaseExpired`;
//! * a write copies in chunks and checks before each chunk that the reservation has more
//!   than the safety margin left, so it never writes into space the server may have
//!   handed to someone else;
//! * no Rust reference into a mapping is ever formed: another process writes the same
//!   pages, so the client only copies raw bytes (any bit pattern is a valid `u8`).

use std::collections::HashMap;
use std::fs::File;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::{Advice, MmapOptions, MmapRaw};
use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};
use strata_proto::msg::{Location, ShmOffer};
use strata_proto::shm::{decode_reply, Reply, MAX_FDS_PER_PACKET, MAX_PACKET_LEN};
use strata_proto::{Error, ErrorCode, Result};
use xxhash_rust::xxh3::Xxh3;

use super::reader::{check_value_fits, checksum_mismatch, read_leased, LocalReader};
use super::ssd::SsdFiles;

/// Bytes copied between two checks (and hashed while still in cache); large enough that
/// the copy streams past the cache ([`strata_copy::STREAM_MIN`]).
const CHUNK: usize = strata_copy::STREAM_MIN;

/// Bytes of a segment prefaulted in one step (one madvise call) in the background.
const PREFAULT_STEP: usize = 64 << 20;

/// The server's dram segments, mapped into this process, and its ssd files, open for
/// reading.
pub(crate) struct SharedSegments {
    /// The server instance whose segments these are.
    instance: u64,
    maps: HashMap<(u8, u32), MmapRaw>,
    files: SsdFiles,
    /// Becomes true once the background prefault ended (done, or stopped by the kernel).
    prefaulted: tokio::sync::watch::Sender<bool>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::Unavailable,
        format!("shared memory: {what}: {e}"),
    )
}

/// Receives one descriptor per segment and per file of `offer` from the server's socket
/// (blocking, each step bounded by `timeout`).
fn receive_descriptors(offer: &ShmOffer, timeout: Duration) -> Result<Vec<OwnedFd>> {
    let addr = SocketAddrUnix::new(offer.socket.as_str())
        .map_err(|e| unavailable(&format!("socket path {}", offer.socket), e))?;
    let socket = net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| unavailable("socket", e))?;
    for which in [net::sockopt::Timeout::Recv, net::sockopt::Timeout::Send] {
        net::sockopt::set_socket_timeout(&socket, which, Some(timeout))
            .map_err(|e| unavailable("socket timeout", e))?;
    }
    net::connect(&socket, &addr)
        .map_err(|e| unavailable(&format!("connecting to {}", offer.socket), e))?;
    // A socket timeout reads as EAGAIN ("Resource temporarily unavailable"): say what it is.
    let failed = |what: &str, e: rustix::io::Errno| match e {
        rustix::io::Errno::AGAIN => unavailable(what, format!("timed out after {timeout:?}")),
        e => unavailable(what, e),
    };
    net::send(&socket, &offer.ticket, SendFlags::NOSIGNAL)
        .map_err(|e| failed("sending the ticket", e))?;
    let expected = offer.segments.len() + offer.files.len();
    let mut fds = Vec::with_capacity(expected);
    let mut packet = [0u8; MAX_PACKET_LEN];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_PACKET))];
    while fds.len() < expected {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = net::recvmsg(
            &socket,
            &mut [IoSliceMut::new(&mut packet)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| failed("receiving descriptors", e))?;
        let mut got: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(passed) = message {
                got.extend(passed);
            }
        }
        if received.bytes == 0 {
            return Err(unavailable("receiving descriptors", "the server hung up"));
        }
        match decode_reply(&packet[..received.bytes.min(packet.len())])? {
            Reply::Refused(reason) => {
                return Err(Error::new(
                    ErrorCode::Unauthorized,
                    format!("shared memory refused: {reason}"),
                ))
            }
            Reply::Descriptors { count } if usize::from(count) == got.len() => fds.extend(got),
            Reply::Descriptors { count } => {
                return Err(Error::new(
                    ErrorCode::Protocol,
                    format!("{count} descriptors announced, {} received", got.len()),
                ))
            }
        }
    }
    Ok(fds)
}

impl SharedSegments {
    /// Receives the offer's descriptors, maps every segment read-write (puts copy into
    /// their reserved extents) and keeps the files for reading. Blocking: call it off the
    /// async reactor.
    pub fn attach(offer: &ShmOffer, instance: u64, timeout: Duration) -> Result<SharedSegments> {
        let mut fds = receive_descriptors(offer, timeout)?;
        let file_fds = fds.split_off(offer.segments.len());
        let files = SsdFiles::new(&offer.files, file_fds.into_iter().map(File::from).collect())?;
        let mut maps = HashMap::with_capacity(fds.len());
        for (info, fd) in offer.segments.iter().zip(fds) {
            let file = File::from(fd);
            let actual = file
                .metadata()
                .map_err(|e| unavailable("segment size", e))?
                .len();
            if actual < info.size {
                let msg = format!(
                    "segment {}/{} is {actual} bytes, the offer says {}",
                    info.tier, info.segment, info.size
                );
                return Err(Error::new(ErrorCode::Protocol, msg));
            }
            let len = usize::try_from(info.size)
                .map_err(|_| unavailable("mapping", "segment larger than the address space"))?;
            let map = MmapOptions::new()
                .len(len)
                .map_raw(&file)
                .map_err(|e| unavailable("mapping a segment", e))?;
            maps.insert((info.tier, info.segment), map);
        }
        Ok(SharedSegments {
            instance,
            maps,
            files,
            prefaulted: tokio::sync::watch::Sender::new(false),
        })
    }

    /// The server's ssd files.
    pub fn files(&self) -> &SsdFiles {
        &self.files
    }

    /// Builds this process's page tables for every segment on a background thread, so
    /// copies do not stop at a page fault every 4 KiB the first time they touch a page
    /// (that costs more than the copy: `docs/shm.md`). The thread stops when the segments
    /// are dropped, or at the first step the kernel refuses (older than 5.14: copies then
    /// fault as they go).
    pub fn prefault_in_background(segments: &Arc<SharedSegments>) {
        let weak = Arc::downgrade(segments);
        let spans: Vec<((u8, u32), usize)> =
            segments.maps.iter().map(|(k, m)| (*k, m.len())).collect();
        let done = segments.prefaulted.clone();
        let spawned = std::thread::Builder::new()
            .name("strata-shm-prefault".into())
            .spawn(move || {
                'segments: for (key, len) in spans {
                    for offset in (0..len).step_by(PREFAULT_STEP) {
                        let Some(segments) = weak.upgrade() else {
                            return; // unmapped meanwhile
                        };
                        let step = PREFAULT_STEP.min(len - offset);
                        let map = &segments.maps[&key];
                        if let Err(e) = map.advise_range(Advice::PopulateWrite, offset, step) {
                            tracing::debug!("prefaulting shared memory stopped: {e}");
                            break 'segments;
                        }
                    }
                }
                done.send_replace(true);
            });
        if let Err(e) = spawned {
            tracing::debug!("no prefault thread: {e}");
            segments.prefaulted.send_replace(true);
        }
    }

    /// Waits until the background prefault ended (at once if it has).
    pub async fn prefaulted(&self) {
        let mut done = self.prefaulted.subscribe();
        // The sender lives in `self`, so the wait ends only by the value turning true.
        let _ = done.wait_for(|&d| d).await;
    }

    /// The server instance these segments belong to.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Whether `location` lies in a mapped segment.
    pub fn covers(&self, location: &Location) -> bool {
        self.span(location).is_some()
    }

    /// The start of `location` in its mapping, when it lies wholly inside one.
    fn span(&self, location: &Location) -> Option<*mut u8> {
        let map = self.maps.get(&(location.tier, location.segment))?;
        let end = location.offset.checked_add(location.len)?;
        if end > map.len() as u64 {
            return None;
        }
        Some(map.as_mut_ptr().wrapping_add(location.offset as usize))
    }

    /// Where the value at `location` starts in this process, when it lies wholly inside a
    /// mapped segment: for callers that copy it out themselves (into device memory) under
    /// a lease they check before and after, as [`read_leased`] does.
    pub fn source(&self, location: &Location) -> Option<*const u8> {
        self.span(location).map(|p| p as *const u8)
    }

    fn outside(location: &Location) -> Error {
        let msg = format!("location {location:?} is outside the mapped segments");
        Error::new(ErrorCode::Protocol, msg)
    }

    /// Copies the value at `location` into the front of `dst`, then checks that its lease
    /// (ending at `valid_until`) still holds, and, when `checksum` is non-zero, that the
    /// bytes hash to it.
    pub fn read(
        &self,
        location: &Location,
        dst: &mut [u8],
        valid_until: Instant,
        checksum: Option<u64>,
    ) -> Result<usize> {
        let checksum = checksum.filter(|&c| c != 0);
        read_leased(self, location, dst, valid_until, checksum)
    }

    /// Copies `src` into the reserved `location` (whose length must be `src.len()`) and
    /// returns the value's xxh3-64. Before each chunk it checks that the reservation,
    /// ending at `deadline`, has more than `margin` left; `LeaseExpired` otherwise.
    pub fn write(
        &self,
        location: &Location,
        src: &[u8],
        deadline: Instant,
        margin: Duration,
    ) -> Result<u64> {
        check_value_fits(location, src)?;
        let dst = self.span(location).ok_or_else(|| Self::outside(location))?;
        let mut hasher = Xxh3::new();
        for (i, part) in src.chunks(CHUNK).enumerate() {
            if Instant::now() + margin >= deadline {
                return Err(Error::new(
                    ErrorCode::LeaseExpired,
                    "the reservation is about to end; stopped writing into it",
                ));
            }
            // SAFETY: `span` checked that the whole location lies inside a mapping that
            // lives as long as `self`; this chunk is within it. The reservation makes the
            // range this writer's alone, and it still has more than `margin` to run, so the
            // server hands it to no one else during this chunk. `part` is distinct memory.
            unsafe { strata_copy::copy_raw(part.as_ptr(), dst.add(i * CHUNK), part.len()) };
            // The source piece is still in cache after the copy read it.
            hasher.update(part);
            strata_copy::give_way::moved(part.len());
        }
        Ok(hasher.digest())
    }
}

impl LocalReader for SharedSegments {
    fn copy(&self, location: &Location, dst: &mut [u8], hash: bool) -> Result<Option<u64>> {
        let src = self.span(location).ok_or_else(|| Self::outside(location))?;
        let mut hasher = hash.then(Xxh3::new);
        for (i, part) in dst.chunks_mut(CHUNK).enumerate() {
            let (from, to) = (src.wrapping_add(i * CHUNK), part.as_mut_ptr());
            // SAFETY: `span` checked that the whole location lies inside a mapping that
            // lives as long as `self`, and `dst` is exactly the location's length, so this
            // chunk is within it. `part` is a distinct, exclusively borrowed Rust buffer.
            // Another process may write these pages only if the lease lapsed: the copy then
            // holds garbage, which the lease check after it turns into an error before
            // anyone sees it.
            unsafe {
                match hasher {
                    // The hash reads what was copied: an ordinary copy leaves it in cache.
                    Some(_) => std::ptr::copy_nonoverlapping(from, to, part.len()),
                    None => strata_copy::copy_raw(from, to, part.len()),
                }
            }
            if let Some(h) = hasher.as_mut() {
                h.update(part);
            }
            strata_copy::give_way::moved(part.len());
        }
        Ok(hasher.map(|h| h.digest()))
    }

    fn mismatch(&self, _location: &Location, got: u64, expected: u64) -> Error {
        checksum_mismatch("shared memory", got, expected)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_server_that_never_answers_times_out_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shm.sock");
        let listener = net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        net::listen(&listener, 4).unwrap();
        let offer = ShmOffer {
            socket: path.to_string_lossy().into_owned(),
            ticket: vec![0; 16],
            segments: vec![strata_proto::msg::SegmentInfo {
                tier: 0,
                segment: 0,
                size: 4096,
            }],
            files: Vec::new(),
        };
        let e = receive_descriptors(&offer, Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert!(e.message().contains("timed out after 100ms"), "{e}");
        assert!(!e.message().contains("temporarily"), "{e}");
    }

    /// Segments backed by a local memfd, as if received from a server.
    pub(crate) fn local_segments(size: u64) -> SharedSegments {
        let fd = memfd::MemfdOptions::default().create("test").unwrap();
        fd.as_file().set_len(size).unwrap();
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw(fd.as_file())
            .unwrap();
        SharedSegments {
            instance: 7,
            maps: HashMap::from([((0, 0), map)]),
            files: SsdFiles::none(),
            prefaulted: tokio::sync::watch::Sender::new(false),
        }
    }

    #[tokio::test]
    async fn prefaulted_ends_once_the_background_prefault_covered_every_segment() {
        let segments = Arc::new(local_segments(2 * PREFAULT_STEP as u64 + 4096));
        assert!(!*segments.prefaulted.borrow(), "done before it started");
        SharedSegments::prefault_in_background(&segments);
        tokio::time::timeout(Duration::from_secs(60), segments.prefaulted())
            .await
            .expect("the prefault never reported its end");
    }

    /// A location in the one test segment.
    pub(crate) fn at(offset: u64, len: u64) -> Location {
        Location {
            tier: 0,
            segment: 0,
            offset,
            len,
        }
    }

    #[test]
    fn write_then_read_round_trips_with_checksum() {
        let segs = local_segments(4 << 20);
        let value: Vec<u8> = (0..(1 << 20) + 17).map(|i| (i * 31 % 251) as u8).collect();
        let loc = at(4096, value.len() as u64);
        let later = Instant::now() + Duration::from_secs(10);
        let sum = segs.write(&loc, &value, later, Duration::ZERO).unwrap();
        assert_eq!(sum, xxhash_rust::xxh3::xxh3_64(&value));
        let mut out = vec![0u8; value.len() + 5];
        let n = segs.read(&loc, &mut out, later, Some(sum)).unwrap();
        assert_eq!(&out[..n], &value[..]);
        // A wrong checksum is an error, never silently returned bytes.
        let e = segs.read(&loc, &mut out, later, Some(sum ^ 1)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Internal);
    }

    #[test]
    fn expired_leases_and_reservations_refuse() {
        let segs = local_segments(1 << 20);
        let loc = at(0, 4096);
        let past = Instant::now();
        let mut out = vec![0u8; 4096];
        let e = segs.read(&loc, &mut out, past, None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::LeaseExpired);
        // A reservation inside the margin is not written at all.
        let soon = Instant::now() + Duration::from_millis(100);
        let e = segs
            .write(&loc, &[1u8; 4096], soon, Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::LeaseExpired);
        segs.read(
            &loc,
            &mut out,
            Instant::now() + Duration::from_secs(5),
            None,
        )
        .unwrap();
        assert!(
            out.iter().all(|&b| b == 0),
            "a refused write touched memory"
        );
    }

    #[test]
    fn locations_outside_the_mapping_are_refused() {
        let segs = local_segments(1 << 20);
        let later = Instant::now() + Duration::from_secs(10);
        let mut out = vec![0u8; 8192];
        for loc in [
            at((1 << 20) - 10, 11),
            at(u64::MAX - 1, 4),
            Location {
                segment: 1,
                ..at(0, 1)
            },
            Location {
                tier: 2,
                ..at(0, 1)
            },
        ] {
            assert!(!segs.covers(&loc));
            let e = segs.read(&loc, &mut out, later, None).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Protocol, "{loc:?}");
        }
        let e = segs
            .read(&at(0, 4096), &mut out[..100], later, None)
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
    }
}
