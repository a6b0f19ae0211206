"""The VLA actor-critic network: shapes, language robustness, SB3 compatibility, InfoNCE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from stable_baselines3.common.preprocessing import preprocess_obs

from vla_gym.agents.network import (
    LEGACY_VOCABULARY,
    TARGET_OFFSET_SCALE,
    VOCABULARY,
    NetworkConfig,
    Tokenizer,
    VLAActorCriticPolicy,
    info_nce,
)
from vla_gym.envs.language import encode_instruction
from vla_gym.envs.spaces import make_action_space, make_observation_space
from vla_gym.envs.tasks import TASKS

SMALL = {"channels": [8, 16, 16], "features_dim": 32, "net_arch": {"pi": [32], "vf": [32]}}


def make_policy(image_size: int = 84, network: dict | None = None) -> VLAActorCriticPolicy:
    return VLAActorCriticPolicy(
        make_observation_space(image_size), make_action_space(), lambda _: 1e-3, network=network or SMALL
    )


def random_obs(batch: int, texts: list[str] | None = None, image_size: int = 84, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    texts = texts or ["pick up the red cube"] * batch
    return {
        "rgb": torch.from_numpy(rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)),
        "depth": torch.from_numpy(rng.uniform(0.5, 1.5, (batch, image_size, image_size, 1)).astype(np.float32)),
        "proprio": torch.from_numpy(rng.uniform(-0.5, 0.5, (batch, 8)).astype(np.float32)),
        "instruction": torch.from_numpy(np.stack([encode_instruction(t) for t in texts])),
    }


def test_forward_backward_shapes():
    policy = make_policy()
    obs = random_obs(5)
    actions = torch.rand(5, 4) * 2 - 1
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    assert values.shape == (5, 1) and log_prob.shape == (5,) and entropy.shape == (5,)
    (-log_prob.mean() + values.square().mean()).backward()
    grads = {n: p.grad for n, p in policy.named_parameters()}
    assert grads["log_std"] is not None and grads["log_std"].shape == (4,)
    for name in ("features_extractor.convs.0.weight", "features_extractor.language.embed.weight", "value_net.weight"):
        assert grads[name] is not None and torch.isfinite(grads[name]).all() and grads[name].abs().sum() > 0
    features = policy.extract_features(obs, policy.features_extractor)
    assert features.shape == (5, SMALL["features_dim"])


def test_mean_is_tanh_bounded_and_log_std_learned():
    policy = make_policy()
    with torch.no_grad():
        policy.action_net[0].bias.fill_(50.0)  # a huge pre-activation still gives a mean inside [-1, 1]
    mean = policy.get_distribution(random_obs(3)).distribution.mean
    assert torch.all(mean <= 1.0) and torch.all(mean >= -1.0)
    assert policy.log_std.requires_grad
    torch.testing.assert_close(policy.log_std.detach(), torch.full((4,), NetworkConfig().log_std_init))


def test_channel_first_observations_give_the_same_features():
    """SB3's VecTransposeImage hands the policy (C, H, W) images; the features must not change."""
    hwc = make_policy()
    space = make_observation_space(84)
    from gymnasium import spaces

    chw_space = spaces.Dict(
        {**space.spaces, "rgb": spaces.Box(0, 255, (3, 84, 84), np.uint8)}
    )
    chw = VLAActorCriticPolicy(chw_space, make_action_space(), lambda _: 1e-3, network=SMALL)
    chw.load_state_dict(hwc.state_dict())
    obs = random_obs(2)
    obs_chw = {**obs, "rgb": obs["rgb"].permute(0, 3, 1, 2)}
    with torch.no_grad():
        a = hwc.extract_features(obs, hwc.features_extractor)
        b = chw.extract_features(obs_chw, chw.features_extractor)
    torch.testing.assert_close(a, b)


