"""Every Python block of README.md and docs/*.md runs, and what its comments promise holds.

Each page's blocks run in order, statement by statement, in one fresh
namespace: the page's prelude (``tests/doc_preludes.py``: the names a reader
is assumed to have, from tiny seeded models and generated data), in a
temporary working folder. Tracebacks name the page and its line.

The comments promise, and this test checks (write new examples this way):

- a comment that starts with a shape, ``# (N, H, W) ...``, or says
  ``maps (N, T)``: the shape of the statement's value (the assigned name, the
  first of several, or the expression). Letters are the prelude's symbols;
  other entries are evaluated in the page's namespace (``2 * viz.SLICE_GAP``);
- ``in [0, 1]``: every value lies in [0, 1]; ``percent``: a number in
  [0, 100]; ``float32``, ``uint8``, ``int32``...: the dtype;
- on a ``print``: what it prints; ``...`` at either end means a part of the
  output, and a ``(see ...)`` aside is ignored;
- ``# ['a', 'b', ...]``: the value's first items; ``# [(path, shape), ...]``:
  a list of pairs, each led by a string;
- ``# x.a, .b, .c``: attributes the value has; ``# a bool``: a bool;
- ``e.g.`` anywhere in a comment: an example, not checked.

A block that cannot run offline (it downloads weights) is preceded by an
HTML comment ``<!-- no-run: REASON -->``; it is still compiled, the reason
must be given, and such blocks stay few. A block that looks like it
downloads (``weights="imagenet"``, ``get_file``, ``from_preset``) without
the marker fails.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import sys
import textwrap
import tokenize
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_preludes  # noqa: E402
from slow import slow  # noqa: E402

from keras_cam import backend as _backend  # noqa: E402

# The pages' examples run with the Keras under test, in every test mode (Keras 3 on TensorFlow, JAX
# and PyTorch, and legacy tf-keras). A statement that is TensorFlow by nature (tf.distribute, a
# SavedModel) is listed in doc_preludes.TENSORFLOW_ONLY: compiled, not run, off TensorFlow; a page
# whose examples hold only on some backends is listed in doc_preludes.PAGE_BACKENDS.
BACKEND = _backend.name()

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md"] + [f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*no-run:(.*?)-->\s*$")
DOWNLOADS = re.compile(r"""weights\s*=\s*["']imagenet|get_file\(|from_preset\(|\.load_data\(""")
MAX_NO_RUN = 3


@dataclass
class Block:
    page: str
    line: int               # the line of the first code line, 1-based
    code: str
    no_run: str | None      # the marker's reason, None for a block that runs


