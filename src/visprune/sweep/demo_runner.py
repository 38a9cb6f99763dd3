"""The bundled demo tasks as sweep tasks: ``demo`` (the image model, :mod:`visprune.demo.task`)
and ``demo-video`` (the video model, :mod:`visprune.demo.video_task`).

Each configuration scores the first ``limit`` test questions exactly as ``visprune demo`` has
always scored them (the arg-max next word after the prompt), so the accuracies are the demo's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .grid import UNPRUNED, Configuration
from .meter import PrefillMeter

#: Task name -> (what it is, default number of test questions).
DEMO_TASKS = {
    "demo": ("the bundled demo model on the demo task (visprune.demo.task)", 500),
    "demo-video": ("the bundled demo video model on the demo video task", 150),
}


def bundled_checkpoint(task: str) -> Path:
    """The checkpoint shipped for ``task``; FileNotFoundError saying how to train it."""
    if task == "demo-video":
        from ..demo.video_run import bundled_checkpoint as video_checkpoint

        return video_checkpoint()
    from ..demo.run import bundled_checkpoint as image_checkpoint

    return image_checkpoint()


class DemoRunner:
    """Runs configurations of one demo task on one checkpoint, loaded at the first run.

    Parameters
    ----------
    task : {"demo", "demo-video"}
        The demo task.
    model : str or Path, optional
        A demo checkpoint of that task's kind (default: the bundled one).
    limit : int, optional
        Test questions (default: :data:`DEMO_TASKS`' count).
    seed : int
        The test split's seed.
    """

    def __init__(
        self, task: str, model: str | Path | None = None, limit: int | None = None, seed: int = 0
    ) -> None:
        if task not in DEMO_TASKS:
            raise ValueError(f"unknown demo task {task!r}; choose from {', '.join(DEMO_TASKS)}")
        self.task = task
        self.model_dir = model
        self.limit = limit or DEMO_TASKS[task][1]
        self.seed = seed
        self._loaded: tuple[Any, Any, list, Any] | None = None

    @property
    def video(self) -> bool:
        return self.task == "demo-video"

    def _load(self) -> tuple[Any, Any, list, Any]:
        """``(model, encoder, questions, accuracy function)``, loaded once."""
        if self._loaded is None:
            directory = self.model_dir or bundled_checkpoint(self.task)
            if self.video:
                from ..demo import video_model, video_task
                from ..demo.video_evaluate import VideoEncoder, accuracy

                model, tokenizer = video_model.load(directory)
                encoder = VideoEncoder(tokenizer)
                questions = video_task.make_split(self.seed, "test", self.limit)
            else:
                from ..demo import model as demo_model
                from ..demo import task
                from ..demo.evaluate import Encoder, accuracy

                model, processor = demo_model.load(directory)
                encoder = Encoder(processor.tokenizer)
                questions = task.make_split(self.seed, "test", self.limit)
            accuracy(model, questions[:4], encoder)  # the first forward pays one-off costs
            self._loaded = (model, encoder, questions, accuracy)
        return self._loaded

    def run(self, configuration: Configuration) -> dict[str, Any]:
        """Score one configuration.

        Returns
        -------
        dict
            ``metrics`` (``accuracy`` over all questions and ``accuracy/<type>`` per question
            type, in [0, 1]), ``visual_tokens`` and ``visual_tokens_unpruned`` (per question,
            mean), ``prefill_flops_ratio`` and ``seconds``.
        """
        import visprune

        model, encoder, questions, accuracy = self._load()
        handle = None
        if configuration.method != UNPRUNED:
            handle = visprune.apply(
                model,
                configuration.method,
                budget=configuration.budget,
                positions=configuration.positions,
                **configuration.params,
            )
        try:
            start = time.perf_counter()
            with PrefillMeter(model, handle) as meter:
                scores = accuracy(model, questions, encoder)
            seconds = time.perf_counter() - start
        finally:
            if handle is not None:
                handle.remove()
        types = self._question_types()
        metrics = {"accuracy": scores["all"]}
        metrics.update({f"accuracy/{t}": scores[t] for t in types if t in scores})
        counts = meter.counts
        return {
            "metrics": metrics,
            "visual_tokens": counts.visual_tokens / counts.rows,
            "visual_tokens_unpruned": counts.visual_tokens_unpruned / counts.rows,
            "prefill_flops_ratio": counts.ratio,
            "seconds": seconds,
            "limit": len(questions),
        }

    def _question_types(self) -> list[str]:
        """The task's question types in its own order (the table's column order)."""
        if self.video:
            from ..demo import video_task

            return list(video_task.QUESTION_TYPES)
        from ..demo import task

        return list(task.QUESTION_TYPES)

    def describe(self) -> str:
        """The model, for captions: the checkpoint folder's name or ``bundled demo model``."""
        if self.model_dir is None:
            return "bundled demo video model" if self.video else "bundled demo model"
        return Path(self.model_dir).name
