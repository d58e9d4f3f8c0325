"""Import open_clip without the optional integrations it loads eagerly when they are installed.

open_clip imports timm (timm vision towers), transformers (Hugging Face text towers) and
huggingface_hub (hub downloads) at import time whenever they are installed. This project uses none
of them (its CLIP architectures are open_clip's own, and nothing downloads), yet together they
cost about 1 CPU-second of every process that loads the model: a quarter of the import time of a
one-image ``unclip generate`` (measured with ``python -X importtime``, docs/benchmark.md).

Importing this module imports open_clip with those three hidden, then unhides them: they stay
importable by anything else in the process (the benchmark's diffusers needs transformers); only
open_clip itself runs without its Hugging Face and timm model types. Imported by
:mod:`models.clip` before it imports open_clip.
"""

from __future__ import annotations

import importlib
import sys

OPTIONAL = ("timm", "transformers", "huggingface_hub")


def import_open_clip() -> None:
    """Import open_clip (once) with :data:`OPTIONAL` hidden, unless one of them is loaded already."""
    if "open_clip" in sys.modules or any(name in sys.modules for name in OPTIONAL):
        return
    for name in OPTIONAL:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        importlib.import_module("open_clip")
    finally:
        for name in OPTIONAL:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


import_open_clip()
