"""Load a released MLM-filter checkpoint (LLaVA-Unified layout) into LlavaModel."""

from __future__ import annotations


class ExportError(Exception):
    """A user-facing failure (bad input, missing files, hub unreachable): printed without a traceback."""


def load_checkpoint(source: str, vision_tower: str | None, revision: str | None):
    raise ExportError("loading real checkpoints is not implemented yet")
