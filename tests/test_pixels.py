"""Image observations: the CNN encoders (shapes, layouts, scaling, ownership), frames kept as uint8 from the
env to the networks, same-step autoreset, and a short fit on a small image task (tests.envs:Quadrant-v0)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import tests.envs  # noqa: F401  (registers Quadrant-v0)
from lit_rl.algos import PPG
from lit_rl.data.collector import Collector
from lit_rl.data.store import RolloutStore
from lit_rl.errors import ConfigError
from lit_rl.nets import ActorCritic, DictEncoder, FlatEncoder, ImpalaCNN, MinAtarCNN, NatureCNN, make_encoder
from lit_rl.nets.encoders import image_layout
from lit_rl.envs.wrappers import PackedDict
from tests.helpers import fit, grads_of, make

HWC = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)  # Procgen's frames
CHW = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)  # four stacked gray Atari frames
QUADRANT = dict(env_id="tests.envs:Quadrant-v0", num_envs=4, num_steps=16, total_timesteps=128, seed=3,
                eval_episodes=2)


def frames(space: gym.Space, n: int = 5, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *space.shape), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize("cls, space, width", [
    (ImpalaCNN, HWC, 32 * 8 * 8),  # three stride-2 pools: 64 -> 8
    (ImpalaCNN, CHW, 32 * 11 * 11),  # 84 -> 42 -> 21 -> 11
    (NatureCNN, CHW, 64 * 7 * 7),  # the DQN network's 3136
    (NatureCNN, HWC, 64 * 4 * 4),
])
def test_cnn_encoders_give_float_features_of_their_stated_width(cls, space, width):
    encoder = cls(space, "data.env_id")
    out = encoder(frames(space))
    assert encoder.out_dim == width
    assert out.shape == (5, width) and out.dtype == torch.float32
    assert (out >= 0).all()  # a ReLU ends both


@pytest.mark.parametrize("cls", [ImpalaCNN, NatureCNN])
def test_channels_last_frames_are_read_as_the_same_image_channels_first(cls):
    """A layout mix-up (Procgen's H x W x C read as C x H x W) scrambles every frame; with the same weights, an
    encoder of channels-last frames must see exactly what one of the channels-first transposes sees."""
    last = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    first = gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)
    torch.manual_seed(0)
    a, b = cls(last, "k"), cls(first, "k")
    b.load_state_dict(a.state_dict())
    x = frames(last)
    torch.testing.assert_close(a(x), b(x.permute(0, 3, 1, 2).contiguous()))  # up to the convolution's rounding


def test_uint8_frames_are_scaled_to_unit_range_and_float_images_are_not():
    torch.manual_seed(0)
    encoder = ImpalaCNN(HWC, "k")
    x = frames(HWC)
    expected = encoder.body(x.permute(0, 3, 1, 2).float() / 255).flatten(1)
    torch.testing.assert_close(encoder(x), expected)
    floats = ImpalaCNN(gym.spaces.Box(0.0, 1.0, (64, 64, 3), np.float32), "k")
    floats.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(floats(x.float() / 255), expected)


def test_the_flat_encoder_scales_uint8_to_unit_range_and_passes_floats_unchanged():
    """``model.encoder: flat`` on frames scales them as the CNNs do, alone or as a Dict's key; a float Box (every
    vector env's) and a uint8 Box that is not a frame come out exactly as they went in, flattened."""
    x = frames(HWC)
    scaled = x.reshape(5, -1).float() / 255
    torch.testing.assert_close(FlatEncoder(HWC)(x), scaled)
    floats = torch.randn(5, 3, 4) * 100
    assert torch.equal(FlatEncoder(gym.spaces.Box(-np.inf, np.inf, (3, 4), np.float32))(floats), floats.reshape(5, -1))
    space = gym.spaces.Dict({"image": HWC, "vector": gym.spaces.Box(-1.0, 1.0, (3,), np.float32)})
    vector = torch.randn(5, 3)
    features = make_encoder(space, "flat")({"image": x, "vector": vector})
    image_features, vector_features = features.split([64 * 64 * 3, 3], -1)
    torch.testing.assert_close(image_features, scaled)
    assert torch.equal(vector_features, vector)
    # uint8 that are not frames (counts, a RAM vector) come out as they are.
    counts = torch.randint(0, 11, (5, 4, 4), dtype=torch.uint8)
    assert torch.equal(FlatEncoder(gym.spaces.Box(0, 10, (4, 4), np.uint8))(counts), counts.reshape(5, -1).float())
    ram = torch.randint(0, 256, (5, 128), dtype=torch.uint8)
    assert torch.equal(FlatEncoder(gym.spaces.Box(0, 255, (128,), np.uint8))(ram), ram.float())


def test_auto_picks_a_cnn_for_uint8_images_only_and_bad_choices_are_refused():
    assert isinstance(make_encoder(HWC), ImpalaCNN)
    assert isinstance(make_encoder(CHW, "nature"), NatureCNN)
    assert isinstance(make_encoder(gym.spaces.Box(-1.0, 1.0, (8, 8, 3), np.float32)), FlatEncoder)
    assert isinstance(make_encoder(gym.spaces.Box(-1.0, 1.0, (4,), np.float32)), FlatEncoder)
    assert isinstance(make_encoder(HWC, "flat"), FlatEncoder)
    with pytest.raises(ConfigError, match=r"model\.encoder: 'nature' needs image observations"):
        make_encoder(gym.spaces.Box(-1.0, 1.0, (4,), np.float32), "nature")
    with pytest.raises(ConfigError, match=r"model\.encoder: NatureCNN cannot take data\.env_id's 16x16 frames"):
        make_encoder(gym.spaces.Box(0, 255, (16, 16, 3), np.uint8), "nature")
    with pytest.raises(ConfigError, match=r"model\.encoder: 'resnet' is not one of"):
        PPG(encoder="resnet")
    with pytest.raises(ConfigError, match=r"model\.image_layout: auto cannot tell which side of data\.env_id.s 8x64x8"):
        make_encoder(gym.spaces.Box(0, 255, (8, 64, 8), np.uint8))
    assert make_encoder(gym.spaces.Box(0, 255, (8, 84, 84), np.uint8), "nature").channels == 8  # 8 stacked frames


@pytest.mark.parametrize("arch", ["separate", "shared", "detach"])
def test_each_loss_reaches_the_encoder_its_network_owns(arch):
    """In ``separate`` the actor and the critic have a CNN each: the value loss must not train the actor's and
    the policy loss must not train the critic's. In ``shared``/``detach`` the one CNN is the actor's (so the
    critic optimizer never steps it); the value loss reaches it in ``shared`` only."""
    torch.manual_seed(0)
    agent = ActorCritic(HWC, gym.spaces.Discrete(15), [32], "relu", arch)
    actor_cnn = set(map(id, agent.policy_encoder.parameters()))
    assert actor_cnn and actor_cnn <= set(map(id, agent.actor_parameters()))
    assert not actor_cnn & set(map(id, agent.critic_parameters()))
    if arch == "separate":
        assert agent.value_encoder is not None
        assert set(map(id, agent.value_encoder.parameters())) <= set(map(id, agent.critic_parameters()))
    else:
        assert agent.value_encoder is None
    x = frames(HWC)
    agent.value(x).sum().backward()
    assert any(grads_of(agent.policy_encoder.parameters())) == (arch == "shared")
    if arch == "separate":
        assert all(grads_of(agent.value_encoder.parameters()))
    agent.zero_grad(set_to_none=True)
    agent.dist(x).log_prob(torch.zeros(5, dtype=torch.long)).sum().backward()
    assert all(grads_of(agent.policy_encoder.parameters()))
    if arch == "separate":
        assert not any(grads_of(agent.value_encoder.parameters()))


def test_frames_stay_uint8_from_the_env_to_the_ppg_store(tmp_path):
    """A rollout's and PPG's stored frames are the env's bytes (16 x 16 x 3 = 768 per frame), not
    floats four times their size; the store holds exactly what the byte formula says."""
    space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    module, dm = make({"n_pi": 3, "aux_epochs": 1, "hidden_sizes": [16]}, QUADRANT, cls=PPG)
    fit(module, dm, tmp_path)  # 2 iterations: the store holds 2 rollouts
    assert [r["obs"].dtype for r in module.store.rollouts] == [torch.uint8, torch.uint8]
    assert module.store.nbytes == RolloutStore.store_bytes(2, 4, 16, space)
    assert RolloutStore.store_bytes(1, 1, 1, space) == 768 + 8 + 768 + 1


def test_same_step_autoreset_keeps_every_step_and_starts_the_next_episode_at_once():
    """Procgen resets an env in the step that ends its episode. Every step is then a transition (none is the
    skipped autoreset step of next-step mode) and the next observation starts a new episode."""
    envs = gym.make_vec("tests.envs:Quadrant-v0", num_envs=2, vectorization_mode="sync", length=3,
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    module, _ = make({"hidden_sizes": [16]})
    module.build(envs.single_observation_space, envs.single_action_space)
    collector = Collector(envs)
    collector.reset(seed=0)
    rollout = collector.collect(module, 9, 18, 0)
    assert rollout.valid.all()
    assert rollout.terminated[:, 0].tolist() == [False, False, True] * 3
    assert rollout.starts[:, 0].tolist() == [True, False, False] * 3
    assert rollout.obs.dtype == torch.uint8
    assert len(rollout.episode_returns) == 6  # 3 whole episodes per env
    per_episode = rollout.rewards.T.reshape(2, 3, 3).sum(-1).flatten().sort().values
    assert torch.equal(per_episode, rollout.episode_returns.sort().values)


def test_a_same_step_truncation_is_refused_rather_than_bootstrapped_from_the_next_episode():
    envs = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync", max_episode_steps=4,
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    module, _ = make()
    module.build(envs.single_observation_space, envs.single_action_space)
    collector = Collector(envs)
    collector.reset(seed=0)
    with pytest.raises(RuntimeError, match="truncated an episode"):
        collector.collect(module, 8, 16, 0)


def test_normalizing_image_observations_is_refused_before_training():
    module, dm = make({"hidden_sizes": [16]}, {**QUADRANT, "normalize_observation": True})
    with pytest.raises(ConfigError, match=r"data\.normalize_observation: .*uint8"):
        dm.setup("fit")


def test_a_dict_observation_travels_packed_and_reaches_each_keys_encoder_exactly():
    """A Dict observation (an image and a float vector, plus a Discrete) is carried as its bytes; unpacked on the
    device, every key must come back bit for bit in its own dtype and shape, and feed its own encoder."""
    space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
                             "hint": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                             "room": gym.spaces.Discrete(5)})
    packed = PackedDict(space)
    assert packed.shape == (2 * 4 + 16 * 16 * 3 + 8,) and packed.dtype == np.uint8
    space.seed(0)
    batch = [space.sample() for _ in range(6)]
    obs = {key: np.stack([b[key] for b in batch]) for key in space.spaces}
    back = packed.unpack(torch.as_tensor(packed.pack(obs)))
    for key, value in obs.items():
        assert torch.equal(back[key], torch.as_tensor(value)), key

    # A key of an odd byte count before a float64 one, unpacked from single rows (as a collector's step of one env
    # or a row of a larger batch gives them): every key must still start where its dtype can be read.
    odd = gym.spaces.Dict({"a": gym.spaces.Box(0, 255, (3,), np.uint8), "b": gym.spaces.Box(-1.0, 1.0, (2,), np.float64)})
    odd_packed = PackedDict(odd)
    odd.seed(1)
    rows = [odd.sample() for _ in range(3)]
    odd_obs = {key: np.stack([r[key] for r in rows]) for key in odd.spaces}
    whole = torch.as_tensor(odd_packed.pack(odd_obs))
    # PPG's memory estimate counts a Dict at its packed size, padding included (3 + 5 + 16 = 24 bytes).
    assert RolloutStore.store_bytes(1, 1, 1, odd) == RolloutStore.store_bytes(1, 1, 1, odd_packed) == (24 + 8) + (24 + 1)
    for rows_taken in (slice(0, 1), slice(1, 2), slice(1, 3), slice(0, 3)):
        back = odd_packed.unpack(whole[rows_taken])
        for key in odd.spaces:
            assert torch.equal(back[key], torch.as_tensor(odd_obs[key][rows_taken])), key
    torch.manual_seed(0)
    encoder = make_encoder(packed)
    assert isinstance(encoder, DictEncoder)
    assert isinstance(encoder.encoders["image"], MinAtarCNN) and isinstance(encoder.encoders["hint"], FlatEncoder)
    expected = torch.cat([encoder.encoders[k](torch.as_tensor(obs[k])) for k in ("hint", "image", "room")], -1)
    assert torch.equal(encoder(torch.as_tensor(packed.pack(obs))), expected)


