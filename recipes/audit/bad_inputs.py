#!/usr/bin/env python
"""Bad-input audit: feed lightning-adapters wrong input and faults, as a new user and as an attacker would, and check
that each is handled — one clear line, a non-zero exit, nothing lost.

Each case runs in its own process (a fork of a process that has already imported lightning-adapters, or with
``--subprocess`` a fresh interpreter / the ``lightning-adapters`` console script) in a fresh temporary folder, and is
judged HANDLED only if all of these hold (see README.md in this folder):

- refusal cases: exit status 2 (CLI; 143 for SIGTERM) / a ``UserInputError`` (Python API), no Python traceback, an
  error line that is the last line of stderr, is one line, names the problem (case-specific words) and a fix;
- accept / warn cases (valid but unusual input): exit 0 and the right result / a one-line warning naming the issue;
- nothing lost: every file that existed before is byte-identical afterwards, no new ``*.partial``/``*.tmp``/``*.old``
  file or half-written adapter folder, no checkpoint or adapter from a refused run, no code run from a payload.

    .venv/bin/python recipes/audit/bad_inputs.py                   # all cases, 2 at a time; table + results.json
    .venv/bin/python recipes/audit/bad_inputs.py -k peft -k ckpt   # only cases whose name contains a word
    .venv/bin/python recipes/audit/bad_inputs.py --list            # names, categories, what each feeds in
    .venv/bin/python recipes/audit/bad_inputs.py -k cli-negative-lr --keep --subprocess   # rerun one, keep its folder
"""

from __future__ import annotations

import argparse
import atexit
import fnmatch
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import struct
import sys
import textwrap
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
CONSOLE = str(VENV_BIN / "lightning-adapters") if (VENV_BIN / "lightning-adapters").exists() else "lightning-adapters"
CFG = str(REPO / "configs/finance_sentiment/bottleneck.yaml")
LABELS = ["negative", "neutral", "positive"]
MEMORY_LIMIT = 10 * 2**30  # address space per case: a memory bomb fails instead of starving the machine
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore::DeprecationWarning"}
FIX_RE = re.compile(r" — |\b(pass|use|set|fix|remove|rename|save|export|install|pick|point|retrain|load it|add|give|"
                    r"choose|fill|write|free|raise|delete|resume|run|check|get|list|see|convert|re-?encode|store|"
                    r"drop|make sure|try|register|keep|must be|should be|one of)\b", re.I)
ERROR_LINE = re.compile(r"^(\S*lightning-adapters[^:]*: )?error:", re.I)
LEFTOVER = re.compile(r"(\.partial|\.tmp|\.old)$")


# ---- cases ----------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    category: str
    what: str  # one line: the bad input
    run: list[str] | str  # CLI arguments after `lightning-adapters`, or Python code
    prepare: list[Callable[[Path], None]] = field(default_factory=list)
    expect: str = "refuse"  # refuse | accept | warn | either
    needles: tuple[str, ...] = ()  # each must be in the error line (case-insensitive); "a|b": either
    rc: int | tuple[int, ...] = 2  # refusal exit status(es) the CLI promises
    forbid: tuple[str, ...] = ()  # globs under the case folder that must not exist afterwards
    may_change: tuple[str, ...] = ()  # globs of existing files a handled run may rewrite (logs of a resumed run)
    allow_artifacts: bool = False  # a refused run may leave checkpoints (it trained before the fault)
    env: dict[str, str] = field(default_factory=dict)
    unset_env: tuple[str, ...] = ()
    timeout: int = 240
    fsize: int | None = None  # RLIMIT_FSIZE (ulimit -f) in bytes
    signal_after: tuple[str, str] | None = None  # (SIGTERM|SIGINT, glob): send the signal once the glob exists
    fresh: bool = False  # always a fresh interpreter (settings read at import, e.g. HF_HUB_OFFLINE)
    check: Callable[[Path, str, str, dict], str | None] | None = None  # accept cases: a problem, or None

    @property
    def kind(self) -> str:
        return "py" if isinstance(self.run, str) else "cli"


CASES: list[Case] = []


def case(name, category, what, run, *prepare, **kwargs) -> None:
    assert all(c.name != name for c in CASES), name
    CASES.append(Case(name, category, what, run, list(prepare), **kwargs))


# ---- preparing a case folder (t: the working folder; fixtures in FIX) -----------------------------------------------
FIX = Path("/nonexistent")  # set in main()


def cp(fixture: str, dest: str | None = None):
    def step(t: Path) -> None:
        src = FIX / fixture
        target = t / (dest or Path(fixture).name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True)
        else:
            shutil.copy2(src, target)
    return step


def write(rel: str, content: str | bytes, mode: int | None = None):
    def step(t: Path) -> None:
        path = t / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else subst(content, t).encode("utf-8"))
        if mode is not None:
            path.chmod(mode)
    return step


def mkdir(rel: str, mode: int | None = None):
    def step(t: Path) -> None:
        (t / rel).mkdir(parents=True, exist_ok=True)
        if mode is not None:
            (t / rel).chmod(mode)
    return step


def symlink(rel: str, target: str):
    def step(t: Path) -> None:
        path = t / rel
        if path.exists() or path.is_symlink():
            path.unlink()
        path.symlink_to(target.replace("{tmp}", str(t)))
    return step


def remove(rel: str):
    def step(t: Path) -> None:
        path = t / rel
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return step


def truncate(rel: str, keep: float | int):
    def step(t: Path) -> None:
        data = (t / rel).read_bytes()
        (t / rel).write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    return step


def edit_json(rel: str, **changes):
    """Top-level entries replaced; None removes; a callable gets the config and returns it."""
    def step(t: Path) -> None:
        path = t / rel
        config = json.loads(path.read_text())
        changes_ = json.loads(subst(json.dumps(changes), t))
        for key, value in changes_.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        path.write_text(json.dumps(config, indent=2))
    return step


def edit_json_with(rel: str, fn: Callable[[dict], object]):
    def step(t: Path) -> None:
        path = t / rel
        config = json.loads(path.read_text())
        fn(config)
        path.write_text(json.dumps(config, indent=2))
    return step


def edit_weights(rel: str, fn: Callable, metadata: Callable | None = None):
    """Rewrite a safetensors file: ``fn(dict of tensors)`` edits it in place; ``metadata(dict)`` the header."""
    def step(t: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file
        path = t / rel
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            meta = dict(f.metadata() or {})
        fn(tensors)
        if metadata:
            metadata(meta)
        save_file(tensors, path, metadata=meta)
    return step


# ---- command builders -------------------------------------------------------------------------------------------
SHORT = ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", "{tmp}/runs",
         "--test_after_fit", "false", "--trainer.enable_progress_bar", "false"]
PHRASEBANK = str(REPO / "configs/finance_sentiment/phrasebank.yaml")
LAST = "{fix}/run0/lightning_logs/version_0/checkpoints/last.ckpt"


def fit(*extra: str, config: str = CFG) -> list[str]:
    return ["fit", "--config", config, *SHORT, *extra]


def evaluate(command: str, *extra: str, config: str = CFG) -> list[str]:
    limit = {"test": "limit_test_batches", "predict": "limit_predict_batches", "validate": "limit_val_batches"}
    return [command, "--config", config, f"--trainer.{limit[command]}", "1", "--trainer.default_root_dir",
            "{tmp}/runs", "--trainer.enable_progress_bar", "false", *extra]


def load(folder: str = "adapter", **kwargs) -> str:
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return f"from lightning_adapters import load_adapter\nload_adapter({folder!r}{args})\n"


def peft(folder: str = "peft", backbone: str = "minilm") -> str:
    return ("from lightning_adapters.peft_export import load_peft\n"
            f"load_peft({folder!r}, {backbone!r}, label_names={LABELS!r})\n")


def table(file: str, **kwargs) -> str:
    kwargs = {"validation_fraction": 0, "test_fraction": 0, **kwargs}
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return ("from lightning_adapters import TextClassificationDataModule\n"
            f"TextClassificationDataModule(train_file={file!r}{args})\n")


def ner(**files) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in files.items())
    return f"from lightning_adapters import TokenClassificationDataModule\nTokenClassificationDataModule({args})\n"


def qa(file: str = "train.json") -> str:
    return ("from lightning_adapters import QADataModule\n"
            f"QADataModule(train_file={file!r}, validation_fraction=0, test_fraction=0)\n")


GOOD_CSV = "text,label\n" + "".join(f"the bank {i} rose,{LABELS[i % 3]}\n" for i in range(9))
CONLL = "Alderwood B-ORG\nCapital I-ORG\nrose O\n\nthe O\nbank O\nin O\nParis B-LOC\n"
SQUAD_CONTEXT = "The harbor lighthouse was built in 1871 from local granite."


def squad(answers: list[dict] | None = None, question: str | None = "When was it built?", root=None) -> str:
    qa_entry = {"id": "q1", "answers": answers if answers is not None else [{"text": "1871", "answer_start": 35}]}
    if question is not None:
        qa_entry["question"] = question
    doc = root if root is not None else {"version": "1.1", "data": [
        {"title": "T", "paragraphs": [{"context": SQUAD_CONTEXT, "qas": [qa_entry]}]}]}
    return json.dumps(doc)


def predictions_to(path: str) -> str:
    return textwrap.dedent(f"""\
        trainer:
          callbacks:
            - class_path: lightning_adapters.JsonlPredictionWriter
              init_args: {{output: "{path}"}}
        """)


def payload(name: str = "Evil") -> str:
    return ("import os\nopen(os.environ['AUDIT_MARKER'], 'w').close()\n"
            "from lightning_adapters import Bottleneck, ClassificationHead\n"
            f"class {name}(Bottleneck):\n    pass\nclass {name}Head(ClassificationHead):\n    pass\n")


BOTTLENECK = "lightning_adapters.strategies.bottleneck.Bottleneck"
LORA = "lightning_adapters.strategies.lora.Lora"
HEAD = "lightning_adapters.heads.classification.ClassificationHead"
A = "adapter/adapter_config.json"
W = "adapter/adapter_model.safetensors"
PC = "peft/adapter_config.json"
PW = "peft/adapter_model.safetensors"


def strategy_args(**init_args):
    return {"class_path": BOTTLENECK, "init_args": {"variant": "pfeiffer", "reduction_factor": 16, **init_args}}


def lora_args(**init_args):
    return {"class_path": LORA, "init_args": {"r": 2, **init_args}}


