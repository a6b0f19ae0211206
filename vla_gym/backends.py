"""Where the embarrassingly parallel jobs run: worker processes on this machine, or Ray.

``vla-gym collect``, ``vla-gym evaluate``, ``vla-gym benchmark`` and the evaluation stage of
``train-agent`` hand their work (seeded episodes, or chunks of them) to a :class:`Backend`
and get the results back as they finish. Two implement it:

* :class:`LocalBackend` (``--backend local``, the default): ``workers`` processes started
  with ``spawn`` on this machine, or this process itself when ``workers <= 1``.
* :class:`RayBackend` (``--backend ray``): one Ray actor per worker, on a Ray instance
  started here (no address) or an existing cluster (``--ray-address auto|HOST:PORT``).
  Ray is an optional extra: ``pip install -e ".[ray]"``.

A job is written once against this interface::

    with make_backend("ray", workers=4) as backend:
        for index, result in backend.imap_unordered(run_chunk, chunks, setup=init_worker):
            ...

``setup(*setup_args)`` runs once in each worker before its first item (it builds the env,
loads the policy, ...), ``teardown()`` once when the worker is done (in-process only: a
worker process or actor ends with the backend). ``fn``, ``setup`` and ``teardown`` must be
module-level functions (they travel by reference); items and results must pickle.

Which worker runs an item never changes its result: every item carries its own seeds.
"""

from __future__ import annotations

import abc
import hashlib
import multiprocessing as mp
import os
import queue
import socket
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from vla_gym.fileio import atomic_write_bytes

BACKENDS = ("local", "ray")
#: Items handed out ahead of the results read, per worker (keeps every worker busy while the
#: caller handles a result, without reading the whole item list ahead).
PREFETCH_PER_WORKER = 2
#: Seconds to wait for a TCP connection to a Ray address before calling it unreachable.
RAY_CONNECT_TIMEOUT_S = 5.0
#: Subdirectory of a worker's temporary directory that holds shipped checkpoints.
SHIPPED_DIR = "vla_gym_shipped"
RAY_INSTALL_HINT = 'pip install -e ".[ray]"  (or: pip install "ray>=2.9")'


class BackendError(ValueError):
    """A backend cannot start (Ray missing, address unreachable, bad arguments)."""


class RayNotInstalledError(BackendError, ImportError):
    """``--backend ray`` without Ray installed."""


