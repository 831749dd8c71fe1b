"""Plain nn.Modules: action distributions and the policy head (:mod:`.distributions`), recurrent state
(:mod:`.recurrence`), and the trunks and :class:`ActorCritic` that put them together (:mod:`.networks`)."""

from lit_rl.nets.distributions import (
    ActionDist,
    CategoricalDist,
    DiagGaussianDist,
    MultiCategoricalDist,
    PolicyHead,
    noise_dim,
)
from lit_rl.nets.layers import layer
from lit_rl.nets.networks import ACTIVATIONS, ARCHS, ActorCritic, Arch, ObsEncoder, check_spaces, mlp
from lit_rl.nets.recurrence import RECURRENT, History, Recurrent, Summarizer

__all__ = [
    "ACTIVATIONS",
    "ARCHS",
    "RECURRENT",
    "ActionDist",
    "ActorCritic",
    "Arch",
    "CategoricalDist",
    "DiagGaussianDist",
    "History",
    "MultiCategoricalDist",
    "ObsEncoder",
    "PolicyHead",
    "Recurrent",
    "Summarizer",
    "check_spaces",
    "layer",
    "mlp",
    "noise_dim",
]
