"""KerasHub task models built from configs (no weights, no network), with ``layer=None``.

keras-hub builds Keras 3 models; they are explained the same way when the
rest of the suite runs under tf-keras. Each map is checked against a hand
computation from the task model's own parts.
"""

import keras
import keras_hub
import numpy as np
import pytest

import keras_cam as kc
from keras_cam._compat import to_host
from keras_cam.targets import Detection, Segmentation

TOL = 1e-5


def resnet(stacks, size):
    """A small ResNet backbone (KerasHub asks 64 filters for the stem and the first stack)."""
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64] + [16] * (stacks - 1),
        stackwise_num_blocks=[1] * stacks, stackwise_num_strides=[1] + [2] * (stacks - 1),
        block_type="basic_block", image_shape=(size, size, 3))


def same_weights(model, seed):
    """The same weights on every backend (Keras's seeded initializers draw other numbers on each):
    constant arrays (biases, norms' scales and statistics) kept, every other one drawn by numpy
    with a fan-in scale."""
    rng = np.random.default_rng(seed)
    model.set_weights([w if np.ptp(w) == 0 else
                       rng.normal(0, 1 / np.sqrt(np.prod(w.shape[:-1]) if w.ndim > 1 else 1.0), w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return model


def gradcam(a, g):
    """ReLU(sum_k mean_ij(g_k) A_k) for (N, h, w, K) arrays."""
    return np.maximum((a * g.mean(axis=(1, 2), keepdims=True)).sum(-1), 0)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def test_resnet_classifier(rng):
    keras.utils.set_random_seed(0)
    clf = keras_hub.models.ResNetImageClassifier(backbone=resnet(2, 32), num_classes=3)
    x = rng.random((2, 32, 32, 3)).astype(np.float32)
    ex = kc.GradCAM(clf).explain(x, upsample=False, normalize=False)
    # The backbone's last block; the head is pooling, dropout, dense: dS/dA = W_c / (h w).
    a = to_host(clf.backbone(x, training=False)).astype(np.float64)
    w, b = (np.asarray(v, np.float64) for v in clf.get_layer("predictions").get_weights())
    logits = a.mean(axis=(1, 2)) @ w + b
    c = logits.argmax(axis=1)
    np.testing.assert_array_equal(ex.targets, c)
    np.testing.assert_allclose(ex.scores, logits[[0, 1], c], rtol=TOL, atol=TOL)
    g = np.broadcast_to(w.T[c][:, None, None, :] / (a.shape[1] * a.shape[2]), a.shape)
    np.testing.assert_allclose(ex.maps, gradcam(a, g), rtol=TOL, atol=TOL)


def test_preprocessor_is_what_the_explainer_takes(rng):
    """`task.predict(raw)` runs the preprocessor, `task(x)` does not: explain `preprocessor(raw)`."""
    keras.utils.set_random_seed(0)
    converter = keras_hub.layers.ResNetImageConverter(image_size=(32, 32), scale=1 / 255)
    clf = keras_hub.models.ResNetImageClassifier(
        backbone=resnet(2, 32), num_classes=3,
        preprocessor=keras_hub.models.ResNetImageClassifierPreprocessor(converter))
    raw = rng.integers(0, 256, (2, 48, 40, 3)).astype(np.float32)
    x = to_host(clf.preprocessor(raw))
    assert x.shape == (2, 32, 32, 3) and x.max() <= 1
    ex = kc.GradCAM(clf).explain(x)
    np.testing.assert_allclose(ex.scores, clf.predict(raw, verbose=0).max(axis=1), rtol=1e-4, atol=1e-4)
    assert ex.maps.shape == (2, 32, 32)


@pytest.fixture(scope="module")
def segmenter():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=resnet(2, 32), spatial_pyramid_pooling_key="P3", upsampling_size=2,
        dilation_rates=[1, 2], low_level_feature_key="P2", projection_filters=8, image_shape=(32, 32, 3))
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=3)


@pytest.mark.parametrize("masked", [False, True])
def test_deeplab_segmentation_by_hand(segmenter, rng, masked):
    x = rng.random((2, 32, 32, 3)).astype(np.float32)
    mask = rng.random((2, 32, 32)) > 0.5 if masked else None
    cam = kc.GradCAM(segmenter)
    # Not the logits themselves: the feature map they are computed from.
    assert cam.layer_path == "deep_lab_v3_backbone/backbone_output_upsampling"
    ex = cam.explain(x, targets=Segmentation(1, mask), upsample=False, normalize=False)
    # z = A W (a 1x1 convolution without bias): S = sum_ij mask_ij z_1,ij, dS/dA_ij = mask_ij W_:1.
    a = to_host(segmenter.backbone(x, training=False)).astype(np.float64)
    w = to_host(segmenter.get_layer("segmentation_output").kernel.value).astype(np.float64)[0, 0]
    m = np.ones((2, 32, 32)) if mask is None else mask.astype(np.float64)
    np.testing.assert_allclose(ex.scores, (m * (a @ w)[..., 1]).sum(axis=(1, 2)), rtol=TOL, atol=1e-4)
    expected = gradcam(a, m[..., None] * w[:, 1])
    np.testing.assert_allclose(ex.maps, expected, rtol=TOL, atol=TOL)
    assert expected.std() > 0


@pytest.fixture(scope="module")
def detector():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=resnet(4, 64), min_level=3, max_level=5,
                                                  use_p5=False, image_shape=(64, 64, 3))
    detector = keras_hub.models.RetinaNetObjectDetector(backbone=backbone, num_classes=3, pre_logits_num_conv_layers=1)
    same_weights(detector, 1)  # an untrained detector's maps must not depend on the backend's draws
    # Untrained, its box deltas are large (boxes far off the image); a trained detector's boxes stay
    # near their anchors: scale the box head's last layer down so that they do.
    layer = detector.box_head.prediction_layer
    layer.set_weights([w * 0.01 for w in layer.get_weights()])
    return detector


