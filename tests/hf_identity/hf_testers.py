"""Model testers for transformers' ``ModelTesterMixin``, built on the tiny models of the tests.

transformers' sdist ships the mixins but not its per-model testers; a :class:`FamilyTester`
plays their part for one family of ``tiny_vlms``: it hands the mixin a fresh config of the tiny
model and a batch of processor-like inputs (placeholders, pixels, grids) that the config accepts.
"""

from __future__ import annotations

import functools

import torch

import tiny_vlms

#: Prompts per batch (the mixin slices and pads batches, so more than one).
BATCH = 3


@functools.cache
def _model(family: str):
    """The tiny model whose config and token counts the tester uses (built once per family)."""
    return tiny_vlms.tiny(family)


class FamilyTester:
    """What ``ModelTesterMixin`` asks of ``self.model_tester``, for one tiny family.

    Parameters
    ----------
    parent : unittest.TestCase
        The test case (transformers' testers keep it; unused here).
    family : str
        One of ``tiny_vlms.FAMILIES``.
    video : bool
        Whether the prompts hold videos instead of images.
    """

    is_training = True

    def __init__(self, parent, family: str, video: bool = False) -> None:
        self.parent = parent
        self.family = family
        self.video = video
        config = self.get_config()
        text = config.get_text_config()
        self.text_config = text.to_dict()
        self.vision_config = config.vision_config.to_dict()
        self.vocab_size = text.vocab_size
        self.hidden_size = text.hidden_size
        self.num_hidden_layers = text.num_hidden_layers
        self.num_attention_heads = text.num_attention_heads
        self.batch_size = BATCH
        self.seq_length = self.encoder_seq_length = self._inputs()["input_ids"].shape[1]

    def get_config(self):
        """A fresh config of the tiny model, with no attention implementation chosen yet."""
        config = _model(self.family).config
        config = type(config).from_dict(config.to_dict())
        if getattr(config, "vision_feature_layer", None) == -2:
            # LLaVA's default leaves the last vision layer unused, and the mixin's capture of
            # chosen layers' hidden states expects every layer to run.
            config.vision_feature_layer = -1
        return config

    def _inputs(self) -> dict[str, torch.Tensor]:
        return tiny_vlms.inputs(self.family, _model(self.family), video=self.video, batch=BATCH)

    def prepare_config_and_inputs_for_common(self):
        """``(config, inputs)``: a fresh config and a batch of ``BATCH`` prompts."""
        return self.get_config(), self._inputs()
