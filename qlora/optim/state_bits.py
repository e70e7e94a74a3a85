"""Width of the stored Adam moments (a config choice: kept apart so configs need not import the optimizer)."""

import enum


class StateBits(enum.Enum):
    """Width of the stored Adam moments."""

    BITS_32 = 32
    BITS_8 = 8
