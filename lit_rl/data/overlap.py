"""Runs overlapped collection on one machine: collector processes step the envs while the learner updates.

``data.collection: overlapped`` has the :class:`~lit_rl.data.RolloutDataModule` start ``data.num_collectors``
collector processes, each with its share of the run's envs. Three things cross between them, all in shared
memory:

- **Weights** (:class:`WeightRing`): after ``v`` updates the learner publishes version ``v`` (the networks'
  weights, and the normalization statistics of the rollouts it has consumed) into slot ``v % (lag + 1)`` of
  a ring. The collector of rollout ``j`` waits for version ``j - lag`` and acts with exactly that version,
  so a run is as reproducible as a synchronous one, and at ``policy_lag: 0`` it is the synchronous run.
- **Rollouts** (:class:`RolloutSlots`): each collector writes a rollout into one of ``lag + 1`` buffers it
  allocated in shared memory once, and sends the learner the buffer's index with the few per-round and
  per-episode values. The learner copies the rollout out and hands the buffer back.
- **Normalization moments**: a collector never updates its statistics itself. It sends the moments of the
  rollout's raw observations and returns; the learner merges them into the run's statistics (their owner,
  :class:`~lit_rl.data.normalization.Normalization`, which checkpoints hold) and publishes them with the next
  weights.

::

    learner (datamodule + module)                    collector c (one process, envs c*n .. c*n+n-1)
    ---------------------------------                ----------------------------------------------
    publish(v): weights, statistics --> ring[v % R]  wait for version j - lag; load it
    take(j) <-- rollout j in buffer b, moments ---   collect rollout j into buffer b
    copy out, buffer b back ----------------------->  (reuses b for a later rollout)
    merge moments; update on rollout j

A collector that fails sends its traceback, and the learner raises it; one that dies or sends nothing for
``data.collector_timeout`` seconds (once its envs are built; it may take :data:`STARTUP` seconds to start)
ends the run with one line naming it. Collectors die with the learner,
even when it is killed with SIGKILL (Linux's parent-death signal, and a check of the parent in every wait),
and ignore Ctrl-C, which the learner handles: it stops them.
"""

import atexit
import copy
import ctypes
import os
import queue
import signal
import time
import traceback
from dataclasses import dataclass, fields
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import Tensor

from lit_rl.data.collector import Collector
from lit_rl.data.normalization import Normalization
from lit_rl.data.rollout import ENV_DIM, TIME, Rollout, Schedule, join
from lit_rl.envs.make import EnvSpec, make_envs
from lit_rl.errors import CollectorError, ConfigError
from lit_rl.nets import ActorCritic, History

POLL = 0.2  # seconds between checks of the other side while waiting
STARTUP = 300.0  # seconds a collector may take to start (spawn, imports, building its envs), at least


def check_overlap_keys(collection: str, policy_lag: Optional[int], num_collectors: Optional[int],
                       collector_timeout: Optional[float], num_envs: int) -> tuple[int, int, float]:
    """Checks ``data.collection`` and the keys of overlapped collection; gives ``(policy_lag, num_collectors,
    collector_timeout)`` with their defaults (1, 1, 300 s)."""
    overlapped = {"policy_lag": policy_lag, "num_collectors": num_collectors, "collector_timeout": collector_timeout}
    if collection == "sync":
        given = [key for key, value in overlapped.items() if value is not None]
        if given:
            raise ConfigError(f"data.{given[0]}: applies to data.collection=overlapped only, and this run's "
                              "collection is sync; set data.collection=overlapped, or remove "
                              f"{', '.join('data.' + k for k in given)}.")
    elif collection != "overlapped":
        raise ConfigError(f"data.collection: {collection!r} is not one of 'sync', 'overlapped'.")
    for key, value in overlapped.items():
        if value is not None and (value < 0 if key == "policy_lag" else value <= 0):
            raise ConfigError(f"data.{key}: must be {'>= 0' if key == 'policy_lag' else 'positive'}, got {value}.")
    collectors = 1 if num_collectors is None else int(num_collectors)
    if num_envs % collectors:
        raise ConfigError(f"data.num_collectors: data.num_envs={num_envs} envs cannot be split evenly over "
                          f"{collectors} collector processes; use a divisor of {num_envs}.")
    lag = 1 if policy_lag is None else int(policy_lag)
    timeout = 300.0 if collector_timeout is None else float(collector_timeout)
    return lag, collectors, timeout


