"""The temporal model: exact architecture, reference checkpoints, our checkpoints, causality, precision."""

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambava.core.errors import MambavaError
from mambava.temporal import load_temporal_model
from mambava.temporal.mamba import Mamba, MambaEncoder
from mambava.temporal.mamba_va import MambaVA, MambaVAConfig
from mambava.temporal.ops import selective_scan_ref
from mambava.temporal.tcn import TCN

SMALL = dict(
    input_dim=24,
    tcn_channels=(24, 16, 16),
    kernel_size=3,
    d_model=16,
    n_layers=2,
    d_state=4,
    dt_rank="auto",
    head_hidden=8,
)


# ------------------------------------------------------------------------------------------------------------
# The authors' model, rebuilt here the way their code builds it (FreedomPuppy77/Charon VA/model/*.py): old-style
# torch.nn.utils.weight_norm, TemporalBlock.net holding its layers a second time, pad-both-sides-then-chomp,
# InstanceNorm1d over a (batch, T, 256) tensor, mamba_ssm's Mamba parameter names in (batch, D, T) layout.
# ------------------------------------------------------------------------------------------------------------


class _Chomp(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        return x[:, :, : -self.size].contiguous()


class _RefBlock(nn.Module):
    def __init__(self, n_in, n_out, k, dilation, dropout):
        super().__init__()
        pad = (k - 1) * dilation
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.conv1 = nn.utils.weight_norm(nn.Conv1d(n_in, n_out, k, padding=pad, dilation=dilation))
            self.conv2 = nn.utils.weight_norm(nn.Conv1d(n_out, n_out, k, padding=pad, dilation=dilation))
        self.chomp1, self.chomp2 = _Chomp(pad), _Chomp(pad)
        self.relu1, self.relu2, self.relu = nn.PReLU(), nn.PReLU(), nn.PReLU()
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.net = nn.Sequential(
            self.conv1, self.chomp1, self.relu1, self.dropout1, self.conv2, self.chomp2, self.relu2, self.dropout2
        )
        self.downsample = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else None

    def forward(self, x):
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(self.net(x) + res)


class _RefTCN(nn.Module):
    def __init__(self, n_in, channels, k, dropout):
        super().__init__()
        self.network = nn.Sequential(
            *[_RefBlock(n_in if i == 0 else channels[i - 1], c, k, 2**i, dropout) for i, c in enumerate(channels)]
        )

    def forward(self, x):
        return self.network(x)


class _RefMamba(nn.Module):
    def __init__(self, d_model, d_state, d_conv, expand):
        super().__init__()
        d_inner, self.dt_rank, self.d_state = expand * d_model, math.ceil(d_model / 16), d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.randn(d_inner, d_state) * 0.5)
        self.D = nn.Parameter(torch.randn(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, hidden):  # mamba_ssm's slow path: (batch, T, d_model), channels-first inside
        T = hidden.shape[1]
        xz = (hidden @ self.in_proj.weight.t()).transpose(1, 2)  # (b, 2D, T)
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :T])
        x_dbl = self.x_proj(x.transpose(1, 2))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = dt @ self.dt_proj.weight.t()
        y = selective_scan_ref(
            x.transpose(1, 2),
            dt,
            -torch.exp(self.A_log),
            B,
            C,
            self.D,
            z.transpose(1, 2),
            self.dt_proj.bias,
            delta_softplus=True,
        )
        return self.out_proj(y)


class _RefMambaBlock(nn.Module):
    def __init__(self, dim, n_layers, d_state, d_conv, expand):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Sequential(_RefMamba(dim, d_state, d_conv, expand), nn.LayerNorm(dim)) for _ in range(n_layers)]
        )
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        for layer in self.layers:
            x = layer[1](layer[0](x) + x)
        return self.proj(x)


class _RefEncoder(nn.Module):
    def __init__(self, dim, n_layers, d_state, d_conv, expand):
        super().__init__()
        self.mamba = _RefMambaBlock(dim, n_layers, d_state, d_conv, expand)
        self.norm_in = nn.InstanceNorm1d(dim)
        self.adaptor = nn.Sequential(nn.LayerNorm(dim), nn.Dropout(0.1))

    def forward(self, x):  # x (b, C, T)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # InstanceNorm1d(256) given (b, T, 256), as the reference
            return self.mamba(self.norm_in(x.permute(0, 2, 1)))


