"""The README's vLLM quick start, in the vLLM virtualenv (``make test-vllm``).

Its ``vllm serve`` command is parsed and validated by vLLM's own ``serve`` argument parser, and
the override of its ``LLM(...)`` call is served on the bundled demo checkpoint (the quick start
names a Hub checkpoint, which this offline test cannot download): each prompt is shorter by
exactly the tokens the budget drops, and the greedy answers equal ``visprune.apply`` +
``generate`` in transformers.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import serving
import visprune
from serving import questions
from visprune.demo import task
from visprune.integrations.vllm.settings import parse_settings

README = (Path(__file__).parents[2] / "README.md").read_text()
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
BLOCKS = [(match[1], match[2]) for match in FENCE.finditer(README)]


def test_the_serve_command_parses_as_vllm_serve_parses_it():
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    script = next(code for language, code in BLOCKS if "vllm serve" in code)
    line = next(line for line in script.replace("\\\n", " ").splitlines() if "vllm serve" in line)
    parser = FlexibleArgumentParser(prog="vllm")
    serve = ServeSubcommand()
    serve.subparser_init(parser.add_subparsers(dest="subparser"))
    words = shlex.split(line.split(" #")[0])
    args = parser.parse_args(words[1:])
    serve.validate(args)
    args.model = args.model_tag
    overrides = AsyncEngineArgs.from_cli_args(args).hf_overrides
    assert overrides == json.loads(words[words.index("--hf-overrides") + 1])
    assert parse_settings(overrides["visprune"]).method.name == overrides["visprune"]["method"]


def test_the_llm_override_serves_the_demo_model_pruned(monkeypatch):
    code = next(code for language, code in BLOCKS if language == "python" and "from vllm" in code)
    (call,) = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
    settings = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "hf_overrides"))
    settings = settings["visprune"]
    # The transformers reference below runs the method at its defaults and the override's budget.
    name, budget = settings["method"], settings["budget"]
    parameters = {k: v for k, v in settings.items() if k != "method"}
    assert visprune.get_method(name, **parameters) == visprune.get_method(name, budget=budget)
    monkeypatch.setattr(serving, "BUDGET", budget)

    samples = questions(8)
    served = serving.serve(samples, name)
    expected = serving.reference(samples, name)
    kept = parse_settings(settings).num_keep(task.NUM_CELLS)
    assert all(e["kept"] == kept < task.NUM_CELLS for e in expected)
    assert [s["prompt_tokens"] for s in served] == [
        e["prompt_tokens"] - (task.NUM_CELLS - kept) for e in expected
    ]
    assert [s["answer"] for s in served] == [e["answer"] for e in expected]
