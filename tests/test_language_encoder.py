"""The optional frozen sentence encoder (``NetworkConfig.language_encoder``, extra ``[language]``).

Built offline: a tiny randomly initialised BERT with a 13-word vocabulary, mean pooled and
saved as a sentence-transformers model directory; nothing is downloaded.
"""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from vla_gym.agents.network import (
    LanguageExtraMissingError,
    NetworkConfig,
    load_sentence_model,
    resolve_language_encoder,
)
from vla_gym.envs.language import encode_instruction

#: Width of the tiny model's embeddings.
TINY_DIM = 32
TINY_WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "pick", "up", "the", "red", "blue", "cube", "put", "bowl")
SMALL = {"channels": [8, 16, 16], "features_dim": 32, "net_arch": {"pi": [32], "vf": [32]}}


def _sentence_modules():
    """sentence-transformers' Transformer and Pooling modules (moved in version 6)."""
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer
    return Transformer, Pooling


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """Directory of a tiny randomly initialised sentence-transformers model (BERT, 2 layers)."""
    st = pytest.importorskip("sentence_transformers", reason="needs the [language] extra (sentence-transformers)")
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("sentence_model")
    (root / "vocab.txt").write_text("\n".join(TINY_WORDS) + "\n")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(
        vocab_size=len(TINY_WORDS), hidden_size=TINY_DIM, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    ))
    bert.save_pretrained(root / "bert")
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root / "bert")
    transformer_module, pooling_module = _sentence_modules()
    word = transformer_module(str(root / "bert"))
    st.SentenceTransformer(modules=[word, pooling_module(TINY_DIM)]).save(str(root / "model"))
    return str(root / "model")


def _env_args():
    from vla_gym.data.format import env_args

    return env_args("VLAPick-v0")


def _obs(texts: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    n = len(texts)
    return {
        "rgb": torch.from_numpy(rng.integers(0, 256, (n, 84, 84, 3), dtype=np.uint8)),
        "depth": torch.from_numpy(rng.uniform(0.5, 1.5, (n, 84, 84, 1)).astype(np.float32)),
        "proprio": torch.from_numpy(rng.uniform(-0.5, 0.5, (n, 8)).astype(np.float32)),
        "instruction": torch.from_numpy(np.stack([encode_instruction(t) for t in texts])),
    }


def _policy(model: str):
    from vla_gym.agents.checkpoint import build_policy

    return build_policy(_env_args(), {**SMALL, "language_encoder": model}, "cpu")


def test_the_encoder_loads_by_path_and_feeds_the_network(tiny_model):
    config = resolve_language_encoder(NetworkConfig(language_encoder=tiny_model))
    assert config.language_embedding_dim == TINY_DIM and config.vocabulary == ()
    policy = _policy(tiny_model)
    extractor = policy.features_extractor
    assert extractor.tokenizer is None and extractor.language[0].in_features == TINY_DIM
    features = extractor(_obs(["pick up the red cube", "put the blue cube in the bowl"]))
    assert features.shape == (2, SMALL["features_dim"])
    features.square().sum().backward()
    assert extractor.language[0].weight.grad.abs().sum() > 0  # the projection trains
    model_weights = {p.data_ptr() for p in load_sentence_model(tiny_model).parameters()}
    assert not model_weights & {t.data_ptr() for t in policy.state_dict().values()}  # frozen, not stored
    assert not any(p.data_ptr() in model_weights for p in policy.parameters())


def test_embeddings_are_computed_once_per_instruction(tiny_model, monkeypatch):
    model = load_sentence_model(tiny_model)
    calls = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda texts, **kw: calls.append(list(texts)) or encode(texts, **kw))
    policy = _policy(tiny_model)
    policy.set_training_mode(False)
    obs = _obs(["pick up the red cube", "pick up the red cube", "put the blue cube in the bowl"])
    first = policy.extract_features(obs, policy.features_extractor)  # with gradients: no conditioning cache
    assert calls == [["pick up the red cube", "put the blue cube in the bowl"]]  # each distinct text once
    again = policy.extract_features(obs, policy.features_extractor)
    for _ in range(3):
        policy.predict({k: v[0].numpy() for k, v in obs.items()}, deterministic=True)  # a step
    assert len(calls) == 1
    torch.testing.assert_close(first, again)
    policy.extract_features(_obs(["pick up the blue cube"]), policy.features_extractor)
    assert calls[1:] == [["pick up the blue cube"]]
    encoder = pickle.loads(pickle.dumps(policy.features_extractor.sentence_encoder))  # no model, no cache inside
    assert encoder.name == tiny_model and encoder._cache == {}


