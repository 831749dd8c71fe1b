"""A refactor's check that training does the same thing: short fixed-seed runs of every config, and of the
placement presets, whose final parameters (every rank's) and logged training metrics are compared on CPU with a
reference recorded before the change, to within a tolerance that rounding cannot reach but a real change does.

    python scripts/behaviour_reference.py record    # writes tests/reference/behaviour.pt (at the old code)
    python scripts/behaviour_reference.py compare   # runs every case again; a table; exit 1 on any difference

``tests/test_behaviour.py`` (slow marker) runs ``compare`` case by case. The reference holds what the code
did at the commit named in it; record it again only where a change of behaviour is intended, and say so.

The tolerance (:data:`PARAMS`, :data:`METRICS`, :data:`METRIC_ATOL`; measured in
results/behaviour_tolerance.md): another CPU's kernels round differently (one float32 ulp), and a few
iterations of training grow that to at most 3.5e-6 in a parameter, a relative 3e-7 or an absolute 6e-7 in a
metric, and 1e-5 in the explained variance (AMD against the Intel that recorded the reference, and runs from
initial weights moved by one ulp): under 10% of the tolerance. The smallest real changes tried (Adam's eps
x1.1, clip 0.2 -> 0.2001, GAE lambda or gamma +1e-4, LR annealing over one more iteration, two samples swapped
between minibatches once) went past it 5 to 20,000 times in every case whose parameters they changed by more
than reordering a sum does. The tolerance is the same on every machine, the recording one included: ``compare``
says "bitwise equal" where a case is, and prints each case's largest difference as a share of the tolerance,
so the margin shows. Counts (env steps, iterations, actor updates, auxiliary phases), the logged keys and rows,
ranks, parameter names, shapes and dtypes must match exactly.

The Pendulum cases (:data:`DIVERGENT`, the only continuous actions) are held on their first logged row: the
first rollout and its update. After it, an ulp's difference changes the next rollout's actions and the runs
drift apart by as much as a real change moves them (final parameters 0.005-0.075 apart from rounding alone);
their later rows and final parameters are shown, and held to be finite, not compared.
"""

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.results import machine  # noqa: E402

REFERENCE = REPO / "tests" / "reference" / "behaviour.pt"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.limit_val_batches", "0", "--trainer.accelerator", "cpu", "--checkpoint.every_n_env_steps", "0"]
DATA_PARALLEL = ["--config", "configs/placement/data_parallel.yaml", "--trainer.devices", "2"]
CRITIC_DEVICE = ["--config", "configs/placement/critic_device.yaml"]
CARTPOLE_PPG = ["configs/ppg/cartpole.yaml", "--model.init_args.n_pi", "2"]

