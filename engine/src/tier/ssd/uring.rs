//! The io_uring engine.
//!
//! A ring serves one thread at a time: a caller takes a ring from the engine's pool (or
//! makes one), drives its batch on it, and puts it back, so each thread doing I/O has its
//! own ring while it does and no ring is ever shared between threads. A batch is pushed up
//! to the queue depth and submitted with one system call; completions free slots that the
//! rest of the batch fills.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use io_uring::{opcode, squeue, types, IoUring, Probe};
use parking_lot::Mutex;

use super::io::{IoBuf, IoDone, IoEngine, IoKind, IoOp, IoStats};

/// The largest transfer one submission asks for; the kernel caps a read or write near 2 GiB
/// anyway, and a short transfer is resubmitted for the rest.
const MAX_SUBMIT: usize = 1 << 30;

pub struct UringEngine {
    files: Vec<File>,
    depth: u32,
    rings: Mutex<Vec<IoUring>>,
    stats: IoStats,
}

/// An op the engine holds: pulled from the caller's iterator, not yet handed back.
struct Slot {
    op: IoOp,
    /// Bytes transferred so far.
    done: usize,
    started: Option<Instant>,
    /// In the kernel's hands now: its buffer must not be touched.
    submitted: bool,
}

impl UringEngine {
    /// Whether this kernel lets us create a ring that can read and write files.
    pub fn probe(depth: u32) -> io::Result<()> {
        let ring = IoUring::new(depth.max(1))?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Read::CODE) || !probe.is_supported(opcode::Write::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel's io_uring lacks READ/WRITE (needs Linux 5.6 or later)",
            ));
        }
        Ok(())
    }

    pub fn new(files: Vec<File>, depth: u32) -> io::Result<UringEngine> {
        let depth = depth.clamp(1, 4096);
        Self::probe(depth)?;
        Ok(UringEngine {
            files,
            depth,
            rings: Mutex::new(vec![IoUring::new(depth)?]),
            stats: IoStats::default(),
        })
    }

    /// The submission entry for the rest of `slot`'s transfer.
    fn entry(&self, slot: &mut Slot, index: usize) -> squeue::Entry {
        let fd = types::Fd(self.files[slot.op.file].as_raw_fd());
        let len = (slot.op.len - slot.done).min(MAX_SUBMIT) as u32;
        let offset = slot.op.offset + slot.done as u64;
        let ptr = slot.op.buf.as_mut_ptr().wrapping_add(slot.done);
        let entry = match slot.op.kind {
            IoKind::Read => opcode::Read::new(fd, ptr, len).offset(offset).build(),
            IoKind::Write => opcode::Write::new(fd, ptr, len).offset(offset).build(),
        };
        entry.user_data(index as u64)
    }

    /// Counts `slot`'s outcome and hands it back.
    fn finish(
        &self,
        i: usize,
        slot: Slot,
        result: io::Result<()>,
        done: &mut dyn FnMut(usize, IoDone),
    ) {
        let took = slot.started.map_or_else(Default::default, |t| t.elapsed());
        self.stats
            .record(slot.op.kind, slot.op.len, took, result.is_ok());
        done(
            i,
            IoDone {
                buf: slot.op.buf,
                result,
            },
        );
    }
}

