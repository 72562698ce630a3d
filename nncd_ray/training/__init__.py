"""Training the embedded language model (``nncd train``) and measuring it.

One module per concern: ``books`` (the byte split into trained-on and held-out text),
``tokenizer``, ``documents`` and ``sequences`` (what the model reads), ``model``, ``dropout``,
``copy_circuit`` (the seeded induction circuit), ``schedule``, ``compilation``, ``checkpoints``,
``loop`` (:func:`~nncd_ray.training.loop.train_language_model`), and ``bits_per_byte`` (the
model card's figures, through the scorers).
"""
