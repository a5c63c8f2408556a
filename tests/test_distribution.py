"""The distribution system mode installs holds every package of the checkout: a
package missing from pyproject's list imports in the checkout and fails only once
installed."""

from __future__ import annotations

import tomllib
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def test_every_package_of_the_checkout_is_in_the_distribution() -> None:
    config = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(CHECKOUT).parts)
             for top in ("opus_paas", "web", "secureops")
             for init in (CHECKOUT / top).rglob("__init__.py")
             if "__pycache__" not in init.parts and "_shipped" not in init.parts}
    assert found, "no package found"
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
