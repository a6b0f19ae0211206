"""The tasks: one module each, registered by name in :data:`TASKS`.

Adding a task is one new module here (a :class:`~vla_gym.envs.tasks.base.Task` subclass)
plus one entry in :data:`TASKS` and one line in :mod:`vla_gym.envs.registration`.
"""

from vla_gym.envs.tasks.base import Role, Task, TaskEpisode, World
from vla_gym.envs.tasks.pick import PickTask
from vla_gym.envs.tasks.place import PlaceTask
from vla_gym.envs.tasks.push import PushTask
from vla_gym.envs.tasks.rearrange import RearrangeTask
from vla_gym.envs.tasks.spatial_pick import SpatialPickTask
from vla_gym.envs.tasks.stack import StackTask

#: Task name -> class, in a fixed order (``VLAMultiTask-v0`` draws among them by index).
TASKS: dict[str, type[Task]] = {
    PickTask.name: PickTask,
    PlaceTask.name: PlaceTask,
    PushTask.name: PushTask,
    StackTask.name: StackTask,
    SpatialPickTask.name: SpatialPickTask,
    RearrangeTask.name: RearrangeTask,
}

__all__ = [
    "TASKS",
    "PickTask",
    "PlaceTask",
    "PushTask",
    "RearrangeTask",
    "Role",
    "SpatialPickTask",
    "StackTask",
    "Task",
    "TaskEpisode",
    "World",
]
