"""`kdlens ensemble`: write a mixture of checkpoints as a store; the ensemble's text output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from kdlens._internal import defaults
from kdlens.cli._app import app, fail, handle_errors
from kdlens.cli._render import console, esc, labelled, say, title
from kdlens.cli.recommend_cmd import _f

if TYPE_CHECKING:  # imported in the bodies, so that --help starts at once
    from kdlens.recommend.ensemble_result import EnsembleRecommendation


@app.command("ensemble")
@handle_errors
def ensemble_cmd(
    ctx: typer.Context,
    store: str = typer.Argument(..., help="The logits store holding the members."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Where to write the mixture: a .parquet file, or a directory that receives "
        "<run>-<checkpoint>.parquet.",
    ),
    members: str | None = typer.Option(
        None, "--members", help="Comma-separated RUN/CHECKPOINT members of the mixture."
    ),
    weights: str | None = typer.Option(
        None,
        "--weights",
        help="Comma-separated weights, one per member (default: equal; normalised to sum 1).",
    ),
    from_recommendation: Path | None = typer.Option(
        None,
        "--from-recommendation",
        help="Take members, weights, rule and T from `kdlens recommend --ensemble --json` "
        "output (a JSON file).",
    ),
    rule: str = typer.Option(
        defaults.ENSEMBLE_RULE,
        "--rule",
        help=f"Combination rule ({', '.join(defaults.ENSEMBLE_RULES)}); with "
        "--from-recommendation the recommendation's unless given.",
    ),
    temperature: float = typer.Option(
        defaults.RECOMMEND_TEMPERATURE,
        "--temperature",
        "-T",
        help="The distillation T of the mean_prob_t rule; with --from-recommendation the "
        "recommendation's unless given.",
    ),
    run: str = typer.Option("ensemble", "--run", help="Run name of the mixture."),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="Checkpoint name of the mixture (default: RULE-M)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the path, members, weights, rule and T as JSON."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the path."),
) -> None:
    """Write a weighted mixture of checkpoints as an ordinary one-checkpoint store."""
    from kdlens.store.mixture import write_ensemble

    names: list[str]
    w: list[float] | None = None
    chosen: dict[str, Any] = {}
    if (members is None) == (from_recommendation is None):
        fail("give exactly one of --members and --from-recommendation")
    if from_recommendation is not None:
        chosen = _from_recommendation(from_recommendation)
        names, w = chosen["member_names"], chosen["weights"]
        given = {n for n in ("rule", "temperature") if _given(ctx, n)}
        rule = rule if "rule" in given else chosen.get("rule") or rule
        temperature = (
            temperature if "temperature" in given else chosen.get("temperature") or temperature
        )
    else:
        assert members is not None
        names = [m.strip() for m in members.split(",") if m.strip()]
    if weights is not None:
        w = [_number(v) for v in weights.split(",")]
    path = write_ensemble(
        store,
        names,
        out,
        weights=w,
        rule=rule,
        temperature=temperature,
        run=run,
        checkpoint=checkpoint,
        overwrite=overwrite,
    )
    if as_json:
        from kdlens.store.mixture import check_weights

        out_w = check_weights(w, len(names)).tolist()
        info = {"path": str(path), "members": names, "weights": out_w, "rule": rule}
        typer.echo(json.dumps(info | {"temperature": temperature}, indent=2))
    else:
        say(path)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether an option was given on the command line (not its default)."""
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        fail(f"--weights: {text.strip()!r} is not a number")
        raise  # unreachable: fail exits


def _from_recommendation(path: Path) -> dict[str, Any]:
    """Members, weights, rule and T of a ``recommend --ensemble --json`` file."""
    if not path.is_file():  # an input the user named: bad input (2), not an OS failure (3)
        fail(f"--from-recommendation {path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        fail(f"--from-recommendation {path}: not JSON ({exc.msg}, line {exc.lineno})")
    except UnicodeDecodeError:
        fail(f"--from-recommendation {path}: not JSON (not UTF-8 text)")
    ens = data.get("ensemble", data) if isinstance(data, dict) else None
    if not isinstance(ens, dict) or not ens.get("member_names"):
        fail(
            f"--from-recommendation {path}: holds no ensemble (write it with "
            "`kdlens recommend --ensemble --json`)"
        )
    assert isinstance(ens, dict)
    return ens


def render_ensemble(ens: EnsembleRecommendation, *, brief: bool = False) -> None:
    """The ensemble beside the single-checkpoint recommendation (text output)."""
    from kdlens.recommend.ensemble_result import RULE_DEFINITIONS

    if not ens.ok:
        labelled("ensemble", ens.reason, style="yellow")
        return
    parts = [f"{esc(n)} x{w:.2f}" for n, w in zip(ens.member_names, ens.weights, strict=True)]
    labelled("ensemble", f"{ens.n_members} member(s): " + ", ".join(parts), style="bold green")
    labelled("ensemble verdict", ens.statement, style="bold")
    if brief:
        return
    console.print(_path_table(ens))
    console.print(_comparison_table(ens))
    for n in ens.notes:
        labelled("note", n, style="yellow")
    say(
        f"rule: {RULE_DEFINITIONS[ens.rule]}; selected on '{ens.selection_split}' by the NLL "
        f"after a temperature fit, {ens.max_members} greedy steps with replacement over "
        f"{ens.n_candidates} checkpoints; intervals: 95% of {ens.n_bootstrap} paired "
        f"bootstrap replicates over {ens.n_buckets} id-hashed blocks; multiplier = distinct "
        "members = teacher forward passes per example in online KD",
        style="dim",
    )


def _path_table(ens: EnsembleRecommendation) -> Any:
    from rich.table import Table

    t = Table(title=title("gain per added member (greedy path)"))
    splits = [c.removeprefix("nll_fit_") for c in ens.path.columns if c.startswith("nll_fit_")]
    for c in ("M", "added", "multiplier", *(f"NLL fit {s}" for s in splits)):
        t.add_column(c, justify="left" if c == "added" else "right")
    for s in splits:
        t.add_column(f"acc {s}", justify="right")
    for r in ens.path.iter_rows(named=True):
        cells = [str(r["members"]), esc(r["added"]), f"{r['inference_multiplier']}x"]
        cells += [_f(r[f"nll_fit_{s}"]) for s in splits]
        cells += [_f(r[f"accuracy_{s}"]) for s in splits]
        t.add_row(*cells, style="bold" if r["kept"] else None)
    return t


def _comparison_table(ens: EnsembleRecommendation) -> Any:
    from rich.table import Table

    single = "/".join(ens.best_single or ("", ""))
    t = Table(title=title(f"mixture against the best single checkpoint ({esc(single)})"))
    for c in ("split", "measure", "single", "mixture", "difference", "95% interval"):
        t.add_column(c, justify="left" if c in ("split", "measure") else "right")
    for r in ens.comparison.iter_rows(named=True):
        split = r["split"] + (" (selection)" if r["selection_split"] else "")
        interval = f"{_f(r['low'], '{:+.4f}')} to {_f(r['high'], '{:+.4f}')}"
        cells = [_f(r["single"]), _f(r["mixture"]), _f(r["difference"], "{:+.4f}"), interval]
        t.add_row(split, r["measure"], *cells)
    return t
