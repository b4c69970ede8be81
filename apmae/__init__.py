"""apmae: attention-pattern masked autoencoders for code LLMs.

The core package is plain PyTorch: its stages never import Lightning or the Lightning glue
(``datamodules``, ``lit_models``, ``callbacks``), so their pieces can be used from a notebook or
another project, and no two stages import each other. The entry points are the exceptions:
``apmae.cli`` (the LightningCLI) and ``apmae.demo`` (which runs it). ``tests/test_imports.py``
checks both rules.
"""

__version__ = "0.1.0"
