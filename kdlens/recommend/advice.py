"""What the ranking says in words: the reason for the pick, the sweet-spot map, the
Pareto front and where to extend the grid."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

__all__ = ["edge_advice", "pareto", "reason", "split_bootstrap", "sweet_spot"]


def _fmt_ck(r: dict[str, Any]) -> str:
    parts = []
    if r.get("batch_size") is not None:
        parts.append(f"batch size {r['batch_size']}")
    if r.get("epoch") is not None:
        parts.append(f"epoch {r['epoch']}")
    where = ", ".join(parts)
    return f"{r['run']}/{r['checkpoint']}" + (f" ({where})" if where else "")


def _nll_phrase(r: dict[str, Any]) -> str:
    if r.get("fitted_temperature_at_bound"):
        return "held-out NLL at T = 1 (its temperature fit reached a bound)"
    return "held-out NLL after a temperature fit"


def reason(
    frame: pl.DataFrame, best: dict[str, Any], *, basis: str, bootstrapped: bool
) -> tuple[bool | None, str]:
    acc = frame["accuracy_heldout"].to_numpy()
    bits = [f"{_fmt_ck(best)} has the highest score {best['score']:.4f}"]
    if basis != "transfer split only":
        top_acc = np.nanmax(acc)
        bits.append(
            f"held-out accuracy {100 * best['accuracy_heldout']:.2f}% "
            f"(best of all {100 * top_acc:.2f}%), "
            f"{_nll_phrase(best)} {best['nll_scored_heldout']:.4f} nats "
            f"(best of all {np.nanmin(frame['nll_scored_heldout'].to_numpy()):.4f})"
        )
        most = frame.filter(pl.col("accuracy_heldout") == top_acc).row(0, named=True)
        same = (most["run"], most["checkpoint"]) == (best["run"], best["checkpoint"])
        if not same:
            dm_b, dm_m = best["dark_mass_transfer"], most["dark_mass_transfer"]
            why = (
                f"the most accurate checkpoint {most['run']}/{most['checkpoint']} has "
                f"{_nll_phrase(most)} {most['nll_scored_heldout']:.4f}"
            )
            if dm_m and np.isfinite(dm_m) and abs(math.log(max(dm_b, 1e-300) / dm_m)) > 0.1:
                why += (
                    f" and {dm_b / dm_m:.2g}x less transfer-split dark mass than this one "
                    f"(collapse {most['collapse']:.2f} vs {best['collapse']:.2f} nats)"
                    if dm_b > dm_m
                    else f" (collapse {most['collapse']:.2f} vs {best['collapse']:.2f} nats)"
                )
            bits.append(why)
        elif np.isfinite(best["collapse"]):
            bits.append(
                "it is also the most accurate; its transfer-split collapse is "
                f"{best['collapse']:.2f} nats"
            )
    else:
        bits.append(f"transfer accuracy {100 * best['accuracy_transfer']:.2f}% (no held-out split)")
    text = "; ".join(bits)
    if not bootstrapped:
        return None, text + ". No bootstrap: the uncertainty of this choice is unknown."
    p = best["probability_best"]
    second = frame.row(1, named=True)
    overlap = second["rank_low"] <= best["rank_high"] and best["score_high"] >= second["score_low"]
    contenders = frame.filter(pl.col("probability_best") >= 0.05)
    split = split_bootstrap(frame, best)
    if p < 0.5 or (overlap and p < 0.8) or split:
        names = ", ".join(
            f"{r['run']}/{r['checkpoint']} ({r['probability_best']:.2f})"
            for r in contenders.iter_rows(named=True)
        )
        return False, (
            f"{text}. The top choices cannot be told apart: P(best score) of the top is {p:.2f}; "
            f"plausible best: {names or 'several'}." + (f" {split}" if split else "")
        )
    return True, f"{text}. P(best score) = {p:.2f} over the bootstrap."


def split_bootstrap(frame: pl.DataFrame, best: dict[str, Any]) -> str:
    """One sentence when another checkpoint has a higher P(best score) than the pick, else "".

    The rule (:data:`~kdlens.recommend.result.PICK_RULE`): the pick is the best score on
    all examples; the bootstrap may still favour another checkpoint, and then says so.
    """
    p = best.get("probability_best")
    if p is None or not math.isfinite(p):
        return ""
    probs = frame["probability_best"].fill_nan(None)
    i = probs.arg_max()
    if i is None:
        return ""
    top = frame.row(int(i), named=True)
    if top["probability_best"] <= p or (top["run"], top["checkpoint"]) == (
        best["run"],
        best["checkpoint"],
    ):
        return ""
    return (
        f"{top['run']}/{top['checkpoint']} has the higher P(best score) "
        f"({top['probability_best']:.2f} vs {p:.2f}), but {best['run']}/{best['checkpoint']} "
        "is named because kdlens recommends the best score on all examples (the point "
        "estimate) and the bootstrap is split between them."
    )


def _grid_axes(frame: pl.DataFrame) -> tuple[str, str]:
    row = "batch_size" if frame["batch_size"].null_count() < frame.height else "run"
    col = "epoch" if frame["epoch"].null_count() < frame.height else "step"
    return row, col


def sweet_spot(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The batch size x epoch grid in long form: best score per cell, gaps marked."""
    row, col = _grid_axes(frame)
    notes: list[str] = []
    cells = (
        frame.filter(pl.col(row).is_not_null() & pl.col(col).is_not_null())
        .sort("score", descending=True, nulls_last=True)
        .group_by([row, col], maintain_order=True)
        .agg(
            pl.col("score").first(),
            pl.col("run").first().alias("cell_run"),
            pl.col("checkpoint").first(),
            pl.col("rank").first(),
            pl.len().alias("n_checkpoints"),
        )
    )
    rows_v = sorted(cells[row].unique().to_list())
    cols_v = sorted(cells[col].unique().to_list())
    full = pl.DataFrame(
        {row: [r for r in rows_v for _ in cols_v], col: [c for _ in rows_v for c in cols_v]},
        schema={row: cells.schema[row], col: cells.schema[col]},
    )
    out = (
        full.join(cells, on=[row, col], how="left")
        .with_columns(missing=pl.col("score").is_null(), recommended=pl.col("rank") == 1)
        .with_columns(pl.col("recommended").fill_null(False))
    )
    gaps = out.filter(pl.col("missing"))
    if gaps.height:
        shown = ", ".join(
            f"{row}={r[row]} {col}={r[col]}" for r in gaps.head(6).iter_rows(named=True)
        )
        notes.append(
            f"the grid has {gaps.height} missing cell(s) "
            f"({shown}{' ...' if gaps.height > 6 else ''}): "
            "the map shows gaps"
        )
    return out.rename({row: "row", col: "column", "cell_run": "run"}).with_columns(
        pl.lit(row).alias("row_axis"), pl.lit(col).alias("column_axis")
    ), notes


