//! How the memcpy ceilings copy.
//!
//! strata copies large values with streaming stores (`strata_copy`), which on some machines
//! is faster than libc's memcpy at the same size. A ceiling a system can beat is no ceiling,
//! so each memcpy ceiling is measured both ways where they differ and is the faster of the
//! two; its line names the way that won (`way`) and carries every way's figure
//! (`libc_gbps`, `streaming_gbps`).

use crate::report::Record;

/// A way to copy a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyWay {
    /// libc's memcpy (`copy_from_slice`).
    Libc,
    /// strata's copy (`strata_copy::copy`): streaming stores for large blocks.
    Streaming,
}

impl CopyWay {
    /// The ways worth measuring for blocks of `size` bytes: libc's, and strata's where it
    /// streams such blocks on this CPU (elsewhere it is the same memcpy).
    pub fn for_size(size: usize) -> Vec<CopyWay> {
        if strata_copy::streams(size) {
            vec![CopyWay::Libc, CopyWay::Streaming]
        } else {
            vec![CopyWay::Libc]
        }
    }

    pub fn copy(self, dst: &mut [u8], src: &[u8]) {
        match self {
            CopyWay::Libc => dst.copy_from_slice(src),
            CopyWay::Streaming => strata_copy::copy(dst, src),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CopyWay::Libc => "libc",
            CopyWay::Streaming => "streaming",
        }
    }
}

/// Measures a ceiling once per way for blocks of `size` bytes and returns the fastest
/// way's record, with `way` and every way's GB/s added.
pub fn fastest(size: usize, measure: impl FnMut(CopyWay) -> Record) -> Record {
    fastest_way(size, measure).1
}

/// [`fastest`], and the way that won.
pub fn fastest_way(size: usize, mut measure: impl FnMut(CopyWay) -> Record) -> (CopyWay, Record) {
    let measured: Vec<(CopyWay, Record)> = CopyWay::for_size(size)
        .into_iter()
        .map(|way| (way, measure(way)))
        .collect();
    let figures: Vec<(CopyWay, f64)> = measured
        .iter()
        .map(|(way, r)| (*way, r.bytes_per_s() / 1e9))
        .collect();
    let (way, best) = measured
        .into_iter()
        .max_by(|a, b| a.1.bytes_per_s().total_cmp(&b.1.bytes_per_s()))
        .expect("libc is always measured");
    let record = figures
        .into_iter()
        .fold(best.with("way", way.name()), |r, (w, gbps)| {
            r.with(&format!("{}_gbps", w.name()), round2(gbps))
        });
    (way, record)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn both_ways_copy_the_same_bytes() {
        let src: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 251) as u8).collect();
        for way in CopyWay::for_size(src.len()) {
            let mut dst = vec![0u8; src.len()];
            way.copy(&mut dst, &src);
            assert!(dst == src, "{}", way.name());
        }
    }

    #[test]
    fn the_ceiling_is_the_fastest_way_and_names_it() {
        let size = strata_copy::STREAM_MIN;
        let record = |way: CopyWay| {
            let bytes = if way == CopyWay::Libc { 2_000 } else { 3_000 };
            Record::new("t", "memcpy", "copy", "ceiling").timed(
                1,
                bytes,
                Duration::from_secs(1),
                None,
            )
        };
        let best = fastest(size, record);
        let ways = CopyWay::for_size(size);
        let expected = if ways.len() == 2 { 3_000.0 } else { 2_000.0 };
        assert_eq!(best.bytes_per_s(), expected);
        let json = best.to_json();
        assert_eq!(json["way"], ways.last().unwrap().name());
        assert!(json.get("libc_gbps").is_some());
    }
}
