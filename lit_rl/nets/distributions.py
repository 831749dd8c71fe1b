"""Defines the action distributions: :class:`ActionDist` and its Categorical, MultiCategorical and diagonal
Gaussian kinds, the :class:`PolicyHead` that maps features to one, and :func:`noise_dim` for noise-driven
sampling."""

import math
from typing import Optional, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Normal, kl_divergence

from lit_rl.errors import ConfigError
from lit_rl.nets.layers import layer


class ActionDist:
    """Holds the policy's distribution over a batch of actions and gives the four things PPO needs: a sample,
    log-probs, the entropy and the mode."""

    def sample(self) -> Tensor:
        raise NotImplementedError

    def sample_from(self, noise: Tensor) -> Tensor:
        """Draws a sample with the given uniform noise in [0, 1) (``[B, noise_dim(space)]``, see
        :func:`noise_dim`), so that the same noise gives the same actions, whichever process or batch layout
        draws them."""
        raise NotImplementedError

    def log_prob(self, actions: Tensor) -> Tensor:
        raise NotImplementedError

    def entropy(self) -> Tensor:
        raise NotImplementedError

    def mode(self) -> Tensor:
        raise NotImplementedError

    def params(self) -> Tensor:
        """Returns the distribution's parameters as one ``[B, P]`` tensor; ``PolicyHead.from_params`` rebuilds
        the distribution from it."""
        raise NotImplementedError

    def kl(self, other: "ActionDist") -> Tensor:
        """Computes ``KL(self || other)`` exactly, per sample (``[B]``)."""
        raise NotImplementedError


class CategoricalDist(ActionDist):
    def __init__(self, logits: Tensor) -> None:
        self.dist = Categorical(logits=logits, validate_args=False)

    def sample(self) -> Tensor:
        return self.dist.sample()

    def sample_from(self, noise: Tensor) -> Tensor:
        return _inverse_cdf(self.dist.probs, noise[..., 0])

    def log_prob(self, actions: Tensor) -> Tensor:
        return self.dist.log_prob(actions.long())

    def entropy(self) -> Tensor:
        return self.dist.entropy()

    def mode(self) -> Tensor:
        return self.dist.logits.argmax(-1)

    def params(self) -> Tensor:
        return self.dist.logits

    def kl(self, other: ActionDist) -> Tensor:
        assert isinstance(other, CategoricalDist)
        return kl_divergence(self.dist, other.dist)


class MultiCategoricalDist(ActionDist):
    """Samples each MultiDiscrete component from its own independent categorical; their log-probs and
    entropies add up."""

    def __init__(self, logits: Tensor, nvec: Sequence[int]) -> None:
        self.dists = [Categorical(logits=part, validate_args=False) for part in logits.split(list(nvec), -1)]

    def sample(self) -> Tensor:
        return torch.stack([d.sample() for d in self.dists], -1)

    def sample_from(self, noise: Tensor) -> Tensor:
        return torch.stack([_inverse_cdf(d.probs, noise[..., k]) for k, d in enumerate(self.dists)], -1)

    def log_prob(self, actions: Tensor) -> Tensor:
        return sum(d.log_prob(a) for d, a in zip(self.dists, actions.long().unbind(-1)))

    def entropy(self) -> Tensor:
        return sum(d.entropy() for d in self.dists)

    def mode(self) -> Tensor:
        return torch.stack([d.logits.argmax(-1) for d in self.dists], -1)

    def params(self) -> Tensor:
        return torch.cat([d.logits for d in self.dists], -1)

    def kl(self, other: ActionDist) -> Tensor:
        assert isinstance(other, MultiCategoricalDist)
        return sum(kl_divergence(p, q) for p, q in zip(self.dists, other.dists))


class DiagGaussianDist(ActionDist):
    """Models unbounded actions with a diagonal Gaussian. Clipping to the env's bounds happens in the env
    wrapper, so log-probs are of the sampled (unclipped) action."""

    def __init__(self, mean: Tensor, log_std: Tensor) -> None:
        self.dist = Normal(mean, log_std.exp().expand_as(mean), validate_args=False)

    def sample(self) -> Tensor:
        return self.dist.sample()

    def sample_from(self, noise: Tensor) -> Tensor:
        u = noise.clamp(1e-7, 1 - 1e-7)
        return self.dist.mean + self.dist.stddev * (2.0**0.5) * torch.erfinv(2 * u - 1)

    def log_prob(self, actions: Tensor) -> Tensor:
        return self.dist.log_prob(actions).sum(-1)

    def entropy(self) -> Tensor:
        return self.dist.entropy().sum(-1)

    def mode(self) -> Tensor:
        return self.dist.mean

    def params(self) -> Tensor:
        return torch.cat([self.dist.mean, self.dist.scale.log()], -1)

    def kl(self, other: ActionDist) -> Tensor:
        assert isinstance(other, DiagGaussianDist)
        return kl_divergence(self.dist, other.dist).sum(-1)


