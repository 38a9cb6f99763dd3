"""The visprune part of every lmms-eval wrapper: :class:`Pruned`, mixed in before an lmms-eval
model class, applies the method after that class loaded the checkpoint and answers
``generate_until`` and ``loglikelihood`` batched, with each sample's token counts."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.protocol import ChatMessages
from loguru import logger
from tqdm import tqdm

import visprune
from visprune.compat import cache_argument, output_cache

from .arguments import ADAPTER_OPTIONS, init_parameters, method_from_arguments, single_process
from .failures import failure_stops_the_run, stops_the_run_on_failure
from .generation import (
    cut_at_stops,
    gen_kwargs,
    generated_length,
    generation_settings,
    request_batches,
)
from .prompts import IMAGE_MARK, Prompt, continuation_ids, user_turn


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


class Pruned:
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
        accepted = init_parameters(super().__init__)
        base = {key: value for key, value in kwargs.items() if key in accepted}
        options = {key: kwargs.pop(key) for key in ADAPTER_OPTIONS if key in kwargs}
        params = {key: value for key, value in kwargs.items() if key not in accepted}
        with failure_stops_the_run(status=2):
            self.visprune_method = method_from_arguments(
                type(self), method, budget, params, accepted
            )
        if device is None:  # lmms-eval's classes default to CUDA; run where the machine can
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if base.get("device_map", accepted.get("device_map")) == "" and single_process():
            # llava_hf's default device_map "" is rejected by transformers 5 in one process
            base["device_map"] = device
        with failure_stops_the_run(status=2):
            self._check_checkpoint({**accepted, **base})
        with failure_stops_the_run(status=1):
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

    def _prompt(self, request: Instance) -> Prompt:
        """Messages, images and videos of one generation request, chat or simple."""
        args = request.args
        if callable(args[1]):  # chat task: (ctx, doc_to_messages, gen_kwargs, doc_id, task, split)
            context, doc_to_messages, _, doc_id, task, split = args[:6]
            doc = self.task_dict[task][split][doc_id]
            chat = ChatMessages(messages=doc_to_messages(doc))
            images, videos, _ = chat.extract_media()
            return Prompt(chat.model_dump()["messages"], images, videos, doc, context)
        context, _, doc_to_visual, doc_id, task, split = args[:6]
        doc = self.task_dict[task][split][doc_id]
        return user_turn(context, doc_to_visual(doc) if doc_to_visual else [], doc)

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
    @stops_the_run_on_failure
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Greedy or sampled generation, ``batch_size`` requests per ``generate`` call.

        Requests with equal generation settings share batches; results come back in request
        order, each with its :class:`PrunedTokenCounts`.
        """
        results: list[GenerationResult | None] = [None] * len(requests)
        all_counts: list[dict[str, int]] = []
        seconds, generated = 0.0, 0
        batches = request_batches(requests, self.batch_size, key=lambda r: repr(gen_kwargs(r)))
        for batch in tqdm(batches, disable=self.rank != 0, desc="visprune generate"):
            settings, until = generation_settings(gen_kwargs(requests[batch[0]]))
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
                length = generated_length(new_tokens[row].tolist(), {eos, pad})
                generated += length
                text = cut_at_stops(decoded[row], until)
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
                    "generate_until", (prompts[row].context, gen_kwargs(requests[index])), text
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

    @stops_the_run_on_failure
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
        batches = request_batches(requests, self.batch_size)
        for batch in tqdm(batches, disable=self.rank != 0, desc="visprune score"):
            contexts, continuations, images, per_text = [], [], [], []
            for index in batch:
                prompt, continuation = self._scored(requests[index])
                context = self._render(prompt.messages, generation=True)
                full = context + continuation  # the answer right after the generation prompt
                contexts.append(context)
                continuations.append(continuation_ids(full, context, tokenizer))
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

    def _scored(self, request: Instance) -> tuple[Prompt, str]:
        """The prompt and continuation of a loglikelihood request."""
        context, doc_to_target, doc_to_visual, doc_id, task, split = request.args[:6]
        doc = self.task_dict[task][split][doc_id]
        continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
        visuals = doc_to_visual(doc) if doc_to_visual else []
        return user_turn(context, visuals, doc), str(continuation)