class _RefModel(nn.Module):
    def __init__(self, c: MambaVAConfig):
        super().__init__()
        self.temporal = _RefTCN(c.input_dim, c.tcn_channels, c.kernel_size, c.dropout)
        self.mamba = _RefEncoder(c.d_model, c.n_layers, c.d_state, c.d_conv, c.expand)
        self.dual_reg = nn.Sequential(
            nn.Linear(c.d_model, c.head_hidden), nn.ReLU(), nn.Linear(c.head_hidden, c.n_outputs)
        )

    def forward(self, x):
        return self.dual_reg(self.mamba(self.temporal(x.transpose(1, 2))))


def _reference_model(config, seed=0):
    torch.manual_seed(seed)
    ref = _RefModel(config).eval()
    with torch.no_grad():  # perturb everything so that no parameter can be silently left at its init
        for name, p in ref.named_parameters():
            p.add_(torch.randn_like(p) * (0.05 if "weight_g" not in name else 0.0))
            if name.endswith(("relu.weight", "relu1.weight", "relu2.weight")):
                p.uniform_(0.05, 0.4)
    return ref


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------------------------------------------------


def test_paper_configuration_has_the_reference_parameter_count():
    model = MambaVA(MambaVAConfig())
    assert model.parameter_counts() == {
        "temporal": 66_203_148,
        "mamba": 919_296,
        "head": 33_154,
        "total": 67_155_598,
    }
    assert sum(p.numel() for p in model.parameters()) == 67_155_598
    # the paper's values are the defaults
    c = model.config
    assert (c.input_dim, c.tcn_channels, c.kernel_size, c.dropout) == (1024, (1024, 768, 512, 256), 15, 0.3)
    assert (c.d_model, c.n_layers, c.d_state, c.d_conv, c.expand, c.resolved_dt_rank) == (256, 4, 8, 4, 1, 16)
    assert model.temporal.receptive_field == 421
    x = torch.randn(2, 12, 1024)
    with torch.no_grad():
        y = model.eval()(x)
    assert y.shape == (2, 12, 2) and torch.isfinite(y).all()


def test_reference_init_quirks():
    torch.manual_seed(0)
    model = MambaVA(MambaVAConfig())
    mamba = model.mamba.mamba.layers[0][0]
    assert abs(mamba.A_log.std().item() - 0.01) < 0.002 and abs(mamba.A_log.mean().item()) < 0.002
    assert abs(mamba.dt_proj.weight.std().item() - 0.02) < 0.003
    assert abs(mamba.dt_proj.bias.std().item() - 0.02) < 0.005
    assert torch.all(mamba.D == 1) and torch.all(mamba.conv1d.bias == 0)
    assert abs(mamba.conv1d.weight.std().item() - 1 / math.sqrt(256 * 4)) < 0.003  # kaiming fan_out, linear
    bound = math.sqrt(6 / (256 + 256))  # xavier-uniform
    assert mamba.out_proj.weight.abs().max() <= bound
    block0, block1 = model.temporal.network[0], model.temporal.network[1]
    assert block0.downsample is None
    assert abs(block1.downsample.weight.std().item() - 0.01) < 0.001
    v = block0.conv1.weight_v  # Conv1d's default init survives (the reference's normal_(0, 0.01) is a no-op)
    assert v.abs().max() <= 1 / math.sqrt(1024 * 15) + 1e-7
    assert torch.allclose(block0.conv1.weight_g.flatten(), v.norm(dim=(1, 2)))
    assert not any(p.requires_grad for p in model.mamba.adaptor.parameters())  # unused in the reference


def test_building_blocks_alone():
    tcn = TCN(24, (16, 8), kernel_size=3, dropout=0.0)
    assert tcn(torch.randn(2, 10, 24)).shape == (2, 10, 8)
    enc = MambaEncoder(d_model=8, n_layers=2, d_state=4, d_conv=4, expand=2, dt_rank="auto", scan="chunked")
    assert enc(torch.randn(2, 10, 8)).shape == (2, 10, 8)
    layer = Mamba(d_model=8, d_state=4)
    assert layer(torch.randn(3, 5, 8)).shape == (3, 5, 8)


