"""explain_dataset: maps for a tf.data.Dataset, streamed or written to shards (TensorFlow by nature).

tf.data's own path and tf.distribute (MirroredStrategy, MultiWorkerMirroredStrategy):
the TensorFlow test modes run this file; test_dataset_sources.py covers every backend.

Every expected value comes from the explainer's own path (``cam.explain`` on
the whole array), which shares no code with the dataset pipeline, the
distribution or the shard writer. The two-replica test runs in a subprocess
(this file run as a script), because logical devices must be configured
before TensorFlow initializes, which the rest of the suite has already done.
"""

import gc
import json
import os
import subprocess
import sys
import tempfile
import weakref

import cv2
import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam._compat import keras
from keras_cam.dataset import explain_dataset, read_index

pytestmark = pytest.mark.tensorflow_only

N, SIZE, CLASSES = 11, 16, 3


def small_model():
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ])


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(1)
    model = small_model()
    rng = np.random.default_rng(1)
    x = rng.random((N, SIZE, SIZE, 3), dtype=np.float32)
    y = (np.arange(N) * 2) % CLASSES
    return kc.GradCAM(model), x, y


def collect(results):
    results = list(results)
    maps = np.concatenate([r.maps for r in results])
    targets = None if results[0].targets is None else np.concatenate([r.targets for r in results])
    scores = np.concatenate([r.scores for r in results])
    return results, maps, targets, scores


def test_unbatched_labels_become_targets(setup):
    cam, x, y = setup
    ref = cam.explain(x, targets=y)
    results, maps, targets, scores = collect(
        explain_dataset(cam, tf.data.Dataset.from_tensor_slices((x, y)), batch_size=4, verbose=0))
    assert [r.maps.shape for r in results] == [(4, SIZE, SIZE), (4, SIZE, SIZE), (3, SIZE, SIZE)]
    np.testing.assert_array_equal(targets, y)
    np.testing.assert_allclose(maps, ref.maps, atol=1e-5)
    np.testing.assert_allclose(scores, ref.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([r.probabilities for r in results]), ref.probabilities, atol=1e-6)


@pytest.mark.parametrize("form", ["one_hot", "column", "float"])
def test_label_forms(setup, form):
    cam, x, y = setup
    labels = {"one_hot": np.eye(CLASSES, dtype=np.float32)[y], "column": y[:, None],
              "float": y.astype(np.float32)}[form]
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(5)
    _, maps, targets, _ = collect(explain_dataset(cam, ds, verbose=0))
    np.testing.assert_array_equal(targets, y)
    np.testing.assert_allclose(maps, cam(x, targets=y), atol=1e-5)


def test_batched_images_only_is_top1_and_keeps_batches(setup):
    cam, x, _ = setup
    ref = cam.explain(x)
    results, maps, targets, _ = collect(
        explain_dataset(cam, tf.data.Dataset.from_tensor_slices(x).batch(3), batch_size=64, verbose=0))
    assert [len(r.maps) for r in results] == [3, 3, 3, 2]
    np.testing.assert_array_equal(targets, ref.targets)
    np.testing.assert_allclose(maps, ref.maps, atol=1e-5)


def test_an_empty_batch_never_reaches_the_model(setup):
    """A batched dataset may yield a batch of 0 images (after a filter, say); it is
    left out, never run (oneDNN's kernels fail on an empty batch)."""
    cam, x, y = setup
    ds = (tf.data.Dataset.from_tensor_slices((x[:4], y[:4])).batch(4)
          .concatenate(tf.data.Dataset.from_tensors((x[:0], y[:0])))
          .concatenate(tf.data.Dataset.from_tensor_slices((x[4:], y[4:])).batch(4)))
    results, maps, targets, _ = collect(explain_dataset(cam, ds, verbose=0))
    assert [len(r.maps) for r in results] == [4, 4, 3]
    np.testing.assert_array_equal(targets, y)
    np.testing.assert_allclose(maps, cam(x, targets=y), atol=1e-5)


