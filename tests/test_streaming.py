"""Token streaming of generation adapters (`GenerationHead.stream`, `Predictor.stream`): the pieces join to exactly
the text non-streamed generation gives, on tiny GPT-2, Llama and T5, and every refusal is one line."""

from __future__ import annotations

import pytest
import torch
from test_generation import LM_FAMILIES, lm_dirs  # noqa: F401 — a fixture: tiny LMs with their LM heads
from test_predictor import perturb

from lightning_adapters import AdapterModule, ClassificationHead, Lora, Predictor, UserInputError
from lightning_adapters.data.summarization import SummarizationDataModule
from lightning_adapters.heads.generation import GenerationHead, stripped

SOURCES = ["the company profit rose in the quarter", "bank card cut"]


def summarizer(folder: str, **head) -> Predictor:
    module = perturb(AdapterModule(folder, strategy=Lora(r=2), head=GenerationHead(max_new_tokens=12, **head)))
    return Predictor.from_module(module, data=SummarizationDataModule)


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_streamed_pieces_join_to_the_predicted_text(lm_dirs, family):  # noqa: F811
    predictor = summarizer(lm_dirs[family])
    expected = predictor.predict(SOURCES)
    for source, row in zip(SOURCES, expected, strict=True):
        pieces = list(predictor.stream(source))
        assert "".join(pieces) == row["generated"], (pieces, row)
        assert all(pieces), pieces  # no empty piece is sent
    assert any(len(list(predictor.stream(source))) > 1 for source in SOURCES)  # it streams, not one final piece


def test_sampled_decoding_streams_the_text_predict_gives_with_the_same_seed(lm_dirs):  # noqa: F811
    predictor = summarizer(lm_dirs["gpt2"], do_sample=True, temperature=1.5)
    torch.manual_seed(3)
    expected = predictor.predict(SOURCES[:1])[0]["generated"]
    torch.manual_seed(3)
    assert "".join(predictor.stream(SOURCES[0])) == expected


@pytest.mark.parametrize(("pieces", "joined"), [
    ([" ", "  a", " b ", " ", "c  ", " "], "a b  c"),
    (["\n", "x"], "x"),
    ([" ", " "], ""),
    ([], ""),
])
def test_stripped_trims_the_ends_of_the_joined_text_only(pieces, joined):
    out = list(stripped(pieces))
    assert "".join(out) == joined == "".join(pieces).strip() and all(out)


def test_refusals_are_one_line_and_come_before_anything_runs(lm_dirs, model_dirs):  # noqa: F811
    beams = summarizer(lm_dirs["gpt2"], num_beams=2)
    with pytest.raises(UserInputError, match=r"beam search \(num_beams=2\), which cannot stream"):
        beams.stream(SOURCES[0])
    greedy = summarizer(lm_dirs["gpt2"])
    with pytest.raises(UserInputError, match="stream takes one text or one row"):
        greedy.stream(SOURCES)
    classifier = Predictor.from_module(AdapterModule(model_dirs["bert"], strategy=Lora(r=2),
                                                     head=ClassificationHead(), label_names=["a", "b"]))
    with pytest.raises(UserInputError, match="ClassificationHead does not generate text"):
        classifier.stream("a text")
    with pytest.raises(UserInputError, match="empty"):
        greedy.stream({"source": ""})


def test_an_error_inside_generation_is_raised_to_the_reader_not_a_hang(lm_dirs, monkeypatch):  # noqa: F811
    predictor = summarizer(lm_dirs["gpt2"])

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory in generate")

    monkeypatch.setattr(predictor.module.backbone, "generate", broken)
    with pytest.raises(RuntimeError, match="out of memory in generate"):
        list(predictor.stream(SOURCES[0]))
