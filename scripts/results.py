"""What every benchmark's results section says about its run, and where the section goes.

A section opens with the date and the commit it measured (``git rev-parse --short HEAD``, plus
"+ uncommitted changes" when tracked files other than the results files differ from it) and the machine (CPU, cores, GPU or none, torch).
``write_section`` puts it first in the results file, after the file's preamble, so the newest run leads and
older sections follow as history, each naming its own commit.
"""

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent


def head() -> tuple[str, bool]:
    """HEAD's short hash and whether tracked files differ from it; ("unknown", True) outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        # The results files themselves do not count: a run of several benchmarks writes them as it goes.
        return git("rev-parse", "--short", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no", "--",
                                                          ".", ":(exclude)results"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def commit() -> str:
    """The commit measured, as a results section names it."""
    sha, dirty = head()
    return sha + (" + uncommitted changes" if dirty else "")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table with a header row, one line per row, and a trailing newline."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def stamp() -> str:
    """Today's date and the commit measured; a benchmark takes it when it starts, before the code can change."""
    return f"{datetime.date.today().isoformat()}, commit {commit()}"


def section(started: str, subject: str, body: str, machine_note: str = "") -> str:
    """A results section: a heading with the run's ``stamp()`` and ``subject``, the machine, then ``body``."""
    return f"## {started}: {subject}\n\nMachine: {machine()}{machine_note}\n\n{body.strip()}\n"


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def write_section(path: str | Path, title: str, script: str, text: str, comparison: bool = False) -> None:
    """Puts ``text`` first in the results file at ``path``, after a preamble written anew (``title``, which
    script writes the file); the sections already there follow unchanged. ``comparison``: the script compares
    two commits, has no target and is not one of ``run_benchmarks.py``'s."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    start = old.find("\n## ")
    history = old[start + 1:] if start >= 0 else ""
    if comparison:
        preamble = (f"# {title}\n\nWritten by `python {script}`, newest first: a comparison of two commits, with no "
                    "target. Each section names the commits, date and machine it measured.\n\n")
    else:
        preamble = (f"# {title}\n\nWritten by `python {script}` (every benchmark: `python scripts/run_benchmarks.py`), "
                    "newest first. Each section names the commit, date and machine it measured; its verdict is computed "
                    "by the script from the numbers in it.\n\n")
    path.write_text(preamble + text.rstrip() + "\n" + ("\n" + history if history else ""))
