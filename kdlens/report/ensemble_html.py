"""The report's ensemble card: the ensemble teacher beside the single-checkpoint pick."""

from __future__ import annotations

from typing import Any

__all__ = ["ensemble_html"]


def ensemble_html(ens: Any) -> str:
    """One card: members and weights, the verdict, the path per M and the comparison."""
    if ens is None:
        return ""
    from kdlens.recommend.ensemble_result import RULE_DEFINITIONS
    from kdlens.report.render import _e
    from kdlens.report.render import _fmt as _f

    if not ens.ok:
        return _card(f"<p>No ensemble: {_e(ens.reason)}</p>")
    members = ", ".join(
        f"<b>{_e(n)}</b> ({w:.2f})" for n, w in zip(ens.member_names, ens.weights, strict=True)
    )
    splits = [c.removeprefix("nll_fit_") for c in ens.path.columns if c.startswith("nll_fit_")]
    head = "".join(f"<th>NLL fit {_e(s)}</th>" for s in splits)
    head += "".join(f"<th>acc {_e(s)}</th>" for s in splits)
    rows = []
    for r in ens.path.iter_rows(named=True):
        cells = [str(r["members"]), _e(r["added"]), f"{r['inference_multiplier']}x"]
        cells += [_f(r[f"nll_fit_{s}"]) for s in splits]
        cells += [_f(r[f"accuracy_{s}"]) for s in splits]
        style = ' class="kept"' if r["kept"] else ""
        rows.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    path = (
        "<table><thead><tr><th>M</th><th>added</th><th>multiplier</th>"
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    cmp_rows = []
    for r in ens.comparison.iter_rows(named=True):
        split = r["split"] + (" (selection)" if r["selection_split"] else "")
        cells = [_e(split), _e(r["measure"]), _f(r["single"]), _f(r["mixture"])]
        cells += [_f(r["difference"], "+.4f"), f"{_f(r['low'], '+.4f')} to {_f(r['high'], '+.4f')}"]
        cmp_rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    single = "/".join(ens.best_single or ("", ""))
    comparison = (
        "<table><thead><tr><th>split</th><th>measure</th>"
        f"<th>{_e(single)}</th><th>mixture</th><th>difference</th><th>95% interval</th>"
        "</tr></thead><tbody>" + "".join(cmp_rows) + "</tbody></table>"
    )
    caption = (
        f"{RULE_DEFINITIONS[ens.rule]}. Greedy forward selection with replacement over "
        f"{ens.n_candidates} checkpoints, {ens.max_members} steps, by the NLL after a "
        f"temperature fit on '{ens.selection_split}'; the kept step is in bold. Multiplier = "
        "distinct members = teacher forward passes per example in online distillation. "
        f"Intervals: 95% of {ens.n_bootstrap} paired bootstrap replicates over "
        f"{ens.n_buckets} id-hashed blocks of examples."
    )
    notes = "".join(f"<li>{_e(n)}</li>" for n in ens.notes)
    inner = (
        f'<p class="pick">Ensemble teacher: {members}</p>'
        f"<p>{_e(ens.statement)}</p>"
        f"<h3>Gain per added member</h3>{path}"
        f"<h3>Mixture against the best single checkpoint</h3>{comparison}"
        f'<p class="caption">{_e(caption)}</p>'
        + (f'<div class="notes"><b>Notes</b><ul>{notes}</ul></div>' if notes else "")
    )
    return _card(inner)


def _card(inner: str) -> str:
    return f'<section class="card rec" id="sec-ensemble"><h2>Ensemble teacher</h2>{inner}</section>'
