"""A refactor's check that training does the same thing: short fixed-seed runs of every config, and of the
placement presets, whose final parameters (every rank's) and logged training metrics are compared with a
reference recorded before the change, for exact equality on CPU.

    python scripts/behaviour_reference.py record    # writes tests/reference/behaviour.pt (at the old code)
    python scripts/behaviour_reference.py compare   # runs every case again; a table; exit 1 on any difference

``tests/test_behaviour.py`` (slow marker) runs ``compare`` case by case. The reference holds what the code
did at the commit named in it; record it again only where a change of behaviour is intended, and say so.
"""

import argparse
import csv
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
    "placement/ppo_single_device": ("configs/ppo/cartpole.yaml", ["--config", "configs/placement/single_device.yaml"], 3),
    "placement/ppo_critic_device": ("configs/ppo/cartpole.yaml", CRITIC_DEVICE, 3),
    "placement/ppo_data_parallel": ("configs/ppo/cartpole.yaml", [
        *DATA_PARALLEL, "--model.init_args.num_minibatches", "4", "--data.normalize_observation", "true",
        "--data.normalize_reward", "true"], 3),
    "placement/ppg_critic_device": (CARTPOLE_PPG[0], [*CARTPOLE_PPG[1:], *CRITIC_DEVICE], 4),
    "placement/ppg_data_parallel": (CARTPOLE_PPG[0], [*CARTPOLE_PPG[1:], *DATA_PARALLEL], 4),
    "placement/lstm_data_parallel": ("configs/ppo/cartpole_novel_lstm.yaml", [*DATA_PARALLEL, "--model.init_args.num_minibatches", "2"], 3),
}


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


def differences(reference: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """What differs between two results, exactly (empty when equal)."""
    problems = []
    if sorted(reference["params"]) != sorted(result["params"]):
        return [f"ranks {sorted(reference['params'])} vs {sorted(result['params'])}"]
    for rank, ref in reference["params"].items():
        got = result["params"][rank]
        if sorted(ref) != sorted(got):
            problems.append(f"rank {rank}: parameter names differ: {sorted(set(ref) ^ set(got))[:4]}")
            continue
        for key in ref:
            if not torch.equal(ref[key], got[key]):
                diff = (ref[key].float() - got[key].float()).abs().max().item() if ref[key].shape == got[key].shape else "shape"
                problems.append(f"rank {rank}: {key} differs (max abs {diff})")
    if len(reference["metrics"]) != len(result["metrics"]):
        problems.append(f"{len(reference['metrics'])} logged rows vs {len(result['metrics'])}")
    for i, (ref_row, row) in enumerate(zip(reference["metrics"], result["metrics"])):
        for key in sorted(set(ref_row) | set(row)):
            if ref_row.get(key) != row.get(key):
                problems.append(f"row {i} {key}: {ref_row.get(key)} vs {row.get(key)}")
    return problems


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
    print(f"{'case':40s} {'ranks':>5s} {'rows':>5s}  result")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            result = run_case(name, Path(tmp), tuple(args.more.split()))
            if args.mode == "record":
                reference["cases"][name] = result
                verdict = "recorded"
            else:
                problems = differences(reference["cases"][name], result)
                failed += bool(problems)
                verdict = "equal" if not problems else "DIFFERENT: " + "; ".join(problems[:3])
            print(f"{name:40s} {len(result['params']):5d} {len(result['metrics']):5d}  {verdict}", flush=True)
    if args.mode == "record":
        reference.update(commit=commit(), torch=torch.__version__)
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        torch.save(reference, REFERENCE)
        print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size / 1e6:.1f} MB) at {reference['commit']}")
    else:
        print(f"reference recorded at {reference.get('commit')}; {failed} of {len(args.cases)} cases differ")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
