"""The handle :func:`visprune.apply` returns, and the stack of handles on one model."""

from __future__ import annotations

from typing import Any

from .methods import Method

#: The model attribute holding its stack of handles, the running one last.
HANDLE_ATTRIBUTE = "_visprune_handles"


class Handle:
    """A method applied to one model instance; undo with :meth:`remove` or a ``with`` block.

    Handles on one model form a stack: applying again suspends the handle below (its method
    stops running) and removing the top handle resumes it, so nested ``with visprune.apply(...)``
    blocks restore the outer method on exit.

    Attributes
    ----------
    model : the patched model
    method : Method
        The method that runs (a dataclass; ``method.params()`` gives its settings). It is
        validated again at every call, so a field changed after ``apply`` to a bad value raises.
    """

    def __init__(self, model: Any, method: Method, build: Any) -> None:
        self.model = model
        self.method = method
        self._build = build
        self._adapter: Any = None
        self._removed = False
        self._final_selections: list = []

    @property
    def active(self) -> bool:
        """Whether the method runs on the model now (False when removed or suspended)."""
        return self._adapter is not None

    @property
    def positions(self) -> str:
        """The position mode in use: "compact" (renumbered) or "original"."""
        return self._adapter.positions if self._adapter is not None else ""

    @property
    def layer_pruner(self) -> Any:
        """What measures a layer-stage method's scores inside the language model (its
        ``signals``) while the method runs; None for the other stages, or when not running."""
        return None if self._adapter is None else self._adapter.layer_pruner

    @property
    def selections(self) -> list:
        """One :class:`~visprune.adapters.Selection` per image (per video frame) of the
        last call, in batch order: ``sample, image, frame, kept, n, grid, positions``. With
        several threads calling the model, each thread reads its own last call. They stay
        readable after :meth:`remove`."""
        if self._adapter is None:
            return list(self._final_selections)
        return list(self._adapter.selections)

    def _resume(self) -> None:
        self._adapter = self._build(self.method)

    def _suspend(self) -> None:
        if self._adapter is not None:
            self._final_selections = list(self._adapter.selections)
            self._adapter.remove()
            self._adapter = None

    def remove(self) -> None:
        """Stop this method. The model behaves exactly as before it was applied (or as under
        the handle this one was applied on top of). Calling it again does nothing."""
        if self._removed:
            return
        self._removed = True
        stack = stack_of(self.model)
        was_top = bool(stack) and stack[-1] is self
        self._suspend()
        if self in stack:
            stack.remove(self)
        if was_top and stack:
            stack[-1]._resume()
        if not stack:
            self.model.__dict__.pop(HANDLE_ATTRIBUTE, None)

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else ("removed" if self._removed else "suspended")
        return f"Handle({self.method!r}, {state})"


def stack_of(model: Any) -> list[Handle]:
    """The handles applied to ``model``, bottom first (created empty on first use)."""
    return model.__dict__.setdefault(HANDLE_ATTRIBUTE, [])


def running_handle(model: Any) -> Handle | None:
    """The handle whose method runs on ``model`` now, or ``None``."""
    stack = model.__dict__.get(HANDLE_ATTRIBUTE) or []
    return stack[-1] if stack and stack[-1].active else None


def push(handle: Handle) -> Handle:
    """Run ``handle``'s method on its model on top of the handles already there (suspended
    until it is removed); if it cannot attach, the model stays as it was."""
    stack = stack_of(handle.model)
    if stack:
        stack[-1]._suspend()
    try:
        handle._resume()
    except Exception:
        if stack:  # the model stays as it was: the handle below runs again
            stack[-1]._resume()
        raise
    stack.append(handle)
    return handle