def _language(policy, texts):
    extractor = policy.features_extractor
    instruction = random_obs(len(texts), texts)["instruction"].float()
    with torch.no_grad():
        return extractor.language(extractor.tokenizer(instruction))


@pytest.mark.parametrize("context", ["bag", "gru"])
def test_unknown_words_change_nothing_and_colours_steer(context):
    # Seeded: with some random attention scores (3 start states in 40) nearly all the weight
    # goes to other words, and red and blue then differ by less than allclose's tolerance.
    torch.manual_seed(0)
    policy = make_policy(network={**SMALL, "word_context": context})
    torch.nn.init.normal_(policy.features_extractor.language.score.weight)  # non-uniform attention
    base, noisy, shouting, repeated, other = _language(
        policy,
        [
            "pick up the red cube",
            "kindly pick up the red cube, thanks!",
            "PICK UP THE RED CUBE",
            "pick up the red cube off the table, the red cube",
            "pick up the blue cube",
        ],
    )
    torch.testing.assert_close(base, noisy)
    torch.testing.assert_close(base, shouting)
    if context == "bag":
        torch.testing.assert_close(base, repeated)  # a repeated known word counts once
    else:
        assert not torch.allclose(base, repeated)  # in order, repeats and all
    assert not torch.allclose(base, other)
    nothing_known = _language(policy, ["xyzzy plugh"])[0]
    assert torch.isfinite(nothing_known).all()


def test_word_order_tells_roles_apart_in_a_gru_not_in_a_bag():
    """Stack, place and spatial pick name two objects: only the order says which is which."""
    texts = ["stack the red cube on the blue cube", "stack the blue cube on the red cube"]
    bag = _language(make_policy(network={**SMALL, "word_context": "bag"}), texts)
    torch.testing.assert_close(bag[0], bag[1])
    gru = _language(make_policy(network={**SMALL, "word_context": "gru"}), texts)
    assert not torch.allclose(gru[0], gru[1])
    assert NetworkConfig().word_context == "gru"
    with pytest.raises(ValueError, match=r"word_context must be one of \['gru', 'bag'\]"):
        NetworkConfig(word_context="lstm")


