"""The public surface: what `sre` and `sre.testing` export is exactly what `__all__` says."""

from __future__ import annotations

import sre
import sre.testing


def test_public_names_resolve() -> None:
    for module in (sre, sre.testing):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_public_surface_is_deliberate() -> None:
    public = {name for name in dir(sre) if not name.startswith("_")}
    layers = {
        "api", "cli", "context", "engine", "governance", "models", "runtime", "store", "testing", "tools", "types",
    }  # fmt: skip
    assert public - layers - {"annotations"} == set(sre.__all__) - {"__version__"}
