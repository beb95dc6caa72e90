"""Benchmark of the temporal model on CPU: the fast path against the sequential-scan baseline, in one run.

    mambava bench temporal
    mambava bench temporal --tiny           # a small model, seconds: checks that the benchmark runs

Baseline (measured in the same run): the same model, same weights, with the sequential reference scan
(`selective_scan_ref`, mamba_ssm's formulation, autograd through its loop) in fp32 -- what the authors' model
computes on a machine without CUDA. Fast: the chunked scan (mambava.temporal.ops), in fp32, under bf16 autocast
(where the CPU has bf16 in hardware: elsewhere it is emulated and its rows are skipped, saying why) and with the
TCN in int8 (`quantize_tcn`, where fbgemm's kernels run).

Parts: (a) inference B=32, T=300; (b) a training step (forward, CCC loss, backward, AdamW) B=8, T=300;
(c) the Mamba encoder alone: forward B=32, forward+backward B=8; the TCN alone for the breakdown. Each time is
the median of --repeats runs after a warm-up on a short input. Prints frames/s and the ratio to the baseline,
the agreement of the outputs, and with --markdown the table of docs/benchmarks.md. If `mambapy` is installed, one Mamba
layer
is also cross-checked against its parallel scan (outputs and time).

The floor (rows "floor: ..."): what the model's dense products cost alone on this machine, measured in the same
run -- the TCN's convolutions as the GEMMs they are ((B*T, k*C_in) x (k*C_in, C_out) per conv, and the 1x1
downsamples) in bf16 at the machine's bf16 GEMM rate, plus the Mamba encoder's projections on their own shapes
(fp32, as the encoder runs). For the training step: each GEMM's forward and its two backward products (dX, dW).
The bf16 rows print their ratio to it: what the scan, the pointwise ops, casts and copies add.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass, field

import torch

from mambava.benchmarks import bf16_slowdown, describe_cpu
from mambava.core.fileio import atomic_open
from mambava.core.metrics import ccc_loss
from mambava.core.quantize import cpu_has_fast_bf16, cpu_has_int8_kernels
from mambava.temporal.mamba_va import MambaVA, MambaVAConfig
from mambava.temporal.tcn import quantize_tcn

TINY = dict(
    input_dim=64, tcn_channels=(64, 48, 32, 32), kernel_size=5, d_model=32, d_state=8, dt_rank="auto", head_hidden=16
)


@dataclass
class Row:
    part: str
    variant: str
    seconds: float
    frames: int
    baseline: float | None = None  # seconds of this part's baseline
    notes: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def ratio(self) -> float | None:
        return None if self.baseline is None else self.baseline / self.seconds


def _measure(fn, repeats: int, warmup=None) -> float:
    """Median seconds of `repeats` runs of fn, after one run of `warmup` (default: fn)."""
    return _compare({"x": (fn, warmup)}, repeats)["x"]


def _compare(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each of {name: (fn, warmup or None)}, the runs interleaved (a, b, c, a, b, c, ...) so that a
    load that drifts during the run (a shared machine) weighs on every variant alike."""
    for fn, warmup in fns.values():
        (warmup or fn)()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (fn, _) in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _encoder_matmuls(encoder, h):
    """Only the dense products of the encoder's forward, on the shapes they have there."""
    F = torch.nn.functional
    for mamba, _ in encoder.mamba.layers:
        w = mamba.in_proj.weight
        x = F.linear(h, w[: mamba.d_inner])
        F.linear(h, w[mamba.d_inner :])
        dbc = F.linear(x, mamba.x_proj.weight)
        F.linear(dbc[..., : mamba.dt_rank], mamba.dt_proj.weight)
        F.linear(x, mamba.out_proj.weight)
    return encoder.mamba.proj(h)


def _tcn_gemms(model, rows: int, backward: bool = False):
    """A function running the TCN's convolutions as bf16 GEMMs of their shapes on `rows` frames (and, with
    `backward`, the two products of each one's backward pass), and their FLOPs."""
    shapes = []
    for block in model.temporal.network:
        shapes += [(rows, c.in_channels * c.kernel_size, c.out_channels) for c in (block.conv1, block.conv2)]
        if block.downsample is not None:
            shapes.append((rows, block.downsample.in_channels, block.downsample.out_channels))
    # weights (N, K), the layout of a conv's kernel and of F.linear (measured a few % faster here than (K, N))
    mats = [
        (
            torch.randn(m, k, dtype=torch.bfloat16),
            torch.randn(n, k, dtype=torch.bfloat16),
            torch.randn(m, n, dtype=torch.bfloat16) if backward else None,
        )
        for m, k, n in shapes
    ]

    def run():
        for a, w, grad in mats:
            torch.nn.functional.linear(a, w)
            if backward:
                torch.mm(grad, w)  # dX
                torch.mm(grad.t(), a)  # dW

    return run, sum(2 * m * k * n for m, k, n in shapes) * (3 if backward else 1)