def define_cases() -> None:  # noqa: PLR0915 — one long list on purpose
    # ==== untrusted adapter folders (Python API: load_adapter) =======================================================
    adapter = cp("adapter")
    cat = "adapter-folder"
    sys_path = "import sys\nsys.path[:0] = ['adapter', '.']\n"
    case("adapter-payload-strategy-class", cat, "strategy class_path 'payload.Evil'; payload.py beside it and in cwd",
         sys_path + load(), adapter, write("adapter/payload.py", payload()), write("payload.py", payload()),
         edit_json(A, strategy={"class_path": "payload.Evil", "init_args": {}}), needles=("payload.Evil",))
    case("adapter-payload-head-class", cat, "head class_path 'payload.EvilHead' (payload.py on sys.path)",
         sys_path + load(), adapter, write("adapter/payload.py", payload()), write("payload.py", payload()),
         edit_json(A, head={"class_path": "payload.EvilHead", "init_args": {}}), needles=("payload.EvilHead",))
    case("adapter-class-os-system", cat, "strategy class_path 'os.system' with a shell command",
         load(), adapter, edit_json(A, strategy={"class_path": "os.system",
                                                   "init_args": {"command": "touch \"$AUDIT_MARKER\""}}),
         needles=("os.system",))
    case("adapter-class-subprocess-popen", cat, "head class_path 'subprocess.Popen' running sh",
         load(), adapter, edit_json(A, head={"class_path": "subprocess.Popen",
                                               "init_args": {"args": ["sh", "-c", "touch \"$AUDIT_MARKER\""]}}),
         needles=("subprocess.Popen",))
    case("adapter-class-in-init-args", cat, "a nested {class_path: payload.Evil} as a strategy argument",
         sys_path + load(), adapter, write("payload.py", payload()),
         edit_json(A, strategy=strategy_args(reduction_factor={"class_path": "payload.Evil", "init_args": {}})),
         needles=("reduction_factor",))
    case("adapter-registered-name-spoof", cat, "class_path of our module path but a class that does not exist there",
         load(), adapter, edit_json(A, strategy={"class_path": "lightning_adapters.strategies.bottleneck.os",
                                                   "init_args": {}}), needles=("bottleneck.os",))
    case("adapter-pickle-weights-only", cat, "adapter_model.bin (a pickle with a payload) instead of safetensors",
         load(), adapter, remove(W), cp("evil.ckpt", "adapter/adapter_model.bin"),
         needles=("adapter_model.safetensors",))
    case("adapter-missing-weights", cat, "adapter_model.safetensors deleted",
         load(), adapter, remove(W), needles=("adapter_model.safetensors",))
    case("adapter-truncated-weights", cat, "adapter_model.safetensors cut to half",
         load(), adapter, truncate(W, 0.5), needles=("safetensors",))
    case("adapter-empty-weights", cat, "adapter_model.safetensors of 0 bytes",
         load(), adapter, write(W, b""), needles=("safetensors",))
    case("adapter-weights-header-bomb", cat, "safetensors header claiming a 2**62-byte header",
         load(), adapter, write(W, struct.pack("<Q", 2**62) + b"{}" + b"\0" * 64), needles=("safetensors",))
    case("adapter-weights-garbage-header", cat, "safetensors whose JSON header is garbage",
         load(), adapter, write(W, struct.pack("<Q", 16) + b"this is not json" + b"\0" * 32),
         needles=("safetensors",))
    case("adapter-weights-wrong-shape", cat, "one adapter weight with a different shape",
         load(), adapter, edit_weights(W, lambda w: w.update({next(iter(w)): __import__("torch").zeros(3, 3)})),
         needles=("shape",))
    case("adapter-weights-missing-key", cat, "one adapter weight removed from the file",
         load(), adapter, edit_weights(W, lambda w: w.pop(next(iter(w)))), needles=("missing",))
    case("adapter-weights-unknown-key", cat, "an extra weight 'backbone.not_a_layer.weight'",
         load(), adapter, edit_weights(W, lambda w: w.update({"backbone.not_a_layer.weight":
                                                             __import__("torch").zeros(2)})),
         needles=("unexpected|not_a_layer",))
    case("adapter-weights-base-key-wrong-shape", cat, "an extra base weight (word embeddings) of shape (2, 2)",
         load(), adapter, edit_weights(W, lambda w: w.update({"backbone.embeddings.word_embeddings.weight":
                                                             __import__("torch").zeros(2, 2)})),
         needles=("word_embeddings",))
    case("adapter-weights-int-dtype", cat, "every adapter weight stored as int32 (values truncated)",
         load(), adapter, edit_weights(W, lambda w: w.update({k: v.to(__import__("torch").int32)
                                                             for k, v in w.items()})),
         needles=("int32|dtype",))
    case("adapter-weights-bool-dtype", cat, "every adapter weight stored as bool",
         load(), adapter, edit_weights(W, lambda w: w.update({k: v.bool() for k, v in w.items()})),
         needles=("bool|dtype",))
    for key in ("base_model", "strategy", "head", "backbone", "format"):
        case(f"adapter-config-missing-{key}", cat, f"adapter_config.json without '{key}'",
             load(), adapter, edit_json(A, **{key: None}), needles=(key if key != "format" else "adapter config",))
    case("adapter-config-list", cat, "adapter_config.json is a JSON list", load(), adapter, write(A, "[1, 2, 3]"),
         needles=("adapter_config.json",))
    case("adapter-config-truncated-json", cat, "adapter_config.json cut mid-way", load(), adapter, truncate(A, 0.5),
         needles=("adapter_config.json",))
    case("adapter-config-empty", cat, "adapter_config.json of 0 bytes", load(), adapter, write(A, ""),
         needles=("adapter_config.json",))
    case("adapter-config-binary", cat, "adapter_config.json holds non-UTF-8 bytes", load(), adapter,
         write(A, b"\xff\xfe\x00{\x80\x81"), needles=("adapter_config.json",))
    case("adapter-config-deeply-nested", cat, "adapter_config.json nested 200,000 levels deep", load(), adapter,
         write(A, "[" * 200_000 + "]" * 200_000), needles=("nest",))
    case("adapter-config-nested-in-field", cat, "label_names nested 900 levels (under the parser's limit)",
         load(), adapter, edit_json_with(A, lambda c: c.update(label_names=json.loads("[" * 900 + "]" * 900))),
         needles=("label_names",))
    case("adapter-init-args-string-for-int", cat, "reduction_factor: \"16\"", load(), adapter,
         edit_json(A, strategy=strategy_args(reduction_factor="16")), needles=("reduction_factor",))
    case("adapter-init-args-list", cat, "strategy init_args is a list", load(), adapter,
         edit_json(A, strategy={"class_path": BOTTLENECK, "init_args": [16]}), needles=("init_args",))
    case("adapter-init-args-unknown-key", cat, "strategy init_args has 'evil: 1'", load(), adapter,
         edit_json(A, strategy=strategy_args(evil=1)), needles=("evil",))
    case("adapter-init-args-bool-for-int", cat, "reduction_factor: true", load(), adapter,
         edit_json(A, strategy=strategy_args(reduction_factor=True)), needles=("reduction_factor",))
    case("adapter-init-args-zero", cat, "reduction_factor: 0", load(), adapter,
         edit_json(A, strategy=strategy_args(reduction_factor=0)), needles=("reduction_factor",))
    case("adapter-init-args-negative", cat, "reduction_factor: -4", load(), adapter,
         edit_json(A, strategy=strategy_args(reduction_factor=-4)), needles=("reduction_factor",))
    case("adapter-init-args-unknown-variant", cat, "variant: sideways", load(), adapter,
         edit_json(A, strategy=strategy_args(variant="sideways")), needles=("sideways",))
    case("adapter-head-dropout-string", cat, "head dropout: \"0.1\"", load(), adapter,
         edit_json(A, head={"class_path": HEAD, "init_args": {"dropout": "0.1"}}), needles=("dropout",))
    case("adapter-head-dropout-out-of-range", cat, "head dropout: 5.0", load(), adapter,
         edit_json(A, head={"class_path": HEAD, "init_args": {"dropout": 5.0}}), needles=("dropout",))
    case("adapter-head-pooling-unknown", cat, "head pooling: 'median'", load(), adapter,
         edit_json(A, head={"class_path": HEAD, "init_args": {"pooling": "median"}}), needles=("pooling",))
    case("adapter-label-names-string", cat, "label_names: \"negative\"", load(), adapter,
         edit_json(A, label_names="negative"), needles=("label_names",))
    case("adapter-label-names-ints", cat, "label_names: [0, 1, 2]", load(), adapter,
         edit_json(A, label_names=[0, 1, 2]), needles=("label_names",))
    case("adapter-label-names-duplicated", cat, "label_names: [neutral, neutral, positive]", load(), adapter,
         edit_json(A, label_names=["neutral", "neutral", "positive"]), needles=("label",))
    case("adapter-label-names-count-mismatch", cat, "4 label names for the 3-way head weights", load(), adapter,
         edit_json(A, label_names=LABELS + ["mixed"]), needles=("shape|label",))
    case("adapter-fingerprint-corrupt", cat, "base_model: {weights: 'x'}", load(), adapter,
         edit_json(A, base_model={"weights": "x"}), needles=("fingerprint|base model",))
    case("adapter-base-model-list", cat, "base_model: []", load(), adapter, edit_json(A, base_model=[]),
         needles=("base_model",))
    case("adapter-format-other", cat, "format: 'peft'", load(), adapter, edit_json(A, format="peft"),
         needles=("adapter config",))
    case("adapter-class-path-not-string", cat, "strategy class_path: 123", load(), adapter,
         edit_json(A, strategy={"class_path": 123, "init_args": {}}), needles=("class_path",))
    case("adapter-dtype-unknown", cat, "dtype: 'float8'", load(), adapter, edit_json(A, dtype="float8"),
         needles=("float8",))
    case("adapter-dtype-number", cat, "dtype: 5", load(), adapter, edit_json(A, dtype=5), needles=("dtype",))
    lora_adapter = cp("lora_adapter", "adapter")
    case("adapter-regex-dos-nested-repeat", cat, "LoRA target_modules '(.*.*)*X'", load(), lora_adapter,
         edit_json(A, strategy=lora_args(target_modules="(.*.*)*X")), needles=("target_modules",), timeout=90)
    case("adapter-regex-dos-many-repeats", cat, "LoRA target_modules '.*.*.*.*.*.*.*.*X'", load(), lora_adapter,
         edit_json(A, strategy=lora_args(target_modules=".*.*.*.*.*.*.*.*X")), needles=("target_modules",),
         timeout=90)
    case("adapter-regex-dos-alternation", cat, "LoRA exclude_modules '(a|aa)*b'", load(), lora_adapter,
         edit_json(A, strategy=lora_args(target_modules=["query"], exclude_modules="(a|aa)*b")),
         needles=("exclude_modules",), timeout=90)
    case("adapter-regex-invalid", cat, "LoRA target_modules '(query'", load(), lora_adapter,
         edit_json(A, strategy=lora_args(target_modules="(query")), needles=("target_modules|regex",))
    case("adapter-regex-too-long", cat, "LoRA target_modules: a 5,000-character regex", load(), lora_adapter,
         edit_json(A, strategy=lora_args(target_modules="q" * 5000)), needles=("target_modules|regex",))
    case("adapter-bottleneck-regex-dos", cat, "Bottleneck attention_modules '(.*.*)*X'", load(), adapter,
         edit_json(A, strategy=strategy_args(attention_modules="(.*.*)*X")), needles=("attention_modules",),
         timeout=90)
    case("adapter-lora-r-huge", cat, "LoRA r: 1,000,000,000 (weights hold r=2)", load(), lora_adapter,
         edit_json(A, strategy=lora_args(r=10**9)), needles=("r|shape",))
    case("adapter-lora-r-mismatch", cat, "LoRA r: 4 while the weights hold r=2", load(), lora_adapter,
         edit_json(A, strategy=lora_args(r=4)), needles=("shape",))
    case("adapter-symlink-config-dev-zero", cat, "adapter_config.json is a symlink to /dev/zero", load(), adapter,
         symlink(A, "/dev/zero"), needles=("adapter_config.json",), timeout=90)
    case("adapter-symlink-weights-outside", cat, "adapter_model.safetensors links to a private file outside",
         load(), adapter, write("secret.txt", "my private notes\n" * 100), symlink(W, "{tmp}/secret.txt"),
         needles=("safetensors",))
    case("adapter-symlink-weights-dev-urandom", cat, "adapter_model.safetensors links to /dev/urandom",
         load(), adapter, symlink(W, "/dev/urandom"), needles=("safetensors",), timeout=90)
    case("adapter-save-through-symlinked-file", cat, "save_adapter into a folder whose config links to a private file",
         "from lightning_adapters import load_adapter, save_adapter\nsave_adapter(load_adapter('adapter'), 'out')\n",
         adapter, cp("adapter", "out"), write("secret.txt", "keep me\n"), symlink("out/adapter_config.json",
                                                                                "{tmp}/secret.txt"),
         expect="either", needles=("out",), may_change=("out/*",))
    case("adapter-save-into-user-folder", cat, "save_adapter into a folder holding the user's files",
         "from lightning_adapters import load_adapter, save_adapter\nsave_adapter(load_adapter('adapter'), 'notes')\n",
         adapter, write("notes/thesis.txt", "keep me\n"), needles=("notes",))
    case("adapter-save-onto-file", cat, "save_adapter onto an existing file",
         "from lightning_adapters import load_adapter, save_adapter\nsave_adapter(load_adapter('adapter'), 'f.txt')\n",
         adapter, write("f.txt", "keep me\n"), needles=("f.txt",))
    case("adapter-another-base-tiny", cat, "load_adapter(..., backbone=<a tiny BERT>) for a MiniLM adapter",
         load(backbone="{fix}/tiny_bert"), adapter, needles=("base model|trained on",))
    case("adapter-another-base-perturbed", cat, "load onto a perturbed copy of MiniLM (another fine-tune)",
         load(backbone="{fix}/perturbed_minilm"), adapter, needles=("base model|trained on",))
    case("adapter-backbone-field-rewritten", cat, "adapter_config.json 'backbone' rewritten to another model",
         load(), adapter, edit_json(A, backbone="{fix}/perturbed_minilm"), needles=("base model|trained on",))
    case("adapter-label-order-mismatch", cat, "AdapterModule(label_names reversed, adapter=folder)",
         "from lightning_adapters import AdapterModule\n"
         f"AdapterModule('minilm', label_names={LABELS[::-1]!r}, adapter='adapter')\n", adapter, needles=("label",))
    case("adapter-strategy-mismatch", cat, "AdapterModule(strategy=Lora(r=2), adapter=<bottleneck folder>)",
         "from lightning_adapters import AdapterModule, Lora\n"
         f"AdapterModule('minilm', strategy=Lora(r=2), label_names={LABELS!r}, adapter='adapter')\n", adapter,
         needles=("match|missing|unexpected",))
    case("adapter-half-written-temp-only", cat, "only '.adapter.ab12cd34.tmp/' (config, no weights) exists",
         load(), adapter, lambda t: (t / "adapter").rename(t / ".adapter.ab12cd34.tmp"),
         remove(".adapter.ab12cd34.tmp/adapter_model.safetensors"), needles=("adapter_config.json",))
    case("adapter-interrupted-swap", cat, "target missing, previous folder left at '.adapter.1a2b3c4d.old'",
         load(), adapter, lambda t: (t / "adapter").rename(t / ".adapter.1a2b3c4d.old"), needles=("rename",))
    case("adapter-temp-folder-passed", cat, "load_adapter('.adapter.x.tmp') holding a config but no weights",
         load(".adapter.x.tmp"), adapter, lambda t: (t / "adapter").rename(t / ".adapter.x.tmp"),
         remove(".adapter.x.tmp/adapter_model.safetensors"), needles=("adapter_model.safetensors|incomplete",))
    case("adapter-path-is-file", cat, "load_adapter('<a file>')", load("f.txt"), write("f.txt", "hello"),
         needles=("f.txt",))
    case("adapter-path-missing", cat, "load_adapter('nowhere')", load("nowhere"), needles=("nowhere",))
    case("adapter-peft-folder-to-load-adapter", cat, "load_adapter() on a PEFT folder", load("peft"),
         cp("peft_lora", "peft"), needles=("adapter config|load_peft",))

    # ---- adapter folders through the CLI ------------------------------------------------------------------------
    case("cli-adapter-label-mismatch", cat, "test --model.init_args.adapter with other label names in the folder",
         evaluate("test", "--model.init_args.adapter", "{tmp}/adapter"), adapter,
         edit_json(A, label_names=["bearish", "bullish", "flat"]), needles=("label",))
    case("cli-adapter-missing-weights", cat, "test --model.init_args.adapter <folder without weights>",
         evaluate("test", "--model.init_args.adapter", "{tmp}/adapter"), adapter, remove(W),
         needles=("adapter_model.safetensors",))
    case("cli-adapter-other-base", cat, "test --model.init_args.adapter on a perturbed MiniLM backbone",
         evaluate("test", "--model.init_args.adapter", "{tmp}/adapter", "--model.init_args.backbone",
                  "{fix}/perturbed_minilm"), adapter, needles=("base model|trained on",))
    case("cli-adapter-payload-on-path", cat, "test --model.init_args.adapter naming payload.Evil (PYTHONPATH=cwd)",
         evaluate("test", "--model.init_args.adapter", "{tmp}/adapter"), adapter, write("payload.py", payload()),
         edit_json(A, strategy={"class_path": "payload.Evil", "init_args": {}}), env={"PYTHONPATH": "{tmp}"},
         expect="either", needles=("payload",))

    # ==== PEFT folders (load_peft / import_peft) =====================================================================
    cat = "peft-folder"
    peft_lora = cp("peft_lora", "peft")
    case("peft-missing-r", cat, "LoRA adapter_config.json without r", peft(), peft_lora, edit_json(PC, r=None),
         needles=("no r",))
    for label, value in (("string", "eight"), ("float", 2.5), ("zero", 0), ("negative", -3), ("bool", True),
                         ("null-string", "None")):
        case(f"peft-r-{label}", cat, f"LoRA r: {value!r}", peft(), peft_lora, edit_json(PC, r=value),
             needles=("r=|rank|r ",))
    case("peft-r-huge", cat, "LoRA r: 1,000,000,000 (weights hold r=2)", peft(), peft_lora,
         edit_json(PC, r=10**9), needles=("r=|rank|shape",))
    case("peft-r-mismatch", cat, "LoRA r: 4 while the weights hold r=2", peft(), peft_lora, edit_json(PC, r=4),
         needles=("shape",))
    case("peft-alpha-string", cat, "lora_alpha: \"16\"", peft(), peft_lora, edit_json(PC, lora_alpha="16"),
         needles=("lora_alpha",))
    case("peft-dropout-out-of-range", cat, "lora_dropout: 3", peft(), peft_lora, edit_json(PC, lora_dropout=3),
         needles=("dropout",))
    case("peft-missing-target-modules", cat, "no target_modules", peft(), peft_lora,
         edit_json(PC, target_modules=None), needles=("target_modules",))
    case("peft-target-modules-number", cat, "target_modules: 7", peft(), peft_lora, edit_json(PC, target_modules=7),
         needles=("target_modules",))
    case("peft-regex-dos-target", cat, "target_modules '(.*.*)*X'", peft(), peft_lora,
         edit_json(PC, target_modules="(.*.*)*X"), needles=("target_modules",), timeout=90)
    case("peft-regex-dos-exclude", cat, "exclude_modules '(.*.*)*X'", peft(), peft_lora,
         edit_json(PC, exclude_modules="(.*.*)*X"), needles=("exclude_modules",), timeout=90)
    case("peft-regex-dos-backreference", cat, "target_modules '(.*)\\1\\1X' (backreference)", peft(), peft_lora,
         edit_json(PC, target_modules=r"(.*)\1\1X"), needles=("target_modules",), timeout=90)
    case("peft-regex-invalid", cat, "target_modules '(query'", peft(), peft_lora,
         edit_json(PC, target_modules="(query"), needles=("regex",))
    case("peft-target-matches-nothing", cat, "target_modules ['nope'] while the weights name query/value",
         peft(), peft_lora, edit_json(PC, target_modules=["nope"]), needles=("nope|match",))
    case("peft-type-unsupported", cat, "peft_type: ADALORA", peft(), peft_lora, edit_json(PC, peft_type="ADALORA"),
         needles=("ADALORA",))
    case("peft-type-missing", cat, "no peft_type", peft(), peft_lora, edit_json(PC, peft_type=None),
         needles=("peft_type",))
    case("peft-config-deeply-nested", cat, "adapter_config.json nested 200,000 levels", peft(), peft_lora,
         write(PC, "[" * 200_000 + "]" * 200_000), needles=("nest",))
    case("peft-config-list", cat, "adapter_config.json is a list", peft(), peft_lora, write(PC, "[1, 2]"),
         needles=("adapter_config.json|PEFT",))
    case("peft-missing-weights", cat, "no adapter_model.safetensors", peft(), peft_lora, remove(PW),
         needles=("adapter_model.safetensors",))
    case("peft-truncated-weights", cat, "adapter_model.safetensors cut to half", peft(), peft_lora,
         truncate(PW, 0.5), needles=("safetensors",))
    case("peft-use-dora", cat, "use_dora: true", peft(), peft_lora, edit_json(PC, use_dora=True),
         needles=("use_dora",))
    case("peft-fingerprint-corrupt", cat, "safetensors metadata fingerprint is not JSON", peft(), peft_lora,
         edit_weights(PW, lambda w: None, lambda m: m.update({"lightning_adapters.base_model": "{not json"})),
         needles=("fingerprint",))
    case("peft-other-base-perturbed", cat, "our PEFT export loaded onto a perturbed MiniLM", peft(
        backbone="{fix}/perturbed_minilm"), peft_lora, needles=("base model|trained on",))
    case("peft-other-base-tiny", cat, "our PEFT export loaded onto a tiny BERT", peft(backbone="{fix}/tiny_bert"),
         peft_lora, needles=("base model|trained on|shape",))
    case("peft-native-other-architecture", cat, "PEFT's own folder for a tiny BERT loaded onto MiniLM", peft(),
         cp("native_peft_tiny", "peft"), needles=("shape|match",))
    case("peft-base-name-mismatch", cat, "PEFT's own folder naming base 'someorg/other-model' (no fingerprint)",
         peft(), cp("native_peft_other", "peft"), expect="warn", needles=("other-model",))
    peft_ia3 = cp("peft_ia3", "peft")
    case("peft-ia3-no-vectors", cat, "IA3 folder whose weights hold no '.ia3_l' vectors", peft(), peft_ia3,
         edit_weights(PW, lambda w: [w.__setitem__(k.replace("ia3_l", "ia3_x"), w.pop(k)) for k in list(w)
                                     if k.endswith("ia3_l")]), needles=("ia3",))
    case("peft-ia3-wrong-shape", cat, "IA3 vectors of length 5", peft(), peft_ia3,
         edit_weights(PW, lambda w: [w.__setitem__(k, __import__("torch").ones(5)) for k in list(w)
                                     if k.endswith("ia3_l")]), needles=("shape",))
    peft_prompt = cp("peft_prompt", "peft")
    case("peft-prompt-tokens-string", cat, "prompt tuning num_virtual_tokens: \"four\"", peft(), peft_prompt,
         edit_json(PC, num_virtual_tokens="four"), needles=("num_virtual_tokens",))
    case("peft-prompt-tokens-huge", cat, "prompt tuning num_virtual_tokens: 10**9", peft(), peft_prompt,
         edit_json(PC, num_virtual_tokens=10**9), needles=("num_virtual_tokens|prompt",))
    case("peft-prompt-missing-embeddings", cat, "prompt folder without 'prompt_embeddings'", peft(), peft_prompt,
         edit_weights(PW, lambda w: w.pop("prompt_embeddings")), needles=("prompt_embeddings",))
    case("peft-our-folder-to-load-peft", cat, "load_peft() on a lightning-adapters folder", peft("adapter"),
         adapter, needles=("load_adapter|lightning-adapters|peft_type",))

    # ==== command line: models =======================================================================================
    cat = "cli-model"
    case("cli-model-path-missing", cat, "--model.init_args.backbone /nonexistent/model",
         fit("--model.init_args.backbone", "/nonexistent/model"), needles=("/nonexistent/model",))
    case("cli-model-alias-typo-offline", cat, "--model.init_args.backbone minilm2 (HF_HUB_OFFLINE=1)",
         fit("--model.init_args.backbone", "minilm2"), needles=("minilm2",))
    case("cli-model-alias-typo-online", cat, "--model.init_args.backbone minilm2, hub not reachable, no offline flag",
         fit("--model.init_args.backbone", "minilm2"), needles=("minilm2",), unset_env=("HF_HUB_OFFLINE",),
         fresh=True, timeout=240)
    case("cli-model-hub-id-offline", cat, "--model.init_args.backbone someorg/some-model (offline)",
         fit("--model.init_args.backbone", "someorg/some-model"), needles=("someorg/some-model",))
    case("cli-model-folder-no-config", cat, "backbone: an empty folder", fit("--model.init_args.backbone",
                                                                           "{tmp}/empty"), mkdir("empty"),
         needles=("config.json",))
    case("cli-model-config-json-corrupt", cat, "backbone folder whose config.json is not JSON",
         fit("--model.init_args.backbone", "{tmp}/model"), cp("tiny_bert", "model"), write("model/config.json", "{"),
         needles=("config.json|model",))
    case("cli-model-weights-truncated", cat, "backbone folder whose model.safetensors is cut to half",
         fit("--model.init_args.backbone", "{tmp}/model"), cp("tiny_bert", "model"),
         truncate("model/model.safetensors", 0.5), needles=("model",))
    case("cli-model-not-gguf", cat, "backbone model.gguf that is a JSON text file",
         fit("--model.init_args.backbone", "{tmp}/model.gguf"), write("model.gguf", '{"model_type": "llama"}'),
         needles=("GGUF",))
    case("cli-model-gguf-missing", cat, "backbone nowhere.gguf", fit("--model.init_args.backbone", "{tmp}/no.gguf"),
         needles=("no.gguf",))
    case("cli-model-gguf-truncated", cat, "the bundled SmolLM2 .gguf cut to its first 2 MB",
         fit("--model.init_args.backbone", "{tmp}/cut.gguf"), lambda t: truncate_copy_gguf(t / "cut.gguf"),
         needles=("gguf",))
    case("cli-model-trust-remote-code", cat, "backbone whose config maps to its own modeling_mine.py (marker)",
         fit("--model.init_args.backbone", "{fix}/remote_code"), needles=("trust_remote_code",))
    case("cli-model-dtype-unknown", cat, "--model.init_args.dtype float8", fit("--model.init_args.dtype", "float8"),
         needles=("float8",))
    case("cli-strategy-prefix-on-mpnet", cat, "prefix tuning on MPNet (its attention cannot take a prefix)",
         fit("--model.init_args.backbone", "{fix}/tiny_mpnet", "--model.init_args.strategy",
             str(REPO / "configs/strategy/prefix.yaml")), needles=("prefix",))
    case("cli-strategy-lora-targets-nothing", cat, "LoRA target_modules [nope]",
         fit("--model.init_args.strategy", str(REPO / "configs/strategy/lora.yaml"),
             "--model.init_args.strategy.init_args.target_modules", "[nope]"), needles=("nope",))
    case("cli-head-generation-on-encoder", cat, "GenerationHead on MiniLM (an encoder)",
         fit("--model.init_args.head", "lightning_adapters.GenerationHead"), needles=("generat",))
    case("cli-head-token-on-sentence-labels", cat, "TokenClassificationHead with sentence labels",
         fit("--model.init_args.head", "lightning_adapters.TokenClassificationHead"), needles=("IOB2|tag",))
    case("cli-head-qa-on-sentence-labels", cat, "QuestionAnsweringHead with a classification data module",
         fit("--model.init_args.head", "lightning_adapters.QuestionAnsweringHead"), needles=("label|question",))
    case("cli-strategy-class-unknown", cat, "--model.init_args.strategy lightning_adapters.Nope",
         fit("--model.init_args.strategy", "lightning_adapters.Nope"), needles=("Nope",))
    case("cli-strategy-class-not-strategy", cat, "--model.init_args.strategy os.system",
         fit("--model.init_args.strategy", "os.system"), needles=("os.system",))
    case("cli-strategy-bad-variant", cat, "--model.init_args.strategy.init_args.variant sideways",
         fit("--model.init_args.strategy.init_args.variant", "sideways"), needles=("sideways",))
    case("cli-data-class-unknown", cat, "--data lightning_adapters.tasks.nope.NopeDataModule",
         fit("--data", "lightning_adapters.tasks.nope.NopeDataModule"), needles=("nope",))

    # ==== command line: optimiser and Trainer settings ==============================================================
    cat = "cli-settings"
    for name, flag, value, needle in (
            ("negative-lr", "--model.init_args.learning_rate", "-0.001", "learning_rate"),
            ("nan-lr", "--model.init_args.learning_rate", "nan", "learning_rate"),
            ("string-lr", "--model.init_args.learning_rate", "fast", "learning_rate"),
            ("negative-weight-decay", "--model.init_args.weight_decay", "-1", "weight_decay"),
            ("warmup-over-one", "--model.init_args.warmup_ratio", "1.5", "warmup_ratio"),
            ("unknown-trainer-strategy", "--trainer.strategy", "bogus", "bogus"),
            ("accelerator-cuda-absent", "--trainer.accelerator", "cuda", "cuda|gpu"),
            ("precision-unknown", "--trainer.precision", "13", "precision|13"),
            ("devices-zero", "--trainer.devices", "0", "devices"),
            ("max-epochs-zero", "--trainer.max_epochs", "0", "max_epochs"),
            ("max-steps-zero", "--trainer.max_steps", "0", "max_steps"),
            ("max-epochs-negative", "--trainer.max_epochs", "-5", "max_epochs"),
            ("limit-train-batches-zero", "--trainer.limit_train_batches", "0", "limit_train_batches"),
            ("accumulate-zero", "--trainer.accumulate_grad_batches", "0", "accumulate_grad_batches"),
            ("max-steps-string", "--trainer.max_steps", "abc", "max_steps"),
            ("batch-size-zero", "--data.init_args.batch_size", "0", "batch_size"),
            ("max-length-zero", "--data.init_args.max_length", "0", "max_length"),
            ("seed-string", "--seed_everything", "abc", "seed_everything"),
            ("unknown-model-key", "--model.init_args.learnin_rate", "0.1", "learnin_rate"),
            ("head-dropout-out-of-range", "--model.init_args.head.init_args.dropout", "5", "dropout"),
            ("bottleneck-reduction-zero", "--model.init_args.strategy.init_args.reduction_factor", "0",
             "reduction_factor"),
            ("bottleneck-reduction-negative", "--model.init_args.strategy.init_args.reduction_factor", "-4",
             "reduction_factor")):
        extra = ("--trainer.max_steps", "-1") if name in ("max-epochs-zero",) else ()
        case(f"cli-{name}", cat, f"{flag} {value}", fit(*extra, flag, value), needles=(needle,))
    case("cli-unknown-top-level-key", cat, "a config with 'trainr:' (typo)",
         fit("--config", "{tmp}/extra.yaml"), write("extra.yaml", "trainr:\n  max_epochs: 1\n"), needles=("trainr",))
    case("cli-bad-yaml", cat, "a config with a tab in its indentation",
         fit("--config", "{tmp}/extra.yaml"), write("extra.yaml", "trainer:\n  max_epochs: 1\n\tfoo: [\n"),
         needles=("extra.yaml|yaml",))
    case("cli-config-missing", cat, "--config nowhere.yaml", ["fit", "--config", "{tmp}/nowhere.yaml"],
         needles=("nowhere.yaml",))
    case("cli-config-is-folder", cat, "--config <a folder>", ["fit", "--config", "{tmp}/cfgdir"], mkdir("cfgdir"),
         needles=("cfgdir",))
    case("cli-yaml-alias-bomb", cat, "a config with a billion-laughs alias bomb under an unknown key",
         fit("--config", "{tmp}/bomb.yaml"), write("bomb.yaml", yaml_bomb()), needles=("alias",), timeout=120)
    case("cli-unknown-subcommand", cat, "lightning-adapters train --config ...", ["train", "--config", CFG],
         needles=("train",))
    case("cli-no-subcommand", cat, "lightning-adapters (no arguments)", [], needles=("fit",))

    # ==== command line: checkpoints ===================================================================================
    cat = "cli-checkpoint"
    case("cli-ckpt-missing", cat, "test --ckpt_path nope.ckpt", evaluate("test", "--ckpt_path", "{tmp}/nope.ckpt"),
         needles=("nope.ckpt",))
    case("cli-ckpt-truncated", cat, "test --ckpt_path <last.ckpt cut to half>",
         evaluate("test", "--ckpt_path", "{tmp}/cut.ckpt"), cp("run0/lightning_logs/version_0/checkpoints/last.ckpt",
                                                               "cut.ckpt"), truncate("cut.ckpt", 0.5),
         needles=("cut.ckpt",))
    case("cli-ckpt-text-file", cat, "predict --ckpt_path <a text file>",
         evaluate("predict", "--ckpt_path", "{tmp}/notes.ckpt"), write("notes.ckpt", "hello\n"),
         needles=("notes.ckpt",))
    case("cli-ckpt-folder", cat, "test --ckpt_path <a folder>", evaluate("test", "--ckpt_path", "{tmp}/ckdir"),
         mkdir("ckdir"), needles=("ckdir",))
    case("cli-ckpt-pickle-payload", cat, "test --ckpt_path <a torch zip whose pickle runs os.system>",
         evaluate("test", "--ckpt_path", "{fix}/evil.ckpt"), needles=("evil.ckpt|checkpoint",))
    case("cli-ckpt-not-lightning", cat, "test --ckpt_path <torch.save({'foo': 1})>",
         evaluate("test", "--ckpt_path", "{fix}/notlightning.ckpt"), needles=("checkpoint",))
    case("cli-ckpt-other-strategy", cat, "test a bottleneck checkpoint with --model.init_args.strategy lora.yaml",
         evaluate("test", "--ckpt_path", LAST, "--model.init_args.strategy",
                  str(REPO / "configs/strategy/lora.yaml")), needles=("match|missing|unexpected",))
    case("cli-ckpt-other-base", cat, "test a MiniLM checkpoint on a perturbed MiniLM backbone",
         evaluate("test", "--ckpt_path", LAST, "--model.init_args.backbone", "{fix}/perturbed_minilm"),
         needles=("base model|trained on",))
    case("cli-ckpt-other-labels", cat, "test a 3-label checkpoint with 4 label names",
         evaluate("test", "--ckpt_path", LAST, "--data.init_args.label_names",
                  "[negative,neutral,positive,mixed]"), needles=("label|shape",))
    case("cli-fit-resume-truncated", cat, "fit --ckpt_path <last.ckpt cut to half>",
         fit("--ckpt_path", "{tmp}/cut.ckpt"), cp("run0/lightning_logs/version_0/checkpoints/last.ckpt", "cut.ckpt"),
         truncate("cut.ckpt", 0.5), needles=("cut.ckpt",))
    case("cli-fit-resume-last-other-strategy", cat, "fit --ckpt_path last over a bottleneck run, with LoRA",
         fit("--ckpt_path", "last", "--trainer.max_steps", "2", "--model.init_args.strategy",
             str(REPO / "configs/strategy/lora.yaml")), cp("run0", "runs"),
         needles=("match|missing|unexpected",))
    case("cli-test-ckpt-last-no-run", cat, "test --ckpt_path last with no run anywhere",
         evaluate("test", "--ckpt_path", "last"), needles=("last",))

    # ==== command line: outputs =======================================================================================
    cat = "cli-output"
    case("cli-export-dir-non-empty", cat, "--export_dir <a folder with the user's thesis.txt>",
         fit("--export_dir", "{tmp}/notes"), write("notes/thesis.txt", "keep me\n"), needles=("notes",))
    case("cli-export-dir-is-file", cat, "--export_dir <an existing file>", fit("--export_dir", "{tmp}/f.txt"),
         write("f.txt", "keep me\n"), needles=("f.txt",))
    case("cli-export-dir-under-file", cat, "--export_dir <file>/adapter", fit("--export_dir", "{tmp}/f.txt/adapter"),
         write("f.txt", "keep me\n"), needles=("f.txt",))
    case("cli-export-dir-read-only-parent", cat, "--export_dir /sys/la-audit/adapter (read-only file system)",
         fit("--export_dir", "/sys/la-audit/adapter"), needles=("/sys/la-audit",))
    case("cli-export-dir-in-proc", cat, "--export_dir /proc/la-audit/adapter (no one can create it)",
         fit("--export_dir", "/proc/la-audit/adapter"), needles=("/proc/la-audit",))
    case("cli-export-dir-symlink-to-user-folder", cat, "--export_dir <a symlink to a folder with the user's files>",
         fit("--export_dir", "{tmp}/link"), write("notes/thesis.txt", "keep me\n"), symlink("link", "{tmp}/notes"),
         needles=("notes|link",))
    case("cli-default-root-dir-is-file", cat, "--trainer.default_root_dir <an existing file>",
         fit("--trainer.default_root_dir", "{tmp}/f.txt"), write("f.txt", "keep me\n"), needles=("f.txt",))
    case("cli-default-root-dir-unwritable", cat, "--trainer.default_root_dir /sys/la-audit/runs (read-only)",
         fit("--trainer.default_root_dir", "/sys/la-audit/runs"), needles=("/sys/la-audit",))
    case("cli-predict-output-is-folder", cat, "JsonlPredictionWriter output is an existing folder",
         evaluate("predict", "--ckpt_path", LAST, "--config", "{tmp}/out.yaml"),
         write("out.yaml", predictions_to("{tmp}/out")), write("out/keep.txt", "keep me\n"), needles=("out",))
    case("cli-predict-output-under-file", cat, "JsonlPredictionWriter output inside a file",
         evaluate("predict", "--ckpt_path", LAST, "--config", "{tmp}/out.yaml"),
         write("out.yaml", predictions_to("{tmp}/f.txt/p.jsonl")), write("f.txt", "keep me\n"), needles=("f.txt",))
    case("cli-predict-keeps-old-predictions", cat, "predict with a bad predict_file over existing predictions.jsonl",
         evaluate("predict", "--ckpt_path", LAST, "--config", "{tmp}/out.yaml", "--data.init_args.predict_file",
                  "{tmp}/rows.csv"), write("out.yaml", predictions_to("{tmp}/predictions.jsonl")),
         write("predictions.jsonl", '{"id": 0, "label": "positive"}\n'), write("rows.csv", "id,txt\n0,hello\n"),
         needles=("sentence|column",))
    case("cli-ulimit-f-fresh-fit", cat, "fit under ulimit -f 256 KB: the checkpoint cannot be written",
         fit(), fsize=256 * 1024, needles=("ulimit|file-size|file size|too large",))
    case("cli-ulimit-f-resume", cat, "fit --ckpt_path last under ulimit -f 256 KB: the earlier last.ckpt must stay",
         fit("--ckpt_path", "last", "--trainer.max_steps", "3"), cp("run0", "runs"), fsize=256 * 1024,
         needles=("ulimit|file-size|file size|too large",),
         may_change=("runs/lightning_logs/version_0/config.yaml", "runs/lightning_logs/version_0/hparams.yaml",
                     "runs/lightning_logs/version_0/metrics.csv"))
    case("cli-sigterm-mid-fit", cat, "SIGTERM once the first last.ckpt exists", fit(
        "--trainer.max_steps", "-1", "--trainer.max_epochs", "1000"), rc=143,
         signal_after=("SIGTERM", "work/runs/**/last.ckpt"), forbid=("work/runs/**/adapter",),
         allow_artifacts=True, needles=("SIGTERM",), timeout=300)
    case("cli-sigint-mid-fit", cat, "SIGINT (Ctrl-C) once the first last.ckpt exists", fit(
        "--trainer.max_steps", "-1", "--trainer.max_epochs", "1000"), rc=(1, 130),
         signal_after=("SIGINT", "work/runs/**/last.ckpt"), forbid=("work/runs/**/adapter",),
         allow_artifacts=True, needles=("SIGINT|interrupt",), timeout=300)

    # ==== data: classification tables (Python API, labels inferred) =================================================
    cat = "data-table"
    for name, file, body, needles, kwargs in (
            ("text-column-missing", "t.csv", "sentence,label\nthe bank,neutral\n", ("'text'",), {}),
            ("label-column-missing", "t.csv", "text,category\nthe bank,neutral\n", ("'label'",), {}),
            ("duplicated-header-csv", "t.csv", "text,label,label\nthe bank,neutral,positive\n", ("label",), {}),
            ("duplicated-header-tsv", "t.tsv", "text\tlabel\tlabel\nthe bank\tneutral\tpositive\n", ("label",), {}),
            ("duplicated-text-header", "t.csv", "text,text,label\na,b,neutral\n", ("text",), {}),
            ("duplicated-key-jsonl", "t.jsonl", '{"text": "a", "label": "x", "label": "neutral"}\n', ("label",), {}),
            ("nan-label", "t.csv", "text,label\nthe bank,neutral\nprofit,nan\n", ("line 3",), {}),
            ("na-label", "t.csv", "text,label\nthe bank,neutral\nprofit,N/A\n", ("line 3",), {}),
            ("null-label-jsonl", "t.jsonl", '{"text": "a", "label": "neutral"}\n{"text": "b", "label": null}\n',
             ("line 2",), {}),
            ("empty-label", "t.csv", "text,label\nthe bank,neutral\nprofit,\n", ("line 3",), {}),
            ("list-label-jsonl", "t.jsonl", '{"text": "a", "label": "neutral"}\n{"text": "b", "label": ["x"]}\n',
             ("line 2",), {}),
            ("dict-label-jsonl", "t.jsonl", '{"text": "a", "label": "neutral"}\n{"text": "b", "label": {"n": 1}}\n',
             ("line 2",), {}),
            ("list-text-jsonl", "t.jsonl", '{"text": ["a", "b"], "label": "neutral"}\n', ("line 1",), {}),
            ("number-label-and-names-mixed", "t.csv", "text,label\na,neutral\nb,1\n", ("line 3|'1'",),
             {"label_names": LABELS}),
            ("label-index-out-of-range", "t.csv", "text,label\na,0\nb,1\nc,7\n", ("line 4",),
             {"label_names": LABELS}),
            ("label-index-negative", "t.csv", "text,label\na,0\nb,-1\n", ("line 3",), {"label_names": LABELS}),
            ("whitespace-text", "t.csv", "text,label\n   ,neutral\n", ("line 2",), {}),
            ("empty-file", "t.csv", "", ("t.csv",), {}),
            ("header-only", "t.csv", "text,label\n", ("t.csv",), {}),
            ("wrong-extension-xlsx", "t.xlsx", GOOD_CSV, (".xlsx",), {}),
            ("wrong-extension-txt", "t.txt", GOOD_CSV, (".txt",), {}),
            ("binary-file", "t.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" * 20, ("t.csv",), {}),
            ("latin1-encoding", "t.csv", "text,label\ncaf\xe9 profit,neutral\n".encode("latin-1"), ("UTF-8|encod",),
             {}),
            ("utf16-encoding", "t.csv", GOOD_CSV.encode("utf-16"), ("UTF-8|UTF-16|encod",), {}),
            ("unterminated-quote", "t.csv", 'text,label\n"the bank rose,positive\nprofit fell,negative\n',
             ("quot",), {}),
            ("extra-field-in-row", "t.csv", "text,label\nthe bank,neutral\nprofit,rose,positive\n", ("line 3",), {}),
            ("missing-field-in-row", "t.csv", "text,label\nthe bank,neutral\nprofit\n", ("line 3",), {}),
            ("semicolon-delimited", "t.csv", "text;label\nthe bank;neutral\n", ("text",), {}),
            ("jsonl-bad-line", "t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": \n',
             ("line 3",), {}),
            ("jsonl-line-is-list", "t.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n', ("line 2",), {}),
            ("jsonl-deeply-nested-line", "t.jsonl", '{"text": "a", "label": "x"}\n' + "[" * 100_000 + "]" * 100_000
             + "\n", ("line 2",), {}),
            ("json-array-file", "t.json", json.dumps([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}],
                                                     indent=2), ("t.json",), {}),
            ("label-names-duplicated", "t.csv", GOOD_CSV, ("label_names",), {"label_names": ["a", "a"]}),
            ("validation-fraction-over-one", "t.csv", GOOD_CSV, ("validation_fraction",),
             {"validation_fraction": 1.5})):
        case(f"data-{name}", cat, f"{file}: {name.replace('-', ' ')}", table(file, **kwargs), write(file, body),
             needles=needles)
    case("data-duplicated-header-parquet", cat, "t.parquet with two 'label' columns", table("t.parquet"),
         lambda t: write_parquet(t / "t.parquet", "dup"), needles=("label",))
    case("data-parquet-list-labels", cat, "t.parquet whose labels are lists", table("t.parquet"),
         lambda t: write_parquet(t / "t.parquet", "list"), needles=("label",))
    case("data-parquet-binary-text", cat, "t.parquet whose text column holds non-UTF-8 bytes", table("t.parquet"),
         lambda t: write_parquet(t / "t.parquet", "binary"), needles=("text",))
    case("data-parquet-corrupt", cat, "t.parquet that is not parquet", table("t.parquet"),
         write("t.parquet", GOOD_CSV), needles=("t.parquet",))
    case("data-label-typo-right-line", cat, "BOM, a 3-line quoted field, blank lines; typo 'postive' on line 8",
         table("t.csv", label_names=LABELS),
         write("t.csv", '\ufefftext,label\n"the bank\nsaid\nprofit",neutral\n\nprofit rose,positive\n\n'
                        'sales,postive\n'),
         needles=("line 8", "postive"))
    case("data-unknown-label-in-test", cat, "test_file with a label not in label_names",
         table("t.csv", test_file="test.csv", label_names=LABELS), write("t.csv", GOOD_CSV),
         write("test.csv", "text,label\nthe bank,neutral\nprofit,bullish\n"), needles=("test.csv", "bullish"))
    case("data-label-only-in-validation", cat, "inferred labels; validation has a class training lacks",
         table("t.csv", validation_file="val.csv"), write("t.csv", GOOD_CSV),
         write("val.csv", "text,label\nthe bank,neutral\nprofit,mixed\n"), needles=("val.csv", "mixed"))
    case("data-empty-validation-split", cat, "validation_file with a header only",
         table("t.csv", validation_file="val.csv"), write("t.csv", GOOD_CSV), write("val.csv", "text,label\n"),
         needles=("val.csv",))
    case("data-200k-character-field", cat, "a 210,000-character text field (valid CSV), read whole",
         "from lightning_adapters import TextClassificationDataModule\n"
         "data = TextClassificationDataModule(train_file='t.csv', validation_fraction=0, test_fraction=0)\n"
         "assert len(data.splits['train'][0][0]) == 210_000, 'the long field was not read whole'\n",
         write("t.csv", "text,label\n" + "profit " * 30_000 + ",neutral\nthe bank,positive\n"),
         expect="accept")
    case("data-200k-field-via-cli", cat, "fit on a train file with a 210,000-character sentence (valid CSV)",
         fit("--data.init_args.train_file", "{tmp}/t.csv", "--data.init_args.test_fraction", "0"),
         write("t.csv", "sentence,label\n" + "profit " * 30_000 + ",neutral\n" + "".join(
             f"the bank {i},{LABELS[i % 3]}\n" for i in range(30))), expect="accept")

    # ==== data: through the CLI (real packs) ========================================================================
    cat = "data-cli"
    case("data-cli-unknown-label-in-validation", cat, "--data.init_args.validation_file with 'postive' on line 3",
         fit("--data.init_args.validation_file", "{tmp}/val.csv"),
         write("val.csv", "sentence,label\nthe bank,neutral\nprofit rose,postive\n"), needles=("line 3", "postive"))
    case("data-cli-validation-file-missing", cat, "--data.init_args.validation_file nope.csv",
         fit("--data.init_args.validation_file", "{tmp}/nope.csv"), needles=("nope.csv",))
    case("data-cli-predict-file-empty", cat, "predict --data.init_args.predict_file <0 bytes>",
         evaluate("predict", "--ckpt_path", LAST, "--data.init_args.predict_file", "{tmp}/rows.csv"),
         write("rows.csv", ""), needles=("rows.csv",))
    case("data-cli-data-dir-nowhere", cat, "phrasebank.yaml with --data.init_args.data_dir /nonexistent",
         fit("--data.init_args.data_dir", "/nonexistent/fpb", config=PHRASEBANK),
         needles=("/nonexistent/fpb",))
    case("data-cli-data-dir-is-file", cat, "phrasebank.yaml with data_dir pointing at a file",
         fit("--data.init_args.data_dir", "{tmp}/f.txt", config=PHRASEBANK),
         write("f.txt", "x"), needles=("f.txt",))
    case("data-cli-data-dir-empty", cat, "phrasebank.yaml with data_dir an empty folder",
         fit("--data.init_args.data_dir", "{tmp}/fpb", config=PHRASEBANK),
         mkdir("fpb"), needles=("sentences_allagree|fpb",))
    case("data-cli-env-unset", cat, "phrasebank.yaml with LIGHTNING_ADAPTERS_DATA unset",
         fit(config=PHRASEBANK), unset_env=("LIGHTNING_ADAPTERS_DATA",),
         needles=("LIGHTNING_ADAPTERS_DATA",))
    case("data-cli-env-empty-folder", cat, "banking77.yaml with LIGHTNING_ADAPTERS_DATA an empty folder",
         fit(config=str(REPO / "configs/customer_service/banking77.yaml")), mkdir("data"),
         env={"LIGHTNING_ADAPTERS_DATA": "{tmp}/data"}, needles=("banking77",))
    case("data-cli-phrasebank-txt-no-at", cat, "an original-format .txt train file with a line lacking '@'",
         fit("--data.init_args.train_file", "{tmp}/s.txt"),
         write("s.txt", "the bank rose@positive\nprofit fell negative\n"), needles=("line 2",))
    case("data-cli-ner-bad-conll", cat, "finance_ner with data_dir whose train.txt has a line without a tag",
         fit("--data.init_args.data_dir", "{tmp}/ner", config=str(REPO / "configs/finance_ner/lora.yaml")),
         write("ner/train.txt", "Alderwood B-ORG\nCapital\nrose O\n"), write("ner/test.txt", CONLL),
         needles=("line 2",))
    case("data-cli-squad-answer-outside", cat, "squad config with a train file whose answer_start is past the context",
         fit("--data.init_args.train_file", "{tmp}/train.json", config=str(REPO / "configs/squad/bottleneck.yaml")),
         write("train.json", squad([{"text": "1871", "answer_start": 500}])), needles=("answer",))

    # ==== data: NER (CoNLL) and QA (SQuAD) ============================================================================
    cat = "data-ner"
    for name, body, needles, extra in (
            ("no-tag-column", "Alderwood B-ORG\nCapital\nrose O\n", ("line 2",), {}),
            ("bad-tag-prefix", "Alderwood X-ORG\nrose O\n", ("line 1|X-ORG",), {}),
            ("empty-entity-type", "Alderwood B-\nrose O\n", ("line 1|B-",), {}),
            ("empty-file", "", ("train.txt",), {}),
            ("docstart-only", "-DOCSTART- -X- -X- O\n\n", ("train.txt",), {}),
            ("binary", "\x00\x01\x02\xff".encode("latin-1") * 50, ("train.txt",), {}),
            ("latin1", "Z\xfcrich B-LOC\nrose O\n".encode("latin-1"), ("UTF-8|encod",), {}),
            ("tag-column-out-of-range", CONLL, ("tag_column|column",), {"tag_column": 5})):
        kwargs = {"train_file": "train.txt", **extra}
        case(f"ner-{name}", cat, f"CoNLL train.txt: {name.replace('-', ' ')}", ner(**kwargs), write("train.txt", body),
             needles=needles)
    case("ner-unseen-type-in-validation", cat, "validation has B-MONEY, training has no MONEY",
         ner(train_file="train.txt", validation_file="val.txt"), write("train.txt", CONLL),
         write("val.txt", "Paris B-LOC\ncost O\nfive B-MONEY\n"), needles=("MONEY",))
    case("ner-predict-file-missing", cat, "predict_file nope.txt", ner(train_file="train.txt", predict_file="nope.txt"),
         write("train.txt", CONLL), needles=("nope.txt",))
    cat = "data-qa"
    for name, body, needles in (
            ("answer-outside-context", squad([{"text": "1871", "answer_start": 500}]), ("answer",)),
            ("answer-text-mismatch", squad([{"text": "1871", "answer_start": 4}]), ("answer|1871",)),
            ("answer-start-string", squad([{"text": "1871", "answer_start": "35"}]), ("answer_start",)),
            ("answer-start-negative", squad([{"text": "1871", "answer_start": -5}]), ("answer",)),
            ("missing-question", squad(question=None), ("question",)),
            ("root-is-list", json.dumps([1, 2]), ("train.json",)),
            ("no-data-key", json.dumps({"version": "1.1"}), ("data",)),
            ("invalid-json", '{"data": [', ("train.json",)),
            ("no-answers-in-training", squad(answers=[]), ("answer",))):
        case(f"qa-{name}", cat, f"SQuAD train.json: {name.replace('-', ' ')}", qa(), write("train.json", body),
             needles=needles)

    # ==== data: generation packs ====================================================================================
    cat = "data-generation"
    case("gen-summarization-source-missing", cat, "summarization train file without the source column",
         "from lightning_adapters import SummarizationDataModule\n"
         "SummarizationDataModule(tokenizer='minilm', train_file='t.jsonl', validation_fraction=0, test_fraction=0)\n",
         write("t.jsonl", '{"dialogue": "a", "summary": "b"}\n'), needles=("source",))
    case("gen-dialogue-messages-not-list", cat, "dialogue file whose messages cell is a number",
         "from lightning_adapters import DialogueDataModule\n"
         "DialogueDataModule(tokenizer='minilm', train_file='t.jsonl', validation_fraction=0, test_fraction=0)\n",
         write("t.jsonl", '{"messages": 5}\n'), needles=("messages", "line 1"))
    case("gen-dialogue-roles-out-of-order", cat, "dialogue whose turns are assistant, assistant",
         "from lightning_adapters import DialogueDataModule\n"
         "DialogueDataModule(tokenizer='minilm', train_file='t.jsonl', validation_fraction=0, test_fraction=0)\n",
         write("t.jsonl", json.dumps({"messages": [{"role": "assistant", "content": "hi"},
                                                   {"role": "assistant", "content": "again"}]}) + "\n"),
         needles=("line 1",))

    # ==== many adapters on one base: continual learning, mixed batches, composition =================================
    cat = "many-adapters"
    module = ("from lightning_adapters import AdapterModule, Lora, ClassificationHead\n"
              "m = AdapterModule('minilm', strategy=Lora(), label_names=['a', 'b'])\n")
    case("continual-adapters-not-a-folder", cat, "--model.init_args.adapters naming a folder that does not exist",
         fit("--model.init_args.adapters", '{"sentiment": "nowhere"}'), needles=("not a folder",))
    case("continual-adapter-named-default", cat, "an earlier adapter listed under the name 'default'",
         fit("--model.init_args.adapters", '{"default": "adapter"}'), adapter, needles=("'default'",))
    case("continual-init-from-unknown", cat, "--model.init_args.init_from naming no loaded adapter",
         fit("--model.init_args.init_from", "sentiment"), needles=("init_from",))
    case("continual-adapter-other-base", cat, "an earlier adapter whose base-model fingerprint differs",
         fit("--model.init_args.adapters", '{"sentiment": "adapter"}'), adapter,
         edit_json(A, base_model={"weights": "x"}), needles=("fingerprint|base model",))
    case("continual-adapter-truncated", cat, "an earlier adapter whose weights file is cut in half",
         fit("--model.init_args.adapters", '{"sentiment": "adapter"}'), adapter, truncate(W, 0.5),
         needles=("safetensors",))
    case("continual-full-fine-tuning", cat, "full fine-tuning beside an earlier adapter (it would forget)",
         fit("--model.init_args.adapters", '{"sentiment": "adapter"}', "--model.init_args.strategy",
             "lightning_adapters.FullFineTuning"), adapter, needles=("forget",))
    case("mixed-batch-unknown-adapter", cat, "a batch naming an adapter the module does not have",
         module + "m({'input_ids': __import__('torch').ones(2, 3, dtype=__import__('torch').long), "
                  "'attention_mask': __import__('torch').ones(2, 3), 'adapter_names': ['default', 'intent']})\n",
         needles=("intent",))
    case("mixed-batch-names-per-row", cat, "a batch whose adapter_names has fewer names than rows",
         module + "m({'input_ids': __import__('torch').ones(2, 3, dtype=__import__('torch').long), "
                  "'attention_mask': __import__('torch').ones(2, 3), 'adapter_names': ['default']})\n",
         needles=("one adapter name per row",))
    case("compose-fuse-lora", cat, "AdapterFusion over LoRA adapters",
         module + "from lightning_adapters import AdapterFusion\nm.add_adapter('b', Lora(), ClassificationHead(), "
                  "['a', 'b'])\nm.add_adapter('f', AdapterFusion(['default', 'b']), ClassificationHead(), "
                  "['a', 'b'])\n",
         needles=("bottleneck",))
    case("compose-merge-bottleneck", cat, "add_weighted_adapter over a bottleneck adapter",
         module + "from lightning_adapters import Bottleneck\nm.add_adapter('b', Bottleneck(), ClassificationHead(), "
                  "['a', 'b'])\nm.add_weighted_adapter(['default', 'b'], adapter_name='avg')\n",
         needles=("not LoRA",))
    case("compose-duplicate-name", cat, "add_adapter with a name already taken",
         module + "m.add_adapter('default', Lora(), ClassificationHead(), ['a', 'b'])\n", needles=("already exists",))
    multitask = str(REPO / "configs/multitask/sentiment_intent.yaml")
    case("multitask-tasks-unmatched", cat, "a model whose adapters are not named as the data's tasks",
         fit("--model.init_args.adapter_name", "default", config=multitask), needles=("name the model's own",))
    case("multitask-task-given-twice", cat, "a model task with the name of the module's own adapter",
         fit("--model.init_args.adapter_name", "intent", config=multitask), needles=("given twice",))
    case("multitask-rows-of-different-kinds", cat, "mix: rows over a classification task and an NER task",
         fit("--data.init_args.tasks.intent", "lightning_adapters.tasks.conll2003.Conll2003DataModule",
             config=multitask), needles=("mix: batches",))
    case("multitask-unknown-sampling", cat, "an unknown task-sampling rule",
         fit("--data.init_args.sampling", "balanced", config=multitask), needles=("unknown sampling",))


