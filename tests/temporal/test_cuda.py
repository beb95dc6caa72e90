"""CUDA-only checks (marker `cuda`; `mambava bench device` runs them on a GPU): the model, its step and the
backbone give on the GPU what they give on the CPU. Skipped where no CUDA device is present."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _model():
    from mambava.temporal import MambaVA, MambaVAConfig

    torch.manual_seed(0)
    return MambaVA(MambaVAConfig(input_dim=64, tcn_channels=(64, 32), d_model=32, n_layers=2, head_hidden=16)).eval()


def test_the_model_on_cuda_equals_the_cpu():  # pragma: no cover - runs only with CUDA
    model = _model()
    x = torch.randn(2, 200, 64)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda(), scan="chunked").cpu()
    assert (gpu - cpu).abs().max() < 1e-4


def test_the_step_on_cuda_equals_the_full_pass():  # pragma: no cover - runs only with CUDA
    model = _model().cuda()
    x = torch.randn(1, 50, 64, device="cuda")
    with torch.no_grad():
        full = model(x)[0]
        state = model.init_state(1, device="cuda")
        stepped = torch.stack([model.step(x[:, t], state)[0][0] for t in range(50)])
    assert (stepped - full).abs().max() < 1e-4


def test_backbone_bf16_on_cuda_keeps_the_features():  # pragma: no cover - runs only with CUDA
    from mambava.backbone import FeatureExtractor, ViTConfig, ViTEncoder

    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=64, patch_size=16, embed_dim=256, depth=2, num_heads=4, name="t"))
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    fp32 = FeatureExtractor(encoder, precision="fp32").features_from_resized(images)
    gpu = FeatureExtractor(encoder, device="cuda", precision="bf16").features_from_resized(images).cpu()
    assert torch.nn.functional.cosine_similarity(fp32, gpu, dim=1).min() > 0.99
