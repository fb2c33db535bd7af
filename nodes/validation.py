"""Widget checks a node must do itself.

ComfyUI checks a widget's ``min``/``max`` and a combo's options only for inputs its node's ``validate_inputs`` does
not take, and for none at all when ``validate_inputs`` takes ``**kwargs`` (ComfyUI 0.3.64, ``execution.py``
``validate_inputs``: ``if x not in validate_function_inputs and not validate_has_kwargs``). A prompt posted to
``/prompt`` can hold any value, so a node with such a ``validate_inputs`` re-checks its widgets here, against its
own schema, before anything runs.
"""

from __future__ import annotations

import math

from comfy_api.latest import io


def widget_errors(schema: io.Schema, values: dict) -> list[str]:
    """Messages for the widget values outside the schema's range or options (linked inputs are not in ``values``)."""
    errors = []
    for spec in schema.inputs:
        value = values.get(spec.id)
        if value is None:
            continue
        if isinstance(spec, (io.Int.Input, io.Float.Input)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                errors.append(f"{spec.id} must be a number, not {value!r}.")
            elif not math.isfinite(value):
                errors.append(f"{spec.id} is {value}; it must be a finite number.")
            elif (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
                errors.append(f"{spec.id}={value} is outside {spec.min}..{spec.max}; set it within that range.")
        elif isinstance(spec, io.Combo.Input) and value not in spec.options:
            shown = ", ".join(map(str, spec.options[:12])) + (", ..." if len(spec.options) > 12 else "")
            errors.append(f"{spec.id} must be one of {shown}; got {value!r}.")
    return errors
