"""Keeps checkpoint files whole or absent: an atomic writer for Lightning, and a reader that tells which files
torch.load cannot read (a save cut short by a killed job) and which is the newest one it can."""

import os
import secrets
import zipfile
from typing import Any, Iterable, Optional

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints with ``torch.save`` as Lightning's writer does, but atomically on the checkpoint's own
    filesystem.

    The checkpoint is written to a hidden temporary file beside its destination, flushed to disk (``fsync``),
    and renamed over the destination (``os.replace``); then the folder's entry is flushed too. Whenever the
    job is killed, the destination holds the previous checkpoint or the new one, whole. Lightning's own
    writer stages the file in the system temporary folder: when that is another filesystem than the
    checkpoints' (a node's local ``/tmp``, a shared checkpoint folder), the final move is a copy into the
    destination, and a job killed during it leaves a truncated file. A failed write removes its temporary
    file; one killed mid-write leaves a ``.lit-rl-partial-*.tmp`` file, which nothing reads. Remote paths
    (``s3://`` and the like) keep Lightning's writer. :class:`lit_rl.run.cli.LitRLCLI` installs this plugin.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        fs, local = url_to_fs(str(path))
        if storage_options is not None or not isinstance(fs, LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = os.path.abspath(local)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        # Not named after the destination: Lightning counts any file with "ckpt_" in its name in the folder of
        # its SLURM checkpoints (hpc_ckpt_N.ckpt) as one of them.
        partial = os.path.join(folder, f".lit-rl-partial-{secrets.token_hex(8)}.tmp")
        try:
            # 0o666 less the umask, as a plain open() would give the checkpoint.
            with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        except BaseException:
            if os.path.lexists(partial):
                os.remove(partial)
            raise
        _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Makes a rename in ``folder`` durable (where the filesystem supports syncing a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def unreadable(path: _PATH) -> Optional[str]:
    """Tells why ``torch.load`` cannot read the checkpoint at ``path`` (as LightningCLI loads it first: on the CPU,
    ``weights_only``), or returns None if it can. Tensors of a zip-format checkpoint (every ``torch.save`` since
    torch 1.6) are memory-mapped, not read, so this costs about the unpickling of its small index."""
    try:
        if os.path.getsize(path) == 0:
            return "the file is empty"
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001 - any failure to load is the answer
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return first.split(". ")[0]  # torch's first sentence, without its advice
    return None


def newest_readable(paths: Iterable[str]) -> tuple[Optional[str], list[tuple[str, str]]]:
    """Finds the newest (by modification time) of ``paths`` that torch.load can read, and the newer ones it
    cannot, each with the reason. At equal times a ``last*.ckpt`` file comes first."""


    def when(path: str) -> float:
        try:
            return os.path.getmtime(path)
        except OSError:  # a link to a missing file: placed by the link's own time
            return os.lstat(path).st_mtime

    skipped: list[tuple[str, str]] = []
    ordered = sorted(set(paths), key=lambda p: (when(p), os.path.basename(p).startswith("last"), p), reverse=True)
    for path in ordered:
        reason = unreadable(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped
