"""Model specs: the architectures :func:`keras_kd.models.build` knows, their options, parsing.

A model is named by a *spec* string: an architecture name optionally followed
by ``:`` and comma-separated ``key=value`` options::

    "cnn"   "cnn:width=2"   "mlp:hidden=1200x1200,dropout=0.2"
    "resnet_cifar:depth=20,width=1"   "mobilenet_v2:alpha=0.35"   "resnet50"

:func:`parse_spec` turns one into ``(arch, options)`` with every option of the
architecture present, or a ValueError that names the problem and lists the
valid architectures or options. What each architecture builds is in
:mod:`keras_kd.models` (which re-exports :func:`parse_spec` and
:data:`ARCHITECTURES`); this module knows nothing of Keras.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ARCHITECTURES", "parse_spec", "format_value"]


def _parser(convert, expected):
    """An option parser: ``convert(text)``, or ValueError "expected <expected>"."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise ValueError(f"expected {expected}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        return value
    return parse


_parse_int = _parser(int, "an integer")
_parse_float = _parser(float, "a number")
_parse_int_list = _parser(lambda text: tuple(int(p) for p in text.lower().split("x")),
                          "integers separated by 'x' (e.g. 1200x1200)")


def _rule(ok, text):
    """A check of a parsed option value: raises ValueError(text) unless ok(value)."""
    def check(value):
        if not ok(value):
            raise ValueError(text.format(value=format_value(value)))
    return check


_positive = _rule(lambda v: v > 0, "must be > 0, got {value}")
_dropout_rate = _rule(lambda v: 0.0 <= v < 1.0, "must be in [0, 1), got {value}")
_zero_or_one = _rule(lambda v: v in (0, 1), "must be 0 or 1, got {value}")
_hidden_sizes = _rule(lambda v: v and all(h > 0 for h in v),
                      "every hidden size must be a positive integer, got {value}")
_resnet_depth = _rule(lambda v: v >= 8 and (v - 2) % 6 == 0,
                      "must be of the form 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, "
                      "110, ...), got {value}")


@dataclass(frozen=True)
class _Option:
    parse: Callable[[str], Any]
    default: Any
    check: Callable[[Any], None]
    help: str


_ALPHA = {"alpha": _Option(_parse_float, 1.0, _positive, "width multiplier")}
_OPTIONS: dict = {
    "mlp": {
        "hidden": _Option(_parse_int_list, (1200, 1200), _hidden_sizes,
                          "hidden layer sizes, e.g. 1200x1200"),
        "dropout": _Option(_parse_float, 0.0, _dropout_rate,
                           "dropout rate after each hidden layer"),
    },
    "cnn": {
        "width": _Option(_parse_float, 1.0, _positive, "filter multiplier on 32/64/128"),
        "dropout": _Option(_parse_float, 0.0, _dropout_rate, "dropout rate before the logits"),
        "batchnorm": _Option(_parse_int, 0, _zero_or_one,
                             "1 adds BatchNormalization to each block"),
        "gap": _Option(_parse_int, 0, _zero_or_one,
                       "1 ends in global average pooling instead of Flatten"),
    },
    "resnet_cifar": {
        "depth": _Option(_parse_int, 20, _resnet_depth, "total depth 6n+2"),
        "width": _Option(_parse_float, 1.0, _positive, "filter multiplier on 16/32/64"),
    },
    "resnet50": {}, "resnet101": {}, "resnet152": {},
    "mobilenet_v2": _ALPHA,
    "mobilenet_v3_small": _ALPHA,
}

#: The architecture names :func:`keras_kd.models.build` accepts.
ARCHITECTURES = tuple(_OPTIONS)


def _valid_options_text(arch: str) -> str:
    options = _OPTIONS[arch]
    if not options:
        return f"{arch!r} takes no options"
    listed = ", ".join(
        f"{key} (default {format_value(opt.default)}: {opt.help})"
        for key, opt in options.items()
    )
    return f"valid options for {arch!r}: {listed}"


def format_value(value) -> str:
    """An option value as a spec writes it (``(100, 100)`` → ``"100x100"``)."""
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def parse_spec(spec):
    """Splits a model spec into its architecture name and its full options.

    ``spec`` is ``"arch"`` or ``"arch:key=value,key=value"`` (the name is
    case-insensitive, spaces around tokens are ignored). Values are parsed per
    option: integers (``depth``), numbers (``width``, ``alpha``, ``dropout``)
    or ``AxB...`` integer lists (``hidden``, a tuple).

    Returns ``(arch, options)``: ``arch`` one of :data:`ARCHITECTURES`,
    ``options`` a new dict of **every** option of that architecture, the given
    ones parsed and the others at their defaults (``parse_spec("cnn:width=2")
    == ("cnn", {"width": 2.0, "dropout": 0.0, "batchnorm": 0, "gap": 0})``).
    A bad spec is a ValueError that names the problem and lists the valid
    architectures or options.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"A model spec must be a non-empty string like 'cnn:width=2', "
                         f"got {spec!r}. Valid architectures: {', '.join(ARCHITECTURES)}.")
    arch, sep, rest = spec.strip().partition(":")
    arch = arch.strip().lower()
    if arch not in _OPTIONS:
        raise ValueError(f"Unknown architecture {arch!r} in model spec {spec!r}. "
                         f"Valid architectures: {', '.join(ARCHITECTURES)}.")
    schema = _OPTIONS[arch]
    options = {key: opt.default for key, opt in schema.items()}
    if not sep:
        return arch, options
    seen = set()
    for item in rest.split(","):
        key, eq, text = item.partition("=")
        key, text = key.strip().lower(), text.strip()
        if not eq or not key or not text:
            raise ValueError(f"Malformed option {item.strip()!r} in model spec {spec!r}: "
                             f"expected key=value. {_valid_options_text(arch)}.")
        if key not in schema:
            raise ValueError(f"Unknown option {key!r} for architecture {arch!r} in model "
                             f"spec {spec!r}. {_valid_options_text(arch)}.")
        if key in seen:
            raise ValueError(f"Option {key!r} given twice in model spec {spec!r}.")
        seen.add(key)
        opt = schema[key]
        try:
            value = opt.parse(text)
            opt.check(value)
        except ValueError as err:
            raise ValueError(f"Bad value for option {key!r} of {arch!r} in model spec "
                             f"{spec!r}: {err}. {_valid_options_text(arch)}.") from None
        options[key] = value
    return arch, options
