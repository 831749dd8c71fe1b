"""Runs a wandb sweep file locally, without a wandb server: ``lit-rl sweep FILE --count N``.

The file is wandb's own sweep format (``method``, ``metric``, ``parameters``, ``command``), the same one
``wandb sweep FILE`` + ``wandb agent`` take. Here the next trial's values come from wandb's own search
algorithms (the ``sweeps`` package: random, grid, bayes) given the trials so far; the trial's command is
built as the wandb agent builds it (wandb's ``${args}``-style macros), and runs as a normal ``lit-rl fit``
logged offline. What the sweep knows lives in one folder (``--dir``): one JSON file per trial, written
under a file lock, so several processes (e.g. a SLURM job array, scripts/slurm/sweep_array.sbatch) can
run trials of the same sweep at once.

Each trial's metric is the last value the run logged under ``metric.name`` (as wandb's run summary
has it); the trial writes it to ``LIT_RL_SUMMARY_FILE``, which this command sets.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from lit_rl.errors import ConfigError

SUMMARY_ENV = "LIT_RL_SUMMARY_FILE"


def _sweeps() -> Any:
    try:
        with warnings.catch_warnings():  # sweeps' pydantic-v1 style config keys
            warnings.simplefilter("ignore", UserWarning)
            import sweeps
    except ImportError as err:
        raise ConfigError(
            "lit-rl sweep: needs wandb's search algorithms (the `sweeps` package); install them with "
            "`pip install 'lit-rl[sweep]'` (note: sweeps requires numpy<2), or run the file with "
            "`wandb sweep` + `wandb agent` against a wandb server."
        ) from err
    return sweeps


def load_sweep(path: str) -> dict[str, Any]:
    """Loads the sweep file and checks it against wandb's sweep schema; errors name the key and the fix."""
    if not os.path.isfile(path):
        raise ConfigError(f"lit-rl sweep: no sweep file at {path!r}; give a wandb sweep YAML such as "
                          "configs/sweeps/ppo_cartpole.yaml.")
    with open(path) as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ConfigError(f"lit-rl sweep: {path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"lit-rl sweep: {path} is not a YAML mapping with method, metric and parameters.")
    violations = _sweeps().schema_violations_from_proposed_config(config)
    if violations:
        raise ConfigError(f"lit-rl sweep: {path} is not a valid wandb sweep: " + "; ".join(violations))
    metric = config.get("metric") or {}
    if not metric.get("name"):
        raise ConfigError(f"lit-rl sweep: {path} has no metric.name; add e.g. "
                          "metric: {name: val/episodic_return_mean, goal: maximize}.")
    if "command" not in config:
        raise ConfigError(f"lit-rl sweep: {path} has no command; add e.g. "
                          'command: [lit-rl, fit, --config, configs/ppo/cartpole.yaml, "${args}"].')
    return config


def _yaml_problem(err: yaml.YAMLError) -> str:
    """Formats yaml's own account of a syntax error as one line: where, what, and in what construct."""

    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return " ".join(str(err).split())
    mark = err.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
    if err.context:
        where = f", which starts at line {err.context_mark.line + 1}" if err.context_mark is not None else ""
        text += f" ({err.context}{where})"
    return text + "."


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as err:
            raise ConfigError(
                f"lit-rl sweep: cannot lock {folder / '.lock'} ({err}); the sweep folder must be on a filesystem "
                "with file locks (most local and NFS mounts; on Lustre mount with flock), or give --dir elsewhere."
            ) from err
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_trials(folder: Path) -> list[dict[str, Any]]:
    trials = []
    for path in sorted(p for p in folder.glob("trial-*.json") if re.fullmatch(r"trial-\d+\.json", p.name)):
        text = path.read_text()
        if text:  # empty: claimed by another process that is writing it
            trials.append(json.loads(text))
    return trials


def _write_trial(folder: Path, trial: dict[str, Any]) -> None:
    path = folder / f"{trial['name']}.json"
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(trial, f, indent=1)
    os.replace(tmp, path)


def _as_sweep_runs(trials: list[dict[str, Any]], metric: str) -> list[Any]:
    sweeps = _sweeps()
    state = {"running": sweeps.RunState.running, "finished": sweeps.RunState.finished,
             "failed": sweeps.RunState.failed}
    return [sweeps.SweepRun(name=t["name"], config={k: {"value": v} for k, v in t["params"].items()},
                            state=state[t["state"]],
                            summary_metrics={metric: t["metric"]} if t.get("metric") is not None else {})
            for t in trials]


def _slurm_task() -> Optional[str]:
    """Returns the SLURM job (array task) this process runs in, which keeps its id when SLURM requeues it."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else os.environ.get("SLURM_JOB_ID")


def propose(config: dict[str, Any], folder: Path) -> Optional[dict[str, Any]]:
    """Claims the next trial (under the lock): its values from wandb's search given all trials so far;
    None when the search is exhausted (a finished grid). A SLURM job that was requeued in the middle of
    a trial gets that trial back, to resume from its checkpoint."""
    slurm_task = _slurm_task()
    with _locked(folder):
        trials = read_trials(folder)
        if slurm_task and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
            for trial in trials:
                if trial["state"] == "running" and trial.get("slurm_task") == slurm_task:
                    return trial
        suggestion = _sweeps().next_run(config, _as_sweep_runs(trials, config["metric"]["name"]), validate=False)
        if suggestion is None:
            return None
        # The trial file is created exclusively, so two processes never claim the same name even where a lock
        # is advisory only.
        number = len(trials)
        while True:
            try:
                os.close(os.open(folder / f"trial-{number:03d}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                number += 1
        trial = {"name": f"trial-{number:03d}", "run_id": f"{folder.name}-{number:03d}-{secrets.token_hex(3)}",
                 "params": {k: v["value"] for k, v in suggestion.config.items()}, "state": "running",
                 "metric": None, "started": time.time(), "slurm_task": slurm_task}
        _write_trial(folder, trial)
        return trial


def command_for(config: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Builds the trial's command line from the file's ``command``, as the wandb agent builds it."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    values = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    values.update(env=["/usr/bin/env"], interpreter=[sys.executable], program=[str(config.get("program", ""))])
    command: list[str] = []
    for chunk in sweep_utils.create_sweep_command(list(config["command"])):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            if chunk[2:-1] not in values:
                raise ConfigError(f"lit-rl sweep: command macro {chunk} is not supported here; use ${{args}}, "
                                  "${args_no_hyphens}, ${args_no_boolean_flags}, ${args_json}, ${env}, "
                                  "${interpreter} or ${program}.")
            command += [str(v) for v in values[chunk[2:-1]]]
        else:
            command.append(chunk)
    return command


def run_trial(config: dict[str, Any], folder: Path, trial: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """Runs one trial to the end (offline wandb) and records its state and metric."""
    command = command_for(config, trial["params"])
    # Also looks beside this interpreter, so that `lit-rl` (or any program) of this environment runs when it is not
    # on PATH (e.g. a venv not activated).
    here = os.path.dirname(sys.executable)
    found = shutil.which(command[0]) or shutil.which(command[0], path=here)
    if found is None:
        raise ConfigError(f"lit-rl sweep: the sweep's command {command[0]!r} is not on PATH nor in {here}; "
                          "fix `command` in the sweep file or activate the environment that has it.")
    command[0] = found
    if os.path.basename(found) == "lit-rl":
        # Gives the trial its own folder for Lightning's files (SLURM requeue checkpoints), so that a requeued trial
        # resumes from its own checkpoint, not another trial's.
        command += ["--trainer.default_root_dir", str(folder / trial["name"])]
    command += extra
    summary_file = folder / f"{trial['name']}.summary.json"
    log_file = folder / f"{trial['name']}.log"
    env = {**os.environ, SUMMARY_ENV: str(summary_file.resolve()), "WANDB_RUN_ID": trial["run_id"],
           "WANDB_RUN_GROUP": folder.name}
    if env.get("WANDB_MODE") != "online":
        env["WANDB_MODE"] = "offline"
    trial["command"] = command
    print(f"[{trial['name']}] {' '.join(f'{k}={v}' for k, v in trial['params'].items())}", flush=True)
    summary_file.unlink(missing_ok=True)
    with open(log_file, "a") as log:  # a resumed trial appends to its first attempt's log
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    if summary.get("preempted"):
        # Checkpointed and requeued by SLURM: the trial stays running, and the requeued task resumes it.
        print(f"[{trial['name']}] preempted: checkpointed, its SLURM job requeued to resume it", flush=True)
        trial["preempted"] = True
        return trial
    value = summary.get("metrics", {}).get(config["metric"]["name"])
    trial.update(exit_code=code, metric=value, config=summary.get("config"), env_steps=summary.get("env_steps"),
                 log=str(log_file),
                 ended=time.time(), state="finished" if code == 0 and value is not None else "failed")
    with _locked(folder):
        _write_trial(folder, trial)
    shown = "no metric" if value is None else f"{config['metric']['name']} = {value:.4g}"
    print(f"[{trial['name']}] {trial['state']} (exit {code}), {shown}; log: {log_file}", flush=True)
    return trial


def table(config: dict[str, Any], trials: list[dict[str, Any]]) -> str:
    """Formats the trials as a table, best first by the metric (failed and running ones last), with their
    parameters."""

    metric, goal = config["metric"]["name"], config["metric"].get("goal", "minimize")
    sign = -1.0 if goal == "maximize" else 1.0

    def key(t: dict[str, Any]) -> tuple[int, float]:
        value = t.get("metric")
        ok = t["state"] == "finished" and value is not None and not math.isnan(value)
        return (0, sign * value) if ok else (1, 0.0)

    names = sorted({k for t in trials for k in t["params"]})
    header = ["rank", "trial", "state", metric, *names]
    rows = []
    for i, t in enumerate(sorted(trials, key=key), 1):
        value = t.get("metric")
        rows.append([str(i), t["name"], t["state"], "-" if value is None else f"{value:.6g}",
                     *(_fmt(t["params"].get(n)) for n in names)])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="lit-rl sweep",
        description="Run a wandb sweep file locally, without a wandb server: wandb's search algorithms pick "
                    "each trial's values, each trial is a normal `lit-rl fit` logged offline, and a table of "
                    "the trials, best first, ends the run. Arguments after `--` go to every trial.")
    parser.add_argument("file", help="a wandb sweep YAML (method, metric, parameters, command)")
    parser.add_argument("--count", type=int, default=1, help="trials to run in this call (default 1)")
    parser.add_argument("--dir", default=None,
                        help="the sweep's folder (trials, logs); default sweeps/<file name>. Reuse it to add trials "
                             "to the same sweep, from several processes at once if you like.")
    parser.add_argument("--summary", action="store_true", help="only print the table of the trials so far")
    args, extra = parser.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)} (put trial overrides after --)")
    if args.count < 0:
        raise ConfigError(f"lit-rl sweep: --count must be >= 0, got {args.count}.")
    config = load_sweep(args.file)
    folder = Path(args.dir or os.path.join("sweeps", Path(args.file).stem))
    folder.mkdir(parents=True, exist_ok=True)
    if not args.summary:
        for _ in range(args.count):
            trial = propose(config, folder)
            if trial is None:
                print("the search is exhausted (every grid point has a trial)")
                break
            if run_trial(config, folder, trial, extra).get("preempted"):
                break
    trials = read_trials(folder)
    print(f"\nsweep {args.file} ({config.get('method')}), {len(trials)} trials in {folder}:")
    print(table(config, trials))
