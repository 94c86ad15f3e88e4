"""Training-data augmentation (`lightning_adapters.data.augmentation`): EDA edits seeded by (seed, epoch, row, copy),
identity at probability 0, labels kept, entity spans kept for NER (a property test over 200 seeded sentences in
every scheme), only the training split augmented, the same batches with persistent workers and after a mid-epoch
resume, paraphrases generated once through the Predictor and cached, and the refusals."""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import pytest
from conftest import WORDS
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from seqeval.metrics.sequence_labeling import get_entities
from test_cli import workdir, write_config  # noqa: F401 — workdir is a fixture
from test_generation import lm_dirs, perturb  # noqa: F401 — lm_dirs is a fixture: tiny LMs with their LM heads

from lightning_adapters import AdapterModule, Lora, Predictor, save_adapter
from lightning_adapters.cli import main
from lightning_adapters.data.augmentation import Augmentation, AugmentedRows, check_entities_kept
from lightning_adapters.data.classification import TextClassificationDataModule
from lightning_adapters.data.conll_format import to_iob2
from lightning_adapters.data.loaders import EpochIndexSampler
from lightning_adapters.data.summarization import SummarizationDataModule
from lightning_adapters.data.token_classification import TokenClassificationDataModule
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads.generation import GenerationHead
from lightning_adapters.paraphraser import Paraphraser

LABELS = ["bad", "good", "neutral"]
EDITS = {"swap": 0.3, "delete": 0.3, "insert": 0.3}
PROMPT = "{source}"  # the tiny random GPT-2 generates nothing after most other prompts


