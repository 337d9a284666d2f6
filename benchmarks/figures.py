"""What a benchmark script writes with ``--out``: its settings and its figures, as one JSON file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def save(out: Path | None, args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """Write ``figures`` with the script's arguments to ``out`` (nothing without one)."""
    if out:
        out.write_text(
            json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, **figures}, indent=2)
        )
