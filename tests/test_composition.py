"""Composition (issue 12, step 4): Stack, Parallel and AdapterFusion, each checked against a reference."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tokenizer, sample_batch
from strategy_table import STRATEGIES
from test_mixed_batches import SENTIMENT, TOPICS, randomize

from lightning_adapters import (
    AdapterFusion,
    AdapterModule,
    Bottleneck,
    ClassificationHead,
    Parallel,
    Stack,
    UserInputError,
    load_adapter,
    save_adapter,
)
from lightning_adapters.strategies import FusionLayer, adapter_named_parameters
from lightning_adapters.strategies.base import adapter_layers
from lightning_adapters.strategies.lora import merge_adapters

PFEIFFER = {"variant": "pfeiffer", "activation": "tanh", "bottleneck_size": 4}


def logits(module: AdapterModule, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return module.eval()(batch)


def module_with(model_dir: str, first: Bottleneck | object, second: object, head=None) -> AdapterModule:
    module = AdapterModule(model_dir, strategy=first, label_names=SENTIMENT)
    module.add_adapter("task", second, head or ClassificationHead(), label_names=TOPICS)
    randomize(module, "default", seed=1)
    randomize(module, "task", seed=2)
    return module


def test_a_stack_of_two_loras_equals_both_merged_into_the_base(model_dirs):
    module = module_with(model_dirs["bert"], STRATEGIES["lora"].build(), STRATEGIES["lora"].build())
    batch = sample_batch(build_tokenizer())
    module.set_active_adapters(Stack("default", "task"))
    stacked = logits(module, batch)
    assert stacked.shape == (3, len(TOPICS))  # the last adapter's head
    merge_adapters(module.backbone)  # reference: both updates folded into the base weights, nothing left unmerged
    torch.testing.assert_close(logits(module, batch), stacked, rtol=0, atol=1e-5)

    with pytest.raises(UserInputError, match=r"apply in the order they were added.*Stack\('default', 'task'\)"):
        module.set_active_adapters(Stack("task", "default"))
    with pytest.raises(UserInputError, match="Stack needs two or more different adapter names"):
        Stack("task")


def test_parallel_gives_each_task_what_it_gives_alone(model_dirs):
    module = module_with(model_dirs["llama"], STRATEGIES["prefix"].build(), STRATEGIES["bottleneck"].build())
    batch = sample_batch(build_tokenizer())
    expected = {}
    for name in ("default", "task"):
        module.set_active_adapters(name)
        expected[name] = logits(module, batch)
    module.set_active_adapters(Parallel("default", "task"))
    outputs = logits(module, batch)
    assert set(outputs) == {"default", "task"}
    for name, value in outputs.items():
        assert torch.equal(value, expected[name])

    rows = module.predict_step(batch, 0)
    assert len(rows) == 3 and all(set(row) == {"default", "task"} for row in rows)
    assert [row["task"]["label"] for row in rows] == [TOPICS[i] for i in expected["task"].argmax(-1).tolist()]
    with pytest.raises(UserInputError, match="Parallel adapters are for inference"):
        module.training_step({**batch, "labels": torch.zeros(3, dtype=torch.long)}, 0)


def fusion_module(model_dir: str) -> AdapterModule:
    module = AdapterModule(model_dir, strategy=Bottleneck(**PFEIFFER), label_names=SENTIMENT)
    module.add_adapter("b", Bottleneck(**PFEIFFER), label_names=TOPICS)
    randomize(module, "default", seed=1)
    randomize(module, "b", seed=2)
    module.add_adapter("fusion", AdapterFusion(["default", "b"]), label_names=TOPICS)
    return module


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_a_fusion_with_uniform_attention_is_the_average_of_its_adapters(model_dirs, family):
    """Reference: one bottleneck twice as wide, holding both adapters' weights with the up projections halved,
    computes h + (f_a(h) + f_b(h)) / 2 exactly — what a fusion whose attention is uniform (Q = K = 0) computes."""
    module = fusion_module(model_dirs[family])
    with torch.no_grad():
        for _, layer in adapter_layers(module.backbone):
            if isinstance(layer, FusionLayer):
                layer.query.weight.zero_()
                layer.key.weight.zero_()
    module.set_active_adapters("fusion")
    batch = sample_batch(build_tokenizer())
    fused = logits(module, batch)

    reference = AdapterModule(model_dirs[family], strategy=Bottleneck(**{**PFEIFFER, "bottleneck_size": 8}),
                              label_names=TOPICS)
    parts = {name: dict(adapter_named_parameters(module.backbone, name)) for name in ("default", "b")}
    with torch.no_grad():
        for path, param in adapter_named_parameters(reference.backbone):
            a, b = _find(parts["default"], path), _find(parts["b"], path)
            param.copy_(torch.cat([a, b], dim=0) if ".down." in path else (
                torch.cat([a, b], dim=1) / 2 if path.endswith("up.weight") else (a + b) / 2))
        for target, source in zip(reference.head.parameters(), module.head_of("fusion").parameters(), strict=True):
            target.copy_(source)
    torch.testing.assert_close(logits(reference, batch), fused, rtol=0, atol=1e-5)


def _find(params: dict[str, torch.Tensor], path: str) -> torch.Tensor:
    """The fused module's parameter at ``path`` of a module with one adapter (its paths carry extra base_layers)."""
    (match,) = [p for name, p in params.items() if name.replace(".base_layer", "") == path]
    return match


