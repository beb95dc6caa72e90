"""The temporal models: the causal TCN (`tcn`), the Mamba layer and encoder (`mamba`), the selective scan
kernels (`ops`), Mamba-VA itself (`mamba_va`), the other kinds and audio-visual fusion (`models`), and
`load_temporal_model`, the one loader of a checkpoint file."""

from mambava.temporal.mamba_va import MambaVA, MambaVAConfig, MambaVAState

__all__ = ["MambaVA", "MambaVAConfig", "MambaVAState"]
