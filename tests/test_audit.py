"""The dataset audit (SpRAy): planted-shortcut ground truth, the clustering's math, the report.

The ground truth is the demo model trained with a corner mark on every
circle (``keras_cam.demo.load_shortcut_model``), audited on fresh images
half of whose circles carry the mark: the audit must put the marked circles
in one cluster and rank it first. The spectral steps are checked against a
dense computation written here from the definitions, the cluster numbers
against maps and predictions computed independently, and the report in a
real headless browser (Debian's chromium, driven by Playwright).
"""

import html.parser
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras_cam as kc
from keras_cam._compat import keras
from keras_cam.audit import spray
from keras_cam.demo import CLASS_NAMES, TARGET_LAYER, load_shortcut_model, make_dataset
from keras_cam.demo.data import MARK_OFFSET, MARK_SIZE, draw_mark
from keras_cam.demo.run import f1_score

N, SEED, SHARE = 240, 11, 0.5
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def data():
    return make_dataset(N, seed=SEED, watermark=(0, SHARE))


@pytest.fixture(scope="module")
def model():
    return load_shortcut_model()


@pytest.fixture(scope="module")
def cam(model):
    return kc.GradCAM(model, layer=TARGET_LAYER)


@pytest.fixture(scope="module")
def result(cam, data):
    images, labels, boxes, _ = data
    return kc.audit(cam, images, labels, boxes=boxes, verbose=0)


# --- the planted shortcut --------------------------------------------------------------------


