"""Stage 4, AP-MAE: a ViT masked autoencoder over attention patterns, and what trains it.

- :mod:`apmae.model.net`: the network (patchify, mask, encode, decode, export and load);
- :mod:`apmae.model.patches`: patch geometry of causal images (lower-triangular patches);
- :mod:`apmae.model.scaling`: raw probabilities -> input images (``log_normalize``);
- :mod:`apmae.model.baselines`: the trivial and visible-neighbour reconstructions;
- :mod:`apmae.model.optim` and :mod:`apmae.model.schedules`: parameter groups and the lr schedule.
"""

from apmae.model.net import APMAE, APMAEConfig, masked_error
from apmae.model.scaling import get_scaler, scale

__all__ = ["APMAE", "APMAEConfig", "get_scaler", "masked_error", "scale"]
