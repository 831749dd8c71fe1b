"""Reads a wandb run back from its own files: the ``run-<id>.wandb`` transaction log that an offline run
writes (and ``wandb sync`` uploads).

The log is leveldb's log format (wandb's ``datastore``): a 7-byte header, then 32 KiB blocks of
chunks, each ``crc32 (4) | length (2) | type (1) | data``, a record spanning chunks as FIRST, MIDDLE...,
LAST. Each record is a ``wandb.proto.wandb_internal_pb2.Record``, parsed with wandb's own protobuf.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER, BLOCK, CHUNK_HEADER = 7, 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    raw = Path(path).read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a wandb transaction log"
    out, pending, pos = [], b"", HEADER
    while pos + CHUNK_HEADER <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + CHUNK_HEADER])
        pos += CHUNK_HEADER
        data, pos = raw[pos:pos + length], pos + length
        if kind == FULL:
            pending, complete = b"", data
        elif kind == FIRST:
            pending, complete = data, None
        elif kind == MIDDLE:
            pending, complete = pending + data, None
        elif kind == LAST:
            pending, complete = b"", pending + data
        else:  # zero padding to the block's end
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if complete is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(complete)
            out.append(record)
    return out


@dataclass
class Run:
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[Any] = field(default_factory=list)  # define_metric records
    artifacts: list[Any] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(run_dir: Path) -> Run:
    """Config, history rows, summary, metric definitions and artifacts of the run in ``run_dir``."""
    log = next(Path(run_dir).glob("run-*.wandb"))
    run = Run()
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "metric":
            run.metrics.append(record.metric)
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
        elif kind == "files":
            run.files.extend(f.path for f in record.files.files)
    return run
