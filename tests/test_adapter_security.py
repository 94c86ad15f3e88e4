"""Adapter and PEFT folders are data from anywhere: loading runs none of their code, refuses bad configs in one line,
never hangs on a crafted regex, and refuses them on any checkpoint but the one they were trained on."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from conftest import build_model, build_tokenizer
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from lightning_adapters import (
    AdapterModule,
    Bottleneck,
    ClassificationHead,
    Lora,
    UserInputError,
    load_adapter,
    register_adapter_class,
    registry,
    save_adapter,
)
from lightning_adapters.adapter_folder import CONFIG_NAME
from lightning_adapters.peft_export import export_peft, import_peft, load_peft

LABELS = ["negative", "neutral", "positive"]
BOTTLENECK = "lightning_adapters.strategies.bottleneck.Bottleneck"


class LabelSmoothingHead(ClassificationHead):
    """The README's example of a user's own head."""

    def loss(self, logits, batch):
        return F.cross_entropy(logits.float(), batch["labels"], label_smoothing=0.1)


def edited(folder, **changes):
    """The adapter folder with top-level config entries replaced (``None``: removed)."""
    path = folder / CONFIG_NAME
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return folder


@pytest.fixture
def adapter(model_dirs, tmp_path):
    return save_adapter(AdapterModule(model_dirs["bert"], strategy=Bottleneck(), label_names=LABELS),
                        tmp_path / "adapter")


# ---- 1. no code runs from a folder; only known classes are built --------------------------------------------------
def test_loading_never_imports_a_module_the_folder_names(adapter, tmp_path, monkeypatch):
    marker = tmp_path / "payload-ran"
    (adapter / "payload.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom lightning_adapters import "
                                        "Bottleneck\n\nclass Evil(Bottleneck):\n    pass\n")
    monkeypatch.syspath_prepend(str(adapter))
    strategy = {"class_path": "payload.Evil", "init_args": {}}
    with pytest.raises(UserInputError, match="'payload.Evil' is not a Strategy .*register_adapter_class"):
        load_adapter(edited(adapter, strategy=strategy))
    head = {"class_path": "payload.Evil", "init_args": {}}
    with pytest.raises(UserInputError, match="'payload.Evil' is not a TaskHead"):
        load_adapter(edited(adapter, strategy={"class_path": BOTTLENECK, "init_args": {}}, head=head))
    assert not marker.exists() and "payload" not in sys.modules


def test_a_users_head_loads_once_registered_or_allowed(model_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTERED", {})
    module = AdapterModule(model_dirs["bert"], strategy=Lora(r=2), head=LabelSmoothingHead(pooling="first"),
                           label_names=LABELS)
    folder = save_adapter(module, tmp_path / "adapter")
    with pytest.raises(UserInputError, match="LabelSmoothingHead' is not a TaskHead .* allowed_classes"):
        load_adapter(folder)
    loaded = load_adapter(folder, allowed_classes=[LabelSmoothingHead])
    assert type(loaded.head) is LabelSmoothingHead and loaded.head.pooling == "first"
    assert register_adapter_class(LabelSmoothingHead) is LabelSmoothingHead
    assert type(load_adapter(folder).head) is LabelSmoothingHead
    with pytest.raises(UserInputError, match="is not a Strategy or TaskHead subclass"):
        register_adapter_class(dict)


@pytest.mark.parametrize("changes, message", [
    ({"strategy": {"class_path": BOTTLENECK, "init_args": [16]}}, "init_args of strategy Bottleneck is a list"),
    ({"strategy": {"class_path": BOTTLENECK, "init_args": {"reduction_factor": "16"}}},
     "strategy Bottleneck: reduction_factor='16' should be int"),
    ({"strategy": {"class_path": BOTTLENECK, "init_args": {"variant": "sideways"}}}, "variant='sideways' should be"),
    ({"strategy": {"class_path": BOTTLENECK, "init_args": {"evil": 1}}}, "Bottleneck takes no argument 'evil'"),
    ({"strategy": {"class_path": BOTTLENECK, "init_args": {"attention_modules": "(.*.*)*X"}}},
     "attention_modules: the regex .* repeats a group that itself repeats"),
    ({"strategy": {"init_args": {}}}, "strategy entry of the adapter config has no class_path"),
    ({"head": {"class_path": "lightning_adapters.heads.classification.ClassificationHead",
               "init_args": {"dropout": "0.1"}}}, "dropout='0.1' should be float"),
    ({"base_model": None}, "has no base_model"),
    ({"backbone": None, "head": None}, "has no backbone, head"),
    ({"strategy": "Bottleneck"}, "strategy should be dict, not str"),
    ({"label_names": "negative"}, r"label_names should be list\[str\] \| None, not str"),
    ({"label_names": ["neutral", "neutral", "positive"]}, r"label_names repeat \['neutral'\]"),
    ({"strategy": {"class_path": BOTTLENECK, "init_args": {"reduction_factor": 0}}},
     "reduction_factor and bottleneck_size must be >= 1"),
    ({"strategy": {"class_path": BOTTLENECK, "init_args": {"reduction_factor": -4}}},
     "reduction_factor and bottleneck_size must be >= 1"),
    ({"head": {"class_path": "lightning_adapters.heads.classification.ClassificationHead",
               "init_args": {"dropout": 5.0}}}, r"head dropout must be in \[0, 1\), got 5.0"),
    ({"strategy": {"class_path": "lightning_adapters.strategies.lora.Lora", "init_args": {"r": 1000000000}}},
     "LoRA rank r=1000000000 exceeds the smaller dimension"),
])
def test_bad_configs_are_refused_in_one_line(adapter, changes, message):
    with pytest.raises(UserInputError, match=message) as caught:
        load_adapter(edited(adapter, **changes))
    assert "\n" not in str(caught.value)


def test_absurdly_nested_json_is_refused_in_one_line(adapter, model_dirs, tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    (adapter / CONFIG_NAME).write_text(deep)
    with pytest.raises(UserInputError, match="nests too deeply"):
        load_adapter(adapter)
    peft_folder = export_peft(AdapterModule(model_dirs["bert"], strategy=Lora(r=2), label_names=LABELS),
                              tmp_path / "peft")
    (peft_folder / CONFIG_NAME).write_text(deep)
    with pytest.raises(UserInputError, match="nests too deeply"):
        import_peft(peft_folder)


# ---- 4. the base model's fingerprint pins the checkpoint, on every load path ----------------------------------------
@pytest.fixture
def twin_bert(model_dirs, tmp_path) -> str:
    """Another checkpoint of the same architecture whose embedding rows 0-7 ([PAD], [unused]...) are the original's,
    as after fine-tuning: the old fingerprint (config + those rows) could not tell them apart."""
    original = AutoModel.from_pretrained(model_dirs["bert"])
    twin = build_model("bert", seed=1)
    with torch.no_grad():
        twin.get_input_embeddings().weight[:8] = original.get_input_embeddings().weight[:8]
    twin.save_pretrained(tmp_path / "twin-bert")
    build_tokenizer().save_pretrained(tmp_path / "twin-bert")
    return str(tmp_path / "twin-bert")


def test_adapter_from_another_checkpoint_of_the_same_architecture_is_refused(adapter, twin_bert, model_dirs,
                                                                              tmp_path):
    with pytest.raises(UserInputError, match="trained on base model .* load it onto the base it was trained on"):
        load_adapter(adapter, backbone=twin_bert)
    folder = export_peft(AdapterModule(model_dirs["bert"], strategy=Lora(r=2), label_names=LABELS), tmp_path / "peft")
    with pytest.raises(UserInputError, match="PEFT folder .* trained on base model"):
        load_peft(folder, twin_bert, label_names=LABELS)
    load_peft(folder, model_dirs["bert"], label_names=LABELS)  # its own base: accepted


@pytest.mark.parametrize("saved, loaded", [("float32", "bfloat16"), ("bfloat16", "float32"), ("float32", "float16"),
                                           ("float16", "bfloat16")])
def test_the_same_checkpoint_in_another_dtype_is_accepted(saved, loaded, model_dirs, tmp_path):
    module = AdapterModule(model_dirs["llama"], strategy=Lora(r=2), label_names=LABELS, dtype=saved)
    folder = save_adapter(module, tmp_path / "adapter")
    assert load_adapter(folder, dtype=loaded).backbone.get_input_embeddings().weight.dtype == getattr(torch, loaded)


def test_old_format_fingerprints_load_with_a_warning(adapter):
    config = json.loads((adapter / CONFIG_NAME).read_text())
    old = {key: config["base_model"][key] for key in ("name_or_path", "model_type", "config_json", "embedding_probe")}
    with pytest.warns(UserWarning, match="old, weak base-model fingerprint .* save it again"):
        load_adapter(edited(adapter, base_model=old))
    with pytest.raises(UserInputError, match="trained on base model"):  # its weak check still runs
        load_adapter(edited(adapter, base_model=dict(old, embedding_probe=[0.5] * 8)))


def test_peft_folder_without_fingerprint_warns_when_it_names_another_base(model_dirs, tmp_path):
    base = AutoModel.from_pretrained(model_dirs["bert"])
    get_peft_model(base, LoraConfig(r=2, target_modules=["query"])).save_pretrained(tmp_path / "peft")
    shutil.copytree(model_dirs["bert"], tmp_path / "copy-of-bert")
    with pytest.warns(UserWarning, match="saved for base model '.*bert', not '.*copy-of-bert', and carries no "):
        load_peft(tmp_path / "peft", str(tmp_path / "copy-of-bert"), label_names=LABELS)


# ---- 5, 6. PEFT configs: a crafted regex never runs; bad fields are one line ---------------------------------------
@contextmanager
def time_limit(seconds: int):
    def stop(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)  # re checks for signals while it backtracks
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def peft_lora(model_dirs, tmp_path):
    return export_peft(AdapterModule(model_dirs["bert"], strategy=Lora(r=2), label_names=LABELS), tmp_path / "peft")


def rewritten(folder, drop: tuple[str, ...] = (), **changes):
    path = folder / CONFIG_NAME
    config = {key: value for key, value in json.loads(path.read_text()).items() if key not in drop}
    path.write_text(json.dumps({**config, **changes}))
    return folder


def test_catastrophic_target_regex_is_refused_before_matching(peft_lora, model_dirs):
    with time_limit(20), pytest.raises(UserInputError, match="the regex '.*' repeats a group that itself repeats"):
        load_peft(rewritten(peft_lora, target_modules="(.*.*)*X"), model_dirs["bert"], label_names=LABELS)
    with time_limit(20), pytest.raises(UserInputError, match="has more than 4 repeats"):
        load_peft(rewritten(peft_lora, target_modules=".*.*.*.*.*.*.*.*X"), model_dirs["bert"], label_names=LABELS)
    with pytest.raises(UserInputError, match="is not a valid regex"):
        import_peft(rewritten(peft_lora, target_modules="(query"))
    strategy, _ = import_peft(rewritten(peft_lora, target_modules=r".*\.(query|value)"))  # ordinary ones pass
    assert strategy.target_modules == r".*\.(query|value)"


@pytest.mark.parametrize("drop, changes, message", [
    (("r",), {}, "LoRA config has no r"),
    ((), {"r": "eight"}, "r='eight' should be int"),
    ((), {"r": 2.5}, "r=2.5 should be int"),
    ((), {"lora_alpha": "16"}, "lora_alpha='16' should be float"),
    (("target_modules",), {}, "LoRA config has no target_modules"),
    ((), {"target_modules": 7}, r"target_modules=7 should be str \| list\[str\]"),
    ((), {"lora_dropout": "none"}, "lora_dropout='none' should be float"),
])
def test_bad_peft_lora_configs_are_refused_in_one_line(peft_lora, drop, changes, message):
    with pytest.raises(UserInputError, match=message):
        import_peft(rewritten(peft_lora, drop, **changes))


def test_peft_config_that_is_not_an_object_is_refused(peft_lora):
    (peft_lora / CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(UserInputError, match="is not a PEFT adapter config .* — the PEFT adapter folder is corrupt"):
        import_peft(peft_lora)


def test_peft_folders_without_a_type_or_of_our_format_say_which_loader_to_use(peft_lora, adapter, model_dirs):
    with pytest.raises(UserInputError, match="has no peft_type — the folder is not a PEFT adapter or is corrupt"):
        import_peft(rewritten(peft_lora, ("peft_type",)))
    with pytest.raises(UserInputError, match="is a lightning-adapters adapter folder, not a PEFT one — load it with "
                                             "load_adapter"):
        import_peft(adapter)
    with pytest.raises(UserInputError, match="LoRA rank r=1000000000 exceeds the smaller dimension"):
        load_peft(rewritten(peft_lora, r=1000000000, peft_type="LORA"), model_dirs["bert"], label_names=LABELS)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_adapter_weights_that_are_not_floating_point_are_refused(adapter, dtype):
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({name: tensor.to(dtype) for name, tensor in weights.items()}, adapter / "adapter_model.safetensors",
              metadata={"format": "lightning-adapters/1"})
    with pytest.raises(UserInputError, match=f"holds {dtype} values, not floating-point weights"):
        load_adapter(adapter)
