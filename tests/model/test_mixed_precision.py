"""AP-MAE under bfloat16 autocast: float32 loss and encodings, float32 attention on CPU, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apmae.model.net import APMAE, attend, masked_error
from apmae.model.scaling import scale

from .conftest import causal_patterns, small_config


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_masked_error_sums_in_float32_whatever_the_prediction_dtype():
    # 1 image, 3 patches of 2 x 2 pixels; patch 2 is a diagonal patch with one invalid pixel.
    pred = torch.tensor([[[0.5, 0.25, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0], [1.0, 9.0, 1.0, 1.0]]]).bfloat16()
    target = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]]).bfloat16()
    valid = torch.tensor([[True] * 4, [True] * 4, [True, False, True, True]])
    loss = masked_error(pred, target, mask, valid).mse
    # masked valid pixels: 0.25 + 0.0625 + 1 + 0 (patch 0), 1 + 1 + 1 (patch 2, pixel 1 invalid)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx((1.3125 + 3.0) / 7, rel=1e-7)


def test_masked_error_counts_pixels_exactly_beyond_bfloat16_precision():
    # 257 masked pixels: a bfloat16 count rounds to 256, a float32 one does not.
    pred = torch.ones(1, 257, 1, dtype=torch.bfloat16)
    err = masked_error(pred, torch.zeros(1, 257, 1, dtype=torch.bfloat16), torch.ones(1, 257, dtype=torch.bfloat16),
                       torch.ones(257, 1, dtype=torch.bool))
    assert err.sse.dtype == err.count.dtype == torch.float32
    assert (float(err.sse), float(err.count), float(err.mse)) == (257.0, 257.0, 1.0)


def test_cpu_attention_under_autocast_runs_in_float32_and_returns_the_autocast_dtype():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 19, 16, generator=gen).bfloat16().requires_grad_() for _ in range(3))
    with _bf16():
        out = attend(q, k, v, dropout_p=0.0)
    assert out.dtype == torch.bfloat16
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16()
    assert torch.equal(out, expected)
    assert not torch.equal(expected, F.scaled_dot_product_attention(q, k, v))  # the bf16 kernel differs
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))
    plain = torch.randn(1, 2, 5, 8, generator=gen)
    assert torch.equal(attend(plain, plain, plain, dropout_p=0.0), F.scaled_dot_product_attention(plain, plain, plain))


def test_bfloat16_loss_is_float32_and_close_to_the_float32_loss(small_model: APMAE):
    images = scale(causal_patterns(4, 64), "log_normalize")
    noise = torch.rand(4, small_model.num_patches, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = small_model(images, noise=noise)
        with _bf16():
            mixed = small_model(images, noise=noise)
    assert mixed.pred.dtype == torch.bfloat16 and mixed.loss.dtype == torch.float32
    assert torch.equal(mixed.mask.float(), full.mask)
    assert float(mixed.loss) == pytest.approx(float(full.loss), rel=2e-2)


def test_encode_under_autocast_gives_float32_numpy_ready_encodings(small_model: APMAE):
    images = scale(causal_patterns(3, 64), "log_normalize")
    with torch.no_grad():
        full = small_model.encode(images)
        with _bf16():
            mixed = small_model.encode(images)
    assert mixed.cls.dtype == mixed.mean.dtype == torch.float32
    assert isinstance(mixed.mean.numpy(), np.ndarray)
    for a, b in ((mixed.cls, full.cls), (mixed.mean, full.mean)):
        assert F.cosine_similarity(a, b, dim=1).min() > 0.99


def test_a_net_trained_under_autocast_exports_float32_and_reloads_exactly(tmp_path):
    torch.manual_seed(0)
    model = APMAE(small_config())
    images = scale(causal_patterns(4, 64), "log_normalize")
    for _ in range(2):  # plain SGD steps (torch.optim's first step imports torch._dynamo: seconds)
        model.zero_grad()
        with _bf16():
            loss = model(images).loss
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= 0.01 * param.grad
    model.save(tmp_path / "net")
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(tmp_path / "net" / "model.safetensors")).values()} == {torch.float32}
    loaded = APMAE.load(tmp_path / "net").eval()
    model.eval()
    noise = torch.rand(4, model.num_patches, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), _bf16():
        assert torch.equal(loaded(images, noise=noise).pred, model(images, noise=noise).pred)
        assert torch.equal(loaded.encode(images).cls, model.encode(images).cls)
