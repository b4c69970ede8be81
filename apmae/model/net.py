"""AP-MAE: a ViT masked autoencoder over causal attention patterns.

Glossary: B batch, S tokens (image side), P patch side, G = S / P grid side,
Q = G (G + 1) / 2 lower-triangular patches (diagonal included), P2 = P * P
pixels per patch, Nv visible patches per image, De / Dd encoder / decoder width.

Only the Q lower-triangular patches are tokens: the upper patches of a causal
attention pattern are structurally zero, so they never enter the encoder or
the decoder and the model outputs exact zeros there.

Typical use::

    model = APMAE.from_preset("tiny")
    out = model(images)                 # images (B, 1, S, S), already scaled
    out.loss.backward()
    full = model.reconstruct(images, out)
    emb = model.encode(images).cls      # (B, De)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from apmae.common.triangle import lower_triangle, triangle_size
from apmae.model.export import (CONFIG_FILE, REEXPORT, WEIGHTS_FILE, ExportError, read_export, state_misfits,
                                write_export)
from apmae.model.optim import weight_decay_groups
from apmae.model.patches import grid_side, patchify, unpatchify, valid_pixels

POS_EMBEDS = ("learned", "sincos")

PRESETS: dict[str, dict[str, Any]] = {
    # The published AP-MAE: 8 x 8 grid of 32-pixel patches, ~127 M parameters.
    # Attention heads are 64 wide, so the encoder's attention is 16 x 64 = 1024
    # wide inside a 512-wide residual stream, as in the released checkpoints.
    "paper": dict(
        seq_len=256, patch_size=32, mask_ratio=0.5,
        enc_dim=512, enc_depth=24, enc_heads=16, enc_mlp=2048, enc_head_dim=64,
        dec_dim=512, dec_depth=8, dec_heads=8, dec_mlp=2048, dec_head_dim=64,
        dropout=0.0, pos_embed="learned",
    ),
    # Same geometry as the paper (36 tokens on S = 256), small widths: trains on a CPU in minutes.
    "tiny": dict(
        seq_len=256, patch_size=32, mask_ratio=0.5,
        enc_dim=128, enc_depth=4, enc_heads=4, enc_mlp=512, enc_head_dim=None,
        dec_dim=64, dec_depth=2, dec_heads=4, dec_mlp=256, dec_head_dim=None,
        dropout=0.0, pos_embed="learned",
    ),
}


@dataclass(frozen=True)
class APMAEConfig:
    """Architecture of an AP-MAE.

    The defaults are the paper's sizes with heads of width ``dim // heads``;
    ``APMAEConfig.preset("paper")`` is the published architecture (64-wide heads).
    """

    seq_len: int = 256  # S, side of the (S, S) attention image
    patch_size: int = 32  # P, side of a square patch; must divide seq_len
    mask_ratio: float = 0.5  # fraction of the Q triangular patches hidden from the encoder
    enc_dim: int = 512  # De, encoder residual width
    enc_depth: int = 24  # number of encoder blocks
    enc_heads: int = 16  # encoder attention heads
    enc_mlp: int = 2048  # hidden width of the encoder MLPs
    dec_dim: int = 512  # Dd, decoder residual width
    dec_depth: int = 8  # number of decoder blocks
    dec_heads: int = 8  # decoder attention heads
    dec_mlp: int = 2048  # hidden width of the decoder MLPs
    dropout: float = 0.0  # dropout on attention weights and residual branches
    pos_embed: str = "learned"  # "learned" or "sincos" (fixed 2-D sine-cosine) position embedding
    enc_head_dim: int | None = None  # width of one encoder head; None = enc_dim // enc_heads
    dec_head_dim: int | None = None  # width of one decoder head; None = dec_dim // dec_heads

    def __post_init__(self) -> None:
        grid = grid_side(self.seq_len, self.patch_size)
        for name in ("enc_dim", "enc_depth", "enc_heads", "enc_mlp", "dec_dim", "dec_depth", "dec_heads", "dec_mlp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for part in ("enc", "dec"):
            dim, heads, head_dim = (getattr(self, f"{part}_{k}") for k in ("dim", "heads", "head_dim"))
            if head_dim is None and dim % heads:
                raise ValueError(
                    f"{part}_heads ({heads}) must divide {part}_dim ({dim}); "
                    f"change one of them or set {part}_head_dim explicitly"
                )
            if head_dim is not None and head_dim <= 0:
                raise ValueError(f"{part}_head_dim must be positive or None, got {head_dim}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be strictly between 0 and 1, got {self.mask_ratio}")
        num_visible(triangle_size(grid), self.mask_ratio)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}")
        if self.pos_embed == "sincos" and (self.enc_dim % 4 or self.dec_dim % 4):
            raise ValueError("pos_embed='sincos' needs enc_dim and dec_dim divisible by 4; change the widths")

    @property
    def grid(self) -> int:
        """G, patches along one side."""
        return self.seq_len // self.patch_size

    @property
    def num_patches(self) -> int:
        """Q, the number of triangular patches (tokens)."""
        return triangle_size(self.grid)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "APMAEConfig":
        """A named preset (``paper`` or ``tiny``) with some fields replaced."""
        if name not in PRESETS:
            raise ValueError(f"unknown AP-MAE preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "APMAEConfig":
        """Build from a plain dict (e.g. ``config.json``); unknown keys raise ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown APMAEConfig fields {unknown}; valid fields are {sorted(known)}")
        return cls(**values)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Nv, patches left visible out of Q at ``mask_ratio`` (as in MAE: floor of Q (1 - r))."""
    keep = int(num_patches * (1.0 - mask_ratio))
    if keep < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} leaves no visible patch out of {num_patches}; "
            "lower mask_ratio or use a smaller patch_size"
        )
    if keep >= num_patches:
        raise ValueError(f"mask_ratio {mask_ratio} masks no patch out of {num_patches}; raise mask_ratio")
    return keep


@dataclass
class APMAEOutput:
    """What one forward pass returns; enough to rebuild the full image."""

    loss: torch.Tensor  # () MSE over the masked patches' valid pixels (:func:`masked_error`)
    pred: torch.Tensor  # (B, Q, P2) decoder output for every triangular patch
    mask: torch.Tensor  # (B, Q) 1 = masked, 0 = visible
    patches: torch.Tensor  # (B, Q, P2) the patchified input, what ``pred`` reconstructs
    valid: torch.Tensor  # (Q, P2) bool, False for strictly-upper pixels of diagonal patches


@dataclass
class APMAEEncoding:
    """Unmasked encoder summary of each image, used by probes and clustering."""

    cls: torch.Tensor  # (B, De) float32 final CLS token
    mean: torch.Tensor  # (B, De) float32 mean of the final patch tokens
    tokens: torch.Tensor  # (B, Q, De) float32 final token of every triangular patch, in patch order


@dataclass
class MaskedError:
    """Squared error over the valid pixels of masked patches, and how many pixels that is.

    Sums rather than a mean, so batches of different sizes (or DDP ranks) add up exactly.
    """

    sse: torch.Tensor  # () over the batch, or (B,) per image
    count: torch.Tensor  # pixels in ``sse``, same shape

    @property
    def mse(self) -> torch.Tensor:
        return self.sse / self.count.clamp_min(1.0)


def masked_error(
    pred: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, *, per_image: bool = False
) -> MaskedError:
    """The error AP-MAE's loss is: ``pred`` (B or 1, Q, P2) against ``patches`` (B, Q, P2).

    Only pixels of masked patches (``mask`` (B, Q), 1 = masked) that lie on or
    below the causal diagonal (``valid`` (Q, P2)) count. Summed in float32
    whatever the inputs' dtype: under autocast ``pred`` is bfloat16, whose 8-bit mantissa
    would round sums over ~10^5 pixels.
    """
    weight = mask.float().unsqueeze(-1) * valid.float()  # (B, Q, P2)
    squared = (pred.float() - patches.float()).square() * weight  # (B, Q, P2)
    if per_image:
        return MaskedError(sse=squared.sum((1, 2)), count=weight.sum((1, 2)))
    return MaskedError(sse=squared.sum(), count=weight.sum())


def sincos_2d(rows: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding (MAE): half the width encodes the row, half the column."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        angle = pos.to(torch.float64).unsqueeze(1) * omega  # (Q, dim/4)
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    return torch.cat([one_axis(rows), one_axis(cols)], dim=1).float()  # (Q, dim)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float) -> torch.Tensor:
    """Fused attention (SDPA) of q, k, v (B, h, n, d) -> (B, h, n, d) in q's dtype.

    On a CPU, bfloat16/float16 inputs (autocast) are attended in float32: the CPU
    flash kernel's backward is about 3x slower in bfloat16 than in float32 at
    AP-MAE's 19-37 tokens (torch 2.13), and the softmax is exact in float32. Autocast
    is paused there, or it would cast the inputs straight back. Other devices keep
    their reduced-precision fused kernels.
    """
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), dropout_p=dropout_p)
    return out.to(q.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection and SDPA."""

    def __init__(self, *, dim: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = attend(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, h, n, d)
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, *, dim: int, heads: int, head_dim: int, mlp: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim=dim, heads=heads, head_dim=head_dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _blocks(config: APMAEConfig, part: str) -> nn.Sequential:
    dim, heads, head_dim, mlp, depth = (
        getattr(config, f"{part}_{k}") for k in ("dim", "heads", "head_dim", "mlp", "depth")
    )
    head_dim = head_dim or dim // heads
    return nn.Sequential(
        *(Block(dim=dim, heads=heads, head_dim=head_dim, mlp=mlp, dropout=config.dropout) for _ in range(depth))
    )


class APMAE(nn.Module):
    """Masked autoencoder whose tokens are the lower-triangular patches of an attention image."""

    # parameters that get no weight decay besides biases and norm weights
    NO_DECAY = ("cls_token", "mask_token", "enc_pos_embed", "dec_pos_embed")

    def __init__(self, config: APMAEConfig) -> None:
        super().__init__()
        if not isinstance(config, APMAEConfig):
            raise ValueError(f"config must be an APMAEConfig, got {type(config).__name__}; use APMAE.from_preset")
        self.config = config
        p2 = config.patch_size**2
        self.register_buffer("valid", valid_pixels(config.grid, config.patch_size), persistent=False)
        # encoder
        self.patch_embed = nn.Linear(p2, config.enc_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.enc_dim))
        self._position_embedding("enc_pos_embed", config.enc_dim)
        self.encoder = _blocks(config, "enc")
        self.enc_norm = nn.LayerNorm(config.enc_dim, eps=1e-6)
        # decoder
        self.dec_embed = nn.Linear(config.enc_dim, config.dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.dec_dim))
        self._position_embedding("dec_pos_embed", config.dec_dim)
        self.decoder = _blocks(config, "dec")
        self.dec_norm = nn.LayerNorm(config.dec_dim, eps=1e-6)
        self.dec_pred = nn.Linear(config.dec_dim, p2)
        self._init_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "APMAE":
        """A fresh model from a named preset, e.g. ``APMAE.from_preset("tiny", seq_len=64, patch_size=8)``."""
        return cls(APMAEConfig.preset(name, **overrides))

    @property
    def num_patches(self) -> int:
        """Q, tokens per image."""
        return self.config.num_patches

    def _position_embedding(self, name: str, dim: int) -> None:
        rows, cols = (torch.from_numpy(a.copy()) for a in lower_triangle(self.config.grid))
        if self.config.pos_embed == "learned":
            self.register_parameter(name, nn.Parameter(torch.zeros(1, len(rows), dim)))
        else:  # fixed, so it is rebuilt on load rather than stored
            self.register_buffer(name, sincos_2d(rows, cols, dim).unsqueeze(0), persistent=False)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for name in self.NO_DECAY:
            param = getattr(self, name)
            if isinstance(param, nn.Parameter):
                nn.init.trunc_normal_(param, std=0.02, a=-0.04, b=0.04)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> (B, Q, P2), checking S against the config."""
        if images.ndim != 4 or images.shape[1] != 1 or tuple(images.shape[2:]) != (self.config.seq_len,) * 2:
            s = self.config.seq_len
            raise ValueError(
                f"images must be (B, 1, {s}, {s}) for this model, got shape {tuple(images.shape)}; "
                f"crop or pad the patterns to {s} tokens, or build the model with seq_len={images.shape[-1]}"
            )
        return patchify(images, self.config.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, Q, P2) -> (B, 1, S, S) with zeros outside the causal triangle."""
        return unpatchify(patches * self.valid.to(patches.dtype), self.config.seq_len, self.config.patch_size)

    def random_mask(
        self, batch: int, *, noise: torch.Tensor | None, mask_ratio: float | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image masking by argsort of noise: the Nv lowest-noise patches stay visible.

        Returns mask (B, Q) float with 1 = masked, and ids_keep (B, Nv) visible patch indices.
        """
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"mask_ratio must be strictly between 0 and 1, got {ratio}")
        keep = num_visible(self.num_patches, ratio)
        if noise is None:
            noise = torch.rand(batch, self.num_patches, device=device)
        elif tuple(noise.shape) != (batch, self.num_patches):
            raise ValueError(f"noise must be (B, Q) = ({batch}, {self.num_patches}), got {tuple(noise.shape)}")
        ids_keep = torch.argsort(noise.to(device), dim=1)[:, :keep]  # (B, Nv)
        mask = torch.ones(batch, self.num_patches, device=device)
        return mask.scatter_(1, ids_keep, 0.0), ids_keep

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedded patches (B, n, De) -> CLS + encoded patches (B, 1 + n, De)."""
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.enc_norm(self.encoder(torch.cat([cls, tokens], dim=1)))

    def forward_encoder(self, patches: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Embed only the visible patches and encode them: (B, Q, P2) -> (B, 1 + Nv, De)."""
        visible = torch.take_along_dim(patches, ids_keep.unsqueeze(-1), dim=1)  # (B, Nv, P2)
        pos = self.enc_pos_embed[0][ids_keep]  # (B, Nv, De)
        return self._encode_tokens(self.patch_embed(visible) + pos)

    def forward_decoder(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Visible latents + mask tokens at their grid positions -> pixels of every patch (B, Q, P2)."""
        x = self.dec_embed(latent)  # (B, 1 + Nv, Dd)
        batch, dim = x.shape[0], x.shape[-1]
        # Start from mask tokens everywhere and write the visible tokens into their own slots,
        # so the decoder always sees what the encoder saw.
        # Under autocast x is in the autocast dtype while parameters stay float32: scatter and
        # cat need one dtype, so the mask token and position embedding follow x's.
        slots = ids_keep.unsqueeze(-1).expand(-1, -1, dim)  # (B, Nv, Dd)
        mask_tokens = self.mask_token.to(x.dtype).expand(batch, self.num_patches, dim)  # (B, Q, Dd)
        tokens = mask_tokens.scatter(1, slots, x[:, 1:])  # (B, Q, Dd)
        tokens = torch.cat([x[:, :1], tokens + self.dec_pos_embed.to(x.dtype)], dim=1)  # (B, 1 + Q, Dd)
        return self.dec_pred(self.dec_norm(self.decoder(tokens))[:, 1:])

    def forward(
        self, images: torch.Tensor, noise: torch.Tensor | None = None, mask_ratio: float | None = None
    ) -> APMAEOutput:
        """Mask, encode, decode and score one batch of (B, 1, S, S) scaled attention images.

        ``noise`` (B, Q) fixes the mask (lowest values stay visible); ``mask_ratio``
        overrides the config's for this call.
        """
        patches = self.patchify(images)  # (B, Q, P2)
        mask, ids_keep = self.random_mask(patches.shape[0], noise=noise, mask_ratio=mask_ratio, device=images.device)
        pred = self.forward_decoder(self.forward_encoder(patches, ids_keep), ids_keep)
        mask = mask.to(pred.dtype)
        loss = masked_error(pred, patches, mask, self.valid).mse
        return APMAEOutput(loss=loss, pred=pred, mask=mask, patches=patches, valid=self.valid)

    def reconstruct(self, images: torch.Tensor, out: APMAEOutput) -> torch.Tensor:
        """Full (B, 1, S, S) image: visible patches from ``images``, masked ones from ``out.pred``."""
        patches = self.patchify(images)
        if patches.shape != out.pred.shape:
            raise ValueError(f"images give patches {tuple(patches.shape)} but out.pred is {tuple(out.pred.shape)}")
        merged = torch.where(out.mask.bool().unsqueeze(-1), out.pred, patches)  # (B, Q, P2)
        return self.unpatchify(merged)

    def encode(self, images: torch.Tensor) -> APMAEEncoding:
        """Encode every triangular patch (no masking): CLS, mean patch embedding and every patch's token, float32."""
        patches = self.patchify(images)
        x = self._encode_tokens(self.patch_embed(patches) + self.enc_pos_embed).float()  # (B, 1 + Q, De)
        # float32 under autocast too: encodings go to numpy / scikit-learn, which have no bfloat16
        return APMAEEncoding(cls=x[:, 0], mean=x[:, 1:].mean(dim=1), tokens=x[:, 1:])

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: decay on matrices only, none on biases, norms, position embeddings, tokens."""
        return weight_decay_groups(self.named_parameters(), weight_decay, no_decay=lambda name: name in self.NO_DECAY)

    def num_parameters(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
        return write_export(directory, asdict(self.config), self.state_dict())

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "APMAE":
        """Rebuild a model saved by :meth:`save`, weights placed on ``map_location``.

        Raises:
            apmae.model.export.ExportError: a missing, truncated, damaged or foreign file, a config
                of a newer apmae, or weights that do not fit the config.
        """
        path = Path(directory)
        config, state = read_export(path, device=str(torch.device(map_location)))
        try:
            model = cls(APMAEConfig.from_dict(config))
        except ValueError as e:
            raise ExportError(f"AP-MAE config {path / CONFIG_FILE} is not one this apmae can build ({e}); "
                              f"a newer apmae may have written it: upgrade apmae, or {REEXPORT}") from e
        misfits = state_misfits(model.state_dict(), state)
        if misfits:
            raise ExportError(f"AP-MAE weights {path / WEIGHTS_FILE} do not fit its {CONFIG_FILE} ({misfits}); "
                              f"{REEXPORT}")
        model.load_state_dict(state)
        return model.to(map_location)