def _floor_fn(model, x, backward: bool = False):
    """The floor of the model on input x: its TCN GEMMs in bf16 and its encoder projections (fp32, as run;
    training: fwd and 2 backward products each, the encoder's as 3x its forward's shapes)."""
    gemms, flops = _tcn_gemms(model, x.shape[0] * x.shape[1], backward)
    h = torch.randn(x.shape[0], x.shape[1], model.mamba.mamba.proj.in_features)

    def run():
        with torch.no_grad():
            gemms()
            for _ in range(3 if backward else 1):
                _encoder_matmuls(model.mamba, h)

    return run, flops


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _inference(model, x, scan, bf16):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(x, scan=scan)


def _train_step(model, optimizer, x, target, scan, bf16):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = model(x, scan=scan)
    loss = ccc_loss(y.float(), target)
    loss.backward()
    optimizer.step()
    return loss


FLOOR = "floor: TCN GEMMs bf16 + enc. proj."
INT8 = "chunked scan, int8 TCN"


def _note_floor(bf16: Row, floor: Row, flops: int) -> None:
    floor.notes.append(f"TCN GEMMs at {flops / floor.seconds / 1e9:.0f} GFLOP/s bf16")
    bf16.notes.append(f"{bf16.seconds / floor.seconds:.2f}x the floor")


