"""Checkpoints are whole or absent: a save killed midway leaves the previous file whole, `--ckpt_path last`
skips a file that torch.load cannot read, and an explicit unreadable path gets one clear line."""

import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from lit_rl.run.checkpoints import AtomicCheckpointIO
from lit_rl.run.cli import LitRLCLI
from lit_rl.distributed import ActorCriticPlacement
from tests.helpers import REPO, QUIET, lit_rl_in_process, read_metrics

CARTPOLE = str(REPO / "configs/ppo/cartpole.yaml")  # 8 envs x 32 steps: 256 env steps per iteration
# Every checkpoint kept: env_steps=512.ckpt, ..., env_steps=2048.ckpt and last.ckpt.
KEEP_ALL = ["--checkpoint.every_n_env_steps", "512", "--checkpoint.save_top_k", "-1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run of 2048 env steps with a checkpoint every 512; each test works on its own copy."""
    work = tmp_path_factory.mktemp("run")
    lit_rl_in_process("fit", "--config", CARTPOLE, "--data.total_timesteps", "2048", *KEEP_ALL, *QUIET, cwd=work)
    return work


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path, dirs_exist_ok=True)  # copy2: modification times kept
    return tmp_path, tmp_path / "lightning_logs/version_0/checkpoints"


def cut_short(path):
    """What a job killed while writing leaves: the first half of the file."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_last_skips_unreadable_checkpoints_with_a_warning(finished_run, tmp_path, cli):
    work, ckpts = copy_of(finished_run, tmp_path)
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == [f"env_steps={n}.ckpt" for n in (1024, 1536, 2048, 512)] + ["last.ckpt"]
    cut_short(ckpts / "env_steps=2048.ckpt")
    cut_short(ckpts / "last.ckpt")  # now the newest file, and unreadable
    proc = cli("fit", "--config", CARTPOLE, "--data.total_timesteps", "2560", "--ckpt_path", "last", *QUIET, cwd=work)
    warning = next(line for line in proc.stderr.splitlines() if "ckpt_path=last: skipped" in line)
    assert "last.ckpt" in warning and "env_steps=2048.ckpt" in warning and "central directory" in warning
    assert warning.rstrip().endswith(f"Resuming from {ckpts / 'env_steps=1536.ckpt'}.")
    rows = read_metrics(work / "lightning_logs/version_1/metrics.csv")
    steps = [r["env_steps"] for r in rows if "train/policy_loss" in r]
    assert steps == list(range(1536 + 256, 2560 + 1, 256))  # resumed from the newest readable one


def test_an_explicit_unreadable_checkpoint_gets_one_clear_line(finished_run, tmp_path, cli):
    work, ckpts = copy_of(finished_run, tmp_path)
    cut_short(ckpts / "last.ckpt")
    proc = cli("fit", "--config", CARTPOLE, "--ckpt_path", str(ckpts / "last.ckpt"), *QUIET, cwd=work, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"lit-rl: error: ckpt_path: cannot read the checkpoint {ckpts / 'last.ckpt'} ("), line
    assert "cut short" in line and "--ckpt_path last" in line
    assert not (work / "lightning_logs/version_1").exists(), "no run may start"


def test_the_cli_saves_through_the_atomic_writer_with_every_strategy(tmp_path, monkeypatch):
    """Every file Lightning saves (ModelCheckpoint's, last.ckpt, SLURM's hpc_ckpt_N.ckpt) goes through
    trainer.strategy.checkpoint_io."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit-rl"])
    for extra, strategy in (([], SingleDeviceStrategy),
                            (["--config", str(REPO / "configs/placement/single_device.yaml")], ActorCriticPlacement),
                            (["--trainer.strategy", "ddp"], DDPStrategy)):
        cli = LitRLCLI(args=["--config", CARTPOLE, *extra, *QUIET], run=False)
        assert type(cli.trainer.strategy) is strategy
        assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO), strategy


WRITER = """
import sys, torch
from lit_rl.run.checkpoints import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"version": 1, "w": torch.zeros(16)}, path)
print("saved", flush=True)
sys.stdin.readline()
io.save_checkpoint({"version": 2, "w": torch.ones(2**23)}, path)  # 32 MiB
print("saved", flush=True)
"""


def other_filesystem(path):
    """A folder on another filesystem than ``path``, for the system temporary folder (as a node's local
    /tmp is another filesystem than a shared checkpoint folder); None if there is none here."""
    for candidate in ("/dev/shm", "/run", "/var/tmp"):
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK) and \
                os.stat(candidate).st_dev != os.stat(path).st_dev:
            return candidate
    return None


def looks(folder, target):
    """What a change in the folder shows first: a new file in it, or last.ckpt replaced or written to."""
    stat = os.stat(target)
    return sorted(os.listdir(folder)), stat.st_ino, stat.st_size, stat.st_mtime_ns


@pytest.mark.integration  # a writer process killed with SIGKILL
def test_a_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    """SIGKILL at the first sign of the second save in the folder. Lightning's own writer stages the file in
    the system temporary folder; from another filesystem its final move is a copy into last.ckpt, which the
    kill cuts short."""
    folder, target = tmp_path / "ckpt", tmp_path / "ckpt" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    scratch = other_filesystem(tmp_path)
    if scratch:
        env["TMPDIR"] = scratch
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saved"
        before = looks(folder, target)
        proc.stdin.write("\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and looks(folder, target) == before:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.stdout.read().strip() == "", "the kill must land during the second save"
    finally:
        proc.kill()
    state = torch.load(target, weights_only=True)  # whole: the first checkpoint (or the second)
    assert state["version"] == 1 or (state["version"] == 2 and state["w"].numel() == 2**23)
    # A killed save leaves only its hidden partial file, which no checkpoint search takes for a checkpoint.
    assert all(name.startswith(".lit-rl-partial-") and name.endswith(".tmp")
               for name in os.listdir(folder) if name != "last.ckpt")


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path):
    """The filesystem refuses the write midway through the tensors (a file size limit: EFBIG, as a full disk
    gives ENOSPC): the previous file stays, the partial one is removed, and the error reaches the caller."""
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"version": 1}, path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, hard))  # files stop growing at 1 MiB
    try:
        with pytest.raises((RuntimeError, OSError)):  # torch's zip writer reports the short write as a RuntimeError
            io.save_checkpoint({"version": 2, "w": torch.ones(2**21)}, path)  # 8 MiB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert torch.load(path, weights_only=True) == {"version": 1}