def test_explicit_targets_override_labels(setup):
    cam, x, y = setup
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.ones(N, np.float32))).batch(4)  # with sample weights
    _, _, targets, _ = collect(explain_dataset(cam, ds, targets=None, verbose=0))
    np.testing.assert_array_equal(targets, cam.explain(x).targets)
    _, maps, targets, _ = collect(explain_dataset(cam, ds, targets=2, verbose=0))
    np.testing.assert_array_equal(targets, np.full(N, 2))
    np.testing.assert_allclose(maps, cam(x, targets=2), atol=1e-5)

    def score(out):
        return out[:, 1] - out[:, 0]

    results, maps, targets, scores = collect(explain_dataset(cam, ds, targets=score, verbose=0))
    ref = cam.explain(x, targets=score)
    assert targets is None and results[0].probabilities is None
    np.testing.assert_allclose(maps, ref.maps, atol=1e-5)
    np.testing.assert_allclose(scores, ref.scores, rtol=1e-5, atol=1e-6)


def test_raw_maps_pass_through(setup):
    cam, x, y = setup
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    _, maps, _, _ = collect(explain_dataset(cam, ds, upsample=False, normalize=False, verbose=0))
    assert maps.shape == (N, SIZE - 2, SIZE - 2)
    np.testing.assert_allclose(maps, cam(x, targets=y, upsample=False, normalize=False), rtol=1e-5, atol=1e-6)


def _explain_three_times(model, x, y, traces):
    class Counting(kc.GradCAM):
        def raw_maps(self, images, class_idx, target_fn=None):
            traces.append(images.shape[0])  # runs while tracing only
            return super().raw_maps(images, class_idx, target_fn)

    counting = Counting(model)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    for _ in range(3):
        _, maps, _, _ = collect(explain_dataset(counting, ds, verbose=0))
    return maps, weakref.ref(counting)


def test_traced_once_per_batch_shape_and_no_leak(setup):
    cam, x, y = setup
    traces = []
    maps, ref = _explain_three_times(cam.model, x, y, traces)
    assert len(traces) == 2   # the full batches and the last, smaller one; then reused
    np.testing.assert_allclose(maps, cam(x, targets=y), atol=1e-5)
    gc.collect()
    assert ref() is None      # the cached compiled step does not keep the explainer alive


def test_progress_bar(setup, capsys):
    cam, x, _ = setup
    list(explain_dataset(cam, tf.data.Dataset.from_tensor_slices(x).batch(4), verbose=1))
    assert "3/3" in capsys.readouterr().out


def test_bad_inputs(setup):
    cam, x, y = setup
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        explain_dataset(cam, x)
    with pytest.raises(TypeError, match="explainer"):
        explain_dataset(cam.model, ds)
    with pytest.raises(TypeError, match="structure"):
        explain_dataset(cam, tf.data.Dataset.from_tensor_slices({"image": x}))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        explain_dataset(cam, tf.data.Dataset.from_tensor_slices(x[:, :, :, 0]))
    with pytest.raises(TypeError, match="list of classes"):
        explain_dataset(cam, ds, targets=[0, 1])
    with pytest.raises(ValueError, match="out of range"):
        explain_dataset(cam, ds, targets=CLASSES)
    with pytest.raises(ValueError, match="empty"):
        explain_dataset(cam, ds.take(0))
    with pytest.raises(ValueError, match="save"):
        explain_dataset(cam, ds, out="x", save="jpg")
    with pytest.raises(ValueError, match="batch_size"):
        explain_dataset(cam, ds, batch_size=0)
    with pytest.raises(TypeError, match="strategy"):
        explain_dataset(cam, ds, strategy="mirrored")
    bad = tf.data.Dataset.from_tensor_slices((x, np.where(np.arange(N) == 6, CLASSES, y))).batch(4)
    with pytest.raises(ValueError, match=r"Batch 1 .*classes of the model \(0\.\.2\)"):
        list(explain_dataset(cam, bad, verbose=0))
    with pytest.raises(ValueError, match="channels"):
        explain_dataset(cam, tf.data.Dataset.from_tensor_slices(x[..., :2]).batch(4))
    nan = x.copy()
    nan[9, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="Batch 2 .*NaN"):
        list(explain_dataset(cam, tf.data.Dataset.from_tensor_slices(nan).batch(4), verbose=0))


