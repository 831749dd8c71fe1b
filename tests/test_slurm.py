"""The sbatch templates in scripts/slurm/ on a real SLURM cluster (munge, slurmctld, two slurmd daemons as
nodes n1 and n2 on this host; tests/slurm_cluster.py): a two-node actor/critic job, and a job preempted
mid-run that requeues itself and resumes from its checkpoint.

The jobs run on CPU (gloo), one task per node; the command line overrides only what a CPU-only cluster
would (partition, no GPUs, one task and one CPU per node)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_rl.run.sweep import read_trials
from tests.helpers import QUIET, REPO, read_metrics
from tests.slurm_cluster import LocalSlurm, install_reason

pytestmark = pytest.mark.slurm

CPU_NODES = ["--partition=debug", "--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1"]
ITERATION = 8 * 32  # env steps per iteration: 8 envs in all (4 on each of 2 ranks) x 32 steps
FIT = ["--data.num_envs", "8", "--data.num_steps", "32", "--data.vectorization_mode", "sync",
       "--trainer.limit_val_batches", "0", "--checkpoint.every_n_env_steps", "0", *QUIET]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = install_reason()
    if reason is not None:
        print(f"SLURM tests skipped: {reason}")
        pytest.skip(reason)
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
    except Exception:
        slurm.stop()
        raise
    yield slurm
    slurm.stop()


def job_env(**more: str) -> dict[str, str]:
    """What a job needs from this test run: lit-rl on PATH, the checkout importable, wandb left to decide."""
    return {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
            "WANDB_MODE": "", "WANDB_API_KEY": "", **more}


def submit(cluster: LocalSlurm, template: str, workdir: Path, total: int, *extra: str, **more_env: str) -> str:
    """Submits ``scripts/slurm/<template>`` from the checkout (as a user would), running in ``workdir``;
    ``more_env``: variables the template reads (``PRESET``)."""
    env = job_env(**more_env)
    options = [*CPU_NODES, f"--chdir={workdir}", f"--output={workdir}/job-%j.out"]
    args = [str(REPO / "configs/ppo/cartpole.yaml"), "--data.total_timesteps", str(total), *FIT,
            "--trainer.callbacks+=tests.placement_helpers.SaveRankParams",
            "--trainer.callbacks.dirpath", str(workdir / "params"), *extra]
    return cluster.sbatch(REPO / "scripts" / "slurm" / template, options, args, cwd=REPO, env=env)


def job_output(workdir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(workdir.glob("job-*.out")))


def rank_results(workdir: Path) -> list[tuple[dict, dict]]:
    return [(json.loads((workdir / "params" / f"rank{r}.json").read_text()),
             torch.load(workdir / "params" / f"rank{r}.pt", weights_only=True)) for r in range(2)]


def max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


def test_two_node_job_trains_the_actor_on_one_node_and_the_critic_on_the_other(cluster, tmp_path):
    total = 16 * ITERATION
    job = submit(cluster, "placement_two_nodes.sbatch", tmp_path, total)
    state = cluster.wait(job, timeout=600)
    assert state == "COMPLETED", f"job {job} ended {state}:\n{job_output(tmp_path)}\n{cluster.logs()}"
    (actor, actor_params), (critic, critic_params) = rank_results(tmp_path)
    # Rank 0 on node n1 holds the actor only, rank 1 on node n2 the critic only.
    assert (actor["slurm_node"], actor["node_rank"], actor["roles"]) == ("n1", 0, ["actor"])
    assert (critic["slurm_node"], critic["node_rank"], critic["roles"]) == ("n2", 1, ["critic"])
    assert actor["stepped"] == {"actor": True, "critic": False}
    assert critic["stepped"] == {"actor": False, "critic": True}
    assert max_diff(actor_params, critic_params) == 0.0  # the weights were exchanged: every rank is equal
    assert actor["env_steps"] == critic["env_steps"] == total
    run_dir = tmp_path / "runs" / f"lit-rl-two-nodes-{job}"
    assert run_dir.is_dir()
    checkpoint = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=True, map_location="cpu")
    assert checkpoint["env_steps"] == total
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    assert any("train/episodic_return" in r for r in rows) and any("train/value_loss" in r for r in rows)
    assert max(r["env_steps"] for r in rows if "env_steps" in r) == total


def test_two_node_job_collects_on_one_node_for_learners_on_the_other(cluster, tmp_path):
    """configs/placement/rollout_node.yaml through the same template (PRESET=rollout_node): node n2's task
    collects every env through its collector process, one update behind; node n1's trains both networks and
    collects nothing. Both end with the same parameters, at the exact budget."""
    total = 8 * ITERATION
    job = submit(cluster, "placement_two_nodes.sbatch", tmp_path, total, PRESET="rollout_node")
    state = cluster.wait(job, timeout=600)
    assert state == "COMPLETED", f"job {job} ended {state}:\n{job_output(tmp_path)}\n{cluster.logs()}"
    (learner, learner_params), (rollout, rollout_params) = rank_results(tmp_path)
    assert (learner["slurm_node"], learner["node_rank"], sorted(learner["roles"]), learner["envs"]) == ("n1", 0, ["actor", "critic"], 0)
    assert (rollout["slurm_node"], rollout["node_rank"], rollout["roles"], rollout["envs"]) == ("n2", 1, [], 8)
    assert learner["stepped"] == {"actor": True, "critic": True}
    assert rollout["stepped"] == {"actor": False, "critic": False}
    assert max_diff(learner_params, rollout_params) == 0.0  # the learners' weights reached the rollout node
    assert learner["env_steps"] == rollout["env_steps"] == total
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    assert max(r["env_steps"] for r in rows if "env_steps" in r) == total
    assert [r["perf/policy_lag"] for r in rows if "perf/policy_lag" in r] == [0.0] + [1.0] * 7


def test_an_unknown_preset_is_refused_by_the_template(cluster, tmp_path):
    job = submit(cluster, "placement_two_nodes.sbatch", tmp_path, 8 * ITERATION, PRESET="rollout_nodes")
    assert cluster.wait(job, timeout=120) == "FAILED"
    assert "PRESET=rollout_nodes: no placement preset" in job_output(tmp_path)


def task_pid(job: str, rank: int) -> int:
    """The pid of the job's ``lit-rl`` task with SLURM_PROCID ``rank`` (both nodes run on this host)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = dict(kv.split("=", 1) for kv in open(f"/proc/{entry}/environ").read().split("\0") if "=" in kv)
            cmdline = open(f"/proc/{entry}/cmdline").read()
        except OSError:
            continue
        if (environ.get("SLURM_JOB_ID") == job and environ.get("SLURM_PROCID") == str(rank)
                and "lit-rl" in cmdline and "fit" in cmdline):
            return int(entry)
    raise AssertionError(f"no lit-rl task with rank {rank} in job {job}")


