"""Int8 inference for CPUs without fast bf16, and the CPU facts that choose a precision.

On a CPU with AMX or AVX-512 BF16, bf16 autocast is the fast path. Without them (AMD Zen 3, AVX2 only) bf16 is
emulated and runs ~10-80x slower than fp32, while fbgemm's int8 kernels (AVX2) run a ViT-sized product ~2x
faster than fp32. `quantize_linears` gives a module's nn.Linear layers that path: dynamic quantisation (int8
weights per output channel, activations quantised per batch), PyTorch's own `torch.ao` implementation with
fbgemm; nothing here is written by hand but the dispatch. `Int8Matmul` is the same product for weights that are
not an nn.Linear (the TCN's causal convolutions, as im2col products: `mambava.temporal.tcn`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings

import torch
from torch import nn

from mambava.core.errors import MambavaError

PRECISIONS = ("auto", "bf16", "int8", "fp32")
# "auto" picks int8 for models at least this wide (a ViT's embed_dim, a TCN's input): fbgemm's int8 products
# beat fp32 by ~2x at ViT-B/L sizes on an AVX2 CPU, and gain nothing on the demo's 128-d ViT (bench backbone)
INT8_MIN_WIDTH = 512


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True on a CPU with AMX or AVX-512 BF16 (bf16 matmuls in hardware)."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        with contextlib.suppress(Exception):
            if fn is not None and fn():
                return True
    return False


@functools.lru_cache(maxsize=None)
def cpu_has_int8_kernels() -> bool:
    """True where fbgemm's int8 kernels run (x86 with AVX2; `torch.backends.quantized` lists the engine)."""
    engines = set(torch.backends.quantized.supported_engines)
    capability = ""
    with contextlib.suppress(Exception):
        capability = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", "DEFAULT", ...
    return capability.startswith("AVX") and bool({"fbgemm", "x86"} & engines)


def cpu_description() -> str:
    """The instruction sets that decide the precision, in words (for benchmarks and the demo's report)."""
    if cpu_has_fast_bf16():
        return "bf16 in hardware (AMX or AVX-512 BF16)"
    if cpu_has_int8_kernels():
        return "no bf16 in hardware (emulated: slow); int8 kernels (AVX2)"
    return "no bf16 in hardware, no int8 kernels"


def auto_precision(device: torch.device | str, int8_allowed: bool = True) -> str:
    """What "auto" means on `device`: bf16 where it runs in hardware (CUDA with bf16, AMX, AVX-512 BF16), else
    int8 where fbgemm's kernels run and the caller allows it (inference), else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        if cpu_has_fast_bf16():
            return "bf16"
        if int8_allowed and cpu_has_int8_kernels():
            return "int8"
    return "fp32"


def check_int8_device(device: torch.device | str) -> None:
    """A one-line error where int8 was asked for a device it cannot run on: fbgemm's kernels are the CPU's."""
    device = torch.device(device)
    if device.type != "cpu":
        raise MambavaError(f"precision int8 runs on the CPU (fbgemm); on {device} use bf16 or fp32")


def _quiet_ao():
    """torch.ao prints deprecation notices on every quantised tensor; the API works and is what fbgemm serves."""
    manager = warnings.catch_warnings()
    manager.__enter__()
    warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*")
    warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao.*")
    return manager


def quantize_linears(module: nn.Module) -> nn.Module:
    """A copy of `module` (in eval mode, on the CPU) whose nn.Linear layers run dynamic int8 (fbgemm).

    Args:
        module: any module; its other layers are kept in fp32.

    Returns:
        The quantised copy; `module` itself is unchanged.
    """
    from torch.ao.quantization import quantize_dynamic

    manager = _quiet_ao()
    try:
        model = copy.deepcopy(module).cpu().eval()
        spec = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        return quantize_dynamic(model, spec, dtype=torch.qint8)
    finally:
        manager.__exit__(None, None, None)


class Int8Matmul(nn.Module):
    """x (..., K) @ W.T + b with W (N, K) in int8 (per output channel) and x quantised per call: fbgemm's
    dynamic int8 product, for weights that are not an nn.Linear's."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        manager = _quiet_ao()
        try:
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight.float())
                if bias is not None:
                    linear.bias.copy_(bias.float())
            linear.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            self.linear = DynamicLinear.from_float(linear)
        finally:
            manager.__exit__(None, None, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.float())
