"""The VLA actor-critic: RGB-D vision, a language encoder, FiLM fusion, Gaussian head, value head.

Built on stable-baselines3's seams so that BC pretrains exactly the network PPO fine-tunes:

* :class:`VLAFeaturesExtractor` (a ``BaseFeaturesExtractor``) reads the env's Dict
  observation: a small CNN (conv, GroupNorm, FiLM, ReLU) on RGB + depth (+ 2 coordinate
  channels), whose feature maps
  are modulated by FiLM from the instruction embedding, read out by a spatial softmax
  (where things are) and a linear map (what is there); a cross-attention from the
  instruction to the image's pixels (where the named object is); a word-level language
  encoder; a proprio MLP. Output: one feature vector per observation.
* :class:`VLAActorCriticPolicy` (an ``ActorCriticPolicy``) adds the MLP trunks, a
  tanh-bounded Gaussian mean with SB3's learned state-independent log-std, and a value head.

The language encoder tokenises the instruction's UTF-8 bytes into lower-case words.
Words outside :data:`VOCABULARY` (the train-split templates, verbs and nouns plus every
colour and shape name) map to ``<unk>`` and are masked out of the attention pooling, so an
unknown word changes nothing, and the colour and shape words keep steering the policy. A
known word that repeats is counted once, so repeated filler words cannot outweigh the colour.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from vla_gym.agents.bounds import bounded_int, finite_float
from vla_gym.envs.language import words_of_split
from vla_gym.envs.spaces import AGENT_CAMERA
from vla_gym.envs.scene import COLOURS, SHAPES

PAD, UNK = "<pad>", "<unk>"
WORD_PATTERN = re.compile(r"[a-z]+")
#: Instructions are cut to this many words.
MAX_WORDS = 24


#: Index 0 pads, 1 is every unknown word; then the known words, sorted.
VOCABULARY: tuple[str, ...] = (PAD, UNK, *sorted(words_of_split("train") | set(COLOURS) | set(SHAPES)))


def words_of(text: str) -> list[str]:
    """Lower-case alphabetic words of ``text`` (punctuation and digits dropped)."""
    return WORD_PATTERN.findall(text.lower())


class Tokenizer:
    """Instruction bytes (uint8 ``(B, 128)``) to word ids ``(B, MAX_WORDS)`` (0 = pad, 1 = unknown)."""

    def __init__(self, vocabulary: tuple[str, ...] = VOCABULARY, max_words: int = MAX_WORDS) -> None:
        self.index = {word: i for i, word in enumerate(vocabulary)}
        self.max_words = max_words
        self._cache: dict[bytes, np.ndarray] = {}

    def encode_text(self, text: str) -> np.ndarray:
        """Word ids in order of first appearance; a known word that repeats counts once.

        The pooling is an attention-weighted mean, so a repeated filler word ("the red one
        off the table") would otherwise take a double share of the weight from the colour.
        """
        ids, seen = [], set()
        for word in words_of(text):
            if word in self.index and word in seen:
                continue
            seen.add(word)
            ids.append(self.index.get(word, 1))
        ids = ids[: self.max_words]
        out = np.zeros(self.max_words, dtype=np.int64)
        out[: len(ids)] = ids
        return out

    def __call__(self, instruction: torch.Tensor) -> torch.Tensor:
        rows = instruction.detach().to("cpu", torch.uint8).numpy()
        ids = np.empty((len(rows), self.max_words), dtype=np.int64)
        for i, row in enumerate(rows):
            key = row.tobytes()
            cached = self._cache.get(key)
            if cached is None:
                text = key.split(b"\x00", 1)[0].decode("utf-8", errors="replace")
                cached = self._cache.setdefault(key, self.encode_text(text))
            ids[i] = cached
        return torch.from_numpy(ids).to(instruction.device)


#: Bounds of :class:`NetworkConfig` (checked before a network is built, also for sizes read
#: from checkpoints): conv channels, widths of every linear layer, MLP depth, attention.
MAX_CHANNELS = 512
MAX_WIDTH = 4096
MAX_MLP_LAYERS = 8
MAX_ATTENTION_HEADS = 16
MAX_ATTENTION_KEY_DIM = 256
MIN_LOG_STD_INIT, MAX_LOG_STD_INIT = -20.0, 2.0


@dataclass
class NetworkConfig:
    """Sizes of the VLA network. Saved in every checkpoint and checked on load.

    Args:
        channels: output channels of the 4 conv layers (strides 2, 2, 2, 1).
        film_layers: how many of the last conv layers are modulated by FiLM.
        word_dim: word-embedding width.
        language_dim: instruction-embedding width.
        proprio_dim: width of the proprio MLP's output.
        features_dim: width of the fused feature vector given to the actor and critic MLPs.
        net_arch: hidden widths of the actor (``pi``) and critic (``vf``) MLPs.
        log_std_init: initial log-std of the Gaussian action head.
        contrastive_dim: width of the shared vision/language space of the InfoNCE loss.
        attention_heads, attention_key_dim: heads and key width of the instruction-to-pixel
            cross-attention (where the named object is).
    """

    channels: tuple[int, ...] = (16, 32, 64, 64)
    film_layers: int = 3
    word_dim: int = 64
    language_dim: int = 64
    proprio_dim: int = 64
    features_dim: int = 256
    net_arch: dict[str, list[int]] = field(default_factory=lambda: {"pi": [256, 256], "vf": [256, 256]})
    log_std_init: float = -1.0
    contrastive_dim: int = 64
    attention_heads: int = 2
    attention_key_dim: int = 8

    def __post_init__(self) -> None:
        # Sizes come from users and from checkpoint files: each is bounded before anything
        # is allocated (see MAX_* above).
        if not isinstance(self.channels, (list, tuple)) or len(self.channels) != len(CONV_STRIDES):
            raise ValueError(f"channels must be a list of {len(CONV_STRIDES)} ints, got {self.channels!r}")
        self.channels = tuple(bounded_int("channels", c, 1, MAX_CHANNELS) for c in self.channels)
        self.film_layers = bounded_int("film_layers", self.film_layers, 0, len(CONV_STRIDES))
        for name in ("word_dim", "language_dim", "proprio_dim", "features_dim", "contrastive_dim"):
            setattr(self, name, bounded_int(name, getattr(self, name), 1, MAX_WIDTH))
        self.attention_heads = bounded_int("attention_heads", self.attention_heads, 1, MAX_ATTENTION_HEADS)
        self.attention_key_dim = bounded_int("attention_key_dim", self.attention_key_dim, 1, MAX_ATTENTION_KEY_DIM)
        if not isinstance(self.net_arch, dict) or set(self.net_arch) != {"pi", "vf"}:
            raise ValueError(f"net_arch must be a dict with keys 'pi' and 'vf', got {self.net_arch!r}")
        for key, widths in self.net_arch.items():
            if not isinstance(widths, (list, tuple)) or len(widths) > MAX_MLP_LAYERS:
                raise ValueError(f"net_arch[{key!r}] must be a list of at most {MAX_MLP_LAYERS} widths, got {widths!r}")
        self.net_arch = {
            k: [bounded_int(f"net_arch[{k!r}]", w, 1, MAX_WIDTH) for w in v] for k, v in self.net_arch.items()
        }
        self.log_std_init = finite_float("log_std_init", self.log_std_init, MIN_LOG_STD_INIT, MAX_LOG_STD_INIT)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d


#: Initial inverse temperature of the pixel attention (cosine similarities are in [-1, 1]).
ATTENTION_TEMPERATURE = 20.0
#: The pixel attention looks at the image average-pooled by this factor (objects stay a few pixels wide).
ATTENTION_POOL = 2
#: Metres per unit of the auxiliary target-offset prediction.
TARGET_OFFSET_SCALE = 0.1
CONV_KERNELS = (5, 3, 3, 3)
CONV_STRIDES = (2, 2, 2, 1)
#: Depth (m) is mapped to [0, 1] over the camera's near and far planes.
DEPTH_NEAR, DEPTH_FAR = AGENT_CAMERA.near, AGENT_CAMERA.far


class FiLM(nn.Module):
    """Feature-wise linear modulation ``x * (1 + gamma) + beta`` from a conditioning vector."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)  # starts as the identity
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + gamma) + beta


