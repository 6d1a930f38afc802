//! Rebuilding the ssd tier's index from its files at open.
//!
//! A file is walked block by block from just after its superblock. A block that holds a
//! valid header starts a record: the walk jumps past the whole record. Any other block
//! (free space, a tombstone, a torn header) is stepped over. Holes of a sparse file are
//! skipped with `SEEK_DATA`, so a mostly empty tier opens without reading its emptiness.
//!
//! Modes: `none` starts every file empty; `quick` trusts headers, except that it re-reads the
//! values of the newest [`WRITE_WAVE_BYTES`] of records (in sequence order): a record is one
//! write, so a crash can leave a valid header over a torn value, but only in a write that
//! was in flight, and those are all among the newest (a value damaged later is caught when
//! read); `verify` reads every value. Either leaves out those that fail their checksum.
//!
//! Records left out (failing verification, or an older record of a key that has a newer
//! one) are tombstoned before any space is handed out, so no valid header ever lies over
//! free space.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;

use xxhash_rust::xxh3::Xxh3;

use super::io::{IoBuf, IoEngine, IoOp};
use super::record::{file_name, record_len, HeaderError, RecordHeader, Superblock, BLOCK};
use super::WRITE_WAVE_BYTES;
use crate::alloc::OffsetAllocator;
use crate::tier::{Extent, RecoveredObject};

/// What the tier does with the records it finds at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Start empty: every file is reset.
    None,
    /// Index every record whose header checks out.
    #[default]
    Quick,
    /// As quick, and re-check every value's checksum (reads everything).
    Verify,
}

impl std::str::FromStr for RecoveryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<RecoveryMode, String> {
        match s {
            "none" => Ok(RecoveryMode::None),
            "quick" => Ok(RecoveryMode::Quick),
            "verify" => Ok(RecoveryMode::Verify),
            other => Err(format!(
                "{other:?} is not a recovery mode: none, quick or verify"
            )),
        }
    }
}

/// A record found by a scan.
#[derive(Clone, Debug)]
pub struct ScannedRecord {
    /// File offset of its header block.
    pub offset: u64,
    pub header: RecordHeader,
    /// False when verification read the value and it did not match its checksum.
    pub intact: bool,
}

/// Bytes read at a time while probing for headers.
const WINDOW: u64 = 1 << 20;
/// Bytes hashed at a time while verifying a value.
const VERIFY_CHUNK: u64 = 8 << 20;

/// Walks one file's records. `read(offset, len)` returns `len` bytes at `offset`.
fn scan(
    file: &File,
    file_id: u64,
    size: u64,
    verify: bool,
    read: &mut dyn FnMut(u64, u64) -> io::Result<IoBuf>,
) -> io::Result<(Vec<ScannedRecord>, u64)> {
    let mut records = Vec::new();
    let mut damaged = 0;
    let mut window: Option<(u64, IoBuf)> = None;
    let mut pos = BLOCK;
    let mut data_end = pos; // End of the data region `pos` is known to be in.
    while pos < size {
        if pos >= data_end {
            // Jump over a hole; past the last data there is nothing more to find.
            let Some(data) = seek(file, rustix::fs::SeekFrom::Data(pos))? else {
                break;
            };
            pos = pos.max(data / BLOCK * BLOCK);
            data_end = seek(file, rustix::fs::SeekFrom::Hole(pos))?
                .unwrap_or(size)
                .min(size);
            continue;
        }
        let in_window = window
            .as_ref()
            .is_some_and(|(start, buf)| pos >= *start && pos + BLOCK <= start + buf.len() as u64);
        if !in_window {
            let len = WINDOW.min(data_end - pos).div_ceil(BLOCK) * BLOCK;
            window = Some((pos, read(pos, len)?));
        }
        let (start, buf) = window.as_ref().expect("window just read");
        let at = (pos - start) as usize;
        match RecordHeader::decode(&buf.as_slice()[at..at + BLOCK as usize], file_id) {
            Ok(header) if pos + record_len(header.value_len) <= size => {
                let end = pos + record_len(header.value_len);
                let intact = !verify || value_intact(pos, &header, read)?;
                records.push(ScannedRecord {
                    offset: pos,
                    header,
                    intact,
                });
                pos = end;
            }
            Ok(_) | Err(HeaderError::Damaged) => {
                damaged += 1;
                pos += BLOCK;
            }
            Err(HeaderError::NotAHeader | HeaderError::Foreign) => pos += BLOCK,
        }
    }
    Ok((records, damaged))
}

