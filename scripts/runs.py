"""Training runs that outlive a session: a benchmark's runs, each reused while its config and code are unchanged.

A run is ``lit-rl fit`` with a config and overrides, in a folder of its own. When it finishes, ``run.json``
records its key: the whole resolved config (``lit-rl fit ... --print_config``, without the output paths), a
hash of the lit_rl code it ran (every ``lit_rl/**/*.py``, but the env families' modules of other families:
``procgen``, ``atari``, ``minatar``), the versions of the packages that shape its numbers and the device its
networks ran on (``cpu``, or the GPU's name, which ``trainer.accelerator: auto`` picks). A later call with the
same key reuses the run, whatever commit the checkout is at; any other key trains it anew, and the folder it
replaces (a finished run's, or one that never finished) is moved aside (``<folder>.replaced-<when it
finished>``), never deleted. A lock file beside each run keeps two benchmark processes from training it at once. So a benchmark of several
hours can be finished over several sessions, and each results section names the commits its runs used
(``run.json`` has the commit, and whether the checkout had uncommitted changes) and the machines they ran on.

``report_only`` (the benchmarks' ``--report-only``) builds a report from finished runs whose config, packages
and device match, whatever lit_rl code they ran, training nothing: for a report written anew after a change
that cannot have moved the runs' numbers (the report's own text). The section still names the runs' commits.

The log of a run (stdout and stderr) is ``log.txt`` in its folder, written as it trains.
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.results import commit, machine  # noqa: E402

FAMILY_MODULES = {"procgen", "atari", "minatar"}  # lit_rl/envs/<family>.py: hashed only for runs of that family
PACKAGES = ("torch", "numpy", "gymnasium", "lightning", "mujoco", "minatar")


@dataclass(frozen=True)
class Run:
    """One training run: ``lit-rl fit --config <config> <overrides>``, in ``folder``. Settings that can change its
    numbers, ``--torch_threads`` included, belong in ``overrides`` (they are part of its key)."""

    folder: Path
    config: Path
    overrides: tuple[str, ...]
    env_id: str

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.csv"

    @property
    def record(self) -> Path:
        return self.folder / "run.json"


def code_hash(env_id: str) -> str:
    """sha256 of the lit_rl sources a run of ``env_id`` can execute (paths and contents)."""
    family = env_id.partition(":")[0] if ":" in env_id else ""
    digest = hashlib.sha256()
    for path in sorted((REPO / "lit_rl").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if path.parent.name == "envs" and path.stem in FAMILY_MODULES and path.stem != family:
            continue
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def packages() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def lit_rl_command() -> list[str]:
    return [str(Path(sys.executable).parent / "lit-rl"), "fit"]


def resolved_config(run: Run) -> str:
    """The run's whole resolved config, as ``--print_config`` gives it (output paths are not in it: they are
    added only when the run trains)."""
    proc = subprocess.run([*lit_rl_command(), "--config", str(run.config), *run.overrides, "--print_config"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"{run.folder}: lit-rl could not resolve the config:\n{proc.stderr[-3000:]}")
    return proc.stdout


def device() -> str:
    """Where ``trainer.accelerator: auto`` puts a run's networks on this machine."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def key_of(run: Run, config_text: str) -> dict[str, object]:
    return {"config": config_text, "code": code_hash(run.env_id), "packages": packages(), "device": device()}


def finished(run: Run, key: Optional[dict[str, object]] = None, any_code: bool = False) -> Optional[dict]:
    """The run's record when it finished with ``key`` (computed when not given; ``any_code``: whatever lit_rl
    code it ran), else None. A record written before the key held the device is taken as ``cpu``: an assumption
    (every such record was written on this project's CPU-only development machine, on 2026-12-06)."""
    if not (run.record.exists() and run.metrics.exists()):
        return None
    record = json.loads(run.record.read_text())
    key = dict(key or key_of(run, resolved_config(run)))
    saved = {"device": "cpu", **record.get("key", {})}
    if any_code:
        key.pop("code"), saved.pop("code", None)
    return record if saved == key else None


def train(run: Run, verbose: bool = True, report_only: bool = False) -> dict:
    """The run's record: reused when a finished run has its key, otherwise trained (anew) and recorded.
    ``report_only``: the record of a finished run of this config whatever code it ran, or a RuntimeError."""
    key = key_of(run, resolved_config(run))
    record = finished(run, key, any_code=report_only)
    if record is not None:
        if verbose:
            print(f"reused: {run.folder} (commit {record['commit']})", flush=True)
        return record
    if report_only:
        raise RuntimeError(f"{run.folder}: no finished run of this config, packages and device to report; run the "
                           "benchmark without --report-only to train it.")
    lock = run.folder.with_name(run.folder.name + ".lock")
    run.folder.parent.mkdir(parents=True, exist_ok=True)
    try:  # one benchmark process per run: another invocation training it would clobber it
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise RuntimeError(f"{run.folder}: another benchmark process is training this run ({lock} exists; delete it "
                           "if none is)") from None
    try:
        return _train(run, key, verbose)
    finally:
        lock.unlink(missing_ok=True)


