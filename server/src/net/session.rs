//! One QUIC connection's state as the request core sees it: authentication, the
//! reservations it holds, its data-plane credentials, and what its client copies itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use strata_engine::{TierKind, WriteReservation};
use tokio_util::sync::CancellationToken;

use strata_proto::data::SECRET_LEN;

/// What a session proves on its data connections.
pub(crate) struct DataCredentials {
    pub session: u64,
    pub secret: [u8; SECRET_LEN],
    /// A data connection proved this session: from now on its leases are signed (a
    /// session that never uses the data plane, such as a same-host client, pays nothing).
    pub admitted: AtomicBool,
}

/// Per-connection state.
#[derive(Default)]
pub(crate) struct Session {
    pub(crate) authenticated: AtomicBool,
    /// Reservations made by put_start on this connection. They belong to it: when the
    /// connection ends they are dropped, which revokes the uncommitted ones at once rather
    /// than at their deadline.
    pub(crate) reservations: Mutex<HashMap<u64, WriteReservation>>,
    /// The session's data-plane number and secret, once its handshake asked for them.
    pub data: OnceLock<DataCredentials>,
    /// Cancelled when the QUIC connection ends: its data connections close too.
    pub closed: CancellationToken,
    /// This session's client mapped the dram tier through the shared-memory transport
    /// (it redeemed its ticket): it copies dram values itself.
    pub shm_mapped: Arc<AtomicBool>,
    /// This session's client asked for the device segments' IPC handles: it copies device
    /// values itself.
    pub(crate) device_mapped: AtomicBool,
}

impl Session {
    /// Whether this session holds `writer`'s reservation on `key`.
    pub fn holds(&self, key: &[u8], writer: u64) -> bool {
        self.reservations
            .lock()
            .get(&writer)
            .is_some_and(|r| r.key() == key)
    }

    /// Revokes `writer`'s reservation now, if this session holds it.
    pub fn revoke(&self, writer: u64) {
        let taken = self.reservations.lock().remove(&writer);
        drop(taken); // revokes it
    }

    /// Whether this session's client copies the values of a tier of `kind` itself.
    pub(crate) fn copies_itself(&self, kind: Option<TierKind>) -> bool {
        match kind {
            // The shared-memory transport hands out the ssd files with the segments.
            Some(TierKind::Dram | TierKind::Ssd) => self.shm_mapped.load(Ordering::Relaxed),
            Some(TierKind::Device) => self.device_mapped.load(Ordering::Relaxed),
            _ => false,
        }
    }
}