@pytest.mark.parametrize("encoder", ["words", "sentence"])
def test_same_instruction_is_what_the_encoder_reads_alike(encoder, request):
    network = {**SMALL, "language_encoder": request.getfixturevalue("tiny_model")} if encoder == "sentence" else SMALL
    from vla_gym.agents.checkpoint import build_policy

    extractor = build_policy(_env_args(), network, "cpu").features_extractor
    texts = ["pick up the red cube", "PICK UP THE RED CUBE!", "pick up the blue cube", "pick up the red cube"]
    same = extractor.same_instruction(_obs(texts)["instruction"])
    words_alike = encoder == "words"  # the word encoder ignores case and punctuation
    assert same.tolist() == [
        [True, words_alike, False, True],
        [words_alike, True, False, words_alike],
        [False, False, True, False],
        [True, words_alike, False, True],
    ]


def test_checkpoint_round_trip_records_the_model_not_its_weights(tiny_model, tmp_path):
    from vla_gym.agents.checkpoint import load_policy, read_checkpoint, save_checkpoint

    policy = _policy(tiny_model)
    path = save_checkpoint(
        tmp_path / "policy.pt", policy, {"env": _env_args(), "network": policy.network_config.to_dict()}
    )
    network = read_checkpoint(path)["meta"]["network"]
    assert network["language_encoder"] == tiny_model and network["language_embedding_dim"] == TINY_DIM
    loaded = load_policy(path, device="cpu")
    obs = _obs(["pick up the red cube", "put the blue cube in the bowl"], seed=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.extract_features(obs, loaded.features_extractor),
                                   policy.extract_features(obs, policy.features_extractor))
    one = {k: v[0].numpy() for k, v in obs.items()}
    np.testing.assert_allclose(loaded.predict(one, deterministic=True)[0], policy.predict(one, deterministic=True)[0],
                               rtol=1e-5, atol=1e-6)


def test_a_recorded_embedding_size_must_match_the_model(tiny_model):
    with pytest.raises(ValueError, match=f"gives {TINY_DIM}-d embeddings.*language_embedding_dim=16"):
        resolve_language_encoder(NetworkConfig(language_encoder=tiny_model, language_embedding_dim=16))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"language_encoder": ""}, "language_encoder must be"),
        ({"language_encoder": "some/model", "vocabulary": ["<pad>", "<unk>", "red"]}, "vocabulary is read only"),
        ({"language_embedding_dim": 32}, "has none"),
        ({"language_encoder": "some/model", "language_embedding_dim": 0}, "language_embedding_dim"),
    ],
)
def test_bad_language_encoder_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**kwargs)


def test_missing_extra_names_the_install_line(monkeypatch):
    """Runs with or without sentence-transformers installed: the import is made to fail."""
    from vla_gym.agents.checkpoint import build_policy
    from vla_gym.cli_checks import OptionError, check_language_encoder

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # `import` now raises ImportError
    name = "never-loaded/model"
    with pytest.raises(LanguageExtraMissingError, match=r'pip install -e "\.\[language\]"'):
        build_policy(_env_args(), {**SMALL, "language_encoder": name}, "cpu")
    with pytest.raises(OptionError, match=r'--language-encoder .*never-loaded/model.*pip install -e "\.\[language\]"'):
        check_language_encoder(name, "--language-encoder")
    check_language_encoder("words", "--language-encoder")  # the word encoder needs nothing


def test_a_model_that_cannot_be_found_is_named(tmp_path):
    pytest.importorskip("sentence_transformers", reason="needs the [language] extra (sentence-transformers)")
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(ValueError, match="cannot be loaded as a sentence-transformers model"):
        load_sentence_model(missing)


def test_train_bc_takes_the_language_encoder_flag():
    from vla_gym.cli import build_parser

    args = ["train-bc", "--data", "d.h5", "--language-encoder", "sentence-transformers/all-MiniLM-L6-v2"]
    assert build_parser(args).parse_args(args).language_encoder == "sentence-transformers/all-MiniLM-L6-v2"
    assert build_parser(args[:3]).parse_args(args[:3]).language_encoder == "words"


def test_train_bc_with_a_sentence_encoder_end_to_end(tiny_model, tmp_path, capsys):
    """`vla-gym train-bc --language-encoder DIR`: the run's policy records the model and its
    size, and loads back for evaluation."""
    from vla_gym.agents.checkpoint import load_policy, read_checkpoint
    from vla_gym.cli import main

    data, run = tmp_path / "demos.h5", tmp_path / "run"
    assert main(["collect", "--episodes", "2", "--workers", "0", "--out", str(data), "--no-progress"]) == 0
    assert main(["train-bc", "--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "16",
                 "--rollout-every", "0", "--device", "cpu", "--no-progress", "--language-encoder", tiny_model,
                 "--contrastive-coef", "0.1"]) == 0  # InfoNCE asks the encoder which instructions match
    network = read_checkpoint(run / "policy.pt")["meta"]["network"]
    assert (network["language_encoder"], network["language_embedding_dim"]) == (tiny_model, TINY_DIM)
    assert load_policy(run / "policy.pt", device="cpu").features_extractor.sentence_encoder.name == tiny_model
    capsys.readouterr()
