"""The slow marks (tests/slow.py): one method per code path, and every mark names what covers it."""

import pytest

import conftest
import slow
from keras_cam import methods


def test_one_method_per_code_path_covers_every_path():
    first = slow.one_per_path()
    paths = {slow._path(name) for name in methods.names()}
    assert sorted(map(slow._path, first)) == sorted(paths)  # each path once
    assert first[0] == "gradcam" and "scorecam" in first and "lime" in first


def test_each_method_marks_the_methods_of_a_path_already_taken():
    names = methods.names(attention=False) + ["guidedbackprop"]
    params = slow.each_method(names)
    kept = [p for p in params if isinstance(p, str)]
    marked = [p for p in params if not isinstance(p, str)]
    assert kept == slow.one_per_path(names[:-1]) + ["guidedbackprop"]  # unregistered names are kept
    assert len(kept) + len(marked) == len(names)
    for param in marked:
        (mark,) = param.marks
        rep = mark.kwargs["covered_by"].split("'")[1]  # "this test on 'rep', and ..."
        assert slow._path(rep) == slow._path(param.values[0]) and rep in kept


class _Item:
    def __init__(self, covered_by):
        self.nodeid = "tests/test_x.py::test_y"
        self._mark = pytest.mark.slow(covered_by=covered_by).mark

    def get_closest_marker(self, name):
        return self._mark if name == "slow" else None


@pytest.mark.parametrize("covered_by,error", [
    (slow.CROSS_BACKEND, None),
    ("this test on 'gradcam', and " + slow.CROSS_BACKEND, None),
    ("test_cross_backend.py::test_that_does_not_exist", "does not exist"),
    ("test_no_such_file.py::test_every_case_agrees_with_tensorflow", "does not exist"),
    ("covered elsewhere", "must say which case covers it"),
])
def test_a_slow_mark_must_name_an_existing_case(covered_by, error):
    if error is None:
        conftest._check_covered_by(_Item(covered_by))
    else:
        with pytest.raises(pytest.UsageError, match=error):
            conftest._check_covered_by(_Item(covered_by))
