"""Language goals: instruction templates, synonym sets, train/test splits, byte encoding.

The train and test splits share no template, no verb and no shape noun, so that a
policy evaluated on ``instruction_split="test"`` reads phrasings it never saw in
training. Colour words are the same in both (they are what makes the goal unambiguous).
"""

from __future__ import annotations

import re

import numpy as np

INSTRUCTION_SPLITS = ("train", "test")

#: Bytes reserved for the instruction in the observation (UTF-8, zero padded).
MAX_INSTRUCTION_BYTES = 128

VERBS: dict[str, tuple[str, ...]] = {
    "train": ("pick up", "lift", "grasp", "grab"),
    "test": ("raise", "take", "elevate", "get"),
}

#: Share of pick instructions naming the object by a generic noun ("object", "item").
GENERIC_NOUN_RATE = 0.25

#: Nouns that name each shape; "object"-style nouns name any shape.
NOUNS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "cube": ("cube", "block"),
        "cylinder": ("cylinder", "can"),
        "sphere": ("sphere", "ball"),
        "any": ("object", "thing"),
    },
    "test": {
        "cube": ("box",),
        "cylinder": ("tube",),
        "sphere": ("orb",),
        "any": ("item", "one"),
    },
}

#: Nouns for the flat-topped shapes only (no sphere nouns), as the push and stack tasks
#: name their objects: the train nouns of :data:`NOUNS`, but only "item" as the test
#: split's generic noun.
FLAT_SHAPE_NOUNS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"cube": ("cube", "block"), "cylinder": ("cylinder", "can"), "any": ("object", "thing")},
    "test": {"cube": ("box",), "cylinder": ("tube",), "any": ("item",)},
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "{verb} the {colour} {noun}",
        "please {verb} the {colour} {noun}",
        "{verb} the {noun} that is {colour}",
        "robot, {verb} the {colour} {noun}",
        "your goal is to {verb} the {colour} {noun}",
    ),
    "test": (
        "could you {verb} the {colour} {noun}?",
        "i want you to {verb} the {colour} {noun} now",
        "find the {colour} {noun} and {verb} it",
        "{verb} that {colour} {noun} off the table",
    ),
}


def check_instruction_split(split: str) -> None:
    """``ValueError`` unless ``split`` is one of :data:`INSTRUCTION_SPLITS` (every task's
    templates and slots are keyed by them)."""
    if split not in INSTRUCTION_SPLITS:
        raise ValueError(f"instruction_split={split!r} is not available; choose one of {INSTRUCTION_SPLITS}")


def sample_instruction(rng: np.random.Generator, colour: str, shape: str, split: str = "train") -> str:
    """Draw an instruction naming the ``colour`` ``shape`` from the ``split`` templates.

    Always draws the same number of random numbers, whatever the arguments.
    """
    check_instruction_split(split)
    template = TEMPLATES[split][rng.integers(len(TEMPLATES[split]))]
    verb = VERBS[split][rng.integers(len(VERBS[split]))]
    noun = draw_noun(rng, NOUNS[split], shape, GENERIC_NOUN_RATE)
    return template.format(verb=verb, colour=colour, noun=noun)


def draw_noun(rng: np.random.Generator, nouns: dict[str, tuple[str, ...]], shape: str, generic_rate: float) -> str:
    """A noun for a ``shape`` object from ``nouns`` (one split's shape -> nouns, as
    :data:`NOUNS` ``[split]``): a generic ("any") one with probability ``generic_rate``.
    Draws two numbers."""
    generic = rng.random() < generic_rate
    choices = nouns["any" if generic else shape]
    return choices[int(rng.integers(len(choices)))]


def encode_instruction(text: str) -> np.ndarray:
    """UTF-8 bytes of ``text``, zero padded to uint8 (:data:`MAX_INSTRUCTION_BYTES`,)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"an instruction must be a non-empty string, got {text!r}")
    raw = text.encode("utf-8")
    if len(raw) > MAX_INSTRUCTION_BYTES:
        raise ValueError(
            f"instruction is {len(raw)} UTF-8 bytes; at most {MAX_INSTRUCTION_BYTES} fit in the observation"
        )
    if b"\x00" in raw:
        raise ValueError("an instruction must not contain NUL characters (they mark the padding)")
    out = np.zeros(MAX_INSTRUCTION_BYTES, dtype=np.uint8)
    out[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def decode_instruction(encoded: np.ndarray) -> str | list[str]:
    """Inverse of :func:`encode_instruction`.

    Takes uint8 (L,) and returns a string, or a batch (..., L) and returns nested lists.
    """
    arr = np.asarray(encoded)
    if arr.ndim > 1:
        return [decode_instruction(row) for row in arr]
    raw = arr.astype(np.uint8).tobytes()
    return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace")


def words_of_split(split: str) -> set[str]:
    """Every lower-case word the ``split``'s templates, verbs and nouns can produce (colours aside)."""
    check_instruction_split(split)
    texts = [t.format(verb="", colour="", noun="") for t in TEMPLATES[split]]
    texts += list(VERBS[split]) + [noun for nouns in NOUNS[split].values() for noun in nouns]
    return {word for text in texts for word in re.findall(r"[a-z]+", text.lower())}
