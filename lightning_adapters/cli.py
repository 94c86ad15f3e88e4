"""``lightning-adapters fit|validate|test|predict --config ...``: LightningCLI wired for adapters.

The DataModule reaches the model only through links: the backbone name picks the tokenizer, and the label names the
DataModule found become the model's (no model ever reads ``trainer.datamodule``). After ``fit`` the best checkpoint's
adapter is exported as a safetensors folder and, with ``--test_after_fit true``, tested. Checkpoints are written
atomically (`AtomicCheckpointIO`) unless the config names its own CheckpointIO plugin.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_adapters.atomic import AtomicCheckpointIO
from lightning_adapters.checkpoint import save_adapter
from lightning_adapters.errors import UserInputError
from lightning_adapters.module import AdapterModule


class AdaptersCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.backbone", "data.init_args.tokenizer")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")
        parser.add_argument("--export_dir", type=str | None, default=None,
                            help="fit: where to write the best adapter folder (default: <log_dir>/adapter)")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="fit: test the best checkpoint when training ends")

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # No CheckpointIO configured (the public property would create the default one): install ours. A user's own
        # plugin — also an explicit TorchCheckpointIO — is kept.
        if trainer.strategy._checkpoint_io is None:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def after_fit(self) -> None:
        trainer, config = self.trainer, self.config_init[self.subcommand]
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if config.get("test_after_fit"):
            trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        elif best:  # Lightning's own restore path: right for every strategy, sharded (FSDP) ones included
            connector = trainer._checkpoint_connector
            connector.resume_start(best)
            connector.restore_model()
            connector.resume_end()
        with self.model.full_weights():  # a collective under FSDP: every rank enters, rank 0 writes
            if trainer.is_global_zero:
                folder = Path(config.get("export_dir") or Path(trainer.log_dir or ".") / "adapter")
                save_adapter(self.model, folder)
                print(f"adapter saved to {folder.resolve()}" + (f" (from best checkpoint {best})" if best else ""))


def main(args: list[str] | None = None) -> None:
    """Console entry point (returns nothing: a returned object would become the process's exit status)."""
    run_cli(args)


def run_cli(args: list[str] | None = None) -> AdaptersCLI:
    """Run the CLI and return it; bad input ends with one line on stderr and exit status 2, not a traceback."""
    try:
        return AdaptersCLI(AdapterModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    args=args, auto_configure_optimizers=False, save_config_kwargs={"overwrite": True})
    except Exception as err:  # noqa: BLE001 — re-raised below unless it is (or wraps) bad user input
        cause = user_input_error(err)
        if cause is None:
            raise
        print(f"lightning-adapters: error: {cause}", file=sys.stderr)
        sys.exit(2)


def user_input_error(err: BaseException | None) -> UserInputError | None:
    """The UserInputError behind ``err``: jsonargparse wraps errors raised while it instantiates classes."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserInputError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":  # python -m lightning_adapters.cli
    main()
