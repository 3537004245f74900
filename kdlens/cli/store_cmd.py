"""`kdlens validate` and `kdlens import`: check and build logits stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kdlens._version import __version__
from kdlens.cli._app import app, console, handle_errors

if TYPE_CHECKING:  # imported in the bodies, so that --help imports no numerical library
    from kdlens.store.validate import ValidationReport

#: What imported numbers can be, restated so that --help stays light;
#: tests/test_cli_options.py checks it equals kdlens.store.importing.KINDS.
KINDS = ("logits", "probs", "log-probs")


def _version(value: bool) -> None:
    if value:
        console.print(f"kdlens {__version__}")
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
    store: str = typer.Argument(..., help="A Parquet file, a directory of them, or a glob."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a logits store: exit 0 when valid, 1 when problems are found, 2 when unreadable."""
    from kdlens.store.validate import validate

    report = validate(store)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _render(report)
    raise typer.Exit(report.exit_code)


def _render(r: ValidationReport) -> None:
    from rich.table import Table

    if r.files == 0:  # nothing readable: the reasons are all there is to say
        for u in r.unreadable:
            console.print(f"[bold red]unreadable:[/] {u}", highlight=False, soft_wrap=True)
        return
    head = Table.grid(padding=(0, 2))
    head.add_row("store", r.source)
    head.add_row("files", str(r.files))
    head.add_row("format version", ", ".join(r.format_versions) or "-")
    head.add_row("classes (K)", str(r.num_classes))
    names = r.class_names
    head.add_row(
        "class names", (", ".join(names[:8]) + (" ..." if len(names) > 8 else "")) if names else "-"
    )
    head.add_row(
        "runs", f"{len(r.runs)}: " + ", ".join(r.runs[:6]) + (" ..." if len(r.runs) > 6 else "")
    )
    head.add_row("checkpoints", str(r.checkpoints))
    head.add_row("rows per split", ", ".join(f"{s}={n:,}" for s, n in sorted(r.splits.items())))
    console.print(head)
    if r.parts:
        t = Table(title="parts", show_lines=False)
        for col in ("run", "checkpoint", "split", "rows", "labels", "NaN", "Inf", "dup ids"):
            t.add_column(
                col, justify="right" if col not in ("run", "checkpoint", "split") else "left"
            )
        shown = r.parts if len(r.parts) <= 40 else r.parts[:40]
        for p in shown:
            lab = "-" if p.label_min is None else f"{p.label_min}..{p.label_max}"
            t.add_row(
                p.run,
                p.checkpoint,
                p.split,
                f"{p.rows:,}",
                lab,
                str(p.nan),
                str(p.inf),
                str(p.duplicate_ids),
            )
        if len(r.parts) > 40:
            t.caption = f"... {len(r.parts) - 40} more parts (use --json for all)"
        console.print(t)
    for u in r.unreadable:
        console.print(f"[bold red]unreadable:[/] {u}", highlight=False, soft_wrap=True)
    for msg in r.problems:
        console.print(f"[bold yellow]problem:[/] {msg}", highlight=False, soft_wrap=True)
    if r.ok:
        console.print("[bold green]valid[/]")


@app.command("import")
@handle_errors
def import_cmd(
    files: list[Path] = typer.Argument(..., help="Input arrays (N, K): .npy, .npz, .pt, .csv."),
    out: Path = typer.Option(..., "-o", "--out", help="The store directory to create."),
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
        None, "--classes", help="Class names: a .json list or a .txt file, one per line."
    ),
    key: str | None = typer.Option(None, "--key", help="Array key inside .npz/.pt inputs."),
    prob_floor: float = typer.Option(
        1e-12, "--prob-floor", help="Zero probabilities are stored as log(prob_floor)."
    ),
    prob_tol: float = typer.Option(1e-3, "--prob-tol", help="Tolerance for rows summing to 1."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset name for the metadata."),
    model: str | None = typer.Option(None, "--model", help="Model name for the metadata."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into a non-empty directory, replacing checkpoints of the same names.",
    ),
) -> None:
    """Import logits, probabilities or log-probabilities as checkpoints of one store."""
    from kdlens.store.importing import import_files

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
    )
    for item in done:
        console.print(f"{item.source} -> {item.path} ({item.rows:,} rows)", highlight=False)
    extra = f", floor {prob_floor:g}" if kind == "probs" else ""
    console.print(f"[green]imported {len(done)} checkpoint(s) as {kind}{extra} into {out}[/]")
