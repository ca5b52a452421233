"""Where every benchmark writes its record: ``benchmarks/results/<name>.json``.

Not a benchmark itself (the leading underscore keeps it out of the list in the README).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def write_result(out: Path | str, record: dict[str, Any], *, sort_keys: bool = False) -> None:
    """Write ``record`` as indented JSON to ``out``, creating its folder, and say where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, sort_keys=sort_keys) + "\n")
    print(f"wrote {out}")