def blocks_of(text, page):
    """The Python blocks of a markdown text (fences may be indented, as in a list item)."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.groups()
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        if lang in ("python", "py"):
            before = i - 1
            while before >= 0 and not lines[before].strip():
                before -= 1
            marker = MARKER.match(lines[before]) if before >= 0 else None
            code = textwrap.dedent("\n".join(lines[i + 1:j]))
            found.append(Block(page, i + 2, code, marker.group(1).strip() if marker else None))
        i = j + 1
    return found


def markers_of(text):
    """``[(line, reason, next fence's language)]`` of the no-run markers."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if m:
            nxt = next((FENCE.match(x) for x in lines[i + 1:] if x.strip()), None)
            out.append((i + 1, m.group(1).strip(), nxt.group(2) if nxt else None))
    return out


def _read(page):
    return (ROOT / page).read_text(encoding="utf-8")


RUN_PAGES = [p for p in PAGES if any(b.no_run is None for b in blocks_of(_read(p), p))]


# --- the promises of a comment ------------------------------------------------------------------

SHAPE_AT_START = re.compile(r"^\(([^()]*)\)")
SHAPE_OF_MAPS = re.compile(r"\bmaps \(([^()]*)\)")
DTYPE = re.compile(r"\b(float16|float32|float64|uint8|int32|int64|bool)\b")
LIST_HEAD = re.compile(r"^\[(.*?), \.\.\.\]")
ATTRIBUTES = re.compile(r"^(?:\w+)?\.(\w+)(?:,\s*\.\w+)+\s*$")


def _shape_of(value):
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    return tuple(None if d is None else int(d) for d in shape)


def _expected_shape(inside, names, symbols):
    """``[(size, is_letter)]`` of a shape written in a comment."""
    dims = []
    for part in (p.strip() for p in inside.split(",")):
        if not part:
            continue
        if part in symbols:
            dims.append((int(symbols[part]), True))
            continue
        if re.fullmatch(r"[A-Z]", part):
            raise AssertionError(f"the shape letter {part!r} is not a symbol of the page's prelude "
                                 f"(tests/doc_preludes.py)")
        dims.append((int(eval(part, {"__builtins__": {}}, {**names, **symbols})), False))  # noqa: S307
    return dims


def check_comment(comment, value, printed, is_print, names, symbols):
    """The failures (strings) of one statement's comment against its value and its printed output;
    also returns how many promises were checked."""
    failures, checked = [], 0
    text = comment.strip()
    if not text or "e.g." in text:
        return failures, checked
    if is_print:
        expected = re.sub(r"\s*\(see [^)]*\)", "", text).strip()
        checked += 1
        if expected.startswith("...") or expected.endswith("..."):
            core = expected.removeprefix("...").removesuffix("...").strip()
            if core not in printed:
                failures.append(f"prints {printed.strip()!r}, which does not contain {core!r}")
        elif printed.strip() != expected:
            failures.append(f"prints {printed.strip()!r}, not {expected!r}")
        return failures, checked
    shape = SHAPE_AT_START.match(text) or SHAPE_OF_MAPS.search(text)
    if shape:
        checked += 1
        dims = _expected_shape(shape.group(1), names, symbols)
        expected = tuple(size for size, _ in dims)
        got = _shape_of(value)
        # A symbolic tensor's unknown size (None) stands for a letter (the batch N), never for a number.
        if got is None or len(got) != len(dims) or any(
                g != size and not (g is None and letter) for g, (size, letter) in zip(got, dims)):
            failures.append(f"has shape {got}, the comment promises {expected}")
    if "in [0, 1]" in text:
        checked += 1
        a = np.asarray(value, np.float64)
        if not (np.all(np.isfinite(a)) and a.min() >= -1e-6 and a.max() <= 1 + 1e-6):
            failures.append(f"has values in [{a.min():.4g}, {a.max():.4g}], the comment promises [0, 1]")
    dtype = DTYPE.search(text)
    if dtype and (shape or "in [0, 1]" in text):
        checked += 1
        got = np.asarray(value).dtype
        if got != np.dtype(dtype.group(1)):
            failures.append(f"has dtype {got}, the comment promises {dtype.group(1)}")
    if re.search(r"\bpercent\b", text):
        checked += 1
        if not (isinstance(value, (float, int, np.floating)) and 0 <= float(value) <= 100):
            failures.append(f"is {value!r}, the comment promises a percentage")
    head = LIST_HEAD.match(text)
    if head:
        checked += 1
        try:
            items = ast.literal_eval("[" + head.group(1) + "]")
        except (ValueError, SyntaxError):
            items = None
        if items is not None:
            if list(value)[:len(items)] != items:
                failures.append(f"starts {list(value)[:len(items)]}, the comment promises {items}")
        elif not (isinstance(value, list) and value and all(
                isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value)):
            failures.append(f"is not a list of pairs led by a string, as the comment {head.group(0)} promises")
    if text.startswith("a bool"):
        checked += 1
        if not isinstance(value, (bool, np.bool_)):
            failures.append(f"is {type(value).__name__}, the comment promises a bool")
    attributes = ATTRIBUTES.match(text)
    if attributes:
        checked += 1
        wanted = re.findall(r"\.(\w+)", text)
        missing = [a for a in wanted if not hasattr(value, a)]
        if missing:
            failures.append(f"has no attribute {missing}, which the comment names")
    return failures, checked


# Promises in words, checked by a second code path: {(page, statement as written): check(names, value)},
# the check returning a failure or None. Every entry must meet its statement (a reworded page fails).


def _per_image(names, maps):
    """``cam(images, targets=[3, 7])`` equals one call per image with its own class."""
    cam, images = names["cam"], names["images"]
    single = np.concatenate([cam(images[i:i + 1], targets=t) for i, t in enumerate([3, 7])])
    return None if np.allclose(maps, single, atol=1e-5) else "differs from one call per image with its class"


def _detections(names, found):
    missing = {"boxes", "labels", "confidence"} - set(found)
    return f"has no {sorted(missing)}" if missing else None


def _finds_nothing(names, value):
    labels = np.asarray(names["found"]["labels"])
    return None if (labels == -1).all() else f"the untrained detector found labels {labels[labels >= 0][:5]}"


def _two_outputs(names, model):
    return None if len(model.outputs) == 2 else f"has {len(model.outputs)} outputs, not [activations, predictions]"


EXTRA = {
    ("README.md", "maps = cam(images, targets=[3, 7])"): _per_image,
    ("docs/index.md", "maps = cam(images, targets=[3, 7])"): _per_image,
    ("docs/targets.md", "found = detector.predict(pictures, verbose=0)"): _detections,
    ("docs/targets.md", "box, label = [8, 8, 40, 40], 0"): _finds_nothing,
    ("docs/layers.md", 'grad_model = kc.flatten_model(model, outputs=["top_activation"])'): _two_outputs,
}


# --- running a page -------------------------------------------------------------------------------


def _comments(code):
    """``{line: comment text}`` of a block's code (1-based lines of the block)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _print_lines(stmt):
    return {n.lineno for n in ast.walk(stmt)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"}


def _value(stmt, names):
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
        if isinstance(target, (ast.Tuple, ast.List)):
            target = target.elts[0]
        return names.get(target.id) if isinstance(target, ast.Name) else None
    return None


def run_block(block, names, symbols, met=None):
    """Run a block statement by statement; the failures of its comments' promises, and how many were checked.
    ``met`` collects the keys of :data:`EXTRA` whose statement ran."""
    tree = ast.parse(block.code, filename=block.page)
    comments = _comments(block.code)
    source = block.code.splitlines()
    failures, checked = [], 0
    for stmt in tree.body:
        where = f"{block.page}:{block.line + stmt.lineno - 1}"
        first, last, prints = stmt.lineno, stmt.end_lineno, _print_lines(stmt)
        printed = io.StringIO()
        is_expr = isinstance(stmt, ast.Expr)
        node = ast.Expression(stmt.value) if is_expr else ast.Module([stmt], type_ignores=[])
        ast.increment_lineno(node, block.line - 1)
        code = compile(node, block.page, "eval" if is_expr else "exec")
        statement = (block.page, source[first - 1].split("#")[0].strip())
        if statement in doc_preludes.TENSORFLOW_ONLY:
            if met is not None:
                met.add(statement)
            if BACKEND != "tensorflow":
                continue                    # TensorFlow by nature: compiled above, not run here
        with contextlib.redirect_stdout(printed):
            value = eval(code, names) if is_expr else exec(code, names)  # noqa: S307
        sys.stdout.write(printed.getvalue())
        if not is_expr:
            value = _value(stmt, names)
        key = statement
        if key in EXTRA:
            checked += 1
            if met is not None:
                met.add(key)
            bad = EXTRA[key](names, value)
            if bad:
                failures.append(f"{where}: {bad}")
        for line in range(first, last + 1):
            if line not in comments:
                continue
            bad, n = check_comment(comments[line], value, printed.getvalue(), line in prints, names, symbols)
            checked += n
            failures += [f"{where} ({comments[line]!r}): {b}" for b in bad]
    return failures, checked


def run_page(page, workdir, text=None):
    """Run every block of ``page``; ``(failures, promises checked)``."""
    names, symbols = doc_preludes.prelude(page, str(workdir))
    blocks = blocks_of(_read(page) if text is None else text, page)
    given = set(names)
    used = {n.id for b in blocks for n in ast.walk(ast.parse(b.code))
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    unused = sorted(given - used - set(doc_preludes.COMMON))
    assert not unused, f"the prelude of {page} declares {unused}, which no block of the page uses"
    failures, checked, met = [], 0, set()
    for block in blocks:
        if block.no_run is not None:
            compile(block.code, block.page, "exec")
            continue
        bad, n = run_block(block, names, symbols, met)
        failures += bad
        checked += n
    unmet = [k[1] for k in EXTRA if k[0] == page and k not in met]
    assert not unmet, f"{page}: the checks of EXTRA for {unmet} met no statement: update them with the page"
    unmet = [k[1] for k in doc_preludes.TENSORFLOW_ONLY if k[0] == page and k not in met]
    assert not unmet, (f"{page}: doc_preludes.TENSORFLOW_ONLY lists {unmet}, which meet no statement: "
                       f"update it with the page")
    return failures, checked


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import matplotlib.pyplot as plt

    plt.close("all")


# The pages that take a minute or more outside the reference mode (KerasHub models and
# keras.applications built from configs, compiled anew by JAX): they run in the reference mode,
# and what they show is checked on every backend by the tests named.
SLOW_PAGES = {
    "docs/transformers.md": "test_keras_hub_vision.py::test_text_similarity_is_the_cosine_logit, "
                            "test_keras_hub_vision.py::test_dfine_query_by_index_and_by_box, "
                            "test_attention_hub.py::test_gemma3_gradcam_maps_each_image",
    "docs/targets.md": "test_targets.py::test_segmentation_gradcam_by_hand, "
                       "test_keras_hub_vision.py::test_generated_token_is_the_models_logit",
    "docs/layers.md": "test_reach.py::test_default_table_agrees_with_the_probe_on_real_models",
}


def _page_param(page):
    backends, why = doc_preludes.PAGE_BACKENDS.get(page, (None, None))
    if backends is not None and BACKEND not in backends:
        return pytest.param(page, marks=pytest.mark.skip(reason=f"{page} runs on {', '.join(backends)}: {why}"))
    if page in SLOW_PAGES:
        return pytest.param(page, marks=slow(SLOW_PAGES[page]))
    return page


@pytest.mark.parametrize("page", [_page_param(p) for p in RUN_PAGES])
def test_every_block_of_the_page_runs_and_keeps_its_promises(page, in_tmp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # the pages' own warnings are not the point here
        failures, checked = run_page(page, in_tmp)
    assert not failures, "\n".join(failures)


def test_no_run_markers_give_a_reason_and_stay_few():
    count = 0
    for page in PAGES:
        text = _read(page)
        for line, reason, lang in markers_of(text):
            count += 1
            assert len(reason.split()) >= 2, f"{page}:{line}: a no-run marker says why (e.g. 'downloads weights')"
            assert lang in ("python", "py"), f"{page}:{line}: a no-run marker stands just before a Python block"
        for block in blocks_of(text, page):
            if block.no_run is None and DOWNLOADS.search(block.code):
                raise AssertionError(f"{page}:{block.line}: the block downloads ({DOWNLOADS.search(block.code)[0]}) "
                                     f"but has no <!-- no-run: REASON --> marker")
    assert count <= MAX_NO_RUN, f"{count} blocks do not run; keep such exclusions few ({MAX_NO_RUN})"


def test_every_page_with_code_has_a_prelude():
    missing = [p for p in RUN_PAGES if p not in doc_preludes.PRELUDES]
    assert not missing, f"add a prelude for {missing} to tests/doc_preludes.py"
    stale = [p for p in doc_preludes.PRELUDES if p not in RUN_PAGES]
    assert not stale, f"tests/doc_preludes.py has preludes for pages without runnable Python blocks: {stale}"
    # The backend exceptions name pages that run, and say why.
    for (page, _), why in doc_preludes.TENSORFLOW_ONLY.items():
        assert page in RUN_PAGES and why.strip(), (page, why)
    for page, (backends, why) in doc_preludes.PAGE_BACKENDS.items():
        assert page in RUN_PAGES and why.strip() and set(backends) < {"tensorflow", "jax", "torch"}, page


# --- the checker itself catches broken promises ---------------------------------------------------


def test_the_checker_catches_each_kind_of_broken_promise():
    """A page with one broken promise of each kind: each is reported, the kept ones are not."""
    names = {"a": np.zeros((2, 3, 4), np.float32), "b": np.full((2, 3), 2.0)}
    cases = [
        ("(N, H, W)", names["a"], None), ("(N, W, H)", names["a"], "has shape"),
        ("maps (2, 3, 4), bilinear", names["a"], None), ("maps (2, 4)", names["a"], "has shape"),
        ("(2, 1 + 2)", names["b"], None), ("(2, 1 + 3)", names["b"], "has shape"),
        ("(N, H) in [0, 1]", names["b"], "values in"), ("(N, H, W) float32 in [0, 1]", names["a"], None),
        ("(N, H, W) uint8", names["a"], "dtype"), ("percent, lower is better", 42.0, None),
        ("percent", 142.0, "percentage"), ("['x', 'y', ...]", ["x", "y", "z"], None),
        ("['x', 'z', ...]", ["x", "y", "z"], "starts"), ("[(path, shape), ...]", [("p", (1, 2))], None),
        ("[(path, shape), ...]", [("p",)], "pairs"), ("r.shape, .ndim", names["a"], None),
        ("r.shape, .maps", names["a"], "no attribute"), ("e.g. (9, 9)", names["a"], None),
    ]
    symbols = {"N": 2, "H": 3, "W": 4}

    class Symbolic:
        shape = (None, 3, 4)

    cases += [("(N, H, W)", Symbolic(), None), ("(2, H, W)", Symbolic(), "has shape"), ("(N, H)", None, "has shape")]
    for comment, value, error in cases:
        failures, checked = check_comment(comment, value, "", False, names, symbols)
        assert checked >= 1 or comment.startswith("e.g."), comment
        if error is None:
            assert not failures, (comment, failures)
        else:
            assert failures and error in failures[0], (comment, failures)
    assert check_comment("0", None, "0\n", True, {}, {}) == ([], 1)
    assert check_comment("1", None, "0\n", True, {}, {})[0]
    assert check_comment('block_norm (see "Which layer")', None, "block_norm\n", True, {}, {}) == ([], 1)
    assert check_comment("... ln_1 (1, 17, 16) ...", None, "a (1,)\nx/ln_1 (1, 17, 16)\n", True, {}, {}) == ([], 1)
    assert check_comment("... ln_1 (1, 17, 16) ...", None, "x/ln_1 (1, 16)\n", True, {}, {})[0]
    with pytest.raises(AssertionError, match="not a symbol"):
        check_comment("(N, T)", names["b"], "", False, names, symbols)


def test_blocks_markers_and_statements_are_read_as_written(tmp_path):
    text = textwrap.dedent("""\
        Intro.

        - an item:

          ```python
          x = np.arange(6).reshape(2, 3)   # (2, 3)
          print(x.sum())                   # 15
          ```

        <!-- no-run: downloads weights -->

        ```python
        m = keras.applications.ResNet50(weights="imagenet")
        ```

        ```bash
        echo no
        ```
        """)
    found = blocks_of(text, "page.md")
    assert [(b.line, b.no_run) for b in found] == [(6, None), (13, "downloads weights")]
    assert found[0].code.startswith("x = np.arange")
    assert markers_of(text) == [(10, "downloads weights", "python")]
    failures, checked = run_block(found[0], {"np": np}, {})
    assert failures == [] and checked == 2
    broken = Block("page.md", 6, "x = np.arange(6).reshape(3, 2)   # (2, 3)\nprint(x.sum())  # 16\n", None)
    failures, checked = run_block(broken, {"np": np}, {})
    assert len(failures) == 2 and failures[0].startswith("page.md:6 ") and failures[1].startswith("page.md:7 ")
    with pytest.raises(ZeroDivisionError) as info:
        run_block(Block("page.md", 40, "y = 1\nz = 1 / 0\n", None), {}, {})
    assert any(f.filename == "page.md" and f.lineno == 41 for f in __import__("traceback").extract_tb(info.tb))


# --- numbers quoted in prose ------------------------------------------------------------------------


def _plain_block_after(text, anchor):
    """The first plain ``` block after the line that contains ``anchor``."""
    after = text[text.index(anchor):]
    match = re.search(r"^```\s*\n(.*?)^```", after, flags=re.MULTILINE | re.DOTALL)
    return match.group(1).rstrip("\n").splitlines()


# The numbers quoted in prose were made in the TensorFlow mode (the commands' default); they hold on
# JAX and PyTorch too (both passed when this file was ported), but rechecking them there costs about
# 15-30 s of CPU a mode, and test_cross_backend.py already compares the backends' maps.
_QUOTED_ON_TENSORFLOW = pytest.mark.skipif(BACKEND != "tensorflow", reason="the quoted numbers are checked "
                                           "in the TensorFlow modes (the mode that made them)")


@_QUOTED_ON_TENSORFLOW
def test_the_demo_summary_quoted_in_getting_started_is_what_keras_cam_demo_prints(tmp_path):
    """getting-started.md quotes `keras-cam demo --out docs/demo --overwrite`, the defaults otherwise:
    its lines are the summary the command writes now, and so is docs/demo/summary.txt."""
    from keras_cam.demo import load_model
    from keras_cam.demo.run import run_demo

    text = _read("docs/getting-started.md")
    assert "were made by `keras-cam demo --out docs/demo --overwrite`" in text
    quoted = _plain_block_after(text, "were made by `keras-cam demo --out docs/demo --overwrite`")
    with contextlib.redirect_stdout(io.StringIO()):
        _, _, summary = run_demo(out=str(tmp_path), verbose=False)
    lines = summary.rstrip("\n").splitlines()
    assert lines[-len(quoted):] == quoted, "\n".join(["quoted:", *quoted, "the command prints:", *lines])
    assert (ROOT / "docs" / "demo" / "summary.txt").read_text(encoding="utf-8") == summary
    model = load_model()
    assert f"**Model** ({model.count_params():,} weights" in text
    from keras_cam.demo.train import accuracy                 # what `python -m keras_cam.demo.train` prints
    assert f"1,000 images of seed 1 ({100 * accuracy(model):.1f}% for the shipped" in text


def _table_after(text, anchor):
    """``{row name: {column header: cell}}`` of the first Markdown table after ``anchor``."""
    lines = text[text.index(anchor):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


# (page, the sentence that names the command, the layer that command uses)
QUALITY_TABLES = [
    ("README.md", "**Quality on the demo data** (`python bench/bench_quality.py`", None),
    ("docs/metrics.md", "`python bench/bench_quality.py` explains the held-out demo images", None),
    ("docs/metrics.md", "`python bench/bench_quality.py --layer conv3_relu --fast\n--no-timing`", "conv3_relu"),
]
SPOT_ROWS = ("gradcam", "eigencam", "randomcam")          # a class-specific, a class-agnostic method, the floor
SPOT_COLUMNS = {"Avg Drop % ↓": "average_drop", "Incr Conf % ↑": "increase_in_confidence",
                "Pointing % ↑": "pointing_game", "Energy PG % ↑": "energy_pointing_game"}


@_QUOTED_ON_TENSORFLOW
def test_the_quality_tables_quote_what_their_command_prints():
    """Spot check of the quality tables: the cheap columns of a few rows, and the two reference rows,
    recomputed as ``bench/bench_quality.py`` computes them with the settings the prose names."""
    from keras_cam import methods, metrics
    from keras_cam.demo import TARGET_LAYER, load_model, make_dataset

    model = load_model()
    images, labels, boxes = make_dataset(100, seed=1)              # the command's defaults
    right = np.asarray(model.predict(images, verbose=0)).argmax(-1) == labels
    images, labels, boxes = images[right], labels[right].astype(np.int32), boxes[right]
    box_mask = np.zeros(images.shape[:3], np.float32)
    for m, (y0, x0, y1, x1) in zip(box_mask, boxes):
        m[y0:y1, x0:x1] = 1.0
    computed = {}
    stale = []
    for page, anchor, layer in QUALITY_TABLES:
        text = _read(page)
        assert anchor in text, f"{page} no longer names its command as {anchor!r}: update QUALITY_TABLES"
        layer = layer or TARGET_LAYER
        if layer not in computed:
            given = {n: (lambda m, n=n: methods.create(n, m, layer=layer)) for n in SPOT_ROWS}
            given["random maps (reference)"] = np.random.default_rng(0).random(images.shape[:3]).astype(np.float32)
            given["box mask (oracle)"] = box_mask
            table = metrics.evaluate(given, model, images, labels, boxes=boxes, metrics=list(SPOT_COLUMNS.values()))
            computed[layer] = {row["method"]: row for row in table.rows}
        quoted = _table_after(text, anchor)
        for name, row in computed[layer].items():
            for header, metric in SPOT_COLUMNS.items():
                if f"{row[metric]:.1f}" != quoted[name][header]:
                    stale.append(f"{page} ({layer}) {name} {header}: quoted {quoted[name][header]}, "
                                 f"the command gives {row[metric]:.1f}")
    assert not stale, "rerun the quality benchmark and update the tables and their prose:\n" + "\n".join(stale)
