//! Hard limits shared by the engine and the wire protocol.
//!
//! They are constants (not configuration) because both ends must agree on them before
//! they have exchanged a single byte.

/// Largest key, in bytes. Engines send keys such as `model@tp_rank:3@<64 hex digits>`.
pub const MAX_KEY_LEN: usize = 1024;

/// Most keys in one batch request (batch_exists, batch_get, get_locations).
pub const MAX_BATCH_KEYS: usize = 65_536;

/// Most positions (blocks) in one prefix lookup: 1M tokens at block size 16.
pub const MAX_PREFIX_GROUPS: usize = 65_536;

/// Most keys in one prefix position (one key per tensor-parallel rank and layer slab).
pub const MAX_GROUP_KEYS: usize = 1024;

/// Largest single value, in bytes. A tier may hold less: the real bound is its largest
/// free extent, reported as `TooLarge` when a value can never fit.
pub const MAX_VALUE_LEN: u64 = 1 << 40;

/// Largest rkyv header of one request or response frame, in bytes. Batches of many long
/// keys must be split to stay under it; it bounds what one stream can make the server
/// allocate before any validation.
pub const MAX_HEADER_LEN: u32 = 16 << 20;

/// Checks that a batch read pairs every key with a buffer: `InvalidArgument` otherwise.
pub fn check_paired(keys: usize, buffers: usize) -> crate::error::Result<()> {
    if keys == buffers {
        return Ok(());
    }
    Err(crate::error::Error::new(
        crate::error::ErrorCode::InvalidArgument,
        format!("{keys} keys but {buffers} buffers"),
    ))
}