def test_training_a_fusion_leaves_its_adapters_frozen_and_its_folder_needs_them(tmp_path, model_dirs):
    module = fusion_module(model_dirs["bert"])
    module.train_adapter("fusion")
    frozen = {name: p.clone() for name, p in module.named_parameters() if not p.requires_grad}
    trainable = module.trainable_names()
    assert trainable and all(".query." in n or ".key." in n or ".value." in n or n.startswith("extra_heads.fusion.")
                             for n in trainable)
    batch = sample_batch(build_tokenizer())
    batch["labels"] = torch.tensor([0, 1, 1])
    optimizer = torch.optim.SGD([p for _, p in module.trainable_parameters()], lr=0.5)
    module.train()
    for _ in range(3):
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if n in frozen)
    fused = logits(module, batch)

    save_adapter(module, tmp_path / "fusion", name="fusion")
    for name in ("default", "b"):
        save_adapter(module, tmp_path / name, name=name)
    rebuilt = load_adapter(tmp_path / "default")
    rebuilt.load_adapter(tmp_path / "b", "b")
    rebuilt.load_adapter(tmp_path / "fusion", "fusion")
    rebuilt.set_active_adapters("fusion")
    torch.testing.assert_close(logits(rebuilt, batch), fused, rtol=0, atol=1e-6)

    lonely = load_adapter(tmp_path / "default")
    with pytest.raises(UserInputError, match="this model has no adapters named default, b|adapters \\['default'\\]"):
        lonely.load_adapter(tmp_path / "fusion", "fusion")
    assert lonely.adapter_names == ["default"]
    with pytest.raises(UserInputError, match="adapter 'b' is fused by adapter 'fusion'"):
        module.delete_adapter("b")


@pytest.mark.parametrize("second, fuse, message", [
    ("lora", ["default", "task"], "fuses sequential bottleneck adapters.*'task' is LoraLayer"),
    ("parallel", ["default", "task"], "'task' is BottleneckLayer \\(parallel\\)"),
    ("houlsby", ["default", "task"], "sit at .* do not"),
    ("pfeiffer", ["default", "nothing"], "sit at .* do not"),
    ("pfeiffer", ["elsewhere", "nothing"], "has no adapters named elsewhere, nothing"),
    ("pfeiffer", ["default"], "two or more different adapter names"),
])
def test_fusions_that_cannot_work_are_refused_in_one_line(model_dirs, second, fuse, message):
    strategies = {"lora": STRATEGIES["lora"].build(), "parallel": Bottleneck(variant="parallel"),
                  "houlsby": Bottleneck(variant="houlsby"), "pfeiffer": Bottleneck(**PFEIFFER)}
    module = module_with(model_dirs["bert"], Bottleneck(**PFEIFFER), strategies[second])
    with pytest.raises(UserInputError, match=message) as info:
        module.add_adapter("fusion", AdapterFusion(fuse), label_names=TOPICS)
    assert "\n" not in str(info.value) and module.adapter_names == ["default", "task"]


