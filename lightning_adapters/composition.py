"""Composition blocks for `AdapterModule.set_active_adapters`, with AdapterHub's names.

- ``Stack("domain", "task")``: ``task`` on top of ``domain`` (MAD-X style); outputs come from the last one's head.
  Where both adapt one place they apply in the order they were added, so a stack lists them in that order.
- ``Parallel("sentiment", "topics")``: every listed task's output on the same input, ``{name: outputs}``; for
  inference (train several tasks at once with mixed-task batches instead).
- Fusion is an adapter of its own: `lightning_adapters.strategies.AdapterFusion`.
"""

from __future__ import annotations

from lightning_adapters.errors import UserInputError


class _Block(tuple):
    def __new__(cls, *adapters: str) -> _Block:
        if len(adapters) < 2 or len(set(adapters)) != len(adapters) or not all(isinstance(a, str) for a in adapters):
            raise UserInputError(f"{cls.__name__} needs two or more different adapter names, got {adapters!r} — "
                                 f"e.g. {cls.__name__}('sentiment', 'topics')")
        return super().__new__(cls, adapters)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self))})"


class Stack(_Block):
    """Adapters applied one on top of the other (the last one's head predicts)."""


class Parallel(_Block):
    """Adapters run side by side on the same input, each with its own head."""
