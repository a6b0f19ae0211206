"""``VLAPick-v0``: pick up the object an instruction names, from RGB-D and proprioception."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vla_gym.envs.language import (
    INSTRUCTION_SPLITS,
    MAX_INSTRUCTION_BYTES,
    encode_instruction,
    sample_instruction,
)
from vla_gym.envs.pybullet_sim import RENDERERS, Camera, PyBulletSim, zbuffer_to_metres
from vla_gym.envs.robot import ROBOT_MESHES, Panda
from vla_gym.envs.scene import OBJECT_SPLITS, Scene, index_of_colour, sample_scene
from vla_gym.envs.task import REWARD_TYPES, PickTask

TIME_STEP = 1.0 / 200.0  # s, physics step
SUBSTEPS = 10  # physics steps per env step: control at 20 Hz (0.05 s a step)
CONTROL_PERIOD = TIME_STEP * SUBSTEPS  # s
#: Constraint solver iterations per physics step (PyBullet's default is 50); 20 hold a
#: grasp as firmly at 40 % less physics cost.
SOLVER_ITERATIONS = 20
MAX_EE_STEP = 0.04  # m: an action of +-1 moves the end-effector target this far per step
#: Box (m) the end-effector target is kept inside.
WORKSPACE_LOW = np.array([0.25, -0.35, 0.005])
WORKSPACE_HIGH = np.array([0.85, 0.35, 0.45])
ACTION_DIM = 4
PROPRIO_DIM = 8
#: Bounds of ``proprio`` (position m, velocity m/s, opening m, command); values are clipped to them.
PROPRIO_LOW = np.array([-1.0, -1.0, -0.5, -5.0, -5.0, -5.0, 0.0, -1.0], dtype=np.float32)
PROPRIO_HIGH = np.array([1.5, 1.0, 1.5, 5.0, 5.0, 5.0, 0.1, 1.0], dtype=np.float32)
MIN_OBJECTS, MAX_OBJECTS = 2, 6
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512
#: Largest ``camera_jitter`` allowed: shift (m per axis) and rotation (degrees per axis).
MAX_CAMERA_SHIFT, MAX_CAMERA_ROTATION_DEG = 0.2, 30.0

#: The agent's camera: in front of the table, looking back at the robot over the objects.
AGENT_CAMERA = Camera(eye=(1.05, 0.0, 0.65), target=(0.5, 0.0, 0.12), fov_deg=55.0, near=0.1, far=2.0)
#: A wider third-person view for ``render_mode="rgb_array"`` (videos).
VIEWER_CAMERA = Camera(eye=(1.05, -0.85, 0.75), target=(0.42, 0.0, 0.12), fov_deg=50.0, near=0.1, far=4.0)
VIEWER_SIZE = (480, 360)  # px, width x height

RESET_OPTIONS = ("target", "instruction")


@dataclass
class VLAPickConfig:
    """Keyword arguments of ``VLAPick-v0``, checked on construction.

    Attributes:
        image_size: side (px) of the square ``rgb`` and ``depth`` observations.
        num_objects: objects on the table, an int or an inclusive (min, max) range drawn
            per episode; each between 2 and 6.
        reward_type: "sparse" or "dense".
        instruction_split: "train" or "test" instruction templates and synonyms
            (:mod:`vla_gym.envs.language`).
        object_split: "train" (only the seen colour-shape combinations) or "test" (at
            least one held-out combination, and the goal is one; see
            :data:`vla_gym.envs.scene.HELD_OUT_COMBINATIONS`).
        camera_jitter: ``(shift_m, rotation_deg)``: at each reset the agent camera moves
            by up to ``shift_m`` metres along each world axis and turns by up to
            ``rotation_deg`` degrees about each, uniformly; 0 (default) keeps it fixed.
        robot_mesh: "lowpoly" (fast) or "full" (the stock visual meshes).
        renderer: "tiny" (CPU TinyRenderer) or "egl" (GPU, falls back to "tiny").
    """

    image_size: int = 84
    num_objects: int | tuple[int, int] = (3, 5)
    reward_type: str = "sparse"
    instruction_split: str = "train"
    object_split: str = "train"
    camera_jitter: float | tuple[float, float] = (0.0, 0.0)
    robot_mesh: str = "lowpoly"
    renderer: str = "tiny"

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, (int, np.integer)) or not (
            MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE
        ):
            raise ValueError(
                f"image_size={self.image_size!r} must be an int from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"
            )
        bounds = (self.num_objects,) * 2 if isinstance(self.num_objects, (int, np.integer)) else self.num_objects
        bounds = tuple(int(b) for b in bounds)
        if len(bounds) != 2 or not (MIN_OBJECTS <= bounds[0] <= bounds[1] <= MAX_OBJECTS):
            raise ValueError(
                f"num_objects={self.num_objects!r} must be an int or a (min, max) pair "
                f"with {MIN_OBJECTS} <= min <= max <= {MAX_OBJECTS}"
            )
        self.num_objects = bounds
        self.camera_jitter = _check_camera_jitter(self.camera_jitter)
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
    def from_kwargs(cls, **kwargs: Any) -> "VLAPickConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise TypeError(f"unknown VLAPick kwargs {unknown}; allowed: {known} and render_mode")
        return cls(**kwargs)


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


def make_action_space() -> spaces.Box:
    """``Box(-1, 1, (4,), float32)``: (dx, dy, dz, grip)."""
    return spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)


def make_observation_space(image_size: int) -> spaces.Dict:
    """The env's Dict observation space for square images of side ``image_size`` px."""
    size = image_size
    return spaces.Dict(
        {
            "rgb": spaces.Box(0, 255, (size, size, 3), np.uint8),
            "depth": spaces.Box(AGENT_CAMERA.near, AGENT_CAMERA.far, (size, size, 1), np.float32),
            "proprio": spaces.Box(PROPRIO_LOW, PROPRIO_HIGH, (PROPRIO_DIM,), np.float32),
            "instruction": spaces.Box(0, 255, (MAX_INSTRUCTION_BYTES,), np.uint8),
        }
    )


