"""explain_dataset on every backend: generators, lists, PyDataset, DataLoader, tf.data read as numpy.

These run in every test mode (TensorFlow, legacy tf-keras, JAX, PyTorch).
Every expected value comes from the explainer called on the same arrays
(``cam.explain``), a code path that shares nothing with the dataset reader,
the batching, the label handling or the shard writer. The two-device JAX
test runs this file as a script in a fresh interpreter, because XLA's host
device count is fixed when JAX starts.
"""

import gc
import json
import os
import subprocess
import sys
import tempfile
import weakref

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend
from keras_cam._compat import LEGACY, keras
from keras_cam.dataset import explain_dataset, fingerprints, read_index

N, SIZE, CLASSES = 11, 12, 3
BACKEND = backend.name()


def small_model(seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(5, 3, activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ])


@pytest.fixture(scope="module")
def setup():
    model = small_model()
    rng = np.random.default_rng(3)
    x = rng.random((N, SIZE, SIZE, 3), dtype=np.float32)
    y = (np.arange(N) * 2 + 1) % CLASSES
    return kc.GradCAM(model), x, y


def collect(results):
    results = list(results)
    cat = lambda k: None if getattr(results[0], k) is None else np.concatenate([getattr(r, k) for r in results])  # noqa: E731
    return [len(r.maps) for r in results], cat("maps"), cat("targets"), cat("scores"), cat("probabilities")


def assert_same(got, ref, targets=True):
    _, maps, used, scores, probs = got
    np.testing.assert_allclose(maps, ref.maps, atol=1e-5)
    np.testing.assert_allclose(scores, ref.scores, rtol=1e-5, atol=1e-6)
    if targets:
        np.testing.assert_array_equal(used, ref.targets)
        np.testing.assert_allclose(probs, ref.probabilities, atol=1e-6)


def batches_of(x, y=None, size=4, as_list=False):
    for i in range(0, len(x), size):
        if y is None:
            yield x[i:i + size]
        else:
            yield [x[i:i + size], y[i:i + size]] if as_list else (x[i:i + size], y[i:i + size])


def test_generator_with_labels_and_a_partial_last_batch(setup):
    cam, x, y = setup
    got = collect(explain_dataset(cam, batches_of(x, y), verbose=0))
    assert got[0] == [4, 4, 3]
    assert_same(got, cam.explain(x, targets=y))


def test_list_of_single_images_is_batched_and_top1(setup):
    cam, x, _ = setup
    got = collect(explain_dataset(cam, list(x), batch_size=5, verbose=0))
    assert got[0] == [5, 5, 1]
    assert_same(got, cam.explain(x))


def test_single_examples_with_scalar_labels(setup):
    cam, x, y = setup
    got = collect(explain_dataset(cam, ((x[i], int(y[i])) for i in range(N)), batch_size=4, verbose=0))
    assert got[0] == [4, 4, 3]
    assert_same(got, cam.explain(x, targets=y))


@pytest.mark.parametrize("form", ["one_hot", "column", "float", "list"])
def test_label_forms(setup, form):
    cam, x, y = setup
    labels = {"one_hot": np.eye(CLASSES, dtype=np.float32)[y], "column": y[:, None],
              "float": y.astype(np.float32), "list": y}[form]
    got = collect(explain_dataset(cam, batches_of(x, labels, 5, as_list=form == "list"), verbose=0))
    assert_same(got, cam.explain(x, targets=y))


def test_explicit_targets_override_labels(setup):
    cam, x, y = setup
    weights = np.ones(N, np.float32)
    source = [(x[i:i + 4], y[i:i + 4], weights[i:i + 4]) for i in range(0, N, 4)]  # with sample weights
    assert_same(collect(explain_dataset(cam, source, targets=None, verbose=0)), cam.explain(x))
    assert_same(collect(explain_dataset(cam, source, targets=2, verbose=0)), cam.explain(x, targets=2))

    def score(out):
        return out[:, 1] - out[:, 0]

    got = collect(explain_dataset(cam, source, targets=score, verbose=0))
    assert got[2] is None and got[4] is None
    assert_same(got, cam.explain(x, targets=score), targets=False)


