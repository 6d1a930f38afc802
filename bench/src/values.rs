//! Values the bench writes, each checkable by the key it was written under.

/// A few distinct byte patterns, the key choosing which; a read checks the head
/// and tail of what it got against its key's pattern.
pub struct Values(Vec<Vec<u8>>);

impl Values {
    pub fn new(size: u64) -> Values {
        Values(
            (0..16u8)
                .map(|seed| {
                    (0..size)
                        .map(|i| (i.wrapping_mul(0x9E37_79B1) >> 7) as u8 ^ seed)
                        .collect()
                })
                .collect(),
        )
    }

    pub fn of(&self, key: &str) -> &[u8] {
        let h = key
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        &self.0[(h % self.0.len() as u64) as usize]
    }

    /// Whether `got` holds `key`'s value (checked at both ends and the middle).
    pub fn check(&self, key: &str, got: &[u8]) -> bool {
        got.len() == self.of(key).len()
            && self.check_by(key, |at, buf| buf.copy_from_slice(&got[at..at + buf.len()]))
    }

    /// [`Values::check`] of a value of the right length that is not in host memory (a
    /// device buffer): `read(offset, buf)` fills `buf` from the value's `offset`.
    pub fn check_by(&self, key: &str, mut read: impl FnMut(usize, &mut [u8])) -> bool {
        let want = self.of(key);
        let n = want.len().min(64);
        [0, want.len() / 2, want.len() - n].into_iter().all(|at| {
            let n = n.min(want.len() - at);
            let mut got = vec![0u8; n];
            read(at, &mut got);
            got == want[at..at + n]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_check_the_key_they_were_written_under() {
        let v = Values::new(4096);
        let k = "mixed/00000007";
        assert!(v.check(k, v.of(k)));
        let other = (0..100)
            .map(|i| format!("k{i}"))
            .find(|o| v.of(o) != v.of(k))
            .unwrap();
        assert!(!v.check(k, v.of(&other)));
        let mut torn = v.of(k).to_vec();
        torn[4095] ^= 1;
        assert!(!v.check(k, &torn));
    }
}
