"""A batch on a Ray cluster: every GPU of it (or CPU workers), the same files as a local batch.

    tasks = [raybatch.Task(index, request, paths), ...]     # prepared exactly as for a local batch
    raybatch.run(tasks, load, save, folder=out, address="auto", on_done=show)

The front end prepares the jobs as it does for a local batch (each request with its seed, each image's file
name, what ``--resume`` finds made) and hands them here with the function a local batch saves with (the same
names, metadata and atomic claim). The jobs become a Ray dataset (``ray.data.from_items``) that a pool of
actors maps (``map_batches`` with a callable class): one actor per GPU (``num_gpus=1``), or CPU actors when
the cluster has no GPU. Each actor opens the model once, with the run's load settings, and saves every image
it makes into the output folder, which every node must reach: a marker the driver writes there is looked
for from every node before any work starts.

Faults. Ray restarts an actor that dies (killed, out of memory) and gives it its job again (Ray Data's actor
defaults, ``max_restarts=-1`` and ``max_task_retries=-1``). An actor holds one job at a time, so a death costs
only that job, and each job counts its attempts in the run's journal (a hidden folder in the output folder):
after ``RETRIES`` retries it is reported as failed instead of killing workers for ever. The journal also
records each saved image, so a job whose worker died between saving and answering does not save it twice.
Ctrl-C disconnects from the cluster, which ends the run's actors; finished images stay.

Ray is imported on first use only: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from kcli.errors import KandinskyError
from kcli.pipelines.events import Relay
from kcli.pipelines.requests import Request
from kcli.pipelines.settings import Loading

RETRIES = 2  # times a job runs again after its worker died running it
INSTALL = 'pip install "kandinsky-cli[ray]"'
QUIET = {  # set before Ray is imported (a user's own settings win)
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report leaves the machine
    # a worker's death is reported here, with the job it hit, rather than by the raylet on stdout
    "RAY_DEDUP_LOGS_SKIP_REGEX": "retries remaining|worker died or was killed|Worker unexpectedly exits",
}
# Ray's own switch (meant for laptops) that keeps a cluster started here on 127.0.0.1, unseen from the network
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
ANSWER_S = 120  # how long a node may take to answer the shared-folder check


@dataclass
class Task:
    """One job as the front end prepared it: its place in the batch, its request, each image's file."""

    index: int
    request: Request
    paths: list[Path]


class Size(NamedTuple):
    """An image sent back to the driver without its pixels (they are in its file)."""

    width: int
    height: int


@dataclass
class Done:
    """What a worker reports for one job: the files it saved and their results (images as their ``Size``), or
    why the job failed."""

    index: int
    paths: list[Path] = field(default_factory=list)
    results: list = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    attempt: int = 1  # above 1: its worker died before, and it ran again
    worker: str = ""  # host:pid of the process that ran it
    actor: object = None  # that worker's Ray actor handle


@dataclass(frozen=True)
class Plan:
    workers: int
    gpus: int  # per worker: 1, or 0 for CPU workers
    cpus: int  # per worker
    nodes: list  # the alive nodes that can hold a worker (ray.nodes() entries)

    def describe(self) -> str:
        each = "1 GPU each" if self.gpus else f"{self.cpus} CPU{'s' if self.cpus > 1 else ''} each"
        nodes = f"{len(self.nodes)} node{'s' if len(self.nodes) > 1 else ''}"
        return f"ray: {self.workers} worker{'s' if self.workers > 1 else ''} ({each}) on a cluster of {nodes}"


