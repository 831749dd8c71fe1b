"""Defines the networks: MLP trunks, the observation encoder and :class:`ActorCritic`, an actor that returns an
action distribution and a critic that returns a value, plus :func:`check_spaces`.

Three architectures:

- ``separate`` (the PPG paper calls it "dual"): the actor (policy trunk + policy head) and the critic (value
  trunk + value head) share nothing, so each loss reaches only its own network.
- ``shared``: one trunk feeds both heads. The trunk belongs to the actor's parameters (and so to the
  actor optimizer); the critic's parameters are the value head alone. See ``lit_rl.algos.ppo`` for how
  the value loss still trains the trunk.
- ``detach``: one trunk, but the value head reads detached features, so the value loss never reaches
  the trunk; the trunk learns from the actor's losses alone (in PPG, these include the aux value loss).

Observations reach the trunks through an encoder (:mod:`.encoders`: flat, or a CNN for images, one per key of a
Dict). Each trunk has its own: in ``separate`` the actor's and the critic's encoders are their own networks' (a
CNN is not shared); in ``shared`` and ``detach`` the one encoder is part of the one trunk, owned by the actor.

With ``aux_head`` (PPG) the policy trunk also feeds an auxiliary value head, owned by the actor.

With ``recurrent`` (``lstm`` or ``gru``) a history summarizer sits between the observation encoder and the
trunk. ``separate`` gives the actor and the critic one each (each owned by its network's optimizer);
``shared`` and ``detach`` have one summarizer whose state feeds both heads, owned by the actor optimizer
like the shared trunk (in ``shared`` the value loss reaches it through the actor's step; in ``detach`` it
never does). Every forward pass then takes a :class:`History`: observations are ``[L, B, ...]``
sequences, the state is reset wherever an episode starts, and outputs come back flattened time-major.
"""

import functools
import os
import tempfile
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from lit_rl.errors import ConfigError
from lit_rl.nets.distributions import ActionDist, PolicyHead
from lit_rl.nets.encoders import ENCODERS, IMAGE_LAYOUTS, Obs, check_encoder, make_encoder, map_obs
from lit_rl.nets.layers import layer
from lit_rl.nets.recurrence import RECURRENT, History, Summarizer

Arch = Literal["separate", "shared", "detach"]
ARCHS = ("separate", "shared", "detach")

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}