class VLAPickEnv(gym.Env):
    """Pick up the object named by a language instruction with a Franka Panda.

    A table holds 2-6 (default 3-5) small objects (cube, cylinder or sphere), each a
    different colour from :data:`vla_gym.envs.scene.PALETTE`. The instruction, e.g.
    ``"pick up the red cube"``, names one of them; the others are distractors, so a
    policy that ignores the instruction succeeds about once in ``num_objects`` tries.

    ## Action Space
    ``Box(-1, 1, (4,), float32)``: ``(dx, dy, dz, grip)``. ``dx, dy, dz`` move the
    end-effector target by up to :data:`MAX_EE_STEP` = 0.04 m per step (world frame),
    reached by inverse kinematics and joint position control; the gripper points down.
    ``grip > 0`` closes the gripper, ``grip <= 0`` opens it. Values outside [-1, 1] are
    clipped; a wrong shape or a non-finite value raises ``ValueError``. Control runs at
    20 Hz: each step advances physics by :data:`SUBSTEPS` = 10 steps of 5 ms.

    ## Observation Space
    ``Dict`` with
    - ``rgb``: uint8 (H, W, 3), H = W = ``image_size`` (default 84), from a fixed camera
      in front of the table;
    - ``depth``: float32 (H, W, 1), metres along the camera axis, clipped to [0.1, 2.0];
    - ``proprio``: float32 (8,): end-effector position (m, world), end-effector velocity
      (m/s), gripper opening (m, 0 to 0.08), last gripper command (+1 closed, -1 open),
      clipped to :data:`PROPRIO_LOW` / :data:`PROPRIO_HIGH`;
    - ``instruction``: uint8 (128,), the instruction's UTF-8 bytes padded with zeros;
      :func:`vla_gym.envs.decode_instruction` turns it back into text.

    ``info`` (on reset and every step) holds ``instruction`` (str), ``target``
    (``{"colour", "shape"}``), ``objects`` (a list of such dicts) and ``is_success``.

    ## Rewards
    ``reward_type="sparse"`` (``VLAPick-v0``): 1.0 on success, else 0.0.
    ``reward_type="dense"`` (``VLAPickDense-v0``): 1.0 on success, else a shaping term
    in [0, 1): 0.3 for reaching the target (``1 - tanh(d / 0.1 m)``), 0.2 while a finger
    touches it, 0.5 for its lift height towards :data:`~vla_gym.envs.task.LIFT_HEIGHT`
    while touched. Success: the target's lowest point is at least 0.05 m above the
    table while a finger touches it; lifting any other object is not success.

    ## Episode End
    Terminated on success. Truncated after 50 steps (``max_episode_steps`` at
    registration).

    ## Reset options
    ``reset(seed=..., options={"target": colour, "instruction": text})``, both keys
    optional: ``target`` makes the object of that colour in the seeded scene the goal
    (``ValueError`` listing the colours present if there is none); ``instruction``
    replaces the generated text. The scene depends on the seed alone.

    ## Generalisation splits
    Four kwargs set how far the episodes lie from the training distribution; training
    (``vla-gym collect``, BC, PPO) uses the defaults, and ``vla-gym benchmark`` sweeps them:
    - ``instruction_split="train"|"test"``: "test" instructions use templates, verbs and
      shape nouns that no "train" instruction uses (colour words are shared);
    - ``object_split="train"|"test"``: 7 of the 21 colour-shape combinations (one per
      colour, :data:`vla_gym.envs.scene.HELD_OUT_COMBINATIONS`) never appear in a "train"
      scene; a "test" scene holds at least one of them and its goal is one of them
      (distractors may be any combination);
    - ``num_objects``: 2 to 6, or a (min, max) range drawn per episode, to sweep clutter;
    - ``camera_jitter=(shift_m, rotation_deg)``: the agent camera is moved by up to
      ``shift_m`` metres along each world axis and turned by up to ``rotation_deg``
      degrees about each at every reset (default 0: fixed). The jitter is drawn after the
      scene, so a seed gives the same scene and instruction with or without it; the
      episode's camera is ``env.unwrapped.agent_camera``.
    The ``target`` reset option may name any object of the scene, held out or not.

    ## Arguments
    See :class:`VLAPickConfig`: ``image_size``, ``num_objects``, ``reward_type``,
    ``instruction_split``, ``object_split``, ``camera_jitter``, ``robot_mesh``,
    ``renderer``; and ``render_mode`` in ``{"rgb_array", "human"}``.

    ## Version History
    - v0: initial release. Before any tag, the simulator was made to sort PyBullet's
      overlapping pairs, so an episode no longer depends on the episodes an env ran before
      it (contact-rich episodes collected with earlier commits can differ). Later, also
      before a tag: ``object_split`` and ``camera_jitter`` were added; the default
      ``object_split="train"`` no longer draws the held-out combinations, so a seed's
      scene differs from earlier commits (demo files record the full env config, and
      older ones are refused by training with the differing fields named).
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": round(1.0 / CONTROL_PERIOD)}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        self.config = VLAPickConfig.from_kwargs(**kwargs)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r} is not available; choose None or one of {self.metadata['render_modes']}"
            )
        self.render_mode = render_mode
        self.action_space = make_action_space()
        self.observation_space = make_observation_space(self.config.image_size)
        self.sim = PyBulletSim(
            TIME_STEP, SOLVER_ITERATIONS, gui=render_mode == "human", renderer=self.config.renderer
        )
        self.scene = Scene(self.sim)
        self.robot = Panda(self.sim, mesh=self.config.robot_mesh)
        self.task = PickTask(self.sim, self.robot, self.scene, reward_type=self.config.reward_type)
        # Snapshot of the empty scene: each reset starts from it, so an episode never
        # depends on the ones before it (contact caches included).
        self.robot.reset()
        self._empty_state = self.sim.save_state()
        #: The agent camera of the current episode (moved at each reset under ``camera_jitter``).
        self.agent_camera = AGENT_CAMERA
        self._view = AGENT_CAMERA.view_matrix()
        self._projection = AGENT_CAMERA.projection_matrix(1.0)
        self._viewer_view = VIEWER_CAMERA.view_matrix()
        self._viewer_projection = VIEWER_CAMERA.projection_matrix(VIEWER_SIZE[0] / VIEWER_SIZE[1])
        self.instruction = ""
        self._instruction_bytes = np.zeros(MAX_INSTRUCTION_BYTES, np.uint8)

    # --- Gymnasium API ------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; allowed: {list(RESET_OPTIONS)}")
        rng = self.np_random
        low, high = self.config.num_objects
        specs, target_index = sample_scene(rng, int(rng.integers(low, high + 1)), self.config.object_split)
        if options.get("target") is not None:
            target_index = index_of_colour(specs, options["target"])
        target = specs[target_index]
        # Drawn even when replaced, so that the options never change the random stream.
        text = sample_instruction(rng, target.colour, target.shape, self.config.instruction_split)
        if options.get("instruction") is not None:
            text = options["instruction"]
        instruction_bytes = encode_instruction(text)  # validates before the sim is touched
        # Drawn last and only when asked for: the same seed gives the same scene with or without jitter.
        shift, rotation = self.config.camera_jitter
        self.agent_camera = AGENT_CAMERA.jittered(rng, shift, rotation) if shift or rotation else AGENT_CAMERA
        self._view = self.agent_camera.view_matrix()
        self.scene.clear()
        self.sim.restore_state(self._empty_state)
        self.robot.reset()
        self.scene.spawn(specs)
        self.task.target_index = target_index
        self.instruction, self._instruction_bytes = text, instruction_bytes
        return self._observation(), self._info(success=False)

    def step(self, action):
        action = self._check_action(action)
        target = np.clip(self.robot.ee_position() + action[:3] * MAX_EE_STEP, WORKSPACE_LOW, WORKSPACE_HIGH)
        self.robot.set_ee_target(target)
        self.robot.set_gripper(bool(action[3] > 0.0))
        self.sim.step(SUBSTEPS)
        success = self.task.is_success()
        obs = self._observation()
        reward = self.task.reward(success, obs["proprio"][:3])
        return obs, reward, success, False, self._info(success)

    def render(self) -> np.ndarray | None:
        """``rgb_array``: uint8 (360, 480, 3) third-person view; ``human``: the GUI shows it."""
        if self.render_mode == "rgb_array":
            rgb, _ = self.sim.render(*VIEWER_SIZE, self._viewer_view, self._viewer_projection)
            return rgb
        return None

    def close(self) -> None:
        self.sim.close()

    # --- privileged state (for scripted experts and tests) -------------------------------
    def object_position(self, colour: str) -> np.ndarray:
        """World position (m) of the centre of the object of ``colour``, shape (3,)."""
        return self.sim.base_position(Scene.body_name(self.scene.index_of(colour)))

    # --- helpers ------------------------------------------------------------------------
    def _check_action(self, action) -> np.ndarray:
        arr = np.asarray(action, dtype=np.float32)
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

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "instruction": self.instruction,
            "target": self.scene.objects[self.task.target_index].describe(),
            "objects": [spec.describe() for spec in self.scene.objects],
            "is_success": bool(success),
        }
