"""kdlens: which teacher checkpoint should you distill from?

The flat public API. Analyses need only numpy, scipy, polars, pyarrow and
scikit-learn; the training harness (``kdlens.harness``) needs the ``torch`` extra
and is imported only when used.
"""

from kdlens._version import __version__
from kdlens.errors import *
from kdlens.store import *
from kdlens.validation import *
from kdlens.importing import *
from kdlens.softlabels import *
from kdlens.calibration import *
from kdlens.fidelity import *
from kdlens.streaming import *
from kdlens.similarity import *
from kdlens.structure import *
from kdlens.controls import *
from kdlens.compare import *
from kdlens.analysis import *
from kdlens.recommend import *
from kdlens import errors as _e, store as _s, validation as _v, importing as _i
from kdlens import softlabels as _sl, calibration as _c, fidelity as _f, streaming as _st
from kdlens import similarity as _sim, structure as _str, controls as _ctl, compare as _cmp
from kdlens import analysis as _a, recommend as _r


def __getattr__(name: str) -> object:
    # The harness needs torch; import it only when a user reaches for it.
    if name in ("LogitsWriter", "harness"):
        import kdlens.harness as h

        return h if name == "harness" else h.LogitsWriter
    raise AttributeError(f"module 'kdlens' has no attribute {name!r}")


__all__ = sorted(
    {"__version__", "LogitsWriter"}
    | {n for m in (_e, _s, _v, _i, _sl, _c, _f, _st, _sim, _str, _ctl, _cmp, _a, _r) for n in m.__all__}
)
