"""``keras-cam evaluate`` with --metrics, --boxes and --per-image, against the metrics called in Python.

Images are written as PNG files of a tiny model's input size and of twice it
(so the boxes must be scaled); the printed table and the per-image CSV are
compared with keras_cam.metrics called directly on the same maps.
"""

import csv

import cv2
import numpy as np
import pytest

import keras_cam as kc
from keras_cam import cli, metrics
from keras_cam._compat import keras


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    keras.utils.set_random_seed(0)
    tmp = tmp_path_factory.mktemp("cli_metrics")
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    model_path = str(tmp / "model.keras")
    model.save(model_path)
    folder = tmp / "images"
    folder.mkdir()
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    paths = []
    for i, im in enumerate(images):
        paths.append(str(folder / f"{i}.png"))
        cv2.imwrite(paths[-1], im[..., ::-1])
    boxes = np.array([[0, 0, 4, 4], [2, 1, 8, 5], [3, 3, 6, 8], [0, 2, 8, 8]])
    box_csv = tmp / "boxes.csv"
    with open(box_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "y0", "x0", "y1", "x1"])
        for p, b in zip(paths, boxes):
            w.writerow([p.rsplit("/", 1)[-1]] + b.tolist())      # by file name
    return tmp, model_path, folder, paths, images, boxes, box_csv, keras.models.load_model(model_path)


def masks_of(boxes, size=(8, 8)):
    masks = np.zeros((len(boxes),) + size, bool)
    for mask, (y0, x0, y1, x1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = True
    return masks


def test_metrics_boxes_and_per_image_match_python(files, capsys):
    tmp, model_path, folder, paths, images, boxes, box_csv, model = files
    out_csv = tmp / "per_image.csv"
    names = ["relevance_rank_accuracy", "mask_auc", "attribution_localization", "sparseness"]
    status = cli.main(["evaluate", str(folder), "--model", model_path, "--preprocess", "scale", "--layer", "conv",
                       "--metrics", ",".join(names[:3]), "--metric", names[3], "--boxes", str(box_csv),
                       "--per-image", str(out_csv), "--quiet"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    assert printed[0] == "| method | Sparseness ↑ | Rank acc ↑ | Mask AUC ↑ | Attr loc ↑ |"   # --metric, then --metrics
    maps = kc.GradCAM(model, "conv")(images.astype(np.float32) / 255.0)
    masks = masks_of(boxes)
    expected = {
        "relevance_rank_accuracy": metrics.relevance_rank_accuracy(maps, masks=masks, reduce=None),
        "mask_auc": metrics.mask_auc(maps, masks=masks, reduce=None),
        "attribution_localization": metrics.attribution_localization(maps, masks=masks, reduce=None),
        "sparseness": metrics.sparseness(maps, reduce=None),
    }
    order = names[3:] + names[:3]
    assert printed[2] == "| gradcam | " + " | ".join(f"{expected[n].mean():.3f}" for n in order) + " |"
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == paths and {r["method"] for r in rows} == {"gradcam"}
    for n in names:
        np.testing.assert_allclose([float(r[n]) for r in rows], expected[n], rtol=1e-6)


def test_boxes_on_larger_images_are_scaled_to_the_model_input(files, tmp_path, capsys):
    _, model_path, _, _, images, _, _, model = files
    folder = tmp_path / "big"
    folder.mkdir()
    for i, im in enumerate(images[:2]):
        cv2.imwrite(str(folder / f"{i}.png"), np.repeat(np.repeat(im, 2, 0), 2, 1)[..., ::-1])
    box_csv = tmp_path / "b.csv"
    # at 16x16, (1, 3, 9, 16) scales to (0, 1, 5, 8) at 8x8: starts down, ends up
    box_csv.write_text(f"image,y0,x0,y1,x1\n{folder / '0.png'},1,3,9,16\n1.png,0,0,16,6\n")
    out_csv = tmp_path / "p.csv"
    assert cli.main(["evaluate", str(folder), "--model", model_path, "--preprocess", "scale", "--layer", "conv",
                     "--metrics", "pointing_game,mask_auc", "--boxes", str(box_csv), "--per-image", str(out_csv),
                     "--quiet"]) == 0
    capsys.readouterr()
    from keras_cam.cli import _as_model_input

    x = np.stack([_as_model_input(np.repeat(np.repeat(im, 2, 0), 2, 1), (8, 8)) for im in images[:2]])
    maps = kc.GradCAM(model, "conv")(x.astype(np.float32) / 255.0)
    masks = masks_of(np.array([[0, 1, 5, 8], [0, 0, 8, 3]]))
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    np.testing.assert_allclose([float(r["mask_auc"]) for r in rows],
                               metrics.mask_auc(maps, masks=masks, reduce=None), rtol=1e-5)


def test_default_metrics_are_the_registrys_defaults_with_the_localization_ones_given_boxes(files, capsys):
    _, model_path, folder, _, _, _, box_csv, _ = files
    assert cli.main(["evaluate", str(folder), "--model", model_path, "--layer", "conv", "--quiet", "--steps", "2",
                     "--boxes", str(box_csv)]) == 0
    header = capsys.readouterr().out.strip().splitlines()[0]
    assert header.count("|") - 2 == len(metrics.DEFAULT_METRICS)        # one column per default metric
    for title in ("Pointing %", "Rank acc", "Mass acc", "Mask AUC", "Attr loc"):
        assert title in header


def test_bad_metric_and_box_arguments_end_with_one_error_line(files, tmp_path, capsys):
    _, model_path, folder, paths, _, _, box_csv, _ = files
    common = ["evaluate", str(folder), "--model", model_path, "--quiet"]
    cases = [
        (["--metrics", "mask_auc,accuracy"], "unknown metric 'accuracy'"),
        (["--metrics", "mask_auc"], "pass --boxes CSV"),
        (["--metrics", "mask_auc", "--boxes", str(tmp_path / "none.csv")], "cannot read --boxes"),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,a\nx,1\n")
    cases.append((["--metrics", "mask_auc", "--boxes", str(bad)], "header row image,y0,x0,y1,x1"))
    missing = tmp_path / "missing.csv"
    missing.write_text("image,y0,x0,y1,x1\n0.png,0,0,2,2\n")
    cases.append((["--metrics", "mask_auc", "--boxes", str(missing)], "no row for image"))
    outside = tmp_path / "outside.csv"
    outside.write_text("image,y0,x0,y1,x1\n" + "".join(f"{p},0,0,9,2\n" for p in paths))
    cases.append((["--metrics", "mask_auc", "--boxes", str(outside)], "leaves its 8x8 image"))
    text = tmp_path / "text.csv"
    text.write_text("image,y0,x0,y1,x1\n0.png,a,0,2,2\n")
    cases.append((["--metrics", "mask_auc", "--boxes", str(text)], "line 2: y0, x0, y1, x1 must be integers"))
    for extra, message in cases:
        assert cli.main(common + extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("keras-cam: error:") and message in err[0], (extra, err)
