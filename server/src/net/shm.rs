//! The shared-memory transport, server side: hands the dram tier's segment descriptors to
//! same-host clients, who then map the segments and copy value bytes themselves under
//! their leases and reservations. The server's CPU does no data work for them. With the
//! segments go read-only descriptors of the ssd tier's files: those clients read leased
//! ssd records themselves too (`engine::file_reads` has what the lease does for them).
//!
//! Who gets the descriptors (see `docs/shm.md` for the whole threat model):
//! * only a peer of the server's own user: the socket file is 0600 and every peer's
//!   credentials (`SO_PEERCRED`) are checked, since the kernel vouches for those;
//! * only a holder of a live session: the handshake gives each session a random,
//!   single-use ticket, and the peer must present it ([`strata_proto::shm`] has the
//!   exchange's layout). With an auth token configured, only authenticated sessions get
//!   a handshake answer at all, so the token guards shared memory too.
//!
//! The socket is `SOCK_SEQPACKET`, so a packet and the descriptors riding with it arrive
//! whole and alone. Accepting and each peer's exchange run as tasks on the runtime: a
//! peer that connects and stays silent holds one descriptor and one task, never a thread,
//! and only for [`PEER_TIMEOUT`]; at most [`MAX_PEERS`] exchanges run at once, and a peer
//! past that is refused at once. (A thread per peer let 700 idle local connections make
//! 517 threads and slow every QUIC request to seconds.)

use std::collections::HashMap;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::net::{
    self, AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};
use strata_proto::msg::{FileInfo, SegmentInfo, ShmOffer};
use strata_proto::shm::{encode_descriptors, encode_refusal, MAX_FDS_PER_PACKET, TICKET_LEN};
use strata_proto::{Error, ErrorCode, Result};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use strata_engine::Store;

/// The socket's file name in the data dir.
pub const SOCKET_FILE: &str = "shm.sock";

/// How long a ticket stays redeemable after the handshake that issued it.
const TICKET_TTL: Duration = Duration::from_secs(60);

/// Tickets live at once at most; past that, handshakes offer no shared memory until old
/// tickets expire (a client then uses QUIC).
const MAX_LIVE_TICKETS: usize = 4096;

/// Bound on one peer's whole exchange (its ticket in, the descriptors out).
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Exchanges in progress at once, at most; a peer past that is refused (its client then
/// uses QUIC).
pub(crate) const MAX_PEERS: usize = 64;

/// A live ticket: when it expires, and the flag its session raises once it is redeemed.
type Ticket = (Instant, Arc<AtomicBool>);

/// The descriptor socket and the tickets it honours.
pub(crate) struct ShmExport {
    path: PathBuf,
    listener: AsyncFd<OwnedFd>,
    tickets: Mutex<HashMap<[u8; TICKET_LEN], Ticket>>,
    segments: Vec<SegmentInfo>,
    files: Vec<FileInfo>,
    store: Arc<Store>,
    /// One permit per exchange in progress.
    peers: Arc<tokio::sync::Semaphore>,
    /// Counts the refusals.
    refused: metrics::Counter,
}

fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    let msg = format!("{what} {}: {e}", path.display());
    Error::new(ErrorCode::Unavailable, msg)
}