def mlp(in_dim: int, hidden_sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Builds the hidden layers only, with no output layer; the output width is ``hidden_sizes[-1]``."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [layer(in_dim, size), ACTIVATIONS[activation]()]
        in_dim = size
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Holds a policy and a value function over one observation space, in one of :data:`ARCHS`.

    ``aux_head`` adds PPG's auxiliary value head on the policy trunk (an actor parameter).
    """

    @staticmethod
    def check_config(arch: str, hidden_sizes: Sequence[int], activation: str, recurrent: Optional[str],
                     recurrent_size: int, encoder: str = "auto", image_layout: str = "auto") -> None:
        """Raises a ConfigError naming the key unless these settings make a network; the algorithms call it when
        they are configured, so a bad setting fails before any environment starts."""
        if encoder not in ENCODERS:
            raise ConfigError(f"model.encoder: {encoder!r} is not one of {list(ENCODERS)}.")
        if image_layout not in IMAGE_LAYOUTS:
            raise ConfigError(f"model.image_layout: {image_layout!r} is not one of {list(IMAGE_LAYOUTS)}.")
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
        encoder: str = "auto",
        image_layout: str = "auto",
    ) -> None:
        super().__init__()
        self.check_config(arch, hidden_sizes, activation, recurrent, recurrent_size, encoder, image_layout)
        self.arch = arch
        self.policy_encoder = make_encoder(observation_space, encoder, layout=image_layout)
        in_dim = self.policy_encoder.out_dim
        self.policy_memory = Summarizer(recurrent, in_dim, recurrent_size) if recurrent else None
        self.value_memory = Summarizer(recurrent, in_dim, recurrent_size) if recurrent and arch == "separate" else None
        in_dim = recurrent_size if recurrent else in_dim
        self.policy_trunk = mlp(in_dim, hidden_sizes, activation)
        self.policy_head = PolicyHead(hidden_sizes[-1], action_space, log_std_init)
        self.aux_value_head = layer(hidden_sizes[-1], 1, gain=1.0) if aux_head else None
        self.value_trunk = mlp(in_dim, hidden_sizes, activation) if arch == "separate" else None
        self.value_encoder = make_encoder(observation_space, encoder, layout=image_layout) if arch == "separate" else None
        self.value_head = layer(hidden_sizes[-1], 1, gain=1.0)
        self.acting_backend: Any = None  # torch.compile's backend for act() (compile_acting)
        # The state layout: [policy summarizer's | value summarizer's].
        self.policy_state = self.policy_memory.state_size if self.policy_memory is not None else 0
        self.state_size = self.policy_state + (self.value_memory.state_size if self.value_memory is not None else 0)

    @property
    def recurrent(self) -> bool:
        return self.policy_memory is not None

    def initial_state(self, batch: int, device: Optional[torch.device] = None) -> Tensor:
        """Returns the state before any step: zeros, ``[batch, state_size]``."""
        return torch.zeros(batch, self.state_size, device=device)

    @property
    def shares_trunk(self) -> bool:
        """Tells whether the value loss reaches the policy trunk (only in ``shared``)."""
        return self.arch == "shared"

    def actor_parameters(self) -> list[nn.Parameter]:
        """Returns what the actor optimizer owns: policy encoder, summarizer, trunk and head, aux value head (in
        ``shared`` and ``detach``, the one encoder, summarizer and trunk too)."""
        memory = list(self.policy_memory.parameters()) if self.policy_memory is not None else []
        aux = list(self.aux_value_head.parameters()) if self.aux_value_head is not None else []
        return [*self.policy_encoder.parameters(), *memory, *self.policy_trunk.parameters(),
                *self.policy_head.parameters(), *aux]

    def critic_parameters(self) -> list[nn.Parameter]:
        """Returns what the critic optimizer owns: value encoder, summarizer, trunk and head (in
        ``shared``/``detach``, the value head alone)."""
        encoder = list(self.value_encoder.parameters()) if self.value_encoder is not None else []
        memory = list(self.value_memory.parameters()) if self.value_memory is not None else []
        trunk = list(self.value_trunk.parameters()) if self.value_trunk is not None else []
        return [*encoder, *memory, *trunk, *self.value_head.parameters()]

    # ------------------------------------------------------------------ passes
    def _samples(self, obs: Obs, history: Optional[History]) -> Obs:
        """Returns the observations as one batch of samples (a history's ``[L, B, ...]`` flattened)."""
        if self.recurrent and history is None:
            raise RuntimeError("a recurrent ActorCritic needs a History with every pass")
        return obs if history is None else map_obs(obs, lambda x: x.flatten(0, 1))

    def _summarize(self, memory: Optional[Summarizer], x: Tensor, history: Optional[History],
                   part: slice, states: list[Tensor]) -> Tensor:
        if memory is None or history is None:
            return x
        L, B = history.starts.shape
        y, state = memory(x.view(L, B, -1), history.starts, history.state[:, part])
        states.append(state)
        return y.flatten(0, 1)

    def _features(self, obs: Obs, history: Optional[History], policy: bool, value: bool
                  ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Computes policy and value features (each only when asked for) for the valid samples; the final state
        goes to ``history.final_state`` when both summarizers ran."""
        obs = self._samples(obs, history)
        states: list[Tensor] = []
        policy_features = None
        if policy or self.value_trunk is None:  # shared/detach: the value head reads the policy trunk
            policy_features = self.policy_trunk(self._summarize(self.policy_memory, self.policy_encoder(obs), history,
                                                                slice(0, self.policy_state), states))
        value_features = None
        if value:
            if self.value_trunk is not None:
                assert self.value_encoder is not None
                value_features = self.value_trunk(self._summarize(self.value_memory, self.value_encoder(obs), history,
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

    def dist(self, obs: Obs, history: Optional[History] = None) -> ActionDist:
        features, _ = self._features(obs, history, policy=True, value=False)
        assert features is not None
        return self.policy_head(features)

    def value(self, obs: Obs, history: Optional[History] = None) -> Tensor:
        _, features = self._features(obs, history, policy=False, value=True)
        assert features is not None
        return self.value_head(features).squeeze(-1)

    def forward(self, obs: Obs, history: Optional[History] = None) -> tuple[ActionDist, Tensor]:
        policy_features, value_features = self._features(obs, history, policy=True, value=True)
        assert policy_features is not None and value_features is not None
        return self.policy_head(policy_features), self.value_head(value_features).squeeze(-1)

    def compile_acting(self, backend: Any = "inductor") -> None:
        """Makes :meth:`act` run compiled where a collector calls it (drawing with noise, without a history);
        ``None`` turns it off. With ``inductor`` on a CPU it is compiled ahead of time (:class:`AheadOfTimeActing`),
        otherwise it is a ``torch.compile`` graph (:func:`acting_graph`). Either way the networks' tensors are
        inputs, read as they are at each call. The setting is an attribute, so copies of the networks (an
        overlapped collector's) compile their own: ``backend`` is a name, or an object that pickles where
        collectors run in processes of their own."""
        self.acting_backend = backend

    @torch.inference_mode()
    def act(self, obs: Obs, deterministic: bool = False, noise: Optional[Tensor] = None,
            history: Optional[History] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Returns actions, their log-probs and the state values for a batch of observations, computed without
        gradients. Actions are the mode, or drawn with ``noise`` (uniform, a row per observation), or sampled. With a
        ``history`` (recurrent) the batch is one step, and the new state is left in ``history.final_state``.

        After :meth:`compile_acting`, drawing with ``noise`` without a history runs the compiled graph: the same
        numbers to float rounding (an action can differ only where its noise lies within rounding of a boundary
        between two actions' cumulative probabilities)."""
        if self.acting_backend is not None and noise is not None and not deterministic and history is None:
            return acting_graph(self.acting_backend, self.value_head.weight.device.type)(self, obs, noise)
        return self._act(obs, deterministic, noise, history)

    def _act(self, obs: Obs, deterministic: bool, noise: Optional[Tensor], history: Optional[History]
             ) -> tuple[Tensor, Tensor, Tensor]:
        policy_features, value_features = self._features(
            map_obs(obs, lambda x: x.unsqueeze(0)) if history is not None else obs, history, policy=True, value=True)
        assert policy_features is not None and value_features is not None
        # The head's acting path: the distribution's numbers without building it (PolicyHead.act).
        action, logprob = self.policy_head.act(policy_features, noise, deterministic)
        return action, logprob, self.value_head(value_features).squeeze(-1)

    @torch.inference_mode()
    def act_value(self, obs: Obs, history: Optional[History] = None) -> Tensor:
        """Returns the state values of a batch of observations (one step of ``history``), computed without
        gradients."""
        return self.value(map_obs(obs, lambda x: x.unsqueeze(0)) if history is not None else obs, history)

    def forward_aux(self, obs: Obs, with_value: bool = True, history: Optional[History] = None
                    ) -> tuple[ActionDist, Tensor, Optional[Tensor]]:
        """Returns ``(policy, aux value, value or None)`` from one pass, which is what PPG's auxiliary phase
        reads."""

        if self.aux_value_head is None:
            raise RuntimeError("this ActorCritic was built without aux_head")
        policy_features, value_features = self._features(obs, history, policy=True, value=with_value)
        assert policy_features is not None
        value = self.value_head(value_features).squeeze(-1) if value_features is not None else None
        return self.policy_head(policy_features), self.aux_value_head(policy_features).squeeze(-1), value


# (backend, device type) -> the compiled acting
_ACTING_GRAPHS: dict[tuple[Any, str], Callable[..., tuple[Tensor, Tensor, Tensor]]] = {}


def _draw(agent: ActorCritic, obs: Obs, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return agent._act(obs, False, noise, None)


def acting_graph(backend: Any, device_type: str = "cpu"
                 ) -> Callable[[ActorCritic, Obs, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """Returns :meth:`ActorCritic.act`'s drawing path compiled with ``backend`` for networks on ``device_type``
    (one per process, backend and kind of device).

    Inductor on a CPU compiles it ahead of time (:class:`AheadOfTimeActing`). Any other backend, or a GPU (which
    no run of this project has used yet), gets a ``torch.compile`` graph in its default mode, with static shapes
    (a collector's envs do not change in number)."""
    key = (backend, device_type)
    if key not in _ACTING_GRAPHS:
        _ACTING_GRAPHS[key] = (AheadOfTimeActing() if backend == "inductor" and device_type == "cpu"
                               else torch.compile(_draw, backend=backend, dynamic=False))
    return _ACTING_GRAPHS[key]


class _Drawing(nn.Module):
    """The drawing path as a function of the networks' tensors: ``forward(*parameters, *buffers, *obs, noise)``,
    the observation's tensors in the order of its sorted keys. The networks are not a submodule, so none of their
    tensors is compiled in as a constant."""

    def __init__(self, agent: ActorCritic, keys: Optional[tuple[str, ...]]) -> None:
        super().__init__()
        self.act = [_Act(agent)]
        self.names = [name for name, _ in self.act[0].named_parameters()] + [n for n, _ in self.act[0].named_buffers()]
        self.keys = keys

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = len(self.names)
        obs_leaves = inputs[n:-1]
        obs: Obs = dict(zip(self.keys, obs_leaves)) if self.keys is not None else obs_leaves[0]
        return torch.func.functional_call(self.act[0], dict(zip(self.names, inputs[:n])), (obs, inputs[-1]))


class _Act(nn.Module):
    """The networks with the drawing path as ``forward``, which ``torch.func.functional_call`` calls."""

    def __init__(self, agent: ActorCritic) -> None:
        super().__init__()
        self.agent = agent

    def forward(self, obs: Obs, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.agent._act(obs, False, noise, None)


@dataclass
class _Compiled:
    """What :class:`AheadOfTimeActing` keeps for one networks object."""

    layouts: list[tuple]  # each module's layout (AheadOfTimeActing.layouts), none holding the networks themselves
    holders: list[tuple[dict[str, Any], str]]  # where each parameter and buffer is held (AheadOfTimeActing.holders)
    libraries: dict[tuple, Any] = field(default_factory=dict)  # input signature -> library (None: not compiled)
    registrations: int = -1  # the registration count when the layouts were last checked


class AheadOfTimeActing:
    """:meth:`ActorCritic.act`'s drawing path on a CPU, compiled ahead of time by AOTInductor
    (``torch.export`` then ``torch._inductor.aoti_compile_and_package``) into a library whose C++ runs the graph.

    At a vector env's few rows the Python around a ``torch.compile`` graph (dynamo's guards, AOTAutograd's
    wrappers, inductor's caller) costs more than its kernels; an AOTInductor library is called with one list of
    tensors, the way its own Python wrapper calls it, without the wrapper's pytree passes. The networks'
    parameters and buffers are inputs of the graph, not constants compiled in, so each call reads the weights as
    they are (an update steps them in place; an overlapped collector loads them from the weight ring).

    A compiled library checks nothing about its inputs, so each is kept for one networks object (a weak
    reference: a copy compiles its own) and one signature of its inputs (every tensor's shape, strides and dtype,
    and the observation's keys); a call with another signature compiles another. Where a submodule of the
    networks is set anew, or a parameter or buffer added (torch's registration hooks say when to look), the
    libraries compiled before are dropped. Compiling takes 5-25 s on a 2-core CPU.
    """

    registrations = 0  # submodules, parameters and buffers registered in this process (any module's) since hooked
    hooked = False  # whether torch's global registration hooks count them

    def __init__(self) -> None:
        self.compiled: weakref.WeakKeyDictionary[ActorCritic, _Compiled] = weakref.WeakKeyDictionary()
        if not AheadOfTimeActing.hooked:
            def registered(*_: Any) -> None:  # returns None: the registration goes ahead unchanged
                AheadOfTimeActing.registrations += 1

            nn.modules.module.register_module_module_registration_hook(registered)
            nn.modules.module.register_module_parameter_registration_hook(registered)
            nn.modules.module.register_module_buffer_registration_hook(registered)
            AheadOfTimeActing.hooked = True

    @staticmethod
    def layouts(agent: ActorCritic) -> list[tuple]:
        """What a library compiled for ``agent`` depends on in each of its modules: the submodules, and the names
        of the parameters and buffers. It refers to ``agent``'s children, never to ``agent``, which
        :attr:`compiled` holds weakly (a reference to it there would keep it, and its libraries, forever)."""
        return [(tuple(m._modules.values()), tuple(m._parameters), tuple(m._buffers)) for m in agent.modules()]

    @staticmethod
    def holders(agent: ActorCritic) -> list[tuple[dict[str, Any], str]]:
        """Where each parameter and buffer of ``agent`` is held (its module's dict, its name), in the order of
        ``named_parameters()`` then ``named_buffers()`` (a tensor two modules share listed once), the order of
        :class:`_Drawing`'s inputs: reading them there at each call costs a microsecond, walking the module tree
        thirty. A parameter set anew (``module.weight = nn.Parameter(...)``) is read in its place."""
        held: list[tuple[dict[str, Any], str]] = []
        for kind, named in (("_parameters", agent.named_parameters()), ("_buffers", agent.named_buffers())):
            for qualified, _ in named:
                path, _, name = qualified.rpartition(".")
                held.append((getattr(agent.get_submodule(path), kind), name))
        return held

    def __call__(self, agent: ActorCritic, obs: Obs, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        entry = self.compiled.get(agent)
        if entry is None or entry.registrations != self.registrations:
            # Something was registered since the last look (6 us to check the networks' layout, so only then):
            # where a submodule was set anew or a parameter or buffer added, the libraries compiled for the old
            # layout are dropped. A parameter set anew in its place is read there (holders).
            layouts = self.layouts(agent)
            if entry is None or entry.layouts != layouts:
                entry = self.compiled[agent] = _Compiled(layouts, self.holders(agent))
            entry.registrations = self.registrations
        holders, libraries = entry.holders, entry.libraries
        keys = tuple(sorted(obs)) if isinstance(obs, dict) else None
        inputs = [held[name] for held, name in holders]
        inputs += [obs[k] for k in keys] if keys is not None else [obs]
        inputs.append(noise)
        # A library reads its inputs as laid out when it was compiled: strides are part of the signature.
        signature = (keys, *((t.shape, t.stride(), t.dtype) for t in inputs))
        if signature not in libraries:
            libraries[signature] = self.compile(agent, keys, inputs)
        library = libraries[signature]
        if library is None:  # it did not compile ahead of time: torch.compile's graph, guards and all
            return self.fallback(agent, obs, noise)
        action, logprob, value = library.boxed_run(inputs)  # boxed: it may free the list's references
        return action, logprob, value

    @staticmethod
    def compile(agent: ActorCritic, keys: Optional[tuple[str, ...]], inputs: list[Tensor]) -> Any:
        """Exports the drawing path for these inputs, compiles it, and loads the library (its runner); None, with
        a warning that says why, where that fails (networks that do not export, such as a custom encoder with
        data-dependent control flow)."""
        with torch.no_grad(), tempfile.TemporaryDirectory(prefix="lit_rl_acting_") as folder, warnings.catch_warnings():
            # torch.export's own use of a deprecated pytree check, once per compile
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            step = "export"
            try:
                program = torch.export.export(_Drawing(agent, keys), tuple(inputs))
                step = "compile ahead of time"
                package = torch._inductor.aoti_compile_and_package(program,
                                                                   package_path=os.path.join(folder, "act.pt2"))
                return load_unpacked_in(folder, package)
            except Exception as error:  # noqa: BLE001 - any failure leaves the torch.compile graph
                warnings.warn(f"model.compile: the collectors' acting did not {step} ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); it runs as a torch.compile "
                              "graph instead, which costs more Python at each step.")
                return None

    @functools.cached_property
    def fallback(self) -> Callable[[ActorCritic, Obs, Tensor], tuple[Tensor, Tensor, Tensor]]:
        return torch.compile(_draw, backend="inductor", dynamic=False)


def load_unpacked_in(folder: str, package: str) -> Any:
    """Loads an AOTInductor package's library (its runner). The loader unpacks the library into a folder of
    $TMPDIR that it never removes (1.7 MB a network): here, into ``folder``, which the caller removes once the
    library is loaded (mapped into the process)."""
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = folder
    try:
        return torch._inductor.aoti_load_package(package).loader
    finally:
        if previous is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = previous


def check_spaces(observation_space: gym.Space, action_space: gym.Space, encoder: str = "flat",
                 image_layout: str = "auto") -> None:
    """Raises a ConfigError naming the fix when the networks cannot handle a space: with ``encoder`` and
    ``image_layout`` (the model's, which the datamodule passes when one is attached), or, by default, only
    whether the networks take the spaces at all."""
    check_encoder(observation_space, encoder, layout=image_layout)
    PolicyHead(1, action_space)