class PolicyHead(nn.Module):
    """Maps trunk features to an :class:`ActionDist` for a Discrete, MultiDiscrete or Box action space."""

    def __init__(self, in_dim: int, space: gym.Space, log_std_init: float = 0.0) -> None:
        super().__init__()
        self.nvec: list[int] = []
        if isinstance(space, gym.spaces.Discrete):
            out_dim = int(space.n)
        elif isinstance(space, gym.spaces.MultiDiscrete) and len(space.shape) == 1:
            self.nvec = [int(n) for n in space.nvec]
            out_dim = sum(self.nvec)
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            out_dim = int(space.shape[0])
            # State-independent log standard deviation, learned.
            self.log_std = nn.Parameter(torch.full((out_dim,), float(log_std_init)))
        else:
            raise ConfigError(
                f"data.env_id: action space {space} is not supported; the policy handles Discrete, "
                "1-D MultiDiscrete and 1-D Box actions. Pick another env, or register one whose action "
                "space a gymnasium ActionWrapper turns into one of these."
            )
        self.continuous = isinstance(space, gym.spaces.Box)
        self.linear = layer(in_dim, out_dim, gain=0.01)
        # Width of ActionDist.params(): logits, or a Gaussian's mean and log std.
        self.num_params = 2 * out_dim if self.continuous else out_dim

    def forward(self, features: Tensor) -> ActionDist:
        return self._dist(self.linear(features))

    def act(self, features: Tensor, noise: Optional[Tensor] = None, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """Returns actions and their log-probs: the mode (``deterministic``), drawn with ``noise`` or sampled.

        The numbers are those of the distribution's ``mode``/``sample_from`` and ``log_prob``, bit for bit: the same
        tensor operations, without building the distribution objects (whose construction and argument handling
        cost more than the arithmetic at acting's batch sizes). Sampling without noise draws through the
        distribution, so that it consumes torch's generator as it always has."""
        out = self.linear(features)
        if noise is None and not deterministic:
            dist = self._dist(out)
            action = dist.sample()
            return action, dist.log_prob(action)
        if self.continuous:
            return _gaussian_act(out, self.log_std, noise, deterministic)
        if self.nvec:
            parts = [_categorical_act(part, None if deterministic else noise[..., k], deterministic)  # type: ignore[index]
                     for k, part in enumerate(out.split(self.nvec, -1))]
            return torch.stack([a for a, _ in parts], -1), sum(lp for _, lp in parts)  # type: ignore[return-value]
        return _categorical_act(out, None if deterministic else noise[..., 0], deterministic)  # type: ignore[index]

    def _dist(self, out: Tensor) -> ActionDist:
        if self.continuous:
            return DiagGaussianDist(out, self.log_std)
        return self.from_params(out)

    def from_params(self, params: Tensor) -> ActionDist:
        """Rebuilds the distribution whose ``params()`` are ``params`` (e.g. a frozen copy of an earlier
        policy)."""
        if self.continuous:
            mean, log_std = params.chunk(2, -1)
            return DiagGaussianDist(mean, log_std)
        if self.nvec:
            return MultiCategoricalDist(params, self.nvec)
        return CategoricalDist(params)


def noise_dim(space: gym.Space) -> int:
    """Returns how many uniform numbers :meth:`ActionDist.sample_from` needs per action in ``space``."""
    if isinstance(space, gym.spaces.MultiDiscrete):
        return len(space.nvec)
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    return 1


def _inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Returns the category whose cumulative probability first reaches ``u``."""

    cdf = probs.cumsum(-1)
    return (cdf < u.unsqueeze(-1)).sum(-1).clamp(max=probs.shape[-1] - 1)


def _categorical_act(logits: Tensor, u: Optional[Tensor], deterministic: bool) -> tuple[Tensor, Tensor]:
    """Returns the action (the mode, or drawn with ``u``) and its log-prob, as :class:`CategoricalDist` computes
    them: torch's ``Categorical`` normalizes the logits, its ``probs`` are their softmax."""
    normalized = logits - logits.logsumexp(dim=-1, keepdim=True)
    action = normalized.argmax(-1) if u is None else _inverse_cdf(normalized.softmax(-1), u)
    return action, normalized.gather(-1, action.unsqueeze(-1)).squeeze(-1)


def _gaussian_act(mean: Tensor, log_std: Tensor, noise: Optional[Tensor], deterministic: bool) -> tuple[Tensor, Tensor]:
    """Returns the action (the mean, or drawn with ``noise``) and its log-prob, as :class:`DiagGaussianDist`
    computes them (torch's ``Normal.log_prob``, summed over the action's components)."""
    std = log_std.exp().expand_as(mean)
    if deterministic:
        action = mean
    else:
        u = noise.clamp(1e-7, 1 - 1e-7)  # type: ignore[union-attr]
        action = mean + std * (2.0**0.5) * torch.erfinv(2 * u - 1)
    log_prob = -((action - mean) ** 2) / (2 * std**2) - std.log() - math.log(math.sqrt(2 * math.pi))
    return action, log_prob.sum(-1)
