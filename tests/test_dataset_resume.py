"""explain_dataset(out=...) resumes only what is still right: weights, settings, labels, torn index lines, one writer.

Expected maps come from the explainer itself (``cam.explain`` on the whole
array), which shares no code with the writer. The second writer is a real
process (this file run as a script) that holds the folder while it waits.
Every backend runs these: the source is a ``tf.data.Dataset`` on TensorFlow
(tf.data's path) and a list of examples or a generator elsewhere.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import keras_cam as kc
from keras_cam import backend, files
from keras_cam._compat import keras
from keras_cam.dataset import INDEX, LOCK, explain_dataset, read_index, weights_fingerprint

N, SIZE, CLASSES, BATCH = 9, 8, 3, 4


def small_model(seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES, activation="softmax", name="head"),
    ], name="small")  # the index records the model's name: the same in every process


def data():
    x = np.random.default_rng(5).random((N, SIZE, SIZE, 3), dtype=np.float32)
    y = np.arange(N) % CLASSES
    return x, y


def dataset(x, y):
    """The examples as tf.data's path reads them on TensorFlow, as a list of examples elsewhere."""
    if backend.is_tensorflow():
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices((x, y))
    return [(x[i], y[i]) for i in range(len(x))]


def maps_in(out):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact index reads without a warning
        _, shards = read_index(out)
    return np.concatenate([np.load(os.path.join(out, s["files"][0])) for s in shards])


def snapshot(out):
    return {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))}


@pytest.fixture(scope="module")
def setup():
    x, y = data()
    return kc.GradCAM(small_model()), x, y


# --- the weights' fingerprint ------------------------------------------------------------------


def test_fingerprint_is_the_weights_bytes():
    """Equal for equal numbers under other variable names; changed by one ulp of one weight."""
    model = small_model(1)
    twin = small_model(2)  # other initial numbers, other auto-generated names
    assert weights_fingerprint(model) != weights_fingerprint(twin)
    twin.set_weights(model.get_weights())
    assert weights_fingerprint(twin) == weights_fingerprint(model)
    # A second code path: the same digest over get_weights().
    digest = hashlib.sha256()
    for w in model.get_weights():
        w = np.ascontiguousarray(w)
        digest.update(f"{w.dtype.str}{list(w.shape)};".encode("ascii"))
        digest.update(w.tobytes())
    assert weights_fingerprint(model) == "sha256:" + digest.hexdigest()
    for i, w in enumerate(model.get_weights()):  # every variable counts, the last bit of any number
        changed = [v.copy() for v in model.get_weights()]
        changed[i].flat[-1] = np.nextafter(changed[i].flat[-1], np.float32(np.inf))
        twin.set_weights(changed)
        assert weights_fingerprint(twin) != weights_fingerprint(model), i


def test_retrained_weights_are_refused_then_overwritten(setup, tmp_path):
    cam, x, y = setup
    out = str(tmp_path / "maps")
    trained = cam.model.get_weights()
    before_maps = cam.explain(x, targets=y).maps
    assert explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)["written"] == 3
    header, _ = read_index(out)
    assert header["weights"] == weights_fingerprint(cam.model)
    try:
        # "Retraining": new numbers in the same variables; the architecture and every setting stay.
        rng = np.random.default_rng(7)
        cam.model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in trained])
        now = cam.explain(x, targets=y).maps
        assert np.abs(now - before_maps).max() > 0.05
        before = snapshot(out)
        with pytest.raises(ValueError) as err:
            explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
        message = str(err.value)
        assert "weights" in message and "overwrite=True" in message and "new folder" in message, message
        assert snapshot(out) == before  # nothing touched, the lock released

        summary = explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, overwrite=True, verbose=0)
        assert (summary["written"], summary["skipped"]) == (3, 0)
        np.testing.assert_allclose(maps_in(out), now, atol=1e-5)
        again = explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
        assert (again["written"], again["skipped"]) == (0, 3)

        # overwrite=True on a shorter dataset: the old shard that is not written again goes.
        summary = explain_dataset(cam, dataset(x[:5], y[:5]), batch_size=BATCH, out=out, overwrite=True,
                                  targets=None, verbose=0)
        assert (summary["written"], summary["shards"]) == (2, 2)
        assert sorted(n for n in os.listdir(out) if n.endswith(".npy")) == ["maps_000000.npy", "maps_000001.npy"]
        np.testing.assert_allclose(maps_in(out), cam.explain(x[:5]).maps, atol=1e-5)
        with pytest.raises(TypeError, match="overwrite"):
            explain_dataset(cam, dataset(x, y), out=out, overwrite="yes", verbose=0)
    finally:
        cam.model.set_weights(trained)  # the module's other tests use this model


