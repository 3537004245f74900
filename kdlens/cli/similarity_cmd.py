"""``kdlens compare`` and ``kdlens graph``: parse, call one library function, render."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kdlens._internal import defaults
from kdlens.cli._app import app, handle_errors
from kdlens.cli._render import cell, console, esc, say, show, title
from kdlens.errors import InputError

# Library modules and rich's widgets are imported inside the command bodies, so that
# `kdlens --help` imports no numerical library.


@app.command("compare")
@handle_errors
def compare_command(
    real_students: str = typer.Argument(
        ...,
        help="Store of logits of students distilled from the real teacher (one run or "
        "checkpoint per student seed).",
    ),
    control_students: str = typer.Argument(
        ...,
        help="Store of logits of students distilled from a control teacher (e.g. the "
        "LS-equivalent one) on the same examples.",
    ),
    split: str = typer.Option("test", "--split", help="Split the students are evaluated on."),
    n_bootstrap: int = typer.Option(
        defaults.COMPARE_N_BOOTSTRAP,
        "--bootstrap",
        "-B",
        min=0,
        help="Bootstrap resamples of the accuracy difference's CI.",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed of the bootstrap."),
    alpha: float = typer.Option(
        defaults.ALPHA, "--alpha", help="Significance level of the verdict."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict line."),
) -> None:
    """Knowledge distillation or regularization? Compare two sets of students."""
    from rich import box
    from rich.table import Table

    from kdlens.hypotheses.compare import (
        KNOWLEDGE_DISTILLATION,
        TEACHER_HELPS,
        VERSUS_NO_TEACHER,
        compare_stores,
    )

    frame, result = compare_stores(
        real_students,
        control_students,
        split=split,
        n_bootstrap=n_bootstrap,
        seed=seed,
        alpha=alpha,
    )
    if as_json:
        doc = result.to_dict()
        doc["students"] = frame.to_dicts()
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    colour = "green" if result.verdict in (KNOWLEDGE_DISTILLATION, TEACHER_HELPS) else "yellow"
    verdict = f"verdict: [bold {colour}]{esc(result.verdict)}[/] ({esc(result.reason)})"
    if quiet:
        console.print(verdict, highlight=False, soft_wrap=True)
        return
    table = Table(box=box.SIMPLE, title=title(f"students on split {split!r}"))
    for col in ("side", "run", "checkpoint", "seed", "n", "accuracy"):
        table.add_column(col, justify="right" if col in ("n", "accuracy") else "left")
    for row in frame.iter_rows(named=True):
        table.add_row(
            cell(row["side"]),
            cell(row["run"]),
            cell(row["checkpoint"]),
            cell(row["seed"] or "-"),
            f"{row['n']:,}",
            f"{row['accuracy']:.4f}",
        )
    show(table)
    pct = int(round(result.confidence * 100))
    control = "no teacher" if result.comparison == VERSUS_NO_TEACHER else "control"
    say(f"comparison: {result.comparison}")
    say(
        f"accuracy real {result.accuracy_a:.4f} vs {control} {result.accuracy_b:.4f}: "
        f"difference {result.difference:+.4f} ({pct}% CI {result.ci_low:+.4f} to "
        f"{result.ci_high:+.4f})"
    )
    say(
        f"McNemar exact p = {result.mcnemar_p:.3g} (only real right: {result.a_only_correct}, "
        f"only control right: {result.b_only_correct})"
    )
    if result.seed_test is not None:
        say(f"{result.seed_test} over seeds: p = {result.seed_p:.3g}")
    console.print(verdict, highlight=False, soft_wrap=True)


@app.command("graph")
@handle_errors
def graph_command(
    store: str = typer.Argument(..., help="Logits store: a Parquet file, a directory or a glob."),
    run: str = typer.Option(..., "--run", help="Run of the checkpoint."),
    checkpoint: str = typer.Option(..., "--checkpoint", help="Checkpoint name."),
    output: Path = typer.Option(
        ...,
        "-o",
        "--out",
        help="Output file: .graphml, .json (node-link) or .parquet (edges).",
    ),
    split: str = typer.Option("test", "--split", help="Split to compute class similarity on."),
    temperature: float = typer.Option(1.0, "--temperature", "-T", help="Temperature T of q."),
    top_k: int = typer.Option(
        defaults.TOP_K, "--top-k", help="Keep each class's k strongest neighbours."
    ),
    threshold: float = typer.Option(
        None, "--threshold", help="Keep only edges at least this strong (optional)."
    ),
    hierarchy: Path = typer.Option(
        None,
        "--hierarchy",
        help="JSON/CSV class → superclass map; clusters are scored against it (ARI, NMI).",
    ),
    n_clusters: int = typer.Option(
        None, "--clusters", help="Number of class clusters (default: number of superclasses)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the graph's summary (classes, edges, SI, II) as JSON."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
) -> None:
    """Write the class similarity graph of one checkpoint (nodes = classes)."""
    from kdlens.measures.similarity import read_hierarchy, store_class_graph, write_graph

    if output.suffix.lower() not in (".graphml", ".json", ".parquet"):
        raise InputError(f"{output}: graph output must end in .graphml, .json or .parquet")
    sup = None
    if hierarchy is not None:
        from kdlens.store.reader import open_store

        st = open_store(store)
        sup = read_hierarchy(hierarchy, st.num_classes, st.class_names)[0]
    g = store_class_graph(
        store,
        run,
        checkpoint,
        split=split,
        temperature=temperature,
        top_k=top_k,
        threshold=threshold,
        superclass_of_class=sup,
        n_clusters=n_clusters,
    )
    write_graph(
        g.edges,
        output,
        num_classes=g.result.num_classes,
        class_names=g.class_names,
        clusters=g.clusters,
        superclasses=g.superclass_of_class,
        temperature=temperature,
    )
    res = g.result
    if as_json:
        doc = {
            "output": str(output),
            "run": run,
            "checkpoint": checkpoint,
            "split": split,
            "temperature": temperature,
            "num_classes": res.num_classes,
            "edges": g.edges.height,
            "similarity_information": res.similarity_information,
            "instance_information": res.instance_information,
            "superclass_recovery": g.recovery,
        }
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    if quiet:
        return
    say(
        f"{output}: {res.num_classes} classes, {g.edges.height} edges; "
        f"SI = {res.similarity_information:.4f}, II = {res.instance_information:.4f} "
        f"(T = {temperature:g})"
    )
    if g.recovery is not None:
        say(
            f"superclass recovery: ARI = {g.recovery['ari']:.3f}, NMI = {g.recovery['nmi']:.3f} "
            f"({g.recovery['n_clusters']} clusters)"
        )
