"""The report page: HTML around the charts, Vega inlined (never fetched), PNG/SVG export."""

from __future__ import annotations

import datetime as _dt
import functools
import html
import json
import math
import os
import string
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl

from kdlens._internal.atomic import write_bytes_atomic, write_text_atomic
from kdlens._internal.defaults import ALPHA
from kdlens._version import __version__
from kdlens.errors import InputError
from kdlens.hypotheses.structure import WEAK_EFFECT, structure_verdict
from kdlens.recommend.result import PICK_RULE
from kdlens.report.charts import teacher_label
from kdlens.report.data import ReportData
from kdlens.report.ensemble_html import ensemble_html
from kdlens.report.sections import (
    Section,
    report_charts,
)

__all__ = ["export_charts", "render_report"]


@functools.lru_cache(maxsize=2)
def _vega_bundle(vl_version: str | None) -> str:
    try:
        import vl_convert as vlc
    except ImportError:
        raise InputError(
            "the report inlines Vega from vl-convert-python, which is not installed "
            "(pip install vl-convert-python)"
        ) from None
    # Building the bundle takes seconds; it depends only on the versions, so it is kept in
    # the user's cache directory (KDLENS_CACHE_DIR, else XDG_CACHE_HOME/kdlens).
    from importlib.metadata import version

    cached = _cache_dir() / f"vega-{version('vl-convert-python')}-{vl_version or 'default'}.js"
    try:
        return cached.read_text(encoding="utf-8")
    except OSError:
        pass
    js = vlc.javascript_bundle(vl_version=vl_version)  # type: ignore[call-arg]
    # "</script" inside a script element would end it early; "<\/" means the same in JS.
    js = js.replace("</script", "<\\/script")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cached, js)
    except OSError:
        pass  # a read-only home: the report is still written, only slower next time
    return js


def _cache_dir() -> Path:
    explicit = os.environ.get("KDLENS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdlens"


@functools.cache
def _asset_text(name: str) -> str:
    """One file of ``kdlens/report/assets`` (shipped as package data)."""
    return (resources.files("kdlens.report") / "assets" / name).read_text(encoding="utf-8")


def _asset(name: str) -> string.Template:
    # $-placeholders: the values (CSS, Vega's JS, JSON) are inserted as they are, never re-parsed.
    return string.Template(_asset_text(name))


def _vl_version() -> str | None:
    try:
        import vl_convert as vlc
    except ImportError:
        return None
    want = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]  # "6.4.1" -> "6.4"
    return want if want in vlc.get_vegalite_versions() else None


def _spec(chart: Any) -> dict[str, Any]:
    # Not validated against the Vega-Lite schema here (a third of the charts' cost): every
    # chart the report builds is validated by the tests (tests/test_report.py).
    spec = chart.to_dict(validate=False)
    spec.setdefault("config", {}).setdefault(
        "font", "system-ui, -apple-system, 'Segoe UI', sans-serif"
    )
    return spec


