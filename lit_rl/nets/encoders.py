"""Observation encoders: each turns a batch of observations into flat float features for a trunk.

- :class:`FlatEncoder` (``flat``): a Box flattened, a Discrete one-hot; no parameters.
- :class:`MinAtarCNN` (``minatar``): the MinAtar paper's network (Young & Tian 2019): one 3x3 convolution with 16
  channels, for frames of a few pixels a side.
- :class:`NatureCNN` (``nature``): the DQN/Atari convolutions (Mnih et al. 2015), 32-64-64 channels.
- :class:`ImpalaCNN` (``impala``): the IMPALA residual network (Espeholt et al. 2018) that the PPG paper uses on
  Procgen: stacks of 16, 32 and 32 channels, each a convolution, a max-pool and two residual blocks.
- :class:`DictEncoder`: one encoder per key of a Dict observation, their features concatenated.

The CNNs end at their flattened (ReLU'd) convolution output; the dense layer after them is the trunk's first
hidden layer (``model.hidden_sizes``: ``[256]`` gives the PPG paper's IMPALA network, ``[512]`` the Nature one,
``[128]`` the MinAtar one).

``auto`` picks by the frame's size: frames under :data:`SMALL_FRAME` pixels on their shorter side (MinAtar's
10x10, MiniGrid's 7x7) get :class:`MinAtarCNN`, whose one unpadded convolution keeps every cell, where the
IMPALA CNN would pool a 10x10 grid down to 2x2 at many times the cost; larger frames get :class:`ImpalaCNN`.

Images are ``uint8`` Boxes of rank 3, channels last (``H x W x C``, as Procgen and MinAtar give them) or first
(``C x H x W``, as stacked Atari frames are), as ``model.image_layout`` says; a rank-2 Box is one gray channel.
``auto`` layout (:func:`image_layout`) reads the channels where the shape leaves no doubt and refuses the rest.
Frames stay ``uint8`` wherever they are stored and reach the encoder as they are; it scales them to ``[0, 1]`` by
their bounds (``/ 255``; MinAtar's 0/1 frames as they are) on the device it runs on (every encoder does,
:class:`FlatEncoder` too; other observations are not scaled).
"""

from typing import Callable, Literal, Optional, Union

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from lit_rl.errors import ConfigError
from lit_rl.envs.wrappers import PackedDict

Encoder = Literal["auto", "flat", "minatar", "nature", "impala"]
ENCODERS = ("auto", "flat", "minatar", "nature", "impala")
ImageLayout = Literal["auto", "channels_last", "channels_first"]
IMAGE_LAYOUTS = ("auto", "channels_last", "channels_first")
SMALL_FRAME = 32  # ``auto`` gives frames under this many pixels on their shorter side the MinAtar network

Obs = Union[Tensor, dict[str, Tensor]]  # a batch of observations: a tensor, or one per key of a Dict space


def map_obs(obs: Obs, fn: Callable[[Tensor], Tensor]) -> Obs:
    """Applies ``fn`` to a batch of observations, or to each key's batch of a Dict observation."""
    return {key: fn(value) for key, value in obs.items()} if isinstance(obs, dict) else fn(obs)


