"""Gathers the networks, all plain nn.Modules: action distributions and the policy head (:mod:`.distributions`),
observation encoders (:mod:`.encoders`), recurrent state (:mod:`.recurrence`), and the trunks and
:class:`ActorCritic` that put them together (:mod:`.networks`)."""


from lit_rl.nets.distributions import (
    ActionDist,
    CategoricalDist,
    DiagGaussianDist,
    MultiCategoricalDist,
    PolicyHead,
    noise_dim,
)
from lit_rl.nets.encoders import (
    ENCODERS,
    IMAGE_LAYOUTS,
    DictEncoder,
    Encoder,
    FlatEncoder,
    ImageLayout,
    ImpalaCNN,
    MinAtarCNN,
    NatureCNN,
    Obs,
    make_encoder,
    map_obs,
)
from lit_rl.nets.layers import layer
from lit_rl.nets.networks import ACTIVATIONS, ARCHS, ActorCritic, Arch, check_spaces, mlp
from lit_rl.nets.recurrence import RECURRENT, History, Recurrent, Summarizer

__all__ = [
    "ACTIVATIONS",
    "ARCHS",
    "ENCODERS",
    "IMAGE_LAYOUTS",
    "DictEncoder",
    "Encoder",
    "FlatEncoder",
    "ImageLayout",
    "ImpalaCNN",
    "MinAtarCNN",
    "NatureCNN",
    "make_encoder",
    "map_obs",
    "RECURRENT",
    "ActionDist",
    "ActorCritic",
    "Arch",
    "CategoricalDist",
    "DiagGaussianDist",
    "History",
    "MultiCategoricalDist",
    "Obs",
    "PolicyHead",
    "Recurrent",
    "Summarizer",
    "check_spaces",
    "layer",
    "mlp",
    "noise_dim",
]