def test_checkpoints_saved_before_word_context_load_as_a_bag(tmp_path):
    from vla_gym.agents.checkpoint import load_policy

    path = tmp_path / "old.pt"
    saved = _save_tiny(path, {**SMALL, "word_context": "bag"}, drop=("word_context",))
    loaded = load_policy(path, device="cpu")
    assert loaded.network_config.word_context == "bag"
    obs = random_obs(2, ["stack the red cube on the blue cube", "pick up the green ball"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.extract_features(obs, loaded.features_extractor),
                                   saved.extract_features(obs, saved.features_extractor))


def test_destination_read_out_is_optional_and_older_checkpoints_load_without_it(tmp_path):
    from vla_gym.agents.checkpoint import load_policy

    assert NetworkConfig().destination_head is False
    with pytest.raises(ValueError, match="destination_head must be true or false"):
        NetworkConfig(destination_head="yes")
    assert make_policy(network=SMALL).features_extractor.destination_head is None
    with_head = make_policy(network={**SMALL, "destination_head": True}).features_extractor
    with with_head.keeping_auxiliary():
        with_head(random_obs(2))
    assert with_head.keep_auxiliary is False
    assert with_head.pop_auxiliary()["destination_offset"].shape == (2, 3)
    path = tmp_path / "old.pt"
    saved = _save_tiny(path, {**SMALL, "destination_head": False}, drop=("destination_head",))
    loaded = load_policy(path, device="cpu")
    assert loaded.network_config.destination_head is False and loaded.features_extractor.destination_head is None
    obs = random_obs(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.extract_features(obs, loaded.features_extractor),
                                   saved.extract_features(obs, saved.features_extractor))


def test_fovea_window_holds_the_image_pixels_around_its_centre():
    from vla_gym.agents.network import Fovea

    size, image_size = 5, 84
    rows, cols = torch.meshgrid(torch.arange(84.0), torch.arange(84.0), indexing="ij")
    image = torch.stack([rows, cols])[None].repeat(2, 1, 1, 1)  # (2, 2, 84, 84): each pixel's row and column
    pixels = torch.tensor([[30.0, 40.0], [1.0, 82.0]])  # (column, row) of each window's centre
    centre = pixels * 2 / (image_size - 1) - 1  # image coordinates, pixel centres at +-1
    window = Fovea(size, image_size, key_dim=4).sample([image], centre)
    assert window.shape == (2, 2, size, size)
    offsets = torch.arange(size) - size // 2
    torch.testing.assert_close(window[0, 0], (40 + offsets)[:, None].float().expand(size, size))
    torch.testing.assert_close(window[0, 1], (30 + offsets)[None, :].float().expand(size, size))
    # Outside the image (row 84, column -1) the window is zeros; inside, the image.
    assert window[1, :, 4].abs().max() < 1e-3 and window[1, :, :, 0].abs().max() < 1e-3
    torch.testing.assert_close(window[1, 0, :4, 1:], (82 + offsets[:4])[:, None].float().expand(4, 4))
    torch.testing.assert_close(window[1, 1, :4, 1:], (1 + offsets[1:])[None, :].float().expand(4, 4))


def test_table_plane_maps_the_image_back_onto_the_table():
    from vla_gym.agents.network import TablePlane, table_homography
    from vla_gym.data.dataset import image_coordinates
    from vla_gym.envs.scene import OBJECT_HALF_SIZE
    from vla_gym.envs.spaces import AGENT_CAMERA

    rng = np.random.default_rng(0)
    world = np.column_stack([rng.uniform(0.3, 0.8, 20), rng.uniform(-0.4, 0.4, 20), np.full(20, OBJECT_HALF_SIZE)])
    uv = torch.from_numpy(image_coordinates(world, 84, AGENT_CAMERA))
    plane = TablePlane(table_homography(84))
    torch.testing.assert_close(plane(uv), torch.from_numpy(world[:, :2]).float(), atol=1e-4, rtol=0)
    # A point above the plane lands elsewhere: the map is for resting objects' centres.
    raised = image_coordinates(world + [0, 0, 0.1], 84, AGENT_CAMERA)
    assert (plane(torch.from_numpy(raised)) - torch.from_numpy(world[:, :2]).float()).norm(dim=1).min() > 0.02


def test_fovea_refines_the_attention_and_is_trained_by_the_where_loss(tmp_path):
    from vla_gym.agents.checkpoint import load_policy
    from vla_gym.agents.privileged import auxiliary_losses

    assert NetworkConfig().fovea == 0 and make_policy().features_extractor.fovea is None
    for value, message in ((2, "fovea must be 0"), (64, r"fovea must be an int in \[0, 32\]"), ("16", "fovea")):
        with pytest.raises(ValueError, match=message):
            NetworkConfig(fovea=value)
    size = 12
    policy = make_policy(network={**SMALL, "fovea": size})
    extractor = policy.features_extractor
    with extractor.keeping_auxiliary():
        extractor(random_obs(3))
    aux = extractor.pop_auxiliary()
    # The fine estimate lies in the window around the attention's estimate.
    reach = (size - 1) / 2 * 2 / 83
    assert aux["where_fine"].shape == (3, 2)
    assert ((aux["where_fine"] - aux["where"][:, 0]).abs() <= reach + 1e-6).all()
    # The table-plane offset is the fine estimate's point on the table minus the gripper's (x, y).
    obs = random_obs(3)
    with torch.no_grad(), extractor.keeping_auxiliary():
        extractor(obs)
    aux = extractor.pop_auxiliary()
    expected = (extractor.table_plane(aux["where_fine"]) - obs["proprio"][:, :2]) / TARGET_OFFSET_SCALE
    torch.testing.assert_close(aux["plane_offset"], expected)
    with extractor.keeping_auxiliary():
        extractor(obs)
    aux = extractor.pop_auxiliary()
    offset_loss, where_loss = auxiliary_losses(aux, torch.zeros(3, 3), torch.zeros(3, 2))
    (offset_loss + where_loss).backward()
    for name in ("conv1.weight", "conv2.weight", "key.weight", "log_temperature"):
        grad = dict(extractor.fovea.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert extractor.table_plane.homography.grad.abs().sum() > 0
    # A checkpoint saved before the field loads without a fovea; one with a fovea round-trips.
    _save_tiny(tmp_path / "old.pt", SMALL, drop=("fovea",))
    assert load_policy(tmp_path / "old.pt", device="cpu").features_extractor.fovea is None
    saved = _save_tiny(tmp_path / "fovea.pt", {**SMALL, "fovea": size})
    loaded = load_policy(tmp_path / "fovea.pt", device="cpu")
    assert loaded.network_config.fovea == size
    obs = random_obs(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.extract_features(obs, loaded.features_extractor),
                                   saved.extract_features(obs, saved.features_extractor))


def test_keeping_auxiliary_resets_its_flag_even_when_the_forward_pass_fails():
    extractor = make_policy(network=SMALL).features_extractor
    with pytest.raises(KeyError):
        with extractor.keeping_auxiliary():
            assert extractor.keep_auxiliary is True
            extractor({})  # no observation keys
    assert extractor.keep_auxiliary is False
    extractor(random_obs(1))  # outside: nothing kept
    with pytest.raises(RuntimeError, match="keeping_auxiliary"):
        extractor.pop_auxiliary()


def test_checkpoints_holding_a_removed_option_load_when_it_was_off_and_are_refused_when_on(tmp_path):
    from vla_gym.agents.checkpoint import CheckpointError, load_policy

    off = tmp_path / "off.pt"
    saved = _save_tiny(off, SMALL, extra={"attention_depth": False})  # as commit 9672986 wrote them
    loaded = load_policy(off, device="cpu")
    obs = random_obs(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.extract_features(obs, loaded.features_extractor),
                                   saved.extract_features(obs, saved.features_extractor))
    on = tmp_path / "on.pt"
    _save_tiny(on, SMALL, extra={"attention_depth": True})
    with pytest.raises(CheckpointError, match="attention_depth=True is an option this version of vla_gym no longer"):
        load_policy(on, device="cpu")


def test_tokenizer_maps_unknown_words_to_one_id():
    tokenizer = Tokenizer()
    ids = tokenizer.encode_text("Elevate the RED orb, now!")
    words = [VOCABULARY[i] for i in ids if i > 0]
    assert words == ["<unk>", "the", "red", "<unk>", "<unk>"]


def test_sb3_preprocessing_path_matches_predict():
    """BC feeds raw env-format tensors through evaluate_actions; predict() must see the same."""
    policy = make_policy()
    policy.set_training_mode(False)
    obs = random_obs(1)
    numpy_obs = {k: v[0].numpy() for k, v in obs.items()}
    action, _ = policy.predict(numpy_obs, deterministic=True)
    with torch.no_grad():
        mean = policy.get_distribution(obs).distribution.mean[0].numpy()
    np.testing.assert_allclose(action, mean, rtol=1e-5, atol=1e-6)
    processed = preprocess_obs(obs, policy.observation_space)
    assert float(processed["rgb"].max()) <= 1.0


def test_ppo_drives_the_policy_unchanged(make_env):
    from stable_baselines3 import PPO

    env = make_env("VLAPickDense-v0")
    model = PPO(
        VLAActorCriticPolicy, env, n_steps=16, batch_size=8, n_epochs=1, policy_kwargs={"network": SMALL},
        device="cpu", seed=0,
    )
    model.learn(16)
    assert isinstance(model.policy, VLAActorCriticPolicy)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert action.shape == (4,)


def test_info_nce_hand_checked():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # cos(x0,y0)=1, cos(x0,y1)=1/sqrt2, cos(x1,y0)=0, cos(x1,y1)=1/sqrt2; logits = cos / 0.5.
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(2 * c)))
    row1 = -math.log(math.exp(2 * c) / (math.exp(0) + math.exp(2 * c)))
    col0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    col1 = -math.log(math.exp(2 * c) / (math.exp(2 * c) + math.exp(2 * c)))
    expected = 0.5 * ((row0 + row1) / 2 + (col0 + col1) / 2)
    assert float(info_nce(x, y, temperature=0.5)) == pytest.approx(expected, rel=1e-6)
    # Pairs marked as positives are not negatives: with all off-diagonal masked, the loss is 0.
    assert float(info_nce(x, y, 0.5, positives=torch.ones(2, 2, dtype=torch.bool))) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(x, y, temperature=0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": [8, 8]}, "channels"),
        ({"film_layers": 9}, "film_layers"),
        ({"net_arch": {"pi": [8]}}, "net_arch"),
        ({"word_dim": 0}, "word_dim"),
    ],
)
def test_bad_network_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**kwargs)


