"""The Franka Panda from ``pybullet_data``: loading, low-poly render meshes, IK control.

Rendering is the env's hot path and the stock Panda visual meshes hold ~100k triangles.
With ``mesh="lowpoly"`` the URDF is rewritten at run time so that every visual geometry
points at the collision mesh shipped beside it (~3.4k triangles in all); nothing is copied.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pybullet as p
import pybullet_data

from vla_gym.envs.pybullet_sim import PyBulletSim
from vla_gym.fileio import atomic_write_text

ROBOT_MESHES = ("lowpoly", "full")

PANDA_DIR = Path(pybullet_data.getDataPath()) / "franka_panda"
ARM_JOINTS = tuple(range(7))
FINGER_JOINTS = (9, 10)
EE_LINK = 11  # panda_grasptarget: between the fingertips
FINGER_LINKS = (9, 10)

#: Joint configuration (rad) with the gripper pointing down above the table centre.
HOME_JOINTS = (0.0, -0.25, 0.0, -2.35, 0.0, 2.1, np.pi / 4)
ARM_FORCE = 200.0  # N*m, per-joint motor force limit for position control
ARM_POSITION_GAIN = 0.3
FINGER_FORCE = 40.0  # N, per finger
FINGER_OPEN = 0.04  # m, each finger's travel when open (8 cm between fingers)
FINGER_CLOSED = 0.0
IK_ITERATIONS = 20
#: Rounds of inverse kinematics when the arm is set (not driven) to a start point.
START_IK_ROUNDS = 5
#: Gripper orientation: pointing down, fingers closing along world y.
EE_DOWN_QUAT = tuple(p.getQuaternionFromEuler((np.pi, 0.0, 0.0)))
# Null-space IK ranges keep the elbow up and the wrist away from its limits.
IK_JOINT_LOWER = (-2.9, -1.8, -2.9, -3.0, -2.9, -0.08, -2.9)
IK_JOINT_UPPER = (2.9, 1.8, 2.9, -0.07, 2.9, 3.8, 2.9)
IK_JOINT_RANGE = tuple(u - lo for lo, u in zip(IK_JOINT_LOWER, IK_JOINT_UPPER))


def lowpoly_urdf_path() -> str:
    """Write (once) a Panda URDF whose visual meshes are the shipped collision meshes.

    The file lives in the temp dir under a name that hashes its content, is written to a
    temporary name and renamed, so concurrent processes never see a half-written file.
    """
    text = (PANDA_DIR / "panda.urdf").read_text()
    mesh_dir = (PANDA_DIR / "meshes").as_posix()
    text = text.replace("package://meshes/visual/", f"{mesh_dir}/collision/")
    text = text.replace("package://meshes/", f"{mesh_dir}/")
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"vla_gym_panda_lowpoly_{digest}.urdf"
    if not path.exists():
        atomic_write_text(path, text)  # readable by all: other users' processes may share it
    return str(path)


class Panda:
    """Franka Panda with Cartesian end-effector control and a parallel gripper.

    Args:
        sim: the simulation to load into.
        mesh: "lowpoly" (collision meshes as visuals, fast to render) or "full".
        base_position: world position of the robot base (m).
    """

    def __init__(self, sim: PyBulletSim, mesh: str = "lowpoly", base_position=(0.0, 0.0, 0.0)) -> None:
        if mesh not in ROBOT_MESHES:
            raise ValueError(f"robot_mesh={mesh!r} is not available; choose one of {ROBOT_MESHES}")
        self.sim = sim
        self._urdf = lowpoly_urdf_path() if mesh == "lowpoly" else str(PANDA_DIR / "panda.urdf")
        self._base_position = tuple(base_position)
        self.load()

    def load(self) -> None:
        """Load the arm into the sim's client (on construction, and again after
        :meth:`PyBulletSim.reconnect`)."""
        flags = p.URDF_ENABLE_CACHED_GRAPHICS_SHAPES
        client = self.sim.client
        self.body = self.sim.add_body(
            "robot", client.loadURDF(self._urdf, self._base_position, useFixedBase=True, flags=flags)
        )
        # High-friction fingertips for a firm grasp; both fingers share one target (_command_gripper).
        for link in FINGER_LINKS:
            client.changeDynamics(self.body, link, lateralFriction=1.5, spinningFriction=0.01)
        self.gripper_closed = False

    # --- state --------------------------------------------------------------------------
    def reset(self) -> None:
        """Put the arm at :data:`HOME_JOINTS` with the gripper open and motors holding it."""
        c = self.sim.client
        for j, q in zip(ARM_JOINTS, HOME_JOINTS):
            c.resetJointState(self.body, j, q)
        for j in FINGER_JOINTS:
            c.resetJointState(self.body, j, FINGER_OPEN)
        self.gripper_closed = False
        self._command_arm(HOME_JOINTS)
        self._command_gripper()

    def reset_to(self, position) -> None:
        """Like :meth:`reset`, but with the end effector at ``position`` (m, world), pointing
        down, at rest (joints set by inverse kinematics from the home pose)."""
        self.reset()
        c = self.sim.client
        for _ in range(START_IK_ROUNDS):  # each round starts IK from the last solution
            q = self._inverse_kinematics(np.asarray(position, dtype=float))
            for j, qj in zip(ARM_JOINTS, q):
                c.resetJointState(self.body, j, qj)
        self._command_arm(q)

    def ee_position(self) -> np.ndarray:
        """End-effector (grasp point between the fingertips) position, metres, shape (3,)."""
        return np.asarray(self.sim.client.getLinkState(self.body, EE_LINK)[4])

    def ee_state(self) -> tuple[np.ndarray, np.ndarray]:
        """End-effector position (m) and linear velocity (m/s), each shape (3,)."""
        state = self.sim.client.getLinkState(self.body, EE_LINK, computeLinkVelocity=1)
        return np.asarray(state[4]), np.asarray(state[6])

    def gripper_opening(self) -> float:
        """Distance between the fingers, metres (0 closed, 0.08 fully open)."""
        states = self.sim.client.getJointStates(self.body, FINGER_JOINTS)
        return float(states[0][0] + states[1][0])

    def finger_contacts(self, body_name: str) -> tuple[bool, ...]:
        """For each finger (left, right): whether it touches the body named ``body_name``."""
        return tuple(self.sim.in_contact("robot", body_name, link) for link in FINGER_LINKS)

    # --- control ------------------------------------------------------------------------
    def set_ee_target(self, position: np.ndarray) -> None:
        """Drive the end effector towards ``position`` (m) with the gripper pointing down."""
        self._command_arm(self._inverse_kinematics(position))

    def _inverse_kinematics(self, position: np.ndarray) -> tuple[float, ...]:
        """Arm joint positions (rad) that put the end effector at ``position`` (m), pointing down."""
        q = self.sim.client.calculateInverseKinematics(
            self.body,
            EE_LINK,
            position.tolist(),
            EE_DOWN_QUAT,
            lowerLimits=IK_JOINT_LOWER,
            upperLimits=IK_JOINT_UPPER,
            jointRanges=IK_JOINT_RANGE,
            restPoses=HOME_JOINTS,
            maxNumIterations=IK_ITERATIONS,
        )
        return q[: len(ARM_JOINTS)]

    def set_gripper(self, close: bool) -> None:
        self.gripper_closed = close
        self._command_gripper()

    def _command_arm(self, joint_positions) -> None:
        self.sim.client.setJointMotorControlArray(
            self.body,
            ARM_JOINTS,
            p.POSITION_CONTROL,
            targetPositions=joint_positions,
            forces=[ARM_FORCE] * len(ARM_JOINTS),
            positionGains=[ARM_POSITION_GAIN] * len(ARM_JOINTS),
        )

    def _command_gripper(self) -> None:
        target = FINGER_CLOSED if self.gripper_closed else FINGER_OPEN
        self.sim.client.setJointMotorControlArray(
            self.body,
            FINGER_JOINTS,
            p.POSITION_CONTROL,
            targetPositions=[target, target],
            forces=[FINGER_FORCE, FINGER_FORCE],
        )
