"""transformers' own model tests, with ``visprune.apply(model, "keepall")`` on every model.

``keepall`` keeps every visual token, so a model it is applied to must behave exactly as the
unpatched model: every ``ModelTesterMixin`` test that passes without visprune must pass with
it. The mixin comes from the sdist of the installed transformers (``make test-hf-identity``
fetches it); the testers are ``hf_testers.FamilyTester``; ``hf_wrapping.py`` applies the method and
sets aside the tests that fail without visprune too.
"""

from __future__ import annotations

import os
import unittest

import hf_suite
import pytest
from hf_wrapping import IdentityCase
from transformers import (
    Gemma3ForConditionalGeneration,
    Gemma3ForSequenceClassification,
    Gemma3Model,
    InternVLForConditionalGeneration,
    InternVLModel,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
)

if not os.environ.get("VISPRUNE_HF_IDENTITY"):  # minutes of tests: only when asked for
    pytest.skip(
        "transformers' model tests with keepall: `make test-hf-identity` "
        "(or VISPRUNE_HF_IDENTITY=keepall|none pytest tests/hf_identity)",
        allow_module_level=True,
    )
if not hf_suite.available():
    pytest.skip(
        f"transformers' test suite is not fetched ({hf_suite.SUITE}): `make test-hf-identity`",
        allow_module_level=True,
    )

ModelTesterMixin = hf_suite.load("test_modeling_common").ModelTesterMixin
GenerationTesterMixin = hf_suite.load("generation.test_utils").GenerationTesterMixin


class LlavaIdentityTest(IdentityCase, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    family = "llava"
    all_model_classes = (LlavaModel, LlavaForConditionalGeneration)


class Qwen25VLIdentityTest(
    IdentityCase, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase
):
    family = "qwen2_5_vl"
    all_model_classes = (Qwen2_5_VLModel, Qwen2_5_VLForConditionalGeneration)


class LlavaNextVideoIdentityTest(
    IdentityCase, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase
):
    family = "llava_next_video"
    video = True
    all_model_classes = (LlavaNextVideoModel, LlavaNextVideoForConditionalGeneration)


class Gemma3IdentityTest(IdentityCase, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    family = "gemma3"
    all_model_classes = (
        Gemma3Model,
        Gemma3ForConditionalGeneration,
        Gemma3ForSequenceClassification,
    )


class InternVLIdentityTest(
    IdentityCase, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase
):
    family = "internvl"
    all_model_classes = (InternVLModel, InternVLForConditionalGeneration)