def test_a_dict_observation_env_trains_with_its_frames_kept_as_bytes(tmp_path):
    module, dm = make({"n_pi": 3, "aux_epochs": 1, "hidden_sizes": [16]}, {**QUADRANT, "env_kwargs": {"hint": True}},
                      cls=PPG)
    fit(module, dm, tmp_path)
    assert module.store.rollouts[0]["obs"].shape == (16, 4, 16 * 16 * 3 + 2 * 4)
    assert module.store.rollouts[0]["obs"].dtype == torch.uint8
    assert isinstance(module.agent.policy_encoder, DictEncoder) and isinstance(module.agent.value_encoder, DictEncoder)
    assert isinstance(module.agent.policy_encoder.packed, PackedDict)
    with pytest.raises(ConfigError, match=r"data\.normalize_observation: .*Dict"):
        make({}, {**QUADRANT, "env_kwargs": {"hint": True}, "normalize_observation": True})[1].setup("fit")
    # Hiding components is for flat vectors: of a Dict it would hide bytes of the packed keys.
    with pytest.raises(ConfigError, match=r"data\.hide_observation: needs a 1-D Box .*Dict"):
        make({}, {**QUADRANT, "env_kwargs": {"hint": True}, "hide_observation": [0]})[1].setup("fit")


@pytest.mark.parametrize("shape, expected", [
    ((64, 64, 3), ((3, 64, 64), True)),     # Procgen
    ((4, 84, 84), ((4, 84, 84), False)),    # stacked Atari frames
    ((10, 10, 4), ((4, 10, 10), True)),     # MinAtar Breakout
    ((7, 7, 12), ((12, 7, 7), True)),       # MiniGrid 7x7x3 stacked 4 times (once read as C=7, H=7, W=12)
    ((20, 11, 11), ((20, 11, 11), False)),  # Griddly's one-hot grid (once read as channels last)
    ((210, 160, 3), ((3, 210, 160), True)),  # a raw Atari frame
    ((3, 210, 160), ((3, 210, 160), False)),
    ((16, 16), ((1, 16, 16), False)),       # gray
])
def test_auto_layout_reads_the_channels_where_the_shape_leaves_no_doubt(shape, expected):
    assert image_layout(gym.spaces.Box(0, 255, shape, np.uint8), "k") == expected