def test_preempted_job_checkpoints_requeues_and_resumes_to_the_exact_budget(cluster, tmp_path):
    total = 48 * ITERATION
    job = submit(cluster, "placement_two_nodes.sbatch", tmp_path, total, "--trainer.limit_val_batches", "1",
                 "--data.eval_episodes", "2")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and cluster.state(job) in ("PENDING", "RUNNING"):
        logs = list(tmp_path.rglob("metrics.csv"))
        if logs and any(r.get("env_steps", 0) >= 4 * ITERATION for r in read_metrics(logs[0])):
            break
        time.sleep(1)
    else:
        pytest.fail(f"job {job} did not start training:\n{job_output(tmp_path)}")
    # Preempt once training is under way, with the signal SLURM sends before a time limit
    # (--signal=USR1@90), here to one rank only, the critic's (rank 1): the ranks must agree to stop.
    os.kill(task_pid(job, 1), signal.SIGUSR1)
    # The job requeues itself. SLURM holds a requeued job back for a while (BeginTime); the test starts it
    # now as an admin would, to keep the test short.
    state = cluster.wait(job, timeout=120, until=("PENDING", "COMPLETED", "FAILED", "CANCELLED"))
    assert state == "PENDING", f"job {job} did not requeue ({state}):\n{job_output(tmp_path)}"
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=cluster.env, check=True)
    state = cluster.wait(job, timeout=600)
    assert state == "COMPLETED", f"job {job} ended {state}:\n{job_output(tmp_path)}\n{cluster.logs()}"
    assert cluster.field(job, "Restarts") == "1"

    run_dir = tmp_path / "runs" / f"lit-rl-two-nodes-{job}"
    hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert len(hpc) == 1, f"expected one requeue checkpoint in {run_dir}: {hpc}"
    saved = torch.load(hpc[0], weights_only=True, map_location="cpu")["env_steps"]
    assert 4 * ITERATION <= saved < total and saved % ITERATION == 0
    # The first run logged up to the checkpoint and no further (no evaluation after the requeue); the
    # requeued one went on from there.
    first, second = (read_metrics(p) for p in sorted(tmp_path.glob("lightning_logs/version_*/metrics.csv")))
    first_steps = sorted({r["env_steps"] for r in first if "train/iteration" in r})
    second_steps = sorted({r["env_steps"] for r in second if "train/iteration" in r})
    assert first_steps[-1] == saved
    assert not any("val/episodic_return_mean" in r for r in first)
    assert second_steps[0] == saved + ITERATION and second_steps[-1] == total
    assert len(first_steps) + len(second_steps) == total // ITERATION  # every iteration exactly once
    assert any(r.get("val/episodic_return_mean") for r in second)  # the finished run evaluates
    (actor, actor_params), (critic, critic_params) = rank_results(tmp_path)
    assert actor["env_steps"] == critic["env_steps"] == total
    assert max_diff(actor_params, critic_params) == 0.0


