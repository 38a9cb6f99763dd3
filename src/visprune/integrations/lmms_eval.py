"""lmms-eval models that run a visprune method: lmms-eval's own Hugging Face wrappers, pruned.

Each wrapper subclasses an lmms-eval model class, lets it load the checkpoint exactly as the
unpruned baseline does, and then calls :func:`visprune.apply` on the loaded model. The method and
its parameters come from ``--model_args``::

    python -m lmms_eval --model visprune_llava_hf \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=otprune,budget=64,gamma=0.01 \\
        --tasks gqa --batch_size 8 --log_samples --output_path results/

``method`` is required (``method=keepall`` is the unpruned baseline through the same code);
``budget``, ``positions``, ``newlines`` and every other argument that the lmms-eval class does
not take go to visprune, whose errors (unknown method or parameter, bad budget) stop the run
before the model is loaded.

lmms-eval's command line reports an exception of its model class and then exits with status 0;
so when a wrapper fails under that command line (``python -m lmms_eval`` or ``lmms-eval``), the
run stops with a non-zero status instead: 2 and one line for a bad ``--model_args``, 1 and the
traceback for any other failure. Called from Python, the wrappers raise as usual.

``generate_until`` and ``loglikelihood`` are implemented here once for every family, batched
(``--batch_size``, left padding), because the lmms-eval LLaVA classes refuse batches and score
loglikelihoods from logit positions that pruning shifts. Each result carries the sample's token
counts (:class:`PrunedTokenCounts`: ``visual_tokens`` before pruning, ``visual_tokens_kept``,
``input_tokens`` the language model prefilled), which lmms-eval writes into every logged sample;
the model time and mean counts of each request type go to the ``throughput`` section of the
results file.

Prompts follow lmms-eval's chat conventions: a chat task's messages, or for simple tasks the
visuals followed by the text (or placed at ``<image>`` marks in it), rendered with the
processor's chat template. A processor without a chat template gets the message parts
concatenated in order, an image as the processor's image token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import itertools
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.models.chat.internvl_hf import InternVLHf as _InternVLHfChat
from lmms_eval.models.chat.llava_hf import LlavaHf as _LlavaHfChat
from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as _Qwen2_5_VLChat
from lmms_eval.models.chat.qwen3_vl import Qwen3_VL as _Qwen3_VLChat
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.models.simple.gemma3 import Gemma3 as _Gemma3Simple
from lmms_eval.models.simple.llava_hf import LlavaHf as _LlavaHfSimple
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL as _Qwen2_5_VLSimple
from lmms_eval.models.simple.qwen3_vl import Qwen3_VL as _Qwen3_VLSimple
from lmms_eval.protocol import ChatMessages
from loguru import logger
from PIL import Image
from tqdm import tqdm

import visprune
from visprune.compat import cache_argument, output_cache

#: The placeholder lmms-eval tasks write where an image goes in a simple task's text.
IMAGE_MARK = "<image>"
#: ``--model_args`` keys that configure the visprune adapter rather than the method.
ADAPTER_OPTIONS = ("positions", "newlines")


@dataclass
class PrunedTokenCounts(TokenCounts):
    """lmms-eval's per-sample token counts plus the visual tokens before and after pruning.

    Attributes
    ----------
    visual_tokens : int
        Visual (image and video) tokens of the sample before pruning.
    visual_tokens_kept : int
        Visual tokens the language model saw.
    """

    visual_tokens: int | None = None
    visual_tokens_kept: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        counts = super().to_dict()
        if self.visual_tokens is not None:
            counts["visual_tokens"] = self.visual_tokens
            counts["visual_tokens_kept"] = self.visual_tokens_kept
        return counts


@dataclass
class _Prompt:
    """One request made ready for the processor."""

    messages: list[dict]
    images: list
    videos: list
    doc: dict
    context: str


def _under_lmms_eval_command_line() -> bool:
    """Whether lmms-eval's command line (``cli_evaluate``, which reports a model's exception and
    then exits with status 0) is running this call."""
    suffix = os.path.join("lmms_eval", "__main__.py")
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "cli_evaluate" and code.co_filename.endswith(suffix):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _failure_stops_the_run(status: int) -> Iterator[None]:
    """Under lmms-eval's command line, turn an exception into an exit with ``status``.

    ``status`` 2 (a bad argument) prints one line; any other status prints the traceback first.
    ``SystemExit`` is not an ``Exception``, so lmms-eval's handler lets it through. Elsewhere
    the exception propagates unchanged.
    """
    try:
        yield
    except Exception as error:
        if not _under_lmms_eval_command_line():
            raise
        if status != 2:
            traceback.print_exc()
        print(f"visprune: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(status) from error


def _stops_the_run_on_failure(request_method):
    """A request method (``generate_until``, ``loglikelihood``) whose failure under lmms-eval's
    command line ends the run with status 1 rather than 0."""

    @functools.wraps(request_method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _failure_stops_the_run(status=1):
            return request_method(*args, **kwargs)

    return run


class _Pruned:
    """The visprune part of every wrapper; mixed in before an lmms-eval model class."""

    #: Attribute of the lmms-eval class that holds the Hugging Face processor.
    processor_attribute = "processor"
    #: Whether the processor takes a batch's images as one list per text (Gemma 3's does).
    images_per_text = False

    def __init__(
        self,
        method: str | None = None,
        budget: int | float | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        accepted = _init_parameters(super().__init__)
        base = {key: value for key, value in kwargs.items() if key in accepted}
        options = {key: kwargs.pop(key) for key in ADAPTER_OPTIONS if key in kwargs}
        params = {key: value for key, value in kwargs.items() if key not in accepted}
        with _failure_stops_the_run(status=2):
            self.visprune_method = _method(type(self), method, budget, params, accepted)
        if device is None:  # lmms-eval's classes default to CUDA; run where the machine can
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if base.get("device_map", accepted.get("device_map")) == "" and _single_process():
            # llava_hf's default device_map "" is rejected by transformers 5 in one process
            base["device_map"] = device
        with _failure_stops_the_run(status=2):
            self._check_checkpoint({**accepted, **base})
        with _failure_stops_the_run(status=1):
            super().__init__(device=device, **base)
            self.visprune_handle = visprune.apply(self.model, self.visprune_method, **options)
        self.hf_processor.tokenizer.padding_side = "left"  # batched generation appends on the right
        logger.info(f"visprune: {self.visprune_method!r} on {type(self.model).__name__}")

    #: lmms-eval ends every evaluation with ``clean()``, which deletes the model (to free memory
    #: for a judge model); while this is True the model stays, so a sweep evaluates again on the
    #: same load.
    keep_model_loaded = False

    def clean(self) -> None:
        if not self.keep_model_loaded:
            super().clean()

    def use(self, method: str | visprune.Method, **options: Any) -> None:
        """Run ``method`` from now on instead of the current one, on the loaded model: a sweep
        evaluates many methods with one load. ``options`` are :func:`visprune.apply`'s
        (``budget``, ``positions``, the method's parameters)."""
        chosen = visprune.get_method(
            method, **{k: v for k, v in options.items() if k != "positions"}
        )
        chosen.num_keep(1)
        self.visprune_handle.remove()
        self.visprune_method = chosen
        positions = {"positions": options["positions"]} if "positions" in options else {}
        self.visprune_handle = visprune.apply(self.model, chosen, **positions)

    # ------------------------------------------------------------------------------ helpers
    def _check_checkpoint(self, arguments: dict[str, Any]) -> None:
        """Refuse, before loading, a checkpoint the lmms-eval class would load wrongly.

        ``arguments`` are the lmms-eval class's arguments, defaults filled in.
        """

    @property
    def hf_processor(self) -> Any:
        """The Hugging Face processor the lmms-eval class loaded."""
        return getattr(self, self.processor_attribute)

    def _prompt(self, request: Instance) -> _Prompt:
        """Messages, images and videos of one generation request, chat or simple."""
        args = request.args
        if callable(args[1]):  # chat task: (ctx, doc_to_messages, gen_kwargs, doc_id, task, split)
            context, doc_to_messages, _, doc_id, task, split = args[:6]
            doc = self.task_dict[task][split][doc_id]
            chat = ChatMessages(messages=doc_to_messages(doc))
            images, videos, _ = chat.extract_media()
            return _Prompt(chat.model_dump()["messages"], images, videos, doc, context)
        context, _, doc_to_visual, doc_id, task, split = args[:6]
        doc = self.task_dict[task][split][doc_id]
        return _user_turn(context, doc_to_visual(doc) if doc_to_visual else [], doc)

    def _render(self, messages: list[dict], *, generation: bool) -> str:
        """The prompt text: the chat template, or the parts in order without one."""
        processor = self.hf_processor
        if getattr(processor, "chat_template", None):
            return processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation
            )
        marks = {
            "image": getattr(processor, "image_token", None) or IMAGE_MARK,
            "video": getattr(processor, "video_token", None) or "<video>",
        }
        pieces = []
        for message in messages:
            content = message["content"]
            if isinstance(content, str):  # a plain-text message (system prompts)
                content = [{"type": "text", "text": content}]
            for part in content:
                pieces.append(part["text"] if part["type"] == "text" else marks[part["type"]])
        return "".join(pieces)

    def _encode(
        self, texts: list[str], images: list, videos: list, per_text: list[int] | None = None
    ) -> Any:
        """Processor outputs of a batch, on the model's device, floats in the model's dtype.

        ``images`` are the batch's images in order; ``per_text`` says how many belong to each
        text, for processors that take one list of images per text (:attr:`images_per_text`).
        """
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if images and self.images_per_text:
            counts = per_text if per_text is not None else [len(images)]
            ends = list(itertools.accumulate(counts))
            kwargs["images"] = [images[end - n : end] for n, end in zip(counts, ends, strict=True)]
        elif images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = videos
        return self.hf_processor(**kwargs).to(self.model.device, self.model.dtype)

    def _counts(self, inputs: Any, rows: int, copies: int = 1) -> list[dict[str, int]]:
        """Per batch row: visual tokens before/after pruning and prompt tokens prefilled.

        ``copies`` > 1 when generation expanded each row (beam search): the selections then
        cover every copy and the first one stands for the row.
        """
        counts = [{"visual": 0, "kept": 0} for _ in range(rows)]
        for selection in self.visprune_handle.selections:
            if selection.sample % copies == 0:
                row = counts[selection.sample // copies]
                row["visual"] += selection.n
                row["kept"] += len(selection.kept)
        lengths = inputs["attention_mask"].sum(-1).tolist()
        for row, length in zip(counts, lengths, strict=True):
            row["input"] = int(length) - row["visual"] + row["kept"]
        return counts

    def _timed(self, call, *args, **kwargs):
        """``call(*args, **kwargs)`` and its wall time (after the GPU finished)."""
        device = self.model.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        output = call(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return output, time.perf_counter() - start

    def _log(self, kind: str, counts: list[dict[str, int]], seconds: float, generated: int) -> None:
        """Model time and mean token counts of one request type -> results["throughput"]."""
        n = max(1, len(counts))
        visual = sum(c["visual"] for c in counts) / n
        kept = sum(c["kept"] for c in counts) / n
        log_metrics(
            total_elapsed_time=seconds,
            total_gen_tokens=generated,
            avg_speed=generated / seconds if seconds > 0 else 0.0,
            additional_metrics={
                "total_requests": len(counts),
                "visual_tokens_per_sample": visual,
                "visual_tokens_kept_per_sample": kept,
                "rank": self.rank,
            },
        )
        logger.info(
            f"visprune {kind}: {self.visprune_method.name} kept {kept:.1f} of {visual:.1f} visual "
            f"tokens per sample on average; model time {seconds:.2f} s for {len(counts)} requests"
        )

    # ---------------------------------------------------------------------------- requests
    @_stops_the_run_on_failure
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Greedy or sampled generation, ``batch_size`` requests per ``generate`` call.

        Requests with equal generation settings share batches; results come back in request
        order, each with its :class:`PrunedTokenCounts`.
        """
        results: list[GenerationResult | None] = [None] * len(requests)
        all_counts: list[dict[str, int]] = []
        seconds, generated = 0.0, 0
        batches = _batches(requests, self.batch_size, key=lambda r: repr(_gen_kwargs(r)))
        for batch in tqdm(batches, disable=self.rank != 0, desc="visprune generate"):
            settings, until = _generation_settings(_gen_kwargs(requests[batch[0]]))
            prompts = [self._prompt(requests[i]) for i in batch]
            texts = [self._render(p.messages, generation=True) for p in prompts]
            images = [image for p in prompts for image in p.images]
            videos = [video for p in prompts for video in p.videos]
            inputs = self._encode(texts, images, videos, [len(p.images) for p in prompts])
            tokenizer = self.hf_processor.tokenizer
            eos = tokenizer.eos_token_id
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
            with torch.inference_mode():
                output, elapsed = self._timed(
                    self.model.generate,
                    **inputs,
                    **settings,
                    use_cache=self.use_cache,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
            seconds += elapsed
            counts = self._counts(inputs, len(batch), copies=settings["num_beams"])
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row, index in enumerate(batch):
                length = _generated_length(new_tokens[row].tolist(), {eos, pad})
                generated += length
                text = _cut(decoded[row], until)
                results[index] = GenerationResult(
                    text=text,
                    token_counts=PrunedTokenCounts(
                        input_tokens=counts[row]["input"],
                        output_tokens=length,
                        visual_tokens=counts[row]["visual"],
                        visual_tokens_kept=counts[row]["kept"],
                    ),
                )
                self.cache_hook.add_partial(
                    "generate_until", (prompts[row].context, _gen_kwargs(requests[index])), text
                )
            all_counts += counts
        self._log("generate_until", all_counts, seconds, generated)
        return results

    def _positions(self, mask: torch.Tensor, steps: int) -> tuple[dict, dict]:
        """``position_ids`` of the prompt and of the continuation, numbered as ``generate`` does.

        A left-padded prompt row counts from its first real token, as it would alone: a plain
        forward numbers the padding too, which shifts RoPE's absolute angles and with them
        what a method reads from rotated keys (DART's key norms). Models that number their
        positions themselves from the mask (multimodal RoPE: ``get_rope_index``) get none.
        """
        if hasattr(getattr(self.model, "model", None), "get_rope_index"):
            return {}, {}
        numbered = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        return {"position_ids": numbered[:, :-steps]}, {"position_ids": numbered[:, -steps:]}

    @_stops_the_run_on_failure
    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Mean negative log-likelihood of each continuation and whether greedy decoding
        reproduces it, ``batch_size`` requests per forward pass.

        The value is the loss lmms-eval's LLaVA wrapper reports (mean over the continuation's
        tokens; lower is more likely); the continuation follows the prompt rendered with its
        generation prompt, where the model's answer would start. The prompt is prefilled first
        (pruned, with its KV cache), then the continuation runs on that cache, as generated
        tokens would: a text-conditioned method thus picks its tokens from the prompt alone,
        never from the answer being scored (one forward pass over prompt and continuation
        would show it the answer).
        The ``(loss, greedy)`` pair travels in a ``GenerationResult``: lmms-eval 0.7 turns a
        bare tuple result into its string (``unwrap_generation_output``), which its scoring
        cannot unpack, and the wrapper also carries the sample's token counts into the logs.
        """
        results: list[GenerationResult | None] = [None] * len(requests)
        all_counts: list[dict[str, int]] = []
        seconds = 0.0
        tokenizer = self.hf_processor.tokenizer
        for batch in tqdm(
            _batches(requests, self.batch_size), disable=self.rank != 0, desc="visprune score"
        ):
            contexts, continuations, images, per_text = [], [], [], []
            for index in batch:
                prompt, continuation = self._scored(requests[index])
                context = self._render(prompt.messages, generation=True)
                full = context + continuation  # the answer right after the generation prompt
                contexts.append(context)
                continuations.append(_continuation_ids(full, context, tokenizer))
                images += prompt.images
                per_text.append(len(prompt.images))
            inputs = self._encode(contexts, images, [], per_text)
            longest = max(map(len, continuations))
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            # Right-padded continuations: padding after the real tokens cannot reach them.
            ids = torch.full((len(batch), longest), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, tokens in enumerate(continuations):
                ids[row, : len(tokens)] = torch.tensor(tokens)
                mask[row, : len(tokens)] = 1
            ids, mask = ids.to(self.model.device), mask.to(self.model.device)
            full_mask = torch.cat([inputs["attention_mask"], mask], dim=1)
            prompt_positions, positions = self._positions(full_mask, ids.shape[1])
            with torch.inference_mode():
                prefill, first = self._timed(
                    self.model, **inputs, **prompt_positions, logits_to_keep=1, use_cache=True
                )
                counts = self._counts(inputs, len(batch))
                rest, second = self._timed(
                    self.model,
                    input_ids=ids,
                    attention_mask=full_mask,
                    use_cache=True,
                    **positions,
                    **cache_argument(self.model, output_cache(prefill)),
                )
            seconds += first + second
            # Position j of the continuation is predicted by the logits before it.
            logits = torch.cat([prefill.logits[:, -1:], rest.logits[:, :-1]], dim=1).float()
            for row, index in enumerate(batch):
                t = len(continuations[row])
                predicted = logits[row, :t]
                target = ids[row, :t].to(predicted.device)
                loss = torch.nn.functional.cross_entropy(predicted, target)
                greedy = bool((predicted.argmax(-1) == target).all())
                counts[row]["input"] += t
                results[index] = GenerationResult(
                    text=(float(loss), greedy),
                    token_counts=PrunedTokenCounts(
                        input_tokens=counts[row]["input"],
                        visual_tokens=counts[row]["visual"],
                        visual_tokens_kept=counts[row]["kept"],
                    ),
                )
            all_counts += counts
        self._log("loglikelihood", all_counts, seconds, 0)
        return results

    def _scored(self, request: Instance) -> tuple[_Prompt, str]:
        """The prompt and continuation of a loglikelihood request."""
        context, doc_to_target, doc_to_visual, doc_id, task, split = request.args[:6]
        doc = self.task_dict[task][split][doc_id]
        continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
        visuals = doc_to_visual(doc) if doc_to_visual else []
        return _user_turn(context, visuals, doc), str(continuation)


class VispruneLlavaHf(_Pruned, _LlavaHfChat):
    """lmms-eval's ``llava_hf`` (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision), pruned; chat tasks."""

    processor_attribute = "_image_processor"
    is_simple = False


class VispruneLlavaHfSimple(_Pruned, _LlavaHfSimple):
    """lmms-eval's ``llava_hf``, pruned; simple tasks (``--force_simple``, loglikelihood)."""

    processor_attribute = "_image_processor"
    is_simple = True


class VispruneQwen2_5_VL(_Pruned, _Qwen2_5_VLChat):
    """lmms-eval's ``qwen2_5_vl``, pruned; chat tasks."""

    is_simple = False


class VispruneQwen2_5_VLSimple(_Pruned, _Qwen2_5_VLSimple):
    """lmms-eval's ``qwen2_5_vl``, pruned; simple tasks (``--force_simple``, loglikelihood)."""

    is_simple = True


class _Qwen3VLCheckpoint:
    """lmms-eval's ``qwen3_vl`` picks the dense or the MoE model class from the checkpoint's
    name (``A3B`` in ``Qwen3-VL-30B-A3B-Instruct``), not from its config; a mismatch would load
    the other class with freshly initialised MLPs, so it is refused before loading."""

    def _check_checkpoint(self, arguments: dict[str, Any]) -> None:
        from transformers import AutoConfig

        pretrained = str(arguments["pretrained"])
        model_type = AutoConfig.from_pretrained(pretrained).model_type
        named_moe = re.search(r"A\d+B", pretrained) is not None  # lmms-eval's own test
        if model_type.endswith("_moe") != named_moe:
            raise ValueError(
                f"{pretrained} holds a {model_type} model, but lmms-eval's qwen3_vl picks dense "
                "or mixture-of-experts from the path (A<N>B in it, as in "
                "Qwen3-VL-30B-A3B-Instruct, means MoE) and would load it as "
                f"{'MoE' if named_moe else 'dense'}, with freshly initialised weights. Name the "
                f"checkpoint directory {'without' if named_moe else 'with'} an A<N>B part."
            )


class VispruneQwen3_VL(_Qwen3VLCheckpoint, _Pruned, _Qwen3_VLChat):
    """lmms-eval's ``qwen3_vl`` (Qwen3-VL, dense and MoE), pruned; chat tasks."""

    is_simple = False


class VispruneQwen3_VLSimple(_Qwen3VLCheckpoint, _Pruned, _Qwen3_VLSimple):
    """lmms-eval's ``qwen3_vl``, pruned; simple tasks (``--force_simple``, loglikelihood)."""

    is_simple = True


class VispruneGemma3Simple(_Pruned, _Gemma3Simple):
    """lmms-eval's ``gemma3`` (a simple class only: lmms-eval runs every task through it)."""

    images_per_text = True
    is_simple = True


class VispruneInternVLHf(_Pruned, _InternVLHfChat):
    """lmms-eval's ``internvl_hf`` (InternVL3 / 3.5 ``-hf`` checkpoints), pruned; chat tasks.

    lmms-eval's class asserts ``batch_size=1`` (it generates request by request); it loads with
    that, and visprune's batched generation then uses the ``batch_size`` asked for.
    """

    is_simple = False

    def __init__(self, batch_size: int | str = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_size_per_gpu = int(batch_size)


# -------------------------------------------------------------------------------- functions
def _init_parameters(init) -> dict[str, Any]:
    """Keyword parameters an lmms-eval ``__init__`` takes (its ``**kwargs`` must stay empty),
    with their defaults."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(init).parameters.items()
        if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
    }


def _single_process() -> bool:
    """Whether lmms-eval runs in one process (not under ``accelerate launch`` / torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) == 1


def _method(
    wrapper: type, method: Any, budget: Any, params: dict, accepted: dict
) -> visprune.Method:
    """The visprune method of ``--model_args``, validated before any checkpoint is loaded.

    ``params`` are the arguments the lmms-eval class does not take (``accepted``); each must be
    a parameter of the method.
    """
    if method is None:
        raise ValueError(
            f"{wrapper.__name__} needs method=NAME in --model_args (one of "
            f"{', '.join(visprune.list_methods())}; method=keepall runs unpruned)."
        )
    chosen = visprune.get_method(str(method))  # an unknown name fails here, with suggestions
    fields = {field.name for field in dataclasses.fields(chosen)}
    unknown = sorted(set(params) - fields)
    if unknown:
        base = next(c for c in wrapper.__mro__ if c.__module__.startswith("lmms_eval."))
        raise ValueError(
            f"{chosen.name} has no parameter(s) {', '.join(unknown)}, and lmms-eval's "
            f"{base.__module__}.{base.__name__} does not take them either. {chosen.name} "
            f"accepts: {', '.join(sorted(fields))}; visprune also takes positions, newlines; "
            f"lmms-eval takes: {', '.join(sorted(accepted))}."
        )
    if budget is not None:
        params = {**params, "budget": budget}
    chosen = visprune.get_method(chosen, **params)
    chosen.num_keep(1)  # a bad budget fails here, not after minutes of loading
    return chosen


def _user_turn(context: str, visuals: Sequence | None, doc: dict) -> _Prompt:
    """A simple task's request as one user message: visuals at the ``<image>`` marks of the
    text when it has them, else before it (as lmms-eval's chat tasks place them)."""
    visuals = [v for v in (visuals or []) if v is not None]
    images = [v for v in visuals if isinstance(v, Image.Image)]
    videos = [v for v in visuals if not isinstance(v, Image.Image)]
    parts: list[dict] = []
    if IMAGE_MARK in context and images:
        pieces = context.split(IMAGE_MARK)
        if len(pieces) - 1 != len(images):
            raise ValueError(
                f"the prompt has {len(pieces) - 1} {IMAGE_MARK} marks but the document has "
                f"{len(images)} images; give one mark per image, or none to put images first."
            )
        for i, piece in enumerate(pieces):
            if i:
                parts.append({"type": "image", "url": images[i - 1]})
            if piece:
                parts.append({"type": "text", "text": piece})
        parts = [{"type": "video", "url": v} for v in videos] + parts
    else:
        parts = [{"type": "image", "url": v} for v in images]
        parts += [{"type": "video", "url": v} for v in videos]
        parts.append({"type": "text", "text": context})
    return _Prompt([{"role": "user", "content": parts}], images, videos, doc, context)


def _continuation_ids(full: str, context: str, tokenizer: Any) -> list[int]:
    """Token ids of ``full`` after its prompt ``context``; both hold the same images, whose
    placeholders the processor expands equally, so the text tokens tell the difference."""
    ids = tokenizer(full).input_ids
    length = len(ids) - len(tokenizer(context).input_ids)
    if length < 1:
        raise ValueError(
            f"the continuation of {context!r} encodes to no tokens after the prompt; check the "
            "task's doc_to_target."
        )
    return ids[-length:]


def _gen_kwargs(request: Instance) -> dict:
    args = request.args
    return dict(args[2] if callable(args[1]) else args[1])


def _generation_settings(gen_kwargs: dict) -> tuple[dict, list[str]]:
    """``generate`` arguments and stop strings from a task's generation kwargs."""
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    settings: dict[str, Any] = {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens", 1024)),
        "num_beams": int(gen_kwargs.get("num_beams") or 1),
        "do_sample": temperature > 0,
    }
    if temperature > 0:
        settings["temperature"] = temperature
        if gen_kwargs.get("top_p") is not None:
            settings["top_p"] = float(gen_kwargs["top_p"])
    return settings, [stop for stop in until if stop]


def _batches(requests: Sequence, size: int, key=None) -> list[list[int]]:
    """Request indices in batches of ``size``, grouped by ``key`` (in order of appearance)."""
    groups: dict[Any, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(key(request) if key else None, []).append(index)
    size = max(1, int(size))
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def _generated_length(tokens: list[int], stops: set[int]) -> int:
    """Generated tokens up to and including the first end-of-sequence (padding excluded)."""
    for i, token in enumerate(tokens):
        if token in stops:
            return i + 1
    return len(tokens)


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to the first stop string."""
    for stop in until:
        text = text.split(stop)[0]
    return text
