"""``openanomaly``'s public surface: every name in ``__all__`` resolves, and importing the
package stays light (models, Ray, the playground and the HTTP client load on first use)."""

from __future__ import annotations

import subprocess
import sys

import openanomaly

HEAVY = ("torch", "ray", "gradio", "boto3", "httpx", "altair", "pandas", "fastapi", "statsforecast")


def test_every_public_name_resolves() -> None:
    missing = [name for name in openanomaly.__all__ if getattr(openanomaly, name, None) is None]
    assert not missing
    assert sorted(openanomaly.__all__) == sorted(set(openanomaly.__all__))
    assert set(openanomaly.__all__) <= set(dir(openanomaly))


def test_import_openanomaly_loads_no_heavy_dependency() -> None:
    probe = f"import sys, openanomaly; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