def pareto(frame: pl.DataFrame) -> pl.DataFrame:
    """Checkpoints no other beats on both held-out accuracy and transfer similarity information."""
    a = frame["accuracy_heldout"].to_numpy()
    s = frame["similarity_information_transfer"].to_numpy()
    if not np.isfinite(a).any() or not np.isfinite(s).any():
        s = frame["dark_mass_transfer"].to_numpy()
    a = np.nan_to_num(a, nan=-np.inf)
    s = np.nan_to_num(s, nan=-np.inf)
    keep = np.ones(len(a), dtype=bool)
    for i in range(len(a)):
        dominated = (a >= a[i]) & (s >= s[i]) & ((a > a[i]) | (s > s[i]))
        keep[i] = not dominated.any()
    return (
        frame.filter(pl.Series(keep))
        .select(
            "run",
            "checkpoint",
            "batch_size",
            "epoch",
            "accuracy_heldout",
            "similarity_information_transfer",
            "dark_mass_transfer",
            "score",
            "rank",
        )
        .sort("accuracy_heldout", descending=True)
    )


def edge_advice(frame: pl.DataFrame, best: dict[str, Any]) -> list[str]:
    """What to add to the grid when the best cell lies on its edge."""
    advice: list[str] = []
    bs = sorted({int(b) for b in frame["batch_size"].drop_nulls().to_list()})
    b = best.get("batch_size")
    if b is not None and len(bs) >= 2:
        if b == bs[0]:
            advice.append(
                f"the best batch size {b} is the smallest in the grid: "
                f"add a smaller one (e.g. {max(1, b // 2)})"
            )
        elif b == bs[-1]:
            advice.append(
                f"the best batch size {b} is the largest in the grid: "
                f"add a larger one (e.g. {2 * b})"
            )
    elif b is not None and len(bs) == 1:
        advice.append(
            f"the grid has one batch size ({b}): add others (e.g. {max(1, b // 4)} and {4 * b}) "
            "to locate the sweet spot in batch size"
        )
    axis = "epoch" if best.get("epoch") is not None else "step"
    e = best.get(axis)
    if e is not None:
        same_run = frame.filter(pl.col("run") == best["run"])[axis].drop_nulls().to_list()
        if len(same_run) >= 2:
            if e == min(same_run):
                advice.append(
                    f"the best checkpoint is the first one dumped for {best['run']} ({axis} {e}): "
                    f"dump earlier checkpoints ({axis} < {e})"
                )
            elif e == max(same_run):
                advice.append(
                    f"the best checkpoint is the last one of {best['run']} ({axis} {e}): "
                    f"train longer (more {axis}s, e.g. up to {2 * int(e)})"
                )
        else:
            advice.append(f"{best['run']} has a single checkpoint: dump several along training")
    return advice
