"""The documentation covers the public API, and the README stays a front page.

Static checks, read from the source with ``ast`` (no TensorFlow import, no
MkDocs run: ``.ci/run`` builds the site with ``--strict`` after the tests):

- every name of ``keras_cam.__all__`` and every public function and class of
  ``keras_cam.targets`` and ``keras_cam.metrics`` is in the API reference
  (a ``::: keras_cam.NAME`` block, or its module's block);
- each has a docstring, with an ``Args:`` section that names every argument
  it takes of its own (``**kwargs`` included), so that the generated
  reference describes them all;
- every notebook is a page of the site;
- the README is at most 300 lines and keeps the set-up commands of ``.ci/run``.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_cam"
REFERENCE = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs" / "reference").glob("*.md")))
DIRECTIVES = set(re.findall(r"^::: (\S+)", REFERENCE, flags=re.MULTILINE))
DOCUMENTED_MODULES = ("keras_cam.targets", "keras_cam.metrics")


def _module_file(module):
    path = ROOT / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _tree(module):
    return ast.parse(_module_file(module).read_text(encoding="utf-8"))


def _exports():
    """``{public name: defining module or None}`` of the package's lazy ``_EXPORTS`` table
    (``__all__`` is its sorted keys)."""
    for node in _tree("keras_cam").body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("keras_cam/__init__.py defines no _EXPORTS table")


def _all_names():
    return sorted(_exports())


def _definition(module, name):
    """The ``def``/``class`` node of ``name`` in ``module``, following ``from x import name``
    (the module's own tree when ``name`` is a submodule)."""
    if _module_file(f"{module}.{name}").exists():
        return _tree(f"{module}.{name}")
    if module == "keras_cam" and _exports().get(name):
        return _definition(_exports()[name], name)
    for node in _tree(module).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return node
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            original = next(a.name for a in node.names if (a.asname or a.name) == name)
            target = node.module if node.level == 0 else None
            if target and target.startswith("keras_cam") and _module_file(target).exists():
                return _definition(target, original)
    return None


def _public(module):
    """The module's ``__all__`` when it has one (a package re-exporting its submodules), else its
    public functions and classes."""
    for node in _tree(module).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return [ast.literal_eval(e) for e in node.value.elts]
    return [n.name for n in _tree(module).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]


PUBLIC = [("keras_cam", n) for n in _all_names()] + [(m, n) for m in DOCUMENTED_MODULES for n in _public(m)]


def _own_arguments(node):
    """Argument names a docstring should describe: a function's, or a class's ``__init__``'s."""
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is None:
            return []
        node = init
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
    return [n for n in names if n not in ("self", "cls")]


@pytest.mark.parametrize("module,name", PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_public_name_is_in_the_reference(module, name):
    if module in DOCUMENTED_MODULES:
        assert module in DIRECTIVES, f"docs/reference/ has no '::: {module}' block"
    else:
        assert f"{module}.{name}" in DIRECTIVES or module + "." + name in DOCUMENTED_MODULES, (
            f"{module}.{name} is public but docs/reference/*.md has no '::: {module}.{name}' block"
        )


@pytest.mark.parametrize("module,name", PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_public_name_has_a_docstring_with_its_arguments(module, name):
    node = _definition(module, name)
    assert node is not None, f"no definition of {module}.{name} found"
    doc = ast.get_docstring(node)
    assert doc, f"{module}.{name} has no docstring"
    arguments = [] if isinstance(node, ast.Module) else _own_arguments(node)
    if arguments:
        section = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)+)", doc, re.MULTILINE)
        assert section, f"{module}.{name} takes {arguments} but its docstring has no 'Args:' section"
        described = set(re.findall(r"^[ \t]{4}\**(\w+)(?: \([^)]*\))?:", section.group(1), re.MULTILINE))
        missing = [a for a in arguments if a not in described]
        assert not missing, f"{module}.{name}: the 'Args:' section does not describe {missing}"


def test_every_notebook_is_a_page():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{notebook.name}" in nav, f"{notebook.name} is not in the mkdocs.yml nav"


def test_readme_is_a_front_page_with_the_ci_set_up():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    assert "mkdocs build --strict" in readme and "mkdocs serve" in readme
    # CI runs the README's test command itself: the make targets, no pip line of its own.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make install-test" in ci and "make test" in ci
    assert not re.search(r"pip install[^\n]*(tensorflow|tf-keras|keras-hub)", ci)
    assert "`make install-test test`" in readme and 'pip install -e ".[cpu]" && keras-cam demo' in readme


def test_lazy_exports_and_static_imports_agree():
    """``_EXPORTS`` (what ``keras_cam.<name>`` imports at run time) and the
    ``TYPE_CHECKING`` imports (what IDEs and the API reference read) name the same
    objects in the same modules."""
    static = {}
    for node in _tree("keras_cam").body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                for alias in imp.names:
                    static[alias.asname or alias.name] = None if imp.module == "keras_cam" else imp.module
    assert static == _exports()