# One function, ~90 lines, on purpose: every row of the table measured in turn in one place, in the order it
# prints, so that each variant and its baseline are visibly timed alike.
def run(args) -> list[Row]:
    config = MambaVAConfig(**TINY) if args.tiny else MambaVAConfig()
    torch.manual_seed(0)
    model = MambaVA(config)
    rows: list[Row] = []
    B, T, Bt = args.batch, args.frames, args.train_batch
    x = torch.randn(B, T, config.input_dim)
    short = x[:2, :16]
    log = print if not args.quiet else (lambda *a, **k: None)

    # (a) inference --------------------------------------------------------------------------------------------
    model.eval()
    part = f"inference B={B} T={T}"
    log(f"[{part}]")
    variants = {
        "baseline: reference scan, fp32": ("reference", False),
        "chunked scan, fp32": ("chunked", False),
    }
    if args.bf16:
        variants["chunked scan, bf16 autocast"] = ("chunked", True)
    fns = {
        name: (lambda s=scan, b=bf16: _inference(model, x, s, b), lambda s=scan, b=bf16: _inference(model, short, s, b))
        for name, (scan, bf16) in variants.items()
    }
    quantized = quantize_tcn(model) if args.int8 else None
    if quantized is not None:
        fns[INT8] = (
            lambda: _inference(quantized, x, "chunked", False),
            lambda: _inference(quantized, short, "chunked", False),
        )
    if args.bf16:
        floor, flops = _floor_fn(model, x)
        fns[FLOOR] = (floor, None)
    times = _compare(fns, args.repeats)
    base = times["baseline: reference scan, fp32"]
    found = {}
    for name, t in times.items():
        found[name] = Row(part, name, t, B * T, None if name.startswith("baseline") or name == FLOOR else base)
        rows.append(found[name])
        log(f"  {name} {t:.2f} s")
    y_ref = _inference(model, x, "reference", False)
    y32 = _inference(model, x, "chunked", False)
    found["chunked scan, fp32"].notes.append(f"rel. diff. to baseline {_rel(y32, y_ref):.1e}")
    if args.bf16:
        y16 = _inference(model, x, "chunked", True)
        found["chunked scan, bf16 autocast"].notes.append(f"rel. diff. to fp32 {_rel(y16, y32):.1e}")
        _note_floor(found["chunked scan, bf16 autocast"], found[FLOOR], flops)
    if quantized is not None:
        y8 = _inference(quantized, x, "chunked", False)
        found[INT8].notes.append(f"rel. diff. to fp32 {_rel(y8, y32):.1e}; max abs {(y8 - y32).abs().max():.1e}")
        found[INT8].notes.append(f"{found['chunked scan, fp32'].seconds / found[INT8].seconds:.2f}x fp32")

    # TCN alone (the same module in baseline and fast path) -------------------------------------------------------
    part = f"TCN alone, B={B} T={T}"
    log(f"[{part}]")
    with torch.no_grad():  # one run each: this row only explains where the time goes
        t32 = _measure(lambda: model.temporal(x), 1, lambda: model.temporal(short))
        rows.append(Row(part, "fp32 (in both)", t32, B * T))
        if args.bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                t16 = _measure(lambda: model.temporal(x), 1, lambda: model.temporal(short))
            rows.append(Row(part, "bf16 autocast", t16, B * T, t32))
        if quantized is not None:
            t8 = _measure(lambda: quantized.temporal(x), 1, lambda: quantized.temporal(short))
            rows.append(Row(part, "int8 (Int8CausalConv)", t8, B * T, t32))
    log("  " + ", ".join(f"{r.variant} {r.seconds:.2f} s" for r in rows if r.part == part))

    # (c) the Mamba encoder alone --------------------------------------------------------------------------------
    encoder = model.mamba
    h = torch.randn(B, T, config.d_model)
    part = f"Mamba encoder fwd, B={B} T={T}"
    log(f"[{part}]")
    with torch.no_grad():
        fns = {s: (lambda s=s: encoder(h, s), lambda s=s: encoder(h[:2, :16], s)) for s in ("reference", "chunked")}
        fns["matmuls"] = (lambda: _encoder_matmuls(encoder, h), None)
        t = _compare(fns, args.repeats)
        diff = _rel(encoder(h, "chunked"), encoder(h, "reference"))
    base, fast = t["reference"], t["chunked"]
    rows.append(Row(part, "baseline: reference scan", base, B * T))
    rows.append(Row(part, "chunked scan", fast, B * T, base, [f"rel. diff. {diff:.1e}"]))
    rows.append(
        Row(
            part,
            "its matmuls alone (a floor)",
            t["matmuls"],
            B * T,
            base,
            ["in/x/dt/out projections + final Linear, same shapes"],
        )
    )
    log(f"  baseline {base:.3f} s, chunked {fast:.3f} s, matmuls alone {t['matmuls']:.3f} s")

    ht = torch.randn(Bt, T, config.d_model)
    part = f"Mamba encoder fwd+bwd, B={Bt} T={T}"
    log(f"[{part}]")

    def fwd_bwd(scan, inp=ht):
        encoder.zero_grad(set_to_none=True)
        encoder(inp, scan).square().mean().backward()

    t = _compare(
        {s: (lambda s=s: fwd_bwd(s), lambda s=s: fwd_bwd(s, ht[:2, :16])) for s in ("reference", "chunked")},
        args.repeats,
    )
    base, fast = t["reference"], t["chunked"]
    rows.append(Row(part, "baseline: reference scan", base, Bt * T))
    rows.append(Row(part, "chunked scan", fast, Bt * T, base))
    log(f"  baseline {base:.3f} s, chunked {fast:.3f} s")

    # (b) training step -------------------------------------------------------------------------------------------
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=1e-3, fused=True
    )  # as the training module's
    xt = torch.randn(Bt, T, config.input_dim)
    target = torch.rand(Bt, T, 2) * 2 - 1
    part = f"training step B={Bt} T={T}"
    log(f"[{part}]")
    fns = {
        name: (
            lambda s=scan, b=bf16: _train_step(model, optimizer, xt, target, s, b),
            lambda s=scan, b=bf16: _train_step(model, optimizer, xt[:2, :16], target[:2, :16], s, b),
        )
        for name, (scan, bf16) in variants.items()
    }
    if args.bf16:
        floor, flops = _floor_fn(model, xt, backward=True)
        fns[FLOOR] = (floor, None)
    times = _compare(fns, args.repeats)
    base = times["baseline: reference scan, fp32"]
    found = {}
    for name, t in times.items():
        found[name] = Row(part, name, t, Bt * T, None if name.startswith("baseline") or name == FLOOR else base)
        rows.append(found[name])
        log(f"  {name} {t:.2f} s")
    if args.bf16:
        _note_floor(found["chunked scan, bf16 autocast"], found[FLOOR], flops)

    # optional: an independent implementation (mambapy's parallel scan) ----------------------------------------
    rows += _mambapy_cross_check(model, B, Bt, T, args.repeats, log)
    return rows


