"""How the bundled demo models were trained (CPU, synthetic data); the demo itself never imports
this package.

* :mod:`.train`: the image model's training loop with its curriculum and training-only probes.
* :mod:`.recipe`: the image model's v2 recipe, LLaVA's three stages (text, captions, questions),
  with its text corpus (:mod:`.corpus`, :mod:`.grid_text`) and batch rows (:mod:`.rows`).
* :mod:`.video_train`: the video model's training loop.

``scripts/train_demo_model.py`` runs them.
"""