def test_cached_conditioning_matches_the_gradient_path_and_follows_weight_updates():
    """Without gradients the instruction's conditioning comes from a per-instruction cache;
    it must equal the uncached path, and an optimiser step must invalidate it."""
    policy = make_policy()
    extractor = policy.features_extractor
    obs = random_obs(3, ["pick up the red cube", "grab the blue sphere", "pick up the red cube"])
    fresh = extractor(obs).detach()
    with torch.no_grad():
        cached = extractor(obs)
        again = extractor(obs)  # served from the cache
    torch.testing.assert_close(cached, fresh)
    torch.testing.assert_close(again, fresh)
    assert len(extractor._weight_cache["conditioning"][1]) == 2  # one entry per distinct instruction
    optimizer = torch.optim.SGD(policy.parameters(), lr=1e-3)
    extractor(obs).square().sum().backward()
    optimizer.step()
    with torch.no_grad():
        after = extractor(obs)
    torch.testing.assert_close(after, extractor(obs).detach())
    assert not torch.allclose(after, fresh)


def test_first_conv_folds_the_input_scaling():
    """rgb / 255 and the depth range mapping live in the first conv's weights: the same as
    scaling the input explicitly."""
    from vla_gym.agents.network import DEPTH_FAR, DEPTH_NEAR

    extractor = make_policy().features_extractor
    obs = random_obs(2)
    rgb, depth = extractor._images({k: v.float() for k, v in obs.items()})
    scaled = torch.cat([rgb / 255.0, (depth - DEPTH_NEAR) / (DEPTH_FAR - DEPTH_NEAR)], dim=1)
    conv = extractor.convs[0]
    torch.testing.assert_close(extractor._first_conv(rgb, depth), conv(scaled), rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the cached folded weights give the same
        torch.testing.assert_close(extractor._first_conv(rgb, depth), conv(scaled), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="normalize_images"):
        VLAActorCriticPolicy(
            make_observation_space(84), make_action_space(), lambda _: 1e-3, network=SMALL, normalize_images=True
        )


def test_checkpoint_of_the_first_network_is_refused_with_what_to_do(tmp_path):
    from vla_gym.agents.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_policy
    from vla_gym.data.format import env_args

    old_network = {"channels": [16, 32, 64, 64], "film_layers": 3, "attention_key_dim": 8}
    path = tmp_path / "old_policy.pt"
    meta = {"env": env_args("VLAPick-v0"), "network": old_network}
    import json

    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "meta": json.dumps(meta), "policy": {}}, path)
    with pytest.raises(CheckpointError, match=r"version 1 .*first VLA network.*retrain it with `vla-gym train-bc`"):
        load_policy(path, device="cpu")