def yaml_bomb() -> str:
    lines = ['lol0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"lol{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def write_parquet(path: Path, kind: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    if kind == "dup":
        tbl = pa.Table.from_arrays([pa.array(["a", "b"]), pa.array(["x", "y"]), pa.array(["y", "x"])],
                                   names=["text", "label", "label"])
    elif kind == "list":
        tbl = pa.table({"text": ["a", "b"], "label": [["x"], ["y"]]})
    else:
        tbl = pa.table({"text": pa.array([b"\xff\xfe", b"ok"], pa.binary()), "label": ["x", "y"]})
    pq.write_table(tbl, path)


def truncate_copy_gguf(path: Path) -> None:
    from lightning_adapters.backbone import resolve
    source = resolve("smollm2")
    with open(Path(source.path) / source.gguf_file, "rb") as f:
        path.write_bytes(f.read(2 * 2**20))


# ---- fixtures -----------------------------------------------------------------------------------------------------
FIXTURE_CODE = r'''
import json, os, shutil
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModel, BertConfig, MPNetConfig, PreTrainedTokenizerFast
from lightning_adapters import AdapterModule, IA3, Lora, PromptTuning, save_adapter
from lightning_adapters.backbone import resolve
from lightning_adapters.peft_export import export_peft

FIX = Path(os.environ["AUDIT_FIX"])
LABELS = ["negative", "neutral", "positive"]
WORDS = ("the a of to in and is was for on profit loss sales rose fell grew bank card money shares net quarter "
         "year good bad market price up down strong weak results").split()

def tokenizer():
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")

def tiny(config, path):
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer().save_pretrained(path)

small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=64)
tiny(BertConfig(max_position_embeddings=128, **small), FIX / "tiny_bert")
tiny(MPNetConfig(max_position_embeddings=130, **small), FIX / "tiny_mpnet")

remote = FIX / "remote_code"
shutil.copytree(FIX / "tiny_bert", remote)
config = json.loads((remote / "config.json").read_text())
config.update(model_type="my-bert",
              auto_map={"AutoConfig": "modeling_mine.MyConfig", "AutoModel": "modeling_mine.MyModel"})
(remote / "config.json").write_text(json.dumps(config))
(remote / "modeling_mine.py").write_text("import os\nopen(os.environ['AUDIT_MARKER'], 'w').close()\n"
                                         "raise RuntimeError('this code must not run')\n")

minilm = Path(resolve("minilm").path)
perturbed = FIX / "perturbed_minilm"
perturbed.mkdir()
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    if (minilm / name).is_file():
        shutil.copy2(minilm / name, perturbed / name)
weights = load_file(minilm / "model.safetensors")
generator = torch.Generator().manual_seed(1)
for key, value in weights.items():
    if value.is_floating_point() and value.dim() >= 2:
        weights[key] = value + 0.05 * value.float().std() * torch.randn(value.shape, generator=generator)
save_file(weights, perturbed / "model.safetensors", metadata={"format": "pt"})

lora = AdapterModule("minilm", strategy=Lora(r=2), label_names=LABELS)
save_adapter(lora, FIX / "lora_adapter")
export_peft(lora, FIX / "peft_lora")
export_peft(AdapterModule("minilm", strategy=IA3(), label_names=LABELS), FIX / "peft_ia3")
export_peft(AdapterModule("minilm", strategy=PromptTuning(num_virtual_tokens=4), label_names=LABELS),
            FIX / "peft_prompt")

from peft import LoraConfig, get_peft_model
get_peft_model(AutoModel.from_pretrained(FIX / "tiny_bert"), LoraConfig(r=2, target_modules=["query", "value"])
               ).save_pretrained(FIX / "native_peft_tiny")
get_peft_model(AutoModel.from_pretrained(minilm), LoraConfig(r=2, target_modules=["query", "value"])
               ).save_pretrained(FIX / "native_peft_other")
path = FIX / "native_peft_other" / "adapter_config.json"
config = json.loads(path.read_text())
config["base_model_name_or_path"] = "someorg/other-model"
path.write_text(json.dumps(config))

class Payload:
    def __reduce__(self):
        return (os.system, ('touch "$AUDIT_MARKER"',))

torch.save({"state_dict": {}, "payload": Payload(), "pytorch-lightning_version": "2.6.6"}, FIX / "evil.ckpt")
torch.save({"foo": 1}, FIX / "notlightning.ckpt")
shutil.copytree(FIX / "run0/lightning_logs/version_0/adapter", FIX / "adapter")
print("fixtures ready")
'''


# ---- running one case -------------------------------------------------------------------------------------------
def subst(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{fix}", str(FIX)).replace("{repo}", str(REPO))


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 (files), 'link:<target>' (symlinks, never followed), 'dir' (folders)."""
    found = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "dir"
            else:
                try:
                    digest = hashlib.sha256()
                    with open(path, "rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            digest.update(block)
                    found[rel] = digest.hexdigest()
                except OSError as err:
                    found[rel] = f"unreadable:{err.errno}"
    return found


def run_py(code: str, result_path: str) -> int:
    """Run case code; a ValueError (UserInputError) is reported like the CLI does, anything else as a traceback."""
    record = {"exception": None, "message": None, "user_input_error": False, "value_error": False, "warnings": []}

    def show(message, category, filename, lineno, file=None, line=None):
        text = f"{category.__name__}: {message}"
        record["warnings"].append(text)
        print(f"warning: {text}", file=sys.stderr)

    warnings.showwarning = show
    warnings.simplefilter("default")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        exec(compile(code, "<case>", "exec"), {"__name__": "__main__"})
    except Exception as err:  # noqa: BLE001
        from lightning_adapters import UserInputError
        record.update(exception=f"{type(err).__module__}.{type(err).__qualname__}", message=str(err),
                      user_input_error=isinstance(err, UserInputError), value_error=isinstance(err, ValueError))
        Path(result_path).write_text(json.dumps(record))
        if isinstance(err, ValueError):
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
            return 2
        traceback.print_exc()
        return 1
    Path(result_path).write_text(json.dumps(record))
    return 0


def child_setup(c: Case, casedir: Path, work: Path) -> None:
    """In the case's process, before its command: limits and user."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    if c.fsize is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (c.fsize, c.fsize))


def case_env(c: Case, casedir: Path, work: Path) -> dict[str, str]:
    env = {**os.environ, **ENV, "AUDIT_MARKER": str(casedir / "marker"), "LIGHTNING_ADAPTERS_DATA": "/work/shared/data"}
    env.update({k: subst(v, work) for k, v in c.env.items()})
    for key in c.unset_env:
        env.pop(key, None)
    return env


def start(c: Case, casedir: Path, work: Path, use_fork: bool) -> int:
    """Start the case's process; returns its pid (its own process group)."""
    out, err = str(casedir / "stdout.txt"), str(casedir / "stderr.txt")
    env = case_env(c, casedir, work)
    result = str(casedir / "result.json")
    if c.kind == "py":
        (casedir / "case.py").write_text(subst(c.run, work))
    if use_fork and not c.fresh:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            os.setpgid(0, 0)
            os.chdir(work)
            for fd, path in ((1, out), (2, err)):
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                os.dup2(handle, fd)
                os.close(handle)
            os.environ.clear()
            os.environ.update(env)
            child_setup(c, casedir, work)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if c.kind == "py":
                code = run_py((casedir / "case.py").read_text(), result)
            else:
                sys.argv = ["lightning-adapters", *[subst(a, work) for a in c.run]]
                from lightning_adapters.cli import main
                try:
                    main()  # as the console script calls it: the arguments come from sys.argv
                    code = 0
                except SystemExit as exit_:
                    if exit_.code is None:
                        code = 0
                    elif isinstance(exit_.code, int):
                        code = exit_.code
                    else:
                        print(exit_.code, file=sys.stderr)
                        code = 1
                except KeyboardInterrupt:
                    traceback.print_exc()
                    code = 130
                except BaseException:  # noqa: BLE001 — what the interpreter would print
                    traceback.print_exc()
                    code = 1
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            try:
                atexit._run_exitfuncs()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    import subprocess
    if c.kind == "py":
        argv = [PYTHON, str(Path(__file__).resolve()), "--_run-py", str(casedir / "case.py"), result]
    else:
        argv = [CONSOLE, *[subst(a, work) for a in c.run]]
    with open(out, "w") as o, open(err, "w") as e:
        job = subprocess.Popen(argv, cwd=work, env=env, stdout=o, stderr=e, start_new_session=True,
                               preexec_fn=lambda: child_setup(c, casedir, work))
    return job.pid


def shell_command(c: Case, work: Path) -> str:
    env = " ".join(f"{k}={shlex.quote(subst(v, work))}" for k, v in c.env.items())
    unset = " ".join(f"-u {k}" for k in c.unset_env)
    prefix = ""
    if c.fsize:
        prefix += f"ulimit -f {c.fsize // 1024}; "
    if env or unset:
        prefix += f"env {unset} {env} ".replace("  ", " ")
    if c.kind == "cli":
        return prefix + "lightning-adapters " + " ".join(shlex.quote(subst(a, work)) for a in c.run)
    return prefix + "python - <<'EOF'\n" + subst(c.run, work) + "EOF"


@dataclass
class Running:
    case: Case
    pid: int
    casedir: Path
    work: Path
    before: dict[str, str]
    started: float
    signalled: bool = False
    status: int | None = None
    timed_out: bool = False


def judge(r: Running) -> dict:
    c, work = r.case, r.work
    out = (r.casedir / "stdout.txt").read_text(errors="replace")
    err = (r.casedir / "stderr.txt").read_text(errors="replace")
    record = json.loads((r.casedir / "result.json").read_text()) if (r.casedir / "result.json").is_file() else {}
    rc = r.status
    lines = [line for line in err.splitlines() if line.strip()]
    problems: list[str] = []
    if r.timed_out:
        problems.append(f"no answer within {c.timeout} s (killed): a hang")
    if "Traceback (most recent call last)" in err:
        problems.append("a Python traceback was printed")
    if c.kind == "py":
        message = record.get("message") or ""
        error_lines = message.splitlines() or [""]
        shown = error_lines[0] if record.get("exception") else ""
    else:
        idx = max((i for i, line in enumerate(lines) if ERROR_LINE.match(line)), default=None)
        shown = lines[idx] if idx is not None else (lines[-1] if lines else "")
        message = lines[-1] if lines else ""
    refused = rc not in (0, None)
    if not refused:
        shown = ""  # an accepted run has no error line
    if c.expect in ("refuse", "either") and refused and not r.timed_out:
        if c.kind == "py":
            if not record.get("exception"):
                problems.append(f"exit {rc} without an exception record")
            else:
                if not record.get("user_input_error"):
                    problems.append(f"raised {record['exception']}, not UserInputError")
                if len(error_lines) > 1:
                    problems.append(f"the message spans {len(error_lines)} lines")
        else:
            if rc not in (c.rc if isinstance(c.rc, tuple) else (c.rc,)):
                problems.append(f"exit status {rc} (expected {c.rc})")
            if idx is None:
                problems.append("no 'error:' line on stderr")
            else:
                after = len(lines) - 1 - idx
                if after:
                    problems.append(f"the error continues over {after} more lines (the last line is not the error)")
                usage = next((i for i, line in enumerate(lines[: idx]) if line.startswith("usage:")), None)
                if usage is not None and idx - usage > 3:
                    problems.append(f"{idx - usage} lines of usage before the error line")
        missing = [n for n in c.needles if not any(alt.lower() in message.lower() for alt in n.split("|"))]
        if missing:
            problems.append(f"the message does not name the problem (expected {' and '.join(map(repr, missing))})")
        if not FIX_RE.search(message.split("error:", 1)[-1]):
            problems.append("the message names no fix")
    elif c.expect == "refuse" and not r.timed_out:
        problems.append("accepted (exit 0): the bad input was not refused")
    elif c.expect == "accept" and not r.timed_out:
        if rc != 0:
            problems.append(f"refused valid input (exit {rc}): {message[:200]}")
        elif c.check:
            problem = c.check(work, out, err, record)
            if problem:
                problems.append(problem)
    elif c.expect == "warn" and not r.timed_out:
        if rc != 0:
            problems.append(f"refused (exit {rc}) where a warning was promised")
        else:
            warned = record.get("warnings", []) if c.kind == "py" else lines
            if not any(all(any(a.lower() in w.lower() for a in n.split("|")) for n in c.needles) for w in warned):
                problems.append(f"no warning naming {c.needles}")
            else:
                shown = next(w for w in warned if all(any(a.lower() in w.lower() for a in n.split("|"))
                                                      for n in c.needles))
    # ---- nothing lost, nothing half-written, no payload -------------------------------------------------------
    if (r.casedir / "marker").exists():
        problems.append("a payload ran (the marker file was created)")
    after = snapshot(work)
    changed = [p for p, digest in r.before.items() if after.get(p) != digest
               and not any(fnmatch.fnmatch(p, g) for g in c.may_change)]
    if changed:
        problems.append(f"existing files changed or removed: {changed[:4]}")
    new = sorted(set(after) - set(r.before))
    leftovers = [p for p in new if LEFTOVER.search(p)]
    if leftovers:
        problems.append(f"half-written files left: {leftovers[:4]}")
    for p in new:
        if after[p] == "dir":
            names = {q.rsplit("/", 1)[-1] for q in after if q.startswith(p + "/") and q.count("/") == p.count("/") + 1}
            if len(names & {"adapter_config.json", "adapter_model.safetensors"}) == 1:
                problems.append(f"half-written adapter folder: {p}")
    if c.expect == "refuse" and not c.allow_artifacts:
        artifacts = [p for p in new if p.endswith((".ckpt", "adapter_model.safetensors"))]
        if artifacts:
            problems.append(f"a refused run left checkpoints/adapters: {artifacts[:3]}")
    for pattern in c.forbid:
        hits = [str(p.relative_to(r.casedir)) for p in r.casedir.glob(pattern)]
        if hits:
            problems.append(f"must not exist afterwards: {hits[:3]}")
    return {"case": c.name, "category": c.category, "what": c.what, "expect": c.expect, "kind": c.kind,
            "verdict": "HANDLED" if not problems else "NOT", "problems": problems, "exit_status": rc,
            "seconds": round(time.monotonic() - r.started, 1), "error_line": shown.strip()[:400],
            "exception": record.get("exception"), "warnings": record.get("warnings", [])[:5],
            "stderr_tail": lines[-8:], "new_files": [p for p in new if after[p] != "dir"][:15],
            "command": shell_command(c, work), "folder": str(work)}


# ---- driver -------------------------------------------------------------------------------------------------------
def run_all(cases: list[Case], root: Path, jobs: int, use_fork: bool, quiet: bool = False) -> list[dict]:
    pending, running, results = list(cases), [], []
    while pending or running:
        while pending and len(running) < jobs:
            c = pending.pop(0)
            casedir = root / "cases" / c.name
            shutil.rmtree(casedir, ignore_errors=True)
            work = casedir / "work"
            work.mkdir(parents=True)
            try:
                for step in c.prepare:
                    step(work)
            except Exception as err:  # noqa: BLE001 — a bug of this script, not of the project: say so
                results.append({"case": c.name, "category": c.category, "what": c.what, "verdict": "SETUP-ERROR",
                                "problems": [f"preparing the case failed: {err!r}"], "error_line": "",
                                "command": shell_command(c, work)})
                print(f"SETUP-ERROR {c.name}: {err!r}", flush=True)
                continue
            before = snapshot(work)
            running.append(Running(c, start(c, casedir, work, use_fork), casedir, work, before, time.monotonic()))
        time.sleep(0.1)
        for r in list(running):
            pid, status = os.waitpid(r.pid, os.WNOHANG)
            if pid:
                r.status = os.waitstatus_to_exitcode(status)
                if r.status < 0:  # killed by a signal: the shell's 128 + n
                    r.status = 128 - r.status
                running.remove(r)
                results.append(judge(r))
                if not quiet:
                    res = results[-1]
                    print(f"[{len(results):3d}/{len(cases)}] {res['verdict']:7s} {r.case.name}  ({res['seconds']} s)",
                          flush=True)
                continue
            elapsed = time.monotonic() - r.started
            if r.case.signal_after and not r.signalled:
                name, pattern = r.case.signal_after
                if any(r.casedir.glob(pattern)):
                    time.sleep(1.0)
                    os.kill(r.pid, getattr(signal, name))
                    r.signalled = True
            if elapsed > r.case.timeout:
                r.timed_out = True
                try:
                    os.killpg(r.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    order = {c.name: i for i, c in enumerate(cases)}
    return sorted(results, key=lambda res: order[res["case"]])


def build_fixtures(root: Path, use_fork: bool) -> None:
    global FIX
    FIX = root / "_fixtures"
    if (FIX / "ready").is_file():
        return
    shutil.rmtree(FIX, ignore_errors=True)
    FIX.mkdir(parents=True)
    steps = [Case("_fixture-run0", "fixture", "a 1-step fit", ["fit", "--config", CFG, "--trainer.max_steps", "1",
                                                            "--trainer.limit_val_batches", "1",
                                                            "--trainer.default_root_dir", str(FIX / "run0"),
                                                            "--test_after_fit", "false"], expect="accept"),
             Case("_fixture-build", "fixture", "tiny models, adapters, PEFT folders", FIXTURE_CODE, expect="accept",
                  env={"AUDIT_FIX": str(FIX)}, timeout=600)]
    for step in steps:
        print(f"building fixture: {step.what}", flush=True)
        (res,) = run_all([step], root, 1, use_fork, quiet=True)
        if res["verdict"] != "HANDLED":
            sys.exit(f"fixture {step.name} failed: {res['problems']}\n" + "\n".join(res["stderr_tail"]))
    (FIX / "ready").write_text("ok\n")


def print_table(results: list[dict]) -> None:
    width = max(len(r["case"]) for r in results)
    print(f"\n{'case':{width}s}  {'category':15s}  {'verdict':7s}  first line of the error / problem")
    for r in results:
        line = r["error_line"] or (r["problems"][0] if r["problems"] else "")
        print(f"{r['case']:{width}s}  {r['category']:15s}  {r['verdict']:7s}  {line[:150]}")
        if r["verdict"] != "HANDLED":
            for problem in r["problems"]:
                print(f"{'':{width}s}  {'':15s}  {'':7s}  !! {problem[:200]}")
    handled = sum(r["verdict"] == "HANDLED" for r in results)
    print(f"\nhandled {handled} / {len(results)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", action="append", default=[], help="only cases whose name contains this (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, help="cases at a time (default 2)")
    parser.add_argument("--workdir", default="/tmp/la_bad_inputs", help="scratch folder (fixtures are kept there)")
    parser.add_argument("--subprocess", action="store_true",
                        help="every case in a fresh interpreter / the console script (slower; default: fork)")
    parser.add_argument("--keep", action="store_true", help="keep the case folders")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--confirm", action="store_true",
                        help="rerun every NOT-handled case in a fresh interpreter / the console script and record it")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--_run-py", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._run_py:
        sys.exit(run_py(Path(args._run_py[0]).read_text(), args._run_py[1]))
    define_cases()
    cases = [c for c in CASES if not args.k or any(k in c.name for k in args.k)]
    if args.list:
        for c in cases:
            print(f"{c.name:45s} {c.category:15s} {c.what}")
        print(f"{len(cases)} cases")
        return
    os.environ.update(ENV)
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    use_fork = not args.subprocess
    if use_fork:  # the zygote: every forked case starts with lightning-adapters imported
        import lightning_adapters.cli  # noqa: F401
        import lightning_adapters.peft_export  # noqa: F401
    started = time.monotonic()
    build_fixtures(root, use_fork)
    fixtures = snapshot(FIX)
    results = run_all(cases, root, args.jobs, use_fork)
    if args.confirm and use_fork:
        again = [c for c in cases if any(r["case"] == c.name and r["verdict"] != "HANDLED" for r in results)]
        print(f"confirming {len(again)} NOT-handled cases with fresh processes", flush=True)
        confirmed = {r["case"]: r for r in run_all(again, root, args.jobs, use_fork=False)}
        for r in results:
            if r["case"] in confirmed:
                r["subprocess_verdict"] = confirmed[r["case"]]["verdict"]
                r["subprocess_problems"] = confirmed[r["case"]]["problems"]
                r["subprocess_stderr_tail"] = confirmed[r["case"]]["stderr_tail"]
    if snapshot(FIX) != fixtures:
        print("WARNING: a case changed the shared fixtures; rerun with a fresh --workdir", file=sys.stderr)
    print_table(results)
    wall = round(time.monotonic() - started)
    handled = sum(r["verdict"] == "HANDLED" for r in results)
    import importlib.metadata as md
    versions = {p: md.version(p) for p in ("lightning-adapters", "torch", "lightning", "transformers", "jsonargparse",
                                           "peft", "safetensors")}
    Path(args.out).write_text(json.dumps({"handled": handled, "total": len(results), "wall_seconds": wall,
                                          "mode": "subprocess" if args.subprocess else "fork", "versions": versions,
                                          "cases": results}, indent=1, ensure_ascii=False) + "\n")
    print(f"wall time {wall} s; results in {args.out}")
    if not args.keep:
        shutil.rmtree(root / "cases", ignore_errors=True)


if __name__ == "__main__":
    main()
