"""The one home of kdlens's defaults: the library, the CLI and the report import them.

Every count (bootstrap replicates, permutations) and every binning choice used by an
output is stated in that output; keeping the values here makes two commands on the
same store report the same numbers.
"""

from __future__ import annotations

#: Split roles. The transfer split is what the student trains on; the held-out split
#: is the first of HELDOUT_SPLITS present in the store.
TRANSFER_SPLIT = "train"
HELDOUT_SPLITS = ("val", "test")
#: The split the temperature fit uses when it is analysed.
FIT_SPLIT = "val"

#: Soft-label measures: OEMC counts an example when its dark mass is >= this.
OEMC_DELTA = 0.05
#: Equal-width confidence bins of the ECE and the reliability table.
N_BINS = 15
#: Search interval of the temperature fit (a fit at a bound is degenerate).
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: A held-out split with fewer labelled examples than this, or fewer than
#: SMALL_HELDOUT_PER_CLASS in some class of its temperature-fit sample, is called small:
#: its NLL and temperature fit are noisy and ``recommend`` warns with the numbers.
SMALL_HELDOUT_N = 100
SMALL_HELDOUT_PER_CLASS = 5
#: Neighbours kept per class in the similarity ``edges`` table.
TOP_K = 5
#: analyze's ``similarity`` table holds every off-diagonal entry of S up to this K
#: (K(K-1) rows: 4.2 M at 2,048); above it, each class's SIMILARITY_TABLE_TOP largest
#: entries (exact values; each entry left out is at most the smallest kept one). The
#: summary row states ``similarity_table_top`` (entries per class) and
#: ``similarity_table_mass`` (mean share of a row of S the table holds; 1 when full).
SIMILARITY_TABLE_FULL_MAX_K = 2048
SIMILARITY_TABLE_TOP = 100
#: Up to this K the class similarity is the exact dense K x K sums (200 MB per array at
#: 5,000; analyze peaks at 1.26 GiB for 20,000 x 5,000); above it the bounded path of
#: :mod:`kdlens.measures.similarity.sparse` keeps each example's SIMILARITY_SPARSE_TOP
#: largest non-target probabilities exactly and spreads the rest evenly.
SIMILARITY_DENSE_MAX_K = 5000
SIMILARITY_SPARSE_TOP = 64

#: Hypothesis tests.
N_PERMUTATIONS = 1000
ALPHA = 0.05
#: Student comparison (``compare``): paired bootstrap replicates.
COMPARE_N_BOOTSTRAP = 10_000

#: Ranking (``recommend``): the temperature and collapse weight the score was validated
#: at, and the Poisson-bootstrap replicates of P(best).
RECOMMEND_TEMPERATURE = 4.0
COLLAPSE_WEIGHT = 0.1
N_BOOTSTRAP = 200
BOOTSTRAP_SEED = 0

#: Ensemble teachers (``recommend --ensemble``, :mod:`kdlens.recommend.ensemble`): greedy
#: steps of the forward selection with replacement, the combination rule of the members'
#: predictions, and the bound on the float32 per-checkpoint arrays it holds in memory.
ENSEMBLE_MAX_MEMBERS = 8
ENSEMBLE_RULE = "mean_prob"
ENSEMBLE_RULES = ("mean_prob", "mean_prob_t", "mean_logit")

#: The task plan of the pass (:mod:`kdlens.analysis.tasks`): a part is split into tasks of
#: whole row groups holding at most about this many logits (rows x K; 100 MB of float32),
#: the unit an engine runs and whose accumulator partials merge in the plan's order.
TASK_ELEMENTS = 25_000_000
#: Engines of the pass: ``local`` (in this process, or ``workers`` processes) and ``dask``.
ENGINES = ("local", "dask")
#: Processes of the local engine. 1 = the pass runs in this process (two threads);
#: measured on 2 cores (tests/benchmarks/README.md), processes did not pay off there.
LOCAL_WORKERS = 1
#: Worker processes of the Dask ``LocalCluster`` kdlens starts when no scheduler is given.
DASK_LOCAL_WORKERS = 2
#: Seconds to wait for a Dask scheduler given by address before giving up.
DASK_CONNECT_TIMEOUT = 10.0
