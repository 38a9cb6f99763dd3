"""Run a transformers model test with ``visprune.apply(model, method)`` on every model it builds.

``VISPRUNE_HF_IDENTITY`` picks the mode: ``keepall`` (default) applies visprune's identity
method to every model the test constructs; ``none`` runs the test as transformers wrote it.
In ``keepall`` mode a failing test is run again without visprune: when it fails (or skips)
there too, the failure is transformers' or this machine's, not visprune's, and the test is
reported as skipped with that reason; otherwise the keepall failure stands.
"""

from __future__ import annotations

import contextlib
import functools
import os
import unittest
from collections.abc import Callable, Iterator
from unittest import mock

import visprune

MODES = ("keepall", "none")
MODE = os.environ.get("VISPRUNE_HF_IDENTITY", "keepall")
if MODE not in MODES:
    raise ValueError(f"VISPRUNE_HF_IDENTITY must be one of {', '.join(MODES)}; got {MODE!r}.")


@contextlib.contextmanager
def pruned(classes: tuple[type, ...], method: str) -> Iterator[None]:
    """Within the block, every model of ``classes`` comes out of its constructor with
    ``visprune.apply(model, method)``.

    A class visprune refuses at ``apply`` (a base model without a language-model head, a head
    visprune does not support) is left as it is, unless it is a ``...ForConditionalGeneration``:
    those are what visprune exists for, so a refusal fails the test.
    """
    with contextlib.ExitStack() as stack:
        for cls in classes:
            stack.enter_context(mock.patch.object(cls, "__init__", _applying(cls, method)))
        yield


def _applying(cls: type, method: str) -> Callable:
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        if type(self) is not cls:  # a subclass's constructor: that class decides
            return
        try:
            visprune.apply(self, method)
        except ValueError:
            if cls.__name__.endswith("ForConditionalGeneration"):
                raise

    return __init__


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def identity_test(test: Callable) -> Callable:
    """``test`` run under :data:`MODE` (see the module docstring)."""

    @functools.wraps(test)
    def run(self, *args, **kwargs):
        if MODE == "none":
            return test(self, *args, **kwargs)
        try:
            with pruned(tuple(self.all_model_classes), MODE):
                return test(self, *args, **kwargs)
        except unittest.SkipTest:
            raise
        except Exception as error:
            failure = error
        vanilla = type(self)(self._testMethodName)
        try:
            vanilla.setUp()
            test(vanilla, *args, **kwargs)
        except unittest.SkipTest as skip:
            raise unittest.SkipTest(f"skipped without visprune too: {skip}") from None
        except Exception as error:
            raise unittest.SkipTest(f"fails without visprune too: {_first_line(error)}") from None
        finally:
            vanilla.tearDown()
            vanilla.doCleanups()
        raise failure

    return run


class IdentityCase:
    """Base of the identity test cases: mixes in transformers' tests, wraps each of them.

    A subclass sets ``family`` (and ``video``) and ``all_model_classes`` and derives from
    transformers' ``ModelTesterMixin``, ``GenerationTesterMixin`` and ``unittest.TestCase``.
    """

    family: str
    video = False
    _is_composite = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name in dir(cls):
            if name.startswith("test_") and callable(getattr(cls, name)):
                setattr(cls, name, identity_test(getattr(cls, name)))

    def subTest(self, msg=None, **params):
        """No sub-results: a failing step fails the whole test, so that the comparison with the
        run without visprune sees it (``unittest`` would record it and let the test pass)."""
        return contextlib.nullcontext()

    def setUp(self) -> None:
        from hf_testers import FamilyTester

        self.model_tester = FamilyTester(self, self.family, self.video)