def coordinate_grid(height: int, width: int) -> torch.Tensor:
    """(2, H, W): each pixel's x (column) and y (row) coordinate, from -1 to 1 across the image."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack([xs, ys])


class SpatialSoftmax(nn.Module):
    """Expected (x, y) image coordinate in [-1, 1] of each channel's softmax: (B, C, H, W) -> (B, 2C)."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.register_buffer("grid", coordinate_grid(height, width).reshape(2, -1).T.contiguous(), persistent=False)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        attention = torch.softmax(x.reshape(b, c, -1) / self.log_temperature.exp(), dim=-1)
        return (attention @ self.grid).reshape(b, 2 * c)


class LanguageQueryAttention(nn.Module):
    """Cross-attention from the instruction to the image's pixels: where is the named object?

    A per-pixel MLP (no mixing across pixels) turns each pixel's colour into
    keys; the instruction embedding gives one query per head. Cosine similarity times a
    learned temperature, softmax over all pixels, then the attention-weighted image
    coordinates: (B, heads, 2) in [-1, 1] (x to the right, y down). Head 0 is the one BC
    supervises with the goal object's projected position (see :func:`project_to_image`).
    """

    def __init__(self, in_channels: int, cond_dim: int, heads: int, key_dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        # Per-pixel MLP as Linear layers on (B, pixels, channels): much faster on CPU than 1x1 convs.
        self.key = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, heads * key_dim))
        self.query = nn.Linear(cond_dim, heads * key_dim)
        # Sharp from the start: a near-uniform softmax over thousands of pixels gives no gradient.
        self.log_temperature = nn.Parameter(torch.tensor(math.log(ATTENTION_TEMPERATURE)))

    def forward(self, pixels: torch.Tensor, coords: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, c, h, w = pixels.shape
        keys = self.key(pixels.flatten(2).transpose(1, 2)).view(b, h * w, self.heads, self.key_dim)
        keys = F.normalize(keys, dim=-1)
        query = F.normalize(self.query(cond).view(b, self.heads, self.key_dim), dim=-1)
        logits = torch.einsum("bphk,bhk->bhp", keys, query) * self.log_temperature.exp()
        attention = torch.softmax(logits, dim=-1)  # (B, heads, pixels)
        return attention @ coords.reshape(1, 2, h * w).transpose(1, 2)  # (B, heads, 2)


class LanguageEncoder(nn.Module):
    """Word ids (B, L) to an instruction embedding (B, D) by attention pooling of known words."""

    def __init__(self, vocab_size: int, word_dim: int, out_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.score = nn.Linear(word_dim, 1)
        self.out = nn.Sequential(nn.Linear(word_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        words = self.embed(ids)  # (B, L, E)
        known = ids > 1  # pad and unknown words take no part
        scores = self.score(words).squeeze(-1).masked_fill(~known, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # no known word: zero vector
        pooled = (weights.unsqueeze(-1) * words).sum(dim=1)
        return self.out(pooled)


def _groups(channels: int, per_group: int = 8) -> int:
    """GroupNorm groups: ``channels / per_group`` when it divides, else 1 (LayerNorm-like)."""
    return channels // per_group if channels % per_group == 0 and channels >= per_group else 1


def _layout(space: gym.spaces.Box, channels: int) -> bool:
    """True if ``space`` holds channel-first images (as after SB3's VecTransposeImage)."""
    shape = space.shape
    if len(shape) != 3 or channels not in (shape[0], shape[-1]):
        raise ValueError(f"expected an image space with {channels} channels, got shape {shape}")
    return shape[0] == channels and shape[-1] != channels


class VLAFeaturesExtractor(BaseFeaturesExtractor):
    """Dict observation (rgb, depth, proprio, instruction) to a fused feature vector (B, features_dim).

    Accepts rgb/depth channel-last (as the env gives them) or channel-first (as SB3's
    ``VecTransposeImage`` gives them); SB3 has already scaled rgb to [0, 1].
    """

    def __init__(self, observation_space: gym.spaces.Dict, network: dict[str, Any] | None = None) -> None:
        config = NetworkConfig(**(network or {}))
        super().__init__(observation_space, config.features_dim)
        self.config = config
        missing = {"rgb", "depth", "proprio", "instruction"} - set(observation_space.spaces)
        if missing:
            raise ValueError(f"the VLA network needs observation keys rgb, depth, proprio, instruction; {missing} missing")
        self.rgb_channels_first = _layout(observation_space["rgb"], 3)
        self.depth_channels_first = _layout(observation_space["depth"], 1)
        image_size = size = observation_space["rgb"].shape[1 if self.rgb_channels_first else 0]
        self.tokenizer = Tokenizer()
        self.language = LanguageEncoder(len(VOCABULARY), config.word_dim, config.language_dim)
        convs, norms, films, in_ch = [], [], [], 4 + 2  # rgb, depth, 2 coordinate channels
        for i, (out_ch, k, s) in enumerate(zip(config.channels, CONV_KERNELS, CONV_STRIDES)):
            convs.append(nn.Conv2d(in_ch, out_ch, k, s, padding=k // 2))
            # GroupNorm keeps every layer's activations alive: the scenes differ only in a few
            # small objects, and without it the last ReLU layer died within a few epochs.
            norms.append(nn.GroupNorm(_groups(out_ch), out_ch))
            films.append(FiLM(config.language_dim, out_ch) if i >= len(CONV_STRIDES) - config.film_layers else None)
            in_ch = out_ch
            size = (size + 2 * (k // 2) - k) // s + 1
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.films = nn.ModuleList([f if f is not None else nn.Identity() for f in films])
        self._film_on = [f is not None for f in films]
        self.keypoints = SpatialSoftmax(size, size)
        self.attention = LanguageQueryAttention(3, config.language_dim, config.attention_heads, config.attention_key_dim)
        self.where = nn.Sequential(nn.Linear(2 * config.attention_heads, config.proprio_dim), nn.ReLU())
        self.glimpse = nn.Sequential(nn.Flatten(), nn.Linear(in_ch * size * size, 128), nn.ReLU())
        self.register_buffer("coords", coordinate_grid(image_size, image_size)[None], persistent=False)
        self.register_buffer("attention_coords", F.avg_pool2d(self.coords, ATTENTION_POOL), persistent=False)
        proprio_dim = observation_space["proprio"].shape[0]
        low = torch.as_tensor(observation_space["proprio"].low, dtype=torch.float32)
        high = torch.as_tensor(observation_space["proprio"].high, dtype=torch.float32)
        # Proprio is standardised as (p - shift) / scale; BC sets both from the demos
        # (see set_proprio_statistics) and they travel in the state dict to PPO.
        self.register_buffer("proprio_shift", (low + high) / 2)
        self.register_buffer("proprio_scale", (high - low) / 2)
        self.proprio = nn.Sequential(nn.Linear(proprio_dim, config.proprio_dim), nn.ReLU())
        # Vision summary before any FiLM, for the optional contrastive loss.
        first_film = next((i for i, on in enumerate(self._film_on) if on), len(convs))
        self._contrast_layer = max(first_film - 1, 0)
        self.vision_embed = nn.Linear(config.channels[self._contrast_layer], config.contrastive_dim)
        self.language_embed = nn.Linear(config.language_dim, config.contrastive_dim)
        fused = 2 * in_ch + 128 + config.proprio_dim + config.language_dim + config.proprio_dim
        self.fuse = nn.Sequential(nn.Linear(fused, config.features_dim), nn.ReLU())
        # Auxiliary head for BC: the goal object's offset from the end-effector (in units of
        # TARGET_OFFSET_SCALE), a dense "where is the goal" signal. PPO does not use it.
        self.target_head = nn.Linear(config.features_dim, 3)
        self.keep_auxiliary = False
        self.auxiliary: dict[str, torch.Tensor] = {}

    def _image(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        rgb, depth = observations["rgb"], observations["depth"]
        if not self.rgb_channels_first:
            rgb = rgb.permute(0, 3, 1, 2)
        if not self.depth_channels_first:
            depth = depth.permute(0, 3, 1, 2)
        depth = (depth - DEPTH_NEAR) / (DEPTH_FAR - DEPTH_NEAR)
        coords = self.coords.expand(rgb.shape[0], -1, -1, -1).to(rgb.dtype)
        return torch.cat([rgb, depth.to(rgb.dtype), coords], dim=1)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        language = self.language(self.tokenizer(observations["instruction"]))
        x = self._image(observations)
        pixels = F.avg_pool2d(x[:, :3], ATTENTION_POOL)  # colour at half resolution: 4x cheaper
        where = self.attention(pixels, self.attention_coords, language)  # (B, heads, 2)
        contrast_vision = None
        for i, (conv, norm, film) in enumerate(zip(self.convs, self.norms, self.films)):
            x = norm(conv(x))
            if self._film_on[i]:
                x = film(x, language)
            x = F.relu(x)
            if i == self._contrast_layer:
                contrast_vision = x.mean(dim=(2, 3))
        proprio = (observations["proprio"] - self.proprio_shift) / self.proprio_scale
        features = [self.keypoints(x), self.glimpse(x), self.where(where.flatten(1)), language, self.proprio(proprio)]
        fused = self.fuse(torch.cat(features, dim=1))
        if self.keep_auxiliary:
            self.auxiliary = {
                "where": where,
                "target_offset": self.target_head(fused),
                "vision": self.vision_embed(contrast_vision),
                "language": self.language_embed(language),
            }
        return fused

    @torch.no_grad()
    def set_proprio_statistics(self, mean: np.ndarray, std: np.ndarray, min_std: float = 1e-3) -> None:
        """Standardise proprio with per-dimension ``mean`` and ``std`` (8,) from the demos."""
        self.proprio_shift.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.proprio_scale.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(min_std))

    def pop_auxiliary(self) -> dict[str, torch.Tensor]:
        """Outputs of the last forward pass for BC's auxiliary losses (kept only while
        ``keep_auxiliary`` is true): ``where`` (B, heads, 2) image coordinates the instruction
        attends to, ``target_offset`` (B, 3) in units of :data:`TARGET_OFFSET_SCALE`, and the
        ``vision`` / ``language`` embeddings (B, contrastive_dim) of the InfoNCE loss."""
        if not self.auxiliary:
            raise RuntimeError("no auxiliary outputs: set keep_auxiliary = True before the forward pass")
        out, self.auxiliary = self.auxiliary, {}
        return out


class VLAActorCriticPolicy(ActorCriticPolicy):
    """SB3 ``ActorCriticPolicy`` with :class:`VLAFeaturesExtractor` and a tanh-bounded mean.

    The Gaussian's mean is ``tanh(linear(latent))`` (inside the action bounds [-1, 1]);
    its log-std is SB3's learned state-independent parameter, so the std BC fits is the
    std PPO starts exploring with. ``network`` is a :class:`NetworkConfig` as a dict.
    """

    def __init__(self, observation_space, action_space, lr_schedule, network: dict[str, Any] | None = None, **kwargs):
        config = NetworkConfig(**(network or {}))
        kwargs.setdefault("net_arch", config.net_arch)
        kwargs.setdefault("log_std_init", config.log_std_init)
        kwargs.setdefault("features_extractor_class", VLAFeaturesExtractor)
        kwargs.setdefault("features_extractor_kwargs", {"network": config.to_dict()})
        kwargs.setdefault("share_features_extractor", True)
        self.network_config = config
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Sequential(self.action_net, nn.Tanh())
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["network"] = self.network_config.to_dict()
        return data


def info_nce(
    x: torch.Tensor, y: torch.Tensor, temperature: float = 0.1, positives: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) loss between rows of ``x`` and ``y`` (B, D): row i of each is a pair.

    Both are L2-normalised; logits are cosine similarities / ``temperature``. ``positives``
    (B, B) bool marks further pairs that match (e.g. the same goal in another frame): they are
    left out of the negatives. Returns the mean of the x->y and y->x cross-entropies.
    """
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must both be (B, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = F.normalize(x, dim=1) @ F.normalize(y, dim=1).T / temperature
    if positives is not None:
        others = positives & ~torch.eye(len(x), dtype=torch.bool, device=x.device)
        logits = logits.masked_fill(others, float("-inf"))
    target = torch.arange(len(x), device=x.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
