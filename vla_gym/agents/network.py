"""The VLA actor-critic: RGB-D vision, a language encoder, FiLM fusion, Gaussian head, value head.

Built on stable-baselines3's seams so that BC pretrains exactly the network PPO fine-tunes:

* :class:`VLAFeaturesExtractor` (a ``BaseFeaturesExtractor``) reads the env's Dict
  observation: NatureCNN's strided trunk on RGB + depth (channels-last, the input scaling
  folded into the first layer), its last two layers normalised by GroupNorm and modulated
  by FiLM from the instruction, read out by a spatial softmax (where things are) and a
  linear glimpse (what is there); an attention from the instruction to the first layer's
  20x20 cells (where the named object is); a word-level language encoder whose
  conditioning is cached per instruction at inference; a proprio MLP. Output: one feature
  vector per observation. As fast as SB3's NatureCNN policy (benchmarks/network_speed.py).
* :class:`VLAActorCriticPolicy` (an ``ActorCriticPolicy``) adds the MLP trunks, a
  tanh-bounded Gaussian mean with SB3's learned state-independent log-std, and a value head.

The language encoder (``NetworkConfig.language_encoder``) is one of two:

* ``"words"`` (the default): the instruction's UTF-8 bytes become lower-case words. Words
  outside the config's vocabulary (by default :data:`VOCABULARY`: the train-split words of
  every task, plus every colour, shape and fixture kind name) map to ``<unk>`` and are masked
  out of the attention pooling, so an unknown word changes nothing, and the colour and shape
  words keep steering the policy. A known word that repeats is counted once, so repeated
  filler words cannot outweigh the colour. The vocabulary travels in the config, so in every
  checkpoint; checkpoints saved before it did use :data:`LEGACY_VOCABULARY`.
* a sentence-transformers model (a local directory or a hub name, extra ``[language]``),
  frozen: :class:`SentenceEncoder` embeds each distinct instruction once, and a small MLP maps
  the embedding to ``language_dim``. Its weights are loaded by name, never stored in the policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import maybe_transpose
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from vla_gym.agents.bounds import bounded_int, finite_float
from vla_gym.envs.spaces import AGENT_CAMERA
from vla_gym.envs.scene import COLOURS, FIXTURE_KINDS, OBJECT_HALF_SIZE, SHAPES, TABLE_CENTRE, TABLE_HALF_EXTENTS
from vla_gym.envs.tasks import task_words

PAD, UNK = "<pad>", "<unk>"
#: ``NetworkConfig.language_encoder`` of the word-level encoder trained with the network.
WORD_ENCODER = "words"
WORD_PATTERN = re.compile(r"[a-z]+")
#: Instructions are cut to this many words.
MAX_WORDS = 24
#: ``NetworkConfig.word_context``: how the word encoder reads an instruction's words.
#: "gru": a bidirectional GRU over the known words in order (repeats kept), so "stack the
#: red cube on the blue cube" and its reverse differ; "bag": attention pooling of the
#: distinct known words, order-free (the encoder before the task suite; enough for pick).
WORD_CONTEXTS = ("gru", "bag")


#: The vocabulary of checkpoints saved before the vocabulary was recorded in the network
#: config: pick's train words, colours and shapes. Written out, not derived, because those
#: checkpoints' word-embedding rows follow this exact list whatever the templates become.
LEGACY_VOCABULARY: tuple[str, ...] = (
    PAD, UNK, "ball", "block", "blue", "can", "cube", "cyan", "cylinder", "goal", "grab", "grasp", "green", "is",
    "lift", "object", "orange", "pick", "please", "purple", "red", "robot", "sphere", "that", "the", "thing", "to",
    "up", "yellow", "your",
)
#: Most words a vocabulary may hold (one embedding row each).
MAX_VOCABULARY = 100_000


def default_vocabulary(tasks: Iterable[str] | None = None) -> tuple[str, ...]:
    """``(PAD, UNK, *known words, sorted)``: the train-split words of ``tasks`` (default: every
    task of :data:`~vla_gym.envs.tasks.TASKS`) plus every colour, shape and fixture kind name.
    Words only the test split uses stay out, so they read as ``<unk>``."""
    return (PAD, UNK, *sorted(task_words("train", tasks) | set(COLOURS) | set(SHAPES) | set(FIXTURE_KINDS)))


#: The default vocabulary: index 0 pads, 1 is every unknown word; then the known words, sorted.
VOCABULARY: tuple[str, ...] = default_vocabulary()


def check_vocabulary(words: Any) -> tuple[str, ...]:
    """``words`` as a vocabulary tuple, or a ``ValueError`` saying what is wrong: a list of
    at most :data:`MAX_VOCABULARY` strings, ``PAD`` and ``UNK`` first, then distinct
    lower-case words (what :func:`words_of` yields; anything else could never be matched)."""
    if isinstance(words, (str, bytes)) or not isinstance(words, (list, tuple)) or not 2 <= len(words) <= MAX_VOCABULARY:
        raise ValueError(f"vocabulary must be a list of 2 to {MAX_VOCABULARY} strings, got {_abridged(words)}")
    words = tuple(words)
    if words[:2] != (PAD, UNK):
        raise ValueError(f"vocabulary must start with {PAD!r}, {UNK!r} (ids 0 and 1), got {list(words[:2])}")
    bad = [w for w in words[2:] if not isinstance(w, str) or not WORD_PATTERN.fullmatch(w)]
    if bad:
        raise ValueError(f"vocabulary words must be lower-case a-z words, got {_abridged(bad)}")
    if len(set(words)) != len(words):
        repeated = sorted(w for w, n in Counter(words).items() if n > 1)
        raise ValueError(f"vocabulary words must be distinct; repeated: {_abridged(repeated)}")
    return words


def _abridged(value: Any, limit: int = 10) -> str:
    """``repr`` of ``value``, of only its first ``limit`` items when it is a long list."""
    if isinstance(value, (list, tuple)) and len(value) > limit:
        return f"{list(value[:limit])!r} ... ({len(value)} items)"
    return repr(value)


def words_of(text: str) -> list[str]:
    """Lower-case alphabetic words of ``text`` (punctuation and digits dropped)."""
    return WORD_PATTERN.findall(text.lower())


class Tokenizer:
    """Instruction bytes (uint8 ``(B, 128)``) to word ids ``(B, MAX_WORDS)`` (0 = pad, 1 = unknown).

    ``in_order=False`` (the "bag" word context): each known word once, in order of first
    appearance, unknown words as 1. ``in_order=True`` (the "gru" context): the known words
    in order, repeats kept, unknown words left out (so a held-out word does not move the
    sequence the GRU reads).
    """

    def __init__(self, vocabulary: tuple[str, ...] = VOCABULARY, max_words: int = MAX_WORDS,
                 in_order: bool = False) -> None:
        self.index = {word: i for i, word in enumerate(vocabulary)}
        self.max_words = max_words
        self.in_order = in_order
        self._cache: dict[bytes, np.ndarray] = {}

    def encode_text(self, text: str) -> np.ndarray:
        """Word ids (see the class docstring), padded with 0 to ``max_words``.

        In a bag the pooling is an attention-weighted mean, so a repeated filler word ("the
        red one off the table") would otherwise take a double share of the weight from the colour.
        """
        ids, seen = [], set()
        for word in words_of(text):
            if self.in_order:
                if word in self.index:
                    ids.append(self.index[word])
                continue
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
#: The conv trunk is NatureCNN's (Mnih et al. 2015, SB3's ``NatureCNN``): kernel sizes and
#: strides of its 3 layers, no padding; 84 px in gives 20, 9 and 7 px maps.
CONV_KERNELS = (8, 4, 3)
CONV_STRIDES = (4, 2, 1)
#: Largest fovea (px a side) :class:`NetworkConfig` takes; the fovea's conv channels.
MAX_FOVEA = 32
FOVEA_CHANNELS = 8


@dataclass
class NetworkConfig:
    """Sizes of the VLA network. Saved in every checkpoint and checked on load.

    Args:
        channels: output channels of the 3 conv layers (NatureCNN's kernels 8, 4, 3 and
            strides 4, 2, 1).
        film_layers: how many of the last conv layers are modulated by FiLM.
        word_dim: word-embedding width.
        language_dim: instruction-embedding width.
        proprio_dim: width of the proprio MLP's output.
        glimpse_dim: width of the linear read-out of the last feature map ("what is there").
        features_dim: width of the fused feature vector given to the actor and critic MLPs.
        net_arch: hidden widths of the actor (``pi``) and critic (``vf``) MLPs.
        log_std_init: initial log-std of the Gaussian action head.
        contrastive_dim: width of the shared vision/language space of the InfoNCE loss.
        attention_heads, attention_key_dim: heads and key width of the instruction-to-image
            attention over the first conv layer's map (where the named object is).
        language_encoder: ``"words"`` (:data:`WORD_ENCODER`: the word-level encoder trained
            with the rest), or a sentence-transformers model, by local directory or hub name
            (e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``), used frozen (extra ``[language]``).
        language_embedding_dim: the sentence encoder's embedding size D; None until the model
            is loaded (:func:`resolve_language_encoder` fills it in and checks a recorded one).
            None for the word encoder.
        vocabulary: the word encoder's vocabulary, ``PAD`` and ``UNK`` first; None gives
            :data:`VOCABULARY`. Empty for a sentence encoder.
        word_context: how the word encoder reads the words, one of :data:`WORD_CONTEXTS`:
            "gru" (order-aware; the default) or "bag" (order-free; checkpoints saved before
            this field load with it).
        use_depth: feed the depth image to the conv trunk. False leaves the depth part of
            the first conv layer out of the forward pass, so depth changes no output (an
            ablation: RGB only); the weights keep their shape, so checkpoints of either kind
            load alike. Checkpoints saved before this field load with True.
        destination_head: a second privileged read-out for BC: where the object of the
            current subgoal must go (its offset from the end effector, from the fused
            features), with the second attention head (if there is one) supervised onto that
            place in the image. The first read-out and head say which object to move; this
            one says where to (a receptacle, a zone, a stack's base). Off by default: on the
            multitask preset's demos it lowered BC's success (benchmarks/RESULTS.md, "Where
            the object must go"). Checkpoints saved before this field load with False.
        fovea: side (px) of a full-resolution glimpse of the image around where the
            instruction's attention (head 0) points, read by a small stride-1 conv net
            (:class:`Fovea`): where the named object and the gripper are, to a pixel's
            fraction, which the stride-4 trunk resolves to about 1.6 px. 0 (the default):
            no fovea. Checkpoints saved before this field load with 0.
    """

    channels: tuple[int, ...] = (32, 32, 64)
    film_layers: int = 2
    word_dim: int = 64
    language_dim: int = 64
    proprio_dim: int = 64
    glimpse_dim: int = 256
    features_dim: int = 256
    net_arch: dict[str, list[int]] = field(default_factory=lambda: {"pi": [256], "vf": [256]})
    log_std_init: float = -1.0
    contrastive_dim: int = 64
    attention_heads: int = 2
    attention_key_dim: int = 16
    language_encoder: str = WORD_ENCODER
    language_embedding_dim: int | None = None
    vocabulary: tuple[str, ...] | None = None
    use_depth: bool = True
    word_context: str = "gru"
    destination_head: bool = False
    fovea: int = 0

    def __post_init__(self) -> None:
        # Sizes come from users and from checkpoint files: each is bounded before anything
        # is allocated (see MAX_* above).
        if not isinstance(self.channels, (list, tuple)) or len(self.channels) != len(CONV_STRIDES):
            raise ValueError(
                f"channels must be a list of {len(CONV_STRIDES)} ints (one per conv layer), got {self.channels!r}"
            )
        self.channels = tuple(bounded_int("channels", c, 1, MAX_CHANNELS) for c in self.channels)
        self.film_layers = bounded_int("film_layers", self.film_layers, 0, len(CONV_STRIDES) - 1)
        for name in ("word_dim", "language_dim", "proprio_dim", "glimpse_dim", "features_dim", "contrastive_dim"):
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
        if not isinstance(self.use_depth, bool):
            raise ValueError(
                "use_depth must be true or false (whether the conv trunk reads the depth image), "
                f"got {self.use_depth!r}"
            )
        if not isinstance(self.destination_head, bool):
            raise ValueError(
                "destination_head must be true or false (whether BC also supervises where the object must go), "
                f"got {self.destination_head!r}"
            )
        self.fovea = bounded_int("fovea", self.fovea, 0, MAX_FOVEA)
        if 0 < self.fovea < 4:
            raise ValueError(f"fovea must be 0 (none) or a glimpse of 4 to {MAX_FOVEA} px a side, got {self.fovea}")
        if self.word_context not in WORD_CONTEXTS:
            raise ValueError(f"word_context must be one of {list(WORD_CONTEXTS)}, got {self.word_context!r}")
        self._check_language()

    def _check_language(self) -> None:
        """Check the language encoder's fields; give the word encoder its vocabulary."""
        name = self.language_encoder
        if not isinstance(name, str) or not name.strip():
            raise ValueError(
                f"language_encoder must be {WORD_ENCODER!r} or a sentence-transformers model (a local directory "
                f"or a hub name such as 'sentence-transformers/all-MiniLM-L6-v2'), got {name!r}"
            )
        if name == WORD_ENCODER:
            if self.language_embedding_dim is not None:
                raise ValueError(
                    f"language_embedding_dim is a sentence encoder's embedding size; the {WORD_ENCODER!r} encoder "
                    f"has none (got {self.language_embedding_dim!r})"
                )
            self.vocabulary = check_vocabulary(VOCABULARY if self.vocabulary is None else self.vocabulary)
            return
        if self.vocabulary:
            raise ValueError(f"vocabulary is read only by the {WORD_ENCODER!r} language encoder, not by {name!r}")
        self.vocabulary = ()
        if self.language_embedding_dim is not None:
            dim = self.language_embedding_dim
            self.language_embedding_dim = bounded_int("language_embedding_dim", dim, 1, MAX_WIDTH)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        d["vocabulary"] = list(self.vocabulary)
        return d


#: Initial inverse temperature of the instruction-to-image attention (cosine similarities in [-1, 1]).
ATTENTION_TEMPERATURE = 20.0
#: Instructions whose conditioning the inference cache keeps (an episode has one instruction).
CONDITION_CACHE_SIZE = 4096
#: Metres per unit of the auxiliary target-offset prediction.
TARGET_OFFSET_SCALE = 0.1
#: Depth (m) is mapped to [0, 1] over the camera's near and far planes.
DEPTH_NEAR, DEPTH_FAR = AGENT_CAMERA.near, AGENT_CAMERA.far


def film(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Feature-wise linear modulation ``x * (1 + gamma) + beta`` of (B, C, H, W) by (B, C) vectors."""
    return torch.addcmul(beta[:, :, None, None], x, 1 + gamma[:, :, None, None])


def coordinate_grid(height: int, width: int) -> torch.Tensor:
    """(2, H, W): each pixel's x (column) and y (row) coordinate, from -1 to 1 across the image."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack([xs, ys])


def receptive_field_centres(image_size: int, kernel: int, stride: int) -> torch.Tensor:
    """(2, n, n): image coordinates in [-1, 1] (pixel centres at +-1, as :func:`coordinate_grid`)
    of the centres of a ``kernel``/``stride`` conv's output cells on an ``image_size`` image."""
    n = (image_size - kernel) // stride + 1
    centres = (torch.arange(n, dtype=torch.float32) * stride + (kernel - 1) / 2) * 2 / (image_size - 1) - 1
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([xs, ys])


class SpatialSoftmax(nn.Module):
    """Expected (x, y) image coordinate in [-1, 1] of each channel's softmax: (B, C, H, W) -> (B, 2C).

    Reads the map as (B, H*W, C), a view of a channels-last map (no copy); the output is
    ordered (x of every channel, then y of every channel).
    """

    def __init__(self, grid: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("grid", grid.reshape(2, -1).contiguous(), persistent=False)  # (2, H*W)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        cells = x.permute(0, 2, 3, 1).reshape(b, -1, c)
        attention = torch.softmax(cells / self.log_temperature.exp(), dim=1)  # over cells
        return (self.grid @ attention).reshape(b, 2 * c)


class LanguageQueryAttention(nn.Module):
    """Attention from the instruction to the cells of a feature map: where is the named object?

    A per-cell linear map turns each cell's features into keys; the instruction gives one
    query per head (from :attr:`VLAFeaturesExtractor.condition`). Cosine similarity times a learned temperature, softmax over the cells,
    then the attention-weighted image coordinates of the cells: (B, heads, 2) in [-1, 1]
    (x to the right, y down). Head 0 is the one BC supervises with the goal object's
    projected position (``target_uv``). On the first conv layer's 20x20 map this costs
    about 1 % of the network; the cells' receptive fields (8 px, stride 4) overlap, so the
    expected coordinate resolves positions finer than a cell.
    """

    def __init__(self, in_channels: int, heads: int, key_dim: int, grid: torch.Tensor) -> None:
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        # A per-cell linear map on (B, cells, C): the map is channels-last in memory, so this
        # is one matmul with no transpose, and the key norms reduce over contiguous memory.
        self.key = nn.Linear(in_channels, heads * key_dim)
        self.register_buffer("grid", grid.reshape(2, -1).T.contiguous(), persistent=False)  # (cells, 2)
        # Sharp from the start: a near-uniform softmax over hundreds of cells gives no gradient.
        self.log_temperature = nn.Parameter(torch.tensor(math.log(ATTENTION_TEMPERATURE)))

    def forward(self, features: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``features`` (B, C, H, W), unit-norm ``query`` (B, heads, key_dim) -> (B, heads, 2)."""
        b, c = features.shape[:2]
        cells = features.permute(0, 2, 3, 1).reshape(b, -1, c)  # a view when channels-last
        keys = self.key(cells)  # (B, cells, heads * key_dim)
        # Every head's dot products in one matmul, against a block-diagonal (heads * key_dim,
        # heads) matrix of the queries; then divided by the key norms: cosine similarities.
        blocks = query.new_zeros(b, self.heads, self.key_dim, self.heads)
        blocks.diagonal(dim1=1, dim2=3).copy_(query.transpose(1, 2))
        dots = torch.bmm(keys, blocks.view(b, self.heads * self.key_dim, self.heads))  # (B, cells, heads)
        norms = torch.linalg.vector_norm(keys.view(b, -1, self.heads, self.key_dim), dim=-1).clamp_min(1e-6)
        logits = (dots / norms).transpose(1, 2) * self.log_temperature.exp()  # (B, heads, cells)
        return torch.softmax(logits, dim=-1) @ self.grid  # (B, heads, 2)


class Fovea(nn.Module):
    """A full-resolution glimpse around an image point, and where in it the named object is.

    The trunk's first layer (8 px kernels, stride 4) places the named object to about 1.6 px
    (benchmarks/RESULTS.md, "A fovea"), which is 1.6 cm on the table: the difference
    between a grasp that holds and one that closes beside the object. The fovea samples a
    ``size`` x ``size`` window of the raw rgb and depth (or rgb alone) at the image's own
    pixel spacing (bilinear), centred on ``centre`` (the attention's estimate), and runs two
    3x3 stride-1 conv layers on it; the extractor passes the first layer with the input
    scaling folded in. Read-outs: the instruction's query (as in
    :class:`LanguageQueryAttention`) attends over the window's cells, giving the named
    object's image coordinates ``fine`` (B, 2) in [-1, 1]; and a spatial softmax of the
    window's feature map (B, 2 * channels): where the gripper's fingers and the object's
    edges lie in the window, relative to its centre.
    """

    def __init__(self, size: int, image_size: int, key_dim: int, channels: int = FOVEA_CHANNELS) -> None:
        super().__init__()
        step = 2 / (image_size - 1)  # one pixel in image coordinates (pixel centres at +-1)
        offsets = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) * step
        ys, xs = torch.meshgrid(offsets, offsets, indexing="ij")
        self.register_buffer("offsets", torch.stack([xs, ys], dim=-1), persistent=False)  # (S, S, 2): x, y
        self.conv1 = nn.Conv2d(4, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.key = nn.Linear(channels, key_dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(ATTENTION_TEMPERATURE)))
        self.keypoints = SpatialSoftmax(coordinate_grid(size, size))

    def forward(
        self, window: torch.Tensor, centre: torch.Tensor, query: torch.Tensor,
        first: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``window`` (B, C, S, S) from :meth:`sample`, its ``centre`` (B, 2) and a unit-norm
        ``query`` (B, key_dim) -> (fine (B, 2), keypoints (B, 2 * channels)). ``first``: the
        first layer's (weight, bias) to use instead of ``conv1``'s own (the input scaling
        folded in, C of its input channels)."""
        weight, bias = (self.conv1.weight, self.conv1.bias) if first is None else first
        # Channels-last, so that the keys and the spatial softmax read the map as (B, cells, C)
        # views (measured: the two read-outs took 1.5 of 2.5 ms at batch 128 on copies).
        window = window.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.conv2(F.relu(F.conv2d(window, weight, bias, padding=1))))
        b, c = x.shape[:2]
        keys = F.normalize(self.key(x.permute(0, 2, 3, 1).reshape(b, -1, c)), dim=-1)  # (B, S*S, key_dim)
        logits = torch.bmm(keys, query[:, :, None]).squeeze(-1) * self.log_temperature.exp()
        fine = centre + torch.softmax(logits, dim=-1) @ self.offsets.reshape(-1, 2)
        return fine, self.keypoints(x)

    def sample(self, images: list[torch.Tensor], centre: torch.Tensor) -> torch.Tensor:
        """The (B, sum of channels, S, S) windows of ``images`` (each (B, C, H, W), the same
        H and W) centred on ``centre`` (B, 2); zeros outside the image."""
        grid = centre[:, None, None, :] + self.offsets  # (B, S, S, 2)
        return torch.cat([F.grid_sample(image, grid, align_corners=True) for image in images], dim=1)


def table_homography(image_size: int, camera=AGENT_CAMERA, height: float = OBJECT_HALF_SIZE) -> torch.Tensor:
    """(3, 3) homography from image coordinates in [-1, 1] (as :func:`coordinate_grid`) to
    world (x, y) in metres on the horizontal plane at ``height`` (an object's centre resting
    on the table) as ``camera`` sees it: a direct linear transform fitted on a 9 x 9 grid of
    points over the table top, exact for a pinhole camera up to float error."""
    xs = TABLE_CENTRE[0] + np.linspace(-1, 1, 9) * TABLE_HALF_EXTENTS[0]
    ys = TABLE_CENTRE[1] + np.linspace(-1, 1, 9) * TABLE_HALF_EXTENTS[1]
    world = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    pixels = camera.project(np.column_stack([world, np.full(len(world), height)]), image_size, image_size)
    uv = pixels * 2 / (image_size - 1) - 1
    rows = []
    for (u, v), (x, y) in zip(uv, world):
        rows.append([u, v, 1, 0, 0, 0, -x * u, -x * v, -x])
        rows.append([0, 0, 0, u, v, 1, -y * u, -y * v, -y])
    homography = np.linalg.svd(np.asarray(rows))[2][-1].reshape(3, 3)
    return torch.tensor(homography / homography[2, 2], dtype=torch.float32)


class TablePlane(nn.Module):
    """Image coordinates (B, 2) in [-1, 1] to world (x, y) (B, 2) in metres on the plane of
    resting objects' centres: a homography, initialised from the agent camera
    (:func:`table_homography`) and trained by BC's offset loss (which also adapts it to the
    cameras the demos were recorded with)."""

    def __init__(self, homography: torch.Tensor) -> None:
        super().__init__()
        self.homography = nn.Parameter(homography.clone())

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        points = torch.addmm(self.homography[:, 2], uv, self.homography[:, :2].T)  # (B, 3): H @ (u, v, 1)
        return points[:, :2] / points[:, 2:].clamp_min(1e-6)


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


class SequenceLanguageEncoder(nn.Module):
    """Word ids (B, L), known words in order and 0-padded, to an instruction embedding (B, D).

    A bidirectional GRU reads the words; each word's embedding plus its GRU context is
    scored, and the attention-weighted mean goes through an MLP. The context binds a colour
    to its noun and a role to its place in the sentence ("the red cube on the blue cube").
    An instruction with no known word gives the MLP of a zero vector.
    """

    def __init__(self, vocab_size: int, word_dim: int, out_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, word_dim // 2, batch_first=True, bidirectional=True)
        self.mix = nn.Linear(2 * (word_dim // 2), word_dim)
        self.score = nn.Linear(word_dim, 1)
        self.out = nn.Sequential(nn.Linear(word_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        words = self.embed(ids)  # (B, L, E)
        known = ids > 0
        lengths = known.sum(dim=1).clamp_min(1).cpu()  # the known words come first
        packed = nn.utils.rnn.pack_padded_sequence(words, lengths, batch_first=True, enforce_sorted=False)
        context, _ = self.gru(packed)
        context, _ = nn.utils.rnn.pad_packed_sequence(context, batch_first=True, total_length=ids.shape[1])
        tokens = words + self.mix(context)  # (B, L, E)
        scores = self.score(tokens).squeeze(-1).masked_fill(~known, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        return self.out((weights.unsqueeze(-1) * tokens).sum(dim=1))


#: How to install what a sentence-transformers language encoder needs.
LANGUAGE_EXTRA_INSTALL = 'pip install -e ".[language]"'
#: Distinct instructions whose sentence embedding a :class:`SentenceEncoder` keeps.
SENTENCE_CACHE_SIZE = 65_536
#: Loaded sentence-transformers models by name: each loaded once per process.
_SENTENCE_MODELS: dict[str, Any] = {}


class LanguageExtraMissingError(ImportError):
    """A sentence-transformers language encoder was asked for without the package installed."""


def load_sentence_model(name: str) -> Any:
    """The sentence-transformers model ``name`` (a local directory or a hub name): on the CPU,
    in eval mode, without gradients; loaded once per process and shared.

    :class:`LanguageExtraMissingError` names the install line when the package is missing;
    ``ValueError`` when ``name`` cannot be loaded.
    """
    model = _SENTENCE_MODELS.get(name)
    if model is None:
        model = _SENTENCE_MODELS[name] = _load_sentence_model(name)
    return model


def _load_sentence_model(name: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise LanguageExtraMissingError(
            f"language_encoder={name!r} needs the sentence-transformers package, which cannot be imported "
            f"({err}); install it with {LANGUAGE_EXTRA_INSTALL}, or use language_encoder={WORD_ENCODER!r}"
        ) from None
    try:
        with torch.device("cpu"):  # real weights even inside a meta-device block (see build_policy)
            model = SentenceTransformer(name, device="cpu")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"language_encoder={name!r} cannot be loaded as a sentence-transformers model ({type(err).__name__}: "
            f"{err}); give a local model directory or a hub name such as 'sentence-transformers/all-MiniLM-L6-v2'"
        ) from None
    return model.eval().requires_grad_(False)


def sentence_embedding_dim(model: Any) -> int:
    """The embedding size D of a sentence-transformers ``model``."""
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = get()
    if dim is None:
        raise ValueError(f"the sentence-transformers model {model!r} does not say its embedding size")
    return int(dim)


def resolve_language_encoder(config: NetworkConfig) -> NetworkConfig:
    """``config`` with ``language_embedding_dim`` set from its sentence encoder (loading the
    model, once per process); the word encoder's config comes back unchanged. ``ValueError``
    if the config (from a checkpoint, say) records another size than the model has."""
    if config.language_encoder == WORD_ENCODER:
        return config
    dim = sentence_embedding_dim(load_sentence_model(config.language_encoder))
    if config.language_embedding_dim not in (None, dim):
        raise ValueError(
            f"language_encoder={config.language_encoder!r} gives {dim}-d embeddings, but the network config "
            f"records language_embedding_dim={config.language_embedding_dim}: that model has changed since the "
            f"policy was made; give the model it was trained with"
        )
    return dataclasses.replace(config, language_embedding_dim=dim)


def instruction_texts(keys: list[bytes]) -> list[str]:
    """The text of each instruction's zero-padded UTF-8 bytes."""
    return [key.split(b"\x00", 1)[0].decode("utf-8", errors="replace") for key in keys]


class SentenceEncoder:
    """Instruction bytes uint8 (B, 128) -> frozen sentence embeddings float32 (B, D), on the
    instructions' device. Each distinct instruction is embedded once, then served from a
    cache (up to :data:`SENTENCE_CACHE_SIZE`): a step costs no transformer call.

    Not an ``nn.Module``: the model's weights stay out of the policy's parameters, its state
    dict and its pickles; the model is found by name (:func:`load_sentence_model`).
    """

    def __init__(self, name: str, dim: int) -> None:
        self.name, self.dim = name, dim
        self._cache: dict[bytes, torch.Tensor] = {}

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """The model's embeddings of ``texts``: float32 (N, D) on the CPU (no cache)."""
        model = load_sentence_model(self.name)
        with torch.no_grad():
            out = model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
        return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim))

    def __call__(self, instruction: torch.Tensor) -> torch.Tensor:
        keys = [row.tobytes() for row in instruction.detach().to("cpu", torch.uint8).numpy()]
        missing = list(dict.fromkeys(key for key in keys if key not in self._cache))
        if missing:
            self._cache.update(zip(missing, self.embed_texts(instruction_texts(missing))))
            while len(self._cache) > SENTENCE_CACHE_SIZE:  # bounded: drop the oldest
                del self._cache[next(iter(self._cache))]
        return torch.stack([self._cache[key] for key in keys]).to(instruction.device)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}


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

    Vision is NatureCNN's strided trunk on RGB + depth (4 channels, 84 px: maps of 20, 9
    and 7 px), the last ``film_layers`` conv layers modulated by FiLM from the instruction
    embedding and normalised by GroupNorm. The instruction also attends over the first
    layer's 20x20 map (:class:`LanguageQueryAttention`: where the named object is). Read-outs:
    a spatial softmax of the last map (where things are), a linear glimpse of it (what is
    there), the attended coordinates, the instruction embedding and the proprio MLP, fused by
    one linear layer. With ``fovea`` (:class:`NetworkConfig`) also a full-resolution window
    around the attended point (:class:`Fovea`): the named object's refined image coordinates
    and the window's keypoints, and that point on the table (:class:`TablePlane`) relative to
    the gripper.

    Accepts rgb/depth channel-last (as the env gives them) or channel-first (as SB3's
    ``VecTransposeImage`` gives them); rgb unscaled, in [0, 255] (the policy turns SB3's
    ``normalize_images`` off and the first conv layer does the scaling).
    """

    def __init__(self, observation_space: gym.spaces.Dict, network: dict[str, Any] | None = None) -> None:
        config = resolve_language_encoder(NetworkConfig(**(network or {})))
        super().__init__(observation_space, config.features_dim)
        self.config = config
        missing = {"rgb", "depth", "proprio", "instruction"} - set(observation_space.spaces)
        if missing:
            raise ValueError(f"the VLA network needs observation keys rgb, depth, proprio, instruction; {missing} missing")
        self.rgb_channels_first = _layout(observation_space["rgb"], 3)
        self.depth_channels_first = _layout(observation_space["depth"], 1)
        image_size = size = observation_space["rgb"].shape[1 if self.rgb_channels_first else 0]
        if image_size < 36:
            raise ValueError(f"the VLA network needs images of at least 36 px (its conv trunk), got {image_size}")
        self._build_language(config)
        self._weight_cache: dict[str, tuple[tuple, Any]] = {}
        convs, norms, in_ch = [], [], 4  # rgb + depth
        first_film = len(CONV_STRIDES) - config.film_layers
        for i, (out_ch, k, s) in enumerate(zip(config.channels, CONV_KERNELS, CONV_STRIDES)):
            convs.append(nn.Conv2d(in_ch, out_ch, k, s))
            # GroupNorm on the FiLM layers keeps their activations alive: the scenes differ
            # only in a few small objects, and without it the last ReLU layer died within a
            # few epochs. The first layer (the widest map) runs bare, as in NatureCNN.
            on = i >= first_film
            norms.append(nn.GroupNorm(_groups(out_ch), out_ch) if on else nn.Identity())
            in_ch = out_ch
            size = (size - k) // s + 1
        self.convs = nn.ModuleList(convs)  # channels-last once initialised: see channels_last()
        self.norms = nn.ModuleList(norms)
        self._film_on = [i >= first_film for i in range(len(convs))]
        # Everything the instruction conditions, from one linear map of its embedding: the
        # FiLM (gamma, beta) of each FiLM layer, then the attention's queries. At inference
        # the whole vector is cached per instruction (see _condition).
        self._film_channels = [c for c, on in zip(config.channels, self._film_on) if on]
        film_width = 2 * sum(self._film_channels)
        # Widths of the conditioning vector's parts: embedding, each FiLM layer's (gamma, beta).
        self._condition_split = [config.language_dim, *(2 * c for c in self._film_channels)]
        self.condition = nn.Linear(config.language_dim, film_width + config.attention_heads * config.attention_key_dim)
        nn.init.zeros_(self.condition.weight[:film_width])  # FiLM starts as the identity
        nn.init.zeros_(self.condition.bias[:film_width])
        self.keypoints = SpatialSoftmax(coordinate_grid(size, size))
        first_grid = receptive_field_centres(image_size, CONV_KERNELS[0], CONV_STRIDES[0])
        self.attention = LanguageQueryAttention(
            config.channels[0], config.attention_heads, config.attention_key_dim, first_grid
        )
        self.where = nn.Sequential(nn.Linear(2 * config.attention_heads, config.proprio_dim), nn.ReLU())
        self.fovea = None
        fovea_dim = 0
        if config.fovea:
            self.fovea = Fovea(config.fovea, image_size, config.attention_key_dim)
            fovea_dim = config.proprio_dim
            self.fovea_read = nn.Sequential(nn.Linear(2 * self.fovea.conv2.out_channels, fovea_dim), nn.ReLU())
            # Inputs of the fusion layer besides the window's keypoints: the fine image
            # coordinates, and where they put the object on the table relative to the gripper
            # (in units of TARGET_OFFSET_SCALE).
            self.table_plane = TablePlane(table_homography(image_size))
            fovea_dim += 4
        # Reads the last map flattened in (H, W, C) order: a view of a channels-last map.
        self.glimpse = nn.Sequential(nn.Linear(in_ch * size * size, config.glimpse_dim), nn.ReLU())
        # The trunk's input is rgb in [0, 255] and depth in metres (SB3's own image scaling
        # is off, see VLAActorCriticPolicy): the first layer maps them to [0, 1].
        self.register_buffer("input_scale", torch.tensor([1 / 255] * 3 + [1 / (DEPTH_FAR - DEPTH_NEAR)]), persistent=False)
        self.register_buffer("input_shift", torch.tensor([0.0] * 3 + [DEPTH_NEAR]), persistent=False)
        proprio_dim = observation_space["proprio"].shape[0]
        low = torch.as_tensor(observation_space["proprio"].low, dtype=torch.float32)
        high = torch.as_tensor(observation_space["proprio"].high, dtype=torch.float32)
        # Proprio is standardised as (p - shift) / scale; BC sets both from the demos
        # (see set_proprio_statistics) and they travel in the state dict to PPO.
        self.register_buffer("proprio_shift", (low + high) / 2)
        self.register_buffer("proprio_scale", (high - low) / 2)
        self.proprio = nn.Sequential(nn.Linear(proprio_dim, config.proprio_dim), nn.ReLU())
        # Vision summary of the first (never FiLM-ed) layer, for the optional contrastive loss.
        self.vision_embed = nn.Linear(config.channels[0], config.contrastive_dim)
        self.language_embed = nn.Linear(config.language_dim, config.contrastive_dim)
        fused = 2 * in_ch + config.glimpse_dim + config.proprio_dim + config.language_dim + config.proprio_dim + fovea_dim
        self.fuse = nn.Sequential(nn.Linear(fused, config.features_dim), nn.ReLU())
        # Auxiliary head for BC: the goal object's offset from the end-effector (in units of
        # TARGET_OFFSET_SCALE), a dense "where is the goal" signal. PPO does not use it.
        self.target_head = nn.Linear(config.features_dim, 3)
        # And where that object must go (NetworkConfig.destination_head), in the same units.
        self.destination_head = nn.Linear(config.features_dim, 3) if config.destination_head else None
        self.keep_auxiliary = False
        self.auxiliary: dict[str, torch.Tensor] = {}

    def _build_language(self, config: NetworkConfig) -> None:
        """The instruction reader and the trained ``language`` module that makes its output a
        (B, language_dim) embedding: the tokenizer and word encoder, or the frozen sentence
        encoder and an MLP from its D-wide embedding."""
        self.tokenizer: Tokenizer | None = None
        self.sentence_encoder: SentenceEncoder | None = None
        if config.language_encoder == WORD_ENCODER:
            in_order = config.word_context == "gru"
            self.tokenizer = Tokenizer(config.vocabulary, in_order=in_order)
            encoder = SequenceLanguageEncoder if in_order else LanguageEncoder
            self.language = encoder(len(config.vocabulary), config.word_dim, config.language_dim)
            return
        dim, width = config.language_embedding_dim, config.language_dim
        self.sentence_encoder = SentenceEncoder(config.language_encoder, dim)
        self.language = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width))

    def _read_instruction(self, instruction: torch.Tensor) -> torch.Tensor:
        """Instruction bytes (B, 128) to the ``language`` module's input: word ids (B,
        MAX_WORDS), or sentence embeddings float32 (B, D)."""
        if self.tokenizer is not None:
            return self.tokenizer(instruction)
        return self.sentence_encoder(instruction)

    def same_instruction(self, instruction: torch.Tensor) -> torch.Tensor:
        """Instruction bytes (B, 128) to (B, B) bool: whether the language encoder reads
        instructions i and j alike (the same known words in order; for a sentence encoder,
        the same text)."""
        read = self.tokenizer(instruction) if self.tokenizer is not None else instruction
        return (read[:, None, :] == read[None, :, :]).all(-1)

    def _images(self, observations: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """rgb (B, 3, H, W) in [0, 255] and depth (B, 1, H, W) in metres, as float views;
        depth is None when the config does not use it (``use_depth=False``).

        Channel-last observations (the env's layout) become channels-last views for free,
        which is what the conv trunk runs fastest on; channel-first ones (after SB3's
        ``VecTransposeImage``) stay as they are. Nothing is stacked or copied: the first
        conv layer convolves rgb and depth apart and adds (see :meth:`_first_conv`).
        """
        rgb = observations["rgb"]
        rgb = rgb if rgb.is_floating_point() else rgb.float()  # SB3 has made it float already
        if not self.rgb_channels_first:
            rgb = rgb.permute(0, 3, 1, 2)
        if not self.config.use_depth:
            return rgb, None
        depth = observations["depth"].to(rgb.dtype)
        if not self.depth_channels_first:
            depth = depth.permute(0, 3, 1, 2)
        return rgb, depth

    def _weights_cached(self, name: str, tensors: tuple[torch.Tensor, ...], compute) -> Any:
        """``compute()``; without gradients, reused until one of ``tensors`` changes (its
        storage or version counter: an optimiser step, ``load_state_dict``, a device move)."""
        if torch.is_grad_enabled():
            return compute()
        version = tuple((t.data_ptr(), t._version) for t in tensors)
        entry = self._weight_cache.get(name)
        if entry is None or entry[0] != version:
            entry = self._weight_cache[name] = (version, compute())
        return entry[1]

    def _fold_input_scaling(self, conv: nn.Conv2d, inputs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv``'s weight over its first ``inputs`` input channels (rgb, then depth) and its
        bias, with rgb / 255 and (depth - near) / (far - near) folded in: the layer on the raw
        input computes what ``conv`` computes on the scaled one."""
        weight = conv.weight[:, :inputs] * self.input_scale[:inputs].view(1, inputs, 1, 1)
        return weight, conv.bias - (weight * self.input_shift[:inputs].view(1, inputs, 1, 1)).sum(dim=(1, 2, 3))

    def _first_conv(self, rgb: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
        """The first conv layer on the raw rgb and depth, without stacking them (measured
        faster than one copy into a 4-channel input): its weights split by input channel, with
        rgb / 255 and (depth - near) / (far - near) folded into them and the bias. Without
        depth (``depth`` None, ``use_depth=False``) the depth weights take no part, not even
        in the bias: the layer is the rgb half alone."""
        conv = self.convs[0]
        inputs = 4 if depth is not None else 3  # rgb channels come first in the weight

        def fold() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            weight, bias = self._fold_input_scaling(conv, inputs)
            layout = torch.channels_last
            return weight[:, :3].contiguous(memory_format=layout), weight[:, 3:].contiguous(memory_format=layout), bias

        rgb_weight, depth_weight, bias = self._weights_cached(f"first_conv_{inputs}", (conv.weight, conv.bias), fold)
        out = F.conv2d(rgb, rgb_weight, bias, conv.stride)
        return out if depth is None else out + F.conv2d(depth, depth_weight, None, conv.stride)

    def _proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        """The proprio MLP on ``(proprio - shift) / scale``, the standardisation folded into
        its linear layer."""
        linear = self.proprio[0]

        def fold() -> tuple[torch.Tensor, torch.Tensor]:
            weight = linear.weight / self.proprio_scale
            return weight, linear.bias - weight @ self.proprio_shift

        tensors = (linear.weight, linear.bias, self.proprio_shift, self.proprio_scale)
        weight, bias = self._weights_cached("proprio", tensors, fold)
        return F.relu(F.linear(proprio, weight, bias))

    def _conditioning(self, instruction: torch.Tensor) -> torch.Tensor:
        """Instruction bytes (B, 128) to (B, language_dim + FiLM width + heads * key_dim): the
        embedding, the FiLM parameters and the unit-norm attention queries, side by side."""
        language = self.language(self._read_instruction(instruction))
        cond = self.condition(language)
        film_width = sum(self._condition_split[1:])
        query = F.normalize(cond[:, film_width:].view(len(cond), self.config.attention_heads, -1), dim=-1)
        return torch.cat([language, cond[:, :film_width], query.flatten(1)], dim=1)

    def _condition(self, instruction: torch.Tensor) -> torch.Tensor:
        """:meth:`_conditioning`, cached per distinct instruction when no gradient is wanted.

        Rollouts, evaluation and ``predict`` run without gradients, and an episode's
        instruction does not change, so a step costs a dict lookup instead of the language
        encoder and the conditioning map. The cache is keyed by those weights' storage and
        version counters (:meth:`_weights_cached` hands out a new, empty dict when they
        change: an optimiser step, ``load_state_dict``, a move to another device).
        """
        if torch.is_grad_enabled():
            # A batch repeats its instructions: encode each distinct one once.
            distinct, inverse = torch.unique(instruction, dim=0, return_inverse=True)
            return self._conditioning(distinct)[inverse]
        cache = self._weights_cached("conditioning", (*self.language.parameters(), *self.condition.parameters()), dict)
        keys = [row.tobytes() for row in instruction.detach().to("cpu", torch.uint8).numpy()]
        missing = [i for i, key in enumerate(keys) if key not in cache]
        if missing:
            for i, row in zip(missing, self._conditioning(instruction[missing])):
                cache[keys[i]] = row
            while len(cache) > CONDITION_CACHE_SIZE:  # bounded: drop the oldest
                del cache[next(iter(cache))]
        if len(keys) == 1:
            return cache[keys[0]][None]
        return torch.stack([cache[key] for key in keys])

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        cond = self._condition(observations["instruction"])
        language, *films, query = cond.split([*self._condition_split, cond.shape[1] - sum(self._condition_split)], dim=1)
        query = query.reshape(len(cond), self.config.attention_heads, -1)
        rgb, depth = self._images(observations)
        where = first = None
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(self._first_conv(rgb, depth) if i == 0 else conv(x))
            if self._film_on[i]:
                x = film(x, *films.pop(0).chunk(2, dim=1))
            x = F.relu(x)
            if i == 0:
                first = x
                where = self.attention(x, query)  # (B, heads, 2)
        glimpse = self.glimpse(x.permute(0, 2, 3, 1).reshape(len(x), -1))
        proprio = self._proprio(observations["proprio"])
        features = [self.keypoints(x), glimpse, self.where(where.flatten(1)), language, proprio]
        fine = plane_offset = None
        if self.fovea is not None:
            fine, fovea = self._foveate(rgb, depth, where[:, 0].detach(), query[:, 0])
            gripper = observations["proprio"][:, :2].to(fine.dtype)  # end effector's world (x, y), m
            plane_offset = (self.table_plane(fine) - gripper) / TARGET_OFFSET_SCALE
            features += [self.fovea_read(fovea), fine, plane_offset]
        fused = self.fuse(torch.cat(features, dim=1))
        if self.keep_auxiliary:
            self.auxiliary = {
                "where": where,
                **({} if fine is None else {"where_fine": fine, "plane_offset": plane_offset}),
                "target_offset": self.target_head(fused),
                **({} if self.destination_head is None else {"destination_offset": self.destination_head(fused)}),
                "vision": self.vision_embed(first.mean(dim=(2, 3))),
                "language": self.language_embed(language),
            }
        return fused

    def _foveate(
        self, rgb: torch.Tensor, depth: torch.Tensor | None, centre: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fovea on the window of raw rgb and depth (rgb alone without ``use_depth``)
        around ``centre`` (B, 2), the trunk's input scaling folded into its first layer as in
        :meth:`_first_conv`: (fine (B, 2), keypoints (B, 2 * channels))."""
        conv = self.fovea.conv1
        inputs = 4 if depth is not None else 3

        def fold() -> tuple[torch.Tensor, torch.Tensor]:
            weight, bias = self._fold_input_scaling(conv, inputs)
            return weight.contiguous(memory_format=torch.channels_last), bias

        first = self._weights_cached(f"fovea_conv_{inputs}", (conv.weight, conv.bias), fold)
        window = self.fovea.sample([rgb] if depth is None else [rgb, depth], centre)
        return self.fovea(window, centre, query, first)

    def channels_last(self) -> "VLAFeaturesExtractor":
        """Keep the conv weights in channels-last memory, as the trunk's input is: measured
        ~15 % faster for a train step on CPU (oneDNN). Called after weight initialisation
        (SB3's orthogonal init needs contiguous weights); state dicts load either way."""
        self.convs.to(memory_format=torch.channels_last)
        if self.fovea is not None:
            self.fovea.to(memory_format=torch.channels_last)
        return self

    @torch.no_grad()
    def set_proprio_statistics(self, mean: np.ndarray, std: np.ndarray, min_std: float = 1e-3) -> None:
        """Standardise proprio with per-dimension ``mean`` and ``std`` (8,) from the demos."""
        self.proprio_shift.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.proprio_scale.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(min_std))

    @contextlib.contextmanager
    def keeping_auxiliary(self) -> Iterator[None]:
        """Forward passes inside keep their auxiliary outputs (``keep_auxiliary``), for
        :meth:`pop_auxiliary`; the flag is reset on exit, also on an error."""
        self.keep_auxiliary = True
        try:
            yield
        finally:
            self.keep_auxiliary = False

    def pop_auxiliary(self) -> dict[str, torch.Tensor]:
        """Outputs of the last forward pass for BC's auxiliary losses (kept only while
        ``keep_auxiliary`` is true): ``where`` (B, heads, 2) image coordinates the instruction
        attends to, ``target_offset`` (B, 3) in units of :data:`TARGET_OFFSET_SCALE` (and
        ``destination_offset`` (B, 3) with ``NetworkConfig.destination_head``), and the
        ``vision`` / ``language`` embeddings (B, contrastive_dim) of the InfoNCE loss."""
        if not self.auxiliary:
            raise RuntimeError("no auxiliary outputs: run the forward pass inside keeping_auxiliary()")
        out, self.auxiliary = self.auxiliary, {}
        return out


class VLAActorCriticPolicy(ActorCriticPolicy):
    """SB3 ``ActorCriticPolicy`` with :class:`VLAFeaturesExtractor` and a tanh-bounded mean.

    The Gaussian's mean is ``tanh(linear(latent))`` (inside the action bounds [-1, 1]);
    its log-std is SB3's learned state-independent parameter, so the std BC fits is the
    std PPO starts exploring with. ``network`` is a :class:`NetworkConfig` as a dict;
    :attr:`network_config` is it with a sentence encoder's embedding size filled in.
    """

    def __init__(self, observation_space, action_space, lr_schedule, network: dict[str, Any] | None = None, **kwargs):
        config = resolve_language_encoder(NetworkConfig(**(network or {})))
        kwargs.setdefault("net_arch", config.net_arch)
        kwargs.setdefault("log_std_init", config.log_std_init)
        kwargs.setdefault("features_extractor_class", VLAFeaturesExtractor)
        kwargs.setdefault("features_extractor_kwargs", {"network": config.to_dict()})
        kwargs.setdefault("share_features_extractor", True)
        if kwargs.setdefault("normalize_images", False):
            raise ValueError(
                "normalize_images must be False for the VLA policy: its first conv layer scales rgb from [0, 255] itself"
            )
        self.network_config = config
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.features_extractor.channels_last()
        self.action_net = nn.Sequential(self.action_net, nn.Tanh())
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["network"] = self.network_config.to_dict()
        return data

    def set_training_mode(self, mode: bool) -> None:
        """SB3 calls this on every ``predict``; ``nn.Module.train`` walks and re-sets all the
        modules each time (about a fifth of a one-observation ``predict`` here), so the walk is
        skipped when every module is already in that mode. The modules are listed once (the
        recursive walk to list them cost a further 0.2 ms per ``predict``)."""
        modules = self.__dict__.get("_all_modules")
        if modules is None:
            modules = self.__dict__["_all_modules"] = list(self.modules())
        if any(module.training != mode for module in modules):
            super().set_training_mode(mode)

    def obs_to_tensor(self, observation: Any) -> tuple[Any, bool]:
        """SB3's conversion of a Dict observation, without its deep copy of the caller's arrays
        (nothing here writes to them) and its per-key image-space checks: each key of
        ``observation`` shaped like its space (one observation) or ``(n, *shape)`` (n of them;
        channel-last frames for a channel-first space, under SB3's ``VecTransposeImage``, are
        transposed as SB3 does), as tensors on the policy's device with a batch dimension; and
        whether it was batched."""
        if not isinstance(observation, dict):
            return super().obs_to_tensor(observation)
        tensors, batched = {}, set()
        for key, space in self.observation_space.spaces.items():
            if key not in observation:
                raise ValueError(f"observation lacks {key!r}; a {type(self).__name__} needs {list(self.observation_space.spaces)}")
            value = np.asarray(observation[key])
            if value.shape != space.shape and value.shape[1:] != space.shape:
                value = maybe_transpose(value, space)  # channel-last frames for a channel-first space, as SB3 does
            if value.shape == space.shape:
                value, is_batch = value[None], False
            elif value.shape[1:] == space.shape:
                is_batch = True
            else:
                raise ValueError(f"observation {key!r} is shaped {value.shape}; expected {space.shape} or (n, *{space.shape})")
            batched.add(is_batch)
            tensors[key] = torch.as_tensor(value, device=self.device)
        if len(batched) > 1:
            raise ValueError("observation mixes batched and single entries; give every key one or the other")
        return tensors, batched.pop()


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
