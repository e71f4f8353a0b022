"""The resume token of ``unimeter alerts tail``: partition → last alert offset seen, in a JSON file.

The file is ``{"since_offsets": {"<partition>": <offset>, ...}}`` — the AlertSubscribe request field
it feeds. It is replaced atomically (write a temporary file, fsync, rename), so a crash leaves the
old token or the new one, never a torn file; an old token only means an alert is shown again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import CliError, ExitCode

__all__ = ["load_offsets", "save_offsets"]


def load_offsets(path: Path) -> dict[int, int]:
    """The saved offsets; empty when the file does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CliError(f"cannot read offsets file {path}: {exc.strerror}", ExitCode.BAD_INPUT) from None
    try:
        raw = json.loads(text)["since_offsets"]
        offsets = {int(p): int(o) for p, o in raw.items()}
        if any(p < 0 or o < 0 for p, o in offsets.items()):
            raise ValueError("negative partition or offset")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CliError(
            f"offsets file {path} is not a resume token ({exc!s}); move it away to start afresh",
            ExitCode.BAD_INPUT,
        ) from None
    return offsets


def save_offsets(path: Path, offsets: Mapping[int, int]) -> None:
    """Replace the file with ``offsets`` atomically and durably."""
    body = json.dumps({"since_offsets": {str(p): o for p, o in sorted(offsets.items())}}) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
