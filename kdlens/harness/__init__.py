"""The training harness: dump teacher logits per checkpoint, distill students offline.

Needs ``torch`` (the ``torch`` extra); nothing else in kdlens imports it.

- :func:`dump` trains a teacher grid (batch sizes x seeds) and writes every split's
  logits at each listed epoch; :func:`dump_checkpoints` dumps existing state dicts.
- :class:`LogitsWriter` dumps logits from a user's own training loop.
- :func:`distill` trains small students from stored logits (no teacher forward pass).

Modules: ``sources`` (dataset specs and readers) and ``data`` (the seeded split);
``config`` (:class:`DumpConfig`, learning-rate scaling), ``rundir`` (manifest, config
check, resume file), ``train`` (the training loop), ``dumping`` (logits written from
the loop), ``dump`` (the grid); ``transfer`` (a teacher's data as students see it),
``students`` and ``distill``; ``models``, ``runtime``, ``augment``, ``reporting``,
``writer`` (:class:`LogitsWriter`), ``demo``.
"""

from kdlens.harness.config import DumpConfig, effective_lr
from kdlens.harness.data import prepare_data
from kdlens.harness.distill import RESULT_SCHEMA, StudentConfig, distill
from kdlens.harness.dump import dump, dump_checkpoints, summarize_runs
from kdlens.harness.models import MODELS, build_model
from kdlens.harness.reporting import QuietReporter, Reporter, RunResult
from kdlens.harness.sources import load_source, read_cifar_batch, read_idx, safe_unpickle
from kdlens.harness.writer import LogitsWriter

__all__ = [
    "DumpConfig",
    "LogitsWriter",
    "MODELS",
    "QuietReporter",
    "RESULT_SCHEMA",
    "Reporter",
    "RunResult",
    "StudentConfig",
    "build_model",
    "distill",
    "dump",
    "dump_checkpoints",
    "effective_lr",
    "load_source",
    "prepare_data",
    "read_cifar_batch",
    "read_idx",
    "safe_unpickle",
    "summarize_runs",
]
