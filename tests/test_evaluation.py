"""Evaluation: success statistics, per-target breakdown, JSON, video and policy specs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from vla_gym.envs.experts import ScriptedExpert
from vla_gym.envs.spaces import VIEWER_SIZE
from vla_gym.evaluation import (
    VIDEO_HOLD_FRAMES,
    VIDEO_TEXT_LINES,
    EvalResult,
    RandomPolicy,
    evaluate,
    policy_from_spec,
    run_evaluation,
    wilson_interval,
)
from vla_gym.visualize import TEXT_BAND_HEIGHT

FIRST_SEED = 70_000  # away from the expert's tuning seeds (< 10 000) and test_expert's
EPISODES = 5
RESULT_KEYS = {
    "metadata", "episodes", "successes", "success_rate", "ci95", "mean_length", "per_target", "per_task", "episodes_log"
}
LOG_KEYS = {"seed", "task", "target", "instruction", "success", "length", "subgoals_done", "num_subgoals"}


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory):
    """``run_evaluation`` of the scripted expert on a few seeds, with its JSON file."""
    json_path = tmp_path_factory.mktemp("eval") / "nested" / "dir" / "scripted.json"
    result = run_evaluation("scripted", episodes=EPISODES, seed=FIRST_SEED, json_path=str(json_path), progress=False)
    return result, json_path


def test_wilson_interval_hand_checked():
    # 8 of 10 at z = 1.96: centre 0.7167, half-width 0.2266.
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    # Symmetric under successes <-> failures; no trials says nothing.
    lo2, hi2 = wilson_interval(2, 10)
    assert lo2 == pytest.approx(1 - hi) and hi2 == pytest.approx(1 - lo)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_scripted_expert_succeeds_and_breakdown_sums_to_totals(scripted_run):
    result, _ = scripted_run
    assert result.episodes == EPISODES and result.success_rate == 1.0
    per_target = result.to_dict()["per_target"]
    assert sum(cell["episodes"] for cell in per_target.values()) == result.episodes
    assert sum(cell["successes"] for cell in per_target.values()) == result.successes
    for colour, cell in per_target.items():
        assert cell["success_rate"] == 1.0 and cell["ci95"] == list(wilson_interval(cell["episodes"], cell["episodes"]))
        assert colour in result.per_target_summary()
    assert [r["seed"] for r in result.episodes_log] == list(range(FIRST_SEED, FIRST_SEED + EPISODES))
    assert all(set(r) == LOG_KEYS and r["success"] and r["instruction"] for r in result.episodes_log)
    assert result.mean_length == pytest.approx(np.mean([r["length"] for r in result.episodes_log]))


def test_json_is_written_with_metadata(scripted_run):
    result, json_path = scripted_run
    data = json.loads(json_path.read_text())
    assert set(data) == RESULT_KEYS
    assert data["metadata"]["env_id"] == "VLAPick-v0" and data["metadata"]["policy"] == "scripted"
    assert (data["metadata"]["seed_first"], data["metadata"]["seed_last"]) == (FIRST_SEED, FIRST_SEED + EPISODES - 1)
    assert data["metadata"]["deterministic"] is True
    assert data["success_rate"] == 1.0 and data["ci95"] == list(result.interval)
    assert len(data["episodes_log"]) == EPISODES
    assert not [p for p in json_path.parent.iterdir() if p != json_path], "temporary files left behind"


def test_random_policy_does_worse():
    result = run_evaluation("random", episodes=3, seed=FIRST_SEED, progress=False)
    assert result.episodes == 3 and result.success_rate < 1.0


def test_random_policy_is_seeded(make_env):
    env = make_env()
    a = [policy_from_spec("random", env, seed=3).predict(None)[0] for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    assert isinstance(policy_from_spec("random", env), RandomPolicy)
    assert isinstance(policy_from_spec("scripted", env), ScriptedExpert)


def test_video_of_the_first_episodes(make_env, tmp_path):
    env = make_env(render_mode="rgb_array")
    path = tmp_path / "videos" / "eval.mp4"
    seeds = [FIRST_SEED, FIRST_SEED + 1]
    result = evaluate(env, ScriptedExpert, seeds, video_path=path, video_episodes=1, progress=True)
    assert result.success_rate == 1.0
    assert [p.name for p in path.parent.iterdir()] == ["eval.mp4"]
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    # Only the first episode: its reset and steps, the last frame held with the outcome.
    assert len(frames) == result.episodes_log[0]["length"] + VIDEO_HOLD_FRAMES
    width, height = VIEWER_SIZE
    assert frames[0].shape == (height + VIDEO_TEXT_LINES * TEXT_BAND_HEIGHT, width, 3)


def test_video_needs_mp4_suffix_and_rgb_array(make_env, tmp_path):
    with pytest.raises(ValueError, match=r"\.mp4"):
        evaluate(make_env(render_mode="rgb_array"), ScriptedExpert, [0], video_path=tmp_path / "eval.avi")
    with pytest.raises(ValueError, match=r"\.mp4"):
        run_evaluation("scripted", episodes=1, video_path=str(tmp_path / "eval"), progress=False)
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        evaluate(make_env(), ScriptedExpert, [0], video_path=tmp_path / "eval.mp4")
    with pytest.raises(ValueError, match="video_episodes"):
        evaluate(
            make_env(render_mode="rgb_array"), ScriptedExpert, [0], video_path=tmp_path / "e.mp4", video_episodes=0
        )
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_is_a_clear_error(make_env, tmp_path):
    missing = str(tmp_path / "no_such_policy.zip")
    with pytest.raises(FileNotFoundError, match="no_such_policy.zip"):
        policy_from_spec(missing, make_env())
    with pytest.raises(FileNotFoundError, match="scripted"):
        run_evaluation(missing, episodes=1, progress=False)


def test_options_callable_chooses_the_target_per_seed(make_env):
    env = make_env()
    seeds = [FIRST_SEED + 10, FIRST_SEED + 11, FIRST_SEED + 12]
    chosen = {}
    for seed in seeds:  # pick an object other than the seed's own goal
        _, info = env.reset(seed=seed)
        chosen[seed] = next(o["colour"] for o in info["objects"] if o["colour"] != info["target"]["colour"])
    calls = []

    def options(seed: int, index: int) -> dict:
        calls.append((seed, index))
        return {"target": chosen[seed]}

    result = evaluate(env, ScriptedExpert, seeds, options=options)
    assert calls == [(seed, i) for i, seed in enumerate(seeds)]
    assert [r["target"] for r in result.episodes_log] == [chosen[s] for s in seeds]
    assert result.success_rate == 1.0


def test_run_evaluation_with_a_fixed_target():
    result = run_evaluation("scripted", episodes=2, seed=FIRST_SEED, target="red", progress=False)
    assert [r["target"] for r in result.episodes_log] == ["red", "red"] and result.success_rate == 1.0
    assert set(result.per_target) == {"red"}


def test_bad_arguments_are_clear_errors(make_env):
    with pytest.raises(ValueError, match="episodes"):
        run_evaluation("scripted", episodes=0)
    with pytest.raises(ValueError, match="magenta"):
        run_evaluation("scripted", episodes=1, target="magenta")
    with pytest.raises(TypeError, match="options"):
        evaluate(make_env(), ScriptedExpert, [0], options=["target", "red"])


def test_eval_result_is_backwards_compatible(tmp_path):
    result = EvalResult(4, 3, 20.0, {"red": {"episodes": 4, "successes": 3}})
    assert result.success_rate == 0.75 and result.episodes_log == []
    assert "3/4" in result.summary() and "red" in result.per_target_summary()
    path = result.save_json(tmp_path / "a" / "r.json", {"seeds": np.arange(2), "n": np.int64(4)})
    data = json.loads(path.read_text())
    assert data["metadata"] == {"seeds": [0, 1], "n": 4}
    assert data["per_target"]["red"]["success_rate"] == 0.75