def render_report(data: ReportData, sections: list[Section] | None = None) -> str:
    """The report as one HTML string (scripts and data inlined)."""
    sections = report_charts(data) if sections is None else sections
    specs: dict[str, Any] = {}
    body: list[str] = []
    by_key = {s.key: s for s in sections}

    def slot(key: str) -> str:
        s = by_key.get(key)
        if s is None:
            return ""
        out = [
            f'<section class="card" id="sec-{key}"><h2>{_e(s.title)}</h2>',
            f'<p class="caption">{_e(s.caption)}</p>',
        ]
        if s.chart is not None:
            cid = f"chart-{key}"
            specs[cid] = _spec(s.chart)
            out.append(f'<div class="chart" id="{cid}" data-chart="{key}"></div>')
        else:
            out.append(f'<p class="unavailable">Not shown: {_e(s.unavailable or "")}.</p>')
        out.append("</section>")
        return "".join(out)

    body.append(_header_html(data))
    body.append(_recommendation_html(data))
    body.append(ensemble_html(data.ensemble))
    body.append(slot("sweet_spot"))
    body.append(slot("trajectories"))
    body.append('<div class="row">' + slot("pareto") + _ranking_html(data) + "</div>")
    body.append('<div class="row">' + slot("similarity") + slot("graph") + "</div>")
    body.append('<div class="row">' + slot("reliability") + slot("entropy") + "</div>")
    body.append(_hypothesis_html(data))
    body.append(_methods_html(data))
    specs_json = json.dumps(specs, allow_nan=False).replace("</", "<\\/")
    bundle = _vega_bundle(_vl_version())
    return _asset("page.html").substitute(
        title=_e(data.title),
        css=_asset_text("report.css"),
        body="\n".join(b for b in body if b),
        vega_js=bundle,
        chart_specs_json=specs_json,
        embed_js=_asset_text("embed.js"),
    )


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _header_html(data: ReportData) -> str:
    n_teachers = len(data.teachers)
    facts = [
        ("source", data.source),
        ("dataset", data.dataset or "—"),
        ("model", data.model or "—"),
        (
            "classes",
            f"K = {data.num_classes}"
            + ("" if data.class_names_known else " (names unknown: indices)"),
        ),
        ("checkpoints", f"{n_teachers} (run × checkpoint)"),
        ("splits", ", ".join(data.splits)),
        ("temperature", f"T = {data.temperature:g} for soft-label measures; calibration at T = 1"),
        ("confidence bins", f"{data.n_bins or 15} equal-width bins on [0, 1]"),
        (
            "OEMC threshold",
            f"dark mass ≥ δ = {data.oemc_delta if data.oemc_delta is not None else 0.05:g}",
        ),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<header><h1>{_e(data.title)}</h1>"
        '<p class="sub">Which teacher checkpoint to distill from, '
        f"and why. kdlens {_e(__version__)}, {stamp}.</p>"
        f'<table class="facts">{rows}</table></header>'
    )


def _recommendation_html(data: ReportData) -> str:
    rec = data.recommendation
    notes = list(data.notes)
    if rec is None:
        inner = "<p>No recommendation was computed.</p>"
    else:
        best = getattr(rec, "recommended", None)
        notes += list(getattr(rec, "notes", []) or [])
        if best is None:
            inner = f"<p>No recommendation: {_e(getattr(rec, 'reason', ''))}</p>"
        else:
            key = teacher_label(best.get("run"), best.get("checkpoint"))
            bits = [
                f"batch size {best['batch_size']}" if best.get("batch_size") is not None else "",
                f"epoch {best['epoch']}" if best.get("epoch") is not None else "",
            ]
            where = ", ".join(b for b in bits if b)
            p = best.get("probability_best")
            has_p = isinstance(p, float) and math.isfinite(p)
            n_boot = int(getattr(rec, "n_bootstrap", 0) or 0)
            pick_note = getattr(rec, "pick_note", "") or ""
            # The reason ends with the same sentence; here it stands under the headline, once.
            reason = str(getattr(rec, "reason", "") or "")
            if pick_note:
                reason = " ".join(reason.replace(pick_note, "").split())
            inner = (
                f'<p class="pick">Distill from <b>{_e(key)}</b>'
                + (f" ({_e(where)})" if where else "")
                + (f", P(best score) = {p:.2f}" if has_p else "")
                + "</p>"
                + (f'<p class="pick-note">{_e(pick_note)}</p>' if pick_note else "")
                + f"<p>{_e(reason)}</p>"
                + f'<p class="caption">Ranked at T = {getattr(rec, "temperature", float("nan")):g} '
                + "(the distillation temperature the score was validated at; the soft-label "
                + "charts below use the analysis temperature). "
                + f"{_e(getattr(rec, 'score_definition', '') or '')}. "
                + (
                    f"{_e(rec.probability_best_definition)}; {_e(PICK_RULE)}.</p>"
                    if n_boot and hasattr(rec, "probability_best_definition")
                    else "No bootstrap: P(best score) was not computed.</p>"
                )
            )
            advice = list(getattr(rec, "advice", []) or [])
            if advice:
                inner += "<ul>" + "".join(f"<li>{_e(a)}</li>" for a in advice) + "</ul>"
    if notes:
        inner += (
            '<div class="notes"><b>Notes</b><ul>'
            + "".join(f"<li>{_e(n)}</li>" for n in dict.fromkeys(notes))
            + "</ul></div>"
        )
    return f'<section class="card rec"><h2>Recommendation</h2>{inner}</section>'


