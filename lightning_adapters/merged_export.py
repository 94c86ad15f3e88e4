r"""Merged export: an adapter folded into its base and saved as a plain Hugging Face model folder.

    lightning-adapters export --adapter runs/adapter --merged out/
    AutoModelForSequenceClassification.from_pretrained("out/")      # transformers alone: no import of this package

The weights: LoRA adds ``s B A`` to the weight it wraps (``W + s B A``); IA3 scales the rows of a key/value
projection's weight and bias (its output) or the columns of a feed-forward output projection's weight (its input) —
both exact, done by `merge_adapters`' layer code, in fp32, on a copy of the backbone; the adapter layers are then
taken out, so the folder holds the base architecture alone (full fine-tuning has nothing to fold). Bottleneck,
prefix and prompt tuning add computation no base weight can hold: refused.

The head becomes the transformers head that computes exactly what ours does, or the export is refused:

- `GenerationHead` → the backbone's own ``*ForCausalLM`` / ``*ForSeq2SeqLM`` (our head adds no weights), with our
  decoding settings as its ``generation_config.json``;
- `TokenClassificationHead` → ``*ForTokenClassification`` (dropout + Linear per token, as ours);
- `QuestionAnsweringHead` → ``*ForQuestionAnswering`` (one Linear to start/end logits, as ours);
- `ClassificationHead` with ``pooling: pooler`` → ``BertForSequenceClassification`` & co. (pooler, dropout, Linear);
  with ``last`` on a decoder → ``LlamaForSequenceClassification`` & co. (last non-pad token, a Linear without bias:
  ours must have a zero bias); ``mean``, ``first`` and encoder ``last`` pooling have no transformers class.

Encoder-decoder models under a non-generation head are refused: our head reads the encoder alone, theirs the decoder.
As a last guard, the folder is loaded back with its Auto class and run on a probe batch beside our unmerged model
(fp32); a difference beyond float rounding means nothing is written (`replace_folder`: all or nothing).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from lightning_adapters import backbone as hf
from lightning_adapters.adapter_folder import read_adapter_config
from lightning_adapters.atomic import check_replaceable, replace_folder
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads import ClassificationHead, GenerationHead, QuestionAnsweringHead, TokenClassificationHead
from lightning_adapters.model_card import CARD_NAME
from lightning_adapters.module import AdapterModule, load_adapter
from lightning_adapters.registry import build_from_config
from lightning_adapters.strategies import IA3, FullFineTuning, IA3Layer, Lora, LoraLayer, Strategy
from lightning_adapters.strategies.base import AdapterLayer, adapter_layers, innermost, replace_module

MERGEABLE = (Lora, IA3, FullFineTuning)  # exact classes: a subclass may hold weights no merge folds in
# Everything an export writes (tokenizers write one or more of these): an existing OUT may hold only these.
EXPORT_FILES = {"config.json", "generation_config.json", "model.safetensors", CARD_NAME, "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json",
                "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
                "chat_template.json"}
HEAD_LAYERS = ("classifier", "score", "qa_outputs")  # what transformers' task classes call their final Linear
REFUSE = "export ONNX or the adapter folder instead"


@dataclass
class Plan:
    """How one module becomes a transformers model: the Auto class, our head's Linear (None: the head adds no
    weights) and the config fields the task class reads."""

    auto_class: type
    linear: nn.Linear | None = None
    config: dict[str, Any] = field(default_factory=dict)
    uses_pooler: bool = False


def export_merged(source: AdapterModule | str | os.PathLike, out: str | os.PathLike, backbone: str | None = None,
                  allowed_classes: Iterable[type] = ()) -> Path:
    """Write ``source`` (a module, or an adapter folder) merged into its base as a Hugging Face folder at ``out``.

    Args:
        source: a trained `AdapterModule` with one adapter, or a folder written by `save_adapter`.
        out: the folder, created if needed; an existing one may hold only what a merged export writes.
        backbone: with a folder: another copy of its base model (default: the recorded one).
        allowed_classes: with a folder: your own strategy or head classes it may name (as `load_adapter`).
    """
    check_out(out)  # before any model loads
    if isinstance(source, AdapterModule):
        module = source
    else:
        config = read_adapter_config(source)
        check_strategy(build_from_config(config["strategy"], Strategy, "strategy", list(allowed_classes)))
        module = load_adapter(source, backbone, "float32", allowed_classes)
    check_strategy(module.strategy)
    if module.extra_adapters:
        raise UserInputError(f"the module holds {len(module.extra_adapters) + 1} adapters; a merged export folds one "
                             "— save each with save_adapter() and export its folder")
    head = module.task_head
    tokenizer = head.tokenizer if isinstance(head, GenerationHead) else hf.load_tokenizer(module.backbone_name)
    plan = plan_for(head, module.backbone.config, tokenizer)
    work = plain_fp32_copy(module.backbone)
    ours = copy.deepcopy(head).float().cpu().eval()
    probe = probe_batch(tokenizer, work.config, isinstance(head, GenerationHead) and ours.encoder_decoder)
    with torch.no_grad():
        expected = as_tensor(ours(work, probe))
    merge_copy(work)
    model = task_model(work, plan, head)
    text = card(module, plan)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, max_shard_size="1000GB")  # one weights file: the names EXPORT_FILES lists
        tokenizer.save_pretrained(tmp)
        (tmp / CARD_NAME).write_text(text)
        unknown = sorted(p.name for p in tmp.iterdir() if p.name not in EXPORT_FILES)
        if unknown:
            raise RuntimeError(f"a merged export wrote {unknown}, which EXPORT_FILES does not list")
        check_reproduces(plan.auto_class.from_pretrained(tmp, dtype=torch.float32).eval(), probe, expected)

    return replace_folder(out, write, EXPORT_FILES)


def check_out(out: str | os.PathLike) -> None:
    """Refuse an ``out`` that holds anything a merged export does not write: nothing of the user's is replaced."""
    path = Path(out)
    others = sorted(p.name for p in path.iterdir() if p.name not in EXPORT_FILES) if path.is_dir() else []
    if others:
        raise UserInputError(f"'{out}' holds files a merged export does not write (e.g. '{others[0]}') — export into "
                             "a new or empty folder, or into an earlier merged export to replace it")
    check_replaceable(out, EXPORT_FILES)  # a file, or a parent nothing can be created in