def is_image(space: gym.Space) -> bool:
    """Returns whether ``auto`` picks a CNN for ``space``, that is whether it is a ``uint8`` Box of rank 2 (gray)
    or 3."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3)


def image_layout(space: gym.spaces.Box, key: str, layout: str = "auto") -> tuple[tuple[int, int, int], bool]:
    """Returns ``((C, H, W), channels_last)`` of an image space, read by ``layout`` (``model.image_layout``);
    raises a ConfigError naming ``key`` when it is not an image, or naming ``model.image_layout`` when ``auto``
    cannot tell.

    ``auto`` reads a rank-3 shape ``(a, b, c)`` only where it leaves no doubt: two equal sides are the frame and
    the third the channels (``64x64x3``, ``7x7x12``: channels last; ``4x84x84``, ``20x11x11``: first); with three
    different sides, an end of at most 4 is the channels when the other end is larger (``210x160x3``). Anything
    else, such as MinAtar Seaquest's ``10x10x10`` or a ``7x9x12`` grid, is refused, naming the setting.
    """
    if layout not in IMAGE_LAYOUTS:
        raise ConfigError(f"model.image_layout: {layout!r} is not one of {list(IMAGE_LAYOUTS)}.")
    shape = tuple(int(d) for d in space.shape)
    if len(shape) == 2:
        return (1, *shape), False
    if len(shape) != 3:
        raise ConfigError(
            f"{key}: a CNN needs image observations of shape H x W x C, C x H x W or H x W; the env gives {shape}. "
            "Use model.encoder=flat, or reshape the observations with a wrapper.")
    a, b, c = shape
    if layout == "auto":
        if a == b != c or (a != b != c != a and c <= 4 < a):
            layout = "channels_last"
        elif b == c != a or (a != b != c != a and a <= 4 < c):
            layout = "channels_first"
        else:
            raise ConfigError(
                f"model.image_layout: auto cannot tell which side of {key}'s {a}x{b}x{c} frames holds the channels "
                f"(it reads them only beside two equal sides, or at an end of at most 4). Set model.image_layout to "
                f"channels_last ({a}x{b} frames of {c} channels) or channels_first ({b}x{c} frames of {a}).")
    if layout == "channels_last":
        return (c, a, b), True
    return (a, b, c), False


def frame_scale(space: gym.spaces.Box) -> "float | np.ndarray":
    """Returns what a ``uint8`` image is multiplied by to lie in ``[0, 1]``: ``1 / high``, one number when every
    pixel's upper bound is the same (255, or MinAtar's 1), else per element (an upper bound of 0 leaves its element
    as it is); float images are taken as already scaled (1)."""
    if space.dtype != np.uint8:
        return 1.0
    high = np.asarray(space.high, np.float64)
    if (high == high.flat[0]).all():
        return 1.0 / float(high.flat[0]) if high.flat[0] > 0 else 1.0
    return np.where(high > 0, 1.0 / np.maximum(high, 1.0), 1.0).astype(np.float32)


class FlatEncoder(nn.Module):
    """Flattens a Box to floats (frames, ``uint8`` images of bounds 0 to 255, scaled to ``[0, 1]`` as the CNNs
    scale them; other ``uint8`` Boxes, such as counts or RAM, as they are) and one-hot encodes a Discrete."""

    def __init__(self, space: gym.Space, key: str = "data.env_id") -> None:
        super().__init__()
        self.scale: Optional[float] = None
        if isinstance(space, gym.spaces.Box):
            self.one_hot = 0
            self.out_dim = int(np.prod(space.shape))
            frames = is_image(space) and (space.low == 0).all() and (space.high == 255).all()
            self.scale = 1 / 255 if frames else None
        elif isinstance(space, gym.spaces.Discrete):
            self.one_hot = int(space.n)
            self.out_dim = int(space.n)
        else:
            raise ConfigError(
                f"{key}: observation space {space} is not supported by the networks; use an env with a Box, "
                "Discrete or Dict (of those) observation space, or flatten it with a gymnasium wrapper (e.g. "
                "gymnasium.wrappers.FlattenObservation) in a registered env."
            )

    def forward(self, obs: Tensor) -> Tensor:
        if self.one_hot:
            return nn.functional.one_hot(obs.long().reshape(-1), self.one_hot).float()
        x = obs.reshape(obs.shape[0], -1).float()
        return x * self.scale if self.scale is not None else x


class ImageEncoder(nn.Module):
    """Encodes image observations with a CNN: puts channels first, scales ``uint8`` to ``[0, 1]``, runs
    :attr:`body` and flattens. Subclasses build ``body`` from the channel count."""

    def __init__(self, space: gym.spaces.Box, key: str, layout: str = "auto") -> None:
        super().__init__()
        self.space = space  # the frames as the env gives them (what resume compares layouts on)
        (self.channels, self.height, self.width), self.channels_last = image_layout(space, key, layout)
        scale = frame_scale(space)
        self.scale: float = scale if isinstance(scale, float) else 1.0
        scales = None
        if not isinstance(scale, float):  # per element, laid out as the frames reach the body (C x H x W)
            scales = scale.reshape(self.height, self.width, self.channels).transpose(2, 0, 1) if self.channels_last \
                else scale.reshape(self.channels, self.height, self.width)
            scales = torch.as_tensor(np.ascontiguousarray(scales))[None]
        self.register_buffer("scales", scales, persistent=False)  # derived from the space: not in checkpoints
        self.body = self.make_body(self.channels)
        try:
            with torch.no_grad():
                self.out_dim = int(self.body(torch.zeros(1, self.channels, self.height, self.width)).numel())
        except RuntimeError as err:
            raise ConfigError(f"model.encoder: {type(self).__name__} cannot take {key}'s {self.height}x{self.width} "
                              f"frames ({err}); use larger frames, or model.encoder="
                              f"{'flat' if min(self.height, self.width) < 3 else 'minatar (or auto), or flat'}.") from None

    def make_body(self, channels: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, obs: Tensor) -> Tensor:
        x = obs.reshape(obs.shape[0], *((self.height, self.width, self.channels) if self.channels_last
                                        else (self.channels, self.height, self.width)))
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        x = x.float() * (self.scales if self.scales is not None else self.scale)
        return self.body(x).flatten(1)


class MinAtarCNN(ImageEncoder):
    """Implements MinAtar's network (Young & Tian 2019): one 3x3 convolution of stride 1, no padding, 16 channels,
    and a ReLU (a 10x10 frame gives 8x8x16 = 1024 features; the paper's 128-unit layer is
    ``model.hidden_sizes: [128]``). Orthogonal init, gain sqrt(2), as the other CNNs of CleanRL's PPO."""

    def make_body(self, channels: int) -> nn.Module:
        conv = nn.Conv2d(channels, 16, 3, stride=1)
        nn.init.orthogonal_(conv.weight, float(np.sqrt(2)))
        nn.init.zeros_(conv.bias)
        return nn.Sequential(conv, nn.ReLU())


