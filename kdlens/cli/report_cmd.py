"""``kdlens report`` and ``kdlens demo``: the HTML report, and the whole pipeline on digits."""

from __future__ import annotations

from pathlib import Path

import typer

from kdlens._internal import defaults
from kdlens.cli._app import (
    app,
    engine_option,
    handle_errors,
    scheduler_option,
    workers_option,
)
from kdlens.cli._render import say, status_line


@app.command("report")
@handle_errors
def report_cmd(
    source: str = typer.Argument(
        ...,
        help="A logits store (file, directory or glob) or an analysis directory (kdlens analyze).",
    ),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="The HTML file to write."),
    store: str | None = typer.Option(
        None,
        "--store",
        help="The logits store behind an analysis directory (adds the reliability diagram and "
        "per-example entropy distributions).",
    ),
    temperature: float = typer.Option(
        1.0, "--temperature", "-T", help="Temperature of the soft labels when analysing a store."
    ),
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        help="RUN/CHECKPOINT whose class similarity is shown (default: the recommended one).",
    ),
    students: Path | None = typer.Option(
        None,
        "--students",
        help="Validation results (Parquet or CSV with run, checkpoint, student_accuracy) "
        "to show on the map.",
    ),
    n_bootstrap: int = typer.Option(
        defaults.N_BOOTSTRAP,
        "--bootstrap",
        "-B",
        min=0,
        help="Bootstrap replicates of the ranking when a store is given (0 = none).",
    ),
    png_dir: Path | None = typer.Option(
        None, "--png", help="Also write every chart as PNG and SVG into this directory."
    ),
    title: str | None = typer.Option(None, "--title", help="Title of the page."),
    ensemble: bool = typer.Option(
        False,
        "--ensemble",
        help="Also show an ensemble teacher (recommend --ensemble's selection, defaults) "
        "beside the recommended checkpoint; needs the store.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the path of the report."),
    engine: str = engine_option(),
    workers: int | None = workers_option(),
    scheduler: str | None = scheduler_option(),
) -> None:
    """Write a self-contained HTML report (works offline) of a store or an analysis."""
    from kdlens.report.build import build_report

    spinner, progress = status_line(quiet)
    with spinner:
        path = build_report(
            source,
            out,
            temperature=temperature,
            store=store,
            checkpoint=checkpoint,
            students=students,
            n_bootstrap=n_bootstrap,
            png_dir=png_dir,
            title=title,
            progress=progress,
            ensemble=ensemble,
            engine=engine,
            workers=workers,
            scheduler=scheduler,
        )
    if png_dir is not None and not quiet:
        say(f"charts written to {png_dir}/ (PNG and SVG)", err=True)
    say(path)


@app.command("demo")
@handle_errors
def demo_cmd(
    out: Path = typer.Option(
        Path("kdlens-demo"), "--out", "-o", help="Directory for the store, analysis and report."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A tiny grid (seconds) instead of the full one (minutes)."
    ),
    png: bool = typer.Option(
        False, "--png", help="Also export every chart as PNG and SVG into OUT/charts."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Retrain runs in OUT that hold another configuration."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the path of the report."),
) -> None:
    """Run the whole pipeline on sklearn's digits: dump a grid, analyse, recommend, report."""
    from kdlens.harness.demo import run_demo

    progress = (lambda _: None) if quiet else (lambda m: say(m, err=True))
    result = run_demo(out, quick=quick, overwrite=overwrite, png=png, progress=progress)
    if not quiet:
        s = result.seconds
        say(
            f"recommended: {result.recommended or 'none'}; took {s['total']:.0f} s "
            f"(dump {s['dump']:.0f}, analyze {s['analyze']:.0f}, recommend {s['recommend']:.0f}, "
            f"report {s['report']:.0f})",
            err=True,
        )
    say(result.report)
