"""The Procgen and Atari configs end to end from the `lit-rl` command: PPG's auxiliary phase on frames, and each
config with the placement presets and with overlapped collection (slow). tests/test_cli.py runs every config as
shipped for a tiny budget; these shrink the batch so that several iterations and an auxiliary phase fit."""

import pytest

from tests.helpers import REPO, QUIET, lit_rl, read_metrics

SMALL = ["--data.num_envs", "4", "--data.num_steps", "32", "--data.total_timesteps", "384",
         "--model.init_args.num_minibatches", "2", "--data.eval_episodes", "1", "--trainer.limit_val_batches", "0"]
CONFIGS = {"configs/ppg/procgen.yaml": "procgen", "configs/ppo/procgen.yaml": "procgen",
           "configs/ppo/atari.yaml": "ale_py"}
# Procgen is vector-only (procgen steps its envs as one batch, seeded as one); the presets ask for per-env sync
# envs, so a Procgen run with a preset sets the vectorization back (tests/test_procgen.py covers the refusal).
VECTORIZATION = {"procgen": ["--data.vectorization_mode", "vector_entry_point"], "ale_py": []}


def run(config: str, tmp_path, *more: str) -> list[dict[str, float]]:
    extra = CONFIGS[config]
    pytest.importorskip(extra, reason=f"{config} needs its extra (pip install 'lit-rl[procgen,atari]')")
    args = ["--config", str(REPO / config), *more, *SMALL, *QUIET]
    if config.endswith("ppg/procgen.yaml"):
        args += ["--model.init_args.n_pi", "2"]
    lit_rl("fit", *args, cwd=tmp_path)
    return read_metrics(next(tmp_path.rglob("metrics.csv")))


@pytest.mark.integration
def test_ppg_procgen_runs_its_auxiliary_phase_on_frames(tmp_path):
    rows = run("configs/ppg/procgen.yaml", tmp_path)
    aux = [r for r in rows if "train/bc_kl" in r]
    assert [r["train/iteration"] for r in aux] == [1.0], "n_pi 2: one auxiliary phase after the second iteration"
    assert max(r["env_steps"] for r in rows if "env_steps" in r) == 384


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("layout", ["critic_device", "data_parallel", "overlapped"])
def test_image_configs_run_with_the_placement_presets_and_overlapped_collection(config, layout, tmp_path):
    if layout == "overlapped":
        more = ["--data.collection", "overlapped"]
    else:
        more = ["--config", str(REPO / f"configs/placement/{layout}.yaml"), *VECTORIZATION[CONFIGS[config]]]
    rows = run(config, tmp_path, *more)
    assert max(r["env_steps"] for r in rows if "env_steps" in r) == 384
    if layout == "overlapped":
        assert [r["perf/policy_lag"] for r in rows if "perf/policy_lag" in r][1:] == [1.0, 1.0]


@pytest.mark.integration
def test_procgen_under_a_preset_asking_for_sync_envs_is_refused_before_any_process_starts(tmp_path):
    pytest.importorskip("procgen", reason="needs the procgen extra")
    proc = lit_rl("fit", "--config", str(REPO / "configs/ppo/procgen.yaml"), "--config",
                  str(REPO / "configs/placement/critic_device.yaml"), *SMALL, *QUIET, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "data.vectorization_mode: 'procgen:starpilot' runs only as procgen's own batch" in proc.stderr
    assert "--data.vectorization_mode vector_entry_point" in proc.stderr
    assert not list(tmp_path.rglob("metrics.csv")) and "MEMBER" not in proc.stderr  # no distributed start
    proc = lit_rl("validate", "--config", str(REPO / "configs/ppo/procgen.yaml"), "--data.record_video", "true",
                  *QUIET, cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "data.record_video: 'procgen:starpilot'" in proc.stderr