def test_raw_maps_and_empty_batches(setup):
    cam, x, y = setup
    source = [(x[:4], y[:4]), (x[:0], y[:0]), (x[4:], y[4:])]  # a batch of 0 images is left out
    sizes, maps, *_ = got = collect(explain_dataset(cam, source, upsample=False, normalize=False, verbose=0))
    assert sizes == [4, 7] and maps.shape == (N, SIZE - 2, SIZE - 2)
    assert_same(got, cam.explain(x, targets=y, upsample=False, normalize=False))


def test_py_dataset(setup):
    cam, x, y = setup
    base = getattr(keras.utils, "PyDataset", None) or keras.utils.Sequence

    class Batches(base):
        def __init__(self):
            super().__init__()
            self.reads = []

        def __len__(self):
            return 3

        def __getitem__(self, i):  # never raises IndexError: read by index, not by iteration
            self.reads.append(i)
            return x[4 * i:4 * i + 4], np.eye(CLASSES, dtype=np.float32)[y[4 * i:4 * i + 4]]

    data = Batches()
    got = collect(explain_dataset(cam, data, verbose=0))
    assert got[0] == [4, 4, 3] and data.reads == [0, 1, 2]
    assert_same(got, cam.explain(x, targets=y))


def test_torch_data_loader(setup):
    torch = pytest.importorskip("torch")
    cam, x, y = setup
    pairs = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))
    loader = torch.utils.data.DataLoader(pairs, batch_size=4, shuffle=False)
    got = collect(explain_dataset(cam, loader, verbose=0))
    assert got[0] == [4, 4, 3]
    assert_same(got, cam.explain(x, targets=y))


def test_tf_data_on_any_backend(setup):
    """A tf.data.Dataset: tf.data's own path on TensorFlow, read as numpy on JAX and PyTorch."""
    tf = pytest.importorskip("tensorflow")
    cam, x, y = setup
    got = collect(explain_dataset(cam, tf.data.Dataset.from_tensor_slices((x, y)), batch_size=4, verbose=0))
    assert got[0] == [4, 4, 3]
    assert_same(got, cam.explain(x, targets=y))


def test_traced_once_per_batch_shape_and_no_leak(setup):
    cam, x, y = setup
    traces = []

    class Counting(kc.GradCAM):
        def raw_maps(self, images, class_idx, target_fn=None):
            traces.append(int(images.shape[0]))  # while tracing (every call on PyTorch, which runs eagerly)
            return super().raw_maps(images, class_idx, target_fn)

    counting = Counting(cam.model)
    for _ in range(3):
        got = collect(explain_dataset(counting, batches_of(x, y), verbose=0))
    assert_same(got, cam.explain(x, targets=y))
    expected = [4, 4, 3] * 3 if BACKEND == "torch" else [4, 3]  # the full batches and the last one; then reused
    assert traces == expected
    ref = weakref.ref(counting)
    del counting
    gc.collect()
    assert ref() is None  # the cached compiled step does not keep the explainer alive


def test_progress_bar(setup, capsys):
    cam, x, _ = setup
    list(explain_dataset(cam, list(batches_of(x)), verbose=1))
    assert "3/3" in capsys.readouterr().out