def _mambapy_cross_check(model, B, Bt, T, repeats, log) -> list[Row]:
    try:
        from mambapy.mamba import MambaBlock, MambaConfig
    except Exception:
        log("[mambapy not installed: `pip install mambapy` adds a cross-check against its parallel scan]")
        return []
    layer = model.mamba.mamba.layers[0][0]
    other = MambaBlock(
        MambaConfig(
            d_model=layer.d_model,
            n_layers=1,
            dt_rank=layer.dt_rank,
            d_state=layer.d_state,
            expand_factor=layer.expand,
            d_conv=layer.d_conv,
            pscan=True,
        )
    )
    other.load_state_dict(layer.state_dict())
    part = f"one Mamba layer fwd, B={B} T={T}"
    log(f"[{part}: mambapy cross-check]")
    h = torch.randn(B, T, layer.d_model)
    with torch.no_grad():
        diff = _rel(layer(h, "chunked"), other(h))
        t = _compare({"other": (lambda: other(h), None), "ours": (lambda: layer(h, "chunked"), None)}, repeats)
        t_other, t_ours = t["other"], t["ours"]
    rows = [
        Row(part, "mambapy (parallel scan)", t_other, B * T),
        Row(part, "ours (chunked scan)", t_ours, B * T, t_other, [f"rel. diff. to mambapy {diff:.1e}"]),
    ]
    hb = torch.randn(Bt, T, layer.d_model)

    def fb(module, *extra):
        module.zero_grad(set_to_none=True)
        module(hb, *extra).square().mean().backward()

    t = _compare({"other": (lambda: fb(other), None), "ours": (lambda: fb(layer, "chunked"), None)}, repeats)
    t_other, t_ours = t["other"], t["ours"]
    part = f"one Mamba layer fwd+bwd, B={Bt} T={T}"
    rows += [
        Row(part, "mambapy (parallel scan)", t_other, Bt * T),
        Row(part, "ours (chunked scan)", t_ours, Bt * T, t_other),
    ]
    return rows


def _header(args) -> str:
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), {describe_cpu()}{load}, "
        f"{'tiny test model' if args.tiny else 'paper configuration (67,155,598 parameters)'}"
    )


def _format_text(rows: list[Row]) -> str:
    lines = [f"{'part':<34} {'variant':<32} {'time':>9} {'frames/s':>10} {'vs base':>8}  notes"]
    for r in rows:
        ratio = f"{r.ratio:.1f}x" if r.ratio is not None else ""
        time_s = f"{r.seconds * 1e3:.0f} ms" if r.seconds < 10 else f"{r.seconds:.1f} s"
        lines.append(f"{r.part:<34} {r.variant:<32} {time_s:>9} {r.fps:>10,.0f} {ratio:>8}  {'; '.join(r.notes)}")
    return "\n".join(lines)


def _format_markdown(rows: list[Row]) -> str:
    lines = ["| part | variant | time | frames/s | vs baseline | notes |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        ratio = f"**{r.ratio:.1f}×**" if r.ratio is not None else "1×" if "baseline" in r.variant else ""
        time_s = f"{r.seconds * 1e3:.0f} ms" if r.seconds < 10 else f"{r.seconds:.1f} s"
        lines.append(f"| {r.part} | {r.variant} | {time_s} | {r.fps:,.0f} | {ratio} | {'; '.join(r.notes)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mambava bench temporal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="inference batch (default 32)")
    parser.add_argument("--frames", type=int, default=300, help="frames per window (default 300)")
    parser.add_argument("--train-batch", type=int, default=8, help="training-step batch (default 8)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement, median (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="a small model and batch: a quick smoke run")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="only the final table")
    parser.add_argument("--force-bf16", action="store_true", help="time the bf16 rows even where bf16 is emulated")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.frames, args.train_batch = min(args.batch, 4), min(args.frames, 40), min(args.train_batch, 2)
        args.repeats = min(args.repeats, 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.bf16 = cpu_has_fast_bf16() or args.force_bf16
    args.int8 = cpu_has_int8_kernels()
    print(f"mambava bench temporal: {_header(args)}")
    if not args.bf16:
        print(
            f"  bf16 rows skipped: emulated on this CPU (no AMX / AVX-512 BF16), a 512x1024 @ 1024x1024 product "
            f"runs {bf16_slowdown():.0f}x slower in bf16 than in fp32 here (--force-bf16 times them anyway)"
        )
    if not args.int8:
        print("  int8 rows skipped: no fbgemm int8 kernels on this CPU")
    rows = run(args)
    print(_format_text(rows))
    if args.markdown:
        print()
        print(_format_markdown(rows))
    if args.json:
        with atomic_open(args.json) as handle:
            json.dump(
                {"header": _header(args), "rows": [dict(r.__dict__, fps=r.fps, ratio=r.ratio) for r in rows]},
                handle,
                indent=1,
            )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
