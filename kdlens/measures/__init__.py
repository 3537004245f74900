"""What is measured on a teacher's logits: per-example soft-label quantities, their
streaming summaries, calibration, fidelity between checkpoints, class similarity.

Every function takes plain numpy arrays (logits are always logits; the temperature is
explicit); every accumulator follows one protocol: ``update`` / ``merge`` / ``finalize``.
"""
