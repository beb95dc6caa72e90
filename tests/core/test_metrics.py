import numpy as np
import torch
import torchmetrics

from mambava.core.ccc_metric import ConcordanceCCC
from mambava.core.metrics import ccc, ccc_loss, ccc_numpy, va_scores


def _numpy_ccc(x, y):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    sxy = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * sxy / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_ccc_matches_float64_formula_and_torchmetrics():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, size=(500, 2))
    x = 0.7 * y + 0.2 + 0.3 * rng.normal(size=(500, 2))
    ours = ccc(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)).numpy()
    tm = torchmetrics.functional.concordance_corrcoef(
        torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    ).numpy()
    for d in range(2):
        reference = _numpy_ccc(x[:, d], y[:, d])
        assert abs(ours[d] - reference) < 1e-6
        assert abs(ccc_numpy(x[:, d], y[:, d]) - reference) < 1e-12
        # torchmetrics uses sample (n-1) moments: equal to the ABAW formula only up to O(1/N).
        assert abs(tm[d] - reference) < 2.0 / len(x)


def test_masked_frames_do_not_count():
    rng = np.random.default_rng(1)
    target = torch.tensor(rng.uniform(-1, 1, size=(2, 50, 2)), dtype=torch.float32)
    pred = target * 0.5 + 0.1
    garbage_pred = pred.clone()
    target_masked = target.clone()
    target_masked[0, 10:20] = -5.0
    garbage_pred[0, 10:20] = 100.0  # predictions on invalid frames must not matter
    keep = (target_masked != -5).all(-1)
    expected = 2 - sum(_numpy_ccc(pred[..., d][keep].numpy(), target[..., d][keep].numpy()) for d in range(2))
    assert abs(ccc_loss(garbage_pred, target_masked).item() - expected) < 1e-5
    scores = va_scores(garbage_pred.reshape(-1, 2).numpy(), target_masked.reshape(-1, 2).numpy())
    assert abs(scores["p_va"] - (2 - expected) / 2) < 1e-6


def test_streaming_metric_equals_concatenated_formula():
    rng = np.random.default_rng(2)
    chunks = [rng.uniform(-1, 1, size=(n, 2)) for n in (7, 300, 45)]
    preds = [0.6 * c + 0.1 * rng.normal(size=c.shape) for c in chunks]
    chunks[1][5:9] = -5.0
    metric = ConcordanceCCC()
    for p, t in zip(preds, chunks):
        metric.update(torch.tensor(p, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    got = metric.compute().numpy()
    allp = np.concatenate(preds).astype(np.float32).astype(np.float64)
    allt = np.concatenate(chunks).astype(np.float32).astype(np.float64)
    keep = (allt != -5).all(1)
    for d in range(2):
        assert abs(got[d] - _numpy_ccc(allp[keep, d], allt[keep, d])) < 1e-9
