"""The first explanation in a fresh process, VizGradCAM in a loop, and the CLI.

    python bench/bench_firstcall.py [--rounds 3] [--before /tmp/kc-before]
                                    [--models mobilenetv2,efficientnetb0] [--skip-cli] [--skip-scorecam]

Every measurement runs in its own Python process (``--child``), as a user's
notebook or script would: TensorFlow imported, the model (weights=None,
224x224) built and run once on the image, then the clock starts. The kinds of
process are run round by round, interleaved, and each row reports the median
over the rounds, so a burst of load from elsewhere hits all alike; the load
average seen by each process is reported with it.

Rows, each as a ratio to its reference measured in the same run:

- ``GradCAM(model)(x)``, building and first call, against tf-keras-vis 0.8.7
  ``Gradcam`` (``ReplaceToLinear``, ``clone=True``) building and first call on
  the same layer and the top class (target <= 0.8);
- ``VizGradCAM(model, x)`` first call against the same tf-keras-vis time
  (target <= 0.6);
- ``VizGradCAM`` from its third call on (median of calls 3-8) against a
  built, compiled ``GradCAM`` call timed beside it in the same process
  (target <= 2);
- Score-CAM's first call (``max_channels=256``, 8 passes of 32 masked
  images; MobileNetV2), compiled from the first call (the default) and
  eagerly (why it is not the default);
- ``keras-cam explain`` on 16 images (MobileNetV2 saved as ``.keras``): the
  command's wall time.

With ``--before PATH`` (a checkout of an older keras-cam, e.g.
``git worktree add --detach /tmp/kc-before b377982``) the keras-cam rows are
also measured with that code, for a before/after table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LAYERS = {"mobilenetv2": "out_relu", "efficientnetb0": "top_activation"}


# ---------------------------------------------------------------- child processes


def _setup(model_name):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from keras_cam._compat import keras

    build = {"mobilenetv2": keras.applications.MobileNetV2, "efficientnetb0": keras.applications.EfficientNetB0}
    model = build[model_name](weights=None, input_shape=(224, 224, 3))
    x = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    model(x)  # the model has run once, as in a session that predicted before explaining
    return model, x


def child(kind, model_name):
    """One measurement; returns a dict of seconds."""
    load = os.getloadavg()[0]
    model, x = _setup(model_name)
    import keras_cam as kc

    if kind == "gradcam":
        t0 = time.perf_counter()
        kc.GradCAM(model)(x)
        return {"first": time.perf_counter() - t0, "load": load}
    if kind == "peer":
        import numpy as np
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore

        t0 = time.perf_counter()
        gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
        top = list(np.argmax(model(x).numpy(), axis=1))
        gradcam(CategoricalScore(top), x, penultimate_layer=LAYERS[model_name])
        return {"first": time.perf_counter() - t0, "load": load}
    if kind == "viz":
        times = []
        for _ in range(8):
            t0 = time.perf_counter()
            kc.VizGradCAM(model, x[0], plot_results=False)
            times.append(time.perf_counter() - t0)
        cam = kc.GradCAM(model, layer=LAYERS[model_name])
        cam(x)
        cam(x)  # built and compiled
        viz, built = [], []
        for _ in range(6):  # interleaved: VizGradCAM's later calls against the built explainer's
            for fn, out in ((lambda: kc.VizGradCAM(model, x[0], plot_results=False), viz), (lambda: cam(x), built)):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        return {"first": times[0], "second": times[1], "later": statistics.median(times[2:] + viz),
                "later_paired": statistics.median(viz), "built": statistics.median(built), "load": load}
    if kind in ("scorecam", "scorecam_eager"):
        cam = kc.ScoreCAM(model, max_channels=256, verbose=0)
        if kind == "scorecam_eager":
            cam._eager_first = True
        t0 = time.perf_counter()
        cam(x)
        return {"first": time.perf_counter() - t0, "load": load}
    raise ValueError(kind)


def run_child(kind, model_name, tree):
    env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, model_name],
                         env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {model_name} ({tree}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cli(tree, model_path, folder, out):
    env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="2")
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "keras_cam.cli", "explain", folder, "--model", model_path,
                           "--out", out, "--overwrite", "--quiet"],
                          env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"keras-cam explain ({tree}) failed:\n{done.stderr[-3000:]}")
    return {"first": wall, "load": load}


def cli_inputs(workdir):
    """MobileNetV2 (weights=None) saved as .keras, and 16 random 224x224 PNGs."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    code = (
        "import sys, numpy as np, cv2\n"
        "from keras_cam._compat import keras\n"
        "m = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))\n"
        "m.save(sys.argv[1])\n"
        "rng = np.random.default_rng(0)\n"
        "for i in range(16):\n"
        "    cv2.imwrite(f'{sys.argv[2]}/img{i:02d}.png', rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))\n"
    )
    model_path = os.path.join(workdir, "mobilenetv2.keras" if not os.environ.get("TF_USE_LEGACY_KERAS") else
                              "mobilenetv2.h5")
    folder = os.path.join(workdir, "images")
    os.makedirs(folder, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, model_path, folder], env=env, check=True, capture_output=True)
    return model_path, folder