# name: (config, extra flags, iterations). Every config runs; PPG with n_pi 2, so the auxiliary phase runs. The
# variants cover the code paths configs do not: other architectures, gradient surgery, the update order, critic
# warm-up, target KL, truncated BPTT, a short last rollout, and the placement presets (two processes, gloo).
CASES: dict[str, tuple[str, list[str], float]] = {
    **{f"ppo/{name}": (f"configs/ppo/{name}.yaml", [], 3) for name in
       ("cartpole", "cartpole_cleanrl", "cartpole_novel_lstm", "cartpole_novel_mlp", "lunarlander", "pendulum")},
    **{f"ppg/{name}": (f"configs/ppg/{name}.yaml", ["--model.init_args.n_pi", "2"], 4) for name in
       ("cartpole", "lunarlander", "pendulum")},
    "ppo/shared_pcgrad_actor_first": ("configs/ppo/cartpole.yaml", [
        "--model.init_args.arch", "shared", "--model.init_args.gradient_surgery", "pcgrad",
        "--model.init_args.update_order", "actor_first", "--model.init_args.num_minibatches", "4",
        "--model.init_args.update_epochs", "3"], 3),
    "ppo/detach_warmup_target_kl": ("configs/ppo/cartpole.yaml", [
        "--model.init_args.arch", "detach", "--model.init_args.critic_warmup", "1",
        "--model.init_args.target_kl", "0.001", "--model.init_args.num_minibatches", "4"], 3),
    "ppo/lstm_bptt_shared": ("configs/ppo/cartpole_novel_lstm.yaml", [
        "--model.init_args.bptt_length", "8", "--model.init_args.arch", "shared", "--model.init_args.num_minibatches",
        "4", "--model.init_args.update_epochs", "2"], 3),
    "ppg/shared_short_last_rollout": (CARTPOLE_PPG[0], [*CARTPOLE_PPG[1:], "--model.init_args.arch", "shared"], 3.5),
    "ppg/detach_samples": (CARTPOLE_PPG[0], [*CARTPOLE_PPG[1:], "--model.init_args.arch", "detach",
                                            "--model.init_args.aux_minibatch", "samples"], 4),
    "ppg/lstm": (CARTPOLE_PPG[0], [*CARTPOLE_PPG[1:], "--model.init_args.recurrent", "lstm",
                                   "--model.init_args.recurrent_size", "32"], 4),
    # Pendulum's runs drift apart after their first update (DIVERGENT); one iteration of each, held in full,
    # parameters included: PPO's Gaussian policy update, and PPG's auxiliary phase on it (n_pi 1).
    "ppo/pendulum_one_iteration": ("configs/ppo/pendulum.yaml", [], 1),
    "ppg/pendulum_aux_phase": ("configs/ppg/pendulum.yaml", ["--model.init_args.n_pi", "1"], 1),
    "placement/ppo_single_device": ("configs/ppo/cartpole.yaml", ["--config", "configs/placement/single_device.yaml"], 3),
    "placement/ppo_critic_device": ("configs/ppo/cartpole.yaml", CRITIC_DEVICE, 3),
    "placement/ppo_data_parallel": ("configs/ppo/cartpole.yaml", [
        *DATA_PARALLEL, "--model.init_args.num_minibatches", "4", "--data.normalize_observation", "true",
        "--data.normalize_reward", "true"], 3),
    "placement/ppg_critic_device": (CARTPOLE_PPG[0], [*CARTPOLE_PPG[1:], *CRITIC_DEVICE], 4),
    "placement/ppg_data_parallel": (CARTPOLE_PPG[0], [*CARTPOLE_PPG[1:], *DATA_PARALLEL], 4),
    "placement/lstm_data_parallel": ("configs/ppo/cartpole_novel_lstm.yaml", [*DATA_PARALLEL, "--model.init_args.num_minibatches", "2"], 3),
}


# What a run may differ by from the reference: |got - ref| <= atol + rtol * |ref|, elementwise (torch.isclose).
# Rounding used at most 3.5% of it in a parameter (3.5e-6), 3.6% in a metric (6e-7 in one of size 1, a relative
# 3e-7 in value losses of ~3000), and 9.7% in the explained variance, which has its own atol: the reference's
# values (torchmetrics' float32 E[x^2] - E[x]^2, before ab93dbf) cancel, so their error (up to 1e-5) does not
# shrink with the value. See results/behaviour_tolerance.md.
PARAMS = {"atol": 1e-4, "rtol": 1e-4}
METRICS = {"atol": 1e-5, "rtol": 1e-5}
METRIC_ATOL = {"train/explained_variance": 1e-4}
COUNTS = ("env_steps", "train/iteration", "train/actor_updates", "train/aux_phases")  # exact
# Continuous actions: held on the first logged row only (the module docstring says why).
DIVERGENT = frozenset({"ppo/pendulum", "ppg/pendulum"})


