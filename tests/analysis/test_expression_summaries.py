"""Expression columns in the summaries and the event tables (mambava.analysis.summaries): their means over the
face frames (NaN rows, frames without a face, left out) and the top expression."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mambava.analysis.summaries import SUMMARY_COLUMNS, aggregate_events, summarize
from mambava.faces.expression import EXPRESSIONS


def _table() -> pd.DataFrame:
    n = 60  # 2 s at 30 fps: neutral for 1 s, then happy; frames 20-29 have no face
    p = np.zeros((n, 7))
    p[:30, EXPRESSIONS.index("neutral")] = 1.0
    p[30:, EXPRESSIONS.index("happiness")] = 0.8
    p[30:, EXPRESSIONS.index("surprise")] = 0.2
    face = np.ones(n, bool)
    face[20:30] = False
    p[~face] = np.nan
    table = pd.DataFrame({"video": "v", "track": "v", "time": np.arange(n) / 30, "valence": 0.0, "arousal": 0.0})
    table["face"] = face.astype(int)
    table[list(EXPRESSIONS)] = p
    return table


def test_summary_adds_expression_means_and_the_top_one():
    summary = summarize(_table())
    assert list(summary.columns) == SUMMARY_COLUMNS + [f"{e}_mean" for e in EXPRESSIONS] + ["top_expression"]
    row = summary.iloc[0]
    assert row["neutral_mean"] == pytest.approx(20 / 50) and row["happiness_mean"] == pytest.approx(0.8 * 30 / 50)
    assert row["top_expression"] == "happiness" and row["anger_mean"] == 0
    assert list(summarize(_table().drop(columns=list(EXPRESSIONS))).columns) == SUMMARY_COLUMNS


def test_event_rows_add_the_expression_means_of_their_frames():
    events = pd.DataFrame({"onset": [0.0, 1.0], "duration": [1.0, 1.0], "trial_type": ["rest", "joke"]})
    rows = aggregate_events(_table(), events)
    assert rows["top_expression"].tolist() == ["neutral", "happiness"]
    assert rows["neutral_mean"].tolist() == [1.0, 0.0] and rows["surprise_mean"].iloc[1] == pytest.approx(0.2)