def test_bad_inputs(setup):
    cam, x, y = setup
    with pytest.raises(TypeError, match="iterable of batches.*ndarray.*call the explainer"):
        explain_dataset(cam, x)
    for bad in (None, "images/", {"image": x}, 3):
        with pytest.raises(TypeError, match="iterable of batches"):
            explain_dataset(cam, bad)
    with pytest.raises(TypeError, match="structure"):
        explain_dataset(cam, [{"image": x}])
    with pytest.raises(TypeError, match="structure"):
        explain_dataset(cam, [(x, y, y, y)])
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        explain_dataset(cam, [x[0, :, :, 0]])
    with pytest.raises(ValueError, match="channels"):
        explain_dataset(cam, [x[..., :2]])
    with pytest.raises(TypeError, match="labels of element 0 are not numbers"):
        explain_dataset(cam, [(x, np.array(["cat"] * N))])
    with pytest.raises(ValueError, match="Labels must be class indices"):
        explain_dataset(cam, [(x, np.zeros((N, 2, 2)))])
    with pytest.raises(TypeError, match="list of classes"):
        explain_dataset(cam, [x], targets=[0, 1])
    with pytest.raises(ValueError, match="out of range"):
        explain_dataset(cam, [x], targets=CLASSES)
    with pytest.raises(ValueError, match="empty"):
        explain_dataset(cam, iter([]))
    with pytest.raises(ValueError, match="empty"):
        explain_dataset(cam, [x[:0]])
    bad = np.where(np.arange(N) == 6, CLASSES, y)
    with pytest.raises(ValueError, match=r"Batch 1 .*classes of the model \(0\.\.2\)"):
        list(explain_dataset(cam, batches_of(x, bad), verbose=0))
    with pytest.raises(ValueError, match=r"Batch 0 .*whole numbers"):
        list(explain_dataset(cam, [(x, y + 0.5)], verbose=0))
    with pytest.raises(ValueError, match=r"Batch 1 .*3 images but 2 labels"):
        list(explain_dataset(cam, [(x[:4], y[:4]), (x[4:7], y[4:6])], verbose=0))
    nan = x.copy()
    nan[9, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="Batch 2 .*NaN"):
        list(explain_dataset(cam, batches_of(nan), verbose=0))


def test_multi_device_options_name_their_backend(setup):
    cam, x, _ = setup
    if BACKEND == "tensorflow":
        with pytest.raises(TypeError, match="tf.distribute.Strategy"):
            explain_dataset(cam, [x], strategy="mirrored")
    else:
        with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
            explain_dataset(cam, [x], strategy=object())
    if BACKEND == "jax":
        with pytest.raises(TypeError, match="DataParallel"):
            explain_dataset(cam, [x], distribution="data_parallel")
    else:
        with pytest.raises(RuntimeError, match="KERAS_BACKEND=jax"):
            explain_dataset(cam, [x], distribution=object())


def test_resume_from_any_source(setup, tmp_path):
    cam, x, y = setup
    ref = cam.explain(x, targets=y)
    out = tmp_path / "maps"
    first = explain_dataset(cam, batches_of(x[:8], y[:8]), out=out, verbose=0)   # interrupted after 2 batches
    assert (first["written"], first["skipped"], first["replicas"]) == (2, 0, 1)
    stamps = {p: os.stat(out / p).st_mtime_ns for p in ("maps_000000.npy", "maps_000001.npy")}
    # The same images from another kind of source: the fingerprints are the images', not the source's.
    summary = explain_dataset(cam, [(x[i], y[i]) for i in range(N)], batch_size=4, out=out, verbose=0)
    assert (summary["images"], summary["shards"], summary["written"], summary["skipped"]) == (N, 3, 1, 2)
    assert {p: os.stat(out / p).st_mtime_ns for p in stamps} == stamps  # not rewritten

    header, shards = read_index(out)
    assert header["targets"] == "labels" and header["method"] == "GradCAM"
    assert [s["ids"] for s in shards] == [list(range(0, 4)), list(range(4, 8)), list(range(8, 11))]
    assert [s["inputs"] for s in shards][2] == [format(int(m) & (2**64 - 1), "016x") for m in fingerprints(x[8:])]
    np.testing.assert_allclose(np.concatenate([np.load(out / s["files"][0]) for s in shards]), ref.maps, atol=1e-5)
    assert sum((s["targets"] for s in shards), []) == y.tolist()

    x2 = x.copy()
    x2[5] = 1.0 - x2[5]  # another image at the same position: only its shard is redone
    summary = explain_dataset(cam, batches_of(x2, y), out=out, verbose=0)
    assert (summary["written"], summary["skipped"]) == (1, 2)
    _, shards = read_index(out)
    np.testing.assert_allclose(np.load(out / shards[1]["files"][0]), cam(x2[4:8], targets=y[4:8]), atol=1e-5)
    with pytest.raises(ValueError, match="other settings.*targets"):
        explain_dataset(cam, batches_of(x, y), out=out, targets=None, verbose=0)


