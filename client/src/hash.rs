//! Block hashes and keys that every engine instance, on every host, computes identically.
//!
//! An inference engine cuts a prompt into blocks of `block_size` tokens and names each block
//! by a hash of every token up to it, chained through the parent block's hash. strata's
//! chain is seeded and fully specified (no process-level hash seed, no language-specific
//! hasher), so a Python or C++ client can match it. Version 1:
//!
//! ```text
//! root      = xxh3_128(seed, b"strata/block-hash/v1")
//! hash(i)   = xxh3_128(seed, parent(16 bytes LE)
//!                            || u32 LE extra-key count || (u32 LE length || bytes) per extra key
//!                            || u32 LE token count || each token as u32 LE)
//! parent(0) = root; parent(i) = hash(i - 1)
//! hex       = 32 lower-case hex digits of the u128, most significant first
//! key       = "{model}@tp_rank:{rank}@{hex}"
//! ```
//!
//! Only full blocks are hashed: a partial last block is never stored. Test vectors are in
//! `tests/block_hash_vectors.json` of the repository.

use std::fmt;

use xxhash_rust::xxh3::xxh3_128_with_seed;

/// The 128-bit hash of a block and, through its parent, of every token before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Computes the chained block hashes of token sequences.
#[derive(Clone, Debug)]
pub struct BlockHasher {
    seed: u64,
    block_size: usize,
    extra_keys: Vec<Vec<u8>>,
}

impl BlockHasher {
    /// A hasher for blocks of `block_size` tokens (typically 128), seeded with `seed`
    /// (every instance of a deployment must use the same). `block_size` 0 is treated as 1.
    pub fn new(seed: u64, block_size: usize) -> BlockHasher {
        BlockHasher {
            seed,
            block_size: block_size.max(1),
            extra_keys: Vec::new(),
        }
    }

    /// Mixes `key` into every block hash: a model name, a LoRA id, a cache salt... Blocks
    /// hashed with different extra keys never share a hash.
    pub fn with_extra_key(mut self, key: impl Into<Vec<u8>>) -> BlockHasher {
        self.extra_keys.push(key.into());
        self
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The parent of the first block.
    pub fn root(&self) -> BlockHash {
        BlockHash(xxh3_128_with_seed(b"strata/block-hash/v1", self.seed))
    }

    /// The hash of one block of `tokens` whose previous block hashed to `parent`.
    pub fn hash_block(&self, parent: BlockHash, tokens: &[u32]) -> BlockHash {
        let extra: usize = self.extra_keys.iter().map(|k| 4 + k.len()).sum();
        let mut input = Vec::with_capacity(16 + 4 + extra + 4 + 4 * tokens.len());
        input.extend_from_slice(&parent.0.to_le_bytes());
        input.extend_from_slice(&(self.extra_keys.len() as u32).to_le_bytes());
        for key in &self.extra_keys {
            input.extend_from_slice(&(key.len() as u32).to_le_bytes());
            input.extend_from_slice(key);
        }
        input.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
        for t in tokens {
            input.extend_from_slice(&t.to_le_bytes());
        }
        BlockHash(xxh3_128_with_seed(&input, self.seed))
    }

    /// The hashes of every full block of `tokens`, in order.
    pub fn block_hashes(&self, tokens: &[u32]) -> Vec<BlockHash> {
        let mut parent = self.root();
        tokens
            .chunks_exact(self.block_size)
            .map(|block| {
                parent = self.hash_block(parent, block);
                parent
            })
            .collect()
    }
}

/// Turns block hashes into store keys: `{model}@tp_rank:{rank}@{hash}`.
#[derive(Clone, Debug)]
pub struct KeyFormatter {
    model: String,
}

impl KeyFormatter {
    /// Keys for `model` (any string without `@` reads best; it is not checked).
    pub fn new(model: impl Into<String>) -> KeyFormatter {
        KeyFormatter {
            model: model.into(),
        }
    }

    /// The key of tensor-parallel rank `rank`'s part of block `hash`.
    pub fn key(&self, rank: u32, hash: BlockHash) -> String {
        format!("{}@tp_rank:{rank}@{hash}", self.model)
    }

    /// The keys of all `ranks` tensor-parallel ranks of block `hash`: one prefix position.
    pub fn group(&self, ranks: u32, hash: BlockHash) -> Vec<String> {
        (0..ranks).map(|r| self.key(r, hash)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_every_earlier_token_and_only_on_full_blocks() {
        let h = BlockHasher::new(7, 4);
        let a = h.block_hashes(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(a.len(), 2, "the partial third block is not hashed");
        let b = h.block_hashes(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(a, b);
        let c = h.block_hashes(&[0, 2, 3, 4, 5, 6, 7, 8]);
        assert_ne!(a[1], c[1], "block 2 must depend on block 1's tokens");
        assert_ne!(BlockHasher::new(8, 4).block_hashes(&[1, 2, 3, 4]), a[..1]);
        let salted = BlockHasher::new(7, 4).with_extra_key("model-b");
        assert_ne!(salted.block_hashes(&[1, 2, 3, 4]), a[..1]);
    }

    #[test]
    fn keys_name_model_rank_and_hash() {
        let f = KeyFormatter::new("qwen");
        let k = f.key(3, BlockHash(0xab));
        assert_eq!(k, "qwen@tp_rank:3@000000000000000000000000000000ab");
        assert_eq!(f.group(2, BlockHash(1)).len(), 2);
    }
}