def _ranking_html(data: ReportData, top: int = 10) -> str:
    rec = data.recommendation
    ranking = getattr(rec, "ranking", None)
    if not isinstance(ranking, pl.DataFrame) or ranking.height == 0:
        return ""
    t = getattr(data.recommendation, "temperature", None) if data.recommendation else None
    at = f", T={t:g}" if isinstance(t, float) else ""
    cols = [
        ("rank", "rank", "d"),
        ("run", "run", ""),
        ("checkpoint", "checkpoint", ""),
        ("score", "score", ".4f"),
        ("probability_best", "P(best score)", ".2f"),
        ("accuracy_heldout", "held-out acc.", ".2%"),
        ("dark_mass_transfer", f"dark mass (train{at})", ".4f"),
        ("similarity_information_transfer", f"SI (train{at})", ".4f"),
    ]
    cols = [c for c in cols if c[0] in ranking.columns]
    head = "".join(f"<th>{_e(t)}</th>" for _, t, _ in cols)
    rows = []
    flagged = False
    for r in ranking.head(top).iter_rows(named=True):
        # † marks a temperature fit at its bound (scored with the raw held-out NLL).
        mark = bool(r.get("fitted_temperature_at_bound"))
        flagged |= mark
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{_e(_fmt(r[c], f) if f and f != 'd' else _fmt(r[c]))}"
                + (" †" if mark and c == "score" else "")
                + "</td>"
                for c, _, f in cols
            )
            + "</tr>"
        )
    foot = (
        '<p class="caption">† temperature fit at the bound of its search: scored with the raw '
        "held-out NLL at T = 1 (see the notes).</p>"
        if flagged
        else ""
    )
    return (
        f'<section class="card" id="sec-ranking"><h2>Ranking (top {min(top, ranking.height)} of '
        f'{ranking.height})</h2><div class="scroll"><table class="data">'
        f"<thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>{foot}</section>"
    )


def _permutations_said(s: pl.DataFrame) -> str:
    """How many null draws the structure tests used, as the analysis recorded it."""
    if "structure_permutations" not in s.columns:
        return ""
    counts = sorted({int(v) for v in s["structure_permutations"].drop_nulls().to_list()})
    if not counts:
        return ""
    return f" Null draws per test: {', '.join(f'{c:,}' for c in counts)}."


