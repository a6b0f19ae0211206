"""Instruction templates, splits and the fixed-length byte encoding."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vla_gym.envs.language import (
    MAX_INSTRUCTION_BYTES,
    NOUNS,
    TEMPLATES,
    VERBS,
    decode_instruction,
    encode_instruction,
    sample_instruction,
)
from vla_gym.envs.scene import COLOURS, SHAPES


def test_splits_share_no_template_verb_or_noun():
    assert not set(TEMPLATES["train"]) & set(TEMPLATES["test"])
    assert not set(VERBS["train"]) & set(VERBS["test"])
    train_nouns = {n for nouns in NOUNS["train"].values() for n in nouns}
    test_nouns = {n for nouns in NOUNS["test"].values() for n in nouns}
    assert not train_nouns & test_nouns


@pytest.mark.parametrize("split", ["train", "test"])
def test_sampled_instructions_name_the_colour_and_come_from_the_split(split):
    rng = np.random.default_rng(0)
    other = "test" if split == "train" else "train"
    other_verbs = "|".join(re.escape(v) for v in VERBS[other])
    for _ in range(300):
        colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        text = sample_instruction(rng, colour, shape, split)
        assert colour in text
        assert not re.search(rf"\b({other_verbs})\b", text), text


def test_encode_decode_round_trip():
    for text in ["pick up the red cube", "hebe den roten Würfel", "拿起红色方块"]:
        encoded = encode_instruction(text)
        assert encoded.shape == (MAX_INSTRUCTION_BYTES,) and encoded.dtype == np.uint8
        assert decode_instruction(encoded) == text
    batch = np.stack([encode_instruction("a"), encode_instruction("bc")])
    assert decode_instruction(batch) == ["a", "bc"]


@pytest.mark.parametrize("bad", ["", "   ", "x" * (MAX_INSTRUCTION_BYTES + 1), "a\x00b", None])
def test_encode_rejects_bad_text(bad):
    with pytest.raises(ValueError):
        encode_instruction(bad)
