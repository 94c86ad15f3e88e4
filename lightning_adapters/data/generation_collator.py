"""The generation batch contract (`lightning_adapters.heads.generation`), padded: what the summarization and dialogue
codecs produce and `GenerationHead` reads."""

from __future__ import annotations

from typing import Any

import torch

# Batch keys and what they hold; the generation codecs declare them, `GenerationHead` reads them.
GENERATION_BATCH_KEYS = {"input_ids": "token ids", "attention_mask": "token mask", "labels": "target token ids",
                         "prompt_input_ids": "prompt token ids", "prompt_attention_mask": "prompt token mask",
                         "references": "reference texts", "sources": "source texts", "meta": "row meta"}


class GenerationCollator:
    """Pads encoded examples into the generation batch (decoder-only prompts on the left, the rest on the right).

    Items hold ``input_ids`` and ``labels`` (lists of ids; decoder-only also ``prompt_ids``), plus the texts
    ``source``, ``references`` and a ``meta`` dict; ``evaluation`` adds the prompt and text fields to the batch.
    """

    def __init__(self, pad_token_id: int, decoder_only: bool, evaluation: bool) -> None:
        self.pad_token_id, self.decoder_only, self.evaluation = pad_token_id, decoder_only, evaluation

    @staticmethod
    def pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
        width = max(len(row) for row in rows)
        return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [item["input_ids"] for item in items]
        batch = {"input_ids": self.pad(ids, self.pad_token_id),
                 "attention_mask": self.pad([[1] * len(i) for i in ids], 0),
                 "labels": self.pad([item["labels"] for item in items], -100)}
        if not self.evaluation:
            return batch
        if self.decoder_only:
            prompts = [item["prompt_ids"] for item in items]
            batch["prompt_input_ids"] = self.pad(prompts, self.pad_token_id, left=True)
            batch["prompt_attention_mask"] = self.pad([[1] * len(p) for p in prompts], 0, left=True)
        references = [item["references"] for item in items]
        batch["references"] = None if any(r is None for r in references) else references
        batch["sources"] = [item["source"] for item in items]
        batch["meta"] = [item.get("meta") or {} for item in items]
        return batch