class NatureCNN(ImageEncoder):
    """Implements the Nature DQN convolutions (Mnih et al. 2015): 32 8x8/4, 64 4x4/2, 64 3x3/1, ReLU after each;
    orthogonal init, gain sqrt(2), as CleanRL's ``ppo_atari.py``."""

    def make_body(self, channels: int) -> nn.Module:
        convs = [nn.Conv2d(channels, 32, 8, stride=4), nn.Conv2d(32, 64, 4, stride=2), nn.Conv2d(64, 64, 3, stride=1)]
        for conv in convs:
            nn.init.orthogonal_(conv.weight, float(np.sqrt(2)))
            nn.init.zeros_(conv.bias)
        return nn.Sequential(convs[0], nn.ReLU(), convs[1], nn.ReLU(), convs[2], nn.ReLU())


class ResidualBlock(nn.Module):
    """Computes ``x + conv(relu(conv(relu(x))))`` with 3x3 convolutions that keep the channel count."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.relu0, self.conv0 = nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
        self.relu1, self.conv1 = nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(self.relu1(self.conv0(self.relu0(x))))


class ImpalaCNN(ImageEncoder):
    """Implements the IMPALA CNN (Espeholt et al. 2018) as the PPG paper uses it: per stack (16, 32, 32 channels)
    a 3x3 convolution, a 3x3 max-pool of stride 2 and two residual blocks; a ReLU on the flattened output.
    PyTorch's default init, as CleanRL's ``ppg_procgen.py``."""

    channels_per_stack = (16, 32, 32)

    def make_body(self, channels: int) -> nn.Module:
        layers: list[nn.Module] = []
        for out in self.channels_per_stack:
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
                       ResidualBlock(out), ResidualBlock(out)]
            channels = out
        return nn.Sequential(*layers, nn.ReLU())


IMAGE_ENCODERS: dict[str, type[ImageEncoder]] = {"minatar": MinAtarCNN, "nature": NatureCNN, "impala": ImpalaCNN}


class DictEncoder(nn.Module):
    """Encodes each key of a Dict observation with its own encoder (see :func:`make_encoder`) and concatenates
    the features in the keys' order. Takes a dict of batched tensors, or the packed bytes of
    :class:`lit_rl.envs.wrappers.PackedDict` (what the rollouts carry), which it unpacks on its device."""

    def __init__(self, space: "gym.spaces.Dict | PackedDict", encoder: str, key: str, layout: str = "auto") -> None:
        super().__init__()
        self.packed = space if isinstance(space, PackedDict) else None
        spaces = (space.dict_space if isinstance(space, PackedDict) else space).spaces
        self.encoders = nn.ModuleDict({name: _leaf_encoder(sub, encoder, f"{key}[{name!r}]", strict=False,
                                                                 layout=layout)
                                       for name, sub in spaces.items()})
        self.out_dim = sum(e.out_dim for e in self.encoders.values())

    def forward(self, obs: Obs) -> Tensor:
        if not isinstance(obs, dict):
            assert self.packed is not None, "a DictEncoder of a Dict space takes a dict of tensors"
            obs = self.packed.unpack(obs)
        return torch.cat([enc(obs[name]) for name, enc in self.encoders.items()], -1)


def make_encoder(space: gym.Space, encoder: str = "auto", key: str = "data.env_id", layout: str = "auto") -> nn.Module:
    """Builds the encoder of ``space`` (its ``out_dim`` is its feature width), reading images by ``layout``
    (``model.image_layout``, :func:`image_layout`).

    ``auto`` gives images (:func:`is_image`: ``uint8``) a CNN by their size (:func:`auto_cnn`) and everything else
    :class:`FlatEncoder`; ``minatar``/``nature``/``impala`` name the CNN for every Box of rank 2 or 3 (a ``float``
    one is taken as already scaled); ``flat`` flattens everything. A Dict (or its
    :class:`~lit_rl.envs.wrappers.PackedDict`, as the datamodule gives it) gets one encoder per key by the same rule,
    the keys that are not images flat; outside a Dict a CNN asked for a space that is not an image is refused.

    """
    if encoder not in ENCODERS:
        raise ConfigError(f"model.encoder: {encoder!r} is not one of {list(ENCODERS)}.")
    if isinstance(space, (gym.spaces.Dict, PackedDict)):
        built: nn.Module = DictEncoder(space, encoder, key, layout)
    else:
        built = _leaf_encoder(space, encoder, key, strict=True, layout=layout)
    if layout != "auto" and not any(isinstance(m, ImageEncoder) for m in built.modules()):
        shown = f"a Dict of {list(space.spaces)}" if isinstance(space, gym.spaces.Dict) else (
            f"a {type(space).__name__} of shape {space.shape} and dtype {space.dtype}")
        raise ConfigError(f"model.image_layout: {layout!r} tells a CNN how to read image frames, and no CNN reads "
                          f"{key}'s observations ({shown}, model.encoder={encoder!r}); set model.image_layout to auto.")
    return built


def auto_cnn(space: gym.spaces.Box, key: str, layout: str = "auto") -> str:
    """Names the CNN ``auto`` gives an image: ``minatar`` for frames under :data:`SMALL_FRAME` pixels on their
    shorter side, ``impala`` otherwise."""
    _, height, width = image_layout(space, key, layout)[0]
    return "minatar" if min(height, width) < SMALL_FRAME else "impala"


def _leaf_encoder(space: gym.Space, encoder: str, key: str, strict: bool, layout: str = "auto") -> nn.Module:
    if isinstance(space, gym.spaces.Dict):
        raise ConfigError(f"{key}: nested Dict observations are not supported; flatten the inner Dict with a "
                          "gymnasium wrapper.")
    image_shaped = isinstance(space, gym.spaces.Box) and len(space.shape) in (2, 3)
    cnn = encoder != "flat" and (is_image(space) if encoder == "auto" else image_shaped)
    if not cnn:
        if strict and encoder in IMAGE_ENCODERS:
            raise ConfigError(f"model.encoder: {encoder!r} needs image observations (a Box of rank 2 or 3); {key} "
                              f"gives {space}. Use model.encoder=flat or auto.")
        return FlatEncoder(space, key)
    name = auto_cnn(space, key, layout) if encoder == "auto" else encoder  # type: ignore[arg-type]
    return IMAGE_ENCODERS[name](space, key, layout)  # type: ignore[arg-type]


def activation_elements(encoder: nn.Module, space: gym.Space) -> tuple[int, int]:
    """Returns ``(sum, largest)`` of the elements one observation's activations take in ``encoder``'s layers: what
    a training pass keeps for the backward pass, and the most an inference pass holds at once (besides its input)."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
             for m in encoder.modules() if isinstance(m, ResidualBlock) or not list(m.children())]
    try:
        with torch.no_grad():
            encoder(batch_of_one(space))
    finally:
        for h in hooks:
            h.remove()
    return sum(sizes), max(sizes, default=0)


def batch_of_one(space: gym.Space) -> Obs:
    """Builds a batch of one zero observation of ``space``, in the form the collector hands observations to the
    networks."""
    if isinstance(space, gym.spaces.Dict):
        return {name: batch_of_one(sub) for name, sub in space.spaces.items()}  # type: ignore[misc]
    dtype = torch.from_numpy(np.zeros(0, dtype=space.dtype or np.int64)).dtype
    return torch.zeros((1, *(space.shape or ())), dtype=dtype)


def check_encoder(space: gym.Space, encoder: str, key: str = "data.env_id", layout: str = "auto") -> nn.Module:
    """Raises a ConfigError naming the key when ``encoder`` cannot encode ``space``, and returns the encoder
    otherwise (built under a forked RNG, so checking draws nothing from the global one)."""

    with torch.random.fork_rng(devices=[]):
        return make_encoder(space, encoder, key, layout)