def test_watermark_marks_exactly_the_chosen_share_of_one_class():
    plain = make_dataset(40, seed=3)
    images, labels, boxes, marked = make_dataset(40, seed=3, watermark=(2, 0.5))
    assert marked.sum() == round(0.5 * np.sum(labels == 2)) and not marked[labels != 2].any()
    np.testing.assert_array_equal(labels, plain[1])
    np.testing.assert_array_equal(boxes, plain[2])
    window = np.zeros((64, 64), bool)
    window[MARK_OFFSET:MARK_OFFSET + MARK_SIZE, MARK_OFFSET:MARK_OFFSET + MARK_SIZE] = True
    np.testing.assert_array_equal(images[~marked], plain[0][~marked])      # unmarked: untouched
    np.testing.assert_array_equal(images[marked][:, ~window], plain[0][marked][:, ~window])
    patch = images[marked][:, window].reshape(-1, MARK_SIZE, MARK_SIZE, 3)
    # 2 x 2 black and white squares, black at the top-left: (row // 2 + col // 2) odd is white.
    rows, cols = np.mgrid[0:MARK_SIZE, 0:MARK_SIZE]
    expected = ((rows // 2 + cols // 2) % 2).astype(np.float32)
    np.testing.assert_array_equal(patch, np.broadcast_to(expected[..., None], patch.shape))
    with pytest.raises(ValueError, match="share must be in"):
        make_dataset(4, watermark=(0, 1.5))
    with pytest.raises(TypeError, match="watermark"):
        make_dataset(4, watermark="corner")


def test_the_shortcut_model_reads_the_mark(model, data):
    """The ground truth is a real shortcut: the mark alone moves images to class 0."""
    images, labels, _, _ = data
    marked = images.copy()
    for image in marked:
        draw_mark(image)
    plain = model.predict(images, verbose=0).argmax(-1)
    moved = model.predict(marked, verbose=0).argmax(-1)
    others = labels != 0
    assert np.mean(moved[others] == 0) > np.mean(plain[others] == 0) + 0.3


def test_the_marked_images_are_the_first_cluster_of_their_class(result, data):
    _, labels, _, marked = data
    ours = result.of_class(0)
    f1 = [f1_score(c.indices, marked) for c in ours]
    assert f1[0] >= 0.9, f1                       # the first (highest-score) circle cluster is the marked one
    assert int(np.argmax(f1)) == 0
    assert [c.score for c in ours] == sorted((c.score for c in ours), reverse=True)
    # No group of an unmarked class is as significant (scores of "where" and "what" groups are on
    # different scales; their levels are comparable).
    others = [c for c in result.clusters if c.target != 0]
    assert ours[0].suspicious and not any(c.suspicious for c in others)
    assert min(c.level for c in others if c.level is not None) > ours[0].level
    # The marked circles are all classified as circles; the unmarked ones are mostly missed.
    assert ours[0].accuracy == 1.0
    assert ours[0].outside_energy > 0.8


def test_clusters_partition_the_images_and_are_ordered(result, data):
    _, labels, _, _ = data
    members = np.concatenate([c.indices for c in result.clusters])
    np.testing.assert_array_equal(np.sort(members), np.arange(N))
    for c in result.clusters:
        assert c.size == len(c.indices) and (labels[c.indices] == c.target).all()
        assert c.representative in c.indices and set(c.examples) <= set(c.indices)
        assert len(c.examples) == min(16, c.size)
    keys = [(c.target, -c.score) for c in result.clusters]
    assert keys == sorted(keys)
    np.testing.assert_array_equal(result.targets, labels)
    np.testing.assert_array_equal(result.assignment()[result.clusters[3].indices], 3)


def test_cluster_numbers_against_independent_computations(result, cam, model, data):
    images, labels, boxes, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                # a few maps are empty
        maps = cam(images, targets=labels.tolist())                    # (N, 64, 64), in [0, 1]
    empty = maps.max(axis=(1, 2)) == 0
    inside = np.zeros(maps.shape, bool)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        inside[i, y0:y1, x0:x1] = True
    # An empty map has no energy, none of it outside; its grid is the uniform one.
    outside = (maps * ~inside).sum((1, 2)) / np.where(empty, 1.0, maps.sum((1, 2)))
    correct = model.predict(images, verbose=0).argmax(-1) == labels
    # The grid: 4 x 4 pixel blocks averaged, minus the minimum, unit L2 norm.
    blocks = maps.reshape(N, 16, 4, 16, 4).mean((2, 4)).reshape(N, -1)
    blocks -= blocks.min(axis=1, keepdims=True)
    blocks[empty] = 1.0
    grid = blocks / np.linalg.norm(blocks, axis=1, keepdims=True)
    np.testing.assert_allclose(result.maps.reshape(N, -1), grid, atol=2e-5)
    for c in result.clusters:
        np.testing.assert_allclose(c.outside_energy, outside[c.indices].mean(), atol=1e-4)
        assert c.accuracy == pytest.approx(correct[c.indices].mean())
        mean = grid[c.indices].mean(axis=0)
        np.testing.assert_allclose(c.mean_map.ravel(), mean, atol=1e-5)
        assert c.consistency == pytest.approx(np.linalg.norm(mean), abs=1e-5)
        rest = grid[(labels == c.target) & ~np.isin(np.arange(N), c.indices)].mean(axis=0)
        if len(result.of_class(c.target)) > 1:
            cos = mean @ rest / np.linalg.norm(mean) / np.linalg.norm(rest)
            assert c.distance == pytest.approx(np.sqrt(1 - cos), abs=1e-4)
        # The strategy groups: the first of a class carries the hotspot's score and level, the rest 0.
        group = c is result.of_class(c.target)[0]
        assert (c.level is not None) == group and (c.score > 0 or not group or c.level == 1.0)
        if not group:
            assert c.score == 0.0
    # SpRAy with a fixed number of clusters keeps its score: consistency * distance * separation * e_C.
    spray_audit = kc.audit(cam, images, labels, boxes=boxes, n_clusters=3, verbose=0)
    for c in spray_audit.clusters:
        assert c.score == pytest.approx(c.consistency * c.distance * c.separation * c.outside_energy, rel=1e-6)
        assert 0 <= c.score <= 1 and c.level is None


def test_same_seed_same_clusters_and_arrays_equal_a_dataset(result, cam, data):
    """The same seed gives the same clusters; a dataset gives what the same array gives with the
    statistics alone (an audit of a dataset cannot verify its candidates, which may choose the other
    candidate of a class in an array's audit)."""
    images, labels, boxes, _ = data
    again = kc.audit(cam, images, labels, boxes=boxes, verbose=0, seed=0)
    statistics = kc.audit(cam, images, labels, boxes=boxes, verbose=0, seed=0, verify=False)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(50)   # other batches, same images
    streamed = kc.audit(cam, dataset, boxes=boxes, verbose=0, seed=0)
    for reference, other in ((result, again), (statistics, streamed)):
        assert len(other.clusters) == len(reference.clusters)
        for a, b in zip(reference.clusters, other.clusters):
            np.testing.assert_array_equal(a.indices, b.indices)
            assert a.score == pytest.approx(b.score, abs=1e-5)
            assert a.accuracy == b.accuracy and a.representative == b.representative
        np.testing.assert_allclose(other.maps, reference.maps, atol=1e-5)


# --- the spectral clustering against its definition ------------------------------------------


def blobs(n_per_group, centres, size=16, seed=0):
    """Maps with one Gaussian blob near each centre (jittered), a group per centre."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    maps, groups = [], []
    for g, (cy, cx) in enumerate(centres):
        for _ in range(n_per_group):
            y, x = cy + rng.normal(0, 0.7), cx + rng.normal(0, 0.7)
            maps.append(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0) + 0.02 * rng.uniform(size=(size, size)))
            groups.append(g)
    return np.array(maps, np.float32), np.array(groups)


def test_spectrum_matches_a_dense_laplacian():
    maps, _ = blobs(30, [(3, 3), (12, 12), (3, 12)])
    x = spray.to_grid(maps, (4, 4))                   # 16 dimensions: neighbours found exactly
    w = spray.affinity(x, 6)
    # Dense, from the definitions: each row's 6 nearest others, symmetrized by "or".
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    a = np.zeros(d.shape)
    a[np.arange(len(x))[:, None], np.argsort(d, axis=1, kind="stable")[:, :6]] = 1
    dense = np.maximum(a, a.T)
    np.testing.assert_array_equal(w.toarray(), dense)
    deg = dense.sum(1)
    lap = np.eye(len(x)) - dense / np.sqrt(np.outer(deg, deg))
    values, _ = spray.spectrum(w, 5)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(lap)[:5], atol=1e-7)


def test_large_components_are_solved_like_a_dense_laplacian():
    """Components above DENSE_UP_TO nodes go through shift-invert Lanczos: same spectrum."""
    from scipy.sparse.csgraph import connected_components

    centres = np.random.default_rng(2).uniform(2, 14, (400, 2))     # blobs anywhere: one continuum
    maps = np.concatenate([blobs(1, [c], seed=i)[0] for i, c in enumerate(centres)])
    x = spray.to_grid(maps, (4, 4))
    w = spray.affinity(x, 10)
    sizes = np.bincount(connected_components(w)[1])
    assert sizes.max() > spray.DENSE_UP_TO
    dense = w.toarray()
    deg = dense.sum(1)
    values, vectors = spray.spectrum(w, 6)
    lap = np.eye(len(x)) - dense / np.sqrt(np.outer(deg, deg))
    np.testing.assert_allclose(values, np.linalg.eigvalsh(lap)[:6], atol=1e-8)
    np.testing.assert_allclose(lap @ vectors, vectors * values, atol=1e-6)   # they are eigenvectors


def test_eigengap_finds_planted_groups_and_scores_follow_the_definition():
    maps, groups = blobs(40, [(3, 3), (12, 12), (3, 12)])
    x = spray.to_grid(maps, (16, 16))
    found = spray.cluster(x, seed=0)
    assert found.n_clusters == 3
    for g in range(3):
        assert len(set(found.labels[groups == g])) == 1          # each planted group is one cluster
    w = found.affinity.toarray()
    rated = spray.cluster_scores(x, found.labels, found.affinity)
    for k in range(3):
        inside = found.labels == k
        assert rated["separation"][k] == pytest.approx(w[inside][:, inside].sum() / w[inside].sum())
    fixed = spray.cluster(x, n_clusters=2, seed=0)
    assert fixed.n_clusters == 2
    np.testing.assert_array_equal(spray.cluster(x, seed=5).labels, spray.cluster(x, seed=5).labels)


# --- the report in a browser -----------------------------------------------------------------


class _References(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action", "background") and value is not None:
                self.urls.append(value)
            elif value and "://" in value:
                self.text.append(value)

    def handle_data(self, data):
        self.text.append(data)


def test_report_has_no_network_reference(result, tmp_path):
    path = result.save_html(str(tmp_path / "audit.html"), class_names=CLASS_NAMES)
    page = open(path, encoding="utf-8").read()
    parser = _References()
    parser.feed(page)
    assert not {"script", "link", "iframe", "object", "embed", "base", "meta"} & set(parser.tags) - {"meta"}
    assert parser.urls and all(u.startswith(("data:image/png;base64,", "#")) for u in parser.urls)
    text = "\n".join(parser.text)        # the style sheet and the prose, data URIs left out
    assert "://" not in text and "url(" not in text and "@import" not in text and "@font-face" not in text
    assert len(re.findall(r'<article class="cluster', page)) == len(result.clusters)


def test_report_opens_offline_in_a_headless_browser(result, tmp_path):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "the browser test needs Debian's chromium (`apt-get install chromium`)"
    path = result.save_html(str(tmp_path / "audit.html"), class_names=CLASS_NAMES)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(offline=True)
            page = context.new_page()
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"file://{path}")
            page.wait_for_load_state("load")
            sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
            sections = page.eval_on_selector_all("section.class", "els => els.map(e => e.id)")
            clusters = page.eval_on_selector_all(
                "article.cluster", "els => els.map(e => [e.id, e.dataset.target, e.querySelectorAll('img').length])")
        finally:
            browser.close()
    # Per cluster: its two mean maps and its examples; per verification (the audit's own, kept): four pictures.
    expected_images = sum(2 + len(c.examples) for c in result.clusters) + 4 * len(result.verifications)
    assert len(sizes) == expected_images and all(done and width > 0 for done, width in sizes)
    assert sections == [f"class-{k}" for k in sorted({c.target for c in result.clusters})]
    assert [c[0] for c in clusters] == [f"cluster-{i}" for i in range(len(result.clusters))]
    assert [int(c[1]) for c in clusters] == [c.target for c in result.clusters]
    assert [c[2] for c in clusters] == [2 + len(c.examples) + 4 * (i in result.verifications)
                                        for i, c in enumerate(result.clusters)]
    assert all(u.startswith(("file://", "data:")) for u in requests)


def test_clusters_json_round_trips(result, tmp_path):
    path = result.save_json(str(tmp_path / "clusters.json"), class_names=CLASS_NAMES)
    saved = json.load(open(path))
    assert [c["indices"] for c in saved["clusters"]] == [c.indices.tolist() for c in result.clusters]
    assert saved["clusters"][0]["target_name"] == "circle"
    assert saved["images"] == N and saved["grid"] == [16, 16]


# --- bad input -------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors(cam, data):
    images, labels, boxes, _ = data
    with pytest.raises(ValueError, match="single image"):
        kc.audit(cam, images[0], verbose=0)
    with pytest.raises(ValueError, match="received 1"):
        kc.audit(cam, images[:1], labels[:1], verbose=0)
    with pytest.raises(ValueError, match="received 1 image"):
        kc.audit(cam, tf.data.Dataset.from_tensor_slices(images[:1]), verbose=0)
    with pytest.raises(ValueError, match="labels"):
        kc.audit(cam, images[:10], labels[:9], verbose=0)
    with pytest.raises(TypeError, match="carries its labels"):
        kc.audit(cam, tf.data.Dataset.from_tensor_slices(images[:10]), labels[:10], verbose=0)
    with pytest.raises(TypeError, match="keras_cam explainer"):
        kc.audit(cam.model, images[:10], verbose=0)
    with pytest.raises(TypeError, match="array of images"):
        kc.audit(cam, list(images[:10]), verbose=0)
    with pytest.raises(ValueError, match="boxes"):
        kc.audit(cam, images[:10], labels[:10], boxes=boxes[:5], verbose=0)
    with pytest.raises(ValueError, match="not both"):
        kc.audit(cam, images[:10], boxes=boxes[:10], masks=np.ones((10, 64, 64)), verbose=0)
    for option in ({"n_clusters": 0}, {"n_clusters": "many"}, {"max_clusters": 0}, {"n_neighbors": 0},
                   {"grid": 1}):
        with pytest.raises(ValueError, match=next(iter(option))):
            kc.audit(cam, images[:10], verbose=0, **option)


def test_without_labels_the_top1_class_is_audited(cam, model, data):
    images = data[0][:60]
    audit = kc.audit(cam, images, verbose=0, n_neighbors=5)
    np.testing.assert_array_equal(audit.targets, model.predict(images, verbose=0).argmax(-1))
    assert audit.labels is None and all(c.accuracy is None and c.outside_energy is None for c in audit.clusters)
    np.testing.assert_array_equal(np.sort(np.concatenate([c.indices for c in audit.clusters])), np.arange(60))


def test_classes_smaller_than_the_neighbourhood_are_one_cluster(cam, data):
    images, labels, _, _ = data
    few = np.concatenate([np.flatnonzero(labels == 0)[:5], np.flatnonzero(labels == 1)[:30]])
    with pytest.warns(UserWarning, match="class 0 has 5 image"):
        audit = kc.audit(cam, images[few], labels[few], verbose=0)
    assert len(audit.of_class(0)) == 1 and audit.of_class(0)[0].size == 5
    assert audit.of_class(0)[0].score == 0.0 and "n_neighbors" in audit.notes[0]


def test_constant_maps_are_one_cluster_per_class():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", kernel_initializer="zeros", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    flat = keras.Model(inputs, keras.layers.Dense(2, bias_initializer=keras.initializers.Constant([1.0, 0.0]))(x))
    images = np.random.default_rng(0).uniform(size=(30, 16, 16, 3)).astype(np.float32)
    labels = np.arange(30) % 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # nothing from scikit-learn or scipy
        audit = kc.audit(kc.GradCAM(flat, layer="conv"), images, labels, verbose=0)
    assert [c.target for c in audit.clusters] == [0, 1] and [c.size for c in audit.clusters] == [15, 15]
    assert all(c.score == 0.0 for c in audit.clusters)
    assert audit.notes == {0: "all maps alike: kept as one cluster", 1: "all maps alike: kept as one cluster"}
    np.testing.assert_allclose(audit.maps, 1 / 16)


# --- the command line ------------------------------------------------------------------------


def test_cli_audit_writes_report_and_json_and_refuses_to_overwrite(model, data, tmp_path, capsys):
    import cv2

    from keras_cam import cli

    images, labels, _, _ = data
    folder = tmp_path / "images"
    folder.mkdir()
    rows = ["file,label"]
    for i in range(48):
        cv2.imwrite(str(folder / f"im{i:02d}.png"), np.rint(images[i, ..., ::-1] * 255).astype(np.uint8))
        rows.append(f"im{i:02d}.png,{labels[i]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    model.save(str(tmp_path / "shortcut.keras"))
    args = ["audit", str(folder), "--model", str(tmp_path / "shortcut.keras"), "--labels", str(tmp_path / "labels.csv"),
            "--preprocess", "scale", "--out", str(tmp_path / "out"), "--neighbors", "5", "--quiet"]
    assert cli.main(args) == 0
    saved = json.load(open(tmp_path / "out" / "clusters.json"))
    files = sorted(f for c in saved["clusters"] for f in c["files"])
    assert files == sorted(str(folder / f"im{i:02d}.png") for i in range(48))
    assert [c["target"] for c in saved["clusters"]] == sorted(c["target"] for c in saved["clusters"])
    for c in saved["clusters"]:
        assert all(labels[int(os.path.basename(f)[2:4])] == c["target"] for f in c["files"])
    assert (tmp_path / "out" / "report.html").stat().st_size > 0
    # --evidence what: each class's group is the "what" split.
    what = [str(tmp_path / "what") if a == str(tmp_path / "out") else a for a in args] + ["--evidence", "what"]
    assert cli.main(what) == 0
    grouped = [c for c in json.load(open(tmp_path / "what" / "clusters.json"))["clusters"] if c["level"] is not None]
    assert grouped and all(c["evidence"] == "what" for c in grouped)
    capsys.readouterr()
    assert cli.main(args) == 1
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "labels.csv").write_text("\n".join(rows[:-1]) + "\n")
    assert cli.main(args + ["--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "no label for" in err and "im47.png" in err


def test_demo_audit_subprocess(tmp_path):
    out = tmp_path / "d"
    code = ("import sys; from keras_cam.demo.run import run_audit_demo; "
            f"run_audit_demo({str(out)!r}, n_images=160, verbose=True)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"audit.html", "clusters.json", "audit.txt"} <= set(os.listdir(out))
    f1 = float(re.search(r"marked images: F1 ([0-9.]+)", done.stdout).group(1))
    assert f1 >= 0.9
