"""Selection cores compiled with ``torch.compile(fullgraph=True, dynamic=False)``.

A greedy selection on a GPU costs launches and host syncs, not arithmetic: a core that runs as
one graph, with static shapes for a given ``(b, n, k)``, can be fused by Inductor and captured
as a CUDA graph (``mode="reduce-overhead"``). This module compiles a method's ``_select``
(the core that runs after ``Method.select`` has validated the input; validation stays eager)
and caches the result, so each (method, hyperparameters, shapes, device, dtype) compiles once.

A method whose core breaks the graph (a host read in its loop, an object created mid-graph)
raises :class:`SelectionNotCompilable`; it never falls back to eager silently.

Users reach it through ``visprune.select(..., compile=True)`` and
``visprune.apply(model, method, compile=True)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .methods import Context, Method

#: torch.compile modes a user may ask for; ``True`` means "default".
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

#: The compiler backend. Only Inductor fuses and captures; the tests swap in a recording
#: backend to see which graphs are compiled without paying for code generation.
BACKEND: str | Callable = "inductor"

#: Shapes (and hyperparameters) one method may be compiled for. torch's own limit (8) would
#: stop a long-running server that meets many image sizes; past this one a clear error asks to
#: run eagerly instead.
RECOMPILE_LIMIT = 64

_CORES: dict[tuple, Callable] = {}


class SelectionNotCompilable(RuntimeError):
    """A method's selection cannot run as one ``torch.compile(fullgraph=True)`` graph."""


def compile_mode(compile: bool | str) -> str | None:
    """The torch.compile mode that ``compile`` asks for, or ``None`` for eager.

    Parameters
    ----------
    compile : bool or str
        ``False`` (eager), ``True`` (mode ``"default"``) or one of :data:`MODES`.

    Raises
    ------
    ValueError
        For anything else.
    """
    if compile is False or compile is None:
        return None
    if compile is True:
        return "default"
    if isinstance(compile, str) and compile in MODES:
        return compile
    raise ValueError(
        f"compile must be True, False or a torch.compile mode ({', '.join(MODES)}), "
        f"got {compile!r}."
    )


def compiled_core(
    method: Method, mode: str = "default"
) -> Callable[[Tensor, int, Context], Tensor]:
    """``method._select`` compiled as one graph: ``(tokens (b, n, d), k, ctx) -> (b, k)``.

    The compiled function is shared by every instance of the method's class; torch's guards
    on the hyperparameters, ``k`` and the tensors' shapes, devices and dtypes make each
    combination compile once (``dynamic=False``: static shapes, as CUDA graphs need).

    Raises
    ------
    SelectionNotCompilable
        When the core breaks the graph, or met more than :data:`RECOMPILE_LIMIT` shapes.
    """
    key = (type(method), BACKEND, mode)
    core = _CORES.get(key)
    if core is None:
        options: dict[str, Any] = {"mode": mode} if BACKEND == "inductor" else {}
        core = torch.compile(
            type(method)._select, fullgraph=True, dynamic=False, backend=BACKEND, **options
        )
        _CORES[key] = core

    def run(tokens: Tensor, k: int, ctx: Context) -> Tensor:
        import torch._dynamo

        try:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                return core(method, tokens, k, ctx)
        except torch._dynamo.exc.FailOnRecompileLimitHit as error:
            raise SelectionNotCompilable(
                f"{method.name} has been compiled for {RECOMPILE_LIMIT} different shapes or "
                "hyperparameters in this process; each new one compiles again. Run it eagerly "
                "(compile=False) where the shapes keep changing, or raise "
                "visprune.compiled.RECOMPILE_LIMIT."
            ) from error
        except torch._dynamo.exc.TorchDynamoException as error:
            raise SelectionNotCompilable(
                f"{method.name}'s selection cannot run as one torch.compile(fullgraph=True) "
                f"graph: {_first_line(error)}{_where(error)} Run it eagerly (compile=False) "
                "instead."
            ) from error

    return run


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if text.endswith(".") else text + "."


#: A frame of the user stack that torch prints: file, line, function, then the source line.
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)')


def _where(error: BaseException) -> str:
    """`` At file:line in function: `source`.`` for the innermost user frame, if torch named it."""
    frames = _FRAME.findall(str(error))
    if not frames:
        return ""
    path, line, function, source = frames[-1]
    return f" At {Path(path).name}:{line} in {function}: `{source.strip()}`."
