"""The accumulator protocol, tested once for every accumulator x every named input.

``ACCUMULATORS`` lists each accumulator with a factory, how to feed it a batch of rows of
a named input (:mod:`inputs`), and how to read its finalised result as a flat dict. The
tests loop over it: merged chunks equal one pass; the result ignores row order and
chunking; adding a per-row constant to the logits changes nothing; ``merge`` refuses
another type or other settings; ``finalize`` on an empty accumulator is defined.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import inputs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlens._internal.accumulator import Accumulator
from kdlens.errors import InputError
from kdlens.measures.calibration import CalibrationAccumulator, TemperatureFitAccumulator
from kdlens.measures.fidelity import FidelityAccumulator
from kdlens.measures.similarity import SimilarityAccumulator
from kdlens.measures.summary import SoftLabelAccumulator


@dataclass
class Data:
    """One named input as the accumulators take it: logits (float64), labels, example
    ids, and a second side of logits for the pairwise accumulators."""

    z: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    zb: np.ndarray

    @property
    def k(self) -> int:
        return int(self.z.shape[1])

    def rows(self, idx: np.ndarray) -> Data:
        return Data(self.z[idx], self.y[idx], self.ids[idx], self.zb[idx])


def _table(df: Any) -> dict[str, np.ndarray]:
    return {c: df[c].cast(float).fill_null(np.nan).to_numpy() for c in df.columns}


def _softlabel_result(acc: SoftLabelAccumulator) -> dict[str, Any]:
    s = acc.finalize()
    out: dict[str, Any] = dict(s.as_row())
    out["class_counts"] = s.class_counts
    out.update({f"class_{c}": v for c, v in s.class_means.items()})
    assert s.calibration is not None
    out.update({f"calibration_{c}": v for c, v in _table(s.calibration.table).items()})
    return out


def _calibration_result(acc: CalibrationAccumulator) -> dict[str, Any]:
    r = acc.finalize()
    return {"n": r.n, "nll": r.nll, "ece": r.ece, **_table(r.table)}


def _tfit_result(acc: TemperatureFitAccumulator) -> dict[str, Any]:
    return {
        "temperature": acc.finalize(),
        "n": acc.n,
        "n_unlabeled": acc.n_unlabeled,
        "ids": np.sort(acc._ids),
    }


def _fidelity_result(acc: FidelityAccumulator) -> dict[str, Any]:
    r = acc.finalize()
    return {"n": r.n, "agreement": r.agreement, "kl": r.kl}


def _similarity_result(acc: SimilarityAccumulator) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # absent classes warn; tested in test_similarity
        r = acc.finalize()
    return {
        "matrix": r.matrix,
        "counts": r.counts,
        "si": r.si_per_class,
        "ii": r.ii_per_class,
        "SI": r.similarity_information,
        "II": r.instance_information,
        "q_sqsum": r.q_sqsum_per_class,
        "n_unlabeled": r.n_unlabeled,
    }


def _labelled(d: Data) -> Data:
    return d.rows(np.flatnonzero(d.y >= 0))


@dataclass
class Spec:
    name: str
    make: Callable[..., Accumulator]  #: factory(k, **setting overrides)
    feed: Callable[[Any, Data], Any]
    result: Callable[[Any], dict[str, Any]]
    #: setting -> a value other than the factory's default, for the merge refusal test
    other_settings: dict[str, Any] = field(default_factory=dict)
    #: floats compare exactly (the design promises an identical state), else to rel 1e-12
    exact: bool = False
    #: the empty result's scalars that must be NaN
    empty_nan: tuple[str, ...] = ()


ACCUMULATORS = [
    Spec(
        "SoftLabelAccumulator",
        lambda k, **kw: SoftLabelAccumulator(k, **{"temperature": 2.0, **kw}),
        lambda acc, d: acc.update(d.z, d.y),
        _softlabel_result,
        {"num_classes": None, "temperature": 3.0, "oemc_delta": 0.2, "n_bins": 7},
        empty_nan=("accuracy", "entropy", "dark_mass", "nll", "ece"),
    ),
    Spec(
        "CalibrationAccumulator",
        lambda k, **kw: CalibrationAccumulator(**{"n_bins": 12, **kw}),
        lambda acc, d: acc.update(_labelled(d).z, _labelled(d).y),
        _calibration_result,
        {"n_bins": 5, "temperature": 2.0},
        empty_nan=("nll", "ece"),
    ),
    Spec(
        "TemperatureFitAccumulator",
        lambda k, **kw: TemperatureFitAccumulator(k, **{"max_rows": 200, **kw}),
        lambda acc, d: acc.update(d.z, d.y, d.ids),
        _tfit_result,
        {"num_classes": None, "max_rows": 50},
        exact=True,  # the sample is the same rows whatever the order: an identical fit
        empty_nan=("temperature",),
    ),
    Spec(
        "FidelityAccumulator",
        lambda k, **kw: FidelityAccumulator(**{"temperature": 2.0, **kw}),
        lambda acc, d: acc.update(d.z, d.ids, d.zb, d.ids),
        _fidelity_result,
        {"temperature": 1.0},
        empty_nan=("agreement", "kl"),
    ),
    Spec(
        "SimilarityAccumulator",
        lambda k, **kw: SimilarityAccumulator(k, **{"temperature": 2.0, **kw}),
        lambda acc, d: acc.update(d.z, d.y),
        _similarity_result,
        {"num_classes": None, "temperature": 1.0, "entries": False},
        empty_nan=("SI", "II"),
    ),
]
SPECS = {s.name: s for s in ACCUMULATORS}


def _data(name: str) -> Data:
    z, y = inputs.NAMED_INPUTS[name]()
    z = z.astype(np.float64)
    n = z.shape[0]
    rng = np.random.default_rng(7)
    # A second checkpoint for the pairwise accumulators: related to the first, not equal.
    zb = 0.5 * z[:, ::-1] + rng.normal(0.0, 1.0, size=z.shape)
    return Data(z, y, np.arange(n, dtype=np.int64) * 7 + 3, zb)


DATA = {name: _data(name) for name in inputs.NAMED_INPUTS}


def _run(spec: Spec, d: Data, chunks: list[np.ndarray] | None = None) -> Any:
    """One accumulator per chunk, merged in the given order (one pass when no chunks)."""
    if chunks is None:
        return spec.feed(spec.make(d.k), d)
    accs = [spec.feed(spec.make(d.k), d.rows(c)) for c in chunks]
    merged = accs[0]
    for acc in accs[1:]:
        assert merged.merge(acc) is merged
    return merged


def _assert_same(spec: Spec, a: dict[str, Any], b: dict[str, Any], *, rel: float) -> None:
    assert a.keys() == b.keys()
    for key, va in a.items():
        va, vb = np.asarray(va), np.asarray(b[key])
        if spec.exact or va.dtype.kind in "iub":
            np.testing.assert_array_equal(va, vb, err_msg=f"{spec.name}: {key}")
        else:
            np.testing.assert_allclose(va, vb, rtol=rel, atol=1e-14, err_msg=f"{spec.name}: {key}")


PAIRS = [(s, name) for s in SPECS for name in DATA]


@pytest.mark.parametrize("spec_name, data_name", PAIRS)
def test_merged_chunks_equal_one_pass(spec_name, data_name):
    spec, d = SPECS[spec_name], DATA[data_name]
    n = d.z.shape[0]
    one = spec.result(_run(spec, d))
    chunks = np.array_split(np.arange(n), 5)
    merged = spec.result(_run(spec, d, chunks[::-1]))  # merged back to front
    _assert_same(spec, merged, one, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    spec_name=st.sampled_from(sorted(SPECS)),
    data_name=st.sampled_from(sorted(DATA)),
    seed=st.integers(0, 2**31 - 1),
    n_chunks=st.integers(1, 9),
)
def test_row_order_and_chunking_change_nothing(spec_name, data_name, seed, n_chunks):
    spec, d = SPECS[spec_name], DATA[data_name]
    n = d.z.shape[0]
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=n_chunks - 1, replace=False))
    chunks = np.split(order, cuts)
    rng.shuffle(chunks)
    one = spec.result(_run(spec, d))
    _assert_same(spec, spec.result(_run(spec, d, chunks)), one, rel=1e-12)


@pytest.mark.parametrize("spec_name, data_name", PAIRS)
def test_adding_a_constant_to_each_row_of_logits_changes_nothing(spec_name, data_name):
    spec, d = SPECS[spec_name], DATA[data_name]
    rng = np.random.default_rng(3)
    # Logits on a 1/256 grid plus integer shifts: every shifted logit is exact, even in
    # the float32 sample of the temperature fit.
    z = np.round(d.z * 256) / 256
    zb = np.round(d.zb * 256) / 256
    n = z.shape[0]
    base = Data(z, d.y, d.ids, zb)
    shifted = Data(
        z + np.round(rng.normal(0, 10, (n, 1))),
        d.y,
        d.ids,
        zb + np.round(rng.normal(0, 10, (n, 1))),
    )
    _assert_same(spec, spec.result(_run(spec, shifted)), spec.result(_run(spec, base)), rel=1e-9)


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_merge_refuses_another_type_or_other_settings(spec_name):
    spec = SPECS[spec_name]
    k = 6
    acc = spec.make(k)
    for setting, value in spec.other_settings.items():
        other = spec.make(k + 1) if setting == "num_classes" else spec.make(k, **{setting: value})
        mine, theirs = acc.settings[setting], other.settings[setting]
        assert mine != theirs
        with pytest.raises(InputError, match=rf"different {setting}: {mine!r} and {theirs!r}"):
            acc.merge(other)
    assert set(spec.other_settings) == set(acc.settings)  # every setting is tried
    for other_spec in ACCUMULATORS:
        if other_spec is not spec:
            with pytest.raises(InputError, match="cannot merge"):
                acc.merge(other_spec.make(k))


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_finalize_on_an_empty_accumulator_is_nan(spec_name):
    spec = SPECS[spec_name]
    res = spec.result(spec.make(5))
    for key in spec.empty_nan:
        assert np.isnan(res[key]), key
    if "n" in res:
        assert res["n"] == 0
    # Merging an empty accumulator changes nothing.
    d = DATA["random"]
    once = spec.result(_run(spec, d))
    _assert_same(spec, spec.result(_run(spec, d).merge(spec.make(d.k))), once, rel=0.0)


@pytest.mark.parametrize("spec_name", ["SoftLabelAccumulator", "TemperatureFitAccumulator"])
def test_unlabelled_rows_are_counted(spec_name):
    spec, d = SPECS[spec_name], DATA["partly_labelled"]
    res = spec.result(_run(spec, d))
    missing = int((d.y < 0).sum())
    assert missing > 0
    if spec_name == "SoftLabelAccumulator":
        assert res["n"] - res["n_labeled"] == missing
    else:
        assert res["n_unlabeled"] == missing


def test_similarity_counts_unlabelled_rows():
    d = DATA["partly_labelled"]
    res = _similarity_result(_run(SPECS["SimilarityAccumulator"], d))
    assert res["n_unlabeled"] == int((d.y < 0).sum()) > 0
    assert int(res["counts"].sum()) == int((d.y >= 0).sum())
