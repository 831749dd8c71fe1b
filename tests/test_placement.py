"""The actor/critic placement strategy on CPU (gloo): parallel updates on two processes give what the serial
update in one process gives, and every rank ends each run with the same parameters."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_rl.distributed import ActorCriticPlacement
from lit_rl.errors import ConfigError
from tests.helpers import REPO
from tests.test_cli import TINY, lit_rl

SMALL = ["--data.total_timesteps", "2048", "--data.num_steps", "32", "--data.vectorization_mode", "sync",
         "--model.init_args.num_minibatches", "2", "--trainer.limit_val_batches", "0", "--trainer.accelerator", "cpu",
         "--checkpoint.every_n_env_steps", "0", *TINY]


PPO_EXTRA = ["--model.init_args.update_epochs", "2"]
PPG_EXTRA = ["--model.init_args.n_pi", "4", "--model.init_args.actor_epochs", "2",
             "--model.init_args.critic_epochs", "2"]  # 8 iterations: two aux phases


def fit_args(tmp_path: Path, name: str, config: str, envs_per_process: int, *extra: str) -> list[str]:
    return ["fit", "--config", str(REPO / config), *SMALL, "--data.num_envs", str(envs_per_process),
            "--trainer.logger.save_dir", str(tmp_path / name),
            "--trainer.callbacks+=tests.placement_helpers.SaveRankParams",
            "--trainer.callbacks.dirpath", str(tmp_path / name / "params"), *extra]


def params(tmp_path: Path, name: str, ranks: int) -> dict[int, dict]:
    return {r: torch.load(tmp_path / name / "params" / f"rank{r}.pt", weights_only=True) for r in range(ranks)}


def run(tmp_path: Path, name: str, config: str, envs: int, processes: int, *extra: str) -> dict[int, dict]:
    """Trains with ``envs`` envs in all, split over ``processes``; returns each rank's final parameters."""
    strategy = []
    if processes > 1:
        strategy = ["--trainer.devices", str(processes), "--trainer.strategy", "lit_rl.distributed.ActorCriticPlacement",
                    "--trainer.strategy.process_group_backend", "gloo"]
    lit_rl(*fit_args(tmp_path, name, config, envs // processes, *strategy, *extra), cwd=tmp_path)
    return params(tmp_path, name, processes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_nodes(args: list[str], cwd: Path, nodes: int = 2) -> list[subprocess.Popen]:
    """Starts one ``lit-rl`` process per node on this host, as a cluster launcher would on each node:
    the same command, ``NODE_RANK`` set per process, one rendezvous address."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "LOCAL_RANK", "NODE_RANK")}
    env.update(PYTHONPATH=str(REPO), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    exe = str(Path(sys.executable).parent / "lit-rl")
    return [subprocess.Popen([exe, *args, "--trainer.num_nodes", str(nodes)], cwd=cwd, text=True,
                             env={**env, "NODE_RANK": str(node)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for node in range(nodes)]


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """``(return code, stderr)`` of each process; any still running after ``timeout`` s is killed (code None)."""
    deadline = time.monotonic() + timeout
    out = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            out.append((proc.returncode, err))
        except subprocess.TimeoutExpired:
            proc.kill()
            out.append((None, proc.communicate()[1]))
    return out


def max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("config,extra", [("configs/ppo/cartpole.yaml", PPO_EXTRA), ("configs/ppg/cartpole.yaml", PPG_EXTRA)])
def test_parallel_actor_and_critic_ranks_match_the_serial_update(tmp_path, config, extra):
    serial = run(tmp_path, "serial", config, 8, 1, *extra)[0]
    parallel = run(tmp_path, "parallel", config, 8, 2, *extra, "--trainer.strategy.actor_ranks", "[0]",
                   "--trainer.strategy.critic_ranks", "[1]", "--trainer.strategy.update_mode", "parallel")
    assert max_diff(parallel[0], parallel[1]) == 0.0  # all ranks end with the same parameters
    print(f"max |serial - parallel| = {max_diff(serial, parallel[0]):.2e}")
    assert max_diff(serial, parallel[0]) <= 1e-6


def test_ranks_that_do_not_exist_are_refused(tmp_path):
    proc = lit_rl("fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), *SMALL, "--data.num_envs", "4",
                  "--trainer.devices", "2", "--trainer.strategy", "lit_rl.distributed.ActorCriticPlacement",
                  "--trainer.strategy.process_group_backend", "gloo", "--trainer.strategy.critic_ranks", "[3]",
                  cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "critic_ranks" in proc.stderr and "2 process" in proc.stderr


@pytest.mark.parametrize("config,extra", [("configs/ppo/cartpole.yaml", PPO_EXTRA), ("configs/ppg/cartpole.yaml", PPG_EXTRA)])
def test_data_parallel_inside_each_group_matches_one_rank_per_group(tmp_path, config, extra):
    two = run(tmp_path, "two", config, 8, 2, *extra, "--trainer.strategy.actor_ranks", "[0]",
              "--trainer.strategy.critic_ranks", "[1]")
    four = run(tmp_path, "four", config, 8, 4, *extra, "--trainer.strategy.actor_ranks", "[0, 1]",
               "--trainer.strategy.critic_ranks", "[2, 3]")
    assert all(max_diff(four[0], four[r]) == 0.0 for r in (1, 2, 3))
    # Each rank of a group takes half of every minibatch; the summed half-gradients differ from the whole
    # minibatch's gradient only in float rounding.
    print(f"max |2 ranks - 4 ranks| = {max_diff(two[0], four[0]):.2e}")
    assert max_diff(two[0], four[0]) <= 1e-5


def test_two_node_launch_on_one_host(tmp_path):
    """The two-node preset: two processes, each its own node (NODE_RANK), actor on node 0, critic on node 1."""
    config = "configs/ppo/cartpole.yaml"
    serial = run(tmp_path, "serial", config, 8, 1, *PPO_EXTRA)[0]
    args = fit_args(tmp_path, "nodes", config, 4, "--config", str(REPO / "configs/placement/two_nodes.yaml"),
                    "--trainer.devices", "1", "--trainer.accelerator", "cpu", *PPO_EXTRA)
    results = finish(launch_nodes(args, tmp_path), timeout=300)
    assert [code for code, _ in results] == [0, 0], "\n\n".join(err[-3000:] for _, err in results)
    nodes = params(tmp_path, "nodes", 2)
    assert max_diff(nodes[0], nodes[1]) == 0.0
    assert max_diff(serial, nodes[0]) <= 1e-6  # the same run as one process doing both roles


@pytest.mark.parametrize("failing,how", [(1, "exit"), (0, "exit"), (1, "hang")])
def test_a_failed_rank_ends_the_others_with_a_clear_error(tmp_path, failing, how):
    """Two node processes; one exits or stops answering at its third iteration. The other ends within the
    strategy's timeout (plus start-up), with a message that says what happened and what to change."""
    timeout_s = 20
    args = fit_args(tmp_path, "fail", "configs/ppo/cartpole.yaml", 4, "--config",
                    str(REPO / "configs/placement/two_nodes.yaml"), "--trainer.devices", "1",
                    "--trainer.accelerator", "cpu", "--trainer.strategy.timeout_s", str(timeout_s),
                    "--data.total_timesteps", "100000",
                    "--trainer.callbacks+=tests.placement_helpers.FailRank", "--trainer.callbacks.rank", str(failing),
                    "--trainer.callbacks.iteration", "2", "--trainer.callbacks.how", how)
    start = time.monotonic()
    procs = launch_nodes(args, tmp_path)
    survivor = procs[1 - failing]
    try:
        _, err = survivor.communicate(timeout=120 + timeout_s)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    elapsed = time.monotonic() - start
    assert survivor.returncode == 1, err[-3000:]
    message = [line for line in err.splitlines() if line.startswith("lit-rl: error:")]
    assert message, err[-3000:]
    assert f"rank {1 - failing}:" in message[0] and "timeout_s" in message[0], message[0]
    assert "Traceback" not in err, err[-3000:]
    print(f"{elapsed:.0f} s: {message[0]}")
    assert elapsed < 120 + timeout_s


def test_nodes_name_the_ranks_of_their_processes():
    ranks = ActorCriticPlacement.nodes_to_ranks({"actor": None, "critic": [5]}, {"actor": [0], "critic": None},
                                                num_nodes=2, per_node=3)
    assert ranks == {"actor": [0, 1, 2], "critic": [5]}
    assert ActorCriticPlacement.nodes_to_ranks({"actor": None, "critic": None}, {"actor": None, "critic": [1]},
                                               num_nodes=2, per_node=2)["critic"] == [2, 3]
    with pytest.raises(ConfigError, match=r"critic_nodes: \[2\] cannot be hosted by 2 node"):
        ActorCriticPlacement.nodes_to_ranks({"actor": None, "critic": None}, {"actor": None, "critic": [2]}, 2, 1)
    with pytest.raises(ConfigError, match="actor_ranks and actor_nodes are both set"):
        ActorCriticPlacement(actor_ranks=[0], actor_nodes=[0])
    with pytest.raises(ConfigError, match="timeout_s"):
        ActorCriticPlacement(timeout_s=0)
