"""`kdlens recommend`: rank teacher checkpoints and show the sweet spot."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import typer

from kdlens._internal import defaults
from kdlens.cli._app import (
    app,
    engine_option,
    handle_errors,
    scheduler_option,
    workers_option,
)
from kdlens.cli._render import cell, console, esc, labelled, progress_bar, say, title

if TYPE_CHECKING:  # imported in the bodies, so that --help starts at once
    import polars as pl

    from kdlens.recommend.rank import Recommendation


@app.command("recommend")
@handle_errors
def recommend_cmd(
    source: str = typer.Argument(
        ...,
        help="A logits store (file, directory or glob) or an analysis directory "
        "with summary.parquet.",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print everything the text output says (recommended, reason, ranking, "
        "P(best score), notes, advice) as JSON on stdout.",
    ),
    top: int | None = typer.Option(None, "--top", min=1, help="Show only the best N checkpoints."),
    temperature: float = typer.Option(
        defaults.RECOMMEND_TEMPERATURE,
        "--temperature",
        "-T",
        help="Temperature of the soft-label signals (dark mass, OEMC, similarity): "
        "your distillation T.",
    ),
    n_bootstrap: int = typer.Option(
        defaults.N_BOOTSTRAP,
        "--bootstrap",
        "-B",
        min=0,
        help="Bootstrap replicates over examples (0 = no uncertainty).",
    ),
    seed: int = typer.Option(defaults.BOOTSTRAP_SEED, "--seed", help="Seed of the bootstrap."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress display; print only the recommendation."
    ),
    ensemble: bool = typer.Option(
        False,
        "--ensemble",
        help="Also select an ensemble teacher (greedy forward selection with replacement "
        "by held-out NLL after a temperature fit) from the same read of the store.",
    ),
    max_members: int = typer.Option(
        defaults.ENSEMBLE_MAX_MEMBERS,
        "--max-members",
        "-M",
        min=1,
        help="Greedy steps of the ensemble selection (with --ensemble).",
    ),
    rule: str = typer.Option(
        defaults.ENSEMBLE_RULE,
        "--rule",
        help=f"How the ensemble combines its members ({', '.join(defaults.ENSEMBLE_RULES)}).",
    ),
    engine: str = engine_option(),
    workers: int | None = workers_option(),
    scheduler: str | None = scheduler_option(),
) -> None:
    """Rank every checkpoint for distillation; exit 1 when there is nothing to rank."""
    from kdlens.recommend.rank import recommend

    ens = None
    with progress_bar(quiet or as_json) as progress:
        if ensemble:
            from kdlens.recommend.ensemble import recommend_with_ensemble

            rec, ens = recommend_with_ensemble(
                source,
                temperature=temperature,
                n_bootstrap=n_bootstrap,
                seed=seed,
                top=top,
                max_members=max_members,
                rule=rule,
                progress=progress,
                engine=engine,
                workers=workers,
                scheduler=scheduler,
            )
        else:
            rec = recommend(
                source,
                temperature=temperature,
                n_bootstrap=n_bootstrap,
                seed=seed,
                top=top,
                progress=progress,
                engine=engine,
                workers=workers,
                scheduler=scheduler,
            )
    if as_json:
        payload = rec.to_dict()
        if ens is not None:
            payload["ensemble"] = ens.to_dict()
        typer.echo(json.dumps(payload, indent=2, default=str))
    elif quiet:
        _render_verdict(rec)
    else:
        _render(rec)
    if ens is not None and not as_json:
        from kdlens.cli.ensemble_cmd import render_ensemble

        render_ensemble(ens, brief=quiet)
    if not rec.ok:
        if as_json:
            typer.echo(f"error: {rec.reason}", err=True)
        raise typer.Exit(1)


def _f(v: Any, fmt: str = "{:.4f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt.format(v)


def _render(rec: Recommendation) -> None:
    from kdlens.recommend.result import PICK_RULE

    console.print(
        f"[bold]kdlens recommend[/] {esc(rec.source)}  (T = {rec.temperature:g}, "
        f"bootstrap = {rec.n_bootstrap}, basis: {rec.basis})",
        highlight=False,
    )
    console.print(_ranking_table(rec))
    _render_verdict(rec)
    for a in rec.advice:
        labelled("next experiment", a, style="bold cyan")
    if rec.pareto.height and rec.ok:
        console.print(_pareto_table(rec.pareto))
    _render_map(rec.sweet_spot)
    for n in rec.notes:
        labelled("note", n, style="yellow")
    if rec.ranking.height > 1:  # with one checkpoint nothing was scored or resampled
        say(f"{rec.score_definition} (w = {rec.collapse_weight:g})", style="dim")
        say(f"{rec.probability_best_definition}; {PICK_RULE}", style="dim")


def _ranking_table(rec: Recommendation) -> Any:
    from rich.table import Table

    t = Table(title=title("ranking (best first)"))
    # Essential columns always; the signals behind the score only where they fit.
    wide = console.width >= 140
    cols = ["rank", "run/checkpoint", "batch", "epoch", "score", "P(best score)", "held-out acc"]
    if wide:
        cols += [
            "rank 95%",
            "NLL fit",
            "dark mass (transfer)",
            "collapse",
            "SI (transfer)",
            "OEMC (transfer)",
        ]
    else:
        t.caption = "more signals in a terminal >= 140 columns wide, or with --json"
    for name in cols:
        t.add_column(
            name,
            justify="left" if name == "run/checkpoint" else "right",
            no_wrap=name == "run/checkpoint",
        )
    for r in rec.ranking.iter_rows(named=True):
        cells = [
            _f(r["rank"], "{}"),
            cell(f"{r['run']}/{r['checkpoint']}"),
            _f(r["batch_size"], "{}"),
            _f(r["epoch"], "{}"),
            _f(r["score"]) + (" †" if r.get("fitted_temperature_at_bound") else ""),
            _f(r["probability_best"], "{:.2f}"),
            _f(r["accuracy_heldout"], "{:.2%}"),
        ]
        if wide:
            cells += _signal_cells(r)
        t.add_row(*cells, style="bold green" if r["rank"] == 1 else None)
    if rec.ranking["fitted_temperature_at_bound"].any():
        t.caption = (t.caption + "; " if t.caption else "") + (
            "† = temperature fit at its bound: scored with the raw held-out NLL at T = 1"
        )
    return t


def _signal_cells(r: dict[str, Any]) -> list[str]:
    interval = (
        "-"
        if r["rank_low"] is None or not math.isfinite(r["rank_low"])
        else f"{r['rank_low']:.0f}-{r['rank_high']:.0f}"
    )
    return [
        interval,
        _f(r["nll_fit_heldout"]),
        _f(r["dark_mass_transfer"], "{:.3g}"),
        _f(r["collapse"], "{:.2f}"),
        _f(r["similarity_information_transfer"], "{:.3g}"),
        _f(r["oemc_share_transfer"], "{:.2f}"),
    ]


def _pareto_table(pareto: pl.DataFrame) -> Any:
    from rich.table import Table

    p = Table(
        title=title("Pareto front: held-out accuracy vs transfer-split similarity information")
    )
    for c in ("run", "checkpoint", "held-out acc", "SI (transfer)", "rank"):
        p.add_column(c)
    for r in pareto.iter_rows(named=True):
        p.add_row(
            cell(r["run"]),
            cell(r["checkpoint"]),
            _f(r["accuracy_heldout"], "{:.2%}"),
            _f(r["similarity_information_transfer"], "{:.3g}"),
            _f(r["rank"], "{}"),
        )
    return p


def _render_verdict(rec: Recommendation) -> None:
    if rec.ok:
        labelled("recommended", rec.reason, style="bold green")
    else:
        labelled("nothing recommended", rec.reason, style="bold red")


def _render_map(sweet: pl.DataFrame) -> None:
    from rich.table import Table

    if not sweet.height:
        return
    row_axis, col_axis = sweet["row_axis"][0], sweet["column_axis"][0]
    rows = sorted(sweet["row"].unique().to_list())
    cols = sorted(sweet["column"].unique().to_list())
    m = Table(
        title=title(
            f"sweet-spot map: score by {row_axis} x {col_axis} (* = recommended, . = missing)"
        )
    )
    # Two header lines and three decimals (as the report's map): a grid of seven epochs
    # fits 80 columns instead of having its scores cut to "-0.08…".
    m.add_column(cell(f"{row_axis}\n\\ {col_axis}"), justify="right")
    for c in cols:
        m.add_column(cell(c), justify="right", no_wrap=True)
    at = {(r["row"], r["column"]): r for r in sweet.iter_rows(named=True)}
    for rv in rows:
        out = []
        for cv in cols:
            r = at.get((rv, cv))
            if r is None or r["missing"]:
                out.append("[dim].[/]")
            elif r["recommended"]:
                out.append(f"[bold green]*{r['score']:.3f}[/]")
            else:
                out.append(f"{r['score']:.3f}")
        m.add_row(cell(rv), *out)
    console.print(m)