def _hypothesis_html(data: ReportData) -> str:
    s = data.summary
    title = "Distillation or regularization? The structure test"
    intro = (
        "H0: the non-target mass has no class-consistent structure (label smoothing plus noise). "
        "Statistic: similarity information SI; null: each example's K−1 non-target probabilities "
        f"permuted at random. Verdict at α = {ALPHA:g} per checkpoint; "
        "a significant structure with "
        f"SI / log(K−1) < {WEAK_EFFECT:g} is called weak "
        "(with many examples any real teacher rejects "
        "H0, so read the effect size). With K = 2 the test does not apply." + _permutations_said(s)
    )
    if "structure_p_value" not in s.columns or s["structure_p_value"].null_count() == s.height:
        return (
            f'<section class="card" id="sec-hypothesis"><h2>{title}</h2>'
            f'<p class="caption">{_e(intro)}</p>'
            '<p class="unavailable">Not shown: the analysis has no structure test '
            "(column structure_p_value).</p></section>"
        )
    df = s.filter(pl.col("structure_p_value").is_not_null())
    eff_col = next(
        (c for c in ("similarity_information_normalized", "structure_effect") if c in df.columns),
        None,
    )
    classes = {
        "not applicable": "v-na",
        "no structure": "v-reg",
        "structure significant but weak": "v-weak",
    }
    rows = []
    for r in df.iter_rows(named=True):
        p = float(r["structure_p_value"])
        eff = r.get(eff_col) if eff_col else None
        # The one verdict rule (the analysis summary's structure_verdict column uses it too).
        verdict = structure_verdict(p, eff, data.num_classes)
        cls = next((c for k, c in classes.items() if verdict.startswith(k)), "v-kd")
        shown_p = "—" if data.num_classes == 2 else _fmt(p, ".4g")
        rows.append(
            f"<tr><td>{_e(teacher_label(r['run'], r['checkpoint']))}</td><td>{_e(r['split'])}</td>"
            f"<td>{_e(_fmt(r.get('similarity_information')))}</td><td>{_e(_fmt(eff))}</td>"
            f"<td>{_e(shown_p)}</td><td class='{cls}'>{_e(verdict)}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("checkpoint", "split", "SI (nats)", "effect SI / log(K−1)", "p-value", "verdict")
    )
    return (
        f'<section class="card" id="sec-hypothesis"><h2>{title}</h2>'
        f'<p class="caption">{_e(intro)}</p>'
        f'<div class="scroll tall"><table class="data"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _methods_html(data: ReportData) -> str:
    items = [
        f"p = softmax(z / T) with T = {data.temperature:g}; natural logs (nats).",
        "dark mass = 1 − p_y, computed as exp(LSE(z≠y/T) − LSE(z/T)) (exact when p_y ≈ 1).",
        "non-target distribution q = softmax(z≠y / T) over the K−1 other classes; its entropy is "
        "normalised by log(K−1).",
        "S[c, j] = mean of q(j) over examples of class c; "
        "SI = mean over classes of KL(S[c] ‖ uniform).",
        f"OEMC share = share of examples with dark mass ≥ δ "
        f"(δ = {data.oemc_delta if data.oemc_delta is not None else 0.05:g}).",
        f"Calibration: {data.n_bins or 15} equal-width confidence bins, T = 1.",
    ]
    if data.recommendation is not None and getattr(data.recommendation, "score_definition", None):
        items.append(f"{data.recommendation.score_definition}.")  # it opens with "score ="
    return (
        '<section class="card"><h2>Definitions</h2><ul>'
        + "".join(f"<li>{_e(i)}</li>" for i in items)
        + "</ul></section>"
    )


# --------------------------------------------------------------------------- output


def export_charts(
    sections: Sequence[Section],
    out_dir: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("png", "svg"),
    scale: float = 2.0,
) -> list[Path]:
    """Write each available chart as ``<key>.png`` / ``<key>.svg`` (vl-convert-python).

    Selectors are static in these files: the default checkpoint is shown.
    """
    try:
        import vl_convert as vlc
    except ImportError:
        raise InputError(
            "static export needs vl-convert-python (pip install vl-convert-python)"
        ) from None
    bad = [f for f in formats if f not in ("png", "svg")]
    if bad:
        raise InputError(f"formats must be png and/or svg, got {bad}")
    out = Path(out_dir)
    written: list[Path] = []
    version = _vl_version()
    for s in sections:
        if s.chart is None:
            continue
        spec = _spec(s.chart)
        for fmt in formats:
            path = out / f"{s.key}.{fmt}"
            if fmt == "png":
                data = vlc.vegalite_to_png(spec, vl_version=version, scale=scale)
            else:
                data = vlc.vegalite_to_svg(spec, vl_version=version).encode()
            write_bytes_atomic(path, data)
            written.append(path)
    return written
