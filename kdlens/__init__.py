"""kdlens: which teacher checkpoint should you distill from?

The flat public API. Analyses need only numpy, scipy, polars, pyarrow and
scikit-learn; the training harness (``kdlens.harness``) needs the ``torch`` extra
and is imported only when used.
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

from kdlens._version import __version__
from kdlens.analysis import *
from kdlens.calibration import *
from kdlens.charts import *
from kdlens.compare import *
from kdlens.controls import *
from kdlens.demo import *
from kdlens.errors import *
from kdlens.fidelity import *
from kdlens.importing import *
from kdlens.recommend import *
from kdlens.report import *
from kdlens.similarity import *
from kdlens.softlabels import *
from kdlens.store import *
from kdlens.streaming import *
from kdlens.structure import *
from kdlens.validation import *

# Submodules are looked up by name: a function may share its module's name
# (``recommend``), and the star imports above bind the function, not the module.
_MODULES = [
    _importlib.import_module(f"kdlens.{_m}")
    for _m in (
        "errors",
        "store",
        "validation",
        "importing",
        "softlabels",
        "calibration",
        "fidelity",
        "streaming",
        "similarity",
        "structure",
        "controls",
        "compare",
        "analysis",
        "recommend",
        "report",
        "charts",
        "demo",
    )
]

if _TYPE_CHECKING:  # the real import is lazy (below): torch is needed only by the harness
    from kdlens.harness.writer import LogitsWriter


def __getattr__(name: str) -> object:
    # The harness needs torch; import it only when a user reaches for it.
    if name in ("LogitsWriter", "harness"):
        import kdlens.harness as h

        return h if name == "harness" else h.LogitsWriter
    raise AttributeError(f"module 'kdlens' has no attribute {name!r}")


__all__ = sorted({"__version__", "LogitsWriter"} | {n for m in _MODULES for n in m.__all__})