class AgentPolicy:
    """Acts, in a collector process, with an :class:`~lit_rl.nets.ActorCritic` on the CPU (the collector's
    ``Policy``)."""

    device = torch.device("cpu")

    def __init__(self, agent: ActorCritic) -> None:
        self.agent = agent

    def act(self, obs: Tensor, deterministic: bool = False, noise: Optional[Tensor] = None,
            history: Optional[History] = None) -> tuple[Tensor, Tensor, Tensor]:
        return self.agent.act(obs, deterministic, noise, history)

    def value(self, obs: Tensor, history: Optional[History] = None) -> Tensor:
        return self.agent.act_value(obs, history)

    def initial_state(self, batch: int) -> Optional[Tensor]:
        return self.agent.initial_state(batch) if self.agent.recurrent else None


class WeightRing:
    """Holds ``lag + 1`` versions of the networks' weights and the normalization statistics in shared memory.

    The learner writes version ``v`` into slot ``v % size`` (then announces it to each collector through a
    queue of its own: no lock is shared with a collector, which could die holding it); a collector reads the
    version it needs. The collector of rollout ``j`` needs version ``j - lag`` while the learner can at most
    be writing version ``j`` (it needs rollout ``j`` for the next), so with ``lag + 1`` slots no slot is read
    while it is written.
    """

    def __init__(self, agent: ActorCritic, normalization: Normalization, lag: int) -> None:
        self.size = lag + 1
        self.slots = [{"weights": {k: v.detach().clone().cpu().share_memory_() for k, v in agent.state_dict().items()},
                       "stats": {name: {k: v.share_memory_() for k, v in m.items()}
                                 for name, m in normalization.moments().items()}}
                      for _ in range(self.size)]

    def write(self, version: int, agent: ActorCritic, normalization: Normalization) -> None:
        slot = self.slots[version % self.size]
        with torch.no_grad():
            for key, value in agent.state_dict().items():
                slot["weights"][key].copy_(value)
        for name, m in normalization.moments().items():
            for key, value in m.items():
                slot["stats"][name][key].copy_(value)

    def load(self, version: int, agent: ActorCritic, normalization: Normalization) -> None:
        slot = self.slots[version % self.size]
        with torch.no_grad():
            agent.load_state_dict(slot["weights"])
        normalization.set_moments(slot["stats"])


class RolloutSlots:
    """Holds a collector's rollout buffers in shared memory, allocated from its first rollout: every time-major
    and env-major field the :class:`~lit_rl.data.Rollout` declares (time-major ones hold ``num_steps`` rows; a
    shorter last rollout uses the first rows). Per-episode and per-round values travel in the message."""

    def __init__(self, first: Rollout, count: int) -> None:
        self.buffers = [{f.name: getattr(first, f.name).clone().share_memory_() for f in fields(first)
                         if f.metadata["layout"] in ENV_DIM and getattr(first, f.name) is not None}
                        for _ in range(count)]

    def write(self, index: int, rollout: Rollout) -> dict[str, Any]:
        """Copies ``rollout``'s tensors into buffer ``index``; returns the rest of it (the message)."""
        rest: dict[str, Any] = {}
        for f in fields(rollout):
            value = getattr(rollout, f.name)
            if f.name in self.buffers[index]:
                target = self.buffers[index][f.name]
                (target[: value.shape[0]] if f.metadata["layout"] == TIME else target).copy_(value)
            else:  # small: by value (a tensor would travel as one more shared-memory file)
                rest[f.name] = value.numpy() if isinstance(value, Tensor) else value
        return {"slot": index, "steps": rollout.num_steps, "fields": rest}

    @staticmethod
    def read(cls: type[Rollout], buffers: dict[str, Tensor], message: dict[str, Any]) -> Rollout:
        """Rebuilds the rollout of a message, its tensors copied out of the buffers (which may then be reused)."""
        steps = message["steps"]
        values = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in message["fields"].items()}
        for f in fields(cls):
            if f.name in buffers:
                buffer = buffers[f.name]
                values[f.name] = (buffer[:steps] if f.metadata["layout"] == TIME else buffer).clone()
        return cls(**values)


@dataclass
class CollectorSpec:
    """Holds what a collector process needs to start (pickled once, at spawn)."""

    index: int
    env: EnvSpec  # what its envs are
    num_envs: int  # this collector's envs
    env_offset: int  # the run's index of its first env
    reset_seed: int
    noise_seed: int
    schedule: Schedule
    lag: int
    first_version: int  # the version published when the collectors start (the resumed iteration)