def run(tasks: list[Task], load: Loading, save: Callable, *, folder: Path, address: str = "local",
        workers: int | None = None, inpainting: bool = False, hinted: bool = False, events=None,
        on_done: Callable[[Done], None] | None = None) -> list[Done]:
    """Run ``tasks`` on the cluster ``address`` names (see ``connected``) and return one ``Done`` per task, in
    the order they finished; ``on_done`` hears each as it comes. ``save(image, path, metadata)`` writes an
    image and returns where it went. ``workers`` caps the pool."""
    _ray(local=address == "local")  # one line when Ray is missing, before anything is written
    folder = Path(folder).absolute()
    token = secrets.token_hex(8)
    journal = folder / f".kandinsky-ray-{token}"
    made = not folder.exists()
    try:
        journal.mkdir(parents=True)
        (journal / "marker").write_text(token)
    except OSError as e:
        raise KandinskyError(f"cannot write into {folder}: {e.strerror or e}") from None
    done: dict[int, Done] = {}
    try:
        with connected(address) as ray:
            plan = make_plan(ray, load, len(tasks), workers)
            check_shared(ray, plan.nodes, folder, journal, token)
            Relay(events).note(plan.describe())
            try:
                for d in _stream(ray, tasks, load, save, plan, journal, inpainting, hinted):
                    done[d.index] = d
                    if on_done is not None:
                        on_done(d)
            except KeyboardInterrupt:  # images saved whose answer was still on its way are reported too
                for d in _saved_before_the_stop(journal, tasks, done):
                    if on_done is not None:
                        on_done(d)
                raise
    finally:
        shutil.rmtree(journal, ignore_errors=True)
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # nothing was made: leave no empty folder behind
    lost = [Done(t.index, error="lost: the cluster never answered for it") for t in tasks
            if t.index not in done]
    for d in lost:  # Ray Data dropped it (it should not): still reported, never silently missing
        if on_done is not None:
            on_done(d)
    return [*done.values(), *lost]


@dataclass
class Saved:
    """An image's result read back from its file, for a job whose answer never came (what a front end prints)."""

    image: Size
    seed: int
    request: Request
    timings: dict
    score: float | None
    metadata: dict


def _saved_before_the_stop(journal: Path, tasks: list[Task], done: dict) -> list[Done]:
    """The jobs not reported yet of which a worker saved images (the journal names each file it saved): each
    with those files and their results, read back from the files' metadata."""
    from PIL import Image

    from kcli.pipelines import imagemeta

    late = []
    for task in (t for t in tasks if t.index not in done):
        report = Done(task.index)
        for i, seed in enumerate(task.request.image_seeds()):
            entry = journal / f"{task.index}-{i}"
            path = journal.parent / entry.read_text() if entry.is_file() else None
            if path is None or not path.is_file():
                continue
            try:
                meta = imagemeta.read(path)
                with Image.open(path) as image:
                    size = Size(*image.size)
            except (KandinskyError, OSError):  # gone bad since: still on disk, still reported
                meta, size = {}, Size(0, 0)
            score = meta.get("score") if isinstance(meta.get("score"), dict) else {}
            settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
            seed = settings.get("seed", seed)  # with best_of, the kept candidate's
            report.paths.append(path)
            report.results.append(Saved(size, seed, dataclasses.replace(task.request, seed=seed, num_images=1),
                                        meta.get("timings") or {}, score.get("clip"), meta))
        if report.paths:
            late.append(report)
    return late


# ---- the cluster ------------------------------------------------------------------------------------------

def _ray(local: bool = False):
    """Ray, imported quiet; ``local``: the clusters it starts stay on the loopback (read at Ray's import)."""
    for key, value in {**QUIET, **(LOOPBACK if local and "ray" not in sys.modules else {})}.items():
        os.environ.setdefault(key, value)
    try:
        import ray
        import ray.data
    except ImportError:
        raise KandinskyError(f"--ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def start_local(num_cpus: int | None = None, num_gpus: int | None = None):
    """A private Ray cluster on this machine, quiet and on the loopback only (what ``--ray local`` starts)."""
    ray = _ray(local=True)
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR, _node_ip_address="127.0.0.1")
    return ray


