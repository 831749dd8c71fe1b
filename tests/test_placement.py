"""The actor/critic placement strategy on CPU (gloo). A placement preset does not change the experiment:
the same command gives the same batch and, role by role and rank by rank, the parameters of the one-process
serial run, with the normalization statistics merged over the processes."""

import json
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
from tests.helpers import REPO, QUIET, lit_rl, read_metrics

ENVS, STEPS = 8, 2048  # the run's envs, split over the processes of each preset, and its env steps
SMALL = ["--data.num_envs", str(ENVS), "--data.total_timesteps", str(STEPS), "--data.num_steps", "32",
         "--data.vectorization_mode", "sync", "--data.normalize_observation", "true", "--data.normalize_reward", "true",
         "--model.init_args.num_minibatches", "2", "--trainer.limit_val_batches", "0",
         "--checkpoint.every_n_env_steps", "0", *QUIET]
ROLES = ("actor", "critic")
PPO = ("configs/ppo/cartpole.yaml", "--model.init_args.update_epochs", "2")
PPG = ("configs/ppg/cartpole.yaml", "--model.init_args.n_pi", "4", "--model.init_args.actor_epochs", "2",
       "--model.init_args.critic_epochs", "2")  # 8 iterations: two aux phases
SINGLE_DEVICE = ("--config", str(REPO / "configs/placement/single_device.yaml"))
CRITIC_DEVICE = ("--config", str(REPO / "configs/placement/critic_device.yaml"))


def fit_args(tmp_path: Path, name: str, config: str, *extra: str) -> list[str]:
    return ["fit", "--config", str(REPO / config), *SMALL, "--trainer.logger.save_dir", str(tmp_path / name),
            "--trainer.callbacks+=tests.placement_helpers.SaveRankParams",
            "--trainer.callbacks.dirpath", str(tmp_path / name / "params"), *extra]


def results(tmp_path: Path, name: str) -> list[dict]:
    """Each rank's final state dict (``params``), role vectors (``final``, ``updated``), datamodule state
    (``data``) and run facts (``info``), in rank order."""
    folder = tmp_path / name / "params"
    ranks = sorted(int(p.stem[4:]) for p in folder.glob("rank*.json"))
    return [{"dir": tmp_path / name, "params": torch.load(folder / f"rank{r}.pt", weights_only=True),
             **torch.load(folder / f"rank{r}.roles.pt", weights_only=True),
             "info": json.loads((folder / f"rank{r}.json").read_text())} for r in ranks]


def run(tmp_path: Path, name: str, config: str, *extra: str) -> list[dict]:
    """``lit-rl fit`` of the experiment ``config`` with ``extra`` flags (a placement preset); each rank's results."""
    lit_rl(*fit_args(tmp_path, name, config, *extra), cwd=tmp_path)
    return results(tmp_path, name)


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


def check_roles(ranks: list[dict], reference: dict, roles: list[list[str]], atol: float) -> dict[str, float]:
    """Each rank's own update of each role it trains (before the weight exchange) and each role's final
    parameters on every rank, against the one-process serial run's. Rank equality alone proves nothing:
    the exchange copies one rank's parameters to all. Returns the largest difference per role."""
    diffs = {}
    for r, (rank, expected) in enumerate(zip(ranks, roles)):
        assert sorted(rank["info"]["roles"]) == sorted(expected) == sorted(rank["updated"]), (r, rank["info"]["roles"])
        for kind in ("updated", "final"):
            for role, vector in rank[kind].items():
                diffs[f"rank {r} {kind} {role}"] = (vector - reference["final"][role]).abs().max().item()
    table = ", ".join(f"{key}: {diff:.1e}" for key, diff in diffs.items())
    assert max(diffs.values()) <= atol, f"parameters differ from the serial run's by more than {atol:g}: {table}"
    return {role: max(d for key, d in diffs.items() if key.endswith(role)) for role in ROLES}


@pytest.fixture(scope="module", params=[PPO, PPG], ids=["ppo", "ppg"])
def presets(request, tmp_path_factory) -> dict[str, list[dict]]:
    """The same experiment command with configs/placement/single_device.yaml and with critic_device.yaml."""
    config, *extra = request.param
    tmp_path = tmp_path_factory.mktemp("presets")
    return {"config": request.param,
            "single": run(tmp_path, "single", config, *extra, *SINGLE_DEVICE),
            "critic_device": run(tmp_path, "critic_device", config, *extra, *CRITIC_DEVICE)}