def test_shards_index_and_resume(setup, tmp_path):
    cam, x, y = setup
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ref = cam.explain(x, targets=y)
    out = tmp_path / "maps"

    # An interrupted run: only the first two batches got written.
    first = explain_dataset(cam, ds.take(8), batch_size=4, out=out, verbose=0)
    assert (first["written"], first["skipped"]) == (2, 0)
    stamps = {p: os.stat(out / p).st_mtime_ns for p in ("maps_000000.npy", "maps_000001.npy")}
    summary = explain_dataset(cam, ds, batch_size=4, out=str(out), verbose=0)
    assert summary == {"out": str(out), "index": str(out / "index.jsonl"), "images": N,
                       "shards": 3, "written": 1, "skipped": 2, "replicas": 1}
    assert {p: os.stat(out / p).st_mtime_ns for p in stamps} == stamps  # not rewritten

    header, shards = read_index(out)
    assert header["method"] == "GradCAM" and header["layers"] == ["conv"] and header["targets"] == "labels"
    assert [s["ids"] for s in shards] == [list(range(0, 4)), list(range(4, 8)), list(range(8, 11))]
    maps = np.concatenate([np.load(out / s["files"][0]) for s in shards])
    np.testing.assert_allclose(maps, ref.maps, atol=1e-5)
    assert sum((s["targets"] for s in shards), []) == y.tolist()
    np.testing.assert_allclose(sum((s["scores"] for s in shards), []), ref.scores, rtol=1e-5, atol=1e-6)

    # A damaged shard, a missing one, and a torn last index line: those two are recomputed.
    np.save(out / "maps_000001.npy", np.zeros((4, SIZE, SIZE), np.float32))
    os.remove(out / "maps_000002.npy")
    with open(out / "index.jsonl", "a") as f:
        f.write('{"shard": 2, "files": ["maps_0')
    summary = explain_dataset(cam, ds, batch_size=4, out=out, verbose=0)
    assert (summary["written"], summary["skipped"]) == (2, 1)
    _, shards = read_index(out)
    np.testing.assert_allclose(np.concatenate([np.load(out / s["files"][0]) for s in shards]), ref.maps, atol=1e-5)
    assert not [p for p in os.listdir(out) if ".tmp" in p]

    # Other images at the same positions: their shard no longer matches and is redone.
    x2 = x.copy()
    x2[9] = 1.0 - x2[9]
    summary = explain_dataset(cam, tf.data.Dataset.from_tensor_slices((x2, y)), batch_size=4, out=out, verbose=0)
    assert (summary["written"], summary["skipped"]) == (1, 2)
    _, shards = read_index(out)
    np.testing.assert_allclose(np.load(out / shards[2]["files"][0]), cam(x2[8:], targets=y[8:]), atol=1e-5)

    with pytest.raises(ValueError, match="other settings.*targets"):
        explain_dataset(cam, ds, batch_size=4, out=out, targets=None, verbose=0)
    with pytest.raises(ValueError, match="other settings.*GradCAMPlusPlus"):
        explain_dataset(kc.GradCAMPlusPlus(cam.model), ds, batch_size=4, out=out, verbose=0)