@pytest.mark.parametrize("shape", [(10, 10, 10), (7, 9, 12), (8, 64, 8), (12, 30, 40), (40, 30, 12)])
def test_auto_layout_refuses_what_it_cannot_tell_and_the_setting_decides(shape):
    """MinAtar Seaquest's 10x10x10 cube, a 7x9x12 grid, equal ends, no end of at most 4: refused by auto, naming
    model.image_layout and both readings; each explicit setting reads the shape its way."""
    space = gym.spaces.Box(0, 255, shape, np.uint8)
    a, b, c = shape
    with pytest.raises(ConfigError, match=rf"model\.image_layout: auto cannot tell which side of k's {a}x{b}x{c} "
                                          rf"frames .* channels_last \({a}x{b} frames of {c} channels\) or "
                                          rf"channels_first \({b}x{c} frames of {a}\)"):
        image_layout(space, "k")
    assert image_layout(space, "k", "channels_last") == ((c, a, b), True)
    assert image_layout(space, "k", "channels_first") == ((a, b, c), False)


def test_the_layout_setting_reaches_the_networks_and_bad_values_are_refused_early():
    """model.image_layout builds the CNN for the channels it names (in both networks of separate), and overrides
    auto even where auto could read the shape; a value that is not a layout fails when the module is configured."""
    square = gym.spaces.Box(0, 1, (10, 10, 4), np.uint8)
    agent = ActorCritic(square, gym.spaces.Discrete(6), hidden_sizes=[8], image_layout="channels_first")
    for encoder in (agent.policy_encoder, agent.value_encoder):
        assert (encoder.channels, encoder.height, encoder.width, encoder.channels_last) == (10, 10, 4, False)
    auto = ActorCritic(square, gym.spaces.Discrete(6), hidden_sizes=[8])
    assert (auto.policy_encoder.channels, auto.policy_encoder.channels_last) == (4, True)
    with pytest.raises(ConfigError, match=r"model\.image_layout: 'nhwc' is not one of"):
        PPG(image_layout="nhwc")
    with pytest.raises(ConfigError, match=r"model\.image_layout: 'nhwc' is not one of"):
        make_encoder(square, layout="nhwc")