@pytest.mark.integration
@pytest.mark.xdist_group("presets")  # one worker computes the module's presets fixture
def test_a_placement_preset_does_not_change_the_experiment(presets):
    """data.num_envs is the run's: two processes step half of the envs each, so the batch, the iterations
    and (up to float rounding) every role's parameters are those of the one-process run."""
    (single,), two = presets["single"], presets["critic_device"]
    assert single["info"]["envs"] == ENVS and [r["info"]["envs"] for r in two] == [ENVS // 2] * 2
    assert single["info"]["env_steps"] == two[0]["info"]["env_steps"] == two[1]["info"]["env_steps"] == STEPS
    assert single["info"]["iterations"] == two[0]["info"]["iterations"] == STEPS // (ENVS * 32)
    worst = check_roles(two, single, [["actor"], ["critic"]], atol=1e-6)
    print(f"max |serial - critic_device| per role: {worst}")
    assert max_diff(single["params"], two[0]["params"]) <= 1e-6


@pytest.mark.integration
@pytest.mark.xdist_group("presets")  # one worker computes the module's presets fixture
def test_normalization_statistics_are_merged_over_processes(presets):
    """With normalize_observation and normalize_reward, the two processes of critic_device.yaml end with the
    statistics of the one-process run (each saw half of the envs), and its checkpoint holds the run's:
    counts over all envs' steps, not one rank's."""
    (single,), two = presets["single"], presets["critic_device"]
    for rank in two:
        for name in ("obs_rms", "return_rms"):
            mine, ref = rank["data"][name], single["data"][name]
            assert mine["count"] == ref["count"], name
            assert torch.allclose(mine["mean"], ref["mean"], rtol=1e-6, atol=1e-7), name
            assert torch.allclose(mine["var"], ref["var"], rtol=1e-6, atol=1e-7), name
    # Observations: every env's reset and every step; returns: every step but the autoreset ones.
    assert single["data"]["obs_rms"]["count"] == pytest.approx(1e-4 + ENVS + STEPS, abs=1e-9)
    assert STEPS * 0.9 < single["data"]["return_rms"]["count"] < STEPS
    checkpoint = torch.load(next(two[0]["dir"].rglob("last.ckpt")), weights_only=False)
    assert checkpoint["RolloutDataModule"]["obs_rms"]["count"] == single["data"]["obs_rms"]["count"]
    assert checkpoint["RolloutDataModule"]["return_rms"]["count"] == single["data"]["return_rms"]["count"]


@pytest.mark.integration
@pytest.mark.xdist_group("presets")  # one worker computes the module's presets fixture
def test_the_checkpoint_holds_each_optimizer_as_its_role_has_it(presets):
    """Rank 0 writes the checkpoint, and under critic_device it does not train the critic: the critic's
    optimizer state (Adam's step counts and moments) and its minibatch stream must come from rank 1. They
    equal the one-process run's; rank 0's own copy of the critic optimizer never stepped."""
    (single,), two = presets["single"], presets["critic_device"]
    one = torch.load(next(single["dir"].rglob("last.ckpt")), weights_only=False)
    placed = torch.load(next(two[0]["dir"].rglob("last.ckpt")), weights_only=False)
    for i in range(2):
        expected, got = one["optimizer_states"][i]["state"], placed["optimizer_states"][i]["state"]
        assert expected and expected.keys() == got.keys(), i
        for key in expected:
            assert torch.equal(expected[key]["step"], got[key]["step"]), (i, key)
            assert torch.allclose(expected[key]["exp_avg_sq"], got[key]["exp_avg_sq"], rtol=1e-4, atol=1e-10), (i, key)
    assert placed["global_step"] == one["global_step"] > 0  # the run's optimizer steps, both roles'
    assert one["shuffle_generators"].keys() == placed["shuffle_generators"].keys()
    for stream, state in one["shuffle_generators"].items():
        assert torch.equal(torch.as_tensor(state), torch.as_tensor(placed["shuffle_generators"][stream])), stream


@pytest.mark.integration
def test_ranks_that_do_not_exist_are_refused(tmp_path):
    proc = lit_rl("fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), *SMALL, "--data.num_envs", "4",
                  "--trainer.devices", "2", "--trainer.strategy", "lit_rl.distributed.ActorCriticPlacement",
                  "--trainer.strategy.process_group_backend", "gloo", "--trainer.strategy.critic_ranks", "[3]",
                  cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "critic_ranks" in proc.stderr and "2 process" in proc.stderr


@pytest.mark.integration
def test_envs_that_do_not_split_over_the_processes_are_refused(tmp_path):
    proc = lit_rl(*fit_args(tmp_path, "odd", "configs/ppo/cartpole.yaml", *CRITIC_DEVICE, "--data.num_envs", "3",
                            "--data.total_timesteps", "1536"), cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = [line for line in proc.stderr.splitlines() if line.startswith("lit-rl: error:")]
    assert message and "data.num_envs: 3 envs cannot be split evenly over the 2 processes" in message[0], proc.stderr[-2000:]
    assert "e.g. 2 or 4" in message[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "odd" / "params").exists()


@pytest.mark.integration
@pytest.mark.xdist_group("presets")  # one worker computes the module's presets fixture
def test_data_parallel_inside_each_group_matches_the_serial_run(presets, tmp_path):
    """Two ranks per group: each takes half of every minibatch and the group sums the gradients, which
    differ from the whole minibatch's only in float rounding. Every rank's own update of its role is
    checked, so a rank whose result the weight exchange would overwrite is checked too."""
    config, *extra = presets["config"]
    four = run(tmp_path, "four", config, *extra, *CRITIC_DEVICE, "--trainer.devices", "4",
               "--trainer.strategy.actor_ranks", "[0, 1]", "--trainer.strategy.critic_ranks", "[2, 3]")
    assert [r["info"]["envs"] for r in four] == [ENVS // 4] * 4
    # Two ranks per role take the same steps: the run's count is one rank's per role, not the sum over ranks.
    assert [r["info"]["global_step"] for r in four] == [presets["single"][0]["info"]["global_step"]] * 4
    worst = check_roles(four, presets["single"][0], [["actor"], ["actor"], ["critic"], ["critic"]], atol=1e-5)
    print(f"max |serial - 4 ranks| per role: {worst}")


@pytest.mark.parametrize("presets", [PPO], indirect=True, ids=["ppo"])
@pytest.mark.integration
@pytest.mark.xdist_group("presets")  # one worker computes the module's presets fixture
def test_two_node_launch_on_one_host(presets, tmp_path):
    """The two-node preset: two processes, each its own node (NODE_RANK), actor on node 0, critic on node 1."""
    config, *extra = presets["config"]
    args = fit_args(tmp_path, "nodes", config, "--config", str(REPO / "configs/placement/two_nodes.yaml"),
                    "--trainer.devices", "1", "--trainer.accelerator", "cpu", *extra)
    codes = finish(launch_nodes(args, tmp_path), timeout=300)
    assert [code for code, _ in codes] == [0, 0], "\n\n".join(err[-3000:] for _, err in codes)
    nodes = results(tmp_path, "nodes")
    assert [r["info"]["node_rank"] for r in nodes] == [0, 1]
    # The same run as one process doing both roles.
    worst = check_roles(nodes, presets["single"][0], [["actor"], ["critic"]], atol=1e-6)
    print(f"max |serial - two nodes| per role: {worst}")


ROLLOUT_NODE = ("--config", str(REPO / "configs/placement/rollout_node.yaml"), "--trainer.devices", "1",
                "--trainer.accelerator", "cpu")


def rollout_node_run(tmp_path: Path, name: str, config: str, *extra: str) -> list[dict]:
    """configs/placement/rollout_node.yaml as two node processes on this host: the learner on node 0, the
    rollout rank on node 1; each rank's results."""
    codes = finish(launch_nodes(fit_args(tmp_path, name, config, *ROLLOUT_NODE, *extra), tmp_path), timeout=300)
    assert [code for code, _ in codes] == [0, 0], "\n\n".join(err[-3000:] for _, err in codes)
    ranks = results(tmp_path, name)
    learner, rollout = ranks
    # Node 1 collects every env and trains nothing; node 0 trains both roles and collects nothing.
    assert [r["info"]["node_rank"] for r in ranks] == [0, 1]
    assert (learner["info"]["envs"], rollout["info"]["envs"]) == (0, ENVS)
    assert rollout["info"]["stepped"] == {"actor": False, "critic": False}
    assert learner["info"]["env_steps"] == rollout["info"]["env_steps"] == STEPS
    # Lightning's step count is the run's on both (the rollout rank never steps an optimizer).
    assert learner["info"]["global_step"] == rollout["info"]["global_step"] > 0
    return ranks


def check_same_run(ranks: list[dict], reference: dict) -> None:
    """Every rank's parameters and normalization statistics are the reference run's."""
    worst = check_roles(ranks, reference, [["actor", "critic"], []], atol=1e-6)
    print(f"max |one process - rollout node| per role: {worst}")
    for rank in ranks:
        assert max_diff(rank["params"], reference["params"]) <= 1e-6
        for name in ("obs_rms", "return_rms"):
            assert rank["data"][name]["count"] == reference["data"][name]["count"], name
            assert torch.allclose(rank["data"][name]["mean"], reference["data"][name]["mean"], rtol=1e-6, atol=1e-7), name


@pytest.mark.integration
@pytest.mark.xdist_group("presets")  # one worker computes the module's presets fixture
def test_rollout_node_collects_for_learners_that_collect_nothing(presets, tmp_path):
    """The rollout-node preset with synchronous collection: node 1 collects every env, node 0 trains both
    networks from the gathered rollout; the run is the one-process run (PPO and PPG), normalization merged."""
    config, *extra = presets["config"]
    ranks = rollout_node_run(tmp_path, "rollout_sync", config, *extra, "--data.collection", "sync")
    check_same_run(ranks, presets["single"][0])


@pytest.mark.slow  # about a minute: three fits; CI's slow leg runs it
def test_rollout_node_overlaps_collection_with_the_update(tmp_path):
    """The rollout-node preset as shipped (overlapped, lag 1): node 1's collector gathers rollout j + 1 with
    the weights broadcast after update j - 1 while node 0 updates on rollout j. The run is the one-process
    overlapped run with as many collectors: the same parameters on every rank, lag 1 logged."""
    config, *extra = PPO
    one = run(tmp_path, "one", config, *extra, "--data.collection", "overlapped")[0]
    ranks = rollout_node_run(tmp_path, "rollout_overlapped", config, *extra)
    check_same_run(ranks, one)
    rows = read_metrics(next((tmp_path / "rollout_overlapped").rglob("metrics.csv")))
    lags = [r["perf/policy_lag"] for r in rows if "perf/policy_lag" in r]
    assert len(lags) == STEPS // (ENVS * 32) and lags[0] == 0 and set(lags[1:]) == {1.0}, lags
    # Every rank collecting and learning (critic_device.yaml): each runs a collector over its half of the
    # envs and publishes the exchanged weights to it; the same run, to the float rounding of other batch sizes.
    two = run(tmp_path, "critic_device_overlapped", config, *extra, *CRITIC_DEVICE, "--data.collection", "overlapped")
    assert [r["info"]["envs"] for r in two] == [ENVS // 2] * 2
    worst = check_roles(two, one, [["actor"], ["critic"]], atol=1e-5)
    print(f"max |one process - critic_device|, overlapped, per role: {worst}")


@pytest.mark.parametrize("failing,how", [(1, "exit"), (0, "exit"), (1, "hang")])
@pytest.mark.integration
def test_a_failed_rank_ends_the_others_with_a_clear_error(tmp_path, failing, how):
    """Two node processes; one exits or stops answering at its third iteration. The other ends within the
    strategy's timeout (plus start-up), with a message that says what happened and what to change."""
    timeout_s = 20
    args = fit_args(tmp_path, "fail", "configs/ppo/cartpole.yaml", "--config",
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


def test_the_placement_takes_the_roles_from_the_algorithm_and_imports_before_it():
    """The roles are the algorithm's; importing the placement first (before any algorithm) works."""
    code = ("import lit_rl.distributed.placement as placement, lit_rl.algos.roles as roles; "
            "assert placement.ROLES is roles.ROLES; from lit_rl.algos import PPG, PPO")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


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