def test_fingerprints_tell_images_apart():
    rng = np.random.default_rng(0)
    x = rng.random((6, 4, 4, 3), dtype=np.float32)
    marks = fingerprints(x)
    assert marks.dtype == np.int64 and len(set(marks.tolist())) == 6
    np.testing.assert_array_equal(fingerprints(x.astype(np.float64)), marks)   # of the float32 values
    y = x.copy()
    y[2, 3, 3, 2] = np.nextafter(y[2, 3, 3, 2], 2)                              # one ulp of one value
    assert (fingerprints(y) != marks).tolist() == [False, False, True, False, False, False]


# --- two JAX devices with keras.distribution.DataParallel --------------------------------------


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution splits batches on JAX; the JAX test mode runs it")
def test_two_devices_match_one_device():
    """DataParallel over two host devices: each batch split in two (the odd ones padded),
    the same maps as one device, every image once, in order."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run([sys.executable, __file__, "data_parallel"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 2
    for case in ("global", "argument"):
        r = report[case]
        assert r["replicas"] == 2, case
        assert r["ids"] == list(range(N)), case                       # each image once, in order
        assert r["sizes"] == [4, 4, 3] and r["streamed_sizes"] == [4, 4, 3], case
        assert r["max_map_diff"] < 1e-5 and r["max_score_diff"] < 1e-5, case
        assert r["streamed_max_map_diff"] < 1e-5 and r["targets_equal"], case
    # The batches were placed on both devices, half the rows on each (the odd batch padded to 4).
    assert report["placed"] == [[2, 2], [2, 2], [2, 2]], report["placed"]


def _data_parallel_report():
    import jax

    from keras_cam import dataset as module

    devices = jax.devices()
    dp = keras.distribution.DataParallel(devices=devices)
    with dp.scope():
        model = small_model(seed=4)
    single = small_model(seed=5)
    single.set_weights(model.get_weights())
    ref_cam = kc.GradCAM(single)
    rng = np.random.default_rng(4)
    x = rng.random((N, SIZE, SIZE, 3), dtype=np.float32)
    y = rng.integers(0, CLASSES, N)
    ref = ref_cam.explain(x, targets=y)  # one device, no distribution set

    placed = []
    original = module._HostJob._place

    def recording(self, images, classes):  # where each batch's rows went
        tensors = original(self, images, classes)
        if self.distribution is not None:
            placed.append(sorted(int(s.data.shape[0]) for s in tensors[0].addressable_shards))
        return tensors

    module._HostJob._place = recording
    report = {"devices": len(devices)}
    cam = kc.GradCAM(model)
    for case in ("global", "argument"):
        with tempfile.TemporaryDirectory() as out:
            if case == "global":
                keras.distribution.set_distribution(dp)
                summary = explain_dataset(cam, batches_of(x, y), out=out, verbose=0)
                streamed = list(explain_dataset(cam, batches_of(x, y), verbose=0))
                keras.distribution.set_distribution(None)
            else:
                summary = explain_dataset(cam, batches_of(x, y), distribution=dp, out=out, verbose=0)
                streamed = list(explain_dataset(cam, batches_of(x, y), distribution=dp, verbose=0))
            _, shards = read_index(out)
            maps = np.concatenate([np.load(os.path.join(out, s["files"][0])) for s in shards])
            report[case] = {
                "replicas": summary["replicas"], "ids": sum((s["ids"] for s in shards), []),
                "sizes": [s["shape"][0] for s in shards], "streamed_sizes": [len(r.maps) for r in streamed],
                "max_map_diff": float(np.abs(maps - ref.maps).max()),
                "max_score_diff": float(np.abs(np.array(sum((s["scores"] for s in shards), [])) - ref.scores).max()),
                "streamed_max_map_diff": float(np.abs(np.concatenate([r.maps for r in streamed]) - ref.maps).max()),
                "targets_equal": sum((s["targets"] for s in shards), []) == y.tolist(),
            }
    report["placed"] = placed[:3]
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "data_parallel":
        _data_parallel_report()
