"""``kdlens recommend``: rank checkpoints by a validated score, with its uncertainty.

:mod:`kdlens.recommend.rank` scores and ranks; :mod:`kdlens.recommend.students` holds the
metrics that validate a score against real students (Spearman, Kendall, regret).
Import from there, or the user-facing names from ``kdlens``: ``kdlens.recommend`` is the
function (this package's name is taken by it at the top level).
"""
