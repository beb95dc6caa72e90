"""Int8 inference (mambava.core.quantize, the TCN's int8 convolutions) and what `auto` means on each CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambava.core import quantize
from mambava.core.quantize import Int8Matmul, auto_precision, quantize_linears

needs_int8 = pytest.mark.skipif(not quantize.cpu_has_int8_kernels(), reason="no fbgemm int8 kernels on this CPU")


@pytest.mark.parametrize(
    "bf16, int8, allowed, expected",
    [
        (True, True, True, "bf16"),
        (False, True, True, "int8"),
        (False, True, False, "fp32"),
        (False, False, True, "fp32"),
    ],
)
def test_auto_follows_the_cpu(bf16, int8, allowed, expected, monkeypatch):
    """AMX / AVX-512 BF16: bf16; AVX2 without bf16 (Zen 3): int8 where the caller allows it; else fp32."""
    monkeypatch.setattr(quantize, "cpu_has_fast_bf16", lambda: bf16)
    monkeypatch.setattr(quantize, "cpu_has_int8_kernels", lambda: int8)
    assert auto_precision("cpu", int8_allowed=allowed) == expected


@needs_int8
def test_int8_product_is_close_to_fp32():
    torch.manual_seed(0)
    weight, bias, x = torch.randn(96, 256) * 0.05, torch.randn(96), torch.randn(40, 256)
    exact = F.linear(x, weight, bias)
    got = Int8Matmul(weight, bias)(x)
    assert F.cosine_similarity(exact.flatten(), got.flatten(), dim=0) > 0.9995
    assert (got - exact).abs().max() < 0.02 * exact.abs().max()


@needs_int8
def test_a_vit_in_int8_keeps_its_features():
    """The ViT's linear layers in int8: features within cosine 0.999 of fp32 (the bar of docs/benchmarks.md)."""
    from mambava.backbone import FeatureExtractor, ViTConfig, ViTEncoder

    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=64, patch_size=16, embed_dim=512, depth=2, num_heads=8, name="w512"))
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    fp32 = FeatureExtractor(encoder, precision="fp32").features_from_resized(images)
    int8 = FeatureExtractor(encoder, precision="int8")
    assert int8.precision == "int8" and int8.runner is not int8.encoder
    cosine = F.cosine_similarity(fp32, int8.features_from_resized(images), dim=1)
    assert cosine.min() > 0.999
    # auto: int8 only for a ViT wide enough to gain from it, and never where bf16 runs in hardware
    narrow = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=2, name="w64"))
    assert FeatureExtractor(narrow, precision="auto").precision in ("fp32", "bf16")
    assert FeatureExtractor(encoder, precision="auto").precision == auto_precision("cpu")


@needs_int8
@pytest.mark.parametrize("dilation", [1, 3])
def test_int8_causal_conv_equals_the_weight_normed_conv(dilation):
    from mambava.temporal.tcn import Int8CausalConv, WNConv1d

    torch.manual_seed(dilation)
    conv = WNConv1d(48, 32, kernel_size=5, dilation=dilation).eval()
    x = torch.randn(3, 48, 70)
    with torch.no_grad():
        exact, got = conv(x), Int8CausalConv(conv)(x)
    assert got.shape == exact.shape
    assert F.cosine_similarity(exact.flatten(), got.flatten(), dim=0) > 0.9995
    # causal up to the activations' quantisation scale, which is taken over a block of frames: changing later
    # frames moves the first frame's output by a rounding step at most, never by what they hold
    with torch.no_grad():
        shifted = x.clone()
        shifted[:, :, 1:] += 1.0
        moved = (Int8CausalConv(conv)(shifted)[:, :, 0] - got[:, :, 0]).abs().max()
    assert moved < 0.05 * got[:, :, 0].abs().max()


@needs_int8
def test_mamba_va_with_an_int8_tcn_stays_within_1e2():
    from mambava.temporal import MambaVA, MambaVAConfig
    from mambava.temporal.tcn import Int8CausalConv, quantize_tcn

    torch.manual_seed(0)
    model = MambaVA(MambaVAConfig(input_dim=64, tcn_channels=(64, 48, 32), d_model=32, n_layers=2, head_hidden=16))
    model.eval()
    x = torch.randn(2, 120, 64)
    quantized = quantize_tcn(model)
    with torch.no_grad():
        exact, got = model(x), quantized(x)
    assert sum(isinstance(m, Int8CausalConv) for m in quantized.modules()) == 3 * 2 + 2  # two convs a block, 1x1s
    assert (got - exact).abs().max() < 1e-2
    assert not any(isinstance(m, Int8CausalConv) for m in model.modules())  # the model itself is untouched


def test_int8_is_refused_on_a_gpu_device():
    from mambava.backbone.extractor import resolve_precision
    from mambava.core.errors import MambavaError

    with pytest.raises(MambavaError, match="int8 runs on the CPU"):
        resolve_precision("int8", "cuda")
    from mambava.training.evaluate import _runner

    with pytest.raises(MambavaError, match="int8 runs on the CPU"):  # evaluate --precision int8, the same check
        _runner(torch.nn.Linear(4, 4), torch.device("cuda"), "int8")
    assert quantize_linears(torch.nn.Sequential(torch.nn.Linear(4, 4))) is not None
