"""Bad requests never take a pruned vLLM server down.

One OpenAI-compatible vLLM server on localhost serves a tiny random-weight Qwen2.5-VL with
``--hf-overrides '{"visprune": {"method": "cdpruner", "budget": 20}}'`` (a text-conditioned
method: the prompt travels with every image). Good requests (images of 36 tokens, pruned to 20)
are answered once on their own; then the same requests run in a loop from several clients while
what clients really send wrongly arrives at the same time:

- served, with the answer of transformers + ``visprune.apply`` (same method and budget, the
  family's positions) on the same prompt and image: a 1x1 image (upscaled to 16 tokens: a budget
  above an image's tokens keeps all of them, as in ``visprune.apply``), a 10000x10000 image
  (resized to 36 tokens), two images but one placeholder in the text (vLLM places the missing
  one in front), a placeholder in the text but no image (served as text), a prompt that is over
  the context length unpruned but within it pruned;
- served, the stray token left as text (vLLM's own rule): a bare ``<|image_pad|>`` token in the
  text next to an image;
- refused with a 4xx that says what is wrong: one image but two placeholders, three images (the
  server allows two), bad base64, truncated PNG bytes, an image URL on localhost that answers
  404, a 10000x20 image (aspect ratio above the processor's 200), a prompt over the context
  length, and an image that the request's ``mm_processor_kwargs`` (the server trusts them)
  enlarge to 2500 tokens: pruned, its 20 placeholders would pass vLLM's checks and the whole
  image would reach the vision tower, so the plugin refuses it;
- a streamed request dropped after its first chunk: the engine aborts it.

Every good request answers exactly as it did alone, and afterwards the server is alive, has
nothing left running and answers a good request. Without the override vLLM answers every one of
these requests with the same status and message (checked by hand against the same server
unpruned), but for the enlarged image, which it refuses as longer than the context (400); none
is a 500, so no case needs an exception for vLLM's own behaviour.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bad_requests import (
    PLACEHOLDER,
    NotFoundServer,
    Server,
    chat_body,
    data_url,
    error_of,
    image_part,
    png_bytes,
    post_chat,
    stream_first_chunk_then_close,
    words,
    write_model,
)
from qwen_serving import reference_qwen

SETTINGS = {"method": "cdpruner", "budget": 20}
MAX_MODEL_LEN = 256
MAX_IMAGES = 2
SERVER_OPTIONS = [
    "--max-model-len", str(MAX_MODEL_LEN),
    "--limit-mm-per-prompt", json.dumps({"image": MAX_IMAGES, "video": 0}),
    "--hf-overrides", json.dumps({"visprune": SETTINGS}),
    # Clients may change the image processor's settings per request (resizing their images).
    "--trust-request-mm-kwargs",
]  # fmt: skip
#: Image sides of the good requests: each resizes to 36 merged tokens (of which 20 are kept).
GOOD_SIZES = [(168, 168), (196, 168), (168, 196), (180, 170)]
GOOD_TOKENS = 12  # generated per good request
ANSWER_TOKENS = 4  # generated per served bad request
#: Clean answers are repeated under load this many times per client at most (the load stops
#: once every bad request has been answered).
MAX_ROUNDS = 20


def text(content: str) -> dict:
    return {"type": "text", "text": content}


def good_content(number: int) -> list[dict]:
    width, height = GOOD_SIZES[number]
    return [image_part(data_url(png_bytes(width, height, seed=number))), text(words(number, 6))]


def pil(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def served_cases() -> dict[str, dict]:
    """Bad requests that are served: their chat ``content`` and the ``prompt`` and ``image``(s)
    transformers gets (vLLM's prompt: missing placeholders in front, then the text)."""
    small, huge = png_bytes(1, 1, seed=7), png_bytes(10_000, 10_000, noise=False)
    first, second = png_bytes(168, 168, seed=8), png_bytes(140, 196, seed=9)
    long_text = words(10, 180)  # 180 + 38 tokens unpruned, 180 + 22 pruned, of 256
    return {
        "1x1 image": {
            "content": [image_part(data_url(small)), text("w5 w6 w7")],
            "prompt": f"{PLACEHOLDER} w5 w6 w7",
            "image": pil(small),
        },
        "10000x10000 image": {
            "content": [image_part(data_url(huge)), text("w8 w9")],
            "prompt": f"{PLACEHOLDER} w8 w9",
            "image": pil(huge),
        },
        "more images than placeholders": {
            "content": [
                image_part(data_url(first)),
                image_part(data_url(second)),
                text(f"w10 {PLACEHOLDER} w11 w12"),
            ],
            "prompt": f"{PLACEHOLDER} w10 {PLACEHOLDER} w11 w12",
            "image": [pil(first), pil(second)],
        },
        "over the context length unpruned, within it pruned": {
            "content": [image_part(data_url(first)), text(long_text)],
            "prompt": f"{PLACEHOLDER} {long_text}",
            "image": pil(first),
        },
    }


def as_text_cases() -> dict[str, tuple[list[dict], int]]:
    """Placeholder tokens no image fills, which vLLM leaves as text tokens (unpruned too):
    ``(content, prompt tokens)``."""
    image = image_part(data_url(png_bytes(168, 168, seed=14)))
    return {
        # vision start and end + 20 kept tokens, then 3 words and the stray token
        "bare <|image_pad|> next to an image": ([image, text("w5 <|image_pad|> w6")], 2 + 20 + 3),
        # 2 words and the placeholder's three tokens
        "placeholder without image": ([text(f"w13 {PLACEHOLDER} w14")], 2 + 3),
    }


def refused_cases(missing_url: str) -> dict[str, tuple[list[dict], int, str, dict]]:
    """Bad requests that get a client error: ``(content, status, part of the message, more of
    the request's body)``."""
    image = data_url(png_bytes(168, 168, seed=11))
    large = data_url(png_bytes(1400, 1400, noise=False))
    cases = {
        "fewer images than placeholders": (
            [image_part(image), text(f"{PLACEHOLDER} w5 {PLACEHOLDER} w6")],
            400,
            "more '<|vision_start|><|image_pad|><|vision_end|>' placeholders",
        ),
        "more images than allowed": (
            [image_part(image)] * (MAX_IMAGES + 1) + [text("w5")],
            400,
            f"At most {MAX_IMAGES} image(s)",
        ),
        "bad base64": (
            [image_part("data:image/png;base64,@@not-base64@@"), text("w5")],
            400,
            "base64",
        ),
        "truncated PNG": (
            [image_part(data_url(png_bytes(168, 168, seed=12)[:300])), text("w5")],
            400,
            "Failed to load image",
        ),
        "image URL answering 404": ([image_part(missing_url), text("w5")], 422, "HTTP 404"),
        "10000x20 image": (
            [image_part(data_url(png_bytes(10_000, 20, noise=False))), text("w5")],
            400,
            "Failed to apply Qwen2_5_VLProcessor",
        ),
        "prompt over the context length": (
            [image_part(image), text(words(13, MAX_MODEL_LEN))],
            400,
            "maximum context length",
        ),
    }
    cases = {name: (*case, {}) for name, case in cases.items()}
    # 2500 tokens before pruning: unpruned, the context length refuses it; pruned, only 20
    # placeholders would hold it, and the whole image would reach the vision tower.
    cases["image enlarged by the request's mm_processor_kwargs"] = (
        [image_part(large), text("w5")],
        400,
        "visprune: this image has 2500 tokens before pruning, more than the 36",
        {"mm_processor_kwargs": {"max_pixels": 1400 * 1400}},
    )
    return cases


@contextlib.contextmanager
def logs_on_failure(server: Server):
    try:
        yield
    except BaseException as error:
        raise AssertionError(f"{error}\n--- server log (tail) ---\n{server.logs()}") from error


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The running server and the transformers answers of its served bad requests."""
    directory = tmp_path_factory.mktemp("bad-requests")
    model = directory / "model"
    write_model(model)
    server = Server(model, SERVER_OPTIONS, directory / "server.log")
    try:
        # transformers works while the engine starts.
        cases = served_cases()
        requests = [{"prompt": case["prompt"], "image": case["image"]} for case in cases.values()]
        expected = reference_qwen(model, requests, SETTINGS, ANSWER_TOKENS)
        with logs_on_failure(server):
            server.wait_ready(timeout=300)
        yield server, cases, dict(zip(cases, expected, strict=True))
    finally:
        server.stop()


def metric(server: Server, name: str) -> float:
    """The sum of a Prometheus series of the server over its labels."""
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name}{{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def answer(url: str, content: list[dict], max_tokens: int) -> dict:
    response = post_chat(url, chat_body(content, max_tokens, return_token_ids=True))
    assert response.status_code == 200, (response.status_code, error_of(response))
    payload = response.json()
    return {
        "tokens": payload["choices"][0]["token_ids"],
        "prompt_tokens": payload["usage"]["prompt_tokens"],
    }


def test_bad_requests_get_client_errors_or_answers_and_the_server_keeps_serving(served):
    server, cases, expected = served
    started = time.monotonic()
    with logs_on_failure(server):
        clean = [answer(server.url, good_content(n), GOOD_TOKENS) for n in range(len(GOOD_SIZES))]
        # 6 words + 20 kept of 36 image tokens + vision start and end
        assert {c["prompt_tokens"] for c in clean} == {6 + 20 + 2}
        finished_before = metric(server, "vllm:request_success_total")

        done = threading.Event()
        mismatches: list[str] = []

        def good_client(number: int) -> int:
            rounds = 0
            while rounds < 2 or (not done.is_set() and rounds < MAX_ROUNDS):
                got = answer(server.url, good_content(number), GOOD_TOKENS)
                if got != clean[number]:
                    mismatches.append(f"good request {number}: {got} != {clean[number]}")
                rounds += 1
            return rounds

        def bad(kind: str, name: str, payload):
            try:
                if kind == "served":
                    return answer(server.url, payload["content"], ANSWER_TOKENS)
                if kind == "refused":
                    content, _, _, extra = payload
                    return post_chat(server.url, chat_body(content, ANSWER_TOKENS, **extra))
                if kind == "as text":
                    return answer(server.url, payload[0], ANSWER_TOKENS)
                return stream_first_chunk_then_close(
                    server.url, chat_body(payload, MAX_MODEL_LEN - 40)
                )
            except Exception as error:  # reported with the case's name below
                return error

        with NotFoundServer() as missing_url:
            refused = refused_cases(missing_url)
            jobs = [("served", name, case) for name, case in cases.items()]
            jobs += [("refused", name, case) for name, case in refused.items()]
            as_text = as_text_cases()
            jobs += [("as text", name, case) for name, case in as_text.items()]
            jobs += [("cancel", "stream dropped after its first chunk", good_content(0))]
            with ThreadPoolExecutor(len(GOOD_SIZES) + len(jobs)) as pool:
                clients = [pool.submit(good_client, n) for n in range(len(GOOD_SIZES))]
                outcomes = [(kind, name, pool.submit(bad, kind, name, p)) for kind, name, p in jobs]
                results = {name: (kind, future.result()) for kind, name, future in outcomes}
                done.set()
                rounds = [client.result() for client in clients]

        problems = list(mismatches)
        for name, (kind, result) in results.items():
            if isinstance(result, Exception):
                problems.append(f"{name}: {type(result).__name__}: {result}")
            elif kind == "served":
                want = expected[name]
                kept = want["prompt_tokens"] - (want["visual"] - want["kept"])
                if result != {"tokens": want["answer"], "prompt_tokens": kept}:
                    problems.append(f"{name}: served {result}, transformers {want}, {kept} tokens")
            elif kind == "refused":
                _, status, message, _ = refused[name]
                if result.status_code != status or message not in error_of(result):
                    problems.append(
                        f"{name}: {result.status_code} {error_of(result)!r}, "
                        f"expected {status} with {message!r}"
                    )
            elif kind == "as text":
                if result["prompt_tokens"] != as_text[name][1]:
                    problems.append(f"{name}: {result}, expected {as_text[name][1]} tokens")
            elif not result.strip():
                problems.append(f"{name}: first chunk {result!r}")
        assert not problems, "\n".join(problems)
        assert min(rounds) >= 2

        # Nothing is left running or waiting, and the engine finished the requests that were
        # answered, plus at most the dropped stream: the server aborts it when it notices the
        # closed connection, but a busy machine can let the engine generate all its tokens first.
        deadline = time.monotonic() + 30
        busy = None
        while busy != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            running = metric(server, "vllm:num_requests_running")
            busy = running + metric(server, "vllm:num_requests_waiting")
        assert busy == 0, f"{busy} requests still running or waiting"
        finished = metric(server, "vllm:request_success_total") - finished_before
        answered = sum(rounds) + len(cases) + len(as_text)
        assert finished in (answered, answered + 1), f"{finished} finished, {answered} answered"

        assert answer(server.url, good_content(1), GOOD_TOKENS) == clean[1]
        assert server.alive()
        log = server.logs(tail=10**7)
        assert "Traceback" not in log and "EngineDeadError" not in log
    assert time.monotonic() - started < 120  # a bound on the requests, not a speed claim


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_an_image_enlarged_past_the_servers_largest_is_refused_before_encoding(tmp_path, family):
    """Without an engine: vLLM's Qwen-VL processor with the override refuses an image whose
    request settings make it larger (before pruning) than the largest the server's own settings
    make, and serves that largest one with its kept count of placeholders."""
    from PIL import Image

    from serving import processed
    from tiny_qwen import SPECIALS, write_tiny_qwen
    from visprune.integrations.vllm.settings import parse_settings

    write_tiny_qwen(family, tmp_path)
    prompt = f"w5 {PLACEHOLDER} w6"
    image = Image.new("RGB", (1400, 1400), (200, 90, 30))
    (largest,) = processed(tmp_path, [{"prompt": prompt, "image": image}], {"visprune": SETTINGS})
    kept = largest["prompt_token_ids"].count(SPECIALS["<|image_pad|>"])
    assert kept == parse_settings(SETTINGS).num_keep(36) == 20  # 36 tokens at most, unpruned
    enlarged = {"prompt": prompt, "image": image, "options": {"max_pixels": 1400 * 1400}}
    with pytest.raises(ValueError, match=r"this image has \d+ tokens before pruning, more than"):
        processed(tmp_path, [enlarged], {"visprune": SETTINGS})
    (unpruned,) = processed(tmp_path, [enlarged], {})  # vLLM's own check is the context length
    assert unpruned["prompt_token_ids"].count(SPECIALS["<|image_pad|>"]) > 36