def decoded_boxes(detector, x):
    """The detector's boxes per anchor (yxyx), decoded with Keras's own function; and its outputs."""
    out = detector(x, training=False)
    anchors = keras.ops.concatenate(list(detector.anchor_generator(x).values()), axis=0)
    decoded = keras.utils.bounding_boxes.decode_deltas_to_boxes(
        anchors=anchors, boxes_delta=out["bbox_regression"], anchor_format="yxyx", box_format="yxyx",
        encoded_format="center_xywh", image_shape=(64, 64, 3))
    return to_host(decoded), out


def detection_score_by_hand(detector, x, boxes, category, iou):
    """S = sum_a [IoU(b_a, B) >= iou] z_a,c, with Keras's own box decoding and IoU."""
    decoded, out = decoded_boxes(detector, x)
    overlap = to_host(keras.utils.bounding_boxes.compute_iou(decoded, np.asarray(boxes[:, None], np.float32),
                                                             "yxyx"))[..., 0]
    logits = to_host(out["cls_logits"]).astype(np.float64)[..., category]
    hits = overlap >= iou
    return (logits * hits).sum(axis=1), hits.sum(axis=1)


def test_retinanet_detection(detector, rng):
    x = rng.random((2, 64, 64, 3)).astype(np.float32)
    decoded, _ = decoded_boxes(detector, x)
    boxes = decoded[:, 100]  # per image, the box the detector predicts at one P3 anchor
    cam = kc.GradCAM(detector)
    # not a head shared by levels (Keras numbers the backbone's name when another test built one first)
    assert cam.layer_path == f"{detector.backbone.name}/backbone/stack3_block0_out"
    for iou in (0.5, 0.1):
        ex = cam.explain(x, targets=Detection(boxes, 0, iou=iou))
        s, hits = detection_score_by_hand(detector, x, boxes, 0, iou)
        assert (hits > 0).all()
        np.testing.assert_allclose(ex.scores, s, rtol=1e-4, atol=1e-4)
        assert np.isfinite(ex.maps).all() and (ex.maps.std(axis=(1, 2)) > 0).all()
    assert (detection_score_by_hand(detector, x, boxes, 0, 0.1)[1] > detection_score_by_hand(detector, x, boxes, 0, 0.5)[1]).any()
    # The boxes in another format: the same scores.
    same = cam.explain(x, targets=Detection(boxes[:, [1, 0, 3, 2]], 0, iou=0.1, box_format="xyxy"))
    np.testing.assert_allclose(same.scores, ex.scores, rtol=1e-6)
    # The class travels with the batch: the other classes reuse the compiled call of iou=0.1 (the
    # second call of class 0 traced it), each with its own score.
    traced = cam.tracing_count
    for category in (2, 1):
        other = cam.explain(x, targets=Detection(boxes, category, iou=0.1))
        np.testing.assert_allclose(other.scores, detection_score_by_hand(detector, x, boxes, category, 0.1)[0],
                                   rtol=1e-4, atol=1e-4)
    assert cam.tracing_count == traced
    with pytest.raises(ValueError, match=r"out of range for a detector with 3 classes"):
        cam(x, targets=Detection(boxes, 3))
    with pytest.raises(ValueError, match=r"has no area"):
        cam(x, targets=Detection(boxes[:, [2, 3, 0, 1]], 0))
    with pytest.raises(ValueError, match=r"3 rows for 2 inputs"):
        cam(x, targets=Detection(np.concatenate([boxes, boxes[:1]]), 0))
