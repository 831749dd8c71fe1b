"""Plain networks: an actor that returns an action distribution and a critic that returns a value.

Three architectures:

- ``separate`` (PPG calls it ``dual``): the actor (policy trunk + policy head) and the critic (value
  trunk + value head) share nothing, so each loss reaches only its own network.
- ``shared``: one trunk feeds both heads. The trunk belongs to the actor's parameters (and so to the
  actor optimizer); the critic's parameters are the value head alone. See ``lit_rl.algos.ppo`` for how
  the value loss still trains the trunk.
- ``detach``: one trunk, but the value head reads detached features, so the value loss never reaches
  the trunk; the trunk learns from the actor's losses alone (in PPG, these include the aux value loss).

With ``aux_head`` (PPG) the policy trunk also feeds an auxiliary value head, owned by the actor.

With ``recurrent`` (``lstm`` or ``gru``) a history summarizer sits between the observation encoder and the
trunk. ``separate`` gives the actor and the critic one each (each owned by its network's optimizer);
``shared`` and ``detach`` have one summarizer whose state feeds both heads, owned by the actor optimizer
like the shared trunk (in ``shared`` the value loss reaches it through the actor's step; in ``detach`` it
never does). Every forward pass then takes a :class:`History`: observations are ``[L, B, ...]``
sequences, the state is reset wherever an episode starts, and outputs come back flattened time-major.
"""

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Normal, kl_divergence

from lit_rl.errors import ConfigError

Arch = Literal["separate", "shared", "detach"]
ARCHS = ("separate", "shared", "detach")

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}


def layer(in_dim: int, out_dim: int, gain: float = float(np.sqrt(2))) -> nn.Linear:
    """A linear layer with orthogonal weights and zero bias (the PPO implementation-detail init)."""
    linear = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


