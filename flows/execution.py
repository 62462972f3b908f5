"""Where a run's mapped tasks execute: this process (the default) or a Dask cluster (``--task-runner dask``).

The ``city-audit`` flow's task runner is a ``SwitchableTaskRunner``: it runs mapped tasks on
Prefect's thread pool, as before, until the flow body enters ``task_runner_for(execution)``
with ``task_runner="dask"``; from then on every ``.map``/``.submit`` (the collection units and
the classification chunks) goes to a prefect-dask ``DaskTaskRunner``, connected to
``--dask-address`` or to a ``distributed.LocalCluster`` of ``--dask-workers`` processes that it
starts. Choosing the runner inside the flow keeps one code path for ``city-audit run`` and a
served deployment, whose runner is fixed when the flow is imported.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

#: Dask's worker processes are daemonic by default, and a daemonic process may not start the
#: DataLoader's decode workers; the LocalCluster this module starts turns that off.
NON_DAEMON_WORKERS = {"distributed.worker.daemon": False}


class SwitchableTaskRunner(TaskRunner):
    """A task runner that delegates to Prefect's thread pool, or to another runner while ``use(runner)`` is active."""

    def __init__(self, max_workers: int | None = None):
        super().__init__()
        self.max_workers = max_workers
        self._default = ThreadPoolTaskRunner(max_workers=max_workers)
        self._active: list[TaskRunner] = []

    @property
    def current(self) -> TaskRunner:
        return self._active[-1] if self._active else self._default

    def duplicate(self) -> "SwitchableTaskRunner":
        return type(self)(self.max_workers)

    def submit(self, task, parameters: dict[str, Any], wait_for: Iterable | None = None, dependencies=None):
        return self.current.submit(task, parameters, wait_for, dependencies)

    def map(self, task, parameters: dict[str, Any], wait_for: Iterable | None = None):
        return self.current.map(task, parameters, wait_for)

    @contextmanager
    def use(self, runner: TaskRunner) -> Iterator[TaskRunner]:
        """Send every task submitted inside the block to ``runner`` (started here, stopped on exit)."""
        with runner:
            self._active.append(runner)
            try:
                yield runner
            finally:
                self._active.pop()

    def __enter__(self):
        super().__enter__()
        self._default.__enter__()
        return self

    def __exit__(self, *args: Any) -> None:
        self._default.__exit__(*args)
        super().__exit__(*args)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.max_workers == self.max_workers


def dask_runner(address: str | None, n_workers: int):
    """A ``DaskTaskRunner`` for the cluster at ``address``, or for a new LocalCluster of ``n_workers``
    single-threaded processes (one chunk at a time each, so each worker's memory stays flat)."""
    from prefect_dask import DaskTaskRunner  # imported on use: distributed is only needed for --task-runner dask

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


@contextmanager
def task_runner_for(execution) -> Iterator[bool]:
    """Inside the block, the running flow's mapped tasks go where ``execution`` says; yields True on a Dask cluster.

    ``execution``: a ``flows.config.ExecutionConfig``. Outside a flow, or with the default
    runner, nothing changes.
    """
    context = FlowRunContext.get()
    runner = getattr(context, "task_runner", None)
    if execution.task_runner != "dask":
        yield False
        return
    if not isinstance(runner, SwitchableTaskRunner):
        raise RuntimeError("--task-runner dask needs the city-audit flow's SwitchableTaskRunner")
    import dask
    import distributed  # noqa: F401 - its config defaults must be in place before they are overridden

    with dask.config.set(NON_DAEMON_WORKERS), runner.use(dask_runner(execution.dask_address, execution.dask_workers)):
        yield True


#: The Dask worker resource that marks a GPU worker (``dask worker ... --resources GPU=1``).
GPU_RESOURCE = "GPU"


def classification_placement() -> dict[str, Any]:
    """Dask annotations for the classification chunks: ``{"resources": {"GPU": 1}}`` when the cluster has
    workers that advertise a ``GPU`` resource (then only they classify, one chunk per GPU at a time),
    otherwise none (any worker takes any chunk). Outside a Dask cluster: none."""
    if not on_cluster():
        return {}
    client = FlowRunContext.get().task_runner.current.client
    workers = client.scheduler_info().get("workers", {})  # every worker (distributed >= 2025 lists all by default)
    has_gpu = any(float((w.get("resources") or {}).get(GPU_RESOURCE, 0)) > 0 for w in workers.values())
    return {"resources": {GPU_RESOURCE: 1}} if has_gpu else {}


def worker_name() -> str | None:
    """The Dask worker running the current task (its name, or address), or None outside a worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    return str(worker.name) if worker.name is not None else worker.address


def on_cluster() -> bool:
    """Whether tasks submitted now go to a Dask cluster."""
    context = FlowRunContext.get()
    runner = getattr(context, "task_runner", None)
    return isinstance(runner, SwitchableTaskRunner) and bool(runner._active)
