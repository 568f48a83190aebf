"""A batch on a Ray cluster (``--ray``): the local batch's files, --resume, failures, a worker killed mid-run.

One private local cluster (2 CPUs, loopback only, no dashboard, no usage report) serves the whole module; the
tests share it on one pytest-xdist worker (``xdist_group``, with ``--dist loadgroup`` in pyproject's addopts).
The command line runs in this process, so ``--ray`` finds the cluster connected and uses it.
"""

import json
import shutil
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kcli.cli import app
from kcli.cli import output as out
from kcli.errors import KandinskyError
from kcli.pipelines import Loading, TextToImage, raybatch

pytestmark = pytest.mark.xdist_group("ray")

TINY = ["--steps", "2", "--prior-steps", "2", "-W", "64", "-H", "64", "--device", "cpu",
        "--name", "{slug}-{seed}"]
JOBS = [  # six jobs, then one the workers fail and one no worker sees (a bad line)
    "a lighthouse at dusk",
    {"prompt": "a red cat", "seed": 7, "steps": 3, "negative": "rain"},
    {"prompt": "a castle", "width": 128},
    "a blue dog",
    {"prompt": "a green kite", "seed": 2**40, "guidance": 2},
    {"prompt": "two owls", "name": "owls-{seed}"},
    {"prompt": "too small", "width": 2},
    '{"prompt": 3}',
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # the workers' environment is the one they start with
        mp.setenv("KANDINSKY_HOME", str(tmp_path_factory.getbasetemp() / "kandinsky-home"))
        mp.setenv("RAY_memory_monitor_refresh_ms", "0")  # tiny workers: a full machine must not kill them
        ray = raybatch.start_local(num_cpus=2)
    yield ray
    ray.shutdown()


def kandinsky(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.stderr, result.stderr
    return result


def meta_of(path):
    meta = json.loads(Image.open(path).info["kandinsky"])
    meta.pop("timings")  # how long it took: the one thing allowed to differ
    return meta


@pytest.fixture(scope="module")
def jobs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray-jobs") / "jobs.jsonl"
    path.write_text("\n".join(j if isinstance(j, str) else json.dumps(j) for j in JOBS) + "\n")
    return path


@pytest.fixture(scope="module")
def models(prior22, decoder22):
    return ["--prior", prior22, "--decoder", decoder22]


@pytest.fixture(scope="module")
def on_ray(cluster, jobs_file, models, tmp_path_factory):
    """The jobs file run on the cluster by two workers."""
    folder = tmp_path_factory.mktemp("on-ray")
    return folder, kandinsky("generate", "--prompts-file", jobs_file, *models, *TINY, "-o", folder,
                             "--ray", "auto", "--ray-workers", 2)


def test_six_jobs_on_two_workers_make_the_files_a_local_batch_makes(on_ray, jobs_file, models, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker has (one CPU each): a CPU sum's last bit depends on the split
    try:
        local = kandinsky("generate", "--prompts-file", jobs_file, *models, *TINY, "-o", tmp_path)
    finally:
        torch.set_num_threads(threads)
    folder, ray_run = on_ray
    assert "ray: 2 workers (1 CPU each)" in ray_run.stderr
    assert (ray_run.exit_code, local.exit_code) == (1, 1)  # the same two bad jobs
    made = sorted(p.name for p in folder.iterdir())
    assert made == sorted(p.name for p in tmp_path.iterdir()) and len(made) == 6
    assert "owls-" in " ".join(made) and "a-green-kite-1099511627776.png" in made  # names from lines, seeds
    for name in made:
        ours, theirs = folder / name, tmp_path / name
        assert np.array_equal(np.asarray(Image.open(ours)), np.asarray(Image.open(theirs))), name
        assert meta_of(ours) == meta_of(theirs), name
    assert sorted(ray_run.stdout.split()) == sorted(str(folder / n) for n in made)  # each path, as saved


def test_a_bad_job_is_reported_and_the_others_finish(on_ray):
    folder, result = on_ray
    assert result.exit_code == 1
    assert result.stderr.count("error: width 2 is below this model's minimum") == 1  # failed on a worker
    assert "error: line 8: prompt must be str, got 3" in result.stderr  # failed before the cluster
    assert "6 ok, 2 failed" in result.stderr and "jobs 7/7" in result.stderr and "img/min" in result.stderr
    assert not list(folder.glob(".*"))  # no journal, no part file left


def test_resume_skips_the_finished_jobs(on_ray, jobs_file, models, tmp_path):
    folder, _ = on_ray
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    gone = sorted(tmp_path.glob("a-*.png"))[:2]
    for path in gone:
        path.unlink()
    again = kandinsky("generate", "--prompts-file", jobs_file, *models, *TINY, "-o", tmp_path,
                      "--ray", "auto", "--resume")
    assert "4 skipped" in again.stderr and "2 ok" in again.stderr, again.stderr
    assert sorted(again.stdout.split()) == [str(p) for p in gone]  # only the missing ones were made
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in folder.iterdir())
    for path in gone:
        assert meta_of(path) == meta_of(folder / path.name)


def slow_save(image, path, meta):
    """Saving onto a slow shared disk: a worker that took a job stays busy with it long enough to kill."""
    time.sleep(1.5)
    return out.save_image(image, path, meta)


def test_a_worker_killed_mid_run_is_restarted_and_every_job_ends_done(cluster, prior22, decoder22, tmp_path):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # slow_save goes to the workers by value
    folder = tmp_path / "out"
    tasks = [raybatch.Task(i, TextToImage(prompt=f"a kite {i}", seed=i, steps=2, prior_steps=2, width=64,
                                          height=64), [folder / f"kite-{i}.png"]) for i in range(6)]
    killed = {}

    def kill_a_busy_worker(done):
        """At the first job done, its worker has taken its next job: kill it while it runs that one."""
        if killed:
            return
        journal = next(folder.glob(".kandinsky-ray-*"))
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for tries in journal.glob("*.tries"):
                index = int(tries.name.split(".")[0])
                if index != done.index and tries.read_text().splitlines()[-1] == done.worker:
                    cluster.kill(done.actor, no_restart=False)
                    killed.update(index=index, worker=done.worker)
                    break
            time.sleep(0.02)

    load = Loading(prior=str(prior22), decoder=str(decoder22), device="cpu")
    dones = raybatch.run(tasks, load, slow_save, folder=folder, address="auto", workers=2,
                         on_done=kill_a_busy_worker)
    assert killed, "no worker was busy to kill"
    assert sorted(d.index for d in dones) == list(range(6)) and not [d.error for d in dones if d.error]
    retried = next(d for d in dones if d.index == killed["index"])
    assert retried.attempt == 2 and retried.worker != killed["worker"]  # ran again, in the restarted process
    assert sorted(p.name for p in folder.iterdir()) == [f"kite-{i}.png" for i in range(6)]  # once each
    assert [meta_of(folder / f"kite-{i}.png")["settings"]["seed"] for i in range(6)] == list(range(6))


def test_a_folder_a_node_cannot_see_ends_in_one_line(cluster, tmp_path):
    nodes = [n for n in cluster.nodes() if n["Alive"]]
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]  # a private cluster: on the loopback
    (tmp_path / "marker").write_text("another run's token")
    with pytest.raises(KandinskyError, match=r"is not reachable from the node\(s\) at 127\.0\.0\.1: -o must "
                                              "be a folder every node shares"):
        raybatch.check_shared(cluster, nodes, tmp_path, tmp_path, "this run's token")


def test_without_ray_or_without_a_batch_the_flags_end_in_one_line(jobs_file, models, tmp_path, monkeypatch):
    alone = kandinsky("generate", "a cat", *models, *TINY, "--ray", "local")
    assert alone.exit_code == 1 and "error: --ray runs the jobs of a --prompts-file" in alone.stderr
    workers = kandinsky("generate", "--prompts-file", jobs_file, *models, *TINY, "-o", tmp_path,
                        "--ray-workers", 2)
    assert workers.exit_code == 1 and "error: --ray-workers goes with --ray" in workers.stderr
    none = kandinsky("generate", "--prompts-file", jobs_file, *models, *TINY, "-o", tmp_path,
                     "--ray", "local", "--ray-workers", 0)
    assert none.exit_code == 1 and "error: ray-workers must be at least 1, got 0" in none.stderr
    both = kandinsky("generate", "--prompts-file", jobs_file, *models, *TINY, "-o", tmp_path,
                     "--ray", "local", "--server", "http://127.0.0.1:9")
    assert both.exit_code == 1 and "error: give --ray or --server, not both" in both.stderr
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed
    missing = kandinsky("generate", "--prompts-file", jobs_file, *models, *TINY, "-o", tmp_path / "x",
                        "--ray", "local")
    assert missing.exit_code == 1 and 'pip install "kandinsky-cli[ray]"' in missing.stderr
    assert missing.stderr.count("error:") == 2 and not (tmp_path / "x").exists()  # the bad line, then Ray
    assert not list(tmp_path.iterdir())  # nothing made anywhere


def test_ctrl_c_ends_a_ray_batch_with_130_keeping_finished_images_and_leaving_no_journal(
        cluster, models, tmp_path):
    """The command line in its own process, joined to the module's cluster: Ctrl-C after the first image."""
    import os
    import signal
    import subprocess

    address = cluster.get_runtime_context().gcs_address
    lines = 'first\n{"prompt": "second", "steps": 999}\n'  # the longest schedule: still running at the signal
    folder = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "kcli", "generate", "--prompts-file", "-", *map(str, models),
                             *TINY, "-o", str(folder), "--ray", "auto", "--ray-workers", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.stdin.write(lines)
    proc.stdin.close()
    proc.stdin = None  # communicate() below must not touch it again
    deadline = time.monotonic() + 240
    while not list(folder.glob("first-*.png")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # the worker is on the second job's steps
    proc.send_signal(signal.SIGINT)
    try:
        stdout, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the batch did not end within 120 s of Ctrl-C: {proc.communicate()[1][-2000:]}")
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: finished images were kept" in err and "Traceback" not in err
    assert [p.name for p in folder.iterdir()] == [next(folder.glob("first-*.png")).name]  # no journal, no part
    assert stdout.split() == [str(next(folder.glob("first-*.png")))]


def test_images_saved_before_a_stop_are_reported_from_the_journal(tmp_path):
    """Ctrl-C between a worker's save and its answer reaching the driver: the journal still names the file."""
    journal = tmp_path / ".kandinsky-ray-0123"
    journal.mkdir()
    request = TextToImage(prompt="a kite", seed=40, num_images=3, width=64, height=64)
    tasks = [raybatch.Task(0, request, [tmp_path / f"kite-{s}.png" for s in request.image_seeds()]),
             raybatch.Task(1, TextToImage(prompt="reported", seed=1), [tmp_path / "reported.png"])]
    meta = {"settings": {"seed": 41, "prompt": "a kite"}, "timings": {"decode": 0.5}}
    out.save_image(Image.new("RGB", (64, 32)), tmp_path / "kite-41.png", meta)
    (journal / "0-1").write_text("kite-41.png")  # the second image saved; the first never finished
    (journal / "0-2").write_text("kite-42.png")  # named, but its file is not there
    late = raybatch._saved_before_the_stop(journal, tasks, done={1: raybatch.Done(1)})
    assert [(d.index, d.paths, d.error) for d in late] == [(0, [tmp_path / "kite-41.png"], None)]
    result = late[0].results[0]
    assert (result.seed, result.request.seed, result.image, result.timings) == (41, 41, (64, 32), {"decode": 0.5})
    assert result.request.label == "a kite"