@pytest.mark.parametrize("config", [MambaVAConfig(**SMALL), MambaVAConfig()], ids=["small", "paper"])
def test_causal(config):
    torch.manual_seed(1)
    model = MambaVA(config).eval()
    T, t = 48, 20
    x = torch.randn(2, T, config.input_dim)
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn(2, T - t - 1, config.input_dim) * 3
    with torch.no_grad():
        y, y2 = model(x), model(x2)
    assert torch.allclose(y[:, : t + 1], y2[:, : t + 1], rtol=0, atol=1e-6)
    assert (y[:, t + 1 :] - y2[:, t + 1 :]).abs().max() > 1e-3


def test_loads_reference_state_dict_and_reproduces_reference_outputs(tmp_path):
    config = MambaVAConfig(**SMALL, dropout=0.0)
    ref = _reference_model(config)
    state = {"module." + k: v for k, v in ref.state_dict().items()}  # saved from a DDP-wrapped model
    assert any(".net.0.weight_v" in k for k in state)  # the reference's duplicate keys are really there
    path = tmp_path / "ckpt_epoch_22_iter_78.pt"
    torch.save(state, path)

    model = MambaVA.load_reference(path)
    assert model.config.architecture() == config.architecture()  # inferred from the tensor shapes
    x = torch.randn(3, 40, config.input_dim)
    with torch.no_grad():
        expected = ref(x)
        assert _rel(model.eval()(x), expected) <= 1e-5
        assert _rel(load_temporal_model(path).model.eval()(x), expected) <= 1e-5
        other = MambaVA(config)
        report = other.load_weights(path)
        assert report.ok and any(".net.4." in k for k in report.dropped)
        assert _rel(other.eval()(x), expected) <= 1e-5


def test_reference_keys_reported_by_name(tmp_path):
    config = MambaVAConfig(**SMALL)
    state = _reference_model(config).state_dict()
    del state["mamba.mamba.layers.1.0.A_log"]
    state["mamba.mamba.layers.1.0.extra_param"] = torch.zeros(3)
    model = MambaVA(config)
    with pytest.raises(MambavaError) as error:
        model.load_reference_state_dict(state)
    assert "mamba.mamba.layers.1.0.A_log" in str(error.value)
    assert "mamba.mamba.layers.1.0.extra_param" in str(error.value)
    report = model.load_reference_state_dict(state, strict=False)
    assert report.missing == ["mamba.mamba.layers.1.0.A_log"]
    assert report.unexpected == ["mamba.mamba.layers.1.0.extra_param"]
    state["dual_reg.0.weight"] = torch.zeros(5, 5)
    with pytest.raises(MambavaError, match=r"dual_reg\.0\.weight \(5, 5\)"):
        model.load_reference_state_dict(state, strict=False)


def test_paper_size_reference_checkpoint_loads(tmp_path):
    config = MambaVAConfig()
    ref = _RefModel(config)
    path = tmp_path / "paper.pth"
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, path)
    model = load_temporal_model(path).model
    assert model.config.architecture() == config.architecture()
    ours, theirs = model.state_dict(), ref.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_our_checkpoint_roundtrip_and_config_mismatch(tmp_path):
    config = MambaVAConfig(**SMALL)
    torch.manual_seed(3)
    model = MambaVA(config).eval()
    path = model.save(tmp_path / "model.safetensors")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves nothing behind
    x = torch.randn(2, 30, config.input_dim)
    loaded = MambaVA.load(path)
    assert loaded.config == config
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
        assert torch.equal(load_temporal_model(path).model.eval()(x), model(x))
    # loading into a model that differs only in runtime fields is fine
    MambaVA(MambaVAConfig(**{**SMALL, "scan": "reference", "dropout": 0.1})).load_weights(path)
    other = MambaVAConfig(**{**SMALL, "d_state": 8, "n_layers": 3})
    with pytest.raises(MambavaError) as error:
        MambaVA.load(path, config=other)
    message = str(error.value)
    assert str(path) in message and "d_state: 4 vs 8" in message and "n_layers: 2 vs 3" in message
    with pytest.raises(MambavaError, match="d_state"):
        MambaVA(other).load_weights(path)
    with pytest.raises(MambavaError, match="no such checkpoint"):
        MambaVA.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MambavaError, match="junk.pt"):
        load_temporal_model(junk)


def test_config_dict_roundtrip_and_validation():
    config = MambaVAConfig(**SMALL)
    assert MambaVAConfig.from_dict(config.to_dict()) == config
    assert MambaVAConfig.from_dict(MambaVAConfig().to_dict()) == MambaVAConfig()
    with pytest.raises(MambavaError, match="bogus"):
        MambaVAConfig.from_dict({"bogus": 1})
    with pytest.raises(MambavaError, match="d_model"):
        MambaVAConfig(d_model=128)
    with pytest.raises(MambavaError, match="scan"):
        MambaVAConfig(scan="fast")


