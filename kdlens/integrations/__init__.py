"""Dump teacher logits from the trainers people already use, into a kdlens store.

- :mod:`kdlens.integrations.lightning`: ``LogitsCallback``, a PyTorch Lightning
  ``Callback`` (the ``lightning`` extra);
- :mod:`kdlens.integrations.transformers`: ``LogitsCallback``, a Hugging Face
  ``TrainerCallback`` (the ``transformers`` extra);
- :mod:`kdlens.integrations.common`: what both share (the store target, resume, the
  distributed dump loop).

Import the submodule of your trainer; this package itself imports nothing (no torch),
so ``import kdlens`` stays light.
"""

__all__: list[str] = []
