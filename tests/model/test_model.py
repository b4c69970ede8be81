"""AP-MAE forward pass: shapes, masking, what the decoder sees, loss, reconstruction, encodings."""

from __future__ import annotations

import pytest
import torch

from apmae.model.net import APMAE, masked_error, num_visible
from apmae.model.patches import patchify

from .conftest import causal_patterns, small_config


@pytest.mark.parametrize(("seq_len", "patch_size"), [(32, 8), (48, 16), (64, 8), (256, 32)])
def test_shapes_for_several_geometries(seq_len: int, patch_size: int) -> None:
    model = APMAE(small_config(seq_len=seq_len, patch_size=patch_size)).eval()
    grid = seq_len // patch_size
    t, p2 = grid * (grid + 1) // 2, patch_size**2
    images = causal_patterns(3, seq_len)
    out = model(images)
    assert out.loss.shape == ()
    assert out.pred.shape == out.patches.shape == (3, t, p2)
    assert out.mask.shape == (3, t)
    assert out.valid.shape == (t, p2) and out.valid.dtype == torch.bool
    assert torch.equal(out.patches, patchify(images, patch_size))
    assert model.reconstruct(images, out).shape == (3, 1, seq_len, seq_len)
    enc = model.encode(images)
    assert enc.cls.shape == enc.mean.shape == (3, 32)


# 36 patches; MAE keeps floor(36 (1 - r)) visible: 27, 18, 9 and 3 (36 x 0.1 is 3.6 in floats, floored)
@pytest.mark.parametrize(("ratio", "masked"), [(0.25, 9), (0.5, 18), (0.75, 27), (0.9, 33)])
def test_number_of_masked_patches_per_image(small_model: APMAE, ratio: float, masked: int) -> None:
    out = small_model(causal_patterns(4, 64), mask_ratio=ratio)
    assert small_model.num_patches == 36
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    assert out.mask.sum(dim=1).tolist() == [masked] * 4
    assert num_visible(36, ratio) == 36 - masked


def test_fixed_noise_fixes_the_mask(small_model: APMAE) -> None:
    images = causal_patterns(2, 64)
    noise = torch.rand(2, small_model.num_patches, generator=torch.Generator().manual_seed(1))
    a, b = small_model(images, noise=noise), small_model(images, noise=noise)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.pred, b.pred) and a.loss == b.loss
    # the lowest-noise half stays visible
    visible = noise.argsort(dim=1)[:, : num_visible(small_model.num_patches, 0.5)]
    assert torch.equal(a.mask.gather(1, visible), torch.zeros_like(visible, dtype=a.mask.dtype))
    other = small_model(images, noise=torch.rand(2, small_model.num_patches))
    assert not torch.equal(a.mask, other.mask)
    with pytest.raises(ValueError, match="noise must be"):
        small_model(images, noise=torch.rand(2, 5))


def _one_patch(mask_row: torch.Tensor, value: float) -> int:
    return int((mask_row == value).nonzero()[0])


def _blank_decoder_cls(module, args):
    x = args[0]
    return (torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:]], dim=1),)


@pytest.mark.parametrize("blank_cls", [False, True])
def test_visible_pixels_reach_the_masked_predictions(small_model: APMAE, blank_cls: bool) -> None:
    # With the CLS token blanked in the decoder, the visible tokens are the only way for the
    # input to reach the decoder: a decoder that overwrote them with mask tokens fails here.
    handle = small_model.decoder.register_forward_pre_hook(_blank_decoder_cls) if blank_cls else None
    try:
        images = causal_patterns(1, 64)
        noise = torch.rand(1, small_model.num_patches, generator=torch.Generator().manual_seed(2))
        base = small_model(images, noise=noise)
        patches = base.patches.clone()
        patches[0, _one_patch(base.mask[0], 0.0)] += 0.5  # perturb one visible patch
        after = small_model(small_model.unpatchify(patches), noise=noise)
    finally:
        if handle is not None:
            handle.remove()
    assert torch.equal(after.mask, base.mask)
    masked = base.mask[0].bool()
    diff = (after.pred[0, masked] - base.pred[0, masked]).abs().amax(dim=-1)
    assert bool((diff > 1e-6).all()), "a masked patch's prediction ignored the visible patches"


def test_masked_pixels_never_reach_the_model(small_model: APMAE) -> None:
    images = causal_patterns(1, 64)
    noise = torch.rand(1, small_model.num_patches, generator=torch.Generator().manual_seed(3))
    base = small_model(images, noise=noise)
    patches = base.patches.clone()
    patches[0, base.mask[0].bool()] = 7.0
    after = small_model(small_model.unpatchify(patches), noise=noise)
    assert torch.equal(after.pred, base.pred)