def _die_with_parent() -> None:
    """Asks Linux to SIGKILL this process when the process that started it dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent check in every wait remains


def collector_main(spec: CollectorSpec, agent: ActorCritic, ring: WeightRing, versions: Any, outbox: Any, free: Any,
                   stop: Any, parent: int) -> None:
    """Runs a collector process: collects the schedule's rollouts, each with the version of the weights it needs."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the learner, which stops the collectors
    # SLURM's warning before a time limit (--signal=USR1@90) reaches every process of the job step; the learner
    # saves and requeues, and would find its collectors killed by the signal's default action.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    torch.set_num_threads(1)
    try:
        def keep_waiting() -> None:
            if stop.value or os.getppid() != parent:
                raise SystemExit(0)

        # Its envs record their moments into statistics of its own, which take the run's at every version.
        normalization = Normalization(spec.env.normalized)
        envs = make_envs(spec.env, spec.num_envs, training=True, statistics=normalization.statistics)
        collector = Collector(envs, spec.env_offset, spec.noise_seed)
        policy = AgentPolicy(agent)
        # The first observations are normalized when the envs reset: with the run's statistics (a resumed
        # run's), published with the first version before the collectors start.
        ring.load(spec.first_version, agent, normalization)
        collector.reset(spec.reset_seed)
        outbox.put(("ready", spec.index, None))
        slots: Optional[RolloutSlots] = None
        published = -1  # the newest version announced
        for iteration, steps, env_steps in spec.schedule:
            version = max(spec.first_version, iteration - spec.lag)
            start = time.perf_counter()
            while published < version:
                try:
                    published = max(published, versions.get(timeout=POLL))
                except queue.Empty:
                    keep_waiting()
            waited = time.perf_counter() - start
            ring.load(version, agent, normalization)
            rollout = collector.collect(policy, steps, env_steps=env_steps, iteration=iteration)
            rollout.policy_lag = iteration - version
            moments = normalization.take_pending()
            if slots is None:
                slots = RolloutSlots(rollout, spec.lag + 1)
                # The learner hands the buffers out once it holds them: shared tensors travel as file descriptors
                # that this process must stay alive to pass.
                outbox.put(("buffers", spec.index, slots.buffers))
            start = time.perf_counter()
            while True:
                try:
                    index = free.get(timeout=POLL)
                    break
                except queue.Empty:
                    keep_waiting()
            rollout.collector_wait = waited + time.perf_counter() - start
            outbox.put(("rollout", spec.index, {**slots.write(index, rollout), "moments": moments}))
        while True:  # the schedule is done; the learner stops the collectors when it is
            time.sleep(POLL)
            keep_waiting()
    except SystemExit:
        pass
    except BaseException:  # noqa: BLE001 - every failure goes to the learner, which raises it
        outbox.put(("error", spec.index, traceback.format_exc()))
        raise SystemExit(1)


