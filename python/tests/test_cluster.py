"""strata.ClusterClient against a real cluster: Debian's etcd on free loopback ports and
three strata-servers joining it (docs/cluster.md), and against a server alone."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

import strata


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def etcd():
    binary = shutil.which("etcd")
    if binary is None:
        if os.environ.get("STRATA_REQUIRE_EXTERNAL") == "1":
            pytest.fail("etcd is not installed (Debian: apt-get install etcd-server), and STRATA_REQUIRE_EXTERNAL=1")
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    data = tempfile.mkdtemp(prefix="strata-py-etcd-")
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [binary, "--name", "py", "--data-dir", f"{data}/data",
         "--listen-client-urls", client, "--advertise-client-urls", client,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"py={peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{client}/health", timeout=1) as r:
                if b"true" in r.read():
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "etcd did not become healthy"
        time.sleep(0.05)
    yield client
    process.kill()
    process.wait()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def members(etcd, start_module_server):
    return [
        start_module_server(["--etcd-endpoints", etcd, "--cluster-id", "py", "--node-id", n, "--member-ttl", "2",
                "--device-plugin", "off", "--ssd-path", "off", "--join-window", "0"])
        for n in ("n1", "n2", "n3")
    ]


def cluster_of(server, size):
    client = strata.ClusterClient(server.address, ca=server.cert, timeout=20.0)
    deadline = time.monotonic() + 10
    while len(client.view()["members"]) != size:
        assert time.monotonic() < deadline, "the view never filled"
        time.sleep(0.05)
        client.refresh_view()
    return client


def chain(tag, blocks, ranks=2):
    return [[f"m@tp{r}@{tag}-{b:032x}" for r in range(ranks)] for b in range(blocks)]


def value(key):
    return (key.encode() * 200)[:4096]


def test_a_chain_round_trips_and_each_key_lives_at_its_owner(members, prefix):
    with cluster_of(members[0], 3) as cluster:
        view = cluster.view()
        assert [m["node_id"] for m in view["members"]] == ["n1", "n2", "n3"]
        assert view["cluster_id"] == "py" and view["run_blocks"] == 16
        groups = chain(prefix, 40)
        keys = [k for g in groups for k in g]
        assert cluster.batch_put_chain(groups, [value(k) for k in keys]) == [None] * len(keys)
        assert cluster.prefix_len(groups) == 40
        longer = groups + chain(prefix + "tail", 5)
        assert cluster.prefix_len(longer, lease=True) == 40
        bufs = [bytearray(4096) for _ in keys]
        assert cluster.batch_get_chain_into(groups, bufs) == [4096] * len(keys)
        assert all(bytes(b) == value(k) for b, k in zip(bufs, keys))
        # A lookup asked at most ceil(40 / 16) = 3 servers.
        c = cluster.counters()
        assert c["lookups"] == 2 and c["lookup_servers"] <= 6
        # Each run's keys at one member: the one a run's first key is owned by.
        direct = {s: s.client() for s in members}
        by_id = dict(zip(("n1", "n2", "n3"), members))
        for start in range(0, 40, 16):
            owner = cluster.owner(groups[start][0])
            for g in groups[start:start + 16]:
                for k in g:
                    assert direct[by_id[owner]].exists(k)
                    others = [s for n, s in by_id.items() if n != owner]
                    assert not any(direct[s].exists(k) for s in others)
        # A hole in the third run cuts the prefix there.
        hole = groups[35][1]
        direct[by_id[cluster.owner(groups[32][0])]].remove(hole, force=True)
        assert cluster.prefix_len(groups) == 35
        for c in direct.values():
            c.close()


def test_single_keys_and_errors(members, prefix):
    cluster = cluster_of(members[1], 3)
    for i in range(20):
        key = f"{prefix}single-{i}"
        cluster.put(key, value(key))
        assert cluster.get(key) == value(key)
        assert cluster.exists(key)
    cluster.remove(f"{prefix}single-0", force=True)
    with pytest.raises(strata.NotFound):
        cluster.get(f"{prefix}single-0")
    with pytest.raises(strata.InvalidArgument):
        cluster.batch_get_chain_into(chain(prefix, 1), [bytearray(8)] * 3)
    cluster.close()
    with pytest.raises(strata.ConnectionError):
        cluster.exists("x")


def test_a_server_alone_is_a_cluster_of_one(start_server, prefix):
    server = start_server(["--device-plugin", "off", "--ssd-path", "off"])
    cluster = strata.ClusterClient(server.address, ca=server.cert)
    assert cluster.view()["members"] == []
    assert cluster.owner("k") is None
    groups = chain(prefix, 20)
    keys = [k for g in groups for k in g]
    assert cluster.batch_put_chain(groups, [value(k) for k in keys]) == [None] * len(keys)
    assert cluster.prefix_len(groups) == 20
    assert server.client().prefix_len(groups) == 20
