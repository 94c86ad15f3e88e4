"""The placement probe (`lightning_adapters.placement`) and ``lightning-adapters place``: per-layer scores equal a
direct autograd computation, the budget keeps the best layers, the written fragment places a fit's adapters in
exactly those layers, and bad input is one line with nothing written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tokenizer
from test_tune import workdir  # noqa: F401 — a fixture: a tiny BERT config with CSV splits

from lightning_adapters import IA3, AdapterModule, Bottleneck, Lora, PromptTuning, UserInputError
from lightning_adapters.cli import main, run_cli
from lightning_adapters.placement import choose_layers, layer_scores
from lightning_adapters.strategies.base import adapter_layers
from lightning_adapters.strategies.layers import block_of

LABELS = ["negative", "neutral", "positive"]


def batch_of(texts: list[str], labels: list[int]) -> dict:
    batch = dict(build_tokenizer()(texts, padding=True, return_tensors="pt"))
    return batch | {"labels": torch.tensor(labels)}


@pytest.mark.parametrize("strategy", [lambda: Lora(r=2), lambda: Bottleneck(variant="houlsby"), lambda: IA3()],
                         ids=["lora", "houlsby", "ia3"])
def test_scores_are_the_rms_gradient_of_each_layer_s_adapter_weights(strategy, model_dirs):
    module = AdapterModule(model_dirs["bert"], strategy=strategy(), label_names=LABELS)
    batches = [batch_of(["the company profit rose", "bank card cut"], [2, 0]),
               batch_of(["net sales fell and shares dropped", "report of the year", "profit grew"], [0, 1, 2])]
    scores = layer_scores(module, batches)
    expected = {}
    for index in (0, 1):  # reference: autograd of the loss with respect to that layer's adapter weights only
        params = [p for path, layer in adapter_layers(module.backbone) if block_of(module.backbone, path)[1] == index
                  for _, p in layer.adapter_named_parameters()]
        values = []
        for batch in batches:
            module.eval()
            grads = torch.autograd.grad(module.task_head.loss(module(batch), batch), params)
            values.append(math.sqrt(sum(float(g.pow(2).sum()) for g in grads) / sum(p.numel() for p in params)))
        expected[index] = sum(values) / len(values)
    assert scores.keys() == expected.keys() and all(scores[i] > 0 for i in scores)
    assert all(math.isclose(scores[i], expected[i], rel_tol=1e-4) for i in scores), (scores, expected)
    assert all(p.grad is None for p in module.parameters())  # the probe leaves no gradient behind


def test_the_budget_keeps_the_best_layers_in_layer_order():
    scores = {0: 0.1, 1: 0.5, 2: 0.3, 3: 0.5, 4: 0.05}
    assert choose_layers(scores, 2) == [1, 3] and choose_layers(scores, 3) == [1, 2, 3]
    assert choose_layers({0: 1.0, 1: 1.0}, 1) == [0]  # a tie goes to the lower index
    for budget in (0, 6):
        with pytest.raises(UserInputError, match=f"a budget of {budget} layers is not between 1 and the 5"):
            choose_layers(scores, budget)


def test_place_writes_a_fragment_that_puts_fit_s_adapters_in_the_chosen_layers(workdir, capsys):  # noqa: F811
    main(["place", "--config", "config.yaml", "--budget", "1", "--batches", "3", "--output", "placed.yaml"])
    fragment = yaml.safe_load((workdir / "placed.yaml").read_text())
    report = json.loads((workdir / "placed.json").read_text())
    chosen = report["chosen"]
    assert fragment["class_path"] == "lightning_adapters.strategies.lora.Lora" and fragment["init_args"]["r"] == 2
    assert fragment["init_args"]["layers"] == chosen and len(chosen) == 1 and chosen[0] == report["ranked"][0]
    assert f"layers {chosen} written to placed.yaml" in capsys.readouterr().out
    cli = run_cli(["fit", "--config", "config.yaml", "--model.init_args.strategy", "placed.yaml",
                   "--trainer.max_epochs", "1", "--trainer.default_root_dir", "runs"])
    wrapped = {block_of(cli.model.backbone, path)[1] for path, _ in adapter_layers(cli.model.backbone)}
    assert wrapped == set(chosen)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--budget", "0"], "a budget of 0 layers is not between 1 and the 2 layers"),
    (["--budget", "3"], "a budget of 3 layers"),
    (["--budget", "1", "--model.init_args.strategy", '{"class_path": "lightning_adapters.PromptTuning"}'],
     "not PromptTuning — choose its layers by hand"),
    (["--budget", "1", "--batches", "0"], "--batches must be at least 1"),
    (["--budget", "1", "--model.init_args.no_such", "1"], "no_such"),
])
def test_bad_input_is_one_line_and_writes_nothing(workdir, capsys, arguments, message):  # noqa: F811
    with pytest.raises(SystemExit) as stop:
        main(["place", "--config", "config.yaml", "--output", "placed.yaml", *arguments])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and error.count("\n") == 1, error
    assert not Path(workdir / "placed.yaml").exists()
    assert PromptTuning  # the class the refusal names
