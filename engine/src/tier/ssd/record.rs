//! The on-disk format of the ssd tier.
//!
//! Each tier file starts with one [`BLOCK`] of superblock; the rest is records, each starting
//! on a block boundary:
//!
//! ```text
//! superblock (block 0 of a file)       record (anywhere after it, block-aligned)
//! 0   magic     "STRATASB"             0   magic          "STRATARC"
//! 8   version   u32                    8   version        u32
//! 12  reserved  u32 (0)                12  key_len        u32
//! 16  file_id   u64 (random)           16  file_id        u64 (the superblock's)
//! 24  file_size u64                    24  sequence       u64 (write order in the tier)
//! 32  checksum  u64 (xxh3 of 0..32)    32  value_len      u64
//!                                      40  value_checksum u64 (xxh3-64 of the value)
//!                                      48  head_checksum  u64 (xxh3 of 0..48 and the key)
//!                                      56  key            key_len bytes
//!                                      BLOCK: the value, padded to a block
//! ```
//!
//! All integers are little-endian. A record is written in one write, header and value
//! together, so a crash may tear one: a header that checks out over a value that does not.
//! The value's checksum in the header catches it, at recovery for the newest records (the
//! only ones a crash can tear) and at every read. The
//! `file_id` keeps a header that happens to sit inside some *value* (a stored copy of a
//! strata file) from passing for a record of this file.

use strata_proto::limits::MAX_KEY_LEN;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// The unit of O_DIRECT I/O, record alignment and header size.
pub const BLOCK: u64 = 4096;
/// Bumped on any incompatible change; a file of another version is started afresh.
pub const FORMAT_VERSION: u32 = 1;

const SUPER_MAGIC: &[u8; 8] = b"STRATASB";
const RECORD_MAGIC: &[u8; 8] = b"STRATARC";
const HEAD_FIXED: usize = 56;

// The key must fit in the header block.
const _: () = assert!(HEAD_FIXED + MAX_KEY_LEN <= BLOCK as usize);

/// Bytes a record of a `value_len`-byte value occupies: header block plus padded value.
pub fn record_len(value_len: u64) -> u64 {
    BLOCK + value_len.div_ceil(BLOCK) * BLOCK
}

/// Why a block is not a valid header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// No magic: free space, a tombstone, or value bytes.
    NotAHeader,
    /// The magic is there but the rest does not check out (torn or corrupted).
    Damaged,
    /// A valid header of another file or format version.
    Foreign,
}

/// The file's identity, in its first block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub file_id: u64,
    pub file_size: u64,
}

impl Superblock {
    pub fn encode(&self, block: &mut [u8]) {
        block[..BLOCK as usize].fill(0);
        block[0..8].copy_from_slice(SUPER_MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        block[16..24].copy_from_slice(&self.file_id.to_le_bytes());
        block[24..32].copy_from_slice(&self.file_size.to_le_bytes());
        let sum = xxh3_64(&block[0..32]);
        block[32..40].copy_from_slice(&sum.to_le_bytes());
    }

    pub fn decode(block: &[u8]) -> Result<Superblock, HeaderError> {
        if block.len() < BLOCK as usize || &block[0..8] != SUPER_MAGIC {
            return Err(HeaderError::NotAHeader);
        }
        if u64_at(block, 32) != xxh3_64(&block[0..32]) {
            return Err(HeaderError::Damaged);
        }
        if u32_at(block, 8) != FORMAT_VERSION {
            return Err(HeaderError::Foreign);
        }
        Ok(Superblock {
            file_id: u64_at(block, 16),
            file_size: u64_at(block, 24),
        })
    }
}

/// A record's header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub file_id: u64,
    pub sequence: u64,
    pub value_len: u64,
    pub value_checksum: u64,
    pub key: Vec<u8>,
}

