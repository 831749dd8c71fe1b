"""The `lit-rl` command: every config runs, bad input gets one clear message, resume, determinism, NaN.

Runs of one process go through ``cli`` (lit_rl.run.cli.main in the test's process, tests/conftest.py); those that
start processes of their own (placement presets on two ranks, wandb's service, video encoding) run the
console script and carry the integration marker."""

import importlib
import importlib.util
import re

import pytest
import torch

from tests.helpers import REPO, QUIET, lit_rl, read_metrics, run_main

# The two-node presets need a process per node; tests/test_placement.py launches them that way. Sweep files
# are wandb's format, not lit-rl configs (tests/test_sweep.py runs them).
MULTI_NODE = {"configs/placement/two_nodes.yaml", "configs/placement/rollout_node.yaml"}
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")
                 if str(p.relative_to(REPO)) not in MULTI_NODE and "configs/sweeps/" not in str(p.relative_to(REPO)))


def config_args(config: str) -> list[str]:
    """An experiment config alone; a logger or placement preset composed after the CartPole experiment."""
    if config.startswith(("configs/loggers/", "configs/placement/")):
        return ["--config", str(REPO / "configs/ppo/cartpole.yaml"), "--config", str(REPO / config)]
    return ["--config", str(REPO / config)]


# Configs whose envs come with an extra (pip install 'lit-rl[procgen]' / '[atari]' / '[box2d]'): skipped, with the
# reason in pytest's summary, where the extra is not installed; `.ci/run` installs them.
EXTRAS = {"env_id: procgen:": ("procgen", "procgen"), "env_id: atari:": ("ale_py", "atari"),
          "env_id: LunarLander": ("Box2D", "box2d"), "env_id: minatar:": ("minatar", "minatar"),
          "env_id: HalfCheetah": ("mujoco", "mujoco")}
# Configs whose run starts processes: two ranks, or wandb's service. The image configs' CNNs take several
# seconds each on a CPU.
PROCESSES = {"configs/placement/critic_device.yaml", "configs/placement/data_parallel.yaml", "configs/loggers/wandb.yaml"}
IMAGES = {"configs/ppo/procgen.yaml", "configs/ppg/procgen.yaml", "configs/ppo/atari.yaml"}


def needs_extra(config: str) -> None:
    """Skips the test, naming the extra, where the config's env needs one that is not installed."""
    for marker, (module, extra) in EXTRAS.items():
        if marker in (REPO / config).read_text() and importlib.util.find_spec(module) is None:
            pytest.skip(f"{config} needs the {extra} extra (pip install -e '.[{extra}]')")


@pytest.mark.parametrize("config", [pytest.param(c, marks=pytest.mark.integration) if c in PROCESSES | IMAGES else c
                                    for c in CONFIGS])
def test_every_config_fits_a_tiny_budget(config, tmp_path, cli):
    needs_extra(config)
    run = lit_rl if config in PROCESSES else cli
    # A config that compiles its update fits eagerly here: compiling takes 20-40 s (tests/test_compile.py compiles;
    # the learning tests train those configs as shipped).
    eager = ["--model.init_args.compile", "false"] if "compile: true" in (REPO / config).read_text() else []
    proc = run("fit", *config_args(config), "--data.num_envs", "2", "--data.num_steps", "64",
               "--data.total_timesteps", "256", "--model.init_args.num_minibatches", "2",
               "--data.eval_episodes", "1", "--trainer.limit_val_batches", "0", *eager, *QUIET, cwd=tmp_path)
    assert list(tmp_path.rglob("last.ckpt")), proc.stderr[-2000:]
    if "wandb" in config:
        assert list(tmp_path.glob("wandb/offline-run-*")), "wandb must run offline when not logged in"
    elif "tensorboard" in config:
        assert list(tmp_path.rglob("events.out.tfevents.*"))
    else:
        rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
        assert max(r.get("env_steps", 0) for r in rows) == 256, proc.stdout[-2000:]


BAD_INPUT = [
    (["--data.env_id", "NoSuchEnv-v0"], "data.env_id"),
    (["--data.env_id", "tests.envs:TupleAction-v0"], "action space"),
    (["--model.init_args.num_minibatches", "7"], "model.num_minibatches"),
    (["--model.init_args.actor_optimizer.init_args.lr", "0"], "model.actor_optimizer"),
    (["--model.init_args.clip_coef", "-0.1"], "model.clip_coef"),
    (["--model.init_args.update_epochs", "0"], "model.update_epochs"),
    (["--model.init_args.gamma", "1.5"], "model.gamma"),
    (["--model.init_args.gae_lambda", "0"], "model.gae_lambda"),
    (["--data.total_timesteps", "1001"], "data.total_timesteps"),
    (["--ckpt_path", "missing.ckpt"], "ckpt_path"),
    (["--ckpt_path", "last"], "ckpt_path=last"),
    (["--data.policy_lag", "2"], "data.policy_lag"),
    (["--data.collection", "overlapped", "--data.num_collectors", "3"], "data.num_collectors"),
]


