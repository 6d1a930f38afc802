//! The fallback engine: `pread`/`pwrite`, one op after the other in the caller's thread.
//! Concurrency comes only from concurrent callers; a batch gains nothing from its depth.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use super::io::{IoDone, IoEngine, IoKind, IoOp, IoStats};

pub struct PsyncEngine {
    files: Vec<File>,
    stats: IoStats,
}

impl PsyncEngine {
    pub fn new(files: Vec<File>) -> PsyncEngine {
        PsyncEngine {
            files,
            stats: IoStats::default(),
        }
    }
}

impl PsyncEngine {
    fn run_one(&self, mut op: IoOp) -> IoDone {
        let started = Instant::now();
        let result = op.check(self.files.len()).and_then(|()| {
            let file = &self.files[op.file];
            match op.kind {
                // `*_exact_at` / `*_all_at` retry short transfers and EINTR; a read past the
                // end of the file is an error, never a short success.
                IoKind::Read => file.read_exact_at(&mut op.buf.as_mut_slice()[..op.len], op.offset),
                IoKind::Write => file.write_all_at(&op.buf.as_slice()[..op.len], op.offset),
            }
        });
        self.stats
            .record(op.kind, op.len, started.elapsed(), result.is_ok());
        IoDone {
            buf: op.buf,
            result,
        }
    }
}

impl IoEngine for PsyncEngine {
    fn name(&self) -> &'static str {
        "psync"
    }

    fn queue_depth(&self) -> u32 {
        1
    }

    fn run_each(&self, ops: &mut dyn Iterator<Item = IoOp>, done: &mut dyn FnMut(usize, IoDone)) {
        for (i, op) in ops.enumerate() {
            done(i, self.run_one(op));
        }
    }

    fn stats(&self) -> &IoStats {
        &self.stats
    }
}
