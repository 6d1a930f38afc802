//! Same host, ssd tier: read leased values straight from the server's ssd files, whose
//! read-only descriptors come with the shared-memory segments. The bytes then cross no
//! connection and cost the server no CPU, as dram values over shared memory do.
//!
//! The rules (`docs/shm.md`, "Values on ssd"):
//! * only a location the server named in a lease is read, after checking that the value
//!   lies inside the file;
//! * the read happens, *then* the lease is checked: if it lapsed, the record may have
//!   been reused while it was read, and the read fails with `LeaseExpired`;
//! * the value must hash to the lease's checksum, always: these bytes come off a disk
//!   (and a record removed with force may be reused under a lease), so a mismatch is
//!   `Corrupt` and the bytes are never returned.
//!
//! The files are open O_DIRECT (no page cache: the server's memory budget stays the
//! budget), so every read is aligned: into an aligned bounce buffer, or straight into the
//! caller's buffer when that already is.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use parking_lot::Mutex;
use strata_proto::msg::{FileInfo, Location};
use strata_proto::{Error, ErrorCode, Result};
use xxhash_rust::xxh3::xxh3_64;

use super::reader::{read_leased, LocalReader};

/// Bounce buffers kept for reuse (one per concurrent read; past that they are freed).
const KEPT_BOUNCE_BUFFERS: usize = 8;

/// One file: its descriptor and what the offer said about it.
struct SsdFile {
    file: File,
    info: FileInfo,
}

/// The server's ssd files, open for reading.
pub(crate) struct SsdFiles {
    files: HashMap<(u8, u32), SsdFile>,
    bounce: Mutex<Vec<Vec<u8>>>,
}

impl SsdFiles {
    /// Takes the descriptors received for `infos` (same order), checking each file's size.
    pub fn new(infos: &[FileInfo], files: Vec<File>) -> Result<SsdFiles> {
        let mut by_location = HashMap::with_capacity(files.len());
        for (info, file) in infos.iter().zip(files) {
            let actual = file
                .metadata()
                .map_err(|e| Error::new(ErrorCode::Unavailable, format!("ssd file size: {e}")))?
                .len();
            if actual < info.size || !info.align.is_power_of_two() {
                let msg = format!(
                    "ssd file {}/{} is {actual} bytes aligned to {}, the offer says {} bytes",
                    info.tier, info.segment, info.align, info.size
                );
                return Err(Error::new(ErrorCode::Protocol, msg));
            }
            by_location.insert((info.tier, info.segment), SsdFile { file, info: *info });
        }
        Ok(SsdFiles {
            files: by_location,
            bounce: Mutex::new(Vec::new()),
        })
    }

    /// No files (a server without an ssd tier).
    #[cfg(test)]
    pub fn none() -> SsdFiles {
        SsdFiles {
            files: HashMap::new(),
            bounce: Mutex::new(Vec::new()),
        }
    }

    /// The file holding `location` and the aligned byte range to read there, when the
    /// value lies wholly inside one of these files.
    fn span(&self, location: &Location) -> Option<(&SsdFile, u64, usize)> {
        let f = self.files.get(&(location.tier, location.segment))?;
        let align = u64::from(f.info.align);
        let start = location.offset.checked_add(f.info.value_offset)?;
        let padded = location.len.checked_next_multiple_of(align)?;
        let end = start.checked_add(padded)?;
        (start % align == 0 && end <= f.info.size).then_some((f, start, padded as usize))
    }

    /// Whether `location` lies in one of these files.
    pub fn covers(&self, location: &Location) -> bool {
        self.span(location).is_some()
    }

    /// Reads the value at `location` into the front of `dst` (blocks on the disk), then
    /// checks that its lease (ending at `valid_until`) still holds and that the bytes hash
    /// to `checksum` (always: a record on disk may be torn or damaged).
    pub fn read(
        &self,
        location: &Location,
        dst: &mut [u8],
        valid_until: Instant,
        checksum: u64,
    ) -> Result<usize> {
        read_leased(self, location, dst, valid_until, Some(checksum))
    }

    /// A buffer of at least `len` bytes (its contents are overwritten by the read).
    fn take_bounce(&self, len: usize) -> Vec<u8> {
        let kept = self.bounce.lock().pop();
        match kept {
            Some(b) if b.len() >= len => b,
            _ => vec![0u8; len],
        }
    }

    fn give_back(&self, buffer: Vec<u8>) {
        if buffer.is_empty() {
            return;
        }
        let mut kept = self.bounce.lock();
        if kept.len() < KEPT_BOUNCE_BUFFERS {
            kept.push(buffer);
        }
    }
}