fn value_intact(
    at: u64,
    header: &RecordHeader,
    read: &mut dyn FnMut(u64, u64) -> io::Result<IoBuf>,
) -> io::Result<bool> {
    let mut hasher = Xxh3::new();
    let mut done = 0;
    while done < header.value_len {
        let n = VERIFY_CHUNK.min(header.value_len - done);
        let buf = read(at + BLOCK + done, n.div_ceil(BLOCK) * BLOCK)?;
        hasher.update(&buf.as_slice()[..n as usize]);
        done += n;
    }
    Ok(hasher.digest() == header.value_checksum)
}

/// `lseek` with SEEK_DATA/SEEK_HOLE; `None` past the last data (ENXIO).
fn seek(file: &File, to: rustix::fs::SeekFrom) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file, to) {
        Ok(n) => Ok(Some(n)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Lists the records in one tier file, reading it through the page cache: for tools and
/// tests that look at a tier's files (the server must not be writing them meanwhile).
/// With `verify`, every value is checked against its checksum.
pub fn scan_file(path: &Path, verify: bool) -> io::Result<(Superblock, Vec<ScannedRecord>)> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    let mut head = IoBuf::new(BLOCK as usize);
    file.read_exact_at(head.as_mut_slice(), 0)?;
    let sb = Superblock::decode(head.as_slice()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no valid superblock ({e:?})", path.display()),
        )
    })?;
    let mut read = |offset: u64, len: u64| {
        let mut buf = IoBuf::new(len as usize);
        file.read_exact_at(&mut buf.as_mut_slice()[..len as usize], offset)?;
        Ok(buf)
    };
    let (records, _) = scan(&file, sb.file_id, sb.file_size, verify, &mut read)?;
    Ok((sb, records))
}

/// The tier's files as recovery sees them.
pub(super) struct TierFiles<'a> {
    /// The tier's index in the store.
    pub index: u8,
    pub dir: &'a Path,
    /// Each file's configured size.
    pub sizes: &'a [u64],
    pub engine: &'a dyn IoEngine,
}

/// What recovery found: for the tier to take over.
pub(super) struct Recovery {
    /// Each file's allocator, the recovered records' space taken.
    pub allocators: Vec<OffsetAllocator>,
    /// Each file's id (kept, or new for a file started empty).
    pub file_ids: Vec<u64>,
    /// The records to index, oldest first.
    pub objects: Vec<RecoveredObject>,
    /// The sequence number the next record takes.
    pub next_sequence: u64,
    /// Records skipped: damaged, torn, or older copies of a key.
    pub skipped: u64,
}

