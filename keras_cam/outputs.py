"""Which of a model's outputs is explained: one rule for single, list and dict outputs.

A model returns one tensor, a list of tensors or a dict of tensors. Keras
flattens a dict by its sorted keys (``model.outputs`` and
``model.output_names`` follow that order), while the dict a model returns
keeps the order it was built with. So an output is never taken by the
position of a dict's values: :class:`OutputSpec` resolves ``output=`` once
into a key (dicts) or an index (lists), and :meth:`OutputSpec.select` takes
exactly that output from whatever the model returns. Explainers, targets,
metrics and the audit all select through it.

``output=`` may be None (the only output; for several, the first in Keras's
flat order), an index into that order, a dict key, or an output's name in
``model.output_names``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _flat_keys(structure):
    """The keys of a dict in Keras's flat order (sorted), or None for other structures."""
    return sorted(structure) if isinstance(structure, dict) else None


def _static_structure(model):
    """``model.output`` (a tensor, list or dict) where the model has a static graph, else None."""
    try:
        return model.output
    except (AttributeError, ValueError, RuntimeError):
        return None


def _check_index(output, count, model, listing):
    if not 0 <= output < count:
        raise ValueError(
            f"`output={output}` is out of range: model {getattr(model, 'name', model)!r} has {count} "
            f"output{'s' if count != 1 else ''} ({listing}); pass an index from 0 to {count - 1} or a name."
        )


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """A resolved ``output=``: the dict ``key``, or the list ``index``, or the only output.

    Build it with :func:`resolve`.
    """

    key: object = None
    index: int | None = None
    requested: object = None
    choices: tuple = ()  # the outputs that ``output=None`` chose the first of (several), else ()

    def implicit_note(self):
        """For error messages: a sentence naming the outputs when ``output=None`` chose the first
        of several (the likely cause of a score that fits nothing), else ``""``."""
        if self.requested is not None or len(self.choices) < 2:
            return ""
        return (f" The model has {len(self.choices)} outputs ({', '.join(map(repr, self.choices))}), and "
                f"without `output=` the first, {self.choices[0]!r}, is explained: pass `output=` to choose.")

    def select(self, outputs):
        """The selected output of what the model returned (a tensor, list or dict)."""
        if isinstance(outputs, dict):
            if self.key is not None:
                if self.key not in outputs:
                    raise ValueError(f"`output={self.requested!r}` is not a key of the model's outputs {sorted(outputs)}.")
                return outputs[self.key]
            keys = sorted(outputs)
            if isinstance(self.requested, str):
                raise ValueError(f"`output={self.requested!r}` is not a key of the model's outputs {keys}.")
            index = self.index or 0
            _check_index(index, len(keys), "the model", ", ".join(map(repr, keys)))
            return outputs[keys[index]]
        if isinstance(outputs, (list, tuple)):
            index = self.index or 0
            _check_index(index, len(outputs), "the model", f"{len(outputs)} in a list")
            return outputs[index]
        if self.index not in (None, 0) or self.key is not None:
            raise ValueError(f"`output={self.requested!r}` selects one of several outputs, but the model returns one tensor.")
        return outputs

    def symbolic(self, model):
        """The symbolic Keras tensor of the selected output (from ``model.outputs``, in
        Keras's flat order), or None (no static graph)."""
        structure = _static_structure(model)
        try:
            flat = list(model.outputs or ())
        except (AttributeError, ValueError, RuntimeError):
            flat = []
        if structure is None or not flat:
            return None
        keys = _flat_keys(structure)
        if keys is not None and self.key in keys:
            index = keys.index(self.key)
        else:
            index = self.index or 0
        return flat[index] if index < len(flat) else None


def alone(model, spec):
    """``model`` itself where it has one output (or no static graph), else a model of the output
    ``spec`` selects alone: the same layers and weights, for code that scores one classifier."""
    structure = _static_structure(model)
    if not isinstance(structure, (list, tuple, dict)) or len(structure) < 2:
        return model
    from keras_cam._compat import keras

    return keras.Model(model.inputs, spec.select(structure))


def resolve(model, output=None) -> OutputSpec:
    """Check ``output=`` against the model's outputs and resolve it (see the module docstring).

    Raises:
        TypeError: for an ``output`` that is neither None, an int nor a string.
        ValueError: for an index out of range or an unknown name; the message lists the outputs.
    """
    if isinstance(output, (bool, np.bool_)) or not (output is None or isinstance(output, (int, np.integer, str))):
        raise TypeError(f"`output` must be None, an int index or an output name; received {output!r}.")
    if isinstance(output, np.integer):
        output = int(output)
    structure = _static_structure(model)
    names = list(getattr(model, "output_names", None) or [])
    if structure is None:  # no static graph: checked when the model returns its outputs
        return OutputSpec(key=output if isinstance(output, str) else None,
                          index=output if isinstance(output, int) else None, requested=output)
    keys = _flat_keys(structure)
    count = len(keys) if keys is not None else (len(structure) if isinstance(structure, (list, tuple)) else 1)
    listing = ", ".join(f"{i}: {k!r}" for i, k in enumerate(keys if keys is not None else names or range(count)))
    if keys is not None:
        if output is None:
            return OutputSpec(key=keys[0], requested=output, choices=tuple(keys))
        if isinstance(output, str):
            if output in structure:
                return OutputSpec(key=output, requested=output)
            if output in names and len(names) == len(keys):
                return OutputSpec(key=keys[names.index(output)], requested=output)
            raise ValueError(f"`output={output!r}` is not an output of model {model.name!r}; its outputs are {listing}.")
        _check_index(output, count, model, listing)
        return OutputSpec(key=keys[output], requested=output)
    if output is None:
        return OutputSpec(index=0 if count > 1 else None, requested=output,
                          choices=tuple(names) if count > 1 and len(names) == count else tuple(range(count)))
    if isinstance(output, str):
        if output in names:
            return OutputSpec(index=names.index(output) if count > 1 else None, requested=output)
        raise ValueError(f"`output={output!r}` is not an output of model {model.name!r}; its outputs are {listing}.")
    _check_index(output, count, model, listing)
    return OutputSpec(index=output if count > 1 else None, requested=output)