def _train(run: Run, key: dict[str, object], verbose: bool) -> dict:
    if run.folder.exists():  # a finished run of another key, or one that never finished: kept beside, never deleted
        stamp = json.loads(run.record.read_text()).get("finished", "unknown") if run.record.exists() else "unfinished"
        aside = run.folder.with_name(f"{run.folder.name}.replaced-{stamp.replace(' ', '_').replace(':', '')}")
        n = 1
        while aside.exists():
            aside, n = aside.with_name(f"{aside.name}-{n}"), n + 1
        run.folder.rename(aside)
    run.folder.mkdir(parents=True)
    args = [*lit_rl_command(), "--config", str(run.config), *run.overrides,
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir",
            str(run.folder.parent), "--trainer.logger.name", "", "--trainer.logger.version", run.folder.name,
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint.dirpath", str(run.folder / "checkpoints")]
    started, at = time.time(), commit()
    with open(run.folder / "log.txt", "w") as log:
        log.write(" ".join(args) + "\n\n")
        log.flush()
        proc = subprocess.run(args, cwd=run.folder, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        tail = (run.folder / "log.txt").read_text()[-3000:]
        raise RuntimeError(f"{run.folder} failed (exit {proc.returncode}); its log, {run.folder / 'log.txt'}, ends:\n{tail}")
    record = {"key": key, "commit": at, "wall_s": round(time.time() - started, 1),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": machine().rsplit(", ", 1)[0]}  # without the driver's thread count
    run.record.write_text(json.dumps(record, indent=1))
    if verbose:
        print(f"done: {run.folder} in {record['wall_s'] / 60:.1f} min", flush=True)
    return record


def commits(records: Sequence[dict]) -> str:
    """The commits a set of runs used, how many versions of lit_rl's code they ran, and the machines they ran on,
    for a results section."""
    machines = sorted({r["machine"] for r in records if "machine" in r})
    unrecorded = sum("machine" not in r for r in records)
    if unrecorded:
        machines.append(f"{unrecorded} run(s) whose record predates the machine field (run.json)")
    codes = {r["key"]["code"] for r in records}
    return (f"{', '.join(sorted({r['commit'] for r in records}))} ({len(codes)} version(s) of lit_rl's code"
            f"{': a report of finished runs, --report-only' if len(codes) > 1 else ''}); machines: "
            f"{'; '.join(machines)}")


def final_return(curve: dict, budget: int) -> float:
    """The final training return: the mean, over the iterations in the last 5% of the budget that logged one (at
    least the last that did), of each iteration's mean return of the episodes that ended in it, from a run of
    ``scripts.plot_learning_curves.load_runs`` (as ``tests/test_learning.py`` computes it)."""
    steps, returns = curve["steps"], curve["returns"]
    return float(returns[steps >= min(0.95 * budget, steps[-1])].mean())


def last_sps(metrics: Path) -> float:
    """The run's last logged ``perf/sps`` (env steps per second since the fit started)."""
    import csv

    sps = [float(row["perf/sps"]) for row in csv.DictReader(open(metrics)) if row.get("perf/sps")]
    return sps[-1] if sps else float("nan")


def parse_run_arguments(parser: argparse.ArgumentParser, name: str) -> argparse.Namespace:
    """Adds the arguments every benchmark of runs takes (seeds, jobs, budget, results file, runs folder, conditions,
    report-only) to ``parser`` and parses them; ``out`` defaults to ``<name>_runs/`` next to the results file."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--budget", type=int, default=1_000_000, help="env steps per run")
    parser.add_argument("--results", type=Path, default=REPO / "results" / f"benchmark_{name}.md")
    parser.add_argument("--out", type=Path, help=f"where the runs go (default: {name}_runs/ next to the results file)")
    parser.add_argument("--conditions", default="", help="what else shared the machine while the runs trained, "
                        "for the section (their SPS and wall times depend on it)")
    parser.add_argument("--report-only", action="store_true",
                        help="report the finished runs of these configs, whatever lit_rl code they ran; train nothing")
    args = parser.parse_args()
    args.out = args.out or args.results.parent / f"{name}_runs"
    return args