impl ShmExport {
    /// Binds the descriptor socket at `path` (replacing a stale one a dead server left).
    /// `Ok(None)` when the store has no shared segments. Call inside a tokio runtime.
    pub fn bind(
        path: &Path,
        store: Arc<Store>,
        refused: metrics::Counter,
    ) -> Result<Option<ShmExport>> {
        let segments: Vec<SegmentInfo> = store
            .shared_segments()
            .iter()
            .map(|(tier, s)| SegmentInfo {
                tier: *tier,
                segment: s.segment,
                size: s.size,
            })
            .collect();
        if segments.is_empty() {
            return Ok(None);
        }
        let files: Vec<FileInfo> = store
            .shared_files()
            .iter()
            .map(|(tier, f)| FileInfo {
                tier: *tier,
                segment: f.segment,
                size: f.size,
                value_offset: f.value_offset,
                align: f.align,
            })
            .collect();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(dir)
            .map_err(|e| io_error("cannot create", dir, e))?;
        }
        let addr = SocketAddrUnix::new(path)
            .map_err(|e| io_error("cannot use as a socket path", path, e))?;
        if path.exists() {
            let probe = net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None)
                .map_err(|e| io_error("cannot probe", path, e))?;
            if net::connect(&probe, &addr).is_ok() {
                return Err(io_error(
                    "another server shares memory through",
                    path,
                    "stop it or give this one another data dir",
                ));
            }
            std::fs::remove_file(path).map_err(|e| io_error("cannot remove stale", path, e))?;
        }
        let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
        let fd = net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, flags, None)
            .map_err(|e| io_error("cannot create a socket for", path, e))?;
        net::bind(&fd, &addr).map_err(|e| io_error("cannot bind", path, e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error("cannot restrict", path, e))?;
        net::listen(&fd, 128).map_err(|e| io_error("cannot listen on", path, e))?;
        // SAFETY: the AsyncFd takes ownership of `fd` (an OwnedFd), so the descriptor stays
        // open and names the same socket until the AsyncFd drops.
        let listener =
            unsafe { AsyncFd::register(fd) }.map_err(|e| io_error("cannot poll", path, e))?;
        Ok(Some(ShmExport {
            path: path.to_owned(),
            listener,
            tickets: Mutex::new(HashMap::new()),
            segments,
            files,
            store,
            peers: Arc::new(tokio::sync::Semaphore::new(MAX_PEERS)),
            refused,
        }))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh offer for one session, with its own ticket; `None` when too many tickets
    /// are outstanding. `mapped` turns true once the ticket is redeemed.
    pub fn offer(&self, mapped: Arc<AtomicBool>) -> Option<ShmOffer> {
        let mut ticket = [0u8; TICKET_LEN];
        getrandom::fill(&mut ticket).ok()?;
        let now = Instant::now();
        let mut live = self.tickets.lock();
        live.retain(|_, (expires, _)| *expires > now);
        if live.len() >= MAX_LIVE_TICKETS {
            return None;
        }
        live.insert(ticket, (now + TICKET_TTL, mapped));
        Some(ShmOffer {
            socket: self.path.to_string_lossy().into_owned(),
            ticket: ticket.to_vec(),
            segments: self.segments.clone(),
            files: self.files.clone(),
        })
    }

    /// Whether `ticket` was issued and has not expired; it cannot be used again.
    fn redeem(&self, ticket: &[u8]) -> bool {
        let Ok(ticket) = <[u8; TICKET_LEN]>::try_from(ticket) else {
            return false;
        };
        let taken = self.tickets.lock().remove(&ticket);
        let Some((expires, mapped)) = taken else {
            return false;
        };
        let live = expires > Instant::now();
        if live {
            mapped.store(true, Ordering::Relaxed);
        }
        live
    }

    /// Accepts peers until `stop` turns true.
    pub async fn serve(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let ready = tokio::select! {
                _ = stop.changed() => break,
                ready = self.listener.readable() => ready,
            };
            let mut ready = match ready {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("shared-memory socket failed, transport off: {e}");
                    break;
                }
            };
            let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
            match net::accept_with(self.listener.get_ref(), flags) {
                Ok(peer) => {
                    let Ok(permit) = Arc::clone(&self.peers).try_acquire_owned() else {
                        let reason = format!(
                            "{MAX_PEERS} shared-memory hand-offs are in progress; use QUIC \
                             or retry"
                        );
                        tracing::debug!("shared memory refused: {reason}");
                        self.refused.increment(1);
                        // Take a ticket already sent, so the close does not reset the
                        // socket before the peer reads the refusal.
                        let mut ticket = [0u8; TICKET_LEN + 1];
                        let _ = net::recv(&peer, &mut ticket, RecvFlags::DONTWAIT);
                        let _ = net::send(&peer, &encode_refusal(&reason), SendFlags::NOSIGNAL);
                        continue;
                    };
                    let export = Arc::clone(&self);
                    tokio::spawn(async move {
                        export.serve_peer(peer).await;
                        drop(permit);
                    });
                }
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(e) => {
                    // Out of descriptors, most likely: back off rather than spin.
                    tracing::warn!("accepting on the shared-memory socket: {e}");
                    ready.clear_ready();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn serve_peer(&self, peer: OwnedFd) {
        // SAFETY: the AsyncFd takes ownership of `peer` (an OwnedFd), so the descriptor
        // stays open and names this peer's socket until the AsyncFd drops.
        let peer = match unsafe { AsyncFd::register(peer) } {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("shared memory refused: cannot poll the peer: {e}");
                return;
            }
        };
        let outcome = match tokio::time::timeout(PEER_TIMEOUT, self.share_with(&peer)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "timed out: the peer did not complete the exchange within {PEER_TIMEOUT:?}"
            )),
        };
        if let Err(reason) = outcome {
            tracing::debug!("shared memory refused: {reason}");
            self.refused.increment(1);
            let _ = net::send(
                peer.get_ref(),
                &encode_refusal(&reason),
                SendFlags::NOSIGNAL,
            );
        }
    }

    async fn share_with(&self, peer: &AsyncFd<OwnedFd>) -> std::result::Result<(), String> {
        let mut packet = [0u8; TICKET_LEN + 1];
        let n = loop {
            let mut ready = peer
                .readable()
                .await
                .map_err(|e| format!("waiting for the ticket: {e}"))?;
            match net::recv(peer.get_ref(), &mut packet, RecvFlags::empty()) {
                Ok((_, n)) => break n,
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(e) => return Err(format!("reading the ticket: {e}")),
            }
        };
        // The uid is checked once the ticket is in: a refusal then leaves nothing unread,
        // so closing the socket does not reset it before the peer reads why.
        let cred =
            net::sockopt::socket_peercred(peer.get_ref()).map_err(|e| format!("peer: {e}"))?;
        let own = rustix::process::geteuid();
        if cred.uid != own {
            return Err(format!(
                "the peer runs as uid {}, the server as uid {}: segments are shared with \
                 the server's user only",
                cred.uid.as_raw(),
                own.as_raw()
            ));
        }
        if n != TICKET_LEN || !self.redeem(&packet[..n]) {
            return Err("unknown, used or expired ticket".into());
        }
        // In the offer's order: the segments, then the files.
        let segments = self.store.shared_segments();
        let files = self.store.shared_files();
        let fds: Vec<BorrowedFd<'_>> = (segments.iter().map(|(_, s)| s.fd))
            .chain(files.iter().map(|(_, f)| f.fd))
            .collect();
        let mut space =
            vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_PACKET))];
        for chunk in fds.chunks(MAX_FDS_PER_PACKET) {
            let head = encode_descriptors(chunk.len() as u16);
            loop {
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !control.push(SendAncillaryMessage::ScmRights(chunk)) {
                    return Err("descriptor buffer too small".into());
                }
                let mut ready = peer
                    .writable()
                    .await
                    .map_err(|e| format!("waiting to send descriptors: {e}"))?;
                match net::sendmsg(
                    peer.get_ref(),
                    &[IoSlice::new(&head)],
                    &mut control,
                    SendFlags::NOSIGNAL,
                ) {
                    Ok(_) => break,
                    Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                    Err(e) => return Err(format!("sending descriptors: {e}")),
                }
            }
        }
        Ok(())
    }
}

impl Drop for ShmExport {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