def test_set_training_mode_reaches_every_module_even_when_one_was_toggled_alone():
    policy = make_policy(network={"channels": [8, 16, 16], "features_dim": 32})
    policy.set_training_mode(False)
    assert not any(m.training for m in policy.modules())
    policy.features_extractor.convs.train(True)  # one submodule toggled behind the policy's back
    policy.set_training_mode(False)
    assert not any(m.training for m in policy.modules())
    policy.set_training_mode(True)
    assert all(m.training for m in policy.modules())


def test_obs_to_tensor_matches_sb3_without_copying_and_names_bad_shapes():
    from stable_baselines3.common.policies import ActorCriticPolicy

    policy = make_policy(image_size=40, network={"channels": [8, 16, 16], "features_dim": 32})
    one = {k: np.asarray(space.sample()) for k, space in policy.observation_space.spaces.items()}
    many = {k: np.stack([v, v, v]) for k, v in one.items()}
    for observation, batched in ((one, False), (many, True)):
        ours, ours_batched = policy.obs_to_tensor(observation)
        sb3, sb3_batched = ActorCriticPolicy.obs_to_tensor(policy, observation)
        assert ours_batched == sb3_batched == batched
        for key in sb3:
            assert ours[key].dtype == sb3[key].dtype and torch.equal(ours[key], sb3[key]), key
    before = {k: v.copy() for k, v in one.items()}
    policy.predict(one, deterministic=True)
    assert all(np.array_equal(one[k], before[k]) for k in one)  # the caller's arrays are untouched
    with pytest.raises(ValueError, match=r"observation 'rgb' is shaped \(39, 40, 3\); expected \(40, 40, 3\)"):
        policy.obs_to_tensor({**one, "rgb": one["rgb"][1:]})
    with pytest.raises(ValueError, match="observation lacks 'depth'"):
        policy.obs_to_tensor({k: v for k, v in one.items() if k != "depth"})
    with pytest.raises(ValueError, match="mixes batched and single entries"):
        policy.obs_to_tensor({**one, "rgb": many["rgb"]})


