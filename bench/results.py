"""Results pages: a benchmark writes its own ``docs/results/<bench>.md``; nobody retypes numbers.

A page holds what the run measured (tables, the JSON line) and what identifies the run: the
commit (and whether the tree had uncommitted changes), the UTC date, the machine (platform,
CPU model, cores, memory, load average) and the command line. Figures on a page are therefore
always a run's own output, and a reader can tell what they describe and how to rerun them.

    page = ResultsPage("codec", "Hidden-state codecs", command="python bench/codec.py --quick")
    page.text("1,000 held-out inputs of the default model ...")
    page.table(["codec", "bytes/request"], rows)
    page.json(result)
    page.write(args.results_dir)  # None (--no-results): nothing written

Every benchmark takes ``--results-dir DIR`` (default ``docs/results``) and ``--no-results``
through ``add_results_arguments``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import markdown_table  # noqa: E402

RESULTS_DIR = ROOT / "docs" / "results"


def add_results_arguments(parser: argparse.ArgumentParser) -> None:
    """``--results-dir`` (where the page goes) and ``--no-results`` (write none)."""
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="folder of the results page this run writes (default: docs/results)",
    )
    parser.add_argument(
        "--no-results",
        dest="results_dir",
        action="store_const",
        const=None,
        help="write no results page (a trial run)",
    )


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def commit() -> str:
    """``git rev-parse HEAD``, marked when tracked files (other than results pages) changed."""
    head = _git("rev-parse", "HEAD")
    if head is None:
        return "unknown (not a git checkout)"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/results")
    return f"{head} (with uncommitted changes)" if dirty else head


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    """What the numbers were measured on, as a reader needs it to compare runs."""
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    facts = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": f"{usable} usable of {cores}",
    }
    try:
        import psutil

        facts["memory"] = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        facts["load average (1, 5, 15 min) at the end"] = ", ".join(
            f"{x:.2f}" for x in os.getloadavg()
        )
    facts["python"] = platform.python_version()
    try:
        import onnxruntime

        facts["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return facts


@dataclass
class ResultsPage:
    """One benchmark's results page, built block by block and written once at the end."""

    bench: str
    """File stem: the page is ``<results_dir>/<bench>.md``."""
    title: str
    command: str = ""
    """How the run was started; default: this process's own command line."""
    blocks: list[str] = field(default_factory=list)

    def text(self, paragraph: str) -> None:
        self.blocks.append(paragraph.strip())

    def heading(self, title: str) -> None:
        self.blocks.append(f"## {title}")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(markdown_table(headers, rows))

    def code(self, text: str, language: str = "") -> None:
        self.blocks.append(f"```{language}\n{text.rstrip()}\n```")

    def json(self, result: dict[str, Any]) -> None:
        """The run's JSON line, verbatim."""
        self.code(json.dumps(result), "json")

    def render(self, facts: dict[str, str] | None = None, when: str | None = None) -> str:
        command = self.command or "python " + shlex.join(
            [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]
        )
        when = when or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        facts = machine() if facts is None else facts
        head = [
            f"# {self.title}",
            f"Written by `bench/{self.bench}.py` itself; rerun it to replace this page.",
            "\n".join(
                [
                    "| run | |",
                    "|---|---|",
                    f"| command | `{command}` |",
                    f"| commit | `{commit()}` |",
                    f"| date | {when} |",
                    *(f"| {k} | {v} |" for k, v in facts.items()),
                ]
            ),
        ]
        return "\n\n".join([*head, *self.blocks]) + "\n"

    def write(self, results_dir: Path | None) -> Path | None:
        """Write the page (``results_dir`` None: ``--no-results``, write nothing)."""
        if results_dir is None:
            return None
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{self.bench}.md"
        path.write_text(self.render())
        print(f"results page: {os.path.relpath(path)}", file=sys.stderr)
        return path