def write_rows(path: Path, count: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = ["text,label"] + [f"{' '.join(rng.choices(WORDS, k=rng.randint(3, 9)))},{LABELS[i % 3]}"
                              for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def classification(tmp_path: Path, tokenizer: str, augment: Augmentation | None, rows: int = 24, **options
                   ) -> TextClassificationDataModule:
    files = {split: write_rows(tmp_path / f"{split}.csv", count, seed)
             for split, count, seed in (("train", rows, 0), ("validation", 6, 1), ("test", 6, 2))}
    return TextClassificationDataModule(tokenizer, train_file=files["train"], validation_file=files["validation"],
                                        test_file=files["test"], predict_file=files["test"], max_length=32,
                                        augment=augment, **options)


# ---- token edits -----------------------------------------------------------------------------------------------
def test_edits_are_reproducible_per_seed_epoch_and_row_and_change_across_epochs():
    augment = Augmentation(**EDITS)
    words = "the company profit rose in the quarter and net sales grew".split()
    draws = {(seed, epoch, row): augment.edit_row(words, None, seed, epoch, row, 0)[0]
             for seed in (1, 2) for epoch in range(4) for row in range(3)}
    again = {key: Augmentation(**EDITS).edit_row(words, None, *key, 0)[0] for key in draws}
    assert again == draws  # a fresh object, any order: the same edits
    assert len({tuple(draws[1, epoch, 0]) for epoch in range(4)}) > 1  # other epochs, other edits
    assert len({tuple(draws[seed, 0, row]) for seed in (1, 2) for row in range(3)}) > 1
    assert all(set(draw) <= set(words) for draw in draws.values())  # inserts copy the text's words


def test_zero_probabilities_are_the_identity_and_labels_are_kept(model_dirs, tmp_path):
    plain = classification(tmp_path, model_dirs["bert"], None)
    plain.setup("fit")
    for augment, identical in ((Augmentation(swap=0, delete=0, insert=0, copies=2), True),
                               (Augmentation(**EDITS, copies=2), False)):
        data = classification(tmp_path, model_dirs["bert"], augment)
        data.setup("fit")
        train, rows = data._datasets["train"], plain._datasets["train"]
        assert isinstance(train, AugmentedRows) and len(train) == 3 * len(rows)
        edited = [train[position, epoch] for epoch in range(2) for position in range(len(train))]
        sources = [rows[position % len(rows)] for _ in range(2) for position in range(len(train))]
        assert [item["labels"] for item in edited] == [item["labels"] for item in sources]
        assert [item["meta"]["id"] for item in edited] == [item["meta"]["id"] for item in sources]
        same = [item["input_ids"] == source["input_ids"] for item, source in zip(edited, sources, strict=True)]
        assert all(same) if identical else not all(same[len(rows):])
        for split in ("validation", "test", "predict"):  # never augmented
            assert data._datasets[split] == plain._datasets[split]
            assert data.make_loader(split, split).dataset == plain._datasets[split]


def test_persistent_workers_see_the_epoch_and_draw_the_same_batches(model_dirs, tmp_path):
    """The epoch travels with every index: worker processes (persistent ones) hold their own dataset copy."""
    batches = {}
    for workers in (0, 2):
        data = classification(tmp_path, model_dirs["bert"], Augmentation(**EDITS), num_workers=workers, batch_size=8)
        data.setup("fit")
        loader = data.train_dataloader()
        assert isinstance(loader.sampler, EpochIndexSampler)
        batches[workers] = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)  # what Lightning calls
            batches[workers].append([batch["input_ids"].tolist() for batch in loader])
    assert batches[0] == batches[2]
    assert batches[0][0] != batches[0][1]


def test_length_grouping_groups_by_the_source_rows_and_an_index_without_epoch_is_refused(model_dirs, tmp_path):
    data = classification(tmp_path, model_dirs["bert"], Augmentation(**EDITS), group_by_length=True, batch_size=4)
    data.setup("fit")
    loader, train = data.train_dataloader(), data._datasets["train"]
    assert loader.sampler.sampler.lengths == [len(item["input_ids"]) for item in train.items] * 2
    assert sum(len(batch["labels"]) for batch in loader) == len(train)
    with pytest.raises(UserInputError, match="this training loader reads rows without the epoch — drop augment here"):
        train[0]


class RecordBatches(Callback):
    def __init__(self) -> None:
        self.batches: dict[int, list[list[int]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches[trainer.global_step] = batch["input_ids"].tolist()


def test_a_run_resumed_mid_epoch_sees_the_same_augmented_batches(model_dirs, tmp_path):
    """Killed after step 8 (mid-way through epoch 2 of 5 steps) and resumed with fit(ckpt_path=...): the resumed run
    trains on exactly the token ids the uninterrupted run trains on."""
    def fit(recorder: Callback, ckpt_path: str | None = None) -> None:
        data = classification(tmp_path, model_dirs["bert"], Augmentation(**EDITS), rows=20, batch_size=8)
        module = AdapterModule(model_dirs["bert"], strategy=Lora(r=2), label_names=LABELS)
        mid = ModelCheckpoint(dirpath=tmp_path / "mid", every_n_train_steps=8, save_top_k=-1, filename="{step}")
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[recorder, mid], default_root_dir=tmp_path)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)

    straight, resumed = RecordBatches(), RecordBatches()
    fit(straight)
    assert len(straight.batches) == 10  # 20 rows + 20 edited copies, batches of 8: 5 steps per epoch
    fit(resumed, str(tmp_path / "mid" / "step=8.ckpt"))
    assert sorted(resumed.batches) == [8, 9]
    assert all(resumed.batches[step] == straight.batches[step] for step in resumed.batches)


# ---- NER: entity spans kept --------------------------------------------------------------------------------------
def random_sentence(rng: random.Random, scheme: str) -> tuple[list[str], list[str], list[tuple[str, tuple]]]:
    """Words, tags in ``scheme`` and the entities (type, words) they were made from: O-separated and (except in IO,
    which cannot mark them) adjacent same-type entities included."""
    words, tags, entities, previous = [], [], [], None
    for _ in range(rng.randint(1, 8)):
        kind = rng.choice([None, None, "PER", "ORG"])
        if kind is not None and kind == previous and scheme == "IO":
            kind = None
        span = rng.choices(WORDS, k=rng.randint(1, 3))
        if kind is None:
            tags += ["O"] * len(span)
        else:
            first = "B" if scheme in ("IOB2", "auto") or (scheme == "IOB1" and previous == kind) else "I"
            tags += [f"{first}-{kind}"] + [f"I-{kind}"] * (len(span) - 1)
            entities.append((kind, tuple(span)))
        words += span
        previous = kind
    return words, tags, entities


def read_entities(words: list[str], tags: list[str], scheme: str) -> list[tuple[str, tuple]]:
    """Entities as seqeval reads them (independent of the code under test)."""
    iob2 = to_iob2(tags, scheme, str)
    return [(kind, tuple(words[start:end + 1])) for kind, start, end in get_entities(iob2)]


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IO", "auto"])
def test_ner_edits_keep_every_entity_span(scheme):
    augment, rng = Augmentation(swap=0.4, delete=0.4, insert=0.4), random.Random(scheme)
    changed = separated = 0
    for row in range(200):
        words, tags, entities = random_sentence(rng, scheme)
        separated += any(tags[i][2:] == tags[i + 2][2:] != "" and tags[i + 1] == "O" for i in range(len(tags) - 2))
        new_words, new_tags = augment.edit_row(words, tags, 7, 0, row, 0, scheme)
        assert read_entities(new_words, new_tags, scheme) == entities, (words, tags, new_words, new_tags)
        check_entities_kept(words, tags, new_words, new_tags, scheme)
        changed += new_words != words
    assert changed > 100 and separated > 5


def test_an_edit_that_changes_an_entity_span_is_refused():
    words, tags = "John met Mary in Paris".split(), ["I-PER", "O", "I-PER", "O", "I-LOC"]
    with pytest.raises(UserInputError, match=r"augmentation that would change an entity span \(PER: John; PER: Mary;"
                                             r" LOC: Paris -> PER: John Mary; LOC: Paris\) — edit only O words"):
        check_entities_kept(words, tags, "John Mary in Paris".split(), ["I-PER", "I-PER", "O", "I-LOC"], "IOB1")
    with pytest.raises(UserInputError, match="would change an entity span"):  # an O inserted into an entity
        check_entities_kept(["New", "York"], ["B-LOC", "I-LOC"], ["New", "in", "York"], ["B-LOC", "O", "I-LOC"],
                            "auto")
    with pytest.raises(UserInputError, match="would leave tags .* invalid in IOB1"):
        check_entities_kept(["A", "B"], ["I-PER", "B-PER"], ["A", "x", "B"], ["I-PER", "O", "B-PER"], "IOB1")
    check_entities_kept(words, tags, "John met Mary Paris".split(), ["I-PER", "O", "I-PER", "I-LOC"], "IOB1")


CONLL = "".join("profit O\nbank B-ORG\ncard I-ORG\nrose O\nin O\nthe O\nquarter B-PER\nnet O\n" + "sales O\n" * i
                + "\n" for i in range(12))


def test_ner_datamodule_augments_the_training_sentences_only(model_dirs, tmp_path):
    (tmp_path / "train.txt").write_text(CONLL)
    options = {"train_file": str(tmp_path / "train.txt"), "test_file": str(tmp_path / "train.txt"),
               "validation_fraction": 0.25}
    plain = TokenClassificationDataModule(model_dirs["bert"], **options)
    data = TokenClassificationDataModule(model_dirs["bert"], **options, augment=Augmentation(**EDITS, copies=2))
    plain.setup("fit"), data.setup("fit")
    train, rows = data._datasets["train"], plain._datasets["train"]
    assert len(train) == 3 * len(rows)
    names = data.label_names
    for position in range(len(train)):
        item, source = train[position, 1], rows[position % len(rows)]
        entities = [(kind, tuple(item["words"][s:e + 1]))
                    for kind, s, e in get_entities([names[i] for i in item["word_labels"]])]
        assert entities == [("ORG", ("bank", "card")), ("PER", ("quarter",))]
        assert item["meta"]["id"] == source["meta"]["id"]
    assert any(train[p, 1]["words"] != rows[p % len(rows)]["words"] for p in range(len(rows), len(train)))
    for split in ("validation", "test"):
        assert data._datasets[split] == plain._datasets[split]


# ---- paraphrases -------------------------------------------------------------------------------------------------
def test_paraphrases_are_generated_once_through_the_predictor_and_cached(lm_dirs, tmp_path, monkeypatch):  # noqa: F811
    cache = tmp_path / "paraphrases.jsonl"
    augment = Augmentation(copies=0, paraphrases=Paraphraser(lm_dirs["gpt2"], prompt=PROMPT, max_new_tokens=4),
                           paraphrase_cache=str(cache))
    data = classification(tmp_path, lm_dirs["gpt2"], augment, rows=9)
    texts, labels, _ = data.splits["train"]
    data.prepare_data()
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    assert sorted(record["text"] for record in records) == sorted(set(texts))  # one record per training text

    # what our Predictor generates for each text: a bare base is an AdapterModule with an untrained (zero) LoRA
    module = AdapterModule(lm_dirs["gpt2"], strategy=Lora(r=2), head=GenerationHead(max_new_tokens=4))
    predictor = Predictor.from_module(module, data=SummarizationDataModule, data_options={"prompt_template": PROMPT})
    expected = {text: row["generated"] for text, row in zip(texts, predictor.predict(texts), strict=True)}
    assert {record["text"]: record["paraphrase"] for record in records} == expected

    def no_generation(self, texts):
        raise AssertionError("generated although the cache is complete")

    monkeypatch.setattr(Paraphraser, "generate", no_generation)
    fresh = Augmentation(copies=0, paraphrases=Paraphraser(lm_dirs["gpt2"], prompt=PROMPT, max_new_tokens=4),
                         paraphrase_cache=str(cache))
    again = classification(tmp_path, lm_dirs["gpt2"], fresh, rows=9)
    again.prepare_data()  # reads the cache, generates nothing
    again.setup("fit")
    train, paraphrased = again._datasets["train"], [text for text in texts if expected[text].strip() not in ("", text)]
    assert paraphrased and len(train) == len(texts) + len(paraphrased)
    extra = [train[position, 0] for position in range(len(texts), len(train))]
    assert [item["text"] for item in extra] == [expected[text] for text in paraphrased]
    assert [item["labels"] for item in extra] == [labels[texts.index(text)] for text in paraphrased]

    monkeypatch.undo()
    cache.write_text("".join(line + "\n" for line in cache.read_text().splitlines()[1:]))  # a partial cache
    assert augment.complete_cache(texts) == 1 and len(cache.read_text().splitlines()) == len(set(texts))


def test_paraphrases_of_an_adapter_folder_are_its_predictions(lm_dirs, tmp_path):  # noqa: F811
    module = AdapterModule(lm_dirs["gpt2"], strategy=Lora(r=2), head=GenerationHead(max_new_tokens=3))
    perturb(module)
    save_adapter(module, tmp_path / "paraphraser")
    augment = Augmentation(paraphrases=Paraphraser(str(tmp_path / "paraphraser")),
                           paraphrase_cache=str(tmp_path / "c.jsonl"))
    texts = ["the company profit rose", "bank card cut in the quarter"]
    assert augment.complete_cache(texts) == 2
    predicted = Predictor.from_adapter(tmp_path / "paraphraser", data=SummarizationDataModule).predict(texts)
    assert augment.cached_paraphrases(texts) == [row["generated"] for row in predicted]


# ---- bad input: one line -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({"swap": -0.1}, "swap=-0.1 is out of range — use a value >= 0 and < 1"),
    ({"delete": 1.0}, "delete=1.0 is out of range — use a value >= 0 and < 1"),
    ({"copies": -1}, "copies=-1 is out of range — use a value >= 0"),
    ({"copies": 0}, "augment adds nothing (copies=0 and no paraphrases) — set copies >= 1 or paraphrases"),
    ({"paraphrases": Paraphraser("smollm2")}, "paraphrases need a paraphrase_cache file — pass paraphrase_cache"),
    ({"paraphrases": "smollm2", "paraphrase_cache": "c.jsonl"}, "paraphrases is a str, not a paraphrase generator"),
])
def test_bad_settings_are_refused_in_one_line(options, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        Augmentation(**options)
    assert "\n" not in str(error.value)
    with pytest.raises(UserInputError, match="prompt 'x' has no {source} field — add one where the text goes"):
        Paraphraser("smollm2", prompt="x")
    with pytest.raises(UserInputError, match="max_new_tokens=0 is out of range"):
        Paraphraser("smollm2", max_new_tokens=0)


def test_paraphrases_for_ner_are_refused(model_dirs, tmp_path):
    (tmp_path / "train.txt").write_text(CONLL)
    augment = Augmentation(paraphrases=Paraphraser("smollm2"), paraphrase_cache=str(tmp_path / "c.jsonl"))
    with pytest.raises(UserInputError, match="paraphrases rewrite the words the tags label — use token edits "
                                             r"\(swap/delete/insert\) for NER"):
        TokenClassificationDataModule(model_dirs["bert"], train_file=str(tmp_path / "train.txt"), augment=augment)


@pytest.mark.parametrize(("content", "message"), [
    ('{"key": "k", "text": "t", "paraphrase": "p"}\nnot json\n', "c.jsonl line 2 is not JSON"),
    ('{"key": "k", "text": "t"}\n', "c.jsonl line 1 is not a paraphrase record"),
    (b"\xff\xfe", "cannot read paraphrase_cache .*c.jsonl' \\(not UTF-8\\)"),
])
def test_bad_cache_files_are_refused_in_one_line(content, message, lm_dirs, tmp_path):  # noqa: F811
    cache = tmp_path / "c.jsonl"
    if isinstance(content, bytes):
        cache.write_bytes(content)
    else:
        cache.write_text(content)
    augment = Augmentation(paraphrases=Paraphraser(lm_dirs["gpt2"]), paraphrase_cache=str(cache))
    data = classification(tmp_path, lm_dirs["gpt2"], augment)
    with pytest.raises(UserInputError, match=message):
        data.prepare_data()


def test_an_unusable_cache_path_is_refused_before_anything_generates(tmp_path):
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserInputError, match="paraphrase_cache '.*folder.jsonl' is a folder — pass a .jsonl file"):
        Augmentation(paraphrases=Paraphraser("smollm2"), paraphrase_cache=str(tmp_path / "folder.jsonl"))
    with pytest.raises(UserInputError, match="cannot create paraphrase_cache .*'.*file' is a file"):
        Augmentation(paraphrases=Paraphraser("smollm2"), paraphrase_cache=str(tmp_path / "file" / "c.jsonl"))


