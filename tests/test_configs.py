"""Every shipped YAML parses, and every pack config builds its model and data (configs never rot)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import DATA_ROOT

from lightning_adapters import backbone, save_adapter
from lightning_adapters.cli import AdaptersCLI, main
from lightning_adapters.module import AdapterModule

REPO = Path(__file__).resolve().parents[1]
DATA = DATA_ROOT
EXPERIMENTS = sorted(p for p in (REPO / "configs").rglob("*.yaml")
                     if p.parent.name not in ("strategy", "trainer", "search"))
SEARCH_SPACES = sorted((REPO / "configs" / "search").glob("*.yaml"))
FRAGMENTS = sorted((REPO / "configs" / "strategy").glob("*.yaml"))
TRAINER_FRAGMENTS = sorted((REPO / "configs" / "trainer").glob("*.yaml"))
QUICKSTART = REPO / "configs" / "finance_sentiment" / "bottleneck.yaml"


def point_at_data(config: Path, monkeypatch) -> None:
    """Real-data configs read ${LIGHTNING_ADAPTERS_DATA}/<folder>: set the variable, or skip when the data is absent."""
    found = re.search(r"data_dir:\s*\"?\$\{LIGHTNING_ADAPTERS_DATA\}/([\w.-]+)", config.read_text())
    if found is None:
        return
    if not (DATA / found.group(1)).is_dir():
        pytest.skip(f"{DATA / found.group(1)} not found (set LIGHTNING_ADAPTERS_DATA)")
    monkeypatch.setenv("LIGHTNING_ADAPTERS_DATA", str(DATA))


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_experiment_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: lightning_adapters" in capsys.readouterr().out


def test_configs_spell_each_class_path_as_the_cli_writes_it_back():
    """One spelling: the import path jsonargparse records in a run's config.yaml, so a saved config reads the same."""
    from importlib import import_module

    from jsonargparse._util import get_import_path

    written = {}
    for config in sorted((REPO / "configs").rglob("*.yaml")):
        for path in re.findall(r"class_path:\s*([\w.]+)", config.read_text()):
            module, _, name = path.rpartition(".")
            written[f"{config.relative_to(REPO)}: {path}"] = get_import_path(getattr(import_module(module), name))
    assert written and {where: where.split(": ")[1] for where in written} == written


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.name)
def test_strategy_fragment_composes_with_a_pack_config(fragment, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(QUICKSTART), "--model.init_args.strategy", str(fragment), "--print_config"])
    expected = yaml.safe_load(fragment.read_text())
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["strategy"]
    assert printed["class_path"] == expected["class_path"]
    assert expected.get("init_args", {}).items() <= printed["init_args"].items()


@pytest.mark.parametrize("fragment", TRAINER_FRAGMENTS, ids=lambda p: p.name)
def test_trainer_strategy_fragment_composes_with_a_pack_config(fragment, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(QUICKSTART), "--trainer.strategy", str(fragment), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]["strategy"]
    expected = yaml.safe_load(fragment.read_text())
    assert printed["class_path"] == expected["class_path"]
    assert expected["init_args"].items() <= printed["init_args"].items()


def stand_in_earlier_adapters(config: Path, tmp_path: Path) -> list[str]:
    """A continual-learning config lists folders an earlier run exports: stand in untrained ones of the same base."""
    init_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    folders = {}
    for name in init_args.get("adapters") or {}:
        folders[name] = str(save_adapter(AdapterModule(init_args["backbone"], label_names=["a", "b"]), tmp_path / name))
    return ["--model.init_args.adapters", json.dumps(folders)] if folders else []


@pytest.fixture(scope="module")
def loaded_backbones() -> dict:
    """Models and tokenizers loaded once for this module's tests, keyed by the loader and its arguments: six configs
    load the 135M-parameter SmolLM2 from GGUF (~25 s each to dequantise, ~8 s per tokenizer), which a copy
    replaces."""
    return {}


@pytest.fixture
def load_each_backbone_once(monkeypatch, loaded_backbones):
    for name in ("load_model", "load_tokenizer"):
        load = getattr(backbone, name)

        def cached(*args, _load=load, **kwargs):
            key = repr((_load.__name__, args, sorted(kwargs.items())))
            if key not in loaded_backbones:
                loaded_backbones[key] = _load(*args, **kwargs)
            return copy.deepcopy(loaded_backbones[key])

        monkeypatch.setattr(backbone, name, cached)


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_experiment_config_builds_model_and_data(config, monkeypatch, tmp_path, load_each_backbone_once):
    monkeypatch.chdir(REPO)
    point_at_data(config, monkeypatch)
    args = ["--config", str(config), *stand_in_earlier_adapters(config, tmp_path)]
    cli = AdaptersCLI(AdapterModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                      args=args, auto_configure_optimizers=False)
    if cli.datamodule.task_labels is None:  # None for tasks without a label set (QA, generation)
        assert cli.model.label_names == cli.datamodule.label_names
    else:  # several tasks: each adapter has its task's labels
        assert {name: cli.model.labels_of(name) for name in cli.model.adapter_names} == cli.datamodule.task_labels
    assert cli.datamodule.tokenizer_name == cli.model.backbone_name


@pytest.mark.parametrize("space", SEARCH_SPACES, ids=lambda p: p.name)
def test_search_space_reads_and_names_keys_fit_accepts_for_the_config_it_names(space, monkeypatch):
    """Each shipped search space, with the config and strategy its header comment names: every key is one fit
    accepts (tune's own check, a parse of fit's arguments with a value of every key)."""
    pytest.importorskip("optuna")
    from lightning_adapters.tune import config_judged_by, parse_fit, read_search_space

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LIGHTNING_ADAPTERS_DATA", str(DATA))  # only parsed: the folder need not exist
    header = " ".join(line.lstrip("# ") for line in space.read_text().splitlines() if line.startswith("#"))
    config = re.search(r"--config (\S+)", header).group(1)
    strategy = re.search(r"--model.init_args.strategy (\S+)", header).group(1)
    parsed = parse_fit(["--config", config, "--model.init_args.strategy", strategy], read_search_space(space))
    assert config_judged_by(parsed) == ("val_macro_f1", "max")
