"""One style of package ``__init__`` (issue 15 point 8): a docstring naming what the package offers, then either
nothing (packages used module by module) or explicit re-exports listed in ``__all__``; ``salt_seg.data``, which
``salt-seg --help`` imports, loads the same kind of list lazily."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import salt_seg
import salt_seg_apps


def _packages() -> list[str]:
    names = ["salt_seg", "salt_seg_apps"]
    for root in (salt_seg, salt_seg_apps):
        prefix = root.__name__ + "."
        names += [m.name for m in pkgutil.walk_packages(root.__path__, prefix) if m.ispkg]
    return sorted(names)


@pytest.mark.parametrize("name", _packages())
def test_every_package_init_has_a_docstring_and_its_all_resolves(name: str) -> None:
    package = importlib.import_module(name)
    assert (package.__doc__ or "").strip(), f"{name}/__init__.py has no docstring"
    exported = getattr(package, "__all__", [])
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    missing = [n for n in exported if not hasattr(package, n)]
    assert not missing, f"{name}.__all__ names what it does not export: {missing}"


def test_the_lazy_data_package_exports_its_names_without_importing_them_first() -> None:
    code = (
        "import sys, salt_seg.data as d; heavy = 'monai' in sys.modules or 'torch' in sys.modules; "
        "d.prepare_volume; print(heavy, 'monai' in sys.modules, sorted(d.__all__) == sorted(dir(d)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "True"]