def test_an_index_without_weights_is_refused(setup, tmp_path):
    """An index written before the fingerprint existed (version 1) is never trusted silently."""
    cam, x, y = setup
    out = tmp_path / "old"
    explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    header, shards = read_index(out)
    old = {k: v for k, v in header.items() if k != "weights"}
    old["version"] = 1
    (out / INDEX).write_text("".join(json.dumps(r) + "\n" for r in [old] + shards))
    assert len(read_index(out)[1]) == 3  # still readable
    with pytest.raises(ValueError, match=r"older keras-cam.*overwrite=True"):
        explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    assert explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, overwrite=True, verbose=0)["written"] == 3


# --- the explainer's settings and the labels -------------------------------------------------------


def two_output_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    g = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, [keras.layers.Dense(CLASSES, activation="softmax", name="h1")(g),
                             keras.layers.Dense(2, name="h2")(g)], name="two")


# (name of the setting in the refusal, explainer the folder was written with, explainer of the rerun)
CHANGED = {
    "linearize": lambda m: (kc.GradCAM(m), kc.GradCAM(m, linearize=False)),
    "aug_smooth": lambda m: (kc.GradCAM(m), kc.GradCAM(m, aug_smooth=True)),
    "eigen_smooth": lambda m: (kc.GradCAM(m), kc.GradCAM(m, eigen_smooth=True)),
    "counterfactual": lambda m: (kc.GradCAM(m), kc.GradCAM(m, counterfactual=True)),
    "max_channels": lambda m: (kc.ScoreCAM(m), kc.ScoreCAM(m, max_channels=2)),
    "seed": lambda m: (kc.SmoothGradCAMPlusPlus(m, samples=2, seed=0), kc.SmoothGradCAMPlusPlus(m, samples=2, seed=1)),
    "output": lambda m: (kc.GradCAM(two_output_model(), output=0), kc.GradCAM(two_output_model(), output=1)),
}


@pytest.mark.parametrize("setting", sorted(CHANGED))
def test_a_changed_setting_is_refused_then_overwritten(setup, tmp_path, setting):
    """Every explainer option that changes the maps is in the index: a rerun with another value is
    refused (naming the option, its old and new value), and overwrite=True writes the new maps."""
    _, x, y = setup
    first, second = CHANGED[setting](small_model())
    labels = y % 2  # classes of both outputs of the two-output model
    out = str(tmp_path / "maps")
    assert explain_dataset(first, dataset(x, labels), batch_size=BATCH, out=out, verbose=0)["written"] == 3
    header, _ = read_index(out)
    assert setting in header["settings"] and "batch_size" not in header["settings"]
    before = snapshot(out)
    with pytest.raises(ValueError) as err:
        explain_dataset(second, dataset(x, labels), batch_size=BATCH, out=out, verbose=0)
    message = str(err.value)
    old, new = header["settings"][setting], read_index(out)[0]["settings"][setting]
    assert f"{setting}: " in message and "there" in message and "now" in message, message
    assert "overwrite=True" in message and "new folder" in message, message
    assert snapshot(out) == before and old == new  # nothing touched
    summary = explain_dataset(second, dataset(x, labels), batch_size=BATCH, out=out, overwrite=True, verbose=0)
    assert (summary["written"], summary["skipped"]) == (3, 0)
    np.testing.assert_allclose(maps_in(out), second.explain(x, targets=labels).maps, atol=1e-5)
    assert read_index(out)[0]["settings"][setting] != old


