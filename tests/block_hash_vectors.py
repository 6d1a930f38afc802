#!/usr/bin/env python3
"""Reference implementation of strata's block hash (v1) in Python, and the generator of
block_hash_vectors.json. The Rust client's tests check its BlockHasher against that file,
so two independent implementations agree on every vector.

    pip install xxhash && python3 tests/block_hash_vectors.py > tests/block_hash_vectors.json
"""
import json
import struct

import xxhash

MASK64 = (1 << 64) - 1


def root(seed):
    return xxhash.xxh3_128_intdigest(b"strata/block-hash/v1", seed=seed)


def hash_block(seed, parent, extra_keys, tokens):
    data = parent.to_bytes(16, "little")
    data += struct.pack("<I", len(extra_keys))
    for key in extra_keys:
        data += struct.pack("<I", len(key)) + key
    data += struct.pack("<I", len(tokens))
    data += b"".join(struct.pack("<I", t) for t in tokens)
    return xxhash.xxh3_128_intdigest(data, seed=seed)


def block_hashes(seed, block_size, extra_keys, tokens):
    parent, out = root(seed), []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash_block(seed, parent, extra_keys, tokens[start:start + block_size])
        out.append(parent)
    return out


def case(seed, block_size, extra_keys, tokens, model, rank):
    hashes = ["%032x" % h for h in block_hashes(seed, block_size, extra_keys, tokens)]
    return {
        "seed": seed,
        "block_size": block_size,
        "extra_keys": [k.decode() for k in extra_keys],
        "tokens": tokens,
        "model": model,
        "rank": rank,
        "hashes": hashes,
        "keys": ["%s@tp_rank:%d@%s" % (model, rank, h) for h in hashes],
    }


def main():
    cases = [
        case(0, 4, [], list(range(10)), "m", 0),
        case(42, 128, [b"qwen2.5-72b"], [(i * 7919) % 151936 for i in range(1024)],
             "qwen2.5-72b", 3),
        case(MASK64, 16, [b"a", b""], [0xFFFFFFFF - i for i in range(40)], "model-x", 7),
        case(0, 128, [], list(range(100)), "m", 0),
    ]
    doc = {
        "algorithm": "strata block hash v1: root = xxh3_128(seed, b'strata/block-hash/v1'); "
                     "hash = xxh3_128(seed, parent u128 LE || u32 LE extra-key count || "
                     "(u32 LE len || bytes) per extra key || u32 LE token count || tokens "
                     "u32 LE); only full blocks; hex = 32 lower-case digits; "
                     "key = model@tp_rank:rank@hex",
        "cases": cases,
    }
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