def test_an_unknown_paraphrase_model_is_refused_when_given(tmp_path):
    with pytest.raises(UserInputError, match="model path not found: '.*missing'"):
        Paraphraser(str(tmp_path / "missing"))


def test_a_cache_lacking_texts_is_refused_in_setup(lm_dirs, tmp_path):  # noqa: F811
    augment = Augmentation(paraphrases=Paraphraser(lm_dirs["gpt2"]), paraphrase_cache=str(tmp_path / "c.jsonl"))
    data = classification(tmp_path, lm_dirs["gpt2"], augment, rows=5)
    with pytest.raises(UserInputError, match=r"lacks 5 of the 5 training texts — call the DataModule's "
                                             r"prepare_data\(\) first \(Trainer.fit does\)"):
        data.setup("fit")
    data.setup("test")  # only training reads the paraphrases


def test_augment_is_a_config_option_and_its_refusals_exit_in_one_line(workdir, model_dirs, capsys):  # noqa: F811
    paraphraser = {"class_path": "lightning_adapters.paraphraser.Paraphraser", "init_args": {"model": "smollm2"}}
    augment = {"class_path": "lightning_adapters.data.augmentation.Augmentation",
               "init_args": {"swap": 0.2, "copies": 2, "paraphrases": paraphraser,
                             "paraphrase_cache": str(workdir / "paraphrases.jsonl")}}
    config = write_config(workdir, model_dirs["bert"], **{"data.init_args.augment": augment})
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    printed = capsys.readouterr().out
    assert "swap: 0.2" in printed and "copies: 2" in printed and "model: smollm2" in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--data.init_args.augment.init_args.delete", "1.5"])
    assert exit_info.value.code != 0
    assert "delete=1.5 is out of range — use a value >= 0 and < 1" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_paraphrases_through_the_predictor(tmp_path):
    """The bundled SmolLM2-Instruct, bare (an untrained LoRA), paraphrases with the default prompt in its chat
    template (about a minute on 2 CPU cores)."""
    augment = Augmentation(paraphrases=Paraphraser("smollm2", chat_template=True, max_new_tokens=40),
                           paraphrase_cache=str(tmp_path / "c.jsonl"))
    texts = ["Net sales rose 5 % in the third quarter.", "The bank cut its profit outlook for the year."]
    assert augment.complete_cache(texts) == 2
    for text, paraphrase in zip(texts, augment.cached_paraphrases(texts), strict=True):
        assert paraphrase and paraphrase != text and ("sales" in paraphrase or "bank" in paraphrase)
