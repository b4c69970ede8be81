"""apmae: attention-pattern masked autoencoders for code LLMs.

The core package is plain PyTorch: it never imports Lightning (except
``apmae.cli``), so its pieces can be used from a notebook or another project.
"""

__version__ = "0.1.0"
