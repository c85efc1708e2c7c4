"""The public API: explicit re-exports into sorted, complete `__all__` lists."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

import tether

PACKAGES = [
    "tether",
    "tether.gateway",
    "tether.models",
    "tether.policy",
    "tether.resilience",
    "tether.runtime",
    "tether.store",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_without_duplicates(package: str) -> None:
    """`__all__` is sorted and names each export once."""
    names = importlib.import_module(package).__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_resolves(package: str) -> None:
    """Every name in `__all__` is an attribute of the package (`from package import *` works)."""
    module = importlib.import_module(package)
    namespace: dict[str, object] = {}
    exec(f"from {package} import *", namespace)
    for name in module.__all__:
        assert hasattr(module, name), name
        assert namespace[name] is getattr(module, name)


def test_all_lists_every_public_attribute_of_tether() -> None:
    """Nothing public is importable from `tether` by accident: each public attribute is in `__all__`."""
    public = {
        name
        for name, value in vars(tether).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # `from __future__ import annotations`
    }
    assert public == set(tether.__all__)


@pytest.mark.parametrize("name", tether.__all__)
def test_reexport_is_the_defining_object(name: str) -> None:
    """Each re-export is the very object its defining tether module holds, not a copy or a shim."""
    value = getattr(tether, name)
    defining_module = importlib.import_module(value.__module__)
    assert value.__module__.startswith("tether.")
    assert getattr(defining_module, value.__name__) is value


@pytest.mark.parametrize(
    "name",
    ["Agent", "Runtime", "Worker", "tool", "ToolContext", "ScriptedModel", "SqliteRunStore", "classify"],
)
def test_core_names_are_public(name: str) -> None:
    """The names the design promises (Agent, tool, Runtime …) are part of the public API."""
    assert name in tether.__all__
    value = getattr(tether, name)
    assert inspect.isclass(value) or callable(value)
