"""One LightningModule for every backbone, strategy and task head.

``AdapterModule`` = frozen HF backbone + trainable strategy layers + trainable task head. Its checkpoints hold only
the trainable weights (plus Lightning's optimizer, scheduler and loop state, and the RNG state for exact resume),
never the frozen base: `state_dict` is filtered to the trainable names (`trainable_names`: the one definition the
optimizer, the parameter count and exports share) and loading checks that exactly those names come back and that the
base model is the one the checkpoint was trained on.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import get_linear_schedule_with_warmup

from lightning_adapters import adapter_folder
from lightning_adapters import backbone as hf
from lightning_adapters.base_fingerprint import check_fingerprint, fingerprint
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads import ClassificationHead, TaskHead
from lightning_adapters.mixed_batches import ROUTE_KEY, MixedBatches, rows_of
from lightning_adapters.named_adapters import DEFAULT, NamedAdapters, TaskAdapter
from lightning_adapters.registry import build_from_config
from lightning_adapters.strategies import Bottleneck, Strategy, export_weights

CHECKPOINT_KEY = "lightning_adapters"


def rng_state() -> dict[str, Any]:
    """The RNG streams dropout and shuffling draw from, as tensors and plain Python values (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # On a GPU, dropout draws from the current device's generator, not the CPU one.
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda, "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "python": random.getstate()}


def all_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order: under DDP the ranks' streams differ (batches of other shapes)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [rng_state()]
    states: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, rng_state())  # every rank builds the checkpoint: no rank waits alone
    return states


def check_optimizer_settings(learning_rate: float, weight_decay: float, warmup_ratio: float) -> None:
    """Refuse settings that would train nothing or diverge, in one line, before any model is loaded."""
    if not (math.isfinite(learning_rate) and learning_rate > 0):  # `not >` also refuses NaN
        raise UserInputError(f"learning_rate must be positive, got {learning_rate} — set e.g. learning_rate: 1e-3")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise UserInputError(f"weight_decay must be >= 0, got {weight_decay} — set e.g. weight_decay: 0.01")
    if not 0 <= warmup_ratio < 1:
        raise UserInputError(f"warmup_ratio (a fraction of the steps) must be in [0, 1), got {warmup_ratio} — set "
                             "e.g. warmup_ratio: 0.1")


def check_continual_settings(adapters: dict[str, str] | None, init_from: str | None, adapter: str | None,
                             own_name: str) -> None:
    """Refuse ``adapters``/``init_from`` settings that cannot work, in one line, before any model is loaded."""
    if init_from is not None and init_from not in (adapters or {}):
        raise UserInputError(f"init_from '{init_from}' is not one of the loaded adapters "
                             f"({', '.join(adapters or {}) or 'none given'}) — list its folder under adapters")
    if init_from is not None and adapter is not None:
        raise UserInputError("give either adapter (this adapter's own saved weights) or init_from (an earlier "
                             "task's), not both")
    for name, folder in (adapters or {}).items():
        if name == own_name:
            raise UserInputError(f"adapters may not use the name '{name}': it is this module's own adapter — "
                                 "name the earlier task, e.g. sentiment: FOLDER")
        if not isinstance(folder, str | os.PathLike) or not Path(folder).is_dir():
            raise UserInputError(f"adapters: '{name}' names {folder!r}, which is not a folder — give the folder "
                                 "an earlier run exported (its <run folder>/adapter)")


def check_task_settings(own_name: str, tasks: dict[str, TaskAdapter], task_labels: dict[str, list[str]] | None,
                        label_names: list[str] | None, adapters: dict[str, str] | None) -> None:
    """Refuse ``tasks``/``task_labels`` that do not describe the same tasks, in one line, before any model loads."""
    ours = [own_name, *tasks]
    clash = sorted((set(tasks) | {own_name}) & set(adapters or {}))
    if own_name in tasks or clash:
        raise UserInputError(f"adapter name '{own_name if own_name in tasks else clash[0]}' is given twice — each "
                             "task's adapter needs its own name")
    if task_labels is None:
        return
    if set(task_labels) != set(ours):
        raise UserInputError(f"the data's tasks are {', '.join(task_labels)}, the model's adapters {', '.join(ours)} "
                             f"— name the model's own adapter (adapter_name) and its tasks as the data's tasks")
    if label_names is not None and list(label_names) != list(task_labels[own_name]):
        raise UserInputError(f"label_names {label_names} clash with the data's labels of task '{own_name}' "
                             f"{task_labels[own_name]} — drop label_names, the data gives them")


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