# --- the vocabulary: every task's train words, recorded in the checkpoint ------------------


@pytest.mark.parametrize("task", sorted(TASKS))
def test_vocabulary_holds_every_task_train_word_and_no_test_only_word(task):
    train_words = set().union(*(t.words("train") for t in TASKS.values()))
    test_only = TASKS[task].words("test") - train_words
    assert TASKS[task].words("train") <= set(VOCABULARY)
    assert not test_only & set(VOCABULARY), test_only & set(VOCABULARY)
    tokenizer = Tokenizer()
    for word in sorted(test_only):
        assert tokenizer.encode_text(word)[0] == 1, word  # <unk>


def test_vocabulary_is_sorted_and_covers_colours_shapes_and_fixtures():
    from vla_gym.envs.scene import COLOURS, FIXTURE_KINDS, SHAPES

    assert VOCABULARY[:2] == ("<pad>", "<unk>") and list(VOCABULARY[2:]) == sorted(VOCABULARY[2:])
    assert {*COLOURS, *SHAPES, *FIXTURE_KINDS} <= set(VOCABULARY)
    assert set(LEGACY_VOCABULARY) < set(VOCABULARY)  # pick's words are still known
    assert NetworkConfig().to_dict()["vocabulary"] == list(VOCABULARY)


@pytest.mark.parametrize(
    "vocabulary, message",
    [
        (["red", "cube"], "must start with"),
        (["<pad>", "<unk>", "Red"], "lower-case"),
        (["<pad>", "<unk>", "red", "red"], "repeated: \\['red'\\]"),
        ("<pad> <unk>", "must be a list"),
    ],
)
def test_bad_vocabulary_is_refused(vocabulary, message):
    with pytest.raises(ValueError, match=message):
        NetworkConfig(vocabulary=vocabulary)


