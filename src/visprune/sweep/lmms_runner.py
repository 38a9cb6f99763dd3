"""lmms-eval tasks as sweep tasks, evaluated in this process through visprune's lmms-eval plugin
(:mod:`visprune.integrations.lmms_eval`): the checkpoint loads once, each configuration swaps
the method on it (``use``) and runs ``lmms_eval.evaluator.simple_evaluate`` on the loaded
model, with lmms-eval's own progress bars inside the sweep's."""

from __future__ import annotations

import difflib
import os
import time
from typing import Any

from .grid import UNPRUNED, Configuration
from .meter import PrefillMeter

#: ``config.model_type`` -> the plugin's lmms-eval model name.
WRAPPERS = {
    "llava": "visprune_llava_hf",
    "llava_next": "visprune_llava_hf",
    "llava_onevision": "visprune_llava_hf",
    "qwen2_5_vl": "visprune_qwen2_5_vl",
    "qwen3_vl": "visprune_qwen3_vl",
    "qwen3_vl_moe": "visprune_qwen3_vl",
    "gemma3": "visprune_gemma3",
    "internvl": "visprune_internvl_hf",
}


def task_manager() -> Any:
    """lmms-eval's task index with the bundled ``visprune_demo`` tasks included."""
    from lmms_eval.tasks import TaskManager

    from ..integrations import LMMS_EVAL_TASKS

    return TaskManager(verbosity="WARNING", include_path=str(LMMS_EVAL_TASKS))


def check_tasks(tasks: list[str], manager: Any) -> bool:
    """Refuse unknown task names (with the closest ones); whether any is a loglikelihood task
    (those run through the plugin's simple class).

    Raises
    ------
    ValueError
        An unknown task.
    """
    known = manager.all_tasks
    loglikelihood = False
    for name in tasks:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"--tasks {name!r} is neither a bundled task (demo, demo-video) nor an lmms-eval "
                f"task{hint} (`python -m lmms_eval --tasks list` lists them)"
            )
        if manager.task_index[name]["type"] == "task":
            kind = manager._get_config(name).get("output_type", "generate_until")
            loglikelihood |= kind == "loglikelihood"
    return loglikelihood


def wrapper_name(model: str) -> str:
    """The plugin's model name for a checkpoint, from its config (no weights are read).

    Raises
    ------
    ValueError
        A config that cannot be read, or a model family the plugin has no wrapper for.
    """
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(model).model_type
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {model!r}: cannot read its config ({error})") from None
    if model_type not in WRAPPERS:
        raise ValueError(
            f"--model {model!r} is a {model_type} model; lmms-eval tasks run through visprune's "
            f"wrappers for {', '.join(sorted(WRAPPERS))}"
        )
    return WRAPPERS[model_type]


def _metrics(scores: dict[str, Any]) -> dict[str, float]:
    """lmms-eval's ``results[task]`` as ``name -> value``: ``exact_match,none`` becomes
    ``exact_match`` (another filter: ``exact_match (filter)``); standard errors, aliases and
    non-numbers are left out."""
    metrics = {}
    for key, value in scores.items():
        name, _, filter_name = key.partition(",")
        if "_stderr" in name or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        metrics[name if filter_name in ("", "none") else f"{name} ({filter_name})"] = float(value)
    return metrics


class LmmsEvalRunner:
    """Runs configurations of lmms-eval tasks on one checkpoint, loaded at the first run.

    Parameters
    ----------
    model : str
        A checkpoint folder or hub id.
    limit : int, optional
        Documents per task (lmms-eval's ``--limit``; default: all).
    batch_size : int
        Requests per ``generate`` call.
    simple : bool
        Use the plugin's simple class (needed for loglikelihood tasks).
    manager : lmms_eval.tasks.TaskManager
        The task index (reused from the checks).
    """

    def __init__(
        self,
        model: str,
        *,
        limit: int | None = None,
        batch_size: int = 1,
        simple: bool = False,
        manager: Any = None,
    ) -> None:
        self.model = model
        self.limit = limit
        self.batch_size = batch_size
        self.simple = simple
        self.manager = manager
        self.name = wrapper_name(model)
        self._wrapper: Any = None

    def _load(self) -> Any:
        if self._wrapper is None:
            from lmms_eval.models import get_model

            self.manager = self.manager or task_manager()
            cls = get_model(self.name, force_simple=self.simple)
            self._wrapper = cls.create_from_arg_string(
                f"pretrained={self.model},method=keepall", {"batch_size": self.batch_size}
            )
            self._wrapper.keep_model_loaded = True  # one load for every configuration
        return self._wrapper

    def run(self, configuration: Configuration) -> dict[str, Any]:
        """Evaluate one configuration on its task.

        Returns
        -------
        dict
            ``metrics`` (lmms-eval's, see :func:`_metrics`), ``visual_tokens`` and
            ``visual_tokens_unpruned`` (per prompt, mean), ``prefill_flops_ratio``, ``seconds``
            and ``limit`` (documents evaluated).
        """
        from lmms_eval.evaluator import simple_evaluate

        wrapper = self._load()
        if configuration.method == UNPRUNED:
            wrapper.use("keepall")
        else:
            options = dict(configuration.params, budget=configuration.budget)
            if configuration.positions is not None:
                options["positions"] = configuration.positions
            wrapper.use(configuration.method, **options)
        # keepall is the unpruned model: its selections keep every token, so they meter as such
        handle = wrapper.visprune_handle
        start = time.perf_counter()
        with PrefillMeter(wrapper.model, handle) as meter:
            results = simple_evaluate(
                model=wrapper,
                tasks=[configuration.task],
                limit=self.limit,
                task_manager=self.manager,
                log_samples=False,
                bootstrap_iters=0,
                verbosity="WARNING",
            )
        seconds = time.perf_counter() - start
        if results is None:  # lmms-eval returns None on ranks other than 0
            raise RuntimeError("lmms-eval returned no results (not the main process)")
        scores = results["results"][configuration.task]
        counts = meter.counts
        rows = max(1, counts.rows)
        samples = results.get("n-samples", {}).get(configuration.task, {})
        return {
            "metrics": _metrics(scores),
            "visual_tokens": counts.visual_tokens / rows,
            "visual_tokens_unpruned": counts.visual_tokens_unpruned / rows,
            "prefill_flops_ratio": counts.ratio,
            "seconds": seconds,
            "limit": samples.get("effective", self.limit),
        }

    def describe(self) -> str:
        return self.model.rstrip(os.sep)
