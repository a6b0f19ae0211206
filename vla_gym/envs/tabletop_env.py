"""The one env class of vla_gym: a Franka Panda at a table, RGB-D and proprioception in,
end-effector motion out, and whatever task (:mod:`vla_gym.envs.tasks`) the instruction asks
for. Every registered id (``VLAPick-v0`` ... ``VLAMultiTask-v0``) is this class with
other kwargs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from vla_gym.envs.display import require_display
from vla_gym.envs.language import INSTRUCTION_SPLITS, MAX_INSTRUCTION_BYTES, encode_instruction
from vla_gym.envs.pybullet_sim import RENDERERS, PyBulletSim, zbuffer_to_metres
from vla_gym.envs.robot import ROBOT_MESHES, Panda
from vla_gym.envs.scene import OBJECT_SPLITS, Scene
from vla_gym.envs.spaces import (
    ACTION_DIM,
    AGENT_CAMERA,
    CONTROL_PERIOD,
    MAX_EE_STEP,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    PROPRIO_HIGH,
    PROPRIO_LOW,
    SOLVER_ITERATIONS,
    SUBSTEPS,
    TIME_STEP,
    VIEWER_CAMERA,
    VIEWER_SIZE,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    make_action_space,
    make_observation_space,
)
from vla_gym.envs.tasks import TASKS, Task, World
from vla_gym.envs.tasks.shifts import EXECUTION_SHIFTS, ExecutionShift, check_execution_shift

REWARD_TYPES = ("sparse", "dense")
MIN_OBJECTS, MAX_OBJECTS = 2, 6
#: Largest ``camera_jitter`` allowed: shift (m per axis) and rotation (degrees per axis).
MAX_CAMERA_SHIFT, MAX_CAMERA_ROTATION_DEG = 0.2, 30.0
#: Reset options every task takes; each task adds its roles (``Task.role_options``).
COMMON_RESET_OPTIONS = ("instruction",)
#: numpy dtype kinds an action may have: bool, signed and unsigned int, float.
ACTION_DTYPE_KINDS = "biuf"
#: Resets between two rebuilds of the sim (see ``VLATabletopEnv._rebuild_sim_if_due``): at
#: ~1 KB kept per removed body, memory stays within a few MB; a rebuild costs ~0.1 s.
SIM_REBUILD_EVERY = 256


@dataclass
class TabletopConfig:
    """Keyword arguments of every vla_gym env, checked on construction.

    Attributes:
        tasks: the task (a name of :data:`vla_gym.envs.tasks.TASKS`) or tasks to draw one
            from per episode (a sequence of names; ``"all"`` for every task).
        image_size: side (px) of the square ``rgb`` and ``depth`` observations.
        num_objects: movable objects on the table, an int or an inclusive (min, max)
            range drawn per episode; each between 2 and 6.
        reward_type: "sparse" or "dense".
        instruction_split: "train" or "test" instruction templates and words.
        object_split: "train" (only the seen colour-shape combinations) or "test" (the goal
            object is a held-out combination; see :data:`vla_gym.envs.scene.HELD_OUT_COMBINATIONS`).
        camera_jitter: ``(shift_m, rotation_deg)``: at each reset the agent camera moves
            by up to ``shift_m`` metres along each world axis and turns by up to
            ``rotation_deg`` degrees about each, uniformly; 0 (default) keeps it fixed.
        execution_shift: names from :data:`vla_gym.envs.tasks.shifts.EXECUTION_SHIFTS`
            ("start_pose": the arm starts from a random pose; "perturb": the target object
            is pushed once mid-episode), "all", or () (default: none).
        robot_mesh: "lowpoly" (fast) or "full" (the stock visual meshes).
        renderer: "tiny" (CPU TinyRenderer) or "egl" (GPU, falls back to "tiny").
    """

    tasks: str | tuple[str, ...] = "pick"
    image_size: int = 84
    num_objects: int | tuple[int, int] = (3, 5)
    reward_type: str = "sparse"
    instruction_split: str = "train"
    object_split: str = "train"
    camera_jitter: float | tuple[float, float] = (0.0, 0.0)
    execution_shift: str | tuple[str, ...] = ()
    robot_mesh: str = "lowpoly"
    renderer: str = "tiny"

    def __post_init__(self) -> None:
        self.tasks = _check_tasks(self.tasks)
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer)) or not (
            MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE
        ):
            raise ValueError(
                f"image_size={self.image_size!r} must be an int from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"
            )
        self.num_objects = _check_num_objects(self.num_objects)
        self.camera_jitter = _check_camera_jitter(self.camera_jitter)
        self.execution_shift = check_execution_shift(self.execution_shift)
        for name, allowed in (
            ("reward_type", REWARD_TYPES),
            ("instruction_split", INSTRUCTION_SPLITS),
            ("object_split", OBJECT_SPLITS),
            ("robot_mesh", ROBOT_MESHES),
            ("renderer", RENDERERS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not available; choose one of {allowed}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "TabletopConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise TypeError(f"unknown vla_gym env kwargs {unknown}; allowed: {known} and render_mode")
        return cls(**kwargs)


def _check_tasks(value: Any) -> tuple[str, ...]:
    names = tuple(TASKS) if value == "all" else (value,) if isinstance(value, str) else value
    try:
        names = tuple(names)
    except TypeError:
        names = (value,)
    unknown = [n for n in names if n not in TASKS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"tasks={value!r} must be a task name, 'all', or a sequence of distinct names from {list(TASKS)}"
        )
    return names


def _check_num_objects(value: Any) -> tuple[int, int]:
    """``num_objects`` as an inclusive (min, max) pair of ints."""
    pair = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    message = (
        f"num_objects={value!r} must be an int or a (min, max) pair of ints "
        f"with {MIN_OBJECTS} <= min <= max <= {MAX_OBJECTS}"
    )
    try:
        bounds = tuple(pair)
    except TypeError:
        raise ValueError(message) from None
    if len(bounds) != 2 or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bounds):
        raise ValueError(message)
    bounds = (int(bounds[0]), int(bounds[1]))
    if not MIN_OBJECTS <= bounds[0] <= bounds[1] <= MAX_OBJECTS:
        raise ValueError(message)
    return bounds


def _check_camera_jitter(value: Any) -> tuple[float, float]:
    """``camera_jitter`` as ``(shift_m, rotation_deg)``; 0 means no jitter."""
    pair = (0.0, 0.0) if isinstance(value, (int, float, np.number)) and value == 0 else value
    try:
        shift, rotation = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(
            f"camera_jitter={value!r} must be 0 or a (shift_m, rotation_deg) pair, e.g. (0.02, 2.0)"
        ) from None
    if not (0.0 <= shift <= MAX_CAMERA_SHIFT and 0.0 <= rotation <= MAX_CAMERA_ROTATION_DEG):
        raise ValueError(
            f"camera_jitter={value!r}: shift must lie in [0, {MAX_CAMERA_SHIFT}] m and rotation in "
            f"[0, {MAX_CAMERA_ROTATION_DEG}] degrees"
        )
    return shift, rotation


class VLATabletopEnv(gym.Env):
    """A language-conditioned tabletop task for a Franka Panda, from RGB-D and proprioception.

    A table holds 2-6 (default 3-5) small objects (cube, cylinder or sphere) in the colours
    of :data:`vla_gym.envs.scene.PALETTE` and, for some tasks, fixtures: bowls, plates and
    flat square zones. The task (``tasks`` kwarg; the registered ids fix it) decides what
    the instruction asks: ``pick`` ("pick up the red cube"), ``place`` ("put the red cube
    in the blue bowl"), ``push`` ("push the green cube into the yellow square"), ``stack``
    ("stack the red cube on the blue cube"), ``spatial_pick`` ("pick up the cube left of
    the green sphere") or ``rearrange`` (two or three placements in a row). With several
    tasks (``VLAMultiTask-v0``) one is drawn per episode and only the instruction tells
    which; ``info["task"]`` names it. Each task's module documents its Task Description,
    Randomizations and Success Conditions.

    ## Action Space
    ``Box(-1, 1, (4,), float32)``: ``(dx, dy, dz, grip)``, the same for every task.
    ``dx, dy, dz`` move the end-effector target by up to :data:`MAX_EE_STEP` = 0.04 m per
    step (world frame), reached by inverse kinematics and joint position control; the
    gripper points down. ``grip > 0`` closes the gripper, ``grip <= 0`` opens it. Values
    outside [-1, 1] are clipped; a wrong shape or a non-finite value raises ``ValueError``.
    Control runs at 20 Hz: each step advances physics by :data:`SUBSTEPS` = 10 steps of 5 ms.

    ## Observation Space
    ``Dict``, the same for every task, with
    - ``rgb``: uint8 (H, W, 3), H = W = ``image_size`` (default 84), from a fixed camera
      in front of the table;
    - ``depth``: float32 (H, W, 1), metres along the camera axis, clipped to [0.1, 2.0];
    - ``proprio``: float32 (8,): end-effector position (m, world), end-effector velocity
      (m/s), gripper opening (m, 0 to 0.08), last gripper command (+1 closed, -1 open),
      clipped to :data:`PROPRIO_LOW` / :data:`PROPRIO_HIGH`;
    - ``instruction``: uint8 (128,), the instruction's UTF-8 bytes padded with zeros;
      :func:`vla_gym.envs.decode_instruction` turns it back into text.

    ``info`` (on reset and every step) holds ``task`` (its name), ``instruction`` (str),
    ``target`` (``{"colour", "shape"}`` of the object the task moves first), ``roles``
    (``{role: {"colour", "shape" | "kind"}}``), ``objects`` and ``fixtures`` (lists of
    such dicts), ``is_success``, and ``subgoals_done`` / ``num_subgoals`` (progress: 0 or 1
    of 1 for single-step tasks, several for ``rearrange``).

    ## Rewards
    ``reward_type="sparse"`` (``VLA<Task>-v0``): 1.0 on success, else 0.0.
    ``reward_type="dense"`` (``VLA<Task>Dense-v0``): 1.0 on success, else the task's
    shaping in [0, 1). Success is the task's one predicate (``Task.evaluate``).

    ## Episode End
    Terminated on success. Truncated at the task's time limit (``max_episode_steps`` at
    registration; under ``VLAMultiTask-v0``, whose registered limit is the longest task's,
    the env truncates each episode at its own task's limit).

    ## Reset options
    ``reset(seed=..., options={...})``: ``instruction`` replaces the generated text; each
    task's role options (``target``, and e.g. ``receptacle``, ``zone``, ``base``) make the
    body of that colour in the seeded scene play the role; on several tasks, ``task``
    chooses the task. Options are checked before the sim is touched (``ValueError`` naming
    what is allowed); the scene depends on the seed (and task) alone.

    ## Generalisation splits
    Training (``vla-gym collect``, BC, PPO) uses the defaults, and ``vla-gym benchmark``
    sweeps them; they mean the same on every task:
    - ``instruction_split="train"|"test"``: "test" instructions use templates, verbs,
      nouns and relation words that no "train" instruction uses (colour and direction
      words are shared);
    - ``object_split="train"|"test"``: 7 of the 21 colour-shape combinations never appear
      in a "train" scene; in a "test" scene the goal object is one of them;
    - ``num_objects``: 2 to 6, or a (min, max) range drawn per episode;
    - ``camera_jitter=(shift_m, rotation_deg)``: the agent camera moves per episode; drawn
      after the scene, so a seed gives the same scene with or without it (the episode's
      camera is ``env.unwrapped.agent_camera``);
    - ``execution_shift``: "start_pose" and/or "perturb" (:mod:`vla_gym.envs.tasks.shifts`);
      drawn last, so a seed gives the same scene and instruction with or without it.

    ## Arguments
    See :class:`TabletopConfig`; and ``render_mode`` in ``{"rgb_array", "human"}``.
    ``"human"`` needs a display: without one, ``DisplayUnavailableError`` says what to do
    before PyBullet is asked for a window.

    ## Version History
    - v0: initial release. Before any tag, the simulator was made to sort PyBullet's
      overlapping pairs, so an episode no longer depends on the episodes an env ran before
      it; ``object_split`` and ``camera_jitter`` were added (the default
      ``object_split="train"`` no longer draws the held-out combinations). Later, also
      before a tag: one env class for a suite of tasks (place, push, stack, spatial pick,
      rearrange, multi-task), ``execution_shift`` and the display check; ``VLAPick-v0``
      gives the same frames for the same seed as before (a fingerprint test guards it).
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": round(1.0 / CONTROL_PERIOD)}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        self.config = TabletopConfig.from_kwargs(**kwargs)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r} is not available; choose None or one of {self.metadata['render_modes']}"
            )
        if render_mode == "human":
            require_display()
        self.render_mode = render_mode
        self.action_space = make_action_space()
        self.observation_space = make_observation_space(self.config.image_size)
        self.sim = PyBulletSim(
            TIME_STEP, SOLVER_ITERATIONS, gui=render_mode == "human", renderer=self.config.renderer
        )
        self.scene = Scene(self.sim)
        self.robot = Panda(self.sim, mesh=self.config.robot_mesh)
        self.world = World(self.sim, self.robot, self.scene)
        self.tasks: dict[str, Task] = {name: TASKS[name](self.world) for name in self.config.tasks}
        self.task: Task = self.tasks[self.config.tasks[0]]
        self.shift = ExecutionShift(self.world, self.config.execution_shift)
        # Snapshot of the empty scene: each reset starts from it, so an episode never
        # depends on the ones before it (contact caches included).
        self.robot.reset()
        self._empty_state = self.sim.save_state()
        self._resets_since_build = 0
        #: The agent camera of the current episode (moved at each reset under ``camera_jitter``).
        self.agent_camera = AGENT_CAMERA
        self._view = AGENT_CAMERA.view_matrix()
        self._projection = AGENT_CAMERA.projection_matrix(1.0)
        self._viewer_view = VIEWER_CAMERA.view_matrix()
        self._viewer_projection = VIEWER_CAMERA.projection_matrix(VIEWER_SIZE[0] / VIEWER_SIZE[1])
        self.instruction = ""
        self._instruction_bytes = np.zeros(MAX_INSTRUCTION_BYTES, np.uint8)
        #: Counts resets, so experts know when a new episode began.
        self.episode_index = -1
        self._elapsed = 0
        self._evaluation: dict[str, Any] = {}

    @property
    def reset_options(self) -> tuple[str, ...]:
        """Every reset option this env takes."""
        roles = sorted({option for task in self.tasks.values() for option in task.role_options})
        return (*COMMON_RESET_OPTIONS, *roles, *(("task",) if len(self.tasks) > 1 else ()))

    # --- Gymnasium API ------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self.sim.client is None:
            raise RuntimeError("reset() on a closed env; make a new one with gym.make")
        super().reset(seed=seed)
        options = self._check_options(options)
        rng = self.np_random
        task = self._choose_task(rng, options.get("task"))
        foreign = sorted(set(options) - {*COMMON_RESET_OPTIONS, "task", *task.role_options})
        if foreign:
            raise ValueError(
                f"reset options {foreign} do not apply to this episode's task {task.name!r}, "
                f"which takes {[*COMMON_RESET_OPTIONS, *task.role_options]} (choose the task with options['task'])"
            )
        low, high = self.config.num_objects
        episode = task.sample_scene(rng, int(rng.integers(low, high + 1)), self.config.object_split)
        task.apply_role_options(episode, options)
        # Drawn even when replaced, so that the options never change the random stream.
        text = task.sample_instruction(rng, episode, self.config.instruction_split)
        if options.get("instruction") is not None:
            text = options["instruction"]
        instruction_bytes = encode_instruction(text)  # validates before the sim is touched
        episode.instruction = text
        # Drawn after the scene and only when asked for: the same seed gives the same scene
        # with or without jitter or execution shifts.
        shift, rotation = self.config.camera_jitter
        self.agent_camera = AGENT_CAMERA.jittered(rng, shift, rotation) if shift or rotation else AGENT_CAMERA
        self._view = self.agent_camera.view_matrix()
        self._rebuild_sim_if_due()
        self.scene.clear()
        self.sim.restore_state(self._empty_state)
        self.robot.reset()
        self.scene.spawn(episode.objects, episode.fixtures)
        self.task = task
        task.begin(episode)
        self.shift.begin(rng, episode)
        self.instruction, self._instruction_bytes = text, instruction_bytes
        self.episode_index += 1
        self._elapsed = 0
        self._evaluation = task.evaluate()
        return self._observation(), self._info()

    def step(self, action):
        if self.sim.client is None:
            raise RuntimeError("step() on a closed env; make a new one with gym.make")
        if self.task.episode is None:
            raise RuntimeError("step() before reset(); call env.reset(seed=...) first")
        action = self._check_action(action)
        target = np.clip(self.robot.ee_position() + action[:3] * MAX_EE_STEP, WORKSPACE_LOW, WORKSPACE_HIGH)
        self.robot.set_ee_target(target)
        self.robot.set_gripper(bool(action[3] > 0.0))
        self.sim.step(SUBSTEPS)
        self._elapsed += 1
        self.shift.after_step(self._elapsed)
        self.task.after_step()
        self._evaluation = self.task.evaluate()
        success = bool(self._evaluation["success"])
        reward = self.task.reward(self.config.reward_type, self._evaluation)
        truncated = len(self.tasks) > 1 and not success and self._elapsed >= self.task.max_episode_steps
        return self._observation(), reward, success, truncated, self._info()

    def progress(self) -> float:
        """The current task's dense progress in [0, 1] at the current state (1.0 on success):
        the ``VLA<Task>Dense-v0`` reward, whatever this env's ``reward_type``. A potential
        for reward shaping (see ``vla_gym.agents.shaping``)."""
        if self.task.episode is None:
            raise RuntimeError("progress() before reset(); call env.reset(seed=...) first")
        return self.task.reward("dense", self._evaluation)

    def render(self) -> np.ndarray | None:
        """``rgb_array``: uint8 (360, 480, 3) third-person view; ``human``: the GUI shows it."""
        if self.render_mode == "rgb_array":
            rgb, _ = self.sim.render(*VIEWER_SIZE, self._viewer_view, self._viewer_projection)
            return rgb
        return None

    def close(self) -> None:
        self.sim.close()

    def _rebuild_sim_if_due(self) -> None:
        """Every :data:`SIM_REBUILD_EVERY` resets, rebuild the sim in a fresh client.

        PyBullet keeps a few KB of every body created and removed until its client goes, so
        an env reset many times would grow without bound. The rebuild repeats what the
        constructor did, in the same order, so the sim is exactly a new env's: episodes are
        the same with or without it. Not with the GUI, whose window it would close.
        """
        self._resets_since_build += 1
        if self._resets_since_build < SIM_REBUILD_EVERY or self.sim.gui:
            return
        self._resets_since_build = 0
        self.sim.reconnect()
        self.scene.build()
        self.robot.load()
        self.robot.reset()
        self._empty_state = self.sim.save_state()

    # --- privileged state (for scripted experts and tests) -------------------------------
    def role_position(self, role: str) -> np.ndarray:
        """World position (m) of the centre of the body playing ``role``, shape (3,)."""
        return self.task.position(self.task.episode.roles[role])

    def goal_points(self) -> np.ndarray:
        """The current subgoal's object centre and where that centre must go, float32 (2, 3)
        in metres (:meth:`vla_gym.envs.tasks.base.Task.goal_points`)."""
        return self.task.goal_points()

    # --- helpers ------------------------------------------------------------------------
    def _check_options(self, options: Any) -> dict[str, Any]:
        if options is None:
            return {}
        if not isinstance(options, dict):
            raise TypeError(f"reset options must be a dict or None, got {type(options).__name__}")
        unknown = sorted(set(options) - set(self.reset_options))
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; allowed: {list(self.reset_options)}")
        task = options.get("task")
        if task is not None and task not in self.tasks:
            raise ValueError(f"reset option task={task!r} is not one of this env's tasks {list(self.tasks)}")
        return dict(options)

    def _choose_task(self, rng: np.random.Generator, name: str | None) -> Task:
        """The episode's task; with several, one is drawn (also when ``name`` chooses, so the
        random stream does not depend on the option). One task draws nothing."""
        if len(self.tasks) == 1:
            task = self.task
        else:
            drawn = list(self.tasks)[int(rng.integers(len(self.tasks)))]
            task = self.tasks[name or drawn]
        return task

    def _check_action(self, action) -> np.ndarray:
        message = f"action must be {ACTION_DIM} finite real numbers (dx, dy, dz, grip), got {action!r}"
        try:
            raw = np.asarray(action)
        except (TypeError, ValueError):
            raise ValueError(message) from None
        # Strings, bytes and complex numbers would convert (or lose their imaginary part)
        # silently under a float cast: only bool, int and float arrays are actions.
        if raw.dtype.kind not in ACTION_DTYPE_KINDS:
            raise ValueError(f"{message} (dtype {raw.dtype}; allowed: bool, int or float)")
        arr = raw.astype(np.float32)
        if arr.shape != (ACTION_DIM,):
            raise ValueError(
                f"action must have shape ({ACTION_DIM},) = (dx, dy, dz, grip), got shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"action must be finite, got {arr.tolist()}")
        return np.clip(arr, -1.0, 1.0)

    def _observation(self) -> dict[str, np.ndarray]:
        size = self.config.image_size
        rgb, zbuffer = self.sim.render(size, size, self._view, self._projection)
        depth = zbuffer_to_metres(zbuffer, AGENT_CAMERA.near, AGENT_CAMERA.far)
        ee_pos, ee_vel = self.robot.ee_state()
        grip_cmd = 1.0 if self.robot.gripper_closed else -1.0
        proprio = np.concatenate([ee_pos, ee_vel, [self.robot.gripper_opening(), grip_cmd]])
        proprio = np.clip(proprio, PROPRIO_LOW, PROPRIO_HIGH)
        return {
            "rgb": rgb,
            "depth": depth[..., None],
            "proprio": proprio.astype(np.float32),
            "instruction": self._instruction_bytes.copy(),
        }

    def _info(self) -> dict[str, Any]:
        episode = self.task.episode
        return {
            "task": self.task.name,
            "instruction": self.instruction,
            "target": episode.spec_of(episode.roles["target"]).describe(),
            "roles": self.task.roles_info(),
            "objects": [spec.describe() for spec in episode.objects],
            "fixtures": [spec.describe() for spec in episode.fixtures],
            "is_success": bool(self._evaluation["success"]),
            "subgoals_done": int(self._evaluation["subgoals_done"]),
            "num_subgoals": int(self._evaluation["num_subgoals"]),
        }