def test_a_given_vocabulary_sizes_the_word_embedding():
    vocabulary = ["<pad>", "<unk>", "push", "red"]
    extractor = make_policy(network={**SMALL, "vocabulary": vocabulary}).features_extractor
    assert extractor.language.embed.num_embeddings == 4
    assert extractor.tokenizer.encode_text("push the red cube")[:3].tolist() == [2, 3, 0]  # known words, in order
    bag = make_policy(network={**SMALL, "vocabulary": vocabulary, "word_context": "bag"}).features_extractor
    assert bag.tokenizer.encode_text("push the red cube")[:3].tolist() == [2, 1, 3]  # unknown words as 1


def _save_tiny(path, network: dict, drop_vocabulary: bool = False, drop: tuple[str, ...] = (),
               extra: dict | None = None):
    from vla_gym.agents.checkpoint import build_policy, save_checkpoint
    from vla_gym.data.format import env_args

    policy = build_policy(env_args("VLAPick-v0"), network, "cpu")
    meta_network = policy.network_config.to_dict()
    if drop_vocabulary:  # as every checkpoint saved before the vocabulary was recorded
        del meta_network["vocabulary"]
    for name in drop:  # fields older checkpoints lack
        del meta_network[name]
    meta_network.update(extra or {})  # fields an earlier version wrote and this one lacks
    save_checkpoint(path, policy, {"env": env_args("VLAPick-v0"), "network": meta_network})
    return policy