@pytest.mark.parametrize("change", ["batch_size", "verbose", "same_options_new_explainer"])
def test_options_that_do_not_change_the_maps_resume(setup, tmp_path, change):
    cam, x, y = setup
    out = str(tmp_path / "maps")
    explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    other = {"batch_size": kc.GradCAM(cam.model, batch_size=2), "verbose": kc.ScoreCAM(cam.model, verbose=1),
             "same_options_new_explainer": kc.GradCAM(cam.model, linearize=True)}[change]
    if change == "verbose":  # a ScoreCAM folder, rerun with another progress bar
        out = str(tmp_path / "score")
        explain_dataset(kc.ScoreCAM(cam.model), dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    summary = explain_dataset(other, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    assert (summary["written"], summary["skipped"]) == (0, 3)
    np.testing.assert_allclose(maps_in(out), other.explain(x, targets=y).maps, atol=1e-5)


@pytest.mark.parametrize("relabelled", [[5], [0, 8], list(range(N))])
def test_changed_labels_recompute_their_shards(setup, tmp_path, relabelled):
    """New labels for the same images: the shards holding a changed label are computed again (the
    others kept), and the folder holds the maps of the new labels."""
    cam, x, y = setup
    out = str(tmp_path / "maps")
    explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    stamps = {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in os.listdir(out) if name.endswith(".npy")}
    y2 = y.copy()
    y2[relabelled] = (y2[relabelled] + 1) % CLASSES
    shards = sorted({i // BATCH for i in relabelled})
    summary = explain_dataset(cam, dataset(x, y2), batch_size=BATCH, out=out, verbose=0)
    assert (summary["written"], summary["skipped"]) == (len(shards), 3 - len(shards))
    ref = cam.explain(x, targets=y2)
    np.testing.assert_allclose(maps_in(out), ref.maps, atol=1e-5)
    assert sum((s["targets"] for s in read_index(out)[1]), []) == y2.tolist()
    assert np.abs(ref.maps - cam.explain(x, targets=y).maps)[relabelled].max() > 1e-3  # the labels mattered
    kept = {f"maps_{b:06d}.npy" for b in range(3)} - {f"maps_{b:06d}.npy" for b in shards}
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in kept} == {n: stamps[n] for n in kept}
    again = explain_dataset(cam, dataset(x, y2), batch_size=BATCH, out=out, verbose=0)
    assert (again["written"], again["skipped"]) == (0, 3)


@pytest.mark.parametrize("version", [2, None])
def test_an_index_without_the_settings_is_refused(setup, tmp_path, version):
    """A version-2 index (before the explainer's settings were recorded) is refused with a message
    that says so, never resumed; overwrite=True rewrites it."""
    cam, x, y = setup
    out = tmp_path / "old"
    explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    header, shards = read_index(out)
    old = {k: v for k, v in header.items() if k != "settings"}
    if version is None:
        old.pop("version")  # the first format had no version field
    else:
        old["version"] = version
    (out / INDEX).write_text("".join(files_line(r) for r in [old] + shards))
    with pytest.raises(ValueError, match=r"index version .*older keras-cam.*every setting.*overwrite=True"):
        explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    assert explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, overwrite=True, verbose=0)["written"] == 3
    np.testing.assert_allclose(maps_in(out), cam.explain(x, targets=y).maps, atol=1e-5)


def files_line(record):
    """An index line as a version-2 writer made it (checked), or a version-1 one (plain JSON)."""
    from keras_cam.dataset import _index_line

    return _index_line(record) if "version" in record else json.dumps(record) + "\n"


# --- torn index lines -----------------------------------------------------------------------


def test_a_torn_last_record_at_every_byte(setup, tmp_path):
    """The index cut at every byte of its last record: the record is left out (with a warning)
    until the line is whole; a rerun recomputes that shard and the index is whole again."""
    cam, x, y = setup
    ref = cam.explain(x, targets=y).maps
    out = str(tmp_path / "maps")
    explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    index = os.path.join(out, INDEX)
    full = open(index, "rb").read()
    start = full.rstrip(b"\n").rfind(b"\n") + 1  # the last record: full[start:]
    assert full.endswith(b"\n") and len(full) - start > 200
    reruns = set(range(start, len(full), 9)) | {start, start + 1, len(full) - 3, len(full) - 2, len(full) - 1}
    for cut in range(start, len(full)):
        with open(index, "wb") as f:
            f.write(full[:cut])
        whole = cut == len(full) - 1  # only the newline is missing
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, shards = read_index(out)
        torn = [w for w in caught if "torn or damaged" in str(w.message)]
        assert len(torn) == (0 if whole or cut == start else 1), cut
        assert [s["shard"] for s in shards] == ([0, 1, 2] if whole else [0, 1]), cut
        if cut in reruns:
            summary = explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
            assert (summary["written"], summary["skipped"]) == ((0, 3) if whole else (1, 2)), cut
            text = open(index, "rb").read()
            assert text.endswith(b"\n") and text.count(b"\n") == 4, cut
            np.testing.assert_allclose(maps_in(out), ref, atol=1e-5)


def test_a_damaged_middle_record_is_recomputed(setup, tmp_path):
    """A record whose bytes changed (still valid JSON) fails its check: its shard is redone."""
    cam, x, y = setup
    out = str(tmp_path / "maps")
    explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    index = os.path.join(out, INDEX)
    lines = open(index, encoding="utf-8").read().split("\n")
    record = json.loads(lines[2])
    assert record["shard"] == 1
    lines[2] = lines[2].replace('"ids": [4, 5', '"ids": [5, 4', 1)  # swapped ids: maps of other images
    assert json.loads(lines[2])["ids"][:2] == [5, 4]
    open(index, "w", encoding="utf-8").write("\n".join(lines))
    with pytest.warns(RuntimeWarning, match="1 torn or damaged"):
        assert [s["shard"] for s in read_index(out)[1]] == [0, 2]
    summary = explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    assert (summary["written"], summary["skipped"]) == (1, 2)
    np.testing.assert_allclose(maps_in(out), cam.explain(x, targets=y).maps, atol=1e-5)


# --- one writer per folder --------------------------------------------------------------------


def _holder(out, weights, gate):
    """A second writer (run as a script): explains into ``out`` and waits at its second batch for ``gate``."""
    model = small_model(1)
    model.set_weights([np.load(weights)[k] for k in sorted(np.load(weights), key=lambda k: int(k[1:]))])
    x, y = data()

    def batches():
        for start in range(0, N, BATCH):
            if start:
                while not os.path.exists(gate):
                    time.sleep(0.05)
            yield x[start:start + BATCH], y[start:start + BATCH]

    ds = batches()
    if backend.is_tensorflow():
        import tensorflow as tf

        spec = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32), tf.TensorSpec((None,), tf.int64))
        ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    print(json.dumps(explain_dataset(kc.GradCAM(model), ds, out=out, verbose=0)), flush=True)


