"""``kdlens analyze`` and ``kdlens controls``: parse, call one library function, render."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from kdlens._internal import defaults
from kdlens.cli._app import (
    app,
    engine_option,
    handle_errors,
    scheduler_option,
    workers_option,
)
from kdlens.cli._render import cell, console, json_rows, progress_bar, say, show, title

# Library modules (numpy, polars, scipy, ...) and rich's widgets are imported inside the
# command bodies: typer needs only the signatures, so `kdlens --help` starts at once.

#: The control kinds, restated here so that --help imports no numerical library;
#: tests/test_cli_options.py checks it equals kdlens.hypotheses.controls.CONTROL_KINDS.
CONTROL_KINDS = ("ls", "permuted", "class-mean")

#: Summary columns the terminal table can show, in the order shown, with their headers.
#: All of them go to the files and to --json; the superclass and reference columns exist
#: only with --hierarchy / --reference-probs.
_SHOWN = (
    ("accuracy", "acc"),
    ("nll", "nll"),
    ("dark_mass", "dark"),
    ("oemc_share", "OEMC"),
    ("similarity_information", "SI"),
    ("instance_information", "II"),
    ("structure_p_value", "p"),
    ("fitted_temperature", "T*"),
    ("superclass_ari", "ARI"),
    ("superclass_nmi", "NMI"),
    ("reference_similarity_spearman", "ref rho"),
    ("reference_kl", "ref KL"),
)
#: Which columns go first when the terminal is too narrow for all (least needed first).
_DROP_ORDER = ("OEMC", "II", "T*", "p", "SI", "dark", "nll", "ref KL", "NMI")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _fit_columns(columns: list[tuple[str, list[str]]], width: int) -> tuple[list[int], list[str]]:
    """Indices of the columns that fit in ``width`` characters, and the headers left out.

    Each column takes its widest cell plus its padding (two spaces); columns go in ``_DROP_ORDER``
    (the identifying ones and acc never) until the rest fit.
    """
    need = {i: max(len(h), *(len(c) for c in cells)) + 2 for i, (h, cells) in enumerate(columns)}
    keep = list(range(len(columns)))
    left_out: list[str] = []
    for header in _DROP_ORDER:
        if sum(need[i] for i in keep) <= width:
            break
        i = next((i for i in keep if columns[i][0] == header), None)
        if i is not None:
            keep.remove(i)
            left_out.append(header)
    return keep, left_out


@app.command("analyze")
@handle_errors
def analyze_command(
    store: str = typer.Argument(..., help="Logits store: a Parquet file, a directory or a glob."),
    output: str = typer.Option(
        "kdlens-analysis",
        "-o",
        "--out",
        help="Directory (or URL) for summary/classes/similarity/edges/calibration .parquet.",
    ),
    temperature: float = typer.Option(
        1.0, "--temperature", "-T", help="Temperature T of the soft-label measures."
    ),
    as_json: bool = typer.Option(
        False, "--json", help='Print {"temperature": T, "rows": [...]} to stdout, nothing else.'
    ),
    per_example: bool = typer.Option(
        False, "--per-example", help="Also write examples.parquet (one row per example)."
    ),
    splits: list[str] = typer.Option(
        None, "--split", help="Analyse only this split (repeatable). Default: all."
    ),
    hierarchy: Path = typer.Option(
        None, "--hierarchy", help="CSV 'class,superclass' to score superclass recovery."
    ),
    reference_probs: Path = typer.Option(
        None,
        "--reference-probs",
        help="Reference probabilities: .npy (N,K), row = example_id, "
        "or .npz with probs[, example_id].",
    ),
    n_permutations: int = typer.Option(
        defaults.N_PERMUTATIONS,
        "--permutations",
        help="Permutations of the structure test (0 skips it).",
    ),
    oemc_delta: float = typer.Option(
        defaults.OEMC_DELTA, "--oemc-delta", help="Dark-mass threshold of the OEMC share."
    ),
    n_bins: int = typer.Option(
        defaults.N_BINS, "--bins", help="Equal-width confidence bins of the ECE."
    ),
    drop_nonfinite: bool = typer.Option(
        False, "--drop-nonfinite", help="Skip rows with NaN/Inf logits instead of refusing them."
    ),
    use_predicted_labels: bool = typer.Option(
        False, "--use-predicted-labels", help="Use the top-1 prediction where a label is missing."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no table."),
    engine: str = engine_option(),
    workers: int | None = workers_option(),
    scheduler: str | None = scheduler_option(),
) -> None:
    """Measure soft-label quality of every checkpoint: entropy, dark mass, SI/II, OEMC, ECE."""
    from kdlens.analysis.engine import analyze_into

    with progress_bar(quiet or as_json) as progress:
        result, paths = analyze_into(
            output,
            store,
            temperature=temperature,
            splits=splits or None,
            oemc_delta=oemc_delta,
            n_bins=n_bins,
            hierarchy=hierarchy,
            reference_probs=reference_probs,
            per_example=per_example,
            n_permutations=n_permutations,
            drop_nonfinite=drop_nonfinite,
            use_predicted_labels=use_predicted_labels,
            progress=progress,
            engine=engine,
            workers=workers,
            scheduler=scheduler,
        )
    if as_json:
        rows = json_rows(result.summary)
        typer.echo(json.dumps({"temperature": result.temperature, "rows": rows}))
        return
    if quiet:
        return
    _render_summary(result.summary, result.temperature, n_permutations)
    where = ", ".join(p.name for p in paths.values())
    extra = f" and {result.examples_path.name}" if result.examples_path is not None else ""
    say(f"wrote {where}{extra} to {output}")


def _render_summary(summary: Any, temperature: float, n_permutations: int) -> None:
    """The summary table at the terminal's width; says which columns did not fit."""
    from rich import box
    from rich.table import Table

    ids = ("run", "checkpoint", "split", "n")
    shown = [(c, h) for c, h in _SHOWN if c in summary.columns]
    rows = list(summary.iter_rows(named=True))
    columns = [(name, [str(r[name]) for r in rows]) for name in ids]
    columns += [(h, [_fmt(r.get(c)) for r in rows]) for c, h in shown]
    keep, left_out = _fit_columns(columns, console.width)
    table = Table(
        title=title(
            f"kdlens analyze (T = {temperature:g}; p = structure test with "
            f"{n_permutations:,} permutations, T* = fitted temperature)"
        ),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for i in keep:
        header = columns[i][0]
        table.add_column(header, justify="left" if header in ids[:3] else "right", no_wrap=True)
    for j in range(len(rows)):
        table.add_row(*[cell(columns[i][1][j]) for i in keep])
    show(table)
    if left_out:
        say(
            f"left out for width ({console.width} columns): {', '.join(left_out)}; "
            "a wider terminal, --json or the written summary.parquet have every column",
            wrap=True,
        )
    for line in _flags(summary):
        say(f"note: {line}", wrap=True)


def _flags(summary: Any) -> list[str]:
    """What the table's numbers do not say: a structure test that cannot apply, a
    temperature fit at the bound of its search."""
    out = []
    verdicts = set(summary["structure_verdict"].to_list()) if "structure_verdict" in summary else ()
    out += [f"structure test {v}" for v in verdicts if v.startswith("not applicable")]
    if "fitted_temperature_at_bound" in summary:
        hit = summary.filter(summary["fitted_temperature_at_bound"].fill_null(False))
        keys = sorted({f"{r}/{c}" for r, c in zip(hit["run"], hit["checkpoint"], strict=False)})
        if keys:
            out.append(
                f"T* reached the bound of its search for {', '.join(keys)}: the fit is "
                "degenerate (column fitted_temperature_at_bound); recommend scores these "
                "with the raw held-out NLL"
            )
    return out


@app.command("controls")
@handle_errors
def controls_command(
    store: str = typer.Argument(..., help="Logits store of the source teacher checkpoints."),
    kind: str = typer.Option(..., "--kind", help=f"Control teacher: {' | '.join(CONTROL_KINDS)}."),
    output: str = typer.Option(
        ..., "-o", "--out", help="Directory (or s3://... URL) for the control store."
    ),
    temperature: float = typer.Option(
        1.0, "--temperature", "-T", help="Temperature T at which the control is defined."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the 'permuted' control."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    as_json: bool = typer.Option(
        False, "--json", help='Print {"kind", "temperature", "files": [...]} as JSON on stdout.'
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
) -> None:
    """Write control teachers (LS-equivalent, permuted, class-mean) as an ordinary logits store."""
    from kdlens.hypotheses.controls import make_controls

    paths = make_controls(
        store, output, kind=kind, temperature=temperature, seed=seed, overwrite=overwrite
    )
    if as_json:
        doc = {"kind": kind, "temperature": temperature, "files": [str(p) for p in paths]}
        typer.echo(json.dumps(doc, indent=2))
    elif not quiet:
        say(f"wrote {len(paths)} control file(s) ({kind}, T = {temperature:g}) to {output}")