def test_checkpoint_without_a_recorded_vocabulary_loads_with_the_legacy_one(tmp_path):
    from vla_gym.agents.checkpoint import load_policy, read_checkpoint

    path = tmp_path / "old.pt"
    saved = _save_tiny(path, {**SMALL, "vocabulary": list(LEGACY_VOCABULARY)}, drop_vocabulary=True)
    loaded = load_policy(path, device="cpu")
    assert loaded.network_config.vocabulary == LEGACY_VOCABULARY
    assert loaded.features_extractor.language.embed.num_embeddings == len(LEGACY_VOCABULARY)
    assert read_checkpoint(path)["meta"]["network"]["vocabulary"] == list(LEGACY_VOCABULARY)
    obs = random_obs(2, ["grab the red ball", "pick up the blue cube"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.extract_features(obs, loaded.features_extractor),
                                   saved.extract_features(obs, saved.features_extractor))


def test_checkpoint_records_its_vocabulary_and_loads_with_it(tmp_path):
    from vla_gym.agents.checkpoint import load_policy, read_checkpoint

    path = tmp_path / "new.pt"
    vocabulary = ["<pad>", "<unk>", "cube", "pick", "red", "up"]
    _save_tiny(path, {**SMALL, "vocabulary": vocabulary})
    assert read_checkpoint(path)["meta"]["network"]["vocabulary"] == vocabulary
    assert load_policy(path, device="cpu").network_config.vocabulary == tuple(vocabulary)


def test_checkpoint_lacking_a_task_words_says_which(tmp_path, make_env):
    import warnings

    from vla_gym.agents.checkpoint import CheckpointError, VocabularyWarning, check_task_vocabulary
    from vla_gym.evaluation import policy_from_spec

    path = tmp_path / "pick_only.pt"
    _save_tiny(path, {**SMALL, "vocabulary": list(LEGACY_VOCABULARY)}, drop_vocabulary=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VocabularyWarning)  # pick on pick: silent
        policy_from_spec(str(path), make_env("VLAPick-v0"), device="cpu")
    with pytest.warns(VocabularyWarning, match=r"VLAPlace-v0.*task 'place' lacks \['bowl', 'in', 'into',") as record:
        policy = policy_from_spec(str(path), make_env("VLAPlace-v0"), device="cpu")
    assert str(path) in str(record[0].message)
    with pytest.raises(CheckpointError, match=r"task 'push' lacks \[.*'push'.*'zone'\]"):
        check_task_vocabulary(str(path), policy.network_config, ["pick", "push"], env_name="VLAPush-v0", strict=True)
    assert not check_task_vocabulary("new.pt", NetworkConfig(), ["pick", "push"], env_name="VLAPush-v0", strict=True)


def _actions_and_values(policy: VLAActorCriticPolicy, obs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic actions and the values of ``obs``, without gradients."""
    with torch.no_grad():
        actions, values, _ = policy(obs, deterministic=True)
    return actions, values


@pytest.mark.parametrize("fovea", [0, 8])
@pytest.mark.parametrize("use_depth", [True, False])
def test_use_depth_decides_whether_depth_changes_the_outputs(use_depth, fovea):
    policy = make_policy(network={**SMALL, "use_depth": use_depth, "fovea": fovea})
    policy.set_training_mode(False)
    obs = random_obs(3)
    other = {**obs, "depth": torch.flip(obs["depth"], dims=[1]) * 2.0}  # another depth image, same rest
    actions, values = _actions_and_values(policy, obs)
    other_actions, other_values = _actions_and_values(policy, other)
    if use_depth:
        assert not torch.allclose(values, other_values) and not torch.allclose(actions, other_actions)
    else:
        torch.testing.assert_close(values, other_values, rtol=0, atol=0)
        torch.testing.assert_close(actions, other_actions, rtol=0, atol=0)
        # The gradient path (no cached folded weights) ignores depth as well.
        torch.testing.assert_close(policy.extract_features(obs, policy.features_extractor),
                                   policy.extract_features(other, policy.features_extractor), rtol=0, atol=0)


def test_use_depth_round_trips_and_defaults_to_true_for_old_configs(tmp_path):
    from vla_gym.agents.checkpoint import load_policy, read_checkpoint

    config = NetworkConfig(**SMALL, use_depth=False)
    assert config.to_dict()["use_depth"] is False
    assert NetworkConfig(**config.to_dict()) == config
    old = NetworkConfig(**SMALL).to_dict()
    del old["use_depth"]  # a config (checkpoint) saved before the field existed
    assert NetworkConfig(**old).use_depth is True
    path = tmp_path / "rgb_only.pt"
    saved = _save_tiny(path, {**SMALL, "use_depth": False})
    assert read_checkpoint(path)["meta"]["network"]["use_depth"] is False
    loaded = load_policy(path, device="cpu")
    assert loaded.network_config.use_depth is False
    obs = random_obs(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.extract_features(obs, loaded.features_extractor),
                                   saved.extract_features(obs, saved.features_extractor))


@pytest.mark.parametrize("value", [1, "false", None])
def test_use_depth_must_be_a_bool(value):
    with pytest.raises(ValueError, match=r"use_depth must be true or false .*got"):
        NetworkConfig(use_depth=value)


def test_configs_saved_before_use_depth_resume_and_load_as_depth_on(tmp_path):
    from vla_gym.agents.checkpoint import CheckpointError, load_policy, resume_differences

    old = NetworkConfig(**SMALL).to_dict()
    del old["use_depth"]  # a BC run config (last.pt) written before the field existed
    wanted = {"epochs": 2, "network": NetworkConfig(**SMALL).to_dict()}
    assert resume_differences({"epochs": 2, "network": old}, wanted, frozenset()) == []
    rgb_only = {"epochs": 2, "network": NetworkConfig(**SMALL, use_depth=False).to_dict()}
    assert resume_differences({"epochs": 2, "network": old}, rgb_only, frozenset()) == [
        "network.use_depth: checkpoint True vs requested False"
    ]
    path = tmp_path / "old.pt"
    _save_tiny(path, SMALL, drop=("use_depth",))
    assert load_policy(path, device="cpu", network=NetworkConfig(**SMALL)).network_config.use_depth is True
    with pytest.raises(CheckpointError, match="use_depth"):
        load_policy(path, device="cpu", network=NetworkConfig(**SMALL, use_depth=False))
