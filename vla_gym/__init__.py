"""vla_gym: PyBullet tabletop manipulation envs, scripted experts and VLA agents.

Importing the package registers the env ids (``VLAPick-v0`` ... ``VLAMultiTask-v0``; see :data:`vla_gym.envs.ENV_IDS`).
"""

from vla_gym.envs.registration import ENV_IDS, register_envs

__version__ = "0.2.0"

register_envs()

__all__ = ["ENV_IDS", "__version__"]
