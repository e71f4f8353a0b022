"""What a run shows and writes: the progress bar, the summary table, the JSON file and the PNG chart.

Terminal output is plain ANSI and ``\\r`` (no extra dependency). The chart needs matplotlib, which
is imported only when the chart is drawn; without it the run still writes its table and JSON.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Progress", "render_table", "write_chart", "write_json"]


class Progress:
    """One line that redraws in place: a bar over the whole run's estimated work, and the current step.

    ``total`` is the run's estimated seconds; each step declares its own estimate when it begins,
    and its progress (0-1) moves the bar inside that share. When the stream is not a terminal, each
    step is printed once as a plain line instead.
    """

    def __init__(self, total: float, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._total = max(total, 1e-9)
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._tty = enabled and self._stream.isatty()
        self._done = 0.0
        self._weight = 0.0
        self._label = ""
        self._fraction = 0.0
        self._started = time.monotonic()
        self._last_draw = 0.0

    def begin(self, label: str, weight: float = 1.0) -> None:
        """Start a step estimated at ``weight`` seconds."""
        self._label = label
        self._weight = weight
        self._fraction = 0.0
        if self._enabled and not self._tty:
            elapsed = time.monotonic() - self._started
            print(f"[{elapsed:7.1f}s] {label}", file=self._stream, flush=True)
        self._draw(force=True)

    def update(self, fraction: float) -> None:
        """Progress inside the current step, 0-1."""
        self._fraction = min(max(fraction, 0.0), 1.0)
        self._draw()

    def end(self) -> None:
        """Finish the current step."""
        self._done += self._weight
        self._weight = 0.0
        self._fraction = 0.0
        self._draw(force=True)

    def note(self, text: str) -> None:
        """A line printed above the bar."""
        if not self._enabled:
            return
        if self._tty:
            self._stream.write("\r\x1b[2K")
        print(text, file=self._stream, flush=True)
        self._draw(force=True)

    def close(self) -> None:
        """Clear the bar."""
        if self._tty:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()

    def _draw(self, force: bool = False) -> None:
        if not self._tty:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        share = min((self._done + self._weight * self._fraction) / self._total, 0.999)
        width = shutil.get_terminal_size((100, 20)).columns
        bar_width = 30
        filled = int(share * bar_width)
        elapsed = int(now - self._started)
        bar = "#" * filled + "." * (bar_width - filled)
        head = f"[{bar}] {share * 100:3.0f}% {elapsed // 60:d}:{elapsed % 60:02d} "
        line = (head + self._label)[: width - 1]
        self._stream.write("\r\x1b[2K" + line)
        self._stream.flush()


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "events/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if unit == "B":
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:g}"


def _fmt_limit(row: dict[str, Any]) -> str:
    if row["target"] is None:
        return ""
    rule = str(row["target"])
    if row["limit"] is None:
        return rule
    return f"{rule} ({_fmt(row['limit'], row['unit'])})"


def render_table(rows: list[dict[str, Any]], *, color: bool = False) -> str:
    """The summary table: value, ceiling, ratio, and target with PASS/MISS."""
    header = ("result", "unit", "value", "ceiling", "ratio", "target", "")
    body = []
    for r in rows:
        status = "" if r["met"] is None else ("PASS" if r["met"] else "MISS")
        body.append(
            (
                r["name"],
                r["unit"],
                _fmt(r["value"], r["unit"]),
                _fmt(r["ceiling"], r["unit"]),
                "—" if r["ratio"] is None else f"{r['ratio']:.2f}",
                _fmt_limit(r),
                status,
            )
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    right = {2, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        out = []
        for i, cell in enumerate(cells):
            text = cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            if color and i == 6 and cell:
                text = ("\x1b[32m" if cell == "PASS" else "\x1b[31m") + text + "\x1b[0m"
            out.append(text)
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    lines = [line(header), sep, *(line(b) for b in body)]
    notes = [f"  * {r['name']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> Path:
    """Write the results as indented JSON (creating the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path


def write_chart(path: Path, results: dict[str, Any]) -> Path:
    """ASYNC throughput by batch size and callers, Unimeter beside the ceiling (one panel per batch size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = results["async"]
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 4.2), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        mine = [r for r in rows if r["batch"] == batch]
        xs = range(len(mine))
        uni = [r["unimeter"]["events_per_s"] for r in mine]
        cei = [r["ceiling"]["events_per_s"] for r in mine]
        ax.bar([x - 0.2 for x in xs], uni, width=0.4, label="unimeter", color="#1f77b4")
        ax.bar([x + 0.2 for x in xs], cei, width=0.4, label="ceiling (no-op server)", color="#bbbbbb")
        for x, u, c in zip(xs, uni, cei, strict=True):
            if c:
                ax.annotate(f"{u / c:.0%}", (x - 0.2, u), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs), [str(r["callers"]) for r in mine])
        ax.set_xlabel("concurrent callers")
        ax.set_title(f"ASYNC, {batch}-event batches")
        ax.set_ylabel("events/s")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(loc="upper left", fontsize=8)
    meta = results.get("meta", {})
    fig.suptitle(
        f"Unimeter ingest throughput vs ceiling — {meta.get('mode', '')} run {meta.get('timestamp', '')}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
