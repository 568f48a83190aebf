"""A batch on a Ray cluster of two nodes (two raylets on this machine, on the loopback): a worker on each
node, each node checked for the shared output folder, the files a local batch makes."""

import json
import sys

import pytest
from PIL import Image

from kcli.cli import output as out
from kcli.pipelines import Loading, TextToImage, raybatch

pytestmark = pytest.mark.xdist_group("ray")  # one Ray cluster at a time on the machine


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    raybatch._ray(local=True)  # Ray imported quiet, kept on the loopback
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KANDINSKY_HOME", str(tmp_path_factory.getbasetemp() / "kandinsky-home"))
        mp.setenv("RAY_memory_monitor_refresh_ms", "0")
        cluster = Cluster(initialize_head=True, connect=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
    yield cluster
    import ray

    ray.shutdown()
    cluster.shutdown()


def save_with_node(image, path, meta):
    """``save_image``, noting which node saved it (beside the image, for the test)."""
    import ray

    saved = out.save_image(image, path, meta)
    saved.with_suffix(".node").write_text(ray.get_runtime_context().get_node_id())
    return saved


def test_a_worker_on_each_node_makes_every_file(two_nodes, prior22, decoder22, tmp_path, monkeypatch):
    import ray
    from ray import cloudpickle

    # both workers open the model before the first job is handed out, so each node surely gets one
    monkeypatch.setattr(ray.data.DataContext.get_current(), "wait_for_min_actors_s", 600)

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # save_with_node goes to the workers by value
    folder = tmp_path / "out"
    tasks = [raybatch.Task(i, TextToImage(prompt=f"a kite {i}", seed=i, steps=2, prior_steps=2, width=64,
                                          height=64), [folder / f"kite-{i}.png"]) for i in range(4)]
    load = Loading(prior=str(prior22), decoder=str(decoder22), device="cpu")
    notes = []

    class Heard:
        def note(self, message):
            notes.append(message)

    dones = raybatch.run(tasks, load, save_with_node, folder=folder, address="auto", workers=2, events=Heard())
    assert notes == ["ray: 2 workers (1 CPU each) on a cluster of 2 nodes"]
    assert sorted(d.index for d in dones) == [0, 1, 2, 3] and not [d.error for d in dones if d.error]
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    saved_on = {(folder / f"kite-{i}.node").read_text() for i in range(4)}
    assert saved_on == nodes  # both nodes worked
    for i in range(4):
        meta = json.loads(Image.open(folder / f"kite-{i}.png").info["kandinsky"])
        assert meta["settings"]["seed"] == i and meta["settings"]["prompt"] == f"a kite {i}"
    assert not list(folder.glob(".*"))  # the journal is gone