class SaveFinalState(L.Callback):
    """Each rank writes its final parameters to ``dirpath/rank<r>.pt``."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, os.path.join(self.dirpath, f"rank{trainer.global_rank}.pt"))


def batch_size(config: str) -> int:
    data = yaml.safe_load((REPO / config).read_text())["data"]
    return int(data["num_envs"]) * int(data["num_steps"])


def run_case(name: str, root: Path, more: tuple[str, ...] = ()) -> dict[str, Any]:
    """Runs one case with ``lit-rl fit`` (``more``: flags added to the case's): each rank's final parameters and
    the logged training metrics."""
    config, extra, iterations = CASES[name]
    extra = [*extra, *more]
    out = root / name.replace("/", "_")
    args = ["fit", "--config", config, *extra, *QUIET, "--data.total_timesteps", str(int(iterations * batch_size(config))),
            "--trainer.logger.save_dir", str(out), "--trainer.callbacks+=scripts.behaviour_reference.SaveFinalState",
            "--trainer.callbacks.dirpath", str(out / "params")]
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "LOCAL_RANK", "NODE_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    exe = Path(sys.executable).parent / "lit-rl"
    proc = subprocess.run([str(exe), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"{name}: lit-rl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    params = {int(p.stem[4:]): torch.load(p, weights_only=True) for p in sorted((out / "params").glob("rank*.pt"))}
    (metrics_file,) = out.rglob("metrics.csv")
    with open(metrics_file) as f:
        rows = [{k: float(v) for k, v in row.items() if v != "" and (k.startswith("train/") or k == "env_steps")}
                for row in csv.DictReader(f)]
    return {"params": params, "metrics": [row for row in rows if len(row) > 1]}


class Gap:
    """The largest difference seen between two results, in parameters or in metrics: absolute, relative (to the
    reference's value), and as a share of the tolerance (``share`` > 1: beyond it), with where it was."""

    def __init__(self) -> None:
        self.abs = self.rel = self.share = 0.0
        self.where = ""

    def add(self, where: str, ref: Any, got: Any, atol: float, rtol: float) -> bool:
        """Takes in one tensor (or value) pair; False where some element is beyond the tolerance."""
        ref = torch.as_tensor(ref, dtype=torch.float64)
        got = torch.as_tensor(got, dtype=torch.float64)
        both_nan = ref.isnan() & got.isnan()
        diff = torch.where(both_nan, 0.0, (got - ref).abs()).nan_to_num(nan=math.inf)
        if not diff.numel():
            return True
        rel = torch.where(diff == 0, 0.0, diff / ref.abs())
        share = (diff / (atol + rtol * ref.abs())).max().item()
        self.abs, self.rel = max(self.abs, diff.max().item()), max(self.rel, rel.max().item())
        if share > self.share or not self.where:
            self.share, self.where = share, where
        return share <= 1

    def __str__(self) -> str:
        if not self.abs:
            return "equal"
        share = f"{100 * self.share:.2g}% of" if self.share < 1 else f"{self.share:.3g} times"
        return f"{share} the tolerance at {self.where} (largest abs {self.abs:.2g}, rel {self.rel:.2g})"


def compare_results(reference: dict[str, Any], result: dict[str, Any], divergent: bool = False
                    ) -> tuple[list[str], dict[str, Gap]]:
    """What differs between two results beyond the tolerance (empty when nothing does), and the largest
    differences seen: ``params``, ``metrics`` (the rows held) and, for a ``divergent`` case (held on its first
    logged row only), ``params (not held)`` and ``later rows (not held)``."""
    problems: list[str] = []
    gaps = {"params": Gap(), "metrics": Gap()}
    if divergent:
        gaps = {"metrics": Gap(), "params (not held)": Gap(), "later rows (not held)": Gap()}
    if sorted(reference["params"]) != sorted(result["params"]):
        return [f"ranks {sorted(reference['params'])} vs {sorted(result['params'])}"], gaps
    for rank, ref in reference["params"].items():
        got = result["params"][rank]
        if sorted(ref) != sorted(got):
            problems.append(f"rank {rank}: parameter names differ: {sorted(set(ref) ^ set(got))[:4]}")
            continue
        for key in ref:
            if ref[key].shape != got[key].shape or ref[key].dtype != got[key].dtype:
                problems.append(f"rank {rank}: {key} is {got[key].dtype} {tuple(got[key].shape)}, "
                                f"was {ref[key].dtype} {tuple(ref[key].shape)}")
            elif not ref[key].is_floating_point():
                if not torch.equal(ref[key], got[key]):
                    problems.append(f"rank {rank}: {key} differs (not floating point: compared exactly)")
            elif divergent:
                gaps["params (not held)"].add(f"rank {rank} {key}", ref[key], got[key], **PARAMS)
                if not got[key].isfinite().all():
                    problems.append(f"rank {rank}: {key} is not finite")
            elif not gaps["params"].add(f"rank {rank} {key}", ref[key], got[key], **PARAMS):
                diff = (ref[key].double() - got[key].double()).abs().max().item()
                problems.append(f"rank {rank}: {key} differs beyond the tolerance (max abs {diff:.3g})")
    if len(reference["metrics"]) != len(result["metrics"]):
        problems.append(f"{len(reference['metrics'])} logged rows vs {len(result['metrics'])}")
    for i, (ref_row, row) in enumerate(zip(reference["metrics"], result["metrics"])):
        if sorted(ref_row) != sorted(row):
            problems.append(f"row {i}: keys differ: {sorted(set(ref_row) ^ set(row))}")
            continue
        for key in sorted(ref_row):
            if key in COUNTS:
                if ref_row[key] != row[key]:
                    problems.append(f"row {i} {key}: {ref_row[key]} vs {row[key]} (a count: compared exactly)")
                continue
            tolerance = {**METRICS, "atol": METRIC_ATOL.get(key, METRICS["atol"])}
            if divergent and i > 0:
                gaps["later rows (not held)"].add(f"row {i} {key}", ref_row[key], row[key], **tolerance)
                if not math.isfinite(row[key]) and math.isfinite(ref_row[key]):
                    problems.append(f"row {i} {key}: {row[key]}, was {ref_row[key]}")
            elif not gaps["metrics"].add(f"row {i} {key}", ref_row[key], row[key], **tolerance):
                problems.append(f"row {i} {key}: {ref_row[key]} vs {row[key]} (beyond the tolerance)")
    return problems, gaps


def differences(reference: dict[str, Any], result: dict[str, Any], divergent: bool = False) -> list[str]:
    """What differs between two results beyond the tolerance (empty when nothing does); ``divergent``: the
    case is held on its first logged row only (:data:`DIVERGENT`)."""
    return compare_results(reference, result, divergent)[0]


def bitwise_equal(reference: dict[str, Any], result: dict[str, Any]) -> bool:
    """Whether two results are the same, bit for bit (as on the machine that recorded the reference)."""
    if sorted(reference["params"]) != sorted(result["params"]) or reference["metrics"] != result["metrics"]:
        return False
    return all(sorted(ref) == sorted(got) and all(torch.equal(ref[k], got[k]) for k in ref)
               for ref, got in ((ref, result["params"][rank]) for rank, ref in reference["params"].items()))


def commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "lit_rl", "configs"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return proc.stdout.strip() + ("+uncommitted" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["record", "compare"])
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="case names (default: all)")
    parser.add_argument("--more", default="", help="flags added to every case, e.g. '--data.collection overlapped "
                        "--data.policy_lag 0' (compare: that mode must give the reference's numbers)")
    args = parser.parse_args()
    # record --cases: those cases are recorded again, the others kept.
    reference = torch.load(REFERENCE, weights_only=False) if REFERENCE.exists() else {"cases": {}}
    failed = 0
    if args.mode == "compare":
        recorded_on = reference.get("machine", "an unrecorded machine")
        print(f"reference recorded at {reference.get('commit')} on {recorded_on}; comparing on {machine()}")
        for name, stamp in reference.get("recorded", {}).items():
            print(f"  {name}: recorded at {stamp['commit']} on {stamp['machine']}")
        print(f"tolerance: parameters {PARAMS}, metrics {METRICS} (atol {METRIC_ATOL}); counts exactly")
    print(f"{'case':40s} {'ranks':>5s} {'rows':>5s}  result")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            result = run_case(name, Path(tmp), tuple(args.more.split()))
            if args.mode == "record":
                reference["cases"][name] = result
                verdict = "recorded"
            else:
                problems, gaps = compare_results(reference["cases"][name], result, name in DIVERGENT)
                failed += bool(problems)
                if problems:
                    verdict = "DIFFERENT: " + "; ".join(problems[:3])
                elif bitwise_equal(reference["cases"][name], result):
                    verdict = "bitwise equal"
                else:
                    verdict = "within tolerance" + (" (first row; later ones not held)" if name in DIVERGENT else "")
                verdict += "".join(f"\n{'':54s}{what}: {gap}" for what, gap in gaps.items())
            print(f"{name:40s} {len(result['params']):5d} {len(result['metrics']):5d}  {verdict}", flush=True)
    if args.mode == "record":
        # Each case keeps where it was recorded; the file's own stamp is that of the last record of every case.
        stamp = dict(commit=commit(), torch=torch.__version__, machine=machine())
        reference.setdefault("recorded", {}).update({name: stamp for name in args.cases})
        if set(args.cases) >= set(CASES):
            reference.update(stamp)
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        torch.save(reference, REFERENCE)
        print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size / 1e6:.1f} MB) at {reference['commit']}")
    else:
        print(f"reference recorded at {reference.get('commit')}; {failed} of {len(args.cases)} cases differ")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