def test_fast_scan_model_matches_reference_scan_with_gradients():
    config = MambaVAConfig(**SMALL, dropout=0.0)
    torch.manual_seed(4)
    model = MambaVA(config)
    x = torch.randn(2, 70, config.input_dim)
    results = {}
    for scan in ("chunked", "reference"):
        model.zero_grad()
        y = model(x, scan=scan)
        (y.square().mean() + y[..., 0].mean()).backward()
        results[scan] = (y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (y_fast, g_fast), (y_ref, g_ref) = results["chunked"], results["reference"]
    assert _rel(y_fast, y_ref) <= 1e-5
    assert set(g_fast) == set(g_ref) and len(g_ref) > 30
    for name in g_ref:
        assert _rel(g_fast[name], g_ref[name]) <= 1e-4, name


@pytest.mark.parametrize("seed", [2, 5])
def test_bf16_autocast_close_to_fp32(seed):
    """Relative error ||y_bf16 - y_fp32|| / ||y_fp32|| <= 1e-2 (paper config; the TCN runs in bf16). Where the
    CPU emulates bf16 (tens of times slower than fp32) the same check runs on fewer frames."""
    from mambava.core.quantize import cpu_has_fast_bf16

    torch.manual_seed(seed)
    model = MambaVA(MambaVAConfig()).eval()
    x = torch.randn(2, 64 if cpu_has_fast_bf16() else 12, 1024)
    with torch.no_grad():
        y32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = model(x)
    assert y16.dtype == torch.float32
    assert float((y16 - y32).norm() / y32.norm()) <= 1e-2


def test_tcn_kernel_cache_follows_the_weights():
    """Without grad the weight-normed kernel is kept in the dtype the conv runs in (bf16 under autocast), and
    recomputed when g or v change (an in-place update, a load) or the mode is set (a fused optimizer step counts
    no version): outputs bit-identical to an uncached pass; with grad it is never cached, so the gradient
    reaches g and v."""
    torch.manual_seed(0)
    tcn = TCN(input_dim=16, channels=(24, 8), kernel_size=3, dropout=0.0).eval()
    x = torch.randn(2, 20, 16)

    def uncached():
        for block in tcn.network:
            block.conv1._kernel_cache = block.conv2._kernel_cache = None
        return tcn(x)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = tcn(x)
        conv = tcn.network[0].conv1
        assert conv._kernel_cache[1].dtype == torch.bfloat16 and torch.equal(tcn(x), first)
        conv.weight_g.mul_(1.5)  # in place, as an optimizer step
        changed = tcn(x)
        assert not torch.equal(changed, first) and torch.equal(changed, uncached())
    with torch.no_grad():
        tcn.load_state_dict({k: v * 0.9 for k, v in tcn.state_dict().items()})
        assert torch.equal(tcn(x), uncached()) and conv._kernel_cache[1].dtype == torch.float32
    tcn.train()
    tcn(x).square().sum().backward()
    assert conv.weight_g.grad is not None and conv.weight_v.grad.abs().sum() > 0
    # a fused optimizer updates the weights without counting a version: the mode change drops the cache
    torch.optim.AdamW(tcn.parameters(), lr=0.1, fused=True).step()
    tcn.eval()
    with torch.no_grad():
        assert torch.equal(tcn(x), uncached())


def test_bench_command_lists_and_runs_benchmarks(capsys):
    from typer.testing import CliRunner

    from mambava.cli import app

    result = CliRunner().invoke(app, ["bench"])
    assert result.exit_code == 0 and "temporal" in result.output and "stream" in result.output
    result = CliRunner().invoke(app, ["bench", "no_such_benchmark"])
    assert result.exit_code != 0
    from mambava.benchmarks import stream, temporal

    assert temporal.main(["--tiny", "--quiet", "--batch", "2", "--frames", "12", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| inference B=2 T=12 | chunked scan, fp32 |" in out and "rel. diff. to baseline" in out
    assert stream.main(["--tiny", "--window", "20", "--frames", "5", "--window-frames", "1"]) == 0
    assert "step(): one frame" in capsys.readouterr().out
