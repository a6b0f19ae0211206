"""Thin PyBullet wrapper: owns one physics client, names bodies, renders cameras.

Everything that talks to PyBullet's C API for the env goes through :class:`PyBulletSim`,
so the robot, the scene and the task never hold a raw client id.
"""

from __future__ import annotations

import dataclasses
import pkgutil
import warnings
from dataclasses import dataclass

import numpy as np
import pybullet as p
from pybullet_utils import bullet_client

#: Renderers an env can ask for. "egl" uses PyBullet's EGL plugin (GPU, headless) and
#: falls back to "tiny" with a warning where the plugin cannot load.
RENDERERS = ("tiny", "egl")

GRAVITY = -9.81  # m/s^2, along world z


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: pose, field of view and depth range (metres)."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_deg: float
    near: float
    far: float
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)

    def view_matrix(self) -> tuple[float, ...]:
        return p.computeViewMatrix(self.eye, self.target, self.up)

    def projection_matrix(self, aspect: float) -> tuple[float, ...]:
        return p.computeProjectionMatrixFOV(self.fov_deg, aspect, self.near, self.far)

    def jittered(self, rng: np.random.Generator, shift_m: float, rotation_deg: float) -> "Camera":
        """This camera moved by up to ``shift_m`` metres along each world axis and turned by
        up to ``rotation_deg`` degrees about each world axis (uniform draws from ``rng``).

        The viewing direction and the up vector turn together (a rigid camera motion); the
        field of view and depth range stay. Always draws six numbers.
        """
        shift = rng.uniform(-shift_m, shift_m, size=3)
        angles = np.radians(rng.uniform(-rotation_deg, rotation_deg, size=3))
        rotation = _rotation_xyz(angles)
        eye = np.asarray(self.eye) + shift
        forward = rotation @ (np.asarray(self.target) - np.asarray(self.eye))
        up = rotation @ np.asarray(self.up)
        return dataclasses.replace(
            self,
            eye=tuple(float(v) for v in eye),
            target=tuple(float(v) for v in eye + forward),
            up=tuple(float(v) for v in up),
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields (for storing the camera of an episode)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "Camera":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def project(self, points: np.ndarray, width: int, height: int) -> np.ndarray:
        """Pixel coordinates (column, row), float (..., 2), of world points (..., 3) in metres,
        in an image of ``width`` x ``height`` rendered by this camera (pixel centres at integers)."""
        view = np.asarray(self.view_matrix(), dtype=np.float64).reshape(4, 4).T  # PyBullet is column-major
        proj = np.asarray(self.projection_matrix(width / height), dtype=np.float64).reshape(4, 4).T
        points = np.asarray(points, dtype=np.float64)
        homogeneous = np.concatenate([points, np.ones((*points.shape[:-1], 1))], axis=-1)
        clip = homogeneous @ (proj @ view).T
        ndc = clip[..., :2] / clip[..., 3:4]
        column = (ndc[..., 0] + 1) * width / 2 - 0.5
        row = (1 - ndc[..., 1]) * height / 2 - 0.5
        return np.stack([column, row], axis=-1)


def _rotation_xyz(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) turning by ``angles`` (rad) about world x, then y, then z."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def zbuffer_to_metres(zbuffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """Turn an OpenGL depth buffer in [0, 1] into metric depth along the optical axis."""
    depth = far * near / (far - (far - near) * zbuffer)
    return np.clip(depth, near, far)


class PyBulletSim:
    """One PyBullet physics client with a fixed time step and a chosen renderer.

    Args:
        time_step: physics step in seconds.
        solver_iterations: constraint solver iterations per physics step.
        gui: open PyBullet's GUI window instead of a headless (DIRECT) client.
        renderer: "tiny" (CPU TinyRenderer) or "egl" (EGL plugin, falls back to "tiny").
    """

    def __init__(
        self, time_step: float, solver_iterations: int, gui: bool = False, renderer: str = "tiny"
    ) -> None:
        if renderer not in RENDERERS:
            raise ValueError(f"renderer={renderer!r} is not available; choose one of {RENDERERS}")
        self.time_step = time_step
        self.solver_iterations = solver_iterations
        self.gui = gui
        self.bodies: dict[str, int] = {}
        self.renderer = renderer
        self._connect()

    def _connect(self) -> None:
        """A new physics client with this sim's settings and no bodies."""
        self.client = bullet_client.BulletClient(connection_mode=p.GUI if self.gui else p.DIRECT)
        # deterministicOverlappingPairs sorts the broadphase pairs: without it the contact order
        # (and so an episode) depends on which bodies earlier episodes added and removed.
        self.client.setPhysicsEngineParameter(
            fixedTimeStep=self.time_step, numSolverIterations=self.solver_iterations, deterministicOverlappingPairs=1
        )
        self.client.setGravity(0.0, 0.0, GRAVITY)
        if self.gui:
            self.client.configureDebugVisualizer(p.COV_ENABLE_GUI, 0)
        self._egl_plugin: int | None = None
        self.renderer = self._load_renderer(self.renderer)
        self.render_flag = p.ER_BULLET_HARDWARE_OPENGL if self.renderer == "egl" else p.ER_TINY_RENDERER

    def reconnect(self) -> None:
        """Replace the client by a fresh one with the same settings and no bodies.

        PyBullet keeps some memory of every body created and removed until its client goes
        (a few KB per body), so a long-lived env rebuilds its sim now and then; the caller
        adds its bodies again, in the order it first did.
        """
        self.close()
        self._connect()

    def _load_renderer(self, renderer: str) -> str:
        if renderer != "egl":
            return renderer
        egl = pkgutil.get_loader("eglRenderer")
        plugin = -1
        if egl is not None:
            plugin = self.client.loadPlugin(egl.get_filename(), "_eglRendererPlugin")
        if plugin < 0:
            warnings.warn("PyBullet's EGL renderer could not load; falling back to renderer='tiny'", stacklevel=3)
            return "tiny"
        self._egl_plugin = plugin
        return "egl"

    # --- bodies -------------------------------------------------------------------------
    def add_body(self, name: str, body_id: int) -> int:
        """Register ``body_id`` under ``name`` so other code can refer to it by name."""
        self.bodies[name] = body_id
        return body_id

    def remove_body(self, name: str) -> None:
        self.client.removeBody(self.bodies.pop(name))

    def base_position(self, name: str) -> np.ndarray:
        """World position (m) of a body's base, shape (3,)."""
        return np.asarray(self.client.getBasePositionAndOrientation(self.bodies[name])[0])

    def base_velocity(self, name: str) -> np.ndarray:
        """World linear velocity (m/s) of a body's base, shape (3,)."""
        return np.asarray(self.client.getBaseVelocity(self.bodies[name])[0])

    def set_base_position(self, name: str, position) -> None:
        """Teleport a body's base to ``position`` (m), keeping its orientation, at rest."""
        body = self.bodies[name]
        _, orientation = self.client.getBasePositionAndOrientation(body)
        self.client.resetBasePositionAndOrientation(body, list(position), orientation)
        self.client.resetBaseVelocity(body, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])

    def aabb(self, name: str, link: int = -1) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.client.getAABB(self.bodies[name], link)
        return np.asarray(lo), np.asarray(hi)

    def in_contact(self, name_a: str, name_b: str, link_a: int | None = None) -> bool:
        """Whether body ``name_a`` (only its link ``link_a``, if given) touches ``name_b``."""
        kwargs = {} if link_a is None else {"linkIndexA": link_a}
        return len(self.client.getContactPoints(self.bodies[name_a], self.bodies[name_b], **kwargs)) > 0

    # --- stepping and state -------------------------------------------------------------
    def step(self, substeps: int) -> None:
        for _ in range(substeps):
            self.client.stepSimulation()

    def save_state(self) -> int:
        return self.client.saveState()

    def restore_state(self, state_id: int) -> None:
        self.client.restoreState(stateId=state_id)

    # --- rendering ----------------------------------------------------------------------
    def render(
        self, width: int, height: int, view: tuple[float, ...], projection: tuple[float, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Render one camera image.

        Returns:
            rgb: uint8 (height, width, 3); zbuffer: float32 (height, width) in [0, 1].
        """
        _, _, rgba, zbuffer, _ = self.client.getCameraImage(
            width, height, view, projection, renderer=self.render_flag, flags=p.ER_NO_SEGMENTATION_MASK
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3]
        return rgb, np.asarray(zbuffer, dtype=np.float32).reshape(height, width)

    def close(self) -> None:
        """Release the physics client. Safe to call twice."""
        if self.client is None:
            return
        try:
            if self._egl_plugin is not None:
                self.client.unloadPlugin(self._egl_plugin)
            self.client.disconnect()
        finally:
            self.client = None  # type: ignore[assignment]
            self.bodies.clear()