class AdapterModule(MixedBatches, NamedAdapters, L.LightningModule):
    """Parameter-efficient fine-tuning of a frozen Hugging Face model.

    Args:
        backbone: alias (``minilm``, ``smollm2``), local folder, ``.gguf`` file or hub id of the base model.
        strategy: how the frozen model is made trainable (default: Pfeiffer bottleneck adapters;
            ``FullFineTuning``: the whole base trains, the baseline).
        head: what is predicted (default: sequence classification).
        label_names: label set of the task; the CLI links it from the DataModule.
        label_counts: training rows per label (``label_names`` order), for a head that weighs labels by them
            (``ClassificationHead(class_weights="balanced")``) and was given none; the CLI links it from the DataModule.
        dtype: dtype of the frozen base (``float32``, ``bfloat16``, ``float16``); adapters and head stay fp32.
        learning_rate: AdamW learning rate, used when ``optimizer`` is not given.
        weight_decay: AdamW weight decay, used when ``optimizer`` is not given.
        warmup_ratio: fraction of the training steps with linear warm-up before linear decay to zero.
        optimizer: any optimizer (``class_path`` in YAML) instead of the default AdamW.
        scheduler: any LR scheduler (``class_path`` in YAML) instead of the default warm-up/decay, stepped per step.
        revision: hub revision of the backbone.
        trust_remote_code: run model code shipped with a hub checkpoint (off unless you trust it).
        adapter: start from the weights of an exported adapter folder (same base, strategy, head and labels), e.g.
            to test or predict with it, or to keep training it.
        gradient_checkpointing: recompute the frozen base's activations in backward (less memory, slower steps);
            gradients are unchanged, for every strategy.
        adapters: earlier tasks' exported adapter folders to carry along, ``{name: folder}`` (continual learning):
            each is loaded frozen and switched off before this module's own adapter (``default``) is added, so
            training it leaves theirs bit-identical, and its checkpoints and export are those of a module without
            them. Switch between tasks with `set_active_adapters`.
        init_from: one of ``adapters`` whose weights start this module's own adapter (same strategy settings; the
            head starts fresh): transfer from an earlier task.
        adapter_name: the name of this module's own adapter (``strategy``, ``head``, ``label_names``): in mixed-task
            batches (batch key ``adapter_names``), per-task metric names and export folders.
        tasks: more adapters trained together with the module's own, ``{name: TaskAdapter}`` (multi-task learning on
            mixed-task batches, e.g. from `lightning_adapters.MultiTaskDataModule`); each has its own strategy, head
            and labels; all are trained, checkpointed and exported (one folder each).
        task_labels: the label set of each task, ``{name: labels}``, the module's own included; the CLI links it from
            a `MultiTaskDataModule`, which names the tasks as the model must.
    """

    def __init__(self, backbone: str = "minilm", strategy: Strategy | None = None, head: TaskHead | None = None,
                 label_names: list[str] | None = None, dtype: str | None = None, learning_rate: float = 1e-3,
                 weight_decay: float = 0.01, warmup_ratio: float = 0.1, optimizer: OptimizerCallable | None = None,
                 scheduler: LRSchedulerCallable | None = None, revision: str | None = None,
                 trust_remote_code: bool = False, adapter: str | None = None,
                 gradient_checkpointing: bool = False, label_counts: list[int] | None = None,
                 adapters: dict[str, str] | None = None, init_from: str | None = None,
                 adapter_name: str = DEFAULT, tasks: dict[str, TaskAdapter] | None = None,
                 task_labels: dict[str, list[str]] | None = None) -> None:
        super().__init__()
        check_optimizer_settings(learning_rate, weight_decay, warmup_ratio)
        check_continual_settings(adapters, init_from, adapter, adapter_name)
        check_task_settings(adapter_name, tasks or {}, task_labels, label_names, adapters)
        if task_labels is not None:
            label_names = task_labels[adapter_name]
        self.backbone_name = backbone
        self.strategy = strategy or Bottleneck()
        self.head = head or ClassificationHead()
        if label_counts is not None and getattr(self.head, "label_counts", ...) is None:
            self.head.label_counts = list(label_counts)
        self.label_names = list(label_names) if label_names else None
        if self.label_names and len(set(self.label_names)) != len(self.label_names):
            repeated = sorted({name for name in self.label_names if self.label_names.count(name) > 1})
            raise UserInputError(f"label_names repeat {repeated} — each label must appear once")
        self.dtype_name = dtype
        self.learning_rate, self.weight_decay, self.warmup_ratio = learning_rate, weight_decay, warmup_ratio
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        loaded = hf.load_model(backbone, self.head.auto_class, dtype, revision, trust_remote_code)
        # from_pretrained returns eval mode; fine-tuning keeps the frozen base's dropout active, as HF's Trainer does.
        self.backbone = self.head.prepare_backbone(loaded).train()
        # the identity of the base, which no adapter changes (taken before any is applied: earlier tasks' folders
        # are checked against it); under FSDP the weights are later shards
        self.base_fingerprint = fingerprint(self.backbone)
        self._init_named_adapters(adapter_name)
        self._load_earlier_adapters(adapters or {})  # frozen and off; before ours, so ours keeps its own weight names
        self._apply_default_strategy()
        if gradient_checkpointing:
            hf.enable_gradient_checkpointing(self.backbone)
        tokenizer = hf.load_tokenizer(backbone, revision, trust_remote_code) if self.head.uses_tokenizer else None
        self.head.build(self.backbone.config, self.label_names, tokenizer)
        self._keep_trainable_fp32()  # e.g. full fine-tuning of a bfloat16 base
        self.strict_loading = False  # checkpoints hold trainable weights only; on_load_checkpoint checks the keys
        self.val_metrics = self.head.metrics().clone(prefix="val_")
        self.test_metrics = self.head.metrics().clone(prefix="test_")
        self._init_mixed_batches()
        if tasks:
            self._add_task_adapters(tasks, task_labels or {})
        if adapter is not None:
            adapter_folder.apply_adapter(self, adapter)
        if init_from is not None:
            self.init_adapter_from(init_from)

    # ---- precision policy -------------------------------------------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        """Keep fp32 master weights for adapters and head whatever casts the module.

        ``Trainer(precision="bf16-true"|"16-true")`` (and ``module.half()``/``.to(dtype)``) cast every parameter; the
        frozen base may be low precision (that is the memory saving), but optimizer updates of a few small weights
        vanish in bf16/fp16 rounding. The strategy layers cast activations to their weights' dtype and back, so a
        low-precision base and fp32 adapters mix without dtype errors. Runs before DDP/FSDP wrap and the optimizer.
        """
        module = super()._apply(fn, *args, **kwargs)
        self._keep_trainable_fp32()
        return module

    def _keep_trainable_fp32(self) -> None:
        for _, param in self.trainable_parameters():
            if param.is_floating_point() and param.dtype != torch.float32:
                param.data = param.data.float()

    def configure_model(self) -> None:
        """FSDP2 under Lightning's ``ModelParallelStrategy``: shard each transformer block, the rest of the base, and
        the head over the data-parallel mesh. Parameters are sharded one by one (DTensor), so frozen base weights and
        trainable adapters may share a block; only trainable ones get gradients and optimizer state."""
        mesh = self.device_mesh
        if mesh is None or getattr(self, "_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard

        mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
        for block in hf.transformer_blocks(self.backbone):
            fully_shard(block, mesh=mesh)
        fully_shard(self.backbone, mesh=mesh)
        fully_shard(self.head, mesh=mesh)
        for head in self.extra_heads.values():
            fully_shard(head, mesh=mesh)
        self._sharded = True

    @contextmanager
    def full_weights(self) -> Iterator[None]:
        """Inside: every parameter whole on every rank (FSDP2 all-gathers; a no-op when nothing is sharded). Every
        rank must enter it together — it is a collective."""
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in self.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()

    # ---- what is trainable, and what a checkpoint holds -------------------------------------------------------
    # ONE definition: a weight is trainable iff it requires grad once the strategy is applied (the strategy decides;
    # a user may unfreeze a LayerNorm by hand). The optimizer, the count, `state_dict` and `export_weights` all read
    # it, so nothing optimised is left out of a checkpoint, as it was with a structural list (adapter layers + head).
    # One rule remains: adapter and head weights are not in the base checkpoint, so they must train (`check_trainable`).
    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((name, param) for name, param in self.named_parameters() if param.requires_grad)

    def trainable_names(self) -> list[str]:
        """Every weight that trains: what is optimised, counted, checkpointed and exported."""
        return [name for name, _ in self.trainable_parameters()]

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) numbers of weights."""
        return sum(p.numel() for _, p in self.trainable_parameters()), sum(p.numel() for p in self.parameters())

    def check_trainable(self) -> None:
        """Refuse frozen adapter or head weights (but those of adapters frozen by `train_adapter`): a checkpoint
        would leave them out, and no base model has them."""
        frozen = self.frozen_weights_that_should_train()
        if frozen:
            raise UserInputError(f"{len(frozen)} adapter or head weights are frozen (e.g. '{frozen[0]}'), so no "
                                 "checkpoint could restore them — keep every adapter and head weight trainable")

    def export_weights(self, adapter: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """(strategy config, weights) an adapter export holds: `strategies.export_weights` of the backbone (adapter
        layers in inference form, named as the adapter has them alone on the base; for the default adapter, every
        other trainable base weight too) and the adapter's head, under ``head.``."""
        self.check_trainable()
        adapter = self.own_adapter if adapter is None else adapter
        if adapter == self.own_adapter and not self.extra_adapters:
            config, backbone = export_weights(self.strategy, self.backbone)
        else:
            config, backbone = self.strategy_of(adapter).export_state(self.backbone, adapter)
        state = {f"backbone.{name}": tensor for name, tensor in backbone.items()}
        # parameters, not state_dict(): under FSDP2 state_dict() hands out shards even inside module.full_weights()
        state.update({f"head.{name}": param for name, param in self.head_of(adapter).named_parameters()})
        return config, state

    def train_saved_weights(self, names: Iterable[str]) -> None:
        """Make the frozen base weights among ``names`` trainable: an export holds one only because it was trained
        (a LayerNorm the user unfroze), so the loaded module trains, and saves, what the exported one did."""
        params = dict(self.named_parameters())
        for name in names:
            if name in params and not params[name].requires_grad:
                params[name].requires_grad_(True)
        self._keep_trainable_fp32()

    def state_dict(self, *args, **kwargs) -> dict[str, Any]:
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        keep = {prefix + name for name in self.trainable_names()}
        return type(full)((k, v) for k, v in full.items() if k in keep)

    def check_trainable_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Raise unless ``state`` holds exactly this module's trainable weights, with matching shapes."""
        expected = dict(self.named_parameters())
        names = set(self.trainable_names())
        missing, unexpected = sorted(names - set(state)), sorted(set(state) - names)
        if missing or unexpected:
            raise UserInputError(f"{where} does not match this model: {len(missing)} missing weights "
                                 f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}) — "
                                 "use the same strategy and head settings it was trained with")
        for name in names:
            if tuple(state[name].shape) != tuple(expected[name].shape):
                raise UserInputError(f"{where}: weight '{name}' has shape {tuple(state[name].shape)}, the model "
                                     f"expects {tuple(expected[name].shape)} — use the settings it was trained with")
            if not state[name].is_floating_point():  # load_state_dict would cast integers or booleans silently
                raise UserInputError(f"{where}: weight '{name}' holds {state[name].dtype} values, not floating-point "
                                     "weights — the file is damaged or was not written by a training run")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "base_model": self.base_fingerprint, "label_names": self.label_names,
            # Exact resume: the RNG streams that dropout and data shuffling draw from.
            "rng": all_rng_states(),  # one per rank
        }

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Raise unless ``checkpoint`` was trained on this base with this module's trainable weights."""
        # the fingerprint taken at init: the base is frozen, and under FSDP its weights are now shards
        check_fingerprint(checkpoint[CHECKPOINT_KEY]["base_model"], self.base_fingerprint, "checkpoint")
        if "state_dict" in checkpoint:  # FSDP (ModelParallelStrategy) loads the weights itself and pops them first
            self.check_trainable_state(checkpoint["state_dict"], "checkpoint")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY)
        if meta is None:
            raise UserInputError("checkpoint was not written by lightning-adapters (no adapter metadata) — pass a "
                                 "checkpoint from a lightning-adapters run")
        self.check_checkpoint(checkpoint)
        states = meta.get("rng")
        if states is not None:
            set_rng_state(states[self.global_rank] if self.global_rank < len(states) else states[0])

    def save_adapter(self, folder: str, name: str | None = None) -> None:
        """Export adapter ``name``'s folder (safetensors weights + JSON config); `lightning_adapters.load_adapter`
        reads it."""
        adapter_folder.save_adapter(self, folder, name=name)

    def load_adapter(self, folder: str, name: str, allowed_classes: Iterable[type] = ()) -> None:
        """Add the adapter saved in ``folder`` as adapter ``name`` (frozen and switched off, as `add_adapter`), after
        the same checks as `lightning_adapters.load_adapter`: the base model's fingerprint, the weights' names,
        shapes and dtypes."""
        adapter_folder.add_saved_adapter(self, folder, name, allowed_classes)

    # ---- training --------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> Any:
        """The task head's outputs; for a mixed-task batch or `Parallel` adapters, per adapter (`mixed_forward`)."""
        if ROUTE_KEY in batch or self.parallel:
            return self.mixed_forward(batch)
        return self.task_head(self.backbone, batch)

    def monitor(self) -> tuple[str, str]:
        """The validation metric a run is judged by and its direction (what `lightning_adapters.BestCheckpoint` and
        `lightning_adapters.EarlyStopping` watch unless told another): the task head's (`TaskHead.monitor`); with
        several adapters training, the sum of their losses (``val_loss``), as their metrics differ."""
        return judged_by(self.task_head, several=len(self.trained_adapters) > 1)

    def on_fit_start(self) -> None:
        self.check_trainable()
        self.check_earlier_adapters_kept()
        trainable, total = self.parameter_counts()
        rank_zero_info(f"trainable params: {trainable:,} || all params: {total:,} || "
                       f"trainable%: {100 * trainable / total:.4f}")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if ROUTE_KEY in batch:
            loss = self.mixed_training_loss(batch)
        else:
            self.check_not_parallel("training")
            loss = self.task_head.loss(self(batch), batch)
        # sync_dist: under DDP the logged loss is the global batch's, not rank 0's share (one scalar all-reduce)
        self.log("train_loss", loss, prog_bar=True, batch_size=rows_of(batch), sync_dist=True)
        return loss

    def _eval_step(self, batch: dict[str, Any], metrics, stage: str) -> None:
        if ROUTE_KEY in batch:
            self.mixed_eval_step(batch, stage)
            return
        self.check_not_parallel("validation" if stage == "val" else stage)
        outputs = self(batch)
        self.log(f"{stage}_loss", self.task_head.loss(outputs, batch), prog_bar=True, batch_size=rows_of(batch),
                 sync_dist=True)
        self.task_head.update_metrics(metrics, outputs, batch, self.backbone, stage)

    def _log_metrics(self, metrics, stage: str) -> None:
        """Once per epoch: corpus-level metrics (entity F1, ROUGE, SQuAD) need every batch; compute syncs ranks.
        Mixed batches' per-task metrics too (a task no rank saw is left out)."""
        for collection in [metrics, *self._routed_metrics.get(stage, {}).values()]:
            values = {name: value for name, value in collection.compute().items() if value.numel() == 1}
            self.log_dict(values, prog_bar=collection is metrics)  # global after compute(): no second reduction
            collection.reset()

    def _fresh_metrics(self, metrics, stage: str) -> None:
        """Reset at the start of an evaluation epoch, so the states are made in this loop's grad mode: states reset
        inside ``Trainer.validate`` (inference mode) are inference tensors, which the in-place updates of a later
        fit's validation (no_grad) refuse."""
        for collection in [metrics, *self._routed_metrics.get(stage, {}).values()]:
            collection.reset()

    def on_validation_epoch_start(self) -> None:
        self._fresh_metrics(self.val_metrics, "val")

    def on_test_epoch_start(self) -> None:
        self._fresh_metrics(self.test_metrics, "test")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """One row per example (`mixed_predict` for mixed batches and `Parallel` adapters)."""
        if ROUTE_KEY in batch or self.parallel:
            return self.mixed_predict(batch)
        return self.task_head.predict(self.backbone, batch)

    def configure_optimizers(self):
        params = [param for _, param in self.trainable_parameters()]
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(params)
        else:
            optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        if self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            scheduler = get_linear_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def judged_by(head: TaskHead, several: bool) -> tuple[str, str]:
    """`AdapterModule.monitor` for a module with this task ``head``, training ``several`` adapters or one (also read
    from a config before any module is built: `lightning_adapters.tune`)."""
    if several:
        return "val_loss", "min"
    metric, mode = head.monitor()
    return f"val_{metric}", mode


def load_adapter(folder: str | os.PathLike, backbone: str | None = None, dtype: str | None = None,
                 allowed_classes: Iterable[type] = ()) -> AdapterModule:
    """Rebuild a trained `AdapterModule` from an adapter folder onto a fresh base model.

    Args:
        folder: a folder written by `save_adapter`.
        backbone: the base model to load (default: the one recorded in the folder); it must be the same model.
        dtype: dtype of the frozen base (default: the recorded one).
        allowed_classes: your own strategy or head classes the folder may name, besides ours and those passed to
            `lightning_adapters.register_adapter_class`. Nothing else is built, and no module is ever imported.
    """
    config = adapter_folder.read_adapter_config(folder)
    allowed = list(allowed_classes)
    return AdapterModule(
        backbone=backbone or config["backbone"],
        strategy=build_from_config(config["strategy"], Strategy, "strategy", allowed),
        head=build_from_config(config["head"], TaskHead, "head", allowed),
        label_names=config.get("label_names"),
        dtype=dtype if dtype is not None else config.get("dtype"),
        adapter=str(folder),
    )