def check_strategy(strategy: Strategy) -> None:
    if type(strategy) not in MERGEABLE:
        raise UserInputError(f"{type(strategy).__name__} does not merge into the base — {REFUSE} (merged exports "
                             f"take {', '.join(cls.__name__ for cls in MERGEABLE)})")


def plan_for(head: nn.Module, config: Any, tokenizer: Any) -> Plan:
    """The transformers class that computes exactly what ``head`` does on ``config``'s backbone, or a refusal."""
    name = type(head).__name__
    if type(head) is GenerationHead:
        return Plan(AutoModelForSeq2SeqLM if head.encoder_decoder else AutoModelForCausalLM)
    if getattr(config, "is_encoder_decoder", False):
        raise UserInputError(f"{name} reads only the encoder of {config.model_type}; its transformers classes run the "
                             f"decoder too — {REFUSE}")
    labels = {"id2label": dict(enumerate(getattr(head, "label_names", []))),
              "label2id": {label: i for i, label in enumerate(getattr(head, "label_names", []))}}
    if type(head) is TokenClassificationHead:
        return Plan(AutoModelForTokenClassification, head.classifier, labels)
    if type(head) is QuestionAnsweringHead:
        return Plan(AutoModelForQuestionAnswering, head.qa_outputs)
    if type(head) is ClassificationHead:
        return classification_plan(head, config, tokenizer, labels)
    raise UserInputError(f"{name} has no transformers head class known to compute what it does — {REFUSE}")


def classification_plan(head: ClassificationHead, config: Any, tokenizer: Any, labels: dict) -> Plan:
    pooling, decoder = head._pooling, hf.is_decoder_only(config)
    if pooling == "pooler":
        return Plan(AutoModelForSequenceClassification, head.classifier, labels, uses_pooler=True)
    if pooling == "last" and decoder:
        if head.classifier.bias is not None and bool(head.classifier.bias.any()):
            raise UserInputError(f"{config.model_type}'s *ForSequenceClassification has a score layer without bias, "
                                 f"this head's classifier has a trained bias — {REFUSE}")
        return Plan(AutoModelForSequenceClassification, head.classifier,
                    {**labels, "pad_token_id": tokenizer.pad_token_id})
    why = {"mean": "no transformers class averages the tokens",
           "first": "BertForSequenceClassification & co. classify the pooler's dense+tanh of the first token, not "
                    "the raw state",
           "last": "encoder classes classify the first token, not the last"}[pooling]
    fix = "pooling: last" if decoder else "pooling: pooler (BERT, ALBERT)"
    raise UserInputError(f"ClassificationHead(pooling={pooling}) has no transformers equivalent on "
                         f"{config.model_type}: {why} — train with {fix} to export merged, or {REFUSE}")


def merge_copy(model: nn.Module) -> None:
    """Fold every adapter layer of ``model`` (a copy) into its base weight, then take the layers out."""
    layers = list(adapter_layers(model))
    shared = tied_names(model)
    for name, layer in layers:
        other = next((n for n in shared.get(id(innermost(layer).weight), []) if not n.startswith(f"{name}.")), None)
        if other is not None and isinstance(layer, (LoraLayer, IA3Layer)):
            raise UserInputError(f"'{name}' shares its weight with '{other}' (tied embeddings): merging would change "
                                 f"both — leave it out of target_modules, or {REFUSE}")
        if not layer.merged:
            layer.merge()
    outer = [name for name, _ in layers if not any(name.startswith(f"{other}.") for other, _ in layers)]
    for name in outer:
        replace_module(model, name, innermost(model.get_submodule(name)))
    left = [name for name, module in model.named_modules() if isinstance(module, AdapterLayer)]
    if left:
        raise RuntimeError(f"adapter layers remain after merging: {left[:3]}")


