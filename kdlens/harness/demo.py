"""``kdlens demo``: the whole pipeline on the digits dataset bundled with scikit-learn.

Train a small teacher grid (three batch sizes, checkpoints at epochs 1, 2, 4, ...,
60), dump its logits, analyse them, rank the checkpoints and write the HTML
report: a few minutes on two CPU cores, no download. ``quick=True`` trains a
2 x 3 grid for four epochs (seconds; used by the tests).

Layout of ``out_dir``: ``store/`` (the logits store), ``analysis/`` (the tables of
``kdlens analyze``), ``recommendation.json`` and ``report.html``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdlens._internal.atomic import write_text_atomic
from kdlens.errors import InputError

__all__ = ["DemoResult", "run_demo"]

#: The demo's teacher grid: (batch sizes, epochs, checkpoint epochs).
FULL_GRID = ((16, 64, 256), 60, None)
QUICK_GRID = ((32, 256), 4, (1, 2, 4))


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and how long each stage took (seconds)."""

    out_dir: Path
    store: Path
    analysis: Path
    recommendation: Path
    report: Path
    recommended: str | None
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    quick: bool = False,
    overwrite: bool = False,
    png: bool = False,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Dump, analyse, recommend and report on sklearn's digits; return the paths.

    Parameters
    ----------
    out_dir : directory for the store, the analysis and the report.
    quick : a tiny grid (2 batch sizes x 4 epochs) instead of the full one.
    overwrite : retrain runs found in ``out_dir`` with a different configuration.
    png : also export every chart as PNG and SVG under ``out_dir/charts``.
    progress : called with one line per stage (default: silent).
    """
    say = progress or (lambda _: None)
    try:
        from kdlens.harness import DumpConfig, dump
    except ImportError:
        raise InputError(
            "the demo trains teachers and needs torch: pip install 'kdlens[torch]'"
        ) from None
    from kdlens.analysis.engine import analyze
    from kdlens.recommend.rank import recommend
    from kdlens.report.build import build_report

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    batch_sizes, epochs, checkpoints = QUICK_GRID if quick else FULL_GRID
    cfg = DumpConfig(
        dataset="digits",
        model="mlp",
        batch_sizes=batch_sizes,
        epochs=epochs,
        checkpoints=checkpoints,
        device="cpu",
    )
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    say(
        f"1/4 training teachers on digits: batch sizes {', '.join(map(str, batch_sizes))}, "
        f"{epochs} epochs, logits dumped at epochs {', '.join(map(str, cfg.checkpoints or ()))}"
    )
    dump(out / "store", cfg, overwrite=overwrite)
    seconds["dump"] = time.perf_counter() - t0

    t = time.perf_counter()
    say("2/4 analysing every checkpoint (soft-label measures, class similarity, structure test)")
    result = analyze(out / "store", temperature=1.0, n_permutations=200 if quick else 1000)
    result.write(out / "analysis")
    seconds["analyze"] = time.perf_counter() - t

    t = time.perf_counter()
    say("3/4 ranking checkpoints (bootstrap over examples)")
    rec = recommend(out / "store", n_bootstrap=50 if quick else 200)
    rec_path = out / "recommendation.json"
    write_text_atomic(rec_path, rec.to_json(indent=2))
    seconds["recommend"] = time.perf_counter() - t

    t = time.perf_counter()
    say("4/4 writing the report")
    report = build_report(
        result,
        out / "report.html",
        store=out / "store",
        recommendation=rec,
        png_dir=out / "charts" if png else None,
        title="kdlens demo: sklearn digits",
    )
    seconds["report"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    best = rec.recommended
    return DemoResult(
        out_dir=out,
        store=out / "store",
        analysis=out / "analysis",
        recommendation=rec_path,
        report=report,
        recommended=f"{best['run']}/{best['checkpoint']}" if best else None,
        seconds=seconds,
    )
