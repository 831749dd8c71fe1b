"""Runs the roles' optimizer steps as compiled functions (``model.compile``).

One optimizer step is one function of the minibatch: the role's loss, its gradients (``torch.func``, with respect
to the parameters the role's optimizer owns: the others are constants, as the eager step's toggle makes them),
the gradient-norm clip, and torch's own functional Adam/AdamW on the optimizer's parameter groups and state.
``torch.compile`` turns it into one graph: no Python between the forward pass and the parameter update, the
elementwise work fused. Where the actor and the critic share no parameters and both learn here, a minibatch step
of each runs in the same graph: one backward pass does the work of two, with the numbers of two (each role
draws its own minibatches, and neither loss reads the other's parameters).

What it changes, what it keeps:

- The same math as :class:`~lit_rl.algos.updater.RoleUpdater`'s eager step, to float rounding (Adam's
  single-tensor kernel instead of the fused one; the clip's norm in another order). Minibatch orders, the
  optimizer state in checkpoints, schedules (the learning rate and Adam's betas are inputs, read at each step;
  ``eps`` and ``weight_decay`` are compiled in) and ``target_kl`` are unchanged; a checkpoint resumes with
  compiling on or off.
- Each kind of step (the roles it steps, their losses) compiles once, for any number of rows in a minibatch
  (marked dynamic): the valid steps of a rollout vary in number (an episode's end is followed by a reset step that
  is no transition), as do the shorter last rollout, a last minibatch one row shorter and an auxiliary minibatch
  with padded steps; none compiles again.
- A non-finite loss stops training as :class:`~lit_rl.algos.updater.DeferredCheck` does: from the first
  non-finite loss of a run of steps on (a role's epochs, both roles' when they step together, PPG's auxiliary
  phase), the graph applies no update of any role, and the end of the run raises naming that loss. Where the
  roles step together, the actor's steps before the critic's first non-finite loss were applied (eager, the
  critic's epochs end, and raise, before the actor's start).
- Lightning's hooks around the backward pass and the optimizer step (``on_before_backward``,
  ``on_after_backward``, ``on_before_optimizer_step``) do not run, and ``param.grad`` stays empty; Lightning
  still counts each optimizer step.

Supported where each role this process trains is its group alone (no gradient sum between processes), without a
recurrent summarizer, gradient surgery or mixed precision, and with Adam or AdamW: :func:`check_compile_config`
and :func:`check_compile_placement` refuse the rest naming the setting. On a GPU it compiles in the default mode
(not CUDA graphs), and has not run there yet.
"""

from collections import defaultdict
from typing import Any, Callable, Optional, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim.adam import adam

from lit_rl.algos.roles import LossFn, Placement, RoleSpec, Share, Stats
from lit_rl.algos.updater import (DeferredCheck, RoleUpdater, append_step, count_optimizer_steps, share_of,
                                  shared_minibatches)
from lit_rl.errors import ConfigError

COMPILABLE_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)  # AdamW is Adam with decoupled weight decay


def check_compile_config(hp: Any, optimizers: dict[str, Any]) -> None:
    """Refuses ``model.compile`` with settings the compiled step cannot run, naming the setting to change;
    ``optimizers`` are the roles' optimizers as configured (their types matter)."""
    fix = "or set model.compile=false"
    if hp.recurrent is not None:
        raise ConfigError(f"model.compile: a recurrent policy's minibatches hold a varying number of valid steps, "
                          f"so each would compile anew; set model.compile=false for model.recurrent={hp.recurrent!r}.")
    if hp.gradient_surgery != "none":
        raise ConfigError(f"model.compile: gradient surgery ({hp.gradient_surgery!r}) runs a backward pass per loss "
                          f"term; set model.gradient_surgery=none, {fix}.")
    for role, optimizer in optimizers.items():
        if type(optimizer) not in COMPILABLE_OPTIMIZERS:
            raise ConfigError(f"model.compile: the compiled step runs torch's Adam/AdamW; model.{role}_optimizer is "
                              f"{type(optimizer).__name__}. Use torch.optim.Adam or torch.optim.AdamW, {fix}.")