class OverlappedCollection:
    """Runs the learner's side: starts the collectors, takes their rollouts in order, publishes weights, stops them."""

    def __init__(self, specs: list[CollectorSpec], agent: ActorCritic, normalization: Normalization,
                 lag: int, timeout: float) -> None:
        ctx = mp.get_context("spawn")
        self.lag, self.timeout = lag, timeout
        self.ring = WeightRing(agent, normalization, lag)
        self.versions = [ctx.Queue() for _ in specs]
        self.outbox = ctx.Queue()
        self.free = [ctx.Queue() for _ in specs]
        self.stop = ctx.RawValue("b", 0)  # set by the learner only; no lock a dying collector could hold
        self.buffers: dict[int, list[dict[str, Tensor]]] = {}
        self.waiting: dict[int, list[dict[str, Any]]] = {spec.index: [] for spec in specs}
        self.ready: set[int] = set()  # the collectors whose envs are built (the timeout applies to them)
        self.heard = {spec.index: 0.0 for spec in specs}  # when each last sent something
        self.started = time.perf_counter()
        # Each collector acts with a copy of its own: spawn passes a module's tensors as shared memory, so one
        # copy would be one set of weights for all, each collector's load changing another's mid-rollout. Not
        # daemonic, so a collector may start the processes of an async vector env; atexit stops them.
        self.processes = [ctx.Process(target=collector_main, name=f"lit-rl-collector-{spec.index}",
                                      args=(spec, copy.deepcopy(agent).cpu(), self.ring, self.versions[spec.index], self.outbox,
                                            self.free[spec.index], self.stop, os.getpid()))
                          for spec in specs]
        self.publish(specs[0].first_version, agent, normalization)
        atexit.register(self.close)
        for process in self.processes:
            process.start()

    def publish(self, version: int, agent: ActorCritic, normalization: Normalization) -> None:
        """Makes ``version`` (the weights after that many updates, and the statistics) the one collectors act with."""
        self.ring.write(version, agent, normalization)
        for announce in self.versions:
            announce.put(version)

    def rollouts(self, schedule: Schedule, agent: ActorCritic,
                 normalization: Normalization) -> Iterator[tuple[Rollout, dict[str, list[dict[str, Any]]]]]:
        """Yields the schedule's rollouts in order, each with its collectors' moments (:meth:`take`). Before taking
        a rollout after the first, publishes the weights the module has updated to meanwhile, with the statistics
        it has folded the moments of the rollouts taken so far into."""
        for iteration, _, _ in schedule:
            if iteration > schedule.iteration:
                self.publish(iteration, agent, normalization)
            rollout, moments = self.take()
            assert rollout.iteration == iteration
            yield rollout, moments

    def take(self, cls: type[Rollout] = Rollout) -> tuple[Rollout, dict[str, list[dict[str, Any]]]]:
        """Takes the next rollout of every collector, joined (collector 0's envs first), with the seconds waited
        for it as its ``learner_wait``; and each collector's normalization moments (a list per statistic)."""
        start = time.perf_counter()
        for index in self.waiting:
            while not self.waiting[index]:
                self._receive(start)
        parts: dict[str, list[Any]] = {f.name: [] for f in fields(cls)}
        moments: dict[str, list[dict[str, Any]]] = {}
        for index, pending in self.waiting.items():
            message = pending.pop(0)
            rollout = RolloutSlots.read(cls, self.buffers[index][message["slot"]], message)
            self.free[index].put(message["slot"])
            for f in fields(cls):
                parts[f.name].append(getattr(rollout, f.name))
            for name, m in message["moments"].items():
                moments.setdefault(name, []).append(m)
        rollout = join(cls, parts) if len(self.waiting) > 1 else cls(**{k: v[0] for k, v in parts.items()})
        rollout.learner_wait = time.perf_counter() - start
        return rollout, moments

    def _receive(self, since: float) -> None:
        """Takes one message from the collectors, or raises when one died or is late: it sent nothing for
        ``timeout`` seconds since the learner began to wait (or since it started: once its envs were built)."""
        try:
            kind, index, payload = self.outbox.get(timeout=POLL)
        except OSError:  # a message whose shared memory its dead sender can no longer pass
            time.sleep(1)
            self._check_alive()
            raise
        except queue.Empty:
            now = time.perf_counter()
            self._check_alive()
            late = [i for i, pending in self.waiting.items() if not pending and (
                now - max(since, self.heard[i]) > self.timeout if i in self.ready
                else now - self.started > max(self.timeout, STARTUP))]
            if late:
                raise CollectorError(
                    f"collectors {late} sent no rollout for {self.timeout:.0f} s (data.collector_timeout); the run "
                    "stops. Raise data.collector_timeout if an env's steps are that slow.") from None
            return
        self.heard[index] = time.perf_counter()
        if kind == "error":
            raise CollectorError(f"collector {index} failed:\n{payload}")
        if kind == "ready":
            self.ready.add(index)
        elif kind == "buffers":
            self.buffers[index] = payload
            for slot in range(len(payload)):
                self.free[index].put(slot)
        else:
            self.waiting[index].append(payload)

    def _check_alive(self) -> None:
        for i, process in enumerate(self.processes):
            if not process.is_alive():
                process.join(1)
                raise CollectorError(f"collector {i} (pid {process.pid}) died with exit code {process.exitcode}; the "
                                     "run stops. See its output above.") from None

    def close(self) -> None:
        """Stops the collectors (at the end, or on an error or Ctrl-C), dropping any rollout in flight. Safe to
        call again."""
        if not self.processes:
            return
        self.stop.value = 1
        for q in (*self.versions, *self.free):
            q.cancel_join_thread()  # a dead collector never reads what is left in its queues
        deadline = time.monotonic() + 5
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1)
        self.processes = []

