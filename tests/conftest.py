"""Hermetic fixtures: tiny random models of every family we support, built from configs, and a local tokenizer.

Nothing is downloaded. Each tiny model is also saved as a normal HF folder (model + tokenizer) so the code paths
users take (`from_pretrained(folder)`) are the ones under test.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

# Before transformers / huggingface_hub are imported: they read these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModel,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    T5Config,
)

# Real public data: $LIGHTNING_ADAPTERS_DATA, else ../shared/data beside the checkout; tests needing it skip without.
DATA_ROOT = Path(os.environ.get("LIGHTNING_ADAPTERS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

WORDS = ("the a an of to in and is was for on with as by at from profit loss sales rose fell grew dropped "
         "company bank card transfer money pin refund cash shares net quarter year good bad neutral market "
         "price up down strong weak results report expects cut raise order contract deal").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>"]
VOCAB_SIZE = 96

_COMMON = dict(vocab_size=VOCAB_SIZE)
CONFIGS = {
    "bert": BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       max_position_embeddings=128, **_COMMON),
    "roberta": RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=130, pad_token_id=0, **_COMMON),
    "distilbert": DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128,
                                   **_COMMON),
    "gpt2": GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **_COMMON),
    "llama": LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, max_position_embeddings=128, **_COMMON),
    "t5": T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0, **_COMMON),
    # not in the default-targets table: exercises the structural fallback
    "mistral": MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=64, max_position_embeddings=128, **_COMMON),
}
FAMILIES = list(CONFIGS)
# Families outside the shared contract suites (FAMILIES), for the tests that cover them (test_coverage_families.py).
# DeBERTa-v3's shape: relative attention with both position terms, shared key projection, log buckets.
MORE_CONFIGS = {
    "deberta-v2": DebertaV2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=128, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                  position_buckets=16, max_relative_positions=-1, share_att_key=True,
                                  position_biased_input=False, norm_rel_ebd="layer_norm", type_vocab_size=0,
                                  **_COMMON),
    "opt": OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32,
                     max_position_embeddings=128, bos_token_id=2, eos_token_id=5, pad_token_id=0, **_COMMON),
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", eos_token="</s>")


def build_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    config = {**CONFIGS, **MORE_CONFIGS}[family]
    model = AutoModel.from_config(copy.deepcopy(config))  # tests may change a config: never share it
    model.eval()
    return model


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    """Every tiny family saved as a HF folder (weights + tokenizer), seeded, built once per session."""
    root = tmp_path_factory.mktemp("tiny_models")
    tok = build_tokenizer()
    dirs = {}
    for family in FAMILIES:
        path = root / family
        build_model(family).save_pretrained(path)
        tok.save_pretrained(path)
        dirs[family] = str(path)
    return dirs


def sample_batch(tokenizer, texts=None) -> dict[str, torch.Tensor]:
    texts = texts or ["the company profit rose in the quarter", "bank card cut", "net sales fell and shares dropped"]
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))