def check_compile_placement(module: L.LightningModule, placement: Placement) -> None:
    """Refuses ``model.compile`` where a role is trained by several processes or under mixed precision."""
    fix = "or set model.compile=false"
    for role in placement.roles:
        if role in ("actor", "critic") and placement.group_size(role) > 1:
            raise ConfigError(f"model.compile: the {role} is trained by {placement.group_size(role)} processes, whose "
                              f"gradients are summed between the backward pass and the step; give each role one "
                              f"process (trainer.strategy), {fix}.")
    precision = str(getattr(module.trainer, "precision", "32-true"))
    if precision not in ("32-true", "32"):
        raise ConfigError(f"model.compile: trainer.precision={precision!r} is not supported; use 32-true, {fix}.")


class _Losses(nn.Module):
    """Holds the networks so that :func:`torch.func.functional_call` can run a loss with other parameters."""

    def __init__(self, agent: nn.Module) -> None:
        super().__init__()
        self.agent = agent

    def forward(self, loss_fn: LossFn, share: Share) -> tuple[Any, dict[str, Tensor]]:
        return loss_fn(share)


class CompiledSteps:
    """Runs optimizer steps of one or more roles of ``module`` (which owns ``agent``) as compiled graphs.

    Args:
        module: The algorithm, under manual optimization.
        updaters: The roles' updaters, by role (their optimizers, clips, step counts and shuffle streams).
        backend: ``torch.compile``'s backend (tests use ``aot_eager``: the same graphs, not turned into code).
    """

    def __init__(self, module: L.LightningModule, updaters: dict[str, RoleUpdater], backend: Any = "inductor") -> None:
        self.module = module
        self.updaters = updaters
        agent = module.agent
        self.losses = _Losses(agent)
        self.names = {id(p): f"agent.{name}" for name, p in agent.named_parameters()}
        # The default mode on a GPU too: CUDA graphs ("reduce-overhead") do not take a graph that updates the
        # optimizer's state in place, and would reuse the buffers of the losses a run keeps for its non-finite check.
        self.graph = torch.compile(self._steps, backend=backend)
        self.scalars: dict[tuple[str, int, str], Tensor] = {}  # (role, group, setting) -> its tensor, an input
        self._reached: dict[tuple[str, str], frozenset[str]] = {}  # (role, loss) -> the parameters it reaches

    # ------------------------------------------------------------------ runs of steps
    def epochs(self, batch: dict[str, Tensor], specs: dict[str, RoleSpec], roles: Sequence[str]) -> Stats:
        """Runs the updates of ``roles`` as ``specs`` declare them, as :meth:`RoleUpdater.epochs` runs each: the
        roles' minibatch ``k`` in one step while each has epochs left, each drawing from its own stream; a role
        with ``target_kl`` stops after an epoch whose mean approx KL exceeds it."""
        stats: Stats = defaultdict(list)
        rows = len(batch["returns"])
        check = DeferredCheck(self.module)  # one for the run: no role steps after a non-finite loss of either
        active, epoch = list(roles), 0
        while active:
            draws = {role: self.updaters[role].shuffler.split(rows, specs[role].stream, specs[role].minibatches,
                                                              self.module.device) for role in active}
            counts = {role: len(draws[role]) for role in active}
            for k in range(max(counts.values())):
                here = [role for role in active if k < counts[role]]
                self.step(batch, [(role, specs[role].loss, draws[role][k], role) for role in here], check, stats)
            epoch += 1
            kl_stop = {role for role in active if self.updaters[role].kl_stops(stats, counts[role], specs[role])}
            active = [role for role in active if epoch < specs[role].epochs and role not in kl_stop]
        check.end()
        return stats

    def interleaved(self, batch: dict[str, Tensor], specs: dict[str, RoleSpec], order: Sequence[str],
                    learning: Sequence[str], what: str, joint: bool) -> Stats:
        """Runs several roles' updates together, as :func:`~lit_rl.algos.updater.interleaved_epochs` does: every
        minibatch (drawn from the first role's stream in ``order``) gets one step of each role in ``learning``, in
        ``order``; in one graph where ``joint`` (the roles share no parameters), else one after the other."""
        spec = shared_minibatches(specs, order[0])
        stats: Stats = defaultdict(list)
        check = DeferredCheck(self.module)
        stepping = [role for role in order if role in learning]
        for _ in range(spec.epochs):
            for idx in self.updaters[order[0]].shuffler.split(len(batch["returns"]), spec.stream, spec.minibatches,
                                                              self.module.device):
                items = [(role, specs[role].loss, idx, f"{what} {role}") for role in stepping]
                for group in ([items] if joint else [[item] for item in items]):
                    self.step(batch, group, check, stats)
        check.end()
        return stats

    # ------------------------------------------------------------------ one step
    def step(self, batch: dict[str, Tensor], items: list[tuple[str, LossFn, Tensor, str]],
             check: DeferredCheck, stats: Stats) -> None:
        """Takes one optimizer step of each item's role (``(role, loss, minibatch rows, name of the loss)``) in one
        call of the graph."""
        datas = tuple(share_of(batch, idx).data for _, _, idx, _ in items)
        roles = tuple(role for role, _, _, _ in items)
        groups = tuple(self.param_groups(role, self.reached(role, loss, data))
                       for (role, loss, _, _), data in zip(items, datas))
        for data in datas:  # one graph for every minibatch size: a rollout's valid steps vary in number
            for value in data.values():
                torch._dynamo.mark_dynamic(value, 0)
        losses = tuple(loss for _, loss, _, _ in items)
        clips = tuple(self.updaters[role].max_grad_norm for role in roles)
        with torch.no_grad():  # torch.func.grad computes the gradients inside; nothing else needs them
            results, bad = self.graph(losses, datas, groups, self.found_inf(check), clips)
        for (role, _, _, what), (loss, step_stats) in zip(items, results):
            check.record(what, loss, bad)
            append_step(stats, step_stats)
            self.updaters[role].steps += 1
        count_optimizer_steps(self.module.trainer, len(items))

    def reached(self, role: str, loss_fn: LossFn, data: dict[str, Tensor]) -> frozenset[str]:
        """Names the parameters of ``role``'s optimizer that ``loss_fn`` reaches (found once, by an eager backward
        pass): the eager step leaves the others without a gradient, and Adam steps only those with one (PPG's
        auxiliary value head, say, in the policy phase)."""
        key = (role, getattr(loss_fn, "__name__", repr(loss_fn)))
        if key not in self._reached:
            params = [p for group in self.updaters[role].optimizer.optimizer.param_groups for p in group["params"]]
            with torch.enable_grad():
                loss, _ = loss_fn(lone_share(data))
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            self._reached[key] = frozenset(self.names[id(p)] for p, g in zip(params, grads) if g is not None)
        return self._reached[key]

    def param_groups(self, role: str, reached: frozenset[str]) -> tuple[dict[str, Any], ...]:
        """Returns the role's parameter groups as the graph reads them: the ``reached`` parameters, their Adam
        state (made as torch's Adam makes it, where the optimizer has not stepped them yet) and the group's
        settings."""
        optimizer = self.updaters[role].optimizer.optimizer
        groups = []
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if self.names[id(p)] in reached]
            if not params:
                continue
            for p in params:
                if p not in optimizer.state or not optimizer.state[p]:
                    on_device = bool(group.get("fused")) or bool(group.get("capturable"))
                    state = {"step": torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu"),
                             "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                             "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    optimizer.state[p] = state
            states = [optimizer.state[p] for p in params]
            groups.append({"names": tuple(self.names[id(p)] for p in params), "params": params,
                           "exp_avgs": [s["exp_avg"] for s in states], "exp_avg_sqs": [s["exp_avg_sq"] for s in states],
                           "max_exp_avg_sqs": [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
                           "steps": [s["step"] for s in states], "eps": group["eps"],
                           "weight_decay": group["weight_decay"], "amsgrad": group["amsgrad"],
                           "maximize": group["maximize"],
                           "decoupled": group.get("decoupled_weight_decay", False),
                           "capturable": states[0]["step"].device.type != "cpu"})
            for name, value in (("lr", group["lr"]), ("beta1", group["betas"][0]), ("beta2", group["betas"][1])):
                groups[-1][name] = self.scalar((role, len(groups) - 1, name), value)
        return tuple(groups)

    def scalar(self, key: tuple[str, int, str], value: float) -> Tensor:
        """Returns a setting a schedule may change (the learning rate, Adam's betas) as a tensor holding ``value``:
        an input of the graph, which would compile anew for each new number."""
        if key not in self.scalars:
            self.scalars[key] = torch.zeros((), dtype=torch.float32, device=self.module.device)
        return self.scalars[key].fill_(value)

    def found_inf(self, check: DeferredCheck) -> Tensor:
        """Returns 1 where an earlier step of the check's run had a non-finite loss (no update since), else 0."""
        return check.found_inf if check.found_inf is not None else torch.zeros((), device=self.module.device)

    def _steps(self, losses: tuple[LossFn, ...], datas: tuple[dict[str, Tensor], ...], groups: tuple, found: Tensor,
               clips: tuple[Optional[float], ...]) -> tuple[list[tuple[Tensor, dict[str, Tensor]]], Tensor]:
        """The graph: every item's loss and gradients first (from the same parameters), then each role's clip and
        Adam step, none applied from the first non-finite loss of the run on (``found``, then this call's losses);
        returns each item's loss and stats, and the run's non-finite flag."""
        results, grads_of = [], []
        for loss_fn, data, role_groups in zip(losses, datas, groups):
            params = {name: p for group in role_groups for name, p in zip(group["names"], group["params"])}
            grads, (loss, step_stats) = torch.func.grad_and_value(self._loss(loss_fn, data), has_aux=True)(params)
            grads_of.append(grads)
            results.append((loss, step_stats))
        bad = found
        for loss, _ in results:
            bad = torch.maximum(bad, (~torch.isfinite(loss)).to(bad.dtype))
        for grads, role_groups, clip in zip(grads_of, groups, clips):
            per_group = [[grads[name] for name in group["names"]] for group in role_groups]
            if clip is not None:  # as torch.nn.utils.clip_grad_norm_
                norm = torch.nn.utils.get_total_norm([g for gs in per_group for g in gs])
                scale = torch.clamp(clip / (norm + 1e-6), max=1.0)
                per_group = [[g * scale for g in gs] for gs in per_group]
            for group, group_grads in zip(role_groups, per_group):
                state = (*group["params"], *group["exp_avgs"], *group["exp_avg_sqs"], *group["max_exp_avg_sqs"],
                         *group["steps"])
                kept = [t.clone() for t in state]
                adam(group["params"], group_grads, group["exp_avgs"], group["exp_avg_sqs"], group["max_exp_avg_sqs"],
                     group["steps"], foreach=False, capturable=group["capturable"], differentiable=False,
                     fused=False, decoupled_weight_decay=group["decoupled"], amsgrad=group["amsgrad"],
                     beta1=group["beta1"], beta2=group["beta2"], lr=group["lr"], weight_decay=group["weight_decay"],
                     eps=group["eps"], maximize=group["maximize"])
                for tensor, old in zip(state, kept):  # after a non-finite loss, as they were
                    tensor.copy_(torch.where(bad > 0, old, tensor))
        return results, bad

    def _loss(self, loss_fn: LossFn, data: dict[str, Tensor]) -> Callable[[dict[str, Tensor]], Any]:
        """Returns the loss of a minibatch (this process's whole share) as a function of the role's parameters."""
        share = lone_share(data)

        def loss_of(params: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
            return torch.func.functional_call(self.losses, params, (loss_fn, share), strict=False)

        return loss_of


def lone_share(data: dict[str, Tensor]) -> Share:
    """Makes the share of a lone process: the whole minibatch ``data``, weight 1 (the compiled step runs only where
    each role's group is this process alone)."""
    return Share(data, None, 1.0, data.__getitem__)
