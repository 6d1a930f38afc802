//! `strata.BlockHasher` and `strata.KeyFormatter`: the Rust client's block hashes and keys,
//! so a Python engine names its blocks exactly as every other instance and the Rust
//! client do (the published vectors: `tests/block_hash_vectors.json`).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// Chained 128-bit hashes of full blocks of tokens (strata block hash v1).
#[pyclass(frozen, module = "strata._native", name = "BlockHasher")]
pub struct BlockHasher {
    inner: strata_client::BlockHasher,
}

/// The bytes of an extra key: `str` as UTF-8, or `bytes`.
fn extra_key_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_cow()?.as_bytes().to_vec());
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    Err(pyo3::exceptions::PyTypeError::new_err(
        "an extra key is a str or bytes",
    ))
}

#[pymethods]
impl BlockHasher {
    /// A hasher for blocks of `block_size` tokens, seeded with `seed`, mixing in each of
    /// `extra_keys` (model name, LoRA id, cache salt) in order.
    #[new]
    #[pyo3(signature = (seed=0, block_size=128, extra_keys=Vec::new()))]
    fn new(seed: u64, block_size: usize, extra_keys: Vec<Bound<'_, PyAny>>) -> PyResult<Self> {
        let mut inner = strata_client::BlockHasher::new(seed, block_size);
        for key in &extra_keys {
            inner = inner.with_extra_key(extra_key_bytes(key)?);
        }
        Ok(BlockHasher { inner })
    }

    /// Tokens per block.
    #[getter]
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }

    /// The parent of the first block.
    fn root(&self) -> u128 {
        self.inner.root().0
    }

    /// The hash of one block of `tokens` whose parent block hashed to `parent`.
    fn hash_block(&self, py: Python<'_>, parent: u128, tokens: Vec<u32>) -> u128 {
        py.detach(|| {
            self.inner
                .hash_block(strata_client::BlockHash(parent), &tokens)
                .0
        })
    }

    /// The hash of every full block of `tokens`, in order (a partial last block has none).
    fn block_hashes(&self, py: Python<'_>, tokens: Vec<u32>) -> Vec<u128> {
        py.detach(|| {
            self.inner
                .block_hashes(&tokens)
                .into_iter()
                .map(|h| h.0)
                .collect()
        })
    }

    /// A hash as 32 lower-case hex digits, as it appears in keys.
    #[staticmethod]
    fn hex(hash: u128) -> String {
        strata_client::BlockHash(hash).to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "<strata.BlockHasher block_size={}>",
            self.inner.block_size()
        )
    }
}

/// Keys `"{model}@tp_rank:{rank}@{hex}"` for block hashes.
#[pyclass(frozen, module = "strata._native", name = "KeyFormatter")]
pub struct KeyFormatter {
    inner: strata_client::KeyFormatter,
}

#[pymethods]
impl KeyFormatter {
    /// Keys for `model`.
    #[new]
    fn new(model: String) -> Self {
        KeyFormatter {
            inner: strata_client::KeyFormatter::new(model),
        }
    }

    /// The key of rank `rank`'s part of the block hashed to `hash`.
    fn key(&self, rank: u32, hash: u128) -> String {
        self.inner.key(rank, strata_client::BlockHash(hash))
    }

    /// The keys of all `ranks` tensor-parallel ranks of one block: one prefix_len group.
    fn group(&self, ranks: u32, hash: u128) -> Vec<String> {
        self.inner.group(ranks, strata_client::BlockHash(hash))
    }
}
