"""AdapterHub's bottleneck adapters, timed like `speed.py`'s methods, in a Python that has `adapters` installed.

`adapters` 1.3 pins transformers ~= 4.57.6 and this project needs transformers 5, so AdapterHub cannot run in the
benchmark's own environment. `speed.py` runs this script with ``--adapterhub-python`` (a virtual environment built by
``make_venv.sh`` beside this file) and hands it the tokenized batch and the MiniLM folder; this process times
AdapterHub's houlsby / pfeiffer / parallel adapters (``DoubleSeqBnConfig`` / ``SeqBnConfig`` / ``ParBnConfig``,
reduction factor 16, ReLU, the parallel one scaled by 4: our `Bottleneck` defaults) with `speed.py`'s protocol and
code (round-robin rounds, process CPU time, memory in forked children) against floors measured in THIS process,
found in the same way (the module where each method's gradient starts), so that the transformers version cancels out.

Only torch and transformers are needed here (not lightning_adapters): the head is a copy of our `ClassificationHead`'s
computation (mask-aware mean pooling, dropout 0.1, Linear, cross-entropy).

    /tmp/venv-adapterhub/bin/python recipes/benchmark/adapterhub/worker.py --model-dir DIR --batch batch.pt \
        --out adapterhub.json [--rounds R --steps S ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import speed  # noqa: E402  (imports only torch at module level: the protocol, floors and memory code)

TAG = speed.ADAPTERHUB_TAG
CONFIGS = {  # method -> (adapters config class, keyword arguments): our Bottleneck's houlsby / pfeiffer / parallel
    "AdapterHub houlsby": ("DoubleSeqBnConfig", {"reduction_factor": 16, "non_linearity": "relu"}),
    "AdapterHub pfeiffer": ("SeqBnConfig", {"reduction_factor": 16, "non_linearity": "relu"}),
    "AdapterHub parallel": ("ParBnConfig", {"reduction_factor": 16, "non_linearity": "relu", "scaling": 4.0}),
}
assert set(CONFIGS) == set(speed.ADAPTERHUB_OURS)


class MeanPoolHead(nn.Module):
    """Our `ClassificationHead(pooling="mean", dropout=0.1)`: mask-aware mean pooling, dropout, Linear, CE loss."""

    def __init__(self, hidden_size: int, num_labels: int) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.1)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, backbone: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        hidden = backbone(**inputs).last_hidden_state
        mask = batch["attention_mask"].to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.classifier(self.drop(pooled))

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["labels"])


def load_plain(model_dir: str) -> nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir)
    model.requires_grad_(False)
    return model


def builder(model_dir: str):
    def build(method: str) -> nn.Module:
        """AdapterHub's ``method`` or a floor (named with the process tag) on the frozen MiniLM, in train() mode."""
        torch.manual_seed(0)
        backbone, gate = load_plain(model_dir), None
        if speed.is_floor(method.removesuffix(TAG)):
            gate = speed.make_floor(backbone, method.removesuffix(TAG))
        else:
            import adapters

            name, kwargs = CONFIGS[method]
            adapters.init(backbone)
            backbone.add_adapter("bottleneck", config=getattr(adapters, name)(**kwargs))
            backbone.train_adapter("bottleneck")  # freezes the model, trains and activates the adapter
        model = speed.Classifier(backbone, MeanPoolHead(backbone.config.hidden_size, len(speed.LABELS)))
        if gate is not None:
            model.gate = gate
        return model.train()

    return build


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="the MiniLM folder (speed.py passes the `minilm` alias's)")
    p.add_argument("--batch", type=Path, required=True, help="torch.save'd batch dict (speed.py's)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--methods", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--cpu", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # adapters 1.3 warns "adapters available but none are activated" on every forward of a BertModel although
    # train_adapter() activated them (hooks on adapter_down fire in all 6 layers): silenced, it is not true here
    logging.getLogger("adapters").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    import adapters
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    cpu_batch = torch.load(args.batch)
    build, lr = builder(args.model_dir), 1e-4
    print("AdapterHub gradient starts (in a child process):", flush=True)
    found = speed.in_fork(lambda: speed.find_floors(args.methods, cpu_batch, build, load_plain(args.model_dir)))
    floor_of = {m: f + TAG for m, f in found.items()}
    floors = [speed.FLOOR + TAG, *dict.fromkeys(f for f in floor_of.values() if f != speed.FLOOR + TAG)]
    methods = [*floors, *args.methods]
    batch = {k: v.to(device) for k, v in cpu_batch.items()}
    memory: dict[str, float | None] = {m: None for m in methods}
    if not args.no_memory and device.type == "cpu":
        for method in methods:
            memory[method] = speed.memory_in_fork(method, batch, lr, args.memory_steps, build)
            print(f"  memory {method}: {memory[method]:.0f} MiB", flush=True)
    runners = [speed.make_runner(m, batch, device, lr, build) for m in methods]
    counts = {r.name: speed.param_counts(r.model) for r in runners}
    times = speed.time_methods(runners, device, args.warmup, args.rounds, args.steps, args.max_minutes)
    configs = "; ".join(f"{m}: {name}({', '.join(f'{k}={v}' for k, v in kw.items())})"
                        for m, (name, kw) in CONFIGS.items() if m in args.methods)
    result = {"versions": f"torch {torch.__version__}, transformers {transformers.__version__}, adapters "
                          f"{adapters.__version__}", "configs": configs, "times": times, "counts": counts,
              "memory": memory, "floor_of": floor_of}
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
