"""The package as an editor sees it: stubs for every public call, docstrings everywhere,
one exception hierarchy with the stable codes."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import strata
import strata.mooncake
from strata import errors

STUBS = Path(strata.__file__).with_name("_native.pyi")


def stub_classes():
    tree = ast.parse(STUBS.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {
                n.name
                for n in node.body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name != "__init__"
            }
    return out


def public(cls):
    return {n for n in dir(cls) if not n.startswith("_")} | (
        {"__enter__", "__exit__"} if hasattr(cls, "__enter__") else set()
    )


def test_the_stubs_name_every_public_call_and_nothing_else():
    stubs = stub_classes()
    for cls in (strata.Client, strata.ClusterClient, strata.BlockHasher, strata.KeyFormatter, strata.DeviceMemory):
        assert stubs[cls.__name__] == public(cls), cls.__name__


def test_every_public_call_has_a_docstring():
    for cls in (strata.Client, strata.ClusterClient, strata.BlockHasher, strata.KeyFormatter, strata.DeviceMemory,
                strata.AsyncClient,
                strata.mooncake.MooncakeDistributedStore):
        assert cls.__doc__, cls
        for name in public(cls) - {"__enter__", "__exit__"}:
            assert inspect.getdoc(getattr(cls, name)), f"{cls.__name__}.{name}"


def test_the_exceptions_are_one_hierarchy_with_the_stable_codes():
    # The numbers are strata's wire codes (proto/src/error.rs): never renumbered.
    expected = {
        "NotFound": 1, "AlreadyExists": 2, "Busy": 3, "NoSpace": 4, "LeaseExpired": 5,
        "InvalidKey": 6, "InvalidArgument": 7, "TooLarge": 8, "NotWriter": 9, "Internal": 10,
        "Leased": 11, "ProtocolError": 12, "Unauthorized": 13, "Timeout": 14,
        "ConnectionError": 15, "Corrupt": 16,
    }
    for name, code in expected.items():
        cls = getattr(strata, name)
        assert issubclass(cls, strata.Error) and cls.code == code, name
        assert errors.BY_CODE[code] is cls
    assert issubclass(strata.Timeout, TimeoutError)
    assert issubclass(strata.ConnectionError, ConnectionError)
    assert issubclass(strata.InvalidKey, ValueError)
    e = errors._from_code(99, "Future", "a code this package does not know")
    assert type(e) is strata.Error and e.code == 99


def test_the_package_is_the_abi3_build_with_its_type_marker():
    native = Path(strata._native.__file__).name
    assert native.endswith(".abi3.so"), native
    assert Path(strata.__file__).with_name("py.typed").exists()