# ---------------------------------------------------------------- the table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", metavar="PATH", help="an older keras-cam checkout to compare with")
    parser.add_argument("--models", default="mobilenetv2,efficientnetb0")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-scorecam", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    trees = {"after": ROOT} | ({"before": os.path.abspath(args.before)} if args.before else {})
    jobs = []  # (label, callable)
    for name in args.models.split(","):
        jobs.append(((name, "peer", "tf-keras-vis"), lambda n=name: run_child("peer", n, ROOT)))
        for which, tree in trees.items():
            for kind in ("gradcam", "viz"):
                jobs.append(((name, kind, which), lambda k=kind, n=name, t=tree: run_child(k, n, t)))
    if not args.skip_scorecam:
        for kind in ("scorecam", "scorecam_eager"):
            jobs.append((("mobilenetv2", kind, "after"), lambda k=kind: run_child(k, "mobilenetv2", ROOT)))
        if args.before:
            jobs.append((("mobilenetv2", "scorecam", "before"),
                         lambda: run_child("scorecam", "mobilenetv2", trees["before"])))
    work = tempfile.mkdtemp(prefix="bench_firstcall_")
    if not args.skip_cli:
        model_path, folder = cli_inputs(work)
        for which, tree in trees.items():
            out = os.path.join(work, f"out_{which}")
            jobs.append((("mobilenetv2", "cli", which), lambda t=tree, o=out: run_cli(t, model_path, folder, o)))

    results = {label: [] for label, _ in jobs}
    for r in range(args.rounds):
        for label, job in jobs:
            results[label].append(job())
            print(f"round {r + 1}: {label} {results[label][-1]}", flush=True)

    def med(label, key="first"):
        runs = results.get(label)
        return statistics.median(run[key] for run in runs) if runs else float("nan")

    loads = [run["load"] for runs in results.values() for run in runs]
    rows = []
    for name in args.models.split(","):
        peer = med((name, "peer", "tf-keras-vis"))
        for which in trees:
            cam, viz = med((name, "gradcam", which)), med((name, "viz", which))
            later, built = med((name, "viz", which), "later"), med((name, "viz", which), "built")
            rows.append([name, which, f"{peer:.2f}", f"{cam:.2f}", f"{cam / peer:.2f}", f"{viz:.2f}",
                         f"{viz / peer:.2f}", f"{med((name, 'viz', which), 'second'):.2f}",
                         f"{later * 1e3:.0f}", f"{built * 1e3:.0f}", f"{later / built:.2f}"])
    print()
    print(table(["model", "code", "tf-keras-vis build + 1st call s", "GradCAM 1st call s", "/ tf-keras-vis",
                 "VizGradCAM 1st call s", "/ tf-keras-vis", "VizGradCAM 2nd call s",
                 "VizGradCAM 3rd+ ms", "built GradCAM ms", "3rd+ / built"], rows))
    other = []
    if not args.skip_scorecam:
        for which in trees:
            other.append([f"Score-CAM 1st call, compiled from the 1st call (max_channels=256), {which}",
                          f"{med(('mobilenetv2', 'scorecam', which)):.1f}"])
        other.append(["Score-CAM 1st call run eagerly (not the default), after",
                      f"{med(('mobilenetv2', 'scorecam_eager', 'after')):.1f}"])
    if not args.skip_cli:
        for which in trees:
            other.append([f"keras-cam explain, 16 images, MobileNetV2, wall, {which}",
                          f"{med(('mobilenetv2', 'cli', which)):.1f}"])
    if other:
        print()
        print(table(["measurement", "seconds (median)"], other))
    print(f"\n{args.rounds} rounds; load average (1 min) seen by the processes: median "
          f"{statistics.median(loads):.1f}, range {min(loads):.1f}-{max(loads):.1f}, on {os.cpu_count()} CPUs")


def table(header, rows):
    sys.path.insert(0, HERE)
    from _timing import table as markdown  # noqa: PLC0415

    return markdown(header, rows)


if __name__ == "__main__":
    main()