impl IoEngine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn queue_depth(&self) -> u32 {
        self.depth
    }

    fn run_each(&self, ops: &mut dyn Iterator<Item = IoOp>, done: &mut dyn FnMut(usize, IoDone)) {
        let mut ops = ops.enumerate().peekable();
        if ops.peek().is_none() {
            return;
        }
        let ring = self.rings.lock().pop();
        let mut ring = match ring.map_or_else(|| IoUring::new(self.depth), Ok) {
            Ok(ring) => ring,
            Err(e) => {
                for (i, op) in ops {
                    let why = io::Error::new(e.kind(), format!("creating an io_uring: {e}"));
                    done(i, IoDone::failed(op, why));
                }
                return;
            }
        };
        // Indexed by the op's position; `None` once handed back.
        let mut slots: Vec<Option<Slot>> = Vec::new();
        // Ops to (re)submit before pulling new ones: the rest of short transfers, and ops
        // the submission queue had no room for.
        let mut queue = VecDeque::new();
        // Completed ops, handed back once the queue is full again.
        let mut finished: Vec<(usize, io::Result<()>)> = Vec::new();
        let mut in_flight = 0usize;
        let mut broken = None;
        loop {
            while in_flight < self.depth as usize {
                let (i, fresh) = match queue.pop_front() {
                    Some(i) => (i, false),
                    None => match ops.next() {
                        Some((i, op)) => {
                            slots.resize_with(i + 1, || None);
                            let checked = op.check(self.files.len());
                            let slot = Slot {
                                op,
                                done: 0,
                                started: None,
                                submitted: false,
                            };
                            if let Err(e) = checked {
                                self.finish(i, slot, Err(e), done);
                                continue;
                            }
                            slots[i] = Some(slot);
                            (i, true)
                        }
                        None => break,
                    },
                };
                let slot = slots[i].as_mut().expect("a held op");
                let entry = self.entry(slot, i);
                // SAFETY: the entry points into the buffer of `slots[i]`, which this function
                // owns and does not drop, move out or touch until the kernel reports the op
                // complete; if the ring breaks with ops in flight their buffers are leaked
                // below, never freed. The fd belongs to `self.files`, alive as long as `self`.
                if unsafe { ring.submission().push(&entry) }.is_err() {
                    queue.push_front(i); // The queue is full: submit what is there first.
                    break;
                }
                slot.started.get_or_insert_with(Instant::now);
                slot.submitted = true;
                in_flight += 1;
                self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                if fresh {
                    // Start it now: the caller prepares the next op (a copy, a checksum)
                    // while this one is on the device. A failure shows at the wait below.
                    let _ = ring.submit();
                }
            }
            // The device has its next ops; now the caller's work on finished ones overlaps
            // their transfers.
            for (i, result) in finished.drain(..) {
                let slot = slots[i].take().expect("finished once");
                self.finish(i, slot, result, done);
            }
            if in_flight == 0 {
                break;
            }
            if let Err(e) = ring.submit_and_wait(1) {
                let transient = e.kind() == io::ErrorKind::Interrupted
                    || matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::BUSY.raw_os_error() || code == rustix::io::Errno::AGAIN.raw_os_error());
                if !transient {
                    broken = Some(e);
                    break;
                }
            }
            let mut again = Vec::new();
            for cqe in ring.completion() {
                let i = cqe.user_data() as usize;
                in_flight -= 1;
                self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                let slot = slots[i].as_mut().expect("an op in flight");
                slot.submitted = false;
                let res = cqe.result();
                if res < 0 {
                    finished.push((i, Err(io::Error::from_raw_os_error(-res))));
                } else if res == 0 {
                    let what = format!(
                        "{:?} of {} bytes at {} stopped after {} (end of file)",
                        slot.op.kind, slot.op.len, slot.op.offset, slot.done
                    );
                    finished.push((i, Err(io::Error::new(io::ErrorKind::UnexpectedEof, what))));
                } else {
                    slot.done += res as usize;
                    if slot.done < slot.op.len {
                        again.push(i); // Short transfer: ask for the rest.
                    } else {
                        finished.push((i, Ok(())));
                    }
                }
            }
            for i in again.into_iter().rev() {
                queue.push_front(i);
            }
        }
        match broken {
            None => self.rings.lock().push(ring),
            Some(e) => {
                // Ops still in flight may yet write into their buffers: leak those buffers
                // (and the ring) rather than free memory the kernel may still use.
                tracing::error!("io_uring broke with {in_flight} ops in flight: {e}");
                self.stats
                    .in_flight
                    .fetch_sub(in_flight as u64, Ordering::Relaxed);
                let mut finished: std::collections::HashMap<usize, io::Result<()>> =
                    finished.drain(..).collect();
                for (i, slot) in slots.iter_mut().enumerate() {
                    let Some(mut slot) = slot.take() else {
                        continue;
                    };
                    if let Some(result) = finished.remove(&i) {
                        self.finish(i, slot, result, done);
                        continue;
                    }
                    if slot.submitted {
                        let len = slot.op.buf.len();
                        std::mem::forget(std::mem::replace(&mut slot.op.buf, IoBuf::new(len)));
                    }
                    let why = io::Error::new(e.kind(), format!("io_uring failed: {e}"));
                    self.finish(i, slot, Err(why), done);
                }
                std::mem::forget(ring);
                // Ops the iterator still held were never started.
                for (i, op) in ops {
                    done(
                        i,
                        IoDone::failed(op, io::Error::other("not run: the io_uring failed")),
                    );
                }
            }
        }
    }

    fn stats(&self) -> &IoStats {
        &self.stats
    }
}