@contextlib.contextmanager
def connected(address: str):
    """Ray, connected for the time of the block: ``local`` starts a private cluster on this machine, ``auto``
    joins the one ``ray start`` made (found as Ray finds it: RAY_ADDRESS, then this machine), anything else
    is a cluster's address. A program already connected (it called ``ray.init``) keeps its connection."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if address == "local":
            start_local()
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError) as e:
        hint = " (start one with `ray start --head`, or use --ray local)" if address == "auto" else ""
        raise KandinskyError(f"--ray {address}: no Ray cluster to join{hint}: {_first(e)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()  # a driver that leaves takes its actors with it


def make_plan(ray, load: Loading, jobs: int, cap: int | None) -> Plan:
    """How many workers, on what: one per GPU, else one per node (``cap`` limits both), never more than
    jobs."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    has = lambda n, kind: int(n.get("Resources", {}).get(kind, 0))
    gpus = sum(has(n, "GPU") for n in nodes)
    if gpus and load.device != "cpu":
        return Plan(max(1, min(cap or gpus, gpus, jobs)), 1, 1, [n for n in nodes if has(n, "GPU")])
    if load.device not in ("auto", "cpu"):
        raise KandinskyError(f"--device {load.device}: the Ray cluster has no GPU")
    hosts = [n for n in nodes if has(n, "CPU")]
    if not hosts:
        raise KandinskyError("the Ray cluster has no node with a CPU to run on")
    total = sum(has(n, "CPU") for n in hosts)
    count = max(1, min(cap or len(hosts), total, jobs))
    cpus = max(1, min(total // count, min(has(n, "CPU") for n in hosts)))  # torch's threads, within one node
    return Plan(count, 0, cpus, hosts)


def _sees(marker: str, token: str) -> bool:
    try:
        return Path(marker).read_text() == token
    except OSError:
        return False


def check_shared(ray, nodes: list, folder: Path, journal: Path, token: str) -> None:
    """Every node that may hold a worker reads the marker the driver wrote, or one line says which cannot."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    sees = ray.remote(num_cpus=0, max_retries=0)(_sees)
    asked = [(n["NodeManagerAddress"], sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(str(journal / "marker"), token)) for n in nodes]  # each node, even two on one host
    blind = []
    for host, answer in asked:
        try:
            if not ray.get(answer, timeout=ANSWER_S):
                blind.append(host)
        except Exception as e:  # noqa: BLE001 -- kcli missing there, a node gone, no answer in time
            cause = _first(e)
            hint = "; each node needs kandinsky-cli installed" if "No module named" in cause else ""
            raise KandinskyError(f"--ray: the node at {host} did not answer the shared-folder check: "
                                 f"{cause}{hint}") from None
    if blind:
        raise KandinskyError(f"--ray: {folder} is not reachable from the node(s) at {', '.join(blind)}: "
                             "-o must be a folder every node shares (NFS, a mounted bucket)")


def _stream(ray, tasks: list[Task], load: Loading, save, plan: Plan, journal: Path, inpainting: bool,
            hinted: bool):
    """Each task's ``Done``, as the actor pool finishes them."""
    context = ray.data.DataContext.get_current()
    kept = context.enable_progress_bars, context.print_on_execution_start, logging.getLogger("ray.data").level
    context.enable_progress_bars = context.print_on_execution_start = False  # the front end draws progress
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # failures come back as jobs' errors
    rows = None
    try:
        items = [{"index": t.index, "task": pickle.dumps(_portable(t))} for t in tasks]
        jobs = ray.data.from_items(items, override_num_blocks=len(items))  # one job per block: one per call
        mapped = jobs.map_batches(
            Worker, batch_size=1, num_gpus=plan.gpus, num_cpus=plan.cpus,
            fn_constructor_kwargs={"load": load, "save": save, "journal": str(journal),
                                   "inpainting": inpainting, "hinted": hinted, "gpu": bool(plan.gpus)},
            compute=ray.data.ActorPoolStrategy(size=plan.workers, max_tasks_in_flight_per_actor=1))
        rows = iter(mapped.iter_rows())
        for row in rows:
            yield pickle.loads(row["done"])
    except ray.exceptions.RayError as e:
        raise KandinskyError(f"the Ray run failed: {_first(e)}") from None
    finally:
        if hasattr(rows, "close"):
            rows.close()  # on Ctrl-C too: Ray Data stops its actors
        context.enable_progress_bars, context.print_on_execution_start = kept[:2]
        logging.getLogger("ray.data").setLevel(kept[2])


def _portable(task: Task) -> Task:
    """The task with absolute paths, which a worker on another node (in another working folder) reads as
    meant; images record paths resolved anyway, so their metadata is unchanged."""
    request = task.request
    paths = {f.name: v.absolute() for f in dataclasses.fields(request)
             if isinstance(v := getattr(request, f.name), Path)}
    return Task(task.index, dataclasses.replace(request, **paths), [Path(p).absolute() for p in task.paths])


# ---- a worker ---------------------------------------------------------------------------------------------

class Worker:
    """A Ray actor: opens the model once, then runs one job per call and saves its images."""

    def __init__(self, load: Loading, save: Callable, journal: str, inpainting: bool, hinted: bool,
                 gpu: bool):
        import ray

        from kcli.pipelines.kandinsky import Kandinsky

        self.save, self.journal = save, Path(journal)
        self.actor = ray.get_runtime_context().current_actor
        self.where = f"{socket.gethostname()}:{os.getpid()}"
        self.broken = None
        if gpu and load.device.startswith("cuda:"):
            load = dataclasses.replace(load, device="cuda")  # Ray shows the actor only its own GPU, as cuda:0
        try:
            self.k = Kandinsky.open(**dataclasses.asdict(load), inpainting=inpainting, hinted=hinted)
        except Exception as e:  # noqa: BLE001 -- each job it gets says why (a node without the checkpoints)
            self.broken = f"the worker at {self.where} could not open the model: {_error(e)}"

    def __call__(self, batch: dict) -> dict:
        task = pickle.loads(batch["task"][0])
        return {"index": [task.index], "done": [pickle.dumps(self.job(task))]}

    def job(self, task: Task) -> Done:
        started = time.perf_counter()
        done = Done(task.index, attempt=self._attempt(task.index), worker=self.where, actor=self.actor)
        if self.broken or done.attempt > RETRIES + 1:
            died = f"its worker died {done.attempt - 1} times running it (killed, or out of memory?)"
            done.error = self.broken or died
            return done
        try:
            for i, (result, path) in enumerate(zip(self.k.run(task.request), task.paths)):
                saved = self._saved(task.index, i) or self.save(result.image, path, result.metadata)
                self._journal(f"{task.index}-{i}", saved.name)
                done.paths.append(saved)
                done.results.append(dataclasses.replace(result, image=Size(*result.image.size)))
        except Exception as e:  # noqa: BLE001 -- out of GPU memory on one large job, say: the others go on
            done.error = _error(e)
        done.seconds = time.perf_counter() - started
        return done

    def _attempt(self, index: int) -> int:
        """This job's attempt number; the journal keeps, for each attempt, the worker that made it."""
        tries = self.journal / f"{index}.tries"
        before = tries.read_text().splitlines() if tries.exists() else []
        self._journal(tries.name, "\n".join([*before, self.where]))
        return len(before) + 1

    def _saved(self, index: int, image: int) -> Path | None:
        """The file an earlier attempt of this job saved image ``image`` to, if one did."""
        entry = self.journal / f"{index}-{image}"
        if entry.exists() and (self.journal.parent / entry.read_text()).exists():
            return self.journal.parent / entry.read_text()
        return None

    def _journal(self, name: str, text: str) -> None:
        part = self.journal / f".{name}.{os.getpid()}"
        part.write_text(text)
        os.replace(part, self.journal / name)


def _error(e: BaseException) -> str:
    """A job's error in one line, as a local batch reports it."""
    return str(e) if isinstance(e, KandinskyError) else f"{type(e).__name__}: {_first(e)}"


def _first(e: BaseException) -> str:
    text = str(getattr(e, "cause", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__