def test_auto_gives_small_frames_the_minatar_network_and_scales_frames_by_their_bounds():
    """Frames under 32 pixels a side get MinAtar's network (one 3x3 convolution, 16 channels, no padding: 8x8x16
    features for 10x10), larger ones IMPALA's; 0/1 frames (MinAtar's) reach it unscaled, 0-255 ones divided by 255.
    Guards: a small task given two IMPALA CNNs (57 env steps/s on a 24x24 frame), MinAtar's 0/1 frames
    divided by 255 (features 255 times too small)."""
    minatar = gym.spaces.Box(0, 1, (10, 10, 4), np.uint8)
    encoder = make_encoder(minatar)
    assert isinstance(encoder, MinAtarCNN) and encoder.out_dim == 8 * 8 * 16
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].out_channels == 16
    assert convs[0].padding == (0, 0) and convs[0].stride == (1, 1)
    x = torch.randint(0, 2, (5, 10, 10, 4), dtype=torch.uint8)
    torch.testing.assert_close(encoder(x), encoder.body(x.permute(0, 3, 1, 2).float()).flatten(1))
    assert isinstance(make_encoder(gym.spaces.Box(0, 255, (31, 31, 3), np.uint8)), MinAtarCNN)
    assert isinstance(make_encoder(gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)), ImpalaCNN)
    assert isinstance(make_encoder(gym.spaces.Box(0, 255, (24, 64, 3), np.uint8)), MinAtarCNN)  # the shorter side
    assert isinstance(make_encoder(CHW), ImpalaCNN) and isinstance(make_encoder(CHW, "minatar"), MinAtarCNN)
    frames_255 = make_encoder(gym.spaces.Box(0, 255, (12, 12, 3), np.uint8))
    y = torch.randint(0, 256, (5, 12, 12, 3), dtype=torch.uint8)
    torch.testing.assert_close(frames_255(y), frames_255.body(y.permute(0, 3, 1, 2).float() / 255).flatten(1))


