"""The bundled demo: a synthetic visual-QA task and a small LLaVA trained on it.

Imported on use only (``import visprune`` does not load it)."""
