"""``pick``: pick up the object the instruction names (``VLAPick-v0``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_gym.envs import language
from vla_gym.envs.experts.skills import Lift, pick_skills
from vla_gym.envs.scene import sample_scene
from vla_gym.envs.tasks.base import Role, Task, TaskEpisode

#: The target counts as picked when its lowest point is at least this high above the
#: table top (m) while a finger touches it.
LIFT_HEIGHT = 0.05
#: The expert lifts this far (m) beyond :data:`LIFT_HEIGHT`, so success holds with margin.
LIFT_MARGIN = 0.03
# Dense reward weights; they sum to 1 so the reward lies in [0, 1].
REACH_WEIGHT = 0.3
GRASP_WEIGHT = 0.2
LIFT_WEIGHT = 0.5


class PickTask(Task):
    """Pick up the object named by the instruction.

    ## Task Description
    A table holds ``num_objects`` objects (cube, cylinder or sphere), each a different
    colour; the instruction ("pick up the red cube") names one, the ``target``. The others
    are distractors, so a policy that ignores the instruction succeeds about once in
    ``num_objects`` tries.

    ## Randomizations
    Colours, shapes (under ``object_split``), positions (at least 0.10 m apart) and yaws
    (up to 30 degrees) of the objects; which is the target; the instruction's template,
    verb and noun (:mod:`vla_gym.envs.language`).

    ## Success Conditions
    The target's lowest point is at least :data:`LIFT_HEIGHT` = 0.05 m above the table
    while a finger touches it. Lifting another object is not success.

    ## Dense reward
    0.3 for reaching the target (``1 - tanh(d / 0.1 m)``), 0.2 while a finger touches it,
    0.5 for its lift height towards :data:`LIFT_HEIGHT` while touched.
    """

    name = "pick"
    max_episode_steps = 50
    role_options = ("target",)
    templates = language.TEMPLATES

    def sample_scene(self, rng: np.random.Generator, num_objects: int, object_split: str) -> TaskEpisode:
        specs, target_index = sample_scene(rng, num_objects, object_split)
        return TaskEpisode(specs, [], {"target": Role("object", target_index)})

    def sample_instruction(self, rng: np.random.Generator, episode: TaskEpisode, split: str) -> str:
        target = episode.spec_of(episode.roles["target"])
        return language.sample_instruction(rng, target.colour, target.shape, split)

    @classmethod
    def words(cls, split: str) -> set[str]:
        return language.words_of_split(split)

    def evaluate(self) -> dict[str, Any]:
        target = self.episode.roles["target"]
        touched = self.touched(target)
        height = self.bottom_height(target)
        success = height >= LIFT_HEIGHT and touched
        return {"success": success, "subgoals_done": int(success), "num_subgoals": 1, "touched": touched, "height": height}

    def dense_reward(self, evaluation: dict[str, Any]) -> float:
        touched = evaluation["touched"]
        lift = np.clip(evaluation["height"] / LIFT_HEIGHT, 0.0, 1.0) if touched else 0.0
        return REACH_WEIGHT * self.reach_term(self.episode.roles["target"]) + GRASP_WEIGHT * touched + LIFT_WEIGHT * lift

    def goal_points(self) -> np.ndarray:
        """The target, and its centre lifted to the expert's height (above where it is now)."""
        target = self.episode.roles["target"]
        centre = self.position(target)
        lifted = [*centre[:2], self.episode.spec_of(target).half_height + LIFT_HEIGHT + LIFT_MARGIN]
        return np.stack([centre, lifted]).astype(np.float32)

    def plan(self, roles: dict[str, Role]) -> list:
        body = roles["target"].body_name
        return [*pick_skills(body), Lift(body, LIFT_HEIGHT + LIFT_MARGIN)]