def hidden(module: AdapterModule, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return module.eval().backbone(**batch).last_hidden_state


def lora_pair(model_dir: str) -> AdapterModule:
    return module_with(model_dir, STRATEGIES["lora"].build(), STRATEGIES["lora"].build(), ClassificationHead())


def test_a_linear_merge_is_the_weighted_sum_of_the_updates(model_dirs):
    module = lora_pair(model_dirs["bert"])
    module.add_weighted_adapter(["default", "task"], [0.7, 0.3], "merged")
    assert module.labels_of("merged") == SENTIMENT and module.adapter_names[-1] == "merged"
    batch = sample_batch(build_tokenizer())
    module.set_active_adapters("merged")
    merged = hidden(module, batch)
    # reference: both adapters stacked, each update scaled by its weight (B -> w B)
    with torch.no_grad():
        for _, layer in adapter_layers(module.backbone):
            if layer.adapter_name in ("default", "task"):
                layer.lora_B.weight.mul_(0.7 if layer.adapter_name == "default" else 0.3)
    module.set_active_adapters(["default", "task"])
    torch.testing.assert_close(merged, hidden(module, batch), rtol=0, atol=1e-5)


def reference_ties(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES-merging entry by entry, as the paper states it (slow, plain Python over the flattened updates)."""
    flat = [d.flatten().tolist() for d in deltas]
    keep = round(density * len(flat[0]))
    trimmed = []
    for values in flat:
        threshold = sorted((abs(v) for v in values), reverse=True)[keep - 1]
        trimmed.append([v if abs(v) >= threshold else 0.0 for v in values])
    merged = []
    for column in zip(*trimmed, strict=True):
        total = sum(column)
        agreeing = [v for v in column if v != 0 and (v > 0) == (total > 0)]
        merged.append(sum(agreeing) / len(agreeing) if agreeing and total != 0 else 0.0)
    return torch.tensor(merged).view(deltas[0].shape)


def test_a_ties_merge_matches_the_papers_rule_and_is_exact_at_full_rank(model_dirs):
    module = lora_pair(model_dirs["bert"])
    width = min(module.backbone.config.hidden_size, module.backbone.config.hidden_size)
    module.add_weighted_adapter(["default", "task"], [1.0, 0.5], "ties", combination_type="ties", density=0.3,
                                rank=width)
    layers = {}
    for path, layer in adapter_layers(module.backbone):
        layers.setdefault(path.replace(".base_layer", ""), {})[layer.adapter_name] = layer
    for path, named in layers.items():
        expected = reference_ties([named["default"].delta_weight(), 0.5 * named["task"].delta_weight()], 0.3)
        torch.testing.assert_close(named["ties"].delta_weight(), expected, rtol=0, atol=1e-5, msg=path)


@pytest.mark.parametrize("second, kwargs, message", [
    ("bottleneck", {}, "adapter 'task' is Bottleneck, not LoRA"),
    ("lora-all", {}, "adapt different layers"),
    ("lora", {"weights": [1.0]}, "1 weights for 2 adapters"),
    ("lora", {"density": 0.5}, "density 0.5 needs combination_type ties"),
    ("lora", {"combination_type": "svd"}, "unknown combination_type 'svd'"),
    ("lora", {"adapters": ["default", "missing"]}, "no adapter named 'missing'"),
])
def test_merges_that_cannot_work_are_refused_in_one_line(model_dirs, second, kwargs, message):
    strategies = {"bottleneck": STRATEGIES["bottleneck"].build(), "lora": STRATEGIES["lora"].build(),
                  "lora-all": STRATEGIES["lora"].build(target_modules="all-linear")}
    module = module_with(model_dirs["bert"], STRATEGIES["lora"].build(), strategies[second])
    with pytest.raises(UserInputError, match=message) as info:
        module.add_weighted_adapter(**{"adapters": ["default", "task"], "adapter_name": "merged", **kwargs})
    assert "\n" not in str(info.value) and module.adapter_names == ["default", "task"]


def test_a_fusion_trains_as_a_modules_own_adapter_over_loaded_folders(tmp_path, model_dirs):
    """The command-line form: `adapters` loads the fused folders frozen, `strategy: AdapterFusion` is what trains."""
    source = fusion_module(model_dirs["bert"])
    for name in ("default", "b"):
        save_adapter(source, tmp_path / name, name=name)
    module = AdapterModule(model_dirs["bert"], strategy=AdapterFusion(["sentiment", "topics"]), label_names=TOPICS,
                           adapters={"sentiment": str(tmp_path / "default"), "topics": str(tmp_path / "b")})
    assert module.adapter_names == ["default", "sentiment", "topics"] and module.frozen_adapters == {"sentiment",
                                                                                                      "topics"}
    assert all(".query." in n or ".key." in n or ".value." in n or n.startswith("head.")
               for n in module.trainable_names())
    save_adapter(module, tmp_path / "fusion")
    with pytest.raises(UserInputError, match="no adapters named sentiment, topics"):
        load_adapter(tmp_path / "fusion")
    again = AdapterModule(model_dirs["bert"], strategy=AdapterFusion(["sentiment", "topics"]), label_names=TOPICS,
                          adapters={"sentiment": str(tmp_path / "default"), "topics": str(tmp_path / "b")},
                          adapter=str(tmp_path / "fusion"))
    batch = sample_batch(build_tokenizer())
    assert torch.equal(logits(again, batch), logits(module, batch))
