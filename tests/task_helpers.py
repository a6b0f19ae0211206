"""Helpers shared by the per-task tests (tests/test_task_*.py): a small-image env fixture,
seed search, hand-placing bodies, settling and running the scripted expert.

Import them as ``from tests.task_helpers import ...`` (like ``tests.conftest``'s
``assert_obs_equal``); values that differ between tasks (settle steps, seed ranges) stay
in the test files and are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import gymnasium as gym
import numpy as np
import pybullet as p
import pytest

from vla_gym.envs.experts.scripted import ScriptedExpert
from vla_gym.envs.scene import OBJECT_HALF_SIZE, FixtureSpec, ObjectSpec

#: Side (px) of the images of the envs the task tests make: small, for speed.
TEST_IMAGE_SIZE = 32
#: Hold still with the gripper open, or closed.
NEUTRAL = np.array([0.0, 0.0, 0.0, -1.0], np.float32)
NEUTRAL_CLOSED = np.array([0.0, 0.0, 0.0, 1.0], np.float32)
#: Height (m) above its resting pose from which a hand-placed body is let fall.
PLACE_DROP = 0.002
#: Seeds :func:`seed_with` tries unless told otherwise.
SCENE_SEEDS = range(80)


def task_env_fixture(env_id: str):
    """A pytest fixture making ``env_id`` at :data:`TEST_IMAGE_SIZE` (closed after the test);
    assign it to a module-level name, which becomes the fixture's name."""

    @pytest.fixture
    def _task_env(make_env) -> gym.Env:
        return make_env(env_id, image_size=TEST_IMAGE_SIZE)

    return _task_env


def seed_with(env: gym.Env, predicate: Callable[[dict], bool], seeds: Iterable[int] = SCENE_SEEDS, **kwargs):
    """The first seed whose reset info satisfies ``predicate(info)``, and that info."""
    for seed in seeds:
        _, info = env.reset(seed=seed, **kwargs)
        if predicate(info):
            return seed, info
    pytest.fail("no seed gave the scene this test needs")


def body_name(env: gym.Env, role_or_body: str) -> str:
    """The body name (``object_<i>``, ``fixture_<i>``) of a role of the episode, or the body name given."""
    roles = env.unwrapped.task.episode.roles
    return roles[role_or_body].body_name if role_or_body in roles else role_or_body


def spec(env: gym.Env, role_or_body: str) -> ObjectSpec | FixtureSpec:
    """The episode's spec of a role or body."""
    episode = env.unwrapped.task.episode
    kind, index = body_name(env, role_or_body).split("_")
    return (episode.objects if kind == "object" else episode.fixtures)[int(index)]


def teleport(env: gym.Env, role_or_body: str, position, orientation=None) -> None:
    """Put a body (role or body name) at ``position`` (m), at rest, keeping its orientation or
    turned to ``orientation`` (a quaternion), and wake it (a sleeping body would hang there)."""
    body, sim = body_name(env, role_or_body), env.unwrapped.sim
    if orientation is None:
        sim.set_base_position(body, position)
    else:
        sim.client.resetBasePositionAndOrientation(sim.bodies[body], position, orientation)
    sim.client.changeDynamics(sim.bodies[body], -1, activationState=p.ACTIVATION_STATE_WAKE_UP)


def set_velocity(env: gym.Env, role_or_body: str, linear) -> None:
    """Set a body's (role or body name) linear velocity (m/s, world), as if knocked."""
    sim = env.unwrapped.sim
    sim.client.resetBaseVelocity(sim.bodies[body_name(env, role_or_body)], linear)


def place(env: gym.Env, role_or_body: str, xy, bottom: float = 0.0, orientation=None, drop: float = PLACE_DROP) -> None:
    """Teleport an object (role or body name) to ``xy`` (m), its lowest point ``bottom`` (m)
    above the table plus ``drop`` (m): upright as spawned, or turned to ``orientation`` (a
    quaternion; then its centre at ``bottom`` plus the objects' radius,
    :data:`~vla_gym.envs.scene.OBJECT_HALF_SIZE`)."""
    if orientation is None:
        teleport(env, role_or_body, [*xy, bottom + spec(env, role_or_body).half_height + drop])
    else:
        teleport(env, role_or_body, [*xy, bottom + OBJECT_HALF_SIZE + drop], orientation)


def place_in(env: gym.Env, obj: str, fixture: str, offset=(0.0, 0.0), **kwargs) -> None:
    """Put object ``obj`` on the floor of receptacle ``fixture`` (roles or body names), its
    centre ``offset`` (m, x/y) from the receptacle's; ``kwargs`` go to :func:`place`."""
    receptacle = spec(env, fixture)
    place(env, obj, np.asarray(receptacle.xy) + np.asarray(offset), bottom=receptacle.floor_height, **kwargs)


def settle(env: gym.Env, steps: int, action: np.ndarray = NEUTRAL, stop_when_terminated: bool = True) -> dict:
    """Step ``action`` ``steps`` times (or until the episode terminates, if
    ``stop_when_terminated``); the last step's info."""
    for _ in range(steps):
        _, _, terminated, _, info = env.step(action)
        if terminated and stop_when_terminated:
            break
    return info


def run_expert(env: gym.Env, expert, steps: int) -> tuple[list[float], list[dict]]:
    """Step ``expert.act()`` until the episode ends or ``steps`` steps; every step's reward and info."""
    rewards, infos = [], []
    for _ in range(steps):
        _, reward, terminated, truncated, info = env.step(expert.act())
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            break
    return rewards, infos


def instruction_words(text: str) -> list[str]:
    """The words of an instruction, without commas and a closing question mark."""
    return text.rstrip("?").replace(",", "").split()


def expert_holds_it_there(env: gym.Env, where: str, steps: int) -> tuple[bool, dict]:
    """Run the scripted expert from the episode's start for up to ``steps`` steps (until the
    episode terminates): whether at some step the task's evaluation had ``where`` (e.g.
    ``"inside"``, ``"on_top"``) true while a finger still touched the target, without
    success yet; and the last step's info."""
    expert = ScriptedExpert(env)
    held_there = False
    for _ in range(steps):
        _, _, terminated, _, info = env.step(expert.act())
        evaluation = env.unwrapped.task.evaluate()
        held_there |= evaluation[where] and evaluation["touched"] and not info["is_success"]
        if terminated:
            break
    return held_there, info


def check_moving_or_held_target_is_not_success(
    env: gym.Env, put_target: Callable[[], None], settle_steps: int, resting: str, held: str, steps: int
) -> None:
    """A target in its goal relation but still moving, or still held by the expert's grip, is
    not success. ``put_target()`` places it (seed 1); ``resting`` is the evaluation key that
    stays true while it slides; ``held`` the relation the expert reaches before letting go
    (within ``steps`` steps), which must precede success."""
    env.reset(seed=1)
    put_target()
    settle(env, settle_steps)
    set_velocity(env, "target", [0.2, 0.0, 0.0])
    evaluation = env.unwrapped.task.evaluate()
    assert evaluation[resting] and not evaluation["success"]
    env.reset(seed=1)
    held_there, info = expert_holds_it_there(env, held, steps)
    assert held_there and info["is_success"]
