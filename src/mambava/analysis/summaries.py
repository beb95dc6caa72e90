"""From per-frame valence/arousal to answers: one summary row per track, per-event aggregates (BIDS events
files), and normalisation against a participant's own baseline segment.

Every statistic is computed over the frames where the track's face was found (`face` = 1): frames without a
face carry the last face's values over (`mambava.inference.predict`) and would weigh a held value many times.

Summary columns (`SUMMARY_COLUMNS`, one row per track, `<name>.summary.csv` next to the per-frame CSV):
- `video`, `track`; `duration_s` (first to last frame time plus one frame step), `frames`, `face_frames`,
  `face_share` (face_frames / frames);
- for `valence` and `arousal` (prefix `v_`, `a_`): `mean`, `sd` (sample SD, ddof=1, as pandas), `min`, `q25`,
  `median`, `q75`, `max`;
- quadrant shares of the face frames (Russell's circumplex, valence on x, arousal on y): `share_neutral`
  (within `NEUTRAL_RADIUS` = 0.1 of the origin), else `share_excited` (v>=0, a>=0), `share_tense` (v<0,
  a>=0), `share_sad` (v<0, a<0), `share_calm` (v>=0, a<0); the five add up to 1;
- the largest sustained change per dimension (`v_change`, `v_change_time`, same for `a_`): over every frame
  time t with a full `SUSTAIN_S` (1 s) of the track before and after it, mean(face values in [t, t+1 s)) minus
  mean(face values in [t-1 s, t)); the one with the largest magnitude (signed) and its t in seconds;
- when the table has the expression columns (`predict --expressions`, or the expression-va model):
  `<expression>_mean` for each of the seven (mean probability over the face frames) and `top_expression` (the
  one with the largest mean); the event tables get the same columns over each event's face frames.

Event columns (`<name>.events.csv`, one row per event and track): the event file's own columns (`onset`,
`duration`, `trial_type` and any extra ones, kept), `event` (its 0-based row in the file), `track`, `issue`
(empty, or why the row's numbers cover less than the event: outside the video, partly outside, overlapping
other events, no face), then the statistics above over the frames with onset <= time < onset + duration
(no duration/time columns), then `v_pre_mean` / `a_pre_mean` (face frames in the `PRE_S` = 2 s before the
onset) and `v_change_from_pre` / `a_change_from_pre` (event mean minus pre mean). With a baseline
`trial_type`: `baseline` (the type), `normalisation` (`difference` or `zscore`), `v_baseline_mean`,
`v_baseline_sd` and `v_mean_norm` (event mean minus baseline mean, or that divided by the baseline SD), same
for arousal; the baseline is all face frames of that track inside the events of that type.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mambava.analysis.plots import plot_event_bars, plot_va_over_time
from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_path
from mambava.faces.expression import EXPRESSIONS

NEUTRAL_RADIUS = 0.1
SUSTAIN_S = 1.0
PRE_S = 2.0
NORMALISATIONS = ("difference", "zscore")
QUADRANTS = ("neutral", "excited", "tense", "sad", "calm")
_DIMS = (("v", "valence"), ("a", "arousal"))
_STATS = ("mean", "sd", "min", "q25", "median", "q75", "max")


def _value_columns() -> list[str]:
    columns = [f"{p}_{s}" for p, _ in _DIMS for s in _STATS]
    columns += [f"share_{q}" for q in QUADRANTS]
    return columns


SUMMARY_COLUMNS = (
    ["video", "track", "duration_s", "frames", "face_frames", "face_share"]
    + _value_columns()
    + ["v_change", "v_change_time", "a_change", "a_change_time"]
)


def quadrant_shares(
    valence: np.ndarray, arousal: np.ndarray, neutral_radius: float = NEUTRAL_RADIUS
) -> dict[str, float]:
    """Share of points in each circumplex quadrant and near neutral (see the module doc); NaN when empty."""
    v = np.asarray(valence, float)
    a = np.asarray(arousal, float)
    if len(v) == 0:
        return {f"share_{q}": float("nan") for q in QUADRANTS}
    neutral = np.hypot(v, a) < neutral_radius
    rest = ~neutral
    masks = {
        "neutral": neutral,
        "excited": rest & (v >= 0) & (a >= 0),
        "tense": rest & (v < 0) & (a >= 0),
        "sad": rest & (v < 0) & (a < 0),
        "calm": rest & (v >= 0) & (a < 0),
    }
    return {f"share_{q}": float(m.mean()) for q, m in masks.items()}


def value_stats(valence: np.ndarray, arousal: np.ndarray) -> dict[str, float]:
    """Mean, SD (ddof=1), min, quartiles, max of both dimensions and the quadrant shares (NaN when empty)."""
    row: dict[str, float] = {}
    for (prefix, _), values in zip(_DIMS, (valence, arousal)):
        x = np.asarray(values, float)
        if len(x) == 0:
            row.update({f"{prefix}_{s}": float("nan") for s in _STATS})
            continue
        q25, median, q75 = np.percentile(x, [25, 50, 75])
        row.update(
            {
                f"{prefix}_mean": float(x.mean()),
                f"{prefix}_sd": float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
                f"{prefix}_min": float(x.min()),
                f"{prefix}_q25": float(q25),
                f"{prefix}_median": float(median),
                f"{prefix}_q75": float(q75),
                f"{prefix}_max": float(x.max()),
            }
        )
    row.update(quadrant_shares(valence, arousal))
    return row


def sustained_change(
    time: np.ndarray, values: np.ndarray, span_start: float, span_end: float, sustain_s: float = SUSTAIN_S
) -> tuple[float, float]:
    """(change, time) of the largest-magnitude difference between the mean over [t, t+sustain) and over
    [t-sustain, t), over sample times t with both windows inside [span_start, span_end] and non-empty.
    (NaN, NaN) when the span is shorter than two windows."""
    t = np.asarray(time, float)
    x = np.asarray(values, float)
    order = np.argsort(t, kind="stable")
    t, x = t[order], x[order]
    csum = np.concatenate([[0.0], np.cumsum(x)])
    eps = 1e-9
    ok = (t - sustain_s >= span_start - eps) & (t + sustain_s <= span_end + eps)
    if not ok.any():
        return float("nan"), float("nan")
    centre = t[ok]
    lo = np.searchsorted(t, centre - sustain_s - eps, side="left")  # [t - s, t)
    mid = np.searchsorted(t, centre - eps, side="left")
    hi = np.searchsorted(t, centre + sustain_s - eps, side="left")  # [t, t + s)
    n_before, n_after = mid - lo, hi - mid
    usable = (n_before > 0) & (n_after > 0)
    if not usable.any():
        return float("nan"), float("nan")
    before = (csum[mid] - csum[lo])[usable] / n_before[usable]
    after = (csum[hi] - csum[mid])[usable] / n_after[usable]
    change = after - before
    best = int(np.argmax(np.abs(change)))
    return float(change[best]), float(centre[usable][best])


EXPRESSION_COLUMNS = [f"{e}_mean" for e in EXPRESSIONS] + ["top_expression"]


def has_expressions(table) -> bool:
    """Whether a per-frame table carries the seven expression columns."""
    return all(e in table.columns for e in EXPRESSIONS)


def expression_stats(rows, use: np.ndarray) -> dict:
    """Mean probability of each expression over the rows where `use` (and the probabilities are known), and
    the expression with the largest mean ('' when none)."""
    values = rows[list(EXPRESSIONS)].to_numpy(float)[np.asarray(use, bool)]
    values = values[np.isfinite(values).all(axis=1)]
    means = values.mean(axis=0) if len(values) else np.full(len(EXPRESSIONS), np.nan)
    out: dict = {f"{e}_mean": float(m) for e, m in zip(EXPRESSIONS, means)}
    out["top_expression"] = EXPRESSIONS[int(np.argmax(means))] if len(values) else ""
    return out


def _frame_step(time: np.ndarray) -> float:
    return float(np.median(np.diff(np.sort(time)))) if len(time) > 1 else 0.0


def _check_table(table, what: str = "table") -> None:
    missing = [c for c in ("track", "time", "valence", "arousal", "face") if c not in table.columns]
    if missing:
        raise MambavaError(f"{what}: missing column(s) {', '.join(missing)} (a mambava predict table is needed)")


def _tracks(table):
    names = list(dict.fromkeys(table["track"].astype(str)))
    for name in names:
        rows = table[table["track"].astype(str) == name].sort_values("time", kind="stable")
        yield name, rows


def summarize(table, sustain_s: float = SUSTAIN_S):
    """One row per track of a per-frame prediction table (`mambava.inference.predict.COLUMNS`): SUMMARY_COLUMNS."""

    _check_table(table)
    out = []
    expressions = has_expressions(table)
    for name, rows in _tracks(table):
        time = rows["time"].to_numpy(float)
        face = rows["face"].to_numpy().astype(bool)
        v = rows["valence"].to_numpy(float)[face]
        a = rows["arousal"].to_numpy(float)[face]
        start, end = float(time.min()), float(time.max()) + _frame_step(time)
        row = {
            "video": str(rows["video"].iloc[0]) if "video" in rows.columns else "",
            "track": name,
            **({"person": str(rows["person"].iloc[0])} if "person" in rows.columns else {}),
            "duration_s": end - start,
            "frames": len(rows),
            "face_frames": int(face.sum()),
            "face_share": float(face.mean()),
        }
        row.update(value_stats(v, a))
        for (prefix, _), x in zip(_DIMS, (v, a)):
            change, at = sustained_change(time[face], x, start, end, sustain_s)
            row[f"{prefix}_change"], row[f"{prefix}_change_time"] = change, at
        if expressions:
            row.update(expression_stats(rows, face))
        out.append(row)
    columns = SUMMARY_COLUMNS if "person" not in table.columns else ["video", "track", "person", *SUMMARY_COLUMNS[2:]]
    return pd.DataFrame(out, columns=columns + (EXPRESSION_COLUMNS if expressions else []))


PERSON_SUMMARY_COLUMNS = ["person", "videos", "tracks", "frames", "face_frames", "face_share"] + _value_columns()


def summarize_persons(tables) -> pd.DataFrame:
    """One row per person over per-frame tables with a `person` column (`predict --persons`, a batch): the
    videos and tracks (`;`-separated), frames, face frames and their share, and the statistics of `value_stats`
    over the person's face frames in all of them (`PERSON_SUMMARY_COLUMNS`; then `EXPRESSION_COLUMNS` when the
    tables carry the expressions)."""
    tables = [t for t in tables if "person" in t.columns]
    if not tables:
        return pd.DataFrame(columns=PERSON_SUMMARY_COLUMNS)
    table = pd.concat(tables, ignore_index=True)
    _check_table(table, "persons")
    expressions = has_expressions(table)
    out = []
    for person in dict.fromkeys(table["person"].astype(str)):
        rows = table[table["person"].astype(str) == person]
        face = rows["face"].to_numpy().astype(bool)
        row = {
            "person": person,
            "videos": ";".join(dict.fromkeys(rows["video"].astype(str))) if "video" in rows.columns else "",
            "tracks": ";".join(dict.fromkeys(rows["track"].astype(str))),
            "frames": len(rows),
            "face_frames": int(face.sum()),
            "face_share": float(face.mean()),
        }
        row.update(value_stats(rows["valence"].to_numpy(float)[face], rows["arousal"].to_numpy(float)[face]))
        if expressions:
            row.update(expression_stats(rows, face))
        out.append(row)
    return pd.DataFrame(out, columns=PERSON_SUMMARY_COLUMNS + (EXPRESSION_COLUMNS if expressions else []))


# ---------------------------------------------------------------------------------------------- events


def read_events(path: str | os.PathLike):
    """A BIDS events file (tab-separated, `onset` and `duration` in seconds, optional `trial_type`, any other
    columns kept) as a DataFrame; bad values are a MambavaError naming the file and line."""

    path = Path(path)
    try:
        events = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise MambavaError(f"{path}: no such events file") from None
    except (OSError, ValueError, pd.errors.ParserError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MambavaError(f"{path}: not a readable tab-separated events file ({first})") from None
    events.columns = [c.strip() for c in events.columns]
    for column in ("onset", "duration"):
        if column not in events.columns:
            raise MambavaError(
                f"{path}: no '{column}' column (BIDS events need onset and duration, in seconds, tab-separated)"
            )
    for column in ("onset", "duration"):
        values = pd.to_numeric(events[column].str.strip(), errors="coerce")
        bad = ~np.isfinite(values.to_numpy(float))
        if column == "duration":
            bad |= values.to_numpy(float) < 0
        if bad.any():
            line = int(np.argmax(bad)) + 2  # 1-based, after the header
            raise MambavaError(
                f"{path}: line {line}: {column} {events[column].iloc[line - 2]!r} is not a "
                + ("number" if column == "onset" else "non-negative number")
                + " of seconds"
            )
        events[column] = values.astype(float)
    if "trial_type" not in events.columns:
        events["trial_type"] = "n/a"
    if events.empty:
        raise MambavaError(f"{path}: no events")
    return events


def event_issues(events, start: float, end: float) -> list[str]:
    """Per event: '' or what limits it (outside [start, end) of the video, partly outside, overlaps)."""
    onset = events["onset"].to_numpy(float)
    stop = onset + events["duration"].to_numpy(float)
    issues = []
    for i in range(len(events)):
        notes = []
        if stop[i] <= start or onset[i] >= end:
            notes.append(f"outside the video ({start:.3f}-{end:.3f} s)")
        elif onset[i] < start or stop[i] > end:
            notes.append(f"partly outside the video (covers {max(onset[i], start):.3f}-{min(stop[i], end):.3f} s)")
        others = [j for j in range(len(events)) if j != i and onset[j] < stop[i] and onset[i] < stop[j]]
        if others:
            notes.append("overlaps event " + ", ".join(map(str, others)))
        issues.append("; ".join(notes))
    return issues


def aggregate_events(
    table, events, baseline: str | None = None, normalisation: str = "difference", pre_s: float = PRE_S
):
    """Per event and track statistics (see the module doc) of a per-frame table and a `read_events` frame."""

    _check_table(table)
    if normalisation not in NORMALISATIONS:
        raise MambavaError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {normalisation!r}")
    types = events["trial_type"].astype(str)
    if baseline is not None and not (types == baseline).any():
        raise MambavaError(
            f"no event of trial_type {baseline!r} for the baseline (types: {', '.join(sorted(set(types)))})"
        )
    onset = events["onset"].to_numpy(float)
    stop = onset + events["duration"].to_numpy(float)
    extra = [c for c in events.columns if c not in ("onset", "duration", "trial_type")]
    rows = []
    for name, track in _tracks(table):
        time = track["time"].to_numpy(float)
        face = track["face"].to_numpy().astype(bool)
        v_all = track["valence"].to_numpy(float)
        a_all = track["arousal"].to_numpy(float)
        start, end = float(time.min()), float(time.max()) + _frame_step(time)
        issues = event_issues(events, start, end)
        base = None
        if baseline is not None:
            inside = np.zeros(len(time), bool)
            for i in np.flatnonzero(types.to_numpy() == baseline):
                inside |= (time >= onset[i]) & (time < stop[i])
            inside &= face
            if not inside.any():
                raise MambavaError(f"track {name}: no face frame inside the {baseline!r} baseline events")
            base = {
                p: (float(x[inside].mean()), float(x[inside].std(ddof=1)) if inside.sum() > 1 else float("nan"))
                for (p, _), x in zip(_DIMS, (v_all, a_all))
            }
        for i in range(len(events)):
            keep = (time >= onset[i]) & (time < stop[i])
            use = keep & face
            row = {"onset": onset[i], "duration": stop[i] - onset[i], "trial_type": types.iloc[i]}
            row.update({c: events[c].iloc[i] for c in extra})
            issue = issues[i]
            if keep.any() and not use.any():
                issue = "; ".join(filter(None, [issue, "no face in the event"]))
            row.update(
                {
                    "event": i,
                    "track": name,
                    "issue": issue,
                    "frames": int(keep.sum()),
                    "face_frames": int(use.sum()),
                    "face_share": float(use.sum() / keep.sum()) if keep.any() else float("nan"),
                }
            )
            row.update(value_stats(v_all[use], a_all[use]))
            if has_expressions(track):
                row.update(expression_stats(track, use))
            pre = (time >= onset[i] - pre_s) & (time < onset[i]) & face
            for (p, _), x in zip(_DIMS, (v_all, a_all)):
                row[f"{p}_pre_mean"] = float(x[pre].mean()) if pre.any() else float("nan")
                row[f"{p}_change_from_pre"] = row[f"{p}_mean"] - row[f"{p}_pre_mean"]
            if base is not None:
                row["baseline"], row["normalisation"] = baseline, normalisation
                for p, _ in _DIMS:
                    mean, sd = base[p]
                    row[f"{p}_baseline_mean"], row[f"{p}_baseline_sd"] = mean, sd
                    diff = row[f"{p}_mean"] - mean
                    row[f"{p}_mean_norm"] = (
                        diff if normalisation == "difference" else (diff / sd if sd > 0 else float("nan"))
                    )
            rows.append(row)
    return pd.DataFrame(rows)


def events_for(events: str | os.PathLike, stem: str) -> Path | None:
    """The events file for input `stem`: `events` itself when it is a file; in a folder, `<stem>_events.tsv`
    or `<stem>.tsv` (None when the folder has neither)."""
    events = Path(events)
    if events.is_dir():
        for candidate in (events / f"{stem}_events.tsv", events / f"{stem}.tsv"):
            if candidate.is_file():
                return candidate
        return None
    if not events.is_file():
        raise MambavaError(f"{events}: no such events file or folder")
    return events


# ---------------------------------------------------------------------------------------------- outputs


def analysis_paths(out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {
        "summary": out_dir / f"{stem}.summary.csv",
        "events": out_dir / f"{stem}.events.csv",
        "events_plot": out_dir / f"{stem}.events.png",
        "va_events_plot": out_dir / f"{stem}.va.png",
    }


def write_csv(frame, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    return Path(path)


def write_analysis(
    table,
    out_dir: str | os.PathLike,
    stem: str,
    events: str | os.PathLike | None = None,
    baseline: str | None = None,
    normalisation: str = "difference",
    plots: bool = True,
) -> dict[str, Path]:
    """Write `<stem>.summary.csv` and, with an events file, `<stem>.events.csv` (and with `plots`, the
    per-event bar chart `<stem>.events.png` and the VA figure redrawn with the events shaded). {kind: path}."""
    written = {"summary": write_csv(summarize(table), analysis_paths(out_dir, stem)["summary"])}
    if events is None:
        if baseline is not None:
            raise MambavaError("--baseline needs --events (the baseline is a trial_type of the events file)")
        return written
    path = events_for(events, stem)
    if path is None:
        return written
    frame = read_events(path)
    aggregated = aggregate_events(table, frame, baseline, normalisation)
    paths = analysis_paths(out_dir, stem)
    written["events"] = write_csv(aggregated, paths["events"])
    if plots:
        title = str(table["video"].iloc[0]) if "video" in table.columns and len(table) else stem
        written["events_plot"] = plot_event_bars(aggregated, paths["events_plot"], title=title)
        written["va_plot"] = plot_va_over_time(table, paths["va_events_plot"], title=title, events=frame)
    return written


def write_stream_summary(csv_path: str | os.PathLike, rows, video: str = "") -> Path | None:
    """`<stem>.summary.csv` beside the CSV of `mambava stream --out`, from its StreamResult rows (frames with
    no track at all are left out); `video` names the source, as `predict`'s summary does. None when no track
    was seen."""

    columns = ["frame", "time", "track", "valence", "arousal", "face"]
    if any(getattr(r, "person", None) is not None for r in rows):  # `stream --persons`: each track's person
        columns.append("person")
    table = pd.DataFrame([{c: getattr(r, c) for c in columns} for r in rows], columns=columns)
    if any(getattr(r, "expressions", None) is not None for r in rows):
        nan = (float("nan"),) * len(EXPRESSIONS)
        values = [r.expressions if r.expressions is not None else nan for r in rows]
        table[list(EXPRESSIONS)] = pd.DataFrame(values, columns=list(EXPRESSIONS), index=table.index)
    table = table[table["track"].astype(str) != ""]
    if table.empty:
        return None
    table.insert(0, "video", video)
    csv_path = Path(csv_path)
    return write_csv(summarize(table), csv_path.with_name(f"{csv_path.stem}.summary.csv"))


__all__ = [
    "EXPRESSION_COLUMNS",
    "expression_stats",
    "has_expressions",
    "write_stream_summary",
    "SUMMARY_COLUMNS",
    "NEUTRAL_RADIUS",
    "SUSTAIN_S",
    "PRE_S",
    "NORMALISATIONS",
    "summarize",
    "summarize_persons",
    "PERSON_SUMMARY_COLUMNS",
    "value_stats",
    "quadrant_shares",
    "sustained_change",
    "read_events",
    "event_issues",
    "aggregate_events",
    "events_for",
    "write_analysis",
    "analysis_paths",
]