@pytest.mark.parametrize("extra,key", BAD_INPUT, ids=[k for _, k in BAD_INPUT])
def test_bad_input_gets_one_clear_message(extra, key, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    code, err = run_main(["fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), *QUIET, *extra], capsys)
    assert code == 2
    assert key in err and "Traceback" not in err
    assert not list(tmp_path.rglob("metrics.csv")), "no run may start on bad input"


def test_a_batch_that_does_not_split_leaves_no_run_behind(tmp_path, capsys, monkeypatch):
    """The module's data checks run before the trainer starts: no run folder, config copy or wandb run."""
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), "--config",
                          str(REPO / "configs/loggers/wandb.yaml"), *QUIET, "--model.init_args.num_minibatches", "7"], capsys)
    assert code == 2 and "model.num_minibatches" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_config_file(tmp_path, capsys):
    code, err = run_main(["fit", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "nope.yaml" in err and "Traceback" not in err


def test_incompatible_checkpoint(tmp_path, cli):
    cfg = str(REPO / "configs/ppo/cartpole.yaml")
    cli("fit", "--config", cfg, "--data.total_timesteps", "256", *QUIET, cwd=tmp_path)
    ckpt = next(tmp_path.rglob("last.ckpt"))
    proc = cli("fit", "--config", str(REPO / "configs/ppo/pendulum.yaml"), "--data.normalize_reward", "false",
                  "--ckpt_path", str(ckpt), *QUIET, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "ckpt_path" in proc.stderr and "do not match" in proc.stderr and "Traceback" not in proc.stderr


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, cli):
    proc = cli("fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), "--data.env_id", "tests.envs:NanReward-v0",
                  "--data.env_kwargs", "{nan_after: 100}", "--data.num_envs", "4", "--data.num_steps", "32",
                  "--data.total_timesteps", "4096", "--checkpoint.every_n_env_steps", "128", *QUIET,
                  cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "loss is nan" in proc.stderr and "Traceback" not in proc.stderr
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert ckpts
    for ckpt in ckpts:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert state["env_steps"] < 4096
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    assert rows and max(r["env_steps"] for r in rows) >= 128


@pytest.mark.integration  # two interpreters: nothing may depend on the process (hash seeds, memory addresses)
def test_same_seed_same_metrics(tmp_path):
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        lit_rl("fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), "--data.total_timesteps", "2048", *QUIET,
               cwd=tmp_path / name)
        rows = read_metrics(next((tmp_path / name).rglob("metrics.csv")))
        runs.append([{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows])
    assert len(runs[0]) >= 8 and runs[0] == runs[1]


def test_resume_continues_from_the_checkpoint(tmp_path, cli):
    cfg = str(REPO / "configs/ppo/cartpole.yaml")
    common = [*QUIET, "--data.normalize_observation", "true", "--data.eval_episodes", "2"]
    cli("fit", "--config", cfg, "--data.total_timesteps", "20480", *common, cwd=tmp_path)
    saved = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert saved["env_steps"] == 20480 and saved["RolloutDataModule"]["env_steps"] == 20480

    resumed = cli("fit", "--config", cfg, "--data.total_timesteps", "25600", "--ckpt_path", "last", *common, cwd=tmp_path)
    # The summary's rate counts the steps of this fit, not the run's.
    assert "lit-rl fit: done after 25,600 env steps, resumed at 20,480; 5,120 in " in resumed.stdout, resumed.stdout
    first, second = sorted(tmp_path.rglob("metrics.csv"))
    before, after = read_metrics(first), read_metrics(second)
    steps_after = [r["env_steps"] for r in after if "env_steps" in r]
    assert steps_after[0] == 20480 + 256 and steps_after[-1] == 25600
    def returns(rows):
        return [r["train/episodic_return"] for r in rows if "train/episodic_return" in r]

    mean = lambda xs: sum(xs) / len(xs)
    # The resumed run acts with the checkpointed policy from its first rollout on: its first episodes are far
    # longer than an untrained policy's. (Not compared with the checkpoint's greedy return: training returns
    # over-weight short episodes, since the resumed run starts fresh episodes and counts those that end.)
    untrained, resumed = mean(returns(before)[:4]), mean(returns(after)[:4])
    assert resumed > 3 * untrained, (untrained, resumed)


@pytest.mark.integration  # moviepy encodes with an ffmpeg process
def test_evaluation_records_video(tmp_path):
    pytest.importorskip("moviepy", reason="recording video needs the video extra (pip install -e '.[video]')")
    proc = lit_rl("validate", "--config", str(REPO / "configs/ppo/cartpole.yaml"), "--data.record_video", "true",
                  "--data.eval_episodes", "1", *QUIET, cwd=tmp_path)
    assert "val: episodic return" in proc.stdout
    videos = list(tmp_path.rglob("*.mp4"))
    assert videos and videos[0].stat().st_size > 1000


def test_ppg_from_the_command_line_with_a_shared_trunk_and_pcgrad(tmp_path, cli):
    cli("fit", "--config", str(REPO / "configs/ppg/cartpole.yaml"), "--model.arch", "shared",
           "--model.gradient_surgery", "pcgrad", "--model.n_pi", "2", "--data.total_timesteps", "1024",
           "--data.eval_episodes", "1", *QUIET, cwd=tmp_path)
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    assert max(r.get("train/aux_phases", 0) for r in rows) == 2
    assert any("train/bc_kl" in r and "train/grad_conflict" in r for r in rows)
    hparams = next(tmp_path.rglob("hparams.yaml")).read_text()
    assert "arch: shared" in hparams and "gradient_surgery: pcgrad" in hparams


def test_ppg_store_that_cannot_fit_is_refused_before_training(tmp_path, cli):
    proc = cli("fit", "--config", str(REPO / "configs/ppg/cartpole.yaml"), "--model.n_pi", "1000000000", *QUIET,
                  cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "lit-rl: error: model.n_pi" in proc.stderr and "Lower model.n_pi" in proc.stderr
    assert not list(tmp_path.rglob("metrics.csv")) or "train/" not in next(tmp_path.rglob("metrics.csv")).read_text()


def test_fit_ends_with_one_summary_and_prints_each_progress_update_once(tmp_path, cli):
    # The progress bar on, writing to a pipe (not a terminal), as a SLURM job's log gets it.
    proc = cli("fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), "--data.total_timesteps", "2048",
               "--data.eval_episodes", "3", "--trainer.accelerator", "cpu", "--torch_threads", "1", cwd=tmp_path)
    updates = re.findall(r"Training: +\d+%\S* +\S* (\d+)/2048", proc.stdout.replace("\r", "\n") + proc.stderr.replace("\r", "\n"))
    assert updates and len(updates) == len(set(updates)), updates  # every env-step count shown once
    summary = proc.stdout[proc.stdout.index("lit-rl fit: done"):]
    assert summary.startswith("lit-rl fit: done after 2,048 env steps; 2,048 in ")
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    val = next(r for r in rows if "val/episodic_return_mean" in r)
    train = [r["train/episodic_return"] for r in rows if "train/episodic_return" in r][-1]
    assert f"training return  {train:.2f}" in summary
    assert (f"greedy eval      {val['val/episodic_return_mean']:.2f} +- {val['val/episodic_return_std']:.2f} "
            f"over 3 episodes") in summary
    where = dict(re.findall(r"^  (logs|config|checkpoints) +(\S+)", summary, re.M))
    assert (tmp_path / where["config"]).is_file() and (tmp_path / where["config"]).parent == tmp_path / where["logs"]
    assert (tmp_path / where["checkpoints"] / "last.ckpt").is_file()


@pytest.mark.parametrize("old, new", [("lit_rl.loggers", "lit_rl.run.loggers"), ("lit_rl.losses", "lit_rl.objectives"),
                                      ("lit_rl.wrappers", "lit_rl.envs.wrappers")])
def test_a_moved_module_is_refused_naming_its_new_path(old, new):
    with pytest.raises(ModuleNotFoundError, match=f"{old} is now {new}"):
        importlib.import_module(old)


def test_an_old_class_path_in_a_config_is_refused_naming_the_new_one(tmp_path, capsys):
    old = tmp_path / "old_logger.yaml"
    old.write_text("trainer:\n  logger:\n    class_path: lit_rl.loggers.WandbLogger\n")
    code, err = run_main(["fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), "--config", str(old), *QUIET], capsys)
    assert code == 2
    assert err.strip() == (f"lit-rl: error: {old}: lit_rl.loggers.WandbLogger: lit_rl.loggers is now lit_rl.run.loggers: "
                           "change the import, or the class_path in your config (lit_rl.loggers.<name> -> "
                           "lit_rl.run.loggers.<name>).")


def test_checkpointing_turned_off_trains_and_writes_no_checkpoint(tmp_path, cli):
    proc = cli("fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), "--data.total_timesteps", "512",
               "--trainer.enable_checkpointing", "false", *QUIET, cwd=tmp_path)
    assert "lit-rl fit: done after 512 env steps" in proc.stdout and "checkpoints" not in proc.stdout
    assert not list(tmp_path.rglob("*.ckpt")) and list(tmp_path.rglob("metrics.csv"))


def test_evaluating_a_checkpoint_trained_on_normalized_observations_needs_the_normalization(tmp_path, cli):
    cfg = str(REPO / "configs/ppo/cartpole.yaml")
    cli("fit", "--config", cfg, "--data.total_timesteps", "512", "--data.normalize_observation", "true",
        "--data.eval_episodes", "2", *QUIET, cwd=tmp_path)
    ckpt = str(next(tmp_path.rglob("last.ckpt")))
    for stage in ("validate", "test"):
        refused = cli(stage, "--config", cfg, "--ckpt_path", ckpt, "--data.eval_episodes", "2", *QUIET, cwd=tmp_path,
                      check=False)
        assert refused.returncode == 2 and "data.normalize_observation" in refused.stderr, refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr
    ok = cli("validate", "--config", cfg, "--ckpt_path", ckpt, "--data.normalize_observation", "true",
             "--data.eval_episodes", "2", *QUIET, cwd=tmp_path)
    assert "val: episodic return" in ok.stdout