/// Recovers every file of the tier (`lens`: each file's length on disk), as `mode` says.
pub(super) fn recover(
    files: TierFiles<'_>,
    lens: &[u64],
    mode: RecoveryMode,
) -> io::Result<Recovery> {
    let mut file_ids = vec![0u64; files.sizes.len()];
    let mut found: Vec<(usize, ScannedRecord)> = Vec::new();
    let mut skipped = 0u64;
    for (i, &size) in files.sizes.iter().enumerate() {
        let path = files.dir.join(file_name(i));
        let existing = if lens[i] >= BLOCK {
            let buf = run_one(
                files.engine,
                IoOp::read(i, 0, BLOCK as usize, IoBuf::new(BLOCK as usize)),
            )?;
            Superblock::decode(buf.as_slice())
        } else {
            Err(HeaderError::NotAHeader)
        };
        let reuse = match existing {
            Ok(sb) if mode != RecoveryMode::None && sb.file_size == size && lens[i] == size => {
                Some(sb.file_id)
            }
            Ok(_) if mode != RecoveryMode::None => {
                tracing::warn!(
                    "ssd: {} has another size than configured; starting it empty",
                    path.display()
                );
                None
            }
            Err(e) if lens[i] > 0 && mode != RecoveryMode::None => {
                tracing::warn!(
                    "ssd: {} has no valid superblock ({e:?}); starting it empty",
                    path.display()
                );
                None
            }
            _ => None,
        };
        match reuse {
            Some(file_id) => {
                file_ids[i] = file_id;
                let plain = File::open(&path)?;
                let mut read = |offset: u64, len: u64| {
                    run_one(
                        files.engine,
                        IoOp::read(i, offset, len as usize, IoBuf::new(len as usize)),
                    )
                };
                let (records, damaged) = scan(
                    &plain,
                    file_id,
                    size,
                    mode == RecoveryMode::Verify,
                    &mut read,
                )?;
                skipped += damaged;
                found.extend(records.into_iter().map(|r| (i, r)));
            }
            None => {
                let mut id = [0u8; 8];
                getrandom::fill(&mut id)
                    .map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
                file_ids[i] = u64::from_le_bytes(id);
                // Drop the old contents (and their disk blocks), then size the file sparse.
                let plain = std::fs::OpenOptions::new().write(true).open(&path)?;
                plain.set_len(0)?;
                plain.set_len(size)?;
                let mut block = IoBuf::new(BLOCK as usize);
                Superblock {
                    file_id: file_ids[i],
                    file_size: size,
                }
                .encode(block.as_mut_slice());
                run_one(files.engine, IoOp::write(i, 0, BLOCK as usize, block))?;
            }
        }
    }

    if mode == RecoveryMode::Quick {
        check_newest(&mut found, files.engine)?;
    }

    // The newest intact record of each key wins; every other one is tombstoned.
    let mut newest: HashMap<&[u8], usize> = HashMap::new();
    for (n, (_, r)) in found.iter().enumerate() {
        if !r.intact {
            continue;
        }
        let slot = newest.entry(&r.header.key).or_insert(n);
        if found[*slot].1.header.sequence < r.header.sequence {
            *slot = n;
        }
    }
    let mut keep = vec![false; found.len()];
    for &n in newest.values() {
        keep[n] = true;
    }
    let mut discard = Vec::new();
    for (n, (file, r)) in found.iter().enumerate() {
        if !keep[n] {
            skipped += 1;
            discard.push(IoOp::write(
                *file,
                r.offset,
                BLOCK as usize,
                IoBuf::new(BLOCK as usize),
            ));
        }
    }
    for d in files.engine.run(discard) {
        d.result?;
    }

    let mut allocators = Vec::new();
    let mut recovered = Vec::new();
    for (i, &size) in files.sizes.iter().enumerate() {
        let mut mine: Vec<&ScannedRecord> = found
            .iter()
            .enumerate()
            .filter(|(n, (file, _))| keep[*n] && *file == i)
            .map(|(_, (_, r))| r)
            .collect();
        mine.sort_by_key(|r| r.offset);
        let layout: Vec<(u64, u64)> = mine
            .iter()
            .map(|r| (r.offset - BLOCK, record_len(r.header.value_len)))
            .collect();
        let (alloc, blocks) = OffsetAllocator::with_allocated(size - BLOCK, BLOCK, &layout)
            .ok_or_else(|| io::Error::other("recovered records overlap (a scan bug)"))?;
        for (r, b) in mine.into_iter().zip(blocks) {
            recovered.push(RecoveredObject {
                key: r.header.key.clone().into_boxed_slice(),
                extent: Extent {
                    tier: files.index,
                    segment: i as u16,
                    block: b.block.raw(),
                    offset: r.offset,
                    len: r.header.value_len,
                },
                checksum: r.header.value_checksum,
                sequence: r.header.sequence,
            });
        }
        allocators.push(alloc);
    }
    recovered.sort_by_key(|r| r.sequence);
    let next = recovered.last().map_or(0, |r| r.sequence) + 1;
    let top = found
        .iter()
        .map(|(_, r)| r.header.sequence)
        .max()
        .unwrap_or(0)
        + 1;
    Ok(Recovery {
        allocators,
        file_ids,
        objects: recovered,
        next_sequence: next.max(top),
        skipped,
    })
}

/// Reads the values of the newest records, newest first, until [`WRITE_WAVE_BYTES`] of
/// records are checked, and marks those that fail their checksum: the writes a crash
/// interrupted.
fn check_newest(found: &mut [(usize, ScannedRecord)], engine: &dyn IoEngine) -> io::Result<()> {
    let mut newest_first: Vec<usize> = (0..found.len()).collect();
    newest_first.sort_by_key(|&n| std::cmp::Reverse(found[n].1.header.sequence));
    let mut checked = 0;
    for n in newest_first {
        if checked >= WRITE_WAVE_BYTES {
            break;
        }
        let (file, record) = &mut found[n];
        let file = *file;
        let mut read = |offset: u64, len: u64| {
            run_one(
                engine,
                IoOp::read(file, offset, len as usize, IoBuf::new(len as usize)),
            )
        };
        if !value_intact(record.offset, &record.header, &mut read)? {
            tracing::warn!(
                "ssd: the record at {} of {} was torn by a crash (its value fails its \
                 checksum); left out",
                record.offset,
                file_name(file)
            );
            record.intact = false;
        }
        checked += record_len(record.header.value_len);
    }
    Ok(())
}

fn run_one(engine: &dyn IoEngine, op: IoOp) -> io::Result<IoBuf> {
    let done = engine.run(vec![op]).pop().expect("one completion");
    done.result.map(|()| done.buf)
}
