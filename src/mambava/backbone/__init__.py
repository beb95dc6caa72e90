"""The visual backbone: an MAE ViT encoder whose CLS token (after the final norm) is the per-frame feature.

    from mambava.backbone import load_encoder, preprocess, FeatureExtractor
    encoder = load_encoder("mae_pretrain_vit_large.pth")     # size inferred from the tensors
    feats = FeatureExtractor(encoder, device="cpu").features(crops)   # uint8 (N, H, W, 3) RGB -> (N, 1024)

- `vit.py`: the configuration (presets), the ViT with timm's parameter names, MAE's position embedding,
  `ViTEncoder.save` (the mambava format).
- `weights.py`: the checkpoint formats (facebookresearch/mae, timm, Hugging Face ViTMAE, mambava) read into
  timm names, and `load_encoder`.
- `extractor.py`: the reference's preprocessing (PIL bicubic to 224, face mean/std) and `FeatureExtractor`.
- `finetune.py`: partial-freeze fine-tuning and optional MAE pretraining on Lightning; imported on its own
  (`mambava.backbone.finetune`), so loading an encoder never imports Lightning.
"""

from mambava.backbone.extractor import (
    FeatureExtractor,
    autocast_context,
    bf16_supported,
    normalize,
    preprocess,
    resize_crop,
    resize_crops,
    resolve_precision,
)
from mambava.backbone.vit import (
    ENCODER_FORMAT,
    FACE_MEAN,
    FACE_STD,
    PRESETS,
    Attention,
    Block,
    Mlp,
    PatchEmbed,
    ViTConfig,
    ViTEncoder,
    resample_pos_embed,
    sincos_pos_embed,
    vit_config,
)
from mambava.backbone.weights import (
    LoadReport,
    build_encoder,
    hf_to_timm,
    infer_config,
    load_encoder,
    read_checkpoint,
    read_state_dict,
)

__all__ = [
    "FACE_MEAN",
    "FACE_STD",
    "ENCODER_FORMAT",
    "PRESETS",
    "Attention",
    "Block",
    "FeatureExtractor",
    "build_encoder",
    "LoadReport",
    "Mlp",
    "PatchEmbed",
    "ViTConfig",
    "ViTEncoder",
    "autocast_context",
    "bf16_supported",
    "hf_to_timm",
    "infer_config",
    "load_encoder",
    "normalize",
    "preprocess",
    "read_checkpoint",
    "read_state_dict",
    "resample_pos_embed",
    "resize_crop",
    "resize_crops",
    "resolve_precision",
    "sincos_pos_embed",
    "vit_config",
]
