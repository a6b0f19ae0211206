"""Roll out any policy with ``predict(obs, deterministic=True) -> (action, state)`` on fixed
seeds and report its success rate with a 95 % Wilson interval."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes={successes} must lie in [0, trials={trials}]")
    phat = successes / trials
    denom = 1 + z * z / trials
    centre = (phat + z * z / (2 * trials)) / denom
    half = z * math.sqrt(phat * (1 - phat) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`: success rate, its 95 % interval, episode lengths."""

    episodes: int
    successes: int
    mean_length: float
    per_target: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "success_rate": self.success_rate, "ci95": list(self.interval)}

    def summary(self) -> str:
        lo, hi = self.interval
        return (
            f"success {self.successes}/{self.episodes} = {self.success_rate:.1%} "
            f"(95% CI {lo:.1%}-{hi:.1%}), mean episode length {self.mean_length:.1f}"
        )


def evaluate(
    env: gym.Env,
    policy_factory: Callable[[gym.Env], Any],
    seeds: Iterable[int],
    deterministic: bool = True,
    options: dict[str, Any] | None = None,
) -> EvalResult:
    """Run one episode per seed; the policy is built once by ``policy_factory(env)``.

    Episodes end on termination or truncation, so ``env`` needs a time limit
    (``gym.make`` adds the registered one).
    """
    policy = policy_factory(env)
    seeds = list(seeds)
    successes, total_length = 0, 0
    per_target: dict[str, dict[str, int]] = {}
    for seed in seeds:
        obs, info = env.reset(seed=seed, options=options)
        colour = info["target"]["colour"]
        length, done = 0, False
        while not done:
            action, _ = policy.predict(obs, deterministic=deterministic)
            obs, _, terminated, truncated, info = env.step(action)
            length += 1
            done = terminated or truncated
        success = bool(info["is_success"])
        successes += success
        total_length += length
        cell = per_target.setdefault(colour, {"episodes": 0, "successes": 0})
        cell["episodes"] += 1
        cell["successes"] += success
    return EvalResult(len(seeds), successes, total_length / max(len(seeds), 1), per_target)
