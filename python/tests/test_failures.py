"""Failures a Python user meets: a dead server, a bad token, a server that dies mid-session,
a fork. Each is a clear exception of strata's hierarchy within the timeout, never a crash
or a hang, and nothing stored is lost."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

import strata


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_server_is_a_connection_error_within_the_timeout_with_the_gil_released(server):
    ticks = 0
    stop = threading.Event()

    def tick():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.monotonic()
    try:
        with pytest.raises((strata.ConnectionError, strata.Timeout)) as e:
            strata.Client(f"127.0.0.1:{free_udp_port()}", ca=server.cert, timeout=1.0)
    finally:
        stop.set()
        ticker.join()
    took = time.monotonic() - started
    assert took < 10, f"connecting to nothing took {took:.1f} s"
    assert isinstance(e.value, strata.Error)
    # Another Python thread ran all along: the wait did not hold the GIL.
    assert ticks > 0.2 * took / 0.002, f"only {ticks} ticks in {took:.2f} s"


def test_a_wrong_or_missing_token_is_unauthorized(tmp_path, start_server):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(0o600)
    s = start_server(["--auth-token-file", str(token_file)])
    with pytest.raises(strata.Unauthorized):
        s.client(token="wrong")
    with pytest.raises(strata.Unauthorized):
        s.client()
    with s.client(token="s3cret-token") as c:
        c.put("k", b"v")
        assert c.get("k") == b"v"
    with s.client(token_file=str(token_file)) as c:
        assert c.get("k") == b"v"
    loose = tmp_path / "loose"
    loose.write_text("s3cret-token\n")
    loose.chmod(0o644)
    with pytest.raises(strata.InvalidArgument, match="loose"):
        s.client(token_file=str(loose))


def test_a_server_killed_mid_session_fails_calls_quickly_and_a_restart_serves_again(tmp_path, start_server):
    s = start_server(data_dir=tmp_path)
    c = s.client(timeout=3.0)
    c.put("kept", b"v" * 1000)
    s.kill()
    started = time.monotonic()
    with pytest.raises(strata.Error) as e:
        c.get("kept")
    assert isinstance(e.value, (strata.ConnectionError, strata.Timeout)), repr(e.value)
    assert time.monotonic() - started < 15
    results = c.batch_get_into(["kept", "other"], [bytearray(1000), bytearray(10)])
    assert all(isinstance(r, (strata.ConnectionError, strata.Timeout)) for r in results), results
    c.close()
    s2 = start_server(data_dir=tmp_path)
    with s2.client() as c2:
        c2.put("after", b"a")
        assert c2.get("after") == b"a"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_client_made_before_fork_refuses_in_the_child_and_a_new_one_works(server, client, prefix):
    client.put(prefix + "f", b"before fork")
    pid = os.fork()
    if pid == 0:  # the child: exit code says what happened
        code = 1
        try:
            try:
                client.get(prefix + "f")
                code = 2
            except strata.ConnectionError as e:
                if "fork" in str(e):
                    with server.client() as fresh:
                        code = 0 if fresh.get(prefix + "f") == b"before fork" else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert client.get(prefix + "f") == b"before fork"