def test_frames_of_mixed_bounds_are_scaled_per_element_and_a_layout_no_cnn_reads_is_refused():
    """A uint8 frame whose channels have other upper bounds (two 0/1 masks and a 0-255 image) is scaled per
    element, each channel to [0, 1]; an explicit model.image_layout where no CNN reads the observations (a flat
    encoder, a vector) cannot take effect, and is refused, naming the key. Dict keys follow the layout set."""
    high = np.stack([np.ones((10, 12)), np.ones((10, 12)), np.full((10, 12), 255)], -1).astype(np.uint8)
    mixed = gym.spaces.Box(np.zeros_like(high), high, dtype=np.uint8)
    encoder = make_encoder(mixed)
    x = torch.randint(0, 256, (3, 10, 12, 3), dtype=torch.uint8)
    x[..., :2] = x[..., :2] % 2
    scaled = x.permute(0, 3, 1, 2).float() * torch.tensor([1.0, 1.0, 1 / 255]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(encoder(x), encoder.body(scaled).flatten(1))
    assert "scales" not in encoder.state_dict()  # derived from the space, not saved
    with pytest.raises(ConfigError, match=r"model\.image_layout: 'channels_last' tells a CNN .* set model\.image_layout to auto"):
        make_encoder(mixed, "flat", layout="channels_last")
    with pytest.raises(ConfigError, match=r"model\.image_layout: 'channels_first'"):
        ActorCritic(gym.spaces.Box(-1.0, 1.0, (4,), np.float32), gym.spaces.Discrete(2), image_layout="channels_first")
    cube = gym.spaces.Box(0, 1, (10, 10, 10), np.uint8)
    both = gym.spaces.Dict({"grid": cube, "vector": gym.spaces.Box(-1.0, 1.0, (3,), np.float32)})
    with pytest.raises(ConfigError, match=r"model\.image_layout: auto cannot tell .* data\.env_id\['grid'\]"):
        make_encoder(both)
    grid = make_encoder(both, layout="channels_first").encoders["grid"]
    assert (grid.channels, grid.channels_last) == (10, False)


def test_ppg_s_memory_check_reads_frames_by_the_layout_set():
    """PPG estimates its auxiliary phase's memory from the encoder it will build: with Seaquest's 10x10x10 frames
    that is only possible with the layout the run sets."""
    cube = gym.spaces.Box(0, 1, (10, 10, 10), np.uint8)
    with pytest.raises(ConfigError, match=r"model\.image_layout: auto cannot tell"):
        PPG(n_pi=2).check_memory(4, 16, cube, gym.spaces.Discrete(6))
    assert PPG(n_pi=2, image_layout="channels_last").check_memory(4, 16, cube, gym.spaces.Discrete(6)) > 0


def test_resume_takes_another_name_for_the_same_networks_and_refuses_other_networks(tmp_path):
    """A checkpoint from before auto chose by frame size (encoder auto, no image_layout: IMPALA on any image)
    resumes with encoder impala, the networks it has; with auto, now MinAtar's network on 16x16 frames, it is
    refused. A layout that reads the frames as the checkpoint's auto did resumes; the other one is refused."""
    module, dm = make({"encoder": "impala", "hidden_sizes": [16]}, QUADRANT)
    fit(module, dm, tmp_path / "a")
    saved = torch.load(tmp_path / "a" / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    saved["hyper_parameters"]["encoder"] = "auto"
    del saved["hyper_parameters"]["image_layout"]
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    more = dict(QUADRANT, total_timesteps=192)
    module2, dm2 = make({"encoder": "impala", "hidden_sizes": [16]}, more)
    fit(module2, dm2, tmp_path / "b", ckpt_path=str(old))
    assert module2.resume.env_steps == 128
    module3, dm3 = make({"hidden_sizes": [16]}, more)
    with pytest.raises(ConfigError, match=r"ckpt_path: the checkpoint's networks do not match"):
        fit(module3, dm3, tmp_path / "c", ckpt_path=str(old))
    new = str(tmp_path / "a" / "ckpt" / "last.ckpt")  # encoder impala, image_layout auto: 16x16x3 channels last
    module4, dm4 = make({"encoder": "impala", "hidden_sizes": [16], "image_layout": "channels_last"}, more)
    fit(module4, dm4, tmp_path / "d", ckpt_path=new)
    module5, dm5 = make({"encoder": "impala", "hidden_sizes": [16], "image_layout": "channels_first"}, more)
    with pytest.raises(ConfigError, match=r"model\.image_layout: the checkpoint .* image_layout='auto'"):
        fit(module5, dm5, tmp_path / "e", ckpt_path=new)
