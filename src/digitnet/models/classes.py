"""What a model's outputs mean: the ten digits, and optionally "not a digit" after them.

A model file records its classes as ``metadata["classes"]`` (a list of names, one per output)
only when it has more than the ten digits; files without the entry (every file written before
it, and the seed, mlp and cnn models) have the ten digits as outputs 0-9.
"""

from __future__ import annotations

from collections.abc import Sequence

DIGIT_CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))
NOT_A_DIGIT = "not a digit"
# The reader's outputs: the ten digits, then "not a digit" as the LAST output.
READER_CLASSES: tuple[str, ...] = (*DIGIT_CLASSES, NOT_A_DIGIT)


def not_a_digit_index(classes: object, n_outputs: int) -> int | None:
    """The output that means "not a digit" for a model with ``n_outputs`` outputs whose file
    records ``classes``, or None (no such class, or a record that does not describe these
    outputs: then the outputs are read as digits, as in every file written before)."""
    if not isinstance(classes, Sequence) or isinstance(classes, str):
        return None
    if len(classes) != n_outputs or n_outputs != len(READER_CLASSES):
        return None
    if tuple(classes) != READER_CLASSES:
        return None
    return n_outputs - 1


# Letters that are digits' twins when handwritten or printed (O o D Q for 0; I l i J j for 1;
# Z z for 2; S s for 5; b G for 6; B for 8; g q for 9): the reader neither trains on them as
# non-digits nor is measured refusing them (benchmarks/images.py reports them apart).
TWIN_LETTERS = "ODQoIlijJZzSsbGBgq"