def test_png_overlays(setup, tmp_path):
    cam, x, y = setup
    from keras_cam.viz import overlay

    summary = explain_dataset(cam, tf.data.Dataset.from_tensor_slices((x, y)).batch(4), out=tmp_path,
                              save="png", verbose=0)
    assert summary["written"] == 3
    _, shards = read_index(tmp_path)
    files = sum((s["files"] for s in shards), [])
    assert files == [f"overlay_{i:07d}.png" for i in range(N)]
    maps = cam(x, targets=y)
    for i in (0, 5, N - 1):
        png = cv2.cvtColor(cv2.imread(str(tmp_path / files[i])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(png, overlay(x[i], maps[i]))
    again = explain_dataset(cam, tf.data.Dataset.from_tensor_slices((x, y)).batch(4), out=tmp_path,
                            save="png", verbose=0)
    assert (again["written"], again["skipped"]) == (0, 3)


def _run_script(*args, timeout=300):
    """This file run as a script in a fresh interpreter, TensorFlow's defaults
    (oneDNN kernels included) left as they are; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_replicas_match_one_device():
    """Two logical CPUs with MirroredStrategy: same maps, same order, every image once,
    and no replica ever handed an empty batch (oneDNN's kernels fail on one)."""
    report = _run_script("mirrored")
    assert report["replicas"] == 2
    for case in ("batched", "unbatched", "one_image", "generator"):
        r = report[case]
        assert r["ids"] == list(range(r["n"])), case                  # order, nothing lost or doubled
        assert r["batch_sizes"] == r["expected_batch_sizes"], case    # the last partial batch included
        assert r["max_map_diff"] < 1e-5 and r["max_score_diff"] < 1e-4, case
        assert r["targets_equal"], case
        # Both replicas computed a share of every batch, never an empty one; the
        # rows they saw are the images plus the padding of the odd-sized batches.
        calls = r["calls"]
        assert {c[0] for c in calls} == {0, 1} and min(c[1] for c in calls) >= 1, calls
        padded = sum(-(-b // 2) * 2 for b in r["expected_batch_sizes"])
        assert sum(c[1] for c in calls) == padded, calls
    # The callback and the metrics under the strategy: one image, as one device sees it.
    cb = report["callback"]
    assert cb["errors"] == [] and cb["max_map_diff"] < 1e-5, cb
    assert abs(cb["probability"] - cb["ref_probability"]) < 1e-5, cb
    for name in ("average_drop", "increase_in_confidence", "deletion_auc"):
        assert abs(cb[name] - cb["ref_" + name]) < 1e-4, (name, cb)


def _copy_outside(model):
    """The model's twin on the default strategy (one device), same weights."""
    twin = small_model()
    twin.set_weights(model.get_weights())
    return twin


class _Probe(kc.GradCAM):
    """Grad-CAM that records, at run time, (replica, rows) for every replica call."""

    calls = []

    def raw_maps(self, images, class_idx, target_fn=None):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group

        def record(replica, images):
            _Probe.calls.append((int(replica), int(images.shape[0])))
            return images

        counted = tf.py_function(record, [replica, images], tf.float32)
        counted.set_shape(images.shape)
        return super().raw_maps(counted, class_idx, target_fn)


def _shards(out, reference, x, y, n, batch):
    """The shards explain_dataset wrote to ``out``, compared with the one-device
    maps of ``reference`` on the same images."""
    ref = reference.explain(x, targets=y)
    _, shards = read_index(out)
    maps = np.concatenate([np.load(os.path.join(out, s["files"][0])) for s in shards])
    return {
        "n": n, "ids": sum((s["ids"] for s in shards), []),
        "batch_sizes": [s["shape"][0] for s in shards],
        "expected_batch_sizes": [min(batch, n - i) for i in range(0, n, batch)],
        "max_map_diff": float(np.abs(maps - ref.maps).max()) if maps.shape == ref.maps.shape else 1e9,
        "max_score_diff": float(np.abs(np.array(sum((s["scores"] for s in shards), [])) - ref.scores).max()),
        "targets_equal": sum((s["targets"] for s in shards), []) == y.tolist(),
    }


def _two_replica_report():
    """Run in a fresh interpreter: configure two logical CPUs, compare with one device."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    keras.utils.set_random_seed(2)
    with strategy.scope():
        model = small_model()
    single = kc.GradCAM(_copy_outside(model))
    probe = _Probe(model)
    rng = np.random.default_rng(2)
    report = {"replicas": strategy.num_replicas_in_sync}
    for case, n, ds_of in (
        ("batched", 9, lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).batch(4)),  # 4, 4, 1
        ("unbatched", 9, lambda x, y: tf.data.Dataset.from_tensor_slices((x, y))),          # 4, 4, 1
        ("one_image", 1, lambda x, y: tf.data.Dataset.from_tensor_slices((x, y))),          # 1
        ("generator", 9, lambda x, y: ((x[i:i + 4], y[i:i + 4]) for i in range(0, len(x), 4))),  # made a tf.data
    ):
        x = rng.random((n, SIZE, SIZE, 3), dtype=np.float32)
        y = rng.integers(0, CLASSES, n)
        _Probe.calls.clear()
        with tempfile.TemporaryDirectory() as out:  # the ids the images carried are in the index
            explain_dataset(probe, ds_of(x, y), strategy=strategy, batch_size=4, out=out, verbose=0)
            report[case] = {**_shards(out, single, x, y, n, 4), "calls": list(_Probe.calls)}

    # CAMCallback and the metrics while the model trains under the strategy.
    x = rng.random((8, SIZE, SIZE, 3), dtype=np.float32)
    y = rng.integers(0, CLASSES, 8)
    with strategy.scope():
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        cb = kc.CAMCallback(x[:1], log_dir=tempfile.mkdtemp(), tensorboard=False, save_png=False,
                            metrics=("average_drop", "increase_in_confidence", "deletion_auc"))
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[cb])
    twin = _copy_outside(model)  # the weights after the epoch the callback explained
    ref = kc.GradCAM(twin).explain(x[:1])
    record = cb.records[0] if cb.records else {}
    report["callback"] = {
        "errors": [repr(e) for _, e in cb.errors],
        "max_map_diff": float(np.abs(cb.explainer(x[:1]) - ref.maps).max()),
        "probability": record.get("probabilities", [np.nan])[0], "ref_probability": float(ref.probabilities[0]),
        **{name: record.get(name, np.nan) for name in ("average_drop", "increase_in_confidence", "deletion_auc")},
        **{"ref_" + name: float(getattr(kc.metrics, name)(twin, x[:1], ref.maps, ref.targets))
           for name in ("average_drop", "increase_in_confidence", "deletion_auc")},
    }
    print(json.dumps(report))


def _free_ports(count):
    """Ports free on the loopback interface right now (bound, read, released)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_two_workers_match_one_device(tmp_path):
    """MultiWorkerMirroredStrategy with two worker processes on localhost: the chief
    gathers every image's map once, in order, equal to one device's; only it writes."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    try:
        for index in range(2):
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            out = tmp_path / f"worker{index}"
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "worker", str(out)], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
                env={**os.environ, "TF_CONFIG": config, "TF_CPP_MIN_LOG_LEVEL": "2"}))
        outputs = [proc.communicate(timeout=240) for proc in procs]
    finally:
        for proc in procs:  # a worker left waiting for its peer must not outlive the test
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    chief, other = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert chief["replicas"] == other["replicas"] == 2
    assert chief["written"] and not other["written"]       # the maps are written by the chief alone
    for case in ("batched", "one_image"):
        r = chief[case]
        assert r["ids"] == list(range(r["n"])), case
        assert r["batch_sizes"] == r["expected_batch_sizes"], case
        assert r["max_map_diff"] < 1e-5 and r["max_score_diff"] < 1e-4 and r["targets_equal"], case
        for report in (chief, other):  # each worker explained its half of every batch, never 0 rows
            rows = [c[1] for c in report[case]["calls"]]
            assert rows == [-(-b // 2) for b in r["expected_batch_sizes"]], (case, rows)
        # The streamed results (no out=) reach every worker, in order.
        for report in (chief, other):
            assert report[case]["streamed_max_map_diff"] < 1e-5, case


def _worker_report(out):
    """One worker of a two-worker MultiWorkerMirroredStrategy (TF_CONFIG set by the test)."""
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=120)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    keras.utils.set_random_seed(2)
    with strategy.scope():
        model = small_model()
    single = kc.GradCAM(_copy_outside(model))
    probe = _Probe(model)
    rng = np.random.default_rng(2)
    report = {"replicas": strategy.num_replicas_in_sync}
    for case, n in (("batched", 9), ("one_image", 1)):
        x = rng.random((n, SIZE, SIZE, 3), dtype=np.float32)
        y = rng.integers(0, CLASSES, n)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
        folder = os.path.join(out, case)
        _Probe.calls.clear()
        explain_dataset(probe, ds, strategy=strategy, out=folder, verbose=0)
        report[case] = {"calls": list(_Probe.calls)}
        if strategy.extended.should_checkpoint:  # the chief holds the gathered maps
            report[case].update(_shards(folder, single, x, y, n, 4))
        streamed = list(explain_dataset(probe, ds, strategy=strategy, verbose=0))  # no out=: every worker
        maps = np.concatenate([r.maps for r in streamed])
        report[case]["streamed_max_map_diff"] = (
            float(np.abs(maps - single(x, targets=y)).max()) if maps.shape == (n, SIZE, SIZE) else 1e9)
    report["written"] = os.path.isdir(out) and bool(os.listdir(out))
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _worker_report(sys.argv[2])
    else:
        _two_replica_report()
