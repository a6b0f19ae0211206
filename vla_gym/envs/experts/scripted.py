"""The scripted expert: runs the current task's plan of skills on privileged state."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from vla_gym.envs.experts.skills import Skill
from vla_gym.envs.spaces import MAX_EE_STEP
from vla_gym.envs.tasks.base import Role

GAIN = 1.0  # proportional gain from position error (in units of MAX_EE_STEP) to action
#: Action noise fades linearly to zero within this distance (m) of the current sub-goal,
#: so noisy demos vary in free space but still line up and grasp precisely.
NOISE_FADE_DISTANCE = 0.06
#: Replans in one episode after which the expert stops retrying and holds still.
MAX_REPLANS = 20


class ScriptedExpert:
    """Runs the plan of whatever task the env's current episode has (any vla_gym env,
    ``VLAMultiTask-v0`` included), skill after skill; when a skill fails (a missed grasp,
    a dropped object) it plans again from the state it is in.

    Follows stable-baselines3's ``predict(obs, state=None, episode_start=None,
    deterministic=True) -> (action, state)``; the plan is reread at every new episode.

    Args:
        env: a vla_gym env (wrapped or not); its unwrapped env is read for state.
        noise_std: std of Gaussian noise added to the motion part of the action when
            ``deterministic=False`` (for varied demonstrations).
        seed: seed of the noise generator (and of the blind expert's choices).
        roles: colour per role to act on instead of the task's own (e.g.
            ``{"target": "blue"}``), to record deliberate mistakes.
        blind: an instruction-blind expert: the right task on bodies drawn at random for
            every role (among the bodies that could play it, the right one included), so its
            success rate is the chance level a policy that ignores the instruction gets.
    """

    def __init__(
        self,
        env: gym.Env,
        noise_std: float = 0.0,
        seed: Any = None,
        roles: dict[str, str] | None = None,
        blind: bool = False,
    ) -> None:
        unwrapped = env.unwrapped
        if not hasattr(unwrapped, "task") or not hasattr(unwrapped, "episode_index"):
            raise TypeError(f"ScriptedExpert needs a vla_gym env, got {type(unwrapped).__name__}")
        if not (noise_std >= 0):
            raise ValueError(f"noise_std must be a number >= 0, got {noise_std}")
        if blind and roles:
            raise ValueError("choose either roles= (fixed bodies) or blind=True (random bodies), not both")
        self.env = unwrapped
        self.noise_std = noise_std
        self.rng = np.random.default_rng(seed)
        self.role_colours = dict(roles or {})
        self.blind = blind
        self._episode = -1
        self._plan: list[Skill] = []
        self._index = 0
        self._replans = 0
        self.roles: dict[str, Role] = {}

    # --- plan bookkeeping -------------------------------------------------------------------
    def _start_episode(self) -> None:
        task = self.env.task
        self._episode = self.env.episode_index
        self.roles = dict(task.episode.roles)
        if self.blind:
            taken: set[Role] = set()
            for name in self.roles:
                choices = [r for r in task.blind_candidates(name) if r not in taken]
                self.roles[name] = choices[int(self.rng.integers(len(choices)))]
                taken.add(self.roles[name])
        for name, colour in self.role_colours.items():
            self.roles[name] = _role_of_colour(task.episode, self.roles[name], colour, name)
        self._replans = 0
        self._replan()

    def _replan(self) -> None:
        self._plan, self._index = self.env.task.plan(self.roles), 0

    def current_skill(self) -> Skill | None:
        """The skill acting now (None once the plan is finished), advancing past finished ones."""
        if self._episode != self.env.episode_index:
            self._start_episode()
        world = self.env.world
        for _ in range(2 * len(self._plan) + 2):
            if self._index >= len(self._plan):
                return None
            skill = self._plan[self._index]
            if skill.failed(world) and self._replans < MAX_REPLANS:
                self._replans += 1
                self._replan()
            elif skill.done(world):
                self._index += 1
            else:
                return skill
        return self._plan[self._index] if self._index < len(self._plan) else None

    # --- actions ------------------------------------------------------------------------------
    def act(self) -> np.ndarray:
        """Noise-free expert action, float32 (4,), from the env's current state."""
        return self._action()[0]

    def _action(self) -> tuple[np.ndarray, float]:
        """Expert action float32 (4,) and the distance (m) to the current skill's goal."""
        robot = self.env.robot
        ee = robot.ee_position()
        skill = self.current_skill()
        if skill is None:
            goal, grip = ee, (1.0 if robot.gripper_closed else -1.0)  # plan finished: hold still
        else:
            goal, grip = skill.command(self.env.world)
        motion = np.clip(GAIN * (np.asarray(goal) - ee) / MAX_EE_STEP, -1.0, 1.0)
        return np.array([*motion, grip], dtype=np.float32), float(np.linalg.norm(goal - ee))

    def act_noisy(self) -> tuple[np.ndarray, np.ndarray]:
        """The noise-free expert action and a copy with ``noise_std`` noise on the motion part.

        Demonstrations execute the noisy one and record the clean one as the label, so the
        recorded states cover small deviations and the labels say how to recover from them.
        """
        clean, distance = self._action()
        noisy = clean.copy()
        if self.noise_std > 0:
            scale = self.noise_std * min(1.0, distance / NOISE_FADE_DISTANCE)
            noisy[:3] = np.clip(noisy[:3] + self.rng.normal(0.0, scale, 3), -1.0, 1.0)
        return clean, noisy

    def predict(
        self,
        observation: Any = None,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        if deterministic:
            return self.act(), state
        return self.act_noisy()[1], state


def _role_of_colour(episode, role: Role, colour: str, name: str) -> Role:
    found = episode.role_of_colour(role.kind, colour)
    if found is None:
        raise ValueError(
            f"roles={{{name!r}: {colour!r}}}: no {colour} {role.kind}; present: {episode.colours(role.kind)}"
        )
    return found