class Backend(abc.ABC):
    """Runs ``fn(item)`` for many items on :attr:`workers` workers (see the module docstring)."""

    name: str = ""

    def __init__(self, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise BackendError(f"workers must be an int >= 0, got {workers!r}")
        self.workers = workers

    @property
    def in_process(self) -> bool:
        """Whether items run in this very process (no workers to start)."""
        return False

    def imap_unordered(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        setup: Callable[..., None] | None = None,
        setup_args: tuple = (),
        teardown: Callable[[], None] | None = None,
        window: int | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """``(index, fn(item))`` for each item, as they finish; at most ``window`` items
        (default :data:`PREFETCH_PER_WORKER` per worker) handed out and not yet yielded."""
        yield from self._drive(fn, items, setup, setup_args, teardown, window, ordered=False)

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
        """``fn(item)`` for each item, in the items' order (same keywords as :meth:`imap_unordered`;
        finished results wait for the ones before them and count towards ``window``)."""
        for _, result in self._drive(fn, items, kwargs.get("setup"), kwargs.get("setup_args", ()),
                                     kwargs.get("teardown"), kwargs.get("window"), ordered=True):
            yield result

    def _drive(self, fn, items, setup, setup_args, teardown, window, ordered) -> Iterator[tuple[int, Any]]:
        window = window or PREFETCH_PER_WORKER * max(self.workers, 1)
        if window < 1:
            raise BackendError(f"window must be >= 1, got {window}")
        self._start(setup, setup_args)
        try:
            source, pending, done, next_index, exhausted = enumerate(items), 0, {}, 0, False
            while True:
                while not exhausted and pending + len(done) < window:
                    entry = next(source, None)
                    if entry is None:
                        exhausted = True
                        break
                    self._submit(entry[0], fn, entry[1])
                    pending += 1
                if ordered and next_index in done:
                    yield next_index, done.pop(next_index)
                    next_index += 1
                    continue
                if pending == 0:
                    return
                index, result = self._next_result()
                pending -= 1
                if ordered:
                    done[index] = result
                else:
                    yield index, result
        finally:
            self._stop(teardown)

    @abc.abstractmethod
    def _start(self, setup: Callable[..., None] | None, setup_args: tuple) -> None: ...

    @abc.abstractmethod
    def _submit(self, index: int, fn: Callable[[Any], Any], item: Any) -> None: ...

    @abc.abstractmethod
    def _next_result(self) -> tuple[int, Any]:
        """The next finished ``(index, result)``; re-raises the item's exception."""

    @abc.abstractmethod
    def _stop(self, teardown: Callable[[], None] | None) -> None: ...

    def close(self) -> None:
        """Release what the backend holds beyond one job (a Ray instance it started)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalBackend(Backend):
    """Worker processes on this machine (``spawn``: no PyBullet client or torch threads
    inherited), or this process itself when ``workers <= 1``.

    A worker that dies (a crash, the OOM killer, a failing ``setup``) fails the job with
    ``BrokenProcessPool`` instead of leaving the caller waiting; a job left early (an error,
    Ctrl-C) terminates its workers at once rather than waiting for their items.
    """

    name = "local"

    def __init__(self, workers: int = 2) -> None:
        super().__init__(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._futures: set[Future] = set()

    @property
    def in_process(self) -> bool:
        return self.workers <= 1

    def _start(self, setup, setup_args) -> None:
        self._queue = queue.SimpleQueue()
        if self.in_process:
            if setup is not None:
                setup(*setup_args)
            return
        self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=setup,
                                         initargs=setup_args)

    def _submit(self, index, fn, item) -> None:
        if self._pool is None:  # in this process: run now, hand the outcome over in order
            try:
                self._queue.put((index, fn(item), None))
            except Exception as err:  # noqa: BLE001 - re-raised by _next_result, as from a worker
                self._queue.put((index, None, err))
            return
        future = self._pool.submit(fn, item)
        self._futures.add(future)
        future.add_done_callback(lambda done: self._queue.put(_outcome(index, done)))

    def _next_result(self) -> tuple[int, Any]:
        index, result, error = self._queue.get()
        if error is not None:
            raise error
        return index, result

    def _stop(self, teardown) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            if teardown is not None:
                teardown()
            return
        if any(not future.done() for future in self._futures):  # left early: do not wait for their items
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        self._futures = set()
        pool.shutdown(wait=True, cancel_futures=True)


def _outcome(index: int, future: Future) -> tuple[int, Any, BaseException | None]:
    error = future.exception()
    return (index, None, error) if error is not None else (index, future.result(), None)


# --------------------------------------------------------------------------- Ray
def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayNotInstalledError` saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise RayNotInstalledError(f"--backend ray needs Ray, which is not installed ({err}); install it with "
                                   f"{RAY_INSTALL_HINT}, or use --backend local") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``ray://HOST:PORT`` split, or :class:`BackendError`."""
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BackendError(f"--ray-address {address!r} is not 'auto', 'HOST:PORT' or 'ray://HOST:PORT'")
    return host.strip("[]"), int(port)


def check_ray_address(address: str | None) -> str | None:
    """``None`` (start a local Ray), ``"auto"`` (the Ray started on this machine by ``ray
    start``), ``"ray://HOST:PORT"`` (Ray Client) or ``"HOST:PORT"``; anything else is refused."""
    if address is not None and address != "auto":
        _host_port(address)
    return address


def check_backend_choice(backend: str, ray_address: str | None) -> None:
    """``backend`` is one of :data:`BACKENDS`, ``ray_address`` goes with ``"ray"`` and is well formed."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if ray_address is not None and backend != "ray":
        raise BackendError("--ray-address needs --backend ray")
    check_ray_address(ray_address)


def check_ray_reachable(address: str | None) -> None:
    """A ``HOST:PORT`` (or ``ray://``) address accepts a TCP connection within
    :data:`RAY_CONNECT_TIMEOUT_S`, else :class:`BackendError` saying how to start Ray there."""
    if address is None or address == "auto":
        return
    try:
        socket.create_connection(_host_port(address), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise BackendError(
            f"cannot reach a Ray cluster at --ray-address {address!r} ({err}); start one there with "
            "`ray start --head` (its address is printed), or leave --ray-address out to start Ray on this machine"
        ) from None


class _RayWorker:
    """The body of one Ray actor: ``setup`` once, then ``fn(item)`` per call."""

    def __init__(self, setup: Callable[..., None] | None, setup_args: tuple) -> None:
        if setup is not None:
            setup(*setup_args)

    def run(self, fn: Callable[[Any], Any], item: Any) -> Any:
        return fn(item)


class RayBackend(Backend):
    """One Ray actor (1 CPU each) per worker.

    Args:
        workers: actors; ``0`` means one per CPU of the cluster.
        address: ``None`` starts a Ray instance on this machine with ``workers`` CPUs (shut
            down by :meth:`close`); ``"auto"`` or ``"HOST:PORT"`` joins a running cluster
            (left running). The cluster's nodes need vla_gym installed.
    """

    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None) -> None:
        super().__init__(workers)
        self.address = check_ray_address(address)
        self._ray = import_ray()
        self._started_here = False
        self._connect()
        if self.workers <= 0:
            self.workers = max(int(self._ray.cluster_resources().get("CPU", 1)), 1)
        self._actors: list[Any] = []
        self._load: dict[int, int] = {}
        self._pending: dict[Any, tuple[int, int]] = {}

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        if self.address not in (None, "auto"):
            check_ray_reachable(self.address)
        options: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
        if self.address is None:
            options["num_cpus"] = max(self.workers, 1)
        try:
            ray.init(address=self.address, **options)
        except ConnectionError as err:
            raise BackendError(
                f"no Ray cluster found for --ray-address {self.address!r} ({err}); start one with "
                "`ray start --head`, or leave --ray-address out to start Ray on this machine"
            ) from None
        self._started_here = self.address is None

    def _start(self, setup, setup_args) -> None:
        actor = self._ray.remote(num_cpus=1)(_RayWorker)
        self._actors = [actor.remote(setup, setup_args) for _ in range(self.workers)]
        self._load = {i: 0 for i in range(len(self._actors))}
        self._pending = {}

    def _submit(self, index, fn, item) -> None:
        slot = min(self._load, key=self._load.__getitem__)
        self._load[slot] += 1
        self._pending[self._actors[slot].run.remote(fn, item)] = (index, slot)

    def _next_result(self) -> tuple[int, Any]:
        ray = self._ray
        (ready,), _ = ray.wait(list(self._pending), num_returns=1)
        index, slot = self._pending.pop(ready)
        self._load[slot] -= 1
        try:
            return index, ray.get(ready)
        except ray.exceptions.RayTaskError as err:  # the item's own exception, as from a local worker
            raise err.as_instanceof_cause() from None

    def _stop(self, teardown) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors, self._load, self._pending = [], {}, {}

    def close(self) -> None:
        if self._started_here and self._ray.is_initialized():
            self._ray.shutdown()
        self._started_here = False


# --------------------------------------------------------------------------- files for remote workers
def ship_files(paths: Iterable[str | os.PathLike]) -> dict[str, bytes]:
    """The bytes of each of ``paths`` that is a file (checkpoints), keyed by the path as
    given: a Ray worker on another node rebuilds them with :func:`local_copies`, so a job
    needs no filesystem shared between the nodes."""
    return {str(path): Path(path).read_bytes() for path in dict.fromkeys(paths) if Path(path).is_file()}


def local_copies(files: dict[str, bytes] | None) -> dict[str, str]:
    """Write shipped files into this machine's temporary directory (named by content, so a
    rerun reuses them); returns original path -> local path."""
    if not files:
        return {}
    root = Path(tempfile.gettempdir()) / SHIPPED_DIR
    root.mkdir(parents=True, exist_ok=True)
    copies = {}
    for path, data in files.items():
        local = root / f"{hashlib.sha256(data).hexdigest()[:32]}{Path(path).suffix}"
        if not (local.is_file() and local.stat().st_size == len(data)):
            atomic_write_bytes(local, data)
        copies[path] = str(local)
    return copies


def make_backend(name: str = "local", workers: int = 2, ray_address: str | None = None) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`)."""
    check_backend_choice(name, ray_address)
    return LocalBackend(workers) if name == "local" else RayBackend(workers, ray_address)

