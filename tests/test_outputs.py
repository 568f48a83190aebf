"""Where images go when several runs share a folder, when a run dies while saving, and when the folder cannot
take the file: no image is lost or overwritten, no partial file stays, and a failure is one line."""

import os
import subprocess
import sys
import threading

from PIL import Image
from test_cli import one_line_error, run

from kcli.cli.output import save_image

TINY = ["--steps", 2, "--prior-steps", 2, "-W", 64, "-H", 64, "--device", "cpu"]


def test_threads_saving_under_one_name_never_overwrite_each_other(tmp_path):
    saved, lock = [], threading.Lock()

    def worker(k):
        for i in range(15):
            path = save_image(Image.new("RGB", (4, 4), (k, i, 7)), tmp_path / "img.png")
            with lock:
                saved.append((path, (k, i, 7)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p for p, _ in saved}) == 120 and len(list(tmp_path.iterdir())) == 120
    for path, colour in saved:  # each file holds the image that was saved under its name
        assert Image.open(path).getpixel((0, 0)) == colour


def test_two_runs_into_one_folder_with_one_name_keep_all_60_images(prior22, decoder22, tmp_path):
    models = ["--prior", prior22, "--decoder", decoder22]
    procs = [subprocess.Popen([sys.executable, "-m", "kcli", "generate", "a cat", "-n", "30", "--seed", str(seed),
                               "--name", "img", *map(str, models), *map(str, TINY), "-o", str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "COLUMNS": "200"})
             for seed in (0, 1000)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    printed = [line for out, _ in outs for line in out.splitlines()]
    files = sorted(str(p) for p in tmp_path.iterdir())
    assert len(files) == 60 and sorted(printed) == files  # every image kept, each path printed once
    assert len({p.read_bytes() for p in tmp_path.iterdir()}) == 60  # and none overwritten by another


def test_a_dead_runs_partial_file_is_swept_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".img.png.{int(dead.stdout)}-1a2b3c4d.part"  # that process has ended
    live = tmp_path / f".img.png.{os.getppid()}-5e6f7a8b.part"  # our parent is running
    stale.write_bytes(b"half a png")
    live.write_bytes(b"being written")
    save_image(Image.new("RGB", (4, 4)), tmp_path / "img.png")
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "img.png"]


def test_a_name_the_file_system_refuses_is_one_line_and_leaves_nothing(prior22, decoder22, tmp_path):
    proc = run("generate", "a cat", "--prior", prior22, "--decoder", decoder22, *TINY, "--seed", 1,
               "--name", "x" * 300, "-o", tmp_path)
    line = one_line_error(proc)
    assert line.startswith(f"error: cannot write {tmp_path}/{'x' * 300}.png: ") and "too long" in line
    assert list(tmp_path.iterdir()) == []
