"""ViT-L/16 feature extraction images/s, fp32 vs. bf16 autocast (see mambava.benchmarks.backbone)."""

from mambava.benchmarks.backbone import main

if __name__ == "__main__":
    main()
