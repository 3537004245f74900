"""Student comparison: knowledge distillation or a regularization effect?

``science.md``, "Distillation vs regularization", test 3. Students distilled from the
real teacher (``a``) and from one of its controls, typically the LS-equivalent teacher
(``b``), are compared on the same test examples:

* **paired bootstrap** CI of the accuracy difference ``acc(a) − acc(b)``: examples are
  resampled with replacement (the same indices for both sides, which keeps the pairing);
  with several seeds per side, each example's correctness is first averaged over seeds;
* **exact McNemar test** (``scipy.stats.binomtest`` on the discordant pairs, two-sided):
  with several seeds, seed ``i`` of ``a`` is paired with seed ``i`` of ``b`` and the
  discordant counts of all pairs are pooled (this treats seed pairs as independent
  trials; the seed-level test below guards against reading too much into it);
* **seed-level test** when both sides have at least two seeds: a paired t-test on the
  per-seed accuracies when the seeds pair up (same count), else Welch's t-test
  (``scipy.stats``).

Verdict: ``"knowledge distillation"`` when ``a`` beats ``b`` significantly — the CI lies
above 0, McNemar ``p < alpha`` and, when it could be run, the seed-level test has
``p < alpha`` with a positive mean difference; otherwise ``"regularization effect"``.

Students trained with no teacher (``distill --plain``: ``plain: true`` in their config
metadata) on the control side make the question another one: does the teacher help at
all? :func:`compare_stores` then says so (``comparison = "teacher vs no teacher"``) and
its verdict is :data:`TEACHER_HELPS` or :data:`TEACHER_DOES_NOT_HELP`, never
"regularization effect" (which names a control teacher's effect).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from kdlens._internal.checks import check_labels, check_positive_int
from kdlens._internal.defaults import ALPHA, COMPARE_N_BOOTSTRAP
from kdlens.errors import InputError, StoreError
from kdlens.hypotheses.paired import _bootstrap_ci, _reason, _seed_test

__all__ = [
    "StudentComparison",
    "compare_students",
    "compare_stores",
    "KNOWLEDGE_DISTILLATION",
    "REGULARIZATION_EFFECT",
    "TEACHER_DOES_NOT_HELP",
    "TEACHER_HELPS",
]

KNOWLEDGE_DISTILLATION = "knowledge distillation"
REGULARIZATION_EFFECT = "regularization effect"
#: Verdicts when the control students had no teacher (``distill --plain``).
TEACHER_HELPS = "the teacher helps versus no teacher"
TEACHER_DOES_NOT_HELP = "the teacher does not help versus no teacher"
#: What a comparison compares (``StudentComparison.comparison``).
VERSUS_CONTROL = "teacher vs control teacher"
VERSUS_NO_TEACHER = "teacher vs no teacher"


@dataclass(frozen=True)
class StudentComparison:
    """Outcome of :func:`compare_students` (see the module docstring)."""

    verdict: str
    accuracy_a: float  #: mean accuracy of the real teacher's students
    accuracy_b: float  #: mean accuracy of the control's students
    difference: float  #: accuracy_a − accuracy_b
    ci_low: float
    ci_high: float
    confidence: float
    mcnemar_p: float
    a_only_correct: int  #: discordant pairs where only a is right (pooled over seed pairs)
    b_only_correct: int
    seed_test: str | None  #: "paired t-test", "Welch t-test" or None
    seed_p: float | None
    n_examples: int
    n_seeds_a: int
    n_seeds_b: int
    n_bootstrap: int
    alpha: float
    seed_accuracies_a: list[float] = field(default_factory=list)
    seed_accuracies_b: list[float] = field(default_factory=list)
    #: Why the verdict: which evidence made it, or which test kept it from
    #: "knowledge distillation" (the control better, or no significant difference).
    reason: str = ""
    #: What was compared: :data:`VERSUS_CONTROL` or :data:`VERSUS_NO_TEACHER`.
    comparison: str = VERSUS_CONTROL

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


def _check_options(n_bootstrap: Any, alpha: float, confidence: float = 0.95) -> None:
    check_positive_int(n_bootstrap, name="n_bootstrap")
    for name, v in (("confidence", confidence), ("alpha", alpha)):
        if not 0 < v < 1:
            raise InputError(f"{name} must lie in (0, 1), got {v}")


def _correctness(x: Any, labels: np.ndarray, side: str) -> np.ndarray:
    """(seeds, n) bool from predictions (n,) / logits (n, K), or a sequence of them."""
    if isinstance(x, (list, tuple)):
        if not x:
            raise InputError(f"{side}: no student outputs given")
        return np.stack([_correctness(s, labels, side)[0] for s in x])
    arr = np.asarray(x)
    if arr.ndim == 1:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise InputError(
                f"{side}: 1-D student outputs must be integer class predictions, got {arr.dtype}"
            )
        pred = arr
    elif arr.ndim == 2:
        if not np.isfinite(arr).all():
            raise InputError(f"{side}: student logits contain NaN or infinite values")
        pred = arr.argmax(axis=1)  # the same for logits and probabilities
    else:
        raise InputError(
            f"{side}: expected predictions (n,), logits (n, K) or a list of them per seed, "
            f"got shape {arr.shape}"
        )
    if pred.shape[0] != labels.shape[0]:
        raise InputError(
            f"{side} and labels must be same length, but {side} is length {pred.shape[0]} "
            f"and labels is length {labels.shape[0]}"
        )
    return (pred == labels)[None, :]


def compare_students(
    a: Any,
    b: Any,
    *,
    labels: Any,
    n_bootstrap: int = COMPARE_N_BOOTSTRAP,
    seed: int | None = 0,
    confidence: float = 0.95,
    alpha: float = ALPHA,
) -> StudentComparison:
    """Compare the real teacher's students ``a`` with a control's students ``b``.

    Parameters
    ----------
    a, b : student outputs on the same examples, in the same order as ``labels``:
        integer predictions (n,), logits or probabilities (n, K) (only the argmax is
        used), or a list of either with one entry per student seed.
    labels : (n,) int, the true labels.
    n_bootstrap : int
        Bootstrap resamples for the CI.
    seed : int or None
    confidence : float
        Level of the CI.
    alpha : float
        Significance level of the verdict.
    """
    y = check_labels(labels, None, None)
    if y.size == 0:
        raise InputError("compare_students needs at least one example")
    _check_options(n_bootstrap, alpha, confidence)
    ca = _correctness(a, y, "a")
    cb = _correctness(b, y, "b")
    return _compute_comparison(
        ca, cb, n_bootstrap=int(n_bootstrap), seed=seed, confidence=confidence, alpha=alpha
    )


def _compute_comparison(
    ca: np.ndarray,
    cb: np.ndarray,
    *,
    n_bootstrap: int,
    seed: int | None,
    confidence: float,
    alpha: float,
) -> StudentComparison:
    from scipy import stats

    n = ca.shape[1]
    d = ca.mean(axis=0) - cb.mean(axis=0)  # per-example difference, seed-averaged
    lo, hi = _bootstrap_ci(d, n_bootstrap, seed, confidence)
    pairs = min(ca.shape[0], cb.shape[0])
    a_only = int((ca[:pairs] & ~cb[:pairs]).sum())
    b_only = int((~ca[:pairs] & cb[:pairs]).sum())
    disc = a_only + b_only
    mcnemar_p = float(stats.binomtest(a_only, disc, 0.5).pvalue) if disc else 1.0
    acc_a = ca.mean(axis=1)
    acc_b = cb.mean(axis=1)
    seed_test, seed_p = _seed_test(acc_a, acc_b)
    diff = float(d.mean())
    significant = lo > 0 and mcnemar_p < alpha and a_only > b_only
    if seed_p is not None:
        significant = significant and seed_p < alpha and acc_a.mean() > acc_b.mean()
    return StudentComparison(
        reason=_reason(
            significant,
            lo,
            hi,
            mcnemar_p,
            a_only,
            b_only,
            seed_test,
            seed_p,
            alpha,
            int(ca.shape[0]),
            int(cb.shape[0]),
        ),
        verdict=KNOWLEDGE_DISTILLATION if significant else REGULARIZATION_EFFECT,
        accuracy_a=float(acc_a.mean()),
        accuracy_b=float(acc_b.mean()),
        difference=diff,
        ci_low=float(lo),
        ci_high=float(hi),
        confidence=confidence,
        mcnemar_p=mcnemar_p,
        a_only_correct=a_only,
        b_only_correct=b_only,
        seed_test=seed_test,
        seed_p=seed_p,
        n_examples=n,
        n_seeds_a=int(ca.shape[0]),
        n_seeds_b=int(cb.shape[0]),
        n_bootstrap=n_bootstrap,
        alpha=alpha,
        seed_accuracies_a=[float(v) for v in acc_a],
        seed_accuracies_b=[float(v) for v in acc_b],
    )


# --------------------------------------------------------------------------- stores


def _student_predictions(store: Any, split: str) -> list[dict[str, Any]]:
    """One entry per (run, checkpoint): its seed, and predictions and labels by example id."""
    students = []
    for run, ckpt in store.keys():
        if not any(p.split == split for p in store.find(run, ckpt)):
            continue
        ids, preds, labels = [], [], []
        for batch in store.iter_batches(run, ckpt, split):
            ids.append(batch.example_ids)
            preds.append(batch.logits.argmax(axis=1))
            labels.append(batch.labels)
        cfg = store.checkpoint_metadata(run, ckpt).get("config") or {}
        cfg = cfg if isinstance(cfg, dict) else {}
        students.append(
            {
                "run": run,
                "checkpoint": ckpt,
                "seed": cfg.get("seed"),
                # distill --plain records plain: true (alpha 0, no teacher run).
                "plain": bool(cfg.get("plain"))
                or (cfg.get("alpha") == 0 and "teacher_run" in cfg and not cfg["teacher_run"]),
                "ids": np.concatenate(ids),
                "pred": np.concatenate(preds),
                "label": np.concatenate(labels),
            }
        )
    return students


def _order_by_seed(students: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seeds = [s["seed"] for s in students]
    if all(v is not None for v in seeds) and len(set(map(str, seeds))) == len(seeds):
        return sorted(students, key=lambda s: (str(type(s["seed"])), s["seed"]))
    return students


def _common_ids(everyone: list[dict[str, Any]], split: str) -> np.ndarray:
    """The example ids every student has; warns when that is fewer than some student has."""
    common = everyone[0]["ids"]
    for s in everyone[1:]:
        common = np.intersect1d(common, s["ids"])
    if common.size == 0:
        raise StoreError(f"the students share no example_id in split {split!r}")
    largest = max(np.unique(s["ids"]).size for s in everyone)
    if common.size < largest:
        # Students of one experiment are evaluated on one test set: a mismatch usually
        # means one side is not what it seems (e.g. a teacher store, not students).
        warnings.warn(
            f"the two sides do not share their test examples: comparing on the "
            f"{common.size} example ids common to all of {len(everyone)} students "
            f"(the largest has {largest})",
            stacklevel=3,
        )
    return common


def _aligned_correctness(
    got: dict[str, list[dict[str, Any]]], sides: dict[str, Any], common: np.ndarray, split: str
) -> tuple[dict[str, list[np.ndarray]], list[dict[str, Any]]]:
    """Per side, each student's correctness on ``common`` (labels checked to agree), and
    one summary row per student."""
    ref_labels: np.ndarray | None = None
    corr: dict[str, list[np.ndarray]] = {"real": [], "control": []}
    rows = []
    for side, students in got.items():
        for s in students:
            ids, first = np.unique(s["ids"], return_index=True)
            pos = first[np.searchsorted(ids, common)]
            lab = s["label"][pos]
            if (lab < 0).any():
                raise StoreError(
                    f"{sides[side].source}: run={s['run']!r} checkpoint={s['checkpoint']!r} "
                    f"has unlabelled examples in split {split!r}"
                )
            if ref_labels is None:
                ref_labels = lab
            elif not np.array_equal(lab, ref_labels):
                raise StoreError(
                    f"{sides[side].source}: run={s['run']!r} checkpoint={s['checkpoint']!r} "
                    "labels disagree with the other students on the same example ids"
                )
            c = s["pred"][pos] == lab
            corr[side].append(c)
            rows.append(
                {
                    "side": side,
                    "run": s["run"],
                    "checkpoint": s["checkpoint"],
                    "seed": None if s["seed"] is None else str(s["seed"]),
                    "n": int(common.size),
                    "accuracy": float(c.mean()),
                }
            )
    return corr, rows


def compare_stores(
    real_store: Any,
    control_store: Any,
    *,
    split: str = "test",
    n_bootstrap: int = COMPARE_N_BOOTSTRAP,
    seed: int | None = 0,
    alpha: float = ALPHA,
) -> tuple[pl.DataFrame, StudentComparison]:
    """Compare two stores of *student* logits (real-teacher students vs control students).

    Each (run, checkpoint) of a store is one student seed. Seeds are paired by the
    ``seed`` in the checkpoint's config metadata when every student has a distinct one,
    else by store order. Examples are aligned by ``example_id`` (only ids present in
    every student are used) and must carry the same label everywhere.

    Returns
    -------
    (frame, comparison): one row per student (``side``, ``run``, ``checkpoint``,
    ``seed``, ``n``, ``accuracy``) and the :class:`StudentComparison`.
    """
    from kdlens.store.reader import open_store

    _check_options(n_bootstrap, alpha)
    sides = {"real": open_store(real_store), "control": open_store(control_store)}
    got = {}
    for side, st in sides.items():
        students = _order_by_seed(_student_predictions(st, split))
        if not students:
            raise StoreError(f"{st.source}: no student has rows in split {split!r}")
        got[side] = students
    common = _common_ids(got["real"] + got["control"], split)
    corr, rows = _aligned_correctness(got, sides, common, split)
    result = _compute_comparison(
        np.stack(corr["real"]),
        np.stack(corr["control"]),
        n_bootstrap=int(n_bootstrap),
        seed=seed,
        confidence=0.95,
        alpha=alpha,
    )
    result = _with_plain_sides(result, got)
    schema = {
        "side": pl.Utf8,
        "run": pl.Utf8,
        "checkpoint": pl.Utf8,
        "seed": pl.Utf8,
        "n": pl.Int64,
        "accuracy": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema), result


def _with_plain_sides(
    result: StudentComparison, got: dict[str, list[dict[str, Any]]]
) -> StudentComparison:
    """Say what was compared when a side's students had no teacher (module docstring)."""
    plain = {side: [s["plain"] for s in students] for side, students in got.items()}
    if all(plain["control"]) and not any(plain["real"]):
        helps = result.verdict == KNOWLEDGE_DISTILLATION
        why = result.reason.replace("the real teacher's students", "the teacher's students")
        why = why.replace("no significant advantage for the real teacher", "no significant gain")
        if why.startswith("the control's students are significantly better"):
            why = "students trained with no teacher are significantly better than the teacher's"
        return replace(
            result,
            verdict=TEACHER_HELPS if helps else TEACHER_DOES_NOT_HELP,
            comparison=VERSUS_NO_TEACHER,
            reason=f"the control students had no teacher (distill --plain); {why}",
        )
    if any(plain["real"]):
        return replace(
            result,
            reason=result.reason + "; note: the first (real-teacher) side holds students "
            "trained with no teacher (distill --plain): the sides may be swapped",
        )
    return result
