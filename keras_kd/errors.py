"""One-line error texts: TensorFlow's long messages shortened for the user."""

import re

__all__ = ["short"]


def short(err, limit=300):
    """A TensorFlow error's message on one line, without the op prefix, at most ``limit`` chars."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", " ".join(str(err).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"
