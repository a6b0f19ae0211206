"""The tasks: one module each, registered by name in :data:`TASKS`.

Adding a task is one new module here (a :class:`~vla_gym.envs.tasks.base.Task` subclass)
plus one entry in :data:`TASKS` and one line in :mod:`vla_gym.envs.registration`.
"""

from collections.abc import Iterable

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



def task_words(split: str, names: Iterable[str] | None = None) -> set[str]:
    """Every lower-case word the ``split``'s instructions of the tasks ``names`` (default:
    all of :data:`TASKS`) can hold, colour words aside: the union of their :meth:`Task.words`."""
    unknown = [name for name in (names or ()) if name not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    return set().union(*(TASKS[name].words(split) for name in (TASKS if names is None else names)))


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
    "task_words",
]