def tied_names(model: nn.Module) -> dict[int, list[str]]:
    """Parameters reachable under more than one name (tied embeddings): id -> its names."""
    seen: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        seen.setdefault(id(param), []).append(name)
    return {key: names for key, names in seen.items() if len(names) > 1}


def plain_fp32_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` that saves as a plain transformers model.

    A base read from a GGUF file (SmolLM2) holds dequantized weights, but transformers still flags it as quantized:
    it refuses ``.float()`` and would write the GGUF quantization config into config.json, so that the export could
    not load without the GGUF file. The flag goes; the weights are plain already. A base whose weights really are
    quantized (bitsandbytes, ...) has no full-precision weights to fold an adapter into: refused.
    """
    quantization = getattr(model.config, "quantization_config", None)
    method = getattr(quantization, "quant_method", None)
    method = getattr(method, "value", method)
    if quantization is not None and method != "gguf":
        raise UserInputError(f"the base model is quantized ({method}), so there are no full-precision weights to fold "
                             "the adapter into — load the base unquantized to export it merged")
    copied = copy.deepcopy(model)
    if quantization is not None:
        copied.hf_quantizer, copied.is_quantized = None, False
        del copied.config.quantization_config
    for tensor in [*copied.parameters(), *copied.buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.float()
    return copied.cpu().eval()


def task_model(work: nn.Module, plan: Plan, head: nn.Module) -> nn.Module:
    """The transformers model to save: the merged backbone itself (generation), or a task class holding it and our
    head's Linear — every one of its weights accounted for."""
    if plan.linear is None:
        if isinstance(head, GenerationHead):
            work.generation_config = head.generation_config(work)  # our decoding settings become its defaults
        return work
    config = copy.deepcopy(work.config)
    for key, value in plan.config.items():
        setattr(config, key, value)
    config.num_labels = plan.linear.out_features
    config.architectures = None
    model = plan.auto_class.from_config(config).float().eval()
    base = model.base_model
    missing, unexpected = base.load_state_dict(work.state_dict(), strict=False)
    unused = [key for key in unexpected if not (key.startswith("pooler.") and not plan.uses_pooler)]
    target = next((getattr(model, n) for n in HEAD_LAYERS if isinstance(getattr(model, n, None), nn.Linear)), None)
    head_params = {id(p) for p in target.parameters()} if target is not None else set()
    stray = [n for n, p in model.named_parameters() if id(p) not in head_params | {id(q) for q in base.parameters()}]
    if missing or unused or target is None or stray:
        detail = (missing or unused or stray or ["no final Linear"])[0]
        raise UserInputError(f"{type(model).__name__} is not laid out as this backbone plus one Linear ('{detail}') "
                             f"— {REFUSE}")
    with torch.no_grad():
        target.weight.copy_(plan.linear.weight.float())
        if target.bias is not None:
            target.bias.copy_(plan.linear.bias.float() if plan.linear.bias is not None else 0.0)
    return model


def probe_batch(tokenizer: Any, config: Any, encoder_decoder: bool) -> dict[str, torch.Tensor]:
    """Two rows of ordinary tokens, the second right-padded with the pad token: where pooling and masks matter."""
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(min(len(tokenizer), config.vocab_size)) if i not in special])
    generator = torch.Generator().manual_seed(0)
    ids = ordinary[torch.randint(len(ordinary), (2, 8), generator=generator)]
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = tokenizer.pad_token_id, 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if encoder_decoder:
        batch["labels"] = ids[:, :4].clone()
    return batch


def as_tensor(outputs: Any) -> torch.Tensor:
    """One tensor of what a model computes: ours return logits or (start, end); transformers' an output object."""
    if hasattr(outputs, "start_logits"):
        outputs = (outputs.start_logits, outputs.end_logits)
    elif hasattr(outputs, "logits"):
        outputs = outputs.logits
    return torch.stack(outputs, -1) if isinstance(outputs, tuple) else outputs


def check_reproduces(model: nn.Module, probe: dict[str, torch.Tensor], expected: torch.Tensor) -> None:
    """Refuse (nothing is written) when the reloaded folder computes other outputs than our unmerged model."""
    with torch.no_grad():
        got = as_tensor(model(**probe))
    scale = max(1.0, float(expected.abs().max()))
    diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
    if not diff <= 1e-3 * scale:
        raise UserInputError(f"the merged {type(model).__name__} computes other outputs than this adapter (max "
                             f"difference {diff:.3g}) — nothing was written; {REFUSE}")


def card(module: AdapterModule, plan: Plan) -> str:
    strategy = type(module.strategy).__name__
    return (f"# Merged model\n\nBase `{module.backbone_name}` with its {strategy} adapter and "
            f"{type(module.task_head).__name__} folded in by lightning-adapters (fp32). A plain transformers folder:"
            f"\n\n```python\nfrom transformers import {plan.auto_class.__name__}\n"
            f"model = {plan.auto_class.__name__}.from_pretrained(\"<this folder>\")\n```\n")