impl RecordHeader {
    /// Writes the header into the first [`BLOCK`] bytes of `block`, zeroing the rest of it.
    pub fn encode(&self, block: &mut [u8]) {
        let block = &mut block[..BLOCK as usize];
        block.fill(0);
        block[0..8].copy_from_slice(RECORD_MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        block[12..16].copy_from_slice(&(self.key.len() as u32).to_le_bytes());
        block[16..24].copy_from_slice(&self.file_id.to_le_bytes());
        block[24..32].copy_from_slice(&self.sequence.to_le_bytes());
        block[32..40].copy_from_slice(&self.value_len.to_le_bytes());
        block[40..48].copy_from_slice(&self.value_checksum.to_le_bytes());
        block[HEAD_FIXED..HEAD_FIXED + self.key.len()].copy_from_slice(&self.key);
        let sum = head_checksum(&block[0..48], &self.key);
        block[48..56].copy_from_slice(&sum.to_le_bytes());
    }

    /// Parses a header block of the file `file_id`.
    pub fn decode(block: &[u8], file_id: u64) -> Result<RecordHeader, HeaderError> {
        if block.len() < BLOCK as usize || &block[0..8] != RECORD_MAGIC {
            return Err(HeaderError::NotAHeader);
        }
        let key_len = u32_at(block, 12) as usize;
        if key_len == 0 || key_len > MAX_KEY_LEN {
            return Err(HeaderError::Damaged);
        }
        let key = &block[HEAD_FIXED..HEAD_FIXED + key_len];
        if u64_at(block, 48) != head_checksum(&block[0..48], key) {
            return Err(HeaderError::Damaged);
        }
        if u32_at(block, 8) != FORMAT_VERSION || u64_at(block, 16) != file_id {
            return Err(HeaderError::Foreign);
        }
        let value_len = u64_at(block, 32);
        if value_len == 0 {
            return Err(HeaderError::Damaged);
        }
        Ok(RecordHeader {
            file_id,
            sequence: u64_at(block, 24),
            value_len,
            value_checksum: u64_at(block, 40),
            key: key.to_vec(),
        })
    }
}

fn head_checksum(fixed: &[u8], key: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(fixed);
    h.update(key);
    h.digest()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The name of the tier's `i`-th file in its directory.
pub(super) fn file_name(i: usize) -> String {
    format!("strata-{i:03}.ssd")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RecordHeader {
        RecordHeader {
            file_id: 0xfeed,
            sequence: 42,
            value_len: 5000,
            value_checksum: xxh3_64(b"value"),
            key: b"model@tp_rank:0@00ff".to_vec(),
        }
    }

    #[test]
    fn header_round_trips() {
        let mut block = vec![0xaau8; BLOCK as usize];
        header().encode(&mut block);
        assert_eq!(RecordHeader::decode(&block, 0xfeed), Ok(header()));
        assert_eq!(record_len(5000), 3 * BLOCK);
        assert_eq!(record_len(4096), 2 * BLOCK);
    }

    #[test]
    fn every_flipped_header_byte_is_detected() {
        let mut block = vec![0u8; BLOCK as usize];
        header().encode(&mut block);
        let used = HEAD_FIXED + header().key.len();
        for i in 0..used {
            for bit in [0x01u8, 0x80] {
                let mut bad = block.clone();
                bad[i] ^= bit;
                let got = RecordHeader::decode(&bad, 0xfeed);
                assert!(
                    got.is_err(),
                    "flipping bit {bit:#x} of byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn other_files_and_blank_blocks_are_not_records() {
        let mut block = vec![0u8; BLOCK as usize];
        assert_eq!(
            RecordHeader::decode(&block, 1),
            Err(HeaderError::NotAHeader)
        );
        header().encode(&mut block);
        assert_eq!(
            RecordHeader::decode(&block, 0xbeef),
            Err(HeaderError::Foreign)
        );
        // A key length past the limit is damage, not a reason to read past the block.
        block[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            RecordHeader::decode(&block, 0xfeed),
            Err(HeaderError::Damaged)
        );
    }

    #[test]
    fn superblock_round_trips_and_detects_damage() {
        let sb = Superblock {
            file_id: 7,
            file_size: 1 << 30,
        };
        let mut block = vec![0u8; BLOCK as usize];
        sb.encode(&mut block);
        assert_eq!(Superblock::decode(&block), Ok(sb));
        block[20] ^= 1;
        assert_eq!(Superblock::decode(&block), Err(HeaderError::Damaged));
    }
}
