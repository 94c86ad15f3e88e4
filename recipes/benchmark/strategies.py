"""Every strategy the benchmarks compare, ours and PEFT's same method, with ONE shared configuration per method.

Used by `speed.py` (step time / memory of every pair) and `accuracy.py` (our strategies on real data), so that a
method's configuration is written once. Each PEFT counterpart gets exactly our configuration (checked by the smoke
test: equal trainable-parameter counts):

- LoRA: r 8, alpha 16, dropout 0, query and value projections (the LoRA paper's and PEFT's BERT defaults);
- IA3: key and value outputs scaled, the FFN down-projection (``layer.N.output.dense``) input scaled — our default
  for BERT; PEFT's own BERT default also scales the input of ``attention.output.dense``, so PEFT gets ours spelt out;
- prompt tuning: 20 virtual tokens, random initialisation;
- prefix tuning: 20 virtual tokens per layer, reparameterised by an MLP of width 512 (Li & Liang; PEFT's
  ``prefix_projection=True, encoder_hidden_size=512``).

PEFT's prompt-tuning model (task type ``FEATURE_EXTRACTION``) returns the virtual-token positions too;
`PromptLearning` drops them, as our `PromptTuning` does, so the same head (mask-aware mean pooling) sees the same
positions.
"""

from __future__ import annotations

from typing import Any

from torch import nn

BOTTLENECK = {f"bottleneck {v} (ours)": v for v in ("houlsby", "pfeiffer", "parallel")}
LORA, PEFT_LORA = "LoRA (ours)", "PEFT LoRA"
IA3, PEFT_IA3 = "IA3 (ours)", "PEFT IA3"
PROMPT, PEFT_PROMPT = "prompt tuning (ours)", "PEFT prompt tuning"
PREFIX, PEFT_PREFIX = "prefix tuning (ours)", "PEFT prefix tuning"
OURS = [*BOTTLENECK, LORA, IA3, PROMPT, PREFIX]
PEFT = {LORA: PEFT_LORA, IA3: PEFT_IA3, PROMPT: PEFT_PROMPT, PREFIX: PEFT_PREFIX}  # ours -> PEFT's same method

LORA_CONFIG = dict(r=8, alpha=16, dropout=0.0, target_modules=["query", "value"])
IA3_KEY_VALUE, IA3_FEEDFORWARD = r".*\.attention\.self\.(key|value)", r".*\.layer\.\d+\.output\.dense"
NUM_VIRTUAL_TOKENS = 20
PREFIX_HIDDEN = 512


def ours(method: str, **overrides: Any):
    """Our `Strategy` for ``method`` with the shared configuration (``overrides`` replace entries, e.g. ``r``)."""
    from lightning_adapters.strategies import IA3 as OurIA3
    from lightning_adapters.strategies import Bottleneck, Lora, PrefixTuning, PromptTuning

    if method in BOTTLENECK:
        return Bottleneck(variant=BOTTLENECK[method], **overrides)
    if method == LORA:
        return Lora(**(LORA_CONFIG | overrides))
    if method == IA3:
        return OurIA3(**overrides)  # the BERT default: key/value outputs, FFN down-projection input
    if method == PROMPT:
        return PromptTuning(**({"num_virtual_tokens": NUM_VIRTUAL_TOKENS} | overrides))
    if method == PREFIX:
        return PrefixTuning(**({"num_virtual_tokens": NUM_VIRTUAL_TOKENS, "reparameterize": True,
                                "hidden": PREFIX_HIDDEN} | overrides))
    raise ValueError(f"unknown strategy {method!r}; choose from {OURS}")


def peft_config(method: str):
    """PEFT's config of the same method, with our configuration."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    if method == PEFT_LORA:
        return LoraConfig(r=LORA_CONFIG["r"], lora_alpha=LORA_CONFIG["alpha"], lora_dropout=LORA_CONFIG["dropout"],
                          target_modules=LORA_CONFIG["target_modules"])
    if method == PEFT_IA3:
        return IA3Config(target_modules=f"{IA3_KEY_VALUE}|{IA3_FEEDFORWARD}", feedforward_modules=IA3_FEEDFORWARD)
    if method == PEFT_PROMPT:
        return PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=NUM_VIRTUAL_TOKENS)
    if method == PEFT_PREFIX:
        return PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=NUM_VIRTUAL_TOKENS,
                                  prefix_projection=True, encoder_hidden_size=PREFIX_HIDDEN)
    raise ValueError(f"unknown PEFT method {method!r}; choose from {list(PEFT.values())}")


class PromptLearning(nn.Module):
    """A PEFT prompt-learning model called like a plain encoder: ``token_type_ids`` dropped (PEFT ignores them with a
    warning; MiniLM's are all zero, its default anyway) and the first ``trim`` positions of ``last_hidden_state``
    (prompt tuning's virtual tokens) cut off, as our `PromptTuning` does."""

    def __init__(self, peft_model: nn.Module, trim: int) -> None:
        super().__init__()
        self.peft_model, self.trim = peft_model, trim
        self.config = peft_model.config

    def forward(self, **inputs: Any):
        inputs.pop("token_type_ids", None)
        output = self.peft_model(**inputs)
        output["last_hidden_state"] = output["last_hidden_state"][:, self.trim:]
        return output


def peft_backbone(method: str, base: nn.Module) -> nn.Module:
    """``base`` (a frozen `AutoModel`) wrapped by PEFT's ``method`` with our configuration."""
    from peft import get_peft_model

    model = get_peft_model(base, peft_config(method))
    if method in (PEFT_PROMPT, PEFT_PREFIX):
        return PromptLearning(model, trim=NUM_VIRTUAL_TOKENS if method == PEFT_PROMPT else 0)
    return model


def describe() -> str:
    """The shared configurations, one line, for the benchmarks' setup strings."""
    lora = LORA_CONFIG
    return (f"LoRA r {lora['r']}, alpha {lora['alpha']}, dropout {lora['dropout']}, {'/'.join(lora['target_modules'])}"
            f"; IA3 key/value outputs + FFN down-projection input; prompt tuning {NUM_VIRTUAL_TOKENS} virtual tokens "
            f"(random init); prefix tuning {NUM_VIRTUAL_TOKENS} virtual tokens, MLP reparameterisation width "
            f"{PREFIX_HIDDEN}")
