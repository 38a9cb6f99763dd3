"""The bundled demo task as lmms-eval tasks: ``visprune_demo`` and its loglikelihood twin.

A document holds only the address of a demo question, ``(seed, index)`` in the test split; the
image, question and answer come from :mod:`visprune.demo.task` when the task loads. A request is
the usual lmms-eval conversation, the image followed by the question, and the model's processor
lays it out: the demo processor's chat template renders it as :attr:`Sample.prompt
<visprune.demo.task.Sample.prompt>` (without a template, the parts in order). lmms-eval thus asks
exactly what ``visprune demo`` asks, and the accuracies agree for the same questions.

``visprune_demo`` generates and scores the first generated word against the answer (exact
match), as ``visprune demo`` takes the arg-max next token; ``visprune_demo_loglikelihood``
scores whether greedy decoding reproduces the answer after the prompt (lmms-eval's ``acc`` of a
loglikelihood task), which for these one-token answers is the same decision. Run them with
``--include_path`` set to :data:`visprune.integrations.LMMS_EVAL_TASKS`.
"""

from __future__ import annotations

import functools
from typing import Any

from ..demo import task

SPLIT = "test"


@functools.lru_cache(maxsize=1024)
def _sample(seed: int, index: int) -> task.Sample:
    return task.make_sample(seed, SPLIT, index)


def sample(doc: dict) -> task.Sample:
    """The demo question a document addresses."""
    return _sample(int(doc["seed"]), int(doc["index"]))


def process_docs(dataset: Any) -> Any:
    """Add each question's text, answer and type (readable in lmms-eval's logged samples)."""

    def describe(doc: dict) -> dict:
        s = sample(doc)
        return {"question": s.question, "answer": s.answer, "qtype": s.qtype}

    return dataset.map(describe)


def doc_to_visual(doc: dict) -> list:
    return [sample(doc).pil()]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question (simple tasks put the image before it, as chat tasks do)."""
    return sample(doc).question


def doc_to_messages(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
    """One user turn: the image, then the question."""
    s = sample(doc)
    content = [{"type": "image", "url": s.pil()}, {"type": "text", "text": s.question}]
    return [{"role": "user", "content": content}]


def doc_to_target(doc: dict) -> str:
    return sample(doc).answer


def doc_to_continuation(doc: dict) -> str:
    """The answer as the continuation of the prompt (one word after a space)."""
    return " " + sample(doc).answer


def first_word(text: str) -> str:
    words = text.split()
    return words[0] if words else ""


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Exact match of the first generated word with the answer."""
    return {"exact_match": float(first_word(results[0]) == sample(doc).answer)}


def process_loglikelihood(doc: dict, results: list) -> dict[str, float]:
    """``acc``: greedy decoding after the prompt gives the answer."""
    _, greedy = results[0]
    return {"acc": float(greedy)}
