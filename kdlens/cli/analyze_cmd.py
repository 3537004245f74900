"""``kdlens analyze`` and ``kdlens controls``: parse, call one library function, render."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from kdlens._internal import defaults
from kdlens.cli._app import app, console, err_console, handle_errors

# Library modules (numpy, polars, scipy, ...) and rich's widgets are imported inside the
# command bodies: typer needs only the signatures, so `kdlens --help` starts at once.

#: The control kinds, restated here so that --help imports no numerical library;
#: tests/test_cli_options.py checks it equals kdlens.hypotheses.controls.CONTROL_KINDS.
CONTROL_KINDS = ("ls", "permuted", "class-mean")

#: Summary columns shown in the terminal table (all of them go to the files / --json).
_SHOWN = (
    ("accuracy", "acc"),
    ("nll", "nll"),
    ("dark_mass", "dark"),
    ("oemc_share", "OEMC"),
    ("similarity_information", "SI"),
    ("instance_information", "II"),
    ("structure_p_value", "p"),
    ("fitted_temperature", "T*"),
)


def _progress(quiet: bool) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from kdlens._internal.progress import NullProgress

    if quiet:
        return NullProgress()
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


@app.command("analyze")
@handle_errors
def analyze_command(
    store: str = typer.Argument(..., help="Logits store: a Parquet file, a directory or a glob."),
    output: Path = typer.Option(
        Path("kdlens-analysis"),
        "-o",
        "--out",
        "--output",
        help="Directory for summary/classes/similarity/edges/calibration .parquet.",
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
) -> None:
    """Measure soft-label quality of every checkpoint: entropy, dark mass, SI/II, OEMC, ECE."""
    from rich import box
    from rich.table import Table

    from kdlens._internal.progress import NullProgress
    from kdlens.analysis.engine import analyze

    progress = _progress(quiet or as_json)
    with _Nothing() if isinstance(progress, NullProgress) else progress:
        result = analyze(
            store,
            temperature=temperature,
            splits=splits or None,
            oemc_delta=oemc_delta,
            n_bins=n_bins,
            hierarchy=hierarchy,
            reference_probs=reference_probs,
            per_example_path=(output / "examples.parquet") if per_example else None,
            n_permutations=n_permutations,
            drop_nonfinite=drop_nonfinite,
            use_predicted_labels=use_predicted_labels,
            progress=progress,
        )
    paths = result.write(output)
    if as_json:
        rows = [{k: _clean(v) for k, v in r.items()} for r in result.summary.iter_rows(named=True)]
        typer.echo(json.dumps({"temperature": result.temperature, "rows": rows}))
        return
    if quiet:
        return
    table = Table(
        title=f"kdlens analyze (T = {result.temperature:g}; p = structure test with "
        f"{n_permutations:,} permutations, T* = fitted temperature)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for name in ("run", "checkpoint", "split"):
        width = min(16, max([len(name)] + [len(str(v)) for v in result.summary[name]]))
        table.add_column(name, overflow="fold", min_width=width)
    table.add_column("n", justify="right", no_wrap=True)
    shown = [(c, h) for c, h in _SHOWN if c in result.summary.columns]
    for _, header in shown:
        table.add_column(header, justify="right", no_wrap=True)
    for r in result.summary.iter_rows(named=True):
        table.add_row(
            r["run"], r["checkpoint"], r["split"], str(r["n"]), *[_fmt(r.get(c)) for c, _ in shown]
        )
    console.print(table)
    for line in _flags(result.summary):
        console.print(f"note: {line}", highlight=False, markup=False)
    where = ", ".join(p.name for p in paths.values())
    extra = f" and {result.examples_path.name}" if result.examples_path is not None else ""
    console.print(f"wrote {where}{extra} to {output}", highlight=False)


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


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@app.command("controls")
@handle_errors
def controls_command(
    store: str = typer.Argument(..., help="Logits store of the source teacher checkpoints."),
    kind: str = typer.Option(..., "--kind", help=f"Control teacher: {' | '.join(CONTROL_KINDS)}."),
    output: Path = typer.Option(
        ..., "-o", "--out", "--output", help="Directory for the control store."
    ),
    temperature: float = typer.Option(
        1.0, "--temperature", "-T", help="Temperature T at which the control is defined."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the 'permuted' control."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Write control teachers (LS-equivalent, permuted, class-mean) as an ordinary logits store."""
    from kdlens.hypotheses.controls import make_controls

    paths = make_controls(
        store, output, kind=kind, temperature=temperature, seed=seed, overwrite=overwrite
    )
    console.print(
        f"wrote {len(paths)} control checkpoint file(s) ({kind}, T = {temperature:g}) to {output}",
        highlight=False,
    )