def submit_sweep(cluster: LocalSlurm, workdir: Path, array: str, total: int, *extra: str) -> str:
    """Submits scripts/slurm/sweep_array.sbatch with the shipped sweep file, its folder ``workdir/sweep``."""
    os.symlink(REPO / "configs", workdir / "configs")  # the sweep's command names configs/ as from the checkout
    options = ["--partition=debug", "--gpus-per-node=0", "--cpus-per-task=1", f"--array={array}",
               f"--chdir={workdir}", f"--output={workdir}/job-%A_%a.out"]
    args = ["configs/sweeps/ppo_cartpole.yaml", "--", *FIT[:6], "--data.total_timesteps", str(total),
            "--data.eval_episodes", "1", *QUIET, *extra]
    return cluster.sbatch(REPO / "scripts/slurm/sweep_array.sbatch", options, args, cwd=REPO,
                          env=job_env(SWEEP_DIR=str(workdir / "sweep")))


def test_sweep_runs_as_a_job_array_sharing_one_sweep_folder(cluster, tmp_path):
    pytest.importorskip("sweeps", reason="lit-rl sweep needs the sweep extra (pip install -e '.[sweep]')")
    job = submit_sweep(cluster, tmp_path, "0-1", 512)
    state = cluster.wait(job, timeout=600)
    assert state == "COMPLETED", f"job {job} ended {state}:\n{job_output(tmp_path)}\n{cluster.logs()}"
    trials = read_trials(tmp_path / "sweep")
    assert len(trials) == 2 and all(t["state"] == "finished" for t in trials), trials
    # Each array task ran its own trial, with its own values from the one search.
    assert sorted(t["slurm_task"] for t in trials) == [f"{job}_0", f"{job}_1"]
    assert trials[0]["params"] != trials[1]["params"]


def test_preempted_sweep_task_resumes_its_trial(cluster, tmp_path):
    pytest.importorskip("sweeps", reason="lit-rl sweep needs the sweep extra (pip install -e '.[sweep]')")
    total = 24 * ITERATION  # one process, 8 envs x 32 steps per iteration
    job = submit_sweep(cluster, tmp_path, "0-0", total, "--checkpoint.every_n_env_steps", "512")
    # Preempt once the trial has trained a while (its first env-step checkpoint is written), signalling every
    # process of the task as SLURM's --signal does: `lit-rl sweep` and its trial.
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("lit-rl/*/checkpoints/env_steps=*.ckpt")):
        assert time.monotonic() < deadline, f"the trial did not start training:\n{job_output(tmp_path)}"
        time.sleep(1)
    subprocess.run(["scancel", "--signal=USR1", job], env=cluster.env, check=True)
    state = cluster.wait(job, timeout=120, until=("PENDING", "COMPLETED", "FAILED", "CANCELLED"))
    assert state == "PENDING", f"job {job} did not requeue ({state}):\n{job_output(tmp_path)}"
    subprocess.run(["scontrol", "update", f"JobId={job}_0", "StartTime=now"], env=cluster.env, check=True)
    state = cluster.wait(job, timeout=600)
    assert state == "COMPLETED", f"job {job} ended {state}:\n{job_output(tmp_path)}\n{cluster.logs()}"
    trials = read_trials(tmp_path / "sweep")
    # One trial, resumed (not a second one started), trained to its budget from the requeue checkpoint.
    assert len(trials) == 1 and trials[0]["state"] == "finished", trials
    assert trials[0]["env_steps"] == total
    assert list((tmp_path / "sweep" / "trial-000").glob("hpc_ckpt_*.ckpt"))
    log = (tmp_path / "sweep" / "trial-000.log").read_text()
    assert "Restored all states from the checkpoint" in log