impl LocalReader for SsdFiles {
    fn copy(&self, location: &Location, dst: &mut [u8], hash: bool) -> Result<Option<u64>> {
        let len = location.len as usize;
        let (f, start, padded) = self.span(location).ok_or_else(|| {
            let msg = format!("location {location:?} is outside the ssd files");
            Error::new(ErrorCode::Protocol, msg)
        })?;
        let align = f.info.align as usize;
        // O_DIRECT reads whole aligned blocks into aligned memory: straight into `dst` when
        // it is both, else through a bounce buffer.
        let direct = padded == len && dst.as_ptr().align_offset(align) == 0;
        let read = if direct {
            f.file.read_exact_at(dst, start)
        } else {
            let mut bounce = self.take_bounce(padded + align);
            let at = bounce.as_ptr().align_offset(align);
            let read = f.file.read_exact_at(&mut bounce[at..at + padded], start);
            if read.is_ok() {
                dst.copy_from_slice(&bounce[at..at + len]);
            }
            self.give_back(bounce);
            read
        };
        read.map_err(|e| {
            let msg = format!("reading ssd file {}/{}: {e}", f.info.tier, f.info.segment);
            Error::new(ErrorCode::Unavailable, msg)
        })?;
        Ok(hash.then(|| xxh3_64(dst)))
    }

    fn mismatch(&self, location: &Location, got: u64, expected: u64) -> Error {
        let msg = format!(
            "the ssd record at {location:?} hashes to {got:#x}, its lease says {expected:#x}"
        );
        Error::new(ErrorCode::Corrupt, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    const ALIGN: u64 = 4096;

    /// A file laid out like a server's ssd file: records of a header block (here filler)
    /// and a value padded to the block, the value at `offset + ALIGN`.
    fn file_with(value: &[u8], offset: u64) -> (tempfile::NamedTempFile, SsdFiles, Location) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        let size = offset + ALIGN + value.len().next_multiple_of(ALIGN as usize) as u64;
        let mut content = vec![0xEEu8; size as usize];
        let at = (offset + ALIGN) as usize;
        content[at..at + value.len()].copy_from_slice(value);
        tmp.write_all(&content).unwrap();
        let info = FileInfo {
            tier: 1,
            segment: 0,
            size,
            value_offset: ALIGN,
            align: ALIGN as u32,
        };
        let files = SsdFiles::new(&[info], vec![tmp.reopen().unwrap()]).unwrap();
        let location = Location {
            tier: 1,
            segment: 0,
            offset,
            len: value.len() as u64,
        };
        (tmp, files, location)
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn reads_the_value_of_a_record_whatever_the_buffer_alignment() {
        let value: Vec<u8> = (0..3 * ALIGN as usize + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        let (_tmp, files, location) = file_with(&value, 2 * ALIGN);
        let sum = xxh3_64(&value);
        // Unaligned destination, unpadded length: through the bounce buffer.
        let mut out = vec![0u8; value.len() + 7];
        let n = files.read(&location, &mut out[3..], later(), sum).unwrap();
        assert_eq!(&out[3..3 + n], &value[..]);
        // An aligned, padded value read in place.
        let whole: Vec<u8> = (0..2 * ALIGN as usize).map(|i| (i % 13) as u8).collect();
        let (_tmp, files, location) = file_with(&whole, 0);
        let mut backing = vec![0u8; whole.len() + ALIGN as usize];
        let at = backing.as_ptr().align_offset(ALIGN as usize);
        let dst = &mut backing[at..at + whole.len()];
        files
            .read(&location, dst, later(), xxh3_64(&whole))
            .unwrap();
        assert_eq!(dst, &whole[..]);
    }

    #[test]
    fn a_wrong_checksum_an_ended_lease_or_a_location_past_the_file_is_refused() {
        let value = vec![7u8; 5000];
        let (_tmp, files, location) = file_with(&value, ALIGN);
        let mut out = vec![0u8; value.len()];
        let sum = xxh3_64(&value);
        let e = files
            .read(&location, &mut out, later(), sum ^ 1)
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Corrupt);
        let e = files
            .read(&location, &mut out, Instant::now(), sum)
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::LeaseExpired);
        for outside in [
            Location {
                offset: ALIGN * 2,
                ..location
            },
            Location {
                offset: 100,
                ..location
            },
            Location {
                segment: 1,
                ..location
            },
            Location {
                offset: u64::MAX - 10,
                ..location
            },
        ] {
            assert!(!files.covers(&outside), "{outside:?}");
            let e = files.read(&outside, &mut out, later(), sum).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Protocol, "{outside:?}");
        }
        let e = files
            .read(&location, &mut out[..10], later(), sum)
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
    }
}
