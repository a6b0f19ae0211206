"""The scripted expert succeeds on seeds it was never tuned on."""

from __future__ import annotations

import numpy as np
import pytest

from vla_gym.agents import ScriptedPickPolicy
from vla_gym.envs import MAX_EPISODE_STEPS
from vla_gym.evaluation import evaluate, wilson_interval

# Tuning used seeds below 10_000; these are far from them.
FAST_SEEDS = range(50_000, 50_012)
SLOW_SEEDS = range(60_000, 60_200)


def success_rate(env, seeds, noise_std: float = 0.0) -> float:
    result = evaluate(
        env, lambda e: ScriptedPickPolicy(e, noise_std=noise_std, seed=0), seeds, deterministic=noise_std == 0
    )
    assert result.episodes == len(seeds) and result.mean_length <= MAX_EPISODE_STEPS
    return result.success_rate


def test_expert_succeeds_on_fresh_seeds(env_id, make_env):
    assert success_rate(make_env(env_id), FAST_SEEDS) == 1.0


def test_noisy_expert_still_succeeds(make_env):
    assert success_rate(make_env(), FAST_SEEDS, noise_std=0.3) >= 11 / 12


def test_noise_varies_the_actions(make_env):
    env = make_env()
    obs, _ = env.reset(seed=0)
    quiet = ScriptedPickPolicy(env).predict(obs)[0]
    noisy = ScriptedPickPolicy(env, noise_std=0.3, seed=1).predict(obs, deterministic=False)[0]
    assert not np.allclose(quiet, noisy)


def test_expert_needs_a_vlapick_env():
    import gymnasium as gym

    with pytest.raises(TypeError, match="VLAPick"):
        ScriptedPickPolicy(gym.make("CartPole-v1"))


@pytest.mark.slow
def test_expert_success_rate_200_episodes(make_env):
    assert success_rate(make_env(), SLOW_SEEDS) >= 0.98


def test_wilson_interval_hand_checked():
    # 8 of 10, z = 1.96: centre (0.8 + 3.8415/20) / 1.38415 = 0.7167,
    # half-width 1.96 * sqrt(0.016 + 3.8415/400) / 1.38415 = 0.2266.
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(6, 5)