def test_decoder_sees_visible_tokens_in_their_slots_and_mask_tokens_elsewhere(small_model: APMAE) -> None:
    images = causal_patterns(2, 64)
    noise = torch.rand(2, small_model.num_patches)
    seen = {}
    handle = small_model.decoder.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    try:
        out = small_model(images, noise=noise)
    finally:
        handle.remove()
    tokens = seen["x"][:, 1:] - small_model.dec_pos_embed  # (B, T, Dd)
    _, ids_keep = small_model.random_mask(2, noise=noise, mask_ratio=None, device=images.device)
    latent = small_model.dec_embed(small_model.forward_encoder(out.patches, ids_keep))[:, 1:]  # (B, N, Dd)
    for b in range(2):
        torch.testing.assert_close(tokens[b, ids_keep[b]], latent[b])
        masked_slots = tokens[b, out.mask[b].bool()]
        torch.testing.assert_close(masked_slots, small_model.mask_token[0].expand_as(masked_slots))


def test_loss_ignores_visible_targets_and_invalid_pixels(small_model: APMAE) -> None:
    out = small_model(causal_patterns(2, 64))
    loss = masked_error(out.pred, out.patches, out.mask, out.valid).mse
    torch.testing.assert_close(loss, out.loss, rtol=0, atol=0)
    visible = out.mask == 0
    patches = out.patches.clone()
    patches[visible] = 123.0  # visible patches' pixels
    patches[:, ~out.valid] = -5.0  # strictly-upper pixels of diagonal patches
    assert masked_error(out.pred, patches, out.mask, out.valid).mse == out.loss
    patches[0, _one_patch(out.mask[0], 1.0), -1] += 1.0  # a masked, valid pixel (bottom-right is always valid)
    assert masked_error(out.pred, patches, out.mask, out.valid).mse != out.loss


def test_loss_agrees_with_a_loop_over_masked_pixels(small_model: APMAE) -> None:
    out = small_model(causal_patterns(2, 64))
    errors = [
        (out.pred[b, t, out.valid[t]] - out.patches[b, t, out.valid[t]]).square()
        for b in range(2) for t in range(small_model.num_patches) if out.mask[b, t] == 1
    ]
    torch.testing.assert_close(out.loss, torch.cat(errors).mean())


def test_reconstruction_is_input_where_visible_prediction_where_masked_zero_above_diagonal(
    small_model: APMAE,
) -> None:
    images = torch.rand(2, 1, 64, 64)  # deliberately non-zero above the diagonal
    out = small_model(images)
    full = small_model.reconstruct(images, out)
    assert torch.equal(full.triu(diagonal=1), torch.zeros_like(full))
    rebuilt = patchify(full, 8)
    valid = out.valid.expand_as(out.pred)
    masked = out.mask.bool().unsqueeze(-1).expand_as(out.pred)
    assert torch.equal(rebuilt[masked & valid], out.pred[masked & valid])
    assert torch.equal(rebuilt[~masked & valid], out.patches[~masked & valid])
    assert bool((out.pred[:, ~out.valid] != 0).any()), "the test needs non-zero raw predictions above the diagonal"


def test_encode_is_unmasked_deterministic_and_per_image(small_model: APMAE) -> None:
    images = causal_patterns(3, 64)
    a, b = small_model.encode(images), small_model.encode(images)
    assert torch.equal(a.cls, b.cls) and torch.equal(a.mean, b.mean)
    single = small_model.encode(images[1:2])
    torch.testing.assert_close(single.cls[0], a.cls[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single.mean[0], a.mean[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a.cls[0], a.cls[1])


def test_sincos_position_embedding_is_fixed_and_distinct() -> None:
    model = APMAE(small_config(pos_embed="sincos"))
    names = {n for n, _ in model.named_parameters()}
    assert "enc_pos_embed" not in names and "dec_pos_embed" not in names
    pos = model.enc_pos_embed[0]  # (T, De)
    assert pos.shape == (model.num_patches, 32)
    assert torch.unique(pos, dim=0).shape[0] == model.num_patches  # every patch gets its own code
    out = model(causal_patterns(2, 64))
    assert torch.isfinite(out.loss)


def test_param_groups_split_decay_from_no_decay(small_model: APMAE) -> None:
    groups = small_model.param_groups(0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(small_model.parameters()))
    name_of = {id(p): n for n, p in small_model.named_parameters()}
    no_decay = {name_of[id(p)] for p in groups[1]["params"]}
    decay = {name_of[id(p)] for p in groups[0]["params"]}
    assert {"cls_token", "mask_token", "enc_pos_embed", "dec_pos_embed", "patch_embed.bias"} <= no_decay
    assert "encoder.0.norm1.weight" in no_decay and "encoder.0.attn.qkv.weight" in decay
    assert all(n.endswith("weight") for n in decay)


def test_wrong_image_size_is_a_clear_error(small_model: APMAE) -> None:
    with pytest.raises(ValueError, match="seq_len=32"):
        small_model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="mask_ratio"):
        small_model(causal_patterns(1, 64), mask_ratio=1.0)


def test_forward_and_backward_under_bfloat16_autocast(small_model: APMAE) -> None:
    """The paper configs train under bf16-mixed: the decoder's scatter once failed on mixed dtypes."""
    from apmae.model.scaling import scale

    model = small_model.train()
    images = scale(causal_patterns(4, 64), "log_normalize")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert out.pred.dtype == torch.bfloat16
    assert torch.isfinite(out.loss)
    out.loss.float().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.mask_token.grad.abs().sum() > 0  # masked slots reach the loss through the mask token
