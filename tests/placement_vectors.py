#!/usr/bin/env python3
"""Reference implementation of strata's cluster placement (scheme rendezvous-xxh3-v1,
docs/cluster.md) in Python, and the generator of placement_vectors.json. The Rust tests
check strata_proto::placement against that file, so two implementations agree.

    pip install xxhash && python3 tests/placement_vectors.py > tests/placement_vectors.json
"""
import json
import math

import xxhash

SEED = 0x5354524154410001


def node_hash(seed, node_id):
    return xxhash.xxh3_64_intdigest(node_id.encode(), seed=seed)


def score(seed, node_id, weight, anchor):
    if not (math.isfinite(weight) and weight > 0):
        return 0.0
    h = xxhash.xxh3_64_intdigest(anchor, seed=seed ^ node_hash(seed, node_id))
    u = ((h >> 11) + 0.5) / float(1 << 53)
    return weight / -math.log(u)


def rank(seed, members, anchor):
    """members: [(node_id, weight)] -> node ids, owner first."""
    scored = [(-score(seed, n, w, anchor), n) for n, w in members]
    return [n for _, n in sorted(scored)]


def main():
    clusters = [
        [("a", 1.0), ("b", 1.0), ("c", 1.0)],
        [("a", 1.0), ("b", 1.0), ("c", 2.0)],
        [("node-1", 1.0), ("node-2", 1.0), ("node-3", 1.0), ("node-4", 1.0)],
        [("x", 0.5), ("y", 3.0)],
    ]
    vectors = []
    for seed in (SEED, 0, 42):
        for members in clusters:
            for i in range(8):
                anchor = f"m@head_or_tp_rank:0@{i:032x}".encode()
                vectors.append({
                    "seed": seed,
                    "members": [{"node_id": n, "weight": w} for n, w in members],
                    "anchor": anchor.decode(),
                    "ranking": rank(seed, members, anchor),
                })
    hashes = [{"seed": s, "node_id": n, "hash": node_hash(s, n)} for s in (SEED, 0) for n in ("a", "node-1")]
    print(json.dumps({"scheme": "rendezvous-xxh3-v1", "node_hashes": hashes, "rankings": vectors}, indent=1))


if __name__ == "__main__":
    main()
