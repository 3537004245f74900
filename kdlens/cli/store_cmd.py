"""`kdlens validate` and `kdlens import`: check and build logits stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kdlens._version import __version__
from kdlens.cli._app import app, handle_errors
from kdlens.cli._render import cell, labelled, progress_bar, say, show, title

if TYPE_CHECKING:  # imported in the bodies, so that --help imports no numerical library
    from kdlens.store.validate import ValidationReport

#: What imported numbers can be, restated so that --help stays light;
#: tests/test_cli_options.py checks it equals kdlens.store.importing.KINDS.
KINDS = ("logits", "probs", "log-probs")


def _version(value: bool) -> None:
    if value:
        say(f"kdlens {__version__}")
        raise typer.Exit()


def _help(ctx: typer.Context, value: bool) -> None:
    if value:
        typer.echo(ctx.get_help())
        raise typer.Exit()


# The root's --help is an ordinary bool option: typer coerces the built-in one, absent
# from `kdlens CMD --help`, through pydantic, which costs that help 0.2 s to import.
@app.callback(add_help_option=False)
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    show_help: bool = typer.Option(
        False, "--help", callback=_help, is_eager=True, help="Show this message and exit."
    ),
) -> None:
    """Which teacher checkpoint should you distill from? Analyses over dumped logits."""


@app.command("validate")
@handle_errors
def validate_cmd(
    store: str = typer.Argument(
        ..., help="A Parquet file, a directory of them, or a glob (a path or a URL)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print only the problems; the exit code says the rest."
    ),
) -> None:
    """Check a logits store: exit 0 when valid, 1 when problems are found, 2 when unreadable."""
    from kdlens.store.validate import validate

    report = validate(store)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    elif quiet:
        _render_problems(report)
    else:
        _render(report)
    raise typer.Exit(report.exit_code)


def _render(r: ValidationReport) -> None:
    from rich.table import Table

    if r.files == 0:  # nothing readable: the reasons are all there is to say
        _render_problems(r)
        return
    head = Table.grid(padding=(0, 2))
    head.add_row("store", cell(r.source))
    head.add_row("files", str(r.files))
    head.add_row("format version", ", ".join(r.format_versions) or "-")
    head.add_row("classes (K)", str(r.num_classes))
    names = r.class_names
    head.add_row(
        "class names",
        cell((", ".join(names[:8]) + (" ..." if len(names) > 8 else "")) if names else "-"),
    )
    head.add_row(
        "runs",
        cell(f"{len(r.runs)}: " + ", ".join(r.runs[:6]) + (" ..." if len(r.runs) > 6 else "")),
    )
    head.add_row("checkpoints", str(r.checkpoints))
    head.add_row(
        "rows per split", cell(", ".join(f"{s}={n:,}" for s, n in sorted(r.splits.items())))
    )
    show(head)
    if r.parts:
        t = Table(title=title("parts"), show_lines=False)
        for col in ("run", "checkpoint", "split", "rows", "labels", "NaN", "Inf", "dup ids"):
            t.add_column(
                col, justify="right" if col not in ("run", "checkpoint", "split") else "left"
            )
        shown = r.parts if len(r.parts) <= 40 else r.parts[:40]
        for p in shown:
            lab = "-" if p.label_min is None else f"{p.label_min}..{p.label_max}"
            t.add_row(
                cell(p.run),
                cell(p.checkpoint),
                cell(p.split),
                f"{p.rows:,}",
                lab,
                str(p.nan),
                str(p.inf),
                str(p.duplicate_ids),
            )
        if len(r.parts) > 40:
            t.caption = title(f"... {len(r.parts) - 40} more parts (use --json for all)")
        show(t)
    _render_problems(r)
    if r.ok:
        say("valid", style="bold green")


def _render_problems(r: ValidationReport) -> None:
    for u in r.unreadable:
        labelled("unreadable", u, style="bold red")
    for msg in r.problems:
        labelled("problem", msg, style="bold yellow")


@app.command("import")
@handle_errors
def import_cmd(
    files: list[Path] = typer.Argument(
        ...,
        help="Input arrays (N, K): .npy, .npz, .pt, .safetensors, .csv, or a table with a "
        "column of equal-length lists: .arrow, .parquet, a directory of .arrow shards.",
    ),
    out: str = typer.Option(
        ..., "-o", "--out", help="The store directory to create (a path or an s3://... URL)."
    ),
    kind: str = typer.Option(
        ..., "--kind", help=f"What the numbers are: {' | '.join(KINDS)}. Never guessed."
    ),
    labels: str | None = typer.Option(
        None, "--labels", help="Labels: a key/column inside each input, or a .npy/.txt file."
    ),
    split: str = typer.Option("test", "--split", help="Split name of the imported rows."),
    run: str = typer.Option("imported", "--run", help="Run name shared by all inputs."),
    checkpoints: list[str] | None = typer.Option(
        None, "--checkpoint", help="Checkpoint name per input (repeat); default: the file stem."
    ),
    classes: Path | None = typer.Option(
        None,
        "--classes",
        help="Class names: a .json list, a .txt file (one per line) or a .csv with a name column.",
    ),
    key: str | None = typer.Option(
        None,
        "--key",
        help="Array key or table column holding the outputs (.npz/.pt/.safetensors/.arrow/"
        ".parquet); default: logits, probs, ... or the only 2-D array.",
    ),
    id_column: str | None = typer.Option(
        None,
        "--id-column",
        help="Key or column of each row's example id (distinct integers); default: row index.",
    ),
    prob_floor: float = typer.Option(
        1e-12, "--prob-floor", help="Zero probabilities are stored as log(prob_floor)."
    ),
    prob_tol: float = typer.Option(1e-3, "--prob-tol", help="Tolerance for rows summing to 1."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset name for the metadata."),
    model: str | None = typer.Option(None, "--model", help="Model name for the metadata."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace checkpoints of the same names (without it, a checkpoint that exists "
        "gets --split added when it does not hold that split yet).",
    ),
    epoch: int | None = typer.Option(
        None, "--epoch", help="Training epoch of the imported checkpoints (for the grid)."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Training batch size of the imported checkpoints."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the imported checkpoints as JSON on stdout."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display; no output."),
) -> None:
    """Import logits, probabilities or log-probabilities as checkpoints of one store."""
    from kdlens.store.importing import import_files

    with progress_bar(quiet or as_json, unit="files") as progress:
        done = import_files(
            files,
            out,
            kind=kind,  # type: ignore[arg-type]  # import_files validates it
            labels=labels,
            split=split,
            run=run,
            checkpoints=checkpoints or None,
            classes=classes,
            key=key,
            prob_floor=prob_floor,
            prob_tol=prob_tol,
            dataset=dataset,
            model=model,
            overwrite=overwrite,  # type: ignore[arg-type]
            epoch=epoch,
            batch_size=batch_size,
            id_column=id_column,
            progress=progress,
        )
    if as_json:
        rows = [
            {
                "source": str(i.source),
                "path": str(i.path),
                "run": i.run,
                "checkpoint": i.checkpoint,
                "split": split,
                "rows": i.rows,
            }
            for i in done
        ]
        doc = {"store": str(out), "kind": kind, "prob_floor": prob_floor, "checkpoints": rows}
        typer.echo(json.dumps(doc, indent=2))
        return
    if quiet:
        return
    for item in done:
        say(f"{item.source} -> {item.path} ({item.rows:,} rows, split {split})")
    extra = f", floor {prob_floor:g}" if kind == "probs" else ""
    say(f"imported {len(done)} checkpoint(s) as {kind}{extra} into {out}", style="green")