def _wait_for(condition, proc, what, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the second writer ended before {what}: {proc.communicate()[1][-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_second_process_is_refused_and_its_stale_lock_taken_over(setup, tmp_path):
    cam, x, y = setup
    out, gate, weights = str(tmp_path / "maps"), str(tmp_path / "gate"), str(tmp_path / "w.npz")
    np.savez(weights, **{f"w{i}": w for i, w in enumerate(cam.model.get_weights())})
    lock = os.path.join(out, LOCK)
    proc = subprocess.Popen([sys.executable, __file__, "holder", out, weights, gate],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        # The holder has written its first shard and waits, holding the folder.
        _wait_for(lambda: os.path.exists(lock) and os.path.exists(os.path.join(out, "maps_000000.npy")),
                  proc, "its first shard")
        _wait_for(lambda: open(os.path.join(out, INDEX)).read().count("\n") == 2, proc, "its first record")
        assert json.loads(open(lock).read())["pid"] == proc.pid
        before = snapshot(out)
        with pytest.raises(ValueError) as err:
            explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
        message = str(err.value)
        assert f"pid {proc.pid}" in message and "another process" in message and LOCK in message, message
        assert snapshot(out) == before  # the refused writer touched nothing

        proc.send_signal(signal.SIGKILL)  # the holder dies without releasing its lock
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert os.path.exists(lock) and json.loads(open(lock).read())["pid"] == proc.pid
    summary = explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    assert (summary["written"], summary["skipped"]) == (2, 1)  # the holder's shard is kept
    assert not os.path.exists(lock)
    np.testing.assert_allclose(maps_in(out), cam.explain(x, targets=y).maps, atol=1e-5)


def test_threads_writing_one_folder_with_other_settings_leave_one_writers_maps(setup, tmp_path):
    """Two threads write the same folder at once, with explainers whose settings differ (overwrite=True,
    so either may replace the other's maps). Whatever the interleaving, each call either writes or is
    refused by the lock ("this process"), and the folder holds exactly the maps of the settings its index
    records, as the explainer computes them alone; the lock is released and the explainers unchanged."""
    import threading

    _, x, y = setup
    model = small_model()
    cams = {True: kc.GradCAM(model), False: kc.GradCAM(model, linearize=False)}
    expected = {k: cam.explain(x, targets=y).maps for k, cam in cams.items()}
    assert np.abs(expected[True] - expected[False]).max() > 1e-3  # the two settings give other maps
    for round_ in range(4):
        out = str(tmp_path / f"maps{round_}")
        barrier, outcome = threading.Barrier(2), {}

        def write(linearize):
            barrier.wait()
            try:
                outcome[linearize] = explain_dataset(cams[linearize], dataset(x, y), batch_size=BATCH, out=out,
                                                     overwrite=True, verbose=0)["written"]
            except ValueError as err:
                outcome[linearize] = str(err)

        threads = [threading.Thread(target=write, args=(k,)) for k in (True, False)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert set(outcome) == {True, False}, outcome
        for k, got in outcome.items():
            assert got == 3 or ("this process" in got and LOCK in got), (k, got)
        assert 3 in outcome.values(), outcome
        recorded = read_index(out)[0]["settings"]["linearize"]
        np.testing.assert_allclose(maps_in(out), expected[recorded], atol=1e-5)
        assert not os.path.exists(os.path.join(out, LOCK))
    for k, cam in cams.items():
        np.testing.assert_allclose(cam.explain(x, targets=y).maps, expected[k], atol=1e-6)


def test_a_lock_created_a_moment_ago_is_read_once_it_names_its_holder(setup, tmp_path):
    """The race two threads of one process run into: one has created the lock file and not yet written
    its holder. The other waits for the name and reports the holder as it is ("this process", its pid),
    not as an unknown process, and leaves the holder's lock as it was."""
    import threading

    cam, x, y = setup
    out = tmp_path / "maps"
    out.mkdir()
    lock = out / LOCK
    template = files.LockFile(tmp_path / "template.lock", "`template`")  # a holder record of this process
    text = template.text
    template.release()
    lock.write_text("")
    writer = threading.Timer(0.3, lambda: lock.write_text(text))
    writer.start()
    try:
        with pytest.raises(ValueError, match=rf"this process \(pid {os.getpid()}"):
            files.LockFile(lock, f"`out={str(out)!r}`")  # what explain_dataset takes first
    finally:
        writer.join()
    assert lock.read_text() == text
    assert sorted(os.listdir(out)) == [LOCK]  # nothing written beside it
    with pytest.raises(ValueError, match=rf"this process \(pid {os.getpid()}"):
        explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    assert lock.read_text() == text


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_locks_alive_stale_and_foreign(setup, tmp_path):
    cam, x, y = setup
    out = tmp_path / "maps"
    out.mkdir()
    lock = out / LOCK
    me = files.LockFile(lock, "`out`")  # this very process holds it (another thread, an unfinished call)
    with pytest.raises(ValueError, match=rf"this process \(pid {os.getpid()}"):
        explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    me.release()
    assert not lock.exists()

    host = json.loads(json.dumps(me.record))["host"]
    stale = [
        {"pid": _dead_pid(), "host": host},                                   # a process that ended
        {"pid": os.getpid(), "host": host, "started": me.record["started"] + 1},  # a reused pid
    ]
    for record in stale:
        lock.write_text(json.dumps(record))
        assert explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)["images"] == N
        assert not lock.exists(), record

    lock.write_text("")  # a lock being written this instant counts as held (after a second's wait) ...
    with pytest.raises(ValueError, match="another writer: its lock .* does not name its holder yet"):
        explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    old = time.time() - 60
    os.utime(lock, (old, old))  # ... an empty one a minute old is a crash's leftover
    explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    assert not lock.exists()

    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "since": "2026-01-01 00:00:00"}))
    with pytest.raises(ValueError, match="pid 1 on host elsewhere.example.*delete"):
        explain_dataset(cam, dataset(x, y), batch_size=BATCH, out=out, verbose=0)
    lock.unlink()

    # A run that fails half-way releases the folder.
    bad = x.copy()
    bad[6] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        explain_dataset(cam, dataset(bad, y), batch_size=BATCH, out=tmp_path / "bad", verbose=0)
    assert not (tmp_path / "bad" / LOCK).exists()


if __name__ == "__main__":
    if sys.argv[1] == "holder":
        _holder(*sys.argv[2:5])
