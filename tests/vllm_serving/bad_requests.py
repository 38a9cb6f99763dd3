"""vLLM's OpenAI-compatible server on a tiny Qwen2.5-VL, and the requests clients send to it,
good and bad, for the bad-request test (``test_vllm_bad_requests.py``).

Everything runs on localhost: the server, and a tiny HTTP server that answers 404 for the image
URL case. Ports are picked free by the operating system.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from tiny_qwen import write_tiny_qwen

MODEL_NAME = "tiny-qwen"
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
#: Renders each message's content as a string: vLLM then turns image parts into the model's
#: placeholder (above) in front of the text, adding only those the text does not already hold,
#: as it does for the Hub's Qwen2.5-VL chat template.
CHAT_TEMPLATE = "{%- for message in messages -%}{{ message['content'] }}{%- endfor -%}"


def write_model(directory: Path) -> None:
    """The seeded tiny Qwen2.5-VL with a chat template."""
    write_tiny_qwen("qwen2_5_vl", directory)
    config = directory / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings["chat_template"] = CHAT_TEMPLATE
    config.write_text(json.dumps(settings))
    (directory / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m vllm.entrypoints.openai.api_server`` (= ``vllm serve``) on localhost, its
    output in ``log``; :meth:`stop` kills its whole process group."""

    def __init__(self, model: Path, options: list[str], log: Path) -> None:
        self.port = free_port()
        self.log_path = log
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model), "--served-model-name", MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "float32", "--enforce-eager", "--disable-uvicorn-access-log",
            "--gpu-memory-utilization", "0.1", "--kv-cache-memory-bytes", str(256 * 2**20),
            *options,
        ]  # fmt: skip
        self._log = open(log, "w")  # closed in stop()
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the server did not come up in {timeout} s:\n{self.logs()}")

    def logs(self, tail: int = 20000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        self._log.close()


class NotFoundServer:
    """A localhost HTTP server that answers 404 to every GET, in a thread."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # the name http.server calls
                self.send_error(404, "no such image")

            def log_message(self, *args):  # keep the test's output quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/missing.png"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------ request bodies
def png_bytes(width: int, height: int, seed: int = 0, noise: bool = True) -> bytes:
    """A PNG of seeded noise (or one flat colour, small to send at any size)."""
    from PIL import Image

    if noise:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    else:
        image = Image.new("RGB", (width, height), (200, 90, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def words(seed: int, count: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(f"w{i}" for i in rng.integers(5, 100, count))


def chat_body(content: list[dict], max_tokens: int, **extra) -> dict:
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        **extra,
    }


def post_chat(url: str, body: dict, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)


def answer_of(response: httpx.Response) -> dict:
    """Token text and prompt length of a successful chat completion."""
    assert response.status_code == 200, (response.status_code, response.text)
    payload = response.json()
    return {
        "text": payload["choices"][0]["message"]["content"],
        "prompt_tokens": payload["usage"]["prompt_tokens"],
    }


def error_of(response: httpx.Response) -> str:
    """The message of an error response (vLLM's ``{"error": {"message": ...}}``)."""
    try:
        payload = response.json()
    except ValueError:
        return response.text
    error = payload.get("error", payload)
    return error.get("message", str(error)) if isinstance(error, dict) else str(error)


def stream_first_chunk_then_close(url: str, body: dict) -> str:
    """Start a streamed chat request, read its first content chunk, and drop the connection."""
    with httpx.Client(timeout=120) as client:
        with client.stream(
            "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}
        ) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                        return chunk["choices"][0]["delta"]["content"]
    raise AssertionError("the stream ended before its first content chunk")