def mlp(in_dim: int, hidden_sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Hidden layers only; the output width is ``hidden_sizes[-1]``."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [layer(in_dim, size), ACTIVATIONS[activation]()]
        in_dim = size
    return nn.Sequential(*layers)


Recurrent = Literal["lstm", "gru"]
RECURRENT = ("lstm", "gru")


@dataclass
class History:
    """What a recurrent forward pass needs besides the observations ``[L, B, ...]``.

    ``starts[t, b]`` marks the first step of an episode (the state is zeroed before it), ``state`` is each
    sequence's state before its first step (``[B, state_size]``). With ``valid`` (``[L * B]``, time-major)
    the outputs keep only those samples. The pass leaves the state after the last step in ``final_state``.
    """

    starts: Tensor
    state: Tensor
    valid: Optional[Tensor] = None
    final_state: Optional[Tensor] = None


class Summarizer(nn.Module):
    """An LSTM or GRU over a history of features; the state restarts from zero where an episode starts.

    The state travels as one ``[B, state_size]`` tensor (an LSTM's ``h`` and ``c`` side by side). A sequence
    is run in as few calls as its episode starts allow: one call per span between steps where some env
    starts an episode, so a step-by-step pass (collection) and a whole-sequence pass (training) do the
    same arithmetic.
    """

    def __init__(self, kind: str, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.kind, self.hidden = kind, hidden
        self.rnn = nn.LSTM(in_dim, hidden) if kind == "lstm" else nn.GRU(in_dim, hidden)
        for name, param in self.rnn.named_parameters():
            if "weight" in name:
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.zeros_(param)
        self.state_size = 2 * hidden if kind == "lstm" else hidden

    def forward(self, x: Tensor, starts: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """``x [L, B, F]``, ``starts [L, B]``, ``state [B, state_size]`` -> ``(outputs [L, B, H], final state)``."""
        L = x.shape[0]
        cuts = [0, *(starts[1:].any(1).nonzero().flatten() + 1).tolist(), L]
        outputs = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            state = state * (~starts[a]).unsqueeze(-1).to(state.dtype)
            if self.kind == "lstm":
                h, c = state.unsqueeze(0).chunk(2, -1)
                y, (h, c) = self.rnn(x[a:b], (h.contiguous(), c.contiguous()))
                state = torch.cat([h, c], -1).squeeze(0)
            else:
                y, h = self.rnn(x[a:b], state.unsqueeze(0).contiguous())
                state = h.squeeze(0)
            outputs.append(y)
        return torch.cat(outputs), state


class ObsEncoder(nn.Module):
    """Turns a batch of observations into flat float features: Box is flattened, Discrete one-hot."""

    def __init__(self, space: gym.Space) -> None:
        super().__init__()
        if isinstance(space, gym.spaces.Box):
            self.one_hot = 0
            self.out_dim = int(np.prod(space.shape))
        elif isinstance(space, gym.spaces.Discrete):
            self.one_hot = int(space.n)
            self.out_dim = int(space.n)
        else:
            raise ConfigError(
                f"data.env_id: observation space {space} is not supported by the networks; "
                "use an env with a Box or Discrete observation space, or flatten it with a gymnasium "
                "wrapper (e.g. gymnasium.wrappers.FlattenObservation) in a registered env."
            )

    def forward(self, obs: Tensor) -> Tensor:
        if self.one_hot:
            return nn.functional.one_hot(obs.long().reshape(-1), self.one_hot).float()
        return obs.reshape(obs.shape[0], -1).float()


class ActionDist:
    """The policy's distribution over a batch of actions, with the four things PPO needs."""

    def sample(self) -> Tensor:
        raise NotImplementedError

    def sample_from(self, noise: Tensor) -> Tensor:
        """A sample drawn with the given uniform noise in [0, 1) (``[B, PolicyHead.noise_dim]``): the same
        noise gives the same actions, whichever process or batch layout draws them."""
        raise NotImplementedError

    def log_prob(self, actions: Tensor) -> Tensor:
        raise NotImplementedError

    def entropy(self) -> Tensor:
        raise NotImplementedError

    def mode(self) -> Tensor:
        raise NotImplementedError

    def params(self) -> Tensor:
        """The distribution's parameters as one ``[B, P]`` tensor; ``PolicyHead.from_params`` rebuilds it."""
        raise NotImplementedError

    def kl(self, other: "ActionDist") -> Tensor:
        """``KL(self || other)`` per sample, exact (``[B]``)."""
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
    """Independent categoricals, one per MultiDiscrete component; log-probs and entropies add up."""

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
    """Diagonal Gaussian over unbounded actions. Clipping to the env's bounds happens in the env wrapper,
    so log-probs are of the sampled (unclipped) action."""

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
        self.noise_dim = noise_dim(space)

    def forward(self, features: Tensor) -> ActionDist:
        out = self.linear(features)
        if self.continuous:
            return DiagGaussianDist(out, self.log_std)
        return self.from_params(out)

    def from_params(self, params: Tensor) -> ActionDist:
        """The distribution whose ``params()`` are ``params`` (e.g. a frozen copy of an earlier policy)."""
        if self.continuous:
            mean, log_std = params.chunk(2, -1)
            return DiagGaussianDist(mean, log_std)
        if self.nvec:
            return MultiCategoricalDist(params, self.nvec)
        return CategoricalDist(params)


class ActorCritic(nn.Module):
    """A policy and a value function over one observation space, in one of :data:`ARCHS`.

    ``aux_head`` adds PPG's auxiliary value head on the policy trunk (an actor parameter).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        arch: Arch = "separate",
        log_std_init: float = 0.0,
        aux_head: bool = False,
        recurrent: Optional[str] = None,
        recurrent_size: int = 128,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation: {activation!r} is not one of {sorted(ACTIVATIONS)}.")
        if arch not in ARCHS:
            raise ConfigError(f"model.arch: {arch!r} is not one of {list(ARCHS)}.")
        if not hidden_sizes:
            raise ConfigError("model.hidden_sizes: give at least one hidden layer width, e.g. [64, 64].")
        if recurrent is not None and recurrent not in RECURRENT:
            raise ConfigError(f"model.recurrent: {recurrent!r} is not one of {list(RECURRENT)} (or null for none).")
        if recurrent is not None and recurrent_size < 1:
            raise ConfigError(f"model.recurrent_size: must be a positive integer, got {recurrent_size}.")
        self.arch = arch
        self.encoder = ObsEncoder(observation_space)
        in_dim = self.encoder.out_dim
        self.policy_memory = Summarizer(recurrent, in_dim, recurrent_size) if recurrent else None
        self.value_memory = Summarizer(recurrent, in_dim, recurrent_size) if recurrent and arch == "separate" else None
        in_dim = recurrent_size if recurrent else in_dim
        self.policy_trunk = mlp(in_dim, hidden_sizes, activation)
        self.policy_head = PolicyHead(hidden_sizes[-1], action_space, log_std_init)
        self.aux_value_head = layer(hidden_sizes[-1], 1, gain=1.0) if aux_head else None
        self.value_trunk = mlp(in_dim, hidden_sizes, activation) if arch == "separate" else None
        self.value_head = layer(hidden_sizes[-1], 1, gain=1.0)
        # The state layout: [policy summarizer's | value summarizer's].
        self.policy_state = self.policy_memory.state_size if self.policy_memory is not None else 0
        self.state_size = self.policy_state + (self.value_memory.state_size if self.value_memory is not None else 0)

    @property
    def recurrent(self) -> bool:
        return self.policy_memory is not None

    def initial_state(self, batch: int, device: Optional[torch.device] = None) -> Tensor:
        """The state before any step: zeros, ``[batch, state_size]``."""
        return torch.zeros(batch, self.state_size, device=device)

    @property
    def shares_trunk(self) -> bool:
        """Whether the value loss reaches the policy trunk (only in ``shared``)."""
        return self.arch == "shared"

    def actor_parameters(self) -> list[nn.Parameter]:
        """What the actor optimizer owns: policy trunk, policy head, aux value head (in ``shared`` and
        ``detach``, the one trunk too)."""
        memory = list(self.policy_memory.parameters()) if self.policy_memory is not None else []
        aux = list(self.aux_value_head.parameters()) if self.aux_value_head is not None else []
        return [*memory, *self.policy_trunk.parameters(), *self.policy_head.parameters(), *aux]

    def critic_parameters(self) -> list[nn.Parameter]:
        """What the critic optimizer owns: value summarizer, trunk and head (in ``shared``/``detach``, the
        value head alone)."""
        memory = list(self.value_memory.parameters()) if self.value_memory is not None else []
        trunk = list(self.value_trunk.parameters()) if self.value_trunk is not None else []
        return [*memory, *trunk, *self.value_head.parameters()]

    # ------------------------------------------------------------------ passes
    def _encode(self, obs: Tensor, history: Optional[History]) -> Tensor:
        if self.recurrent and history is None:
            raise RuntimeError("a recurrent ActorCritic needs a History with every pass")
        return self.encoder(obs.flatten(0, 1) if history is not None else obs)

    def _summarize(self, memory: Optional[Summarizer], x: Tensor, history: Optional[History],
                   part: slice, states: list[Tensor]) -> Tensor:
        if memory is None or history is None:
            return x
        L, B = history.starts.shape
        y, state = memory(x.view(L, B, -1), history.starts, history.state[:, part])
        states.append(state)
        return y.flatten(0, 1)

    def _features(self, obs: Tensor, history: Optional[History], policy: bool, value: bool
                  ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Policy and value features (each only when asked for), for the valid samples; the final state
        goes to ``history.final_state`` when both summarizers ran."""
        x = self._encode(obs, history)
        states: list[Tensor] = []
        policy_features = None
        if policy or self.value_trunk is None:  # shared/detach: the value head reads the policy trunk
            policy_features = self.policy_trunk(self._summarize(self.policy_memory, x, history,
                                                                slice(0, self.policy_state), states))
        value_features = None
        if value:
            if self.value_trunk is not None:
                value_features = self.value_trunk(self._summarize(self.value_memory, x, history,
                                                                  slice(self.policy_state, None), states))
            else:
                assert policy_features is not None
                value_features = policy_features.detach() if self.arch == "detach" else policy_features
        if history is not None:
            if self.recurrent and len(states) == (2 if self.value_memory is not None else 1):
                history.final_state = torch.cat(states, -1)
            if history.valid is not None:
                policy_features = policy_features[history.valid] if policy_features is not None else None
                value_features = value_features[history.valid] if value_features is not None else None
        return policy_features, value_features

    def dist(self, obs: Tensor, history: Optional[History] = None) -> ActionDist:
        features, _ = self._features(obs, history, policy=True, value=False)
        assert features is not None
        return self.policy_head(features)

    def value(self, obs: Tensor, history: Optional[History] = None) -> Tensor:
        _, features = self._features(obs, history, policy=False, value=True)
        assert features is not None
        return self.value_head(features).squeeze(-1)

    def forward(self, obs: Tensor, history: Optional[History] = None) -> tuple[ActionDist, Tensor]:
        policy_features, value_features = self._features(obs, history, policy=True, value=True)
        assert policy_features is not None and value_features is not None
        return self.policy_head(policy_features), self.value_head(value_features).squeeze(-1)

    def forward_aux(self, obs: Tensor, with_value: bool = True, history: Optional[History] = None
                    ) -> tuple[ActionDist, Tensor, Optional[Tensor]]:
        """``(policy, aux value, value or None)`` in one pass: what PPG's auxiliary phase reads."""
        if self.aux_value_head is None:
            raise RuntimeError("this ActorCritic was built without aux_head")
        policy_features, value_features = self._features(obs, history, policy=True, value=with_value)
        assert policy_features is not None
        value = self.value_head(value_features).squeeze(-1) if value_features is not None else None
        return self.policy_head(policy_features), self.aux_value_head(policy_features).squeeze(-1), value


def noise_dim(space: gym.Space) -> int:
    """Uniform numbers :meth:`ActionDist.sample_from` needs per action in ``space``."""
    if isinstance(space, gym.spaces.MultiDiscrete):
        return len(space.nvec)
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    return 1


def _inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """The category whose cumulative probability first reaches ``u``."""
    cdf = probs.cumsum(-1)
    return (cdf < u.unsqueeze(-1)).sum(-1).clamp(max=probs.shape[-1] - 1)


def check_spaces(observation_space: gym.Space, action_space: gym.Space) -> None:
    """Raises a ConfigError naming the fix when the networks cannot handle a space."""
    ObsEncoder(observation_space)
    PolicyHead(1, action_space)
