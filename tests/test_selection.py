"""Data selection (`lightning_adapters.selection`) and ``lightning-adapters select``: embeddings equal a direct masked
mean, the round-robin picks every target's nearest pool rows (checked against a plain Python reference, in blocks or
not), a pool in another script is refused while English ones pass, and the CLI writes the nearest texts with their
origin — or, on bad input, one line, exit status 2 and nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import DATA_ROOT, WORDS, build_model, build_tokenizer
from transformers import AutoModel

from lightning_adapters import select_cli, selection
from lightning_adapters.backbone import load_tokenizer
from lightning_adapters.cli import main
from lightning_adapters.errors import UserInputError
from lightning_adapters.selection import check_language, embed_texts, max_similarity, select_nearest, select_texts

TEXTS = ["the company profit rose in the quarter", "bank card cut", "net sales fell and shares dropped sharply "
         "in the year", "refund", "market price up", "the bank expects a strong quarter for cash and card sales"]

FINANCE = ["Quarterly revenue rose eight percent and operating margin expanded.",
           "Net income for the year fell because of higher interest expenses.",
           "The board approved a share buyback and raised the dividend.",
           "Earnings per share beat analyst estimates by five cents.",
           "Free cash flow improved as capital spending declined."]
COOKING = ["Chop the onions finely and fry them in butter until golden.",
           "Bake the bread for forty minutes in a hot oven.",
           "Whisk the eggs with sugar, then fold in the flour gently.",
           "Season the soup with salt, pepper and fresh parsley.",
           "Simmer the tomato sauce slowly and stir it now and then."]
FINANCE_TARGET = ["Revenue grew in the second quarter and profit margins widened.",
                  "The company expects earnings to increase next fiscal year.",
                  "Shareholders will receive a higher dividend after strong results."]

FOREIGN = {
    "russian": ["Выручка компании выросла на семь процентов по сравнению с прошлым годом.",
                "Совет директоров одобрил выплату дивидендов акционерам.",
                "Мы ожидаем, что прибыль на акцию останется стабильной."],
    "chinese": ["公司收入比去年增长了百分之七。", "董事会批准向股东派发股息。", "我们预计下一季度每股收益将保持稳定。"],
    "greek": ["Τα έσοδα της εταιρείας αυξήθηκαν κατά επτά τοις εκατό σε σύγκριση με πέρσι.",
              "Το διοικητικό συμβούλιο ενέκρινε την καταβολή μερίσματος στους μετόχους.",
              "Αναμένουμε ότι τα κέρδη ανά μετοχή θα παραμείνουν σταθερά."],
}


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return load_tokenizer("minilm")


# ---------------------------------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
def test_embeddings_are_the_normalised_masked_mean_of_each_text_alone(family):
    model, tokenizer = build_model(family), build_tokenizer()
    model.train()
    embedded = embed_texts(model, tokenizer, TEXTS, batch_size=4)  # padded batches, sorted by length
    encoder = model.get_encoder() if family == "t5" else model
    with torch.no_grad():
        expected = torch.stack([F.normalize(encoder(input_ids=tokenizer([text], return_tensors="pt")["input_ids"])
                                            .last_hidden_state.mean(1)[0], dim=0) for text in TEXTS])
    assert embedded.shape == (len(TEXTS), 32) and not embedded.requires_grad and not model.training
    torch.testing.assert_close(embedded, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(embedded.norm(dim=1), torch.ones(len(TEXTS)))


def test_max_length_truncates_before_pooling():
    model, tokenizer = build_model("bert"), build_tokenizer()
    with torch.no_grad():
        batch = tokenizer([TEXTS[2]], truncation=True, max_length=4, return_tensors="pt")
        expected = F.normalize(model(**batch).last_hidden_state.mean(1), dim=1)
    torch.testing.assert_close(embed_texts(model, tokenizer, [TEXTS[2]], max_length=4), expected)


# ---------------------------------------------------------------------------------------------------- selection


def reference_selection(pool: torch.Tensor, target: torch.Tensor, size: int, per_target: int | None = None):
    """The rule in plain Python: targets' neighbour lists (ties to the lower index), round-robin, each row once."""
    sims = (F.normalize(target, dim=1) @ F.normalize(pool, dim=1).T).tolist()
    lists = [sorted(range(len(pool)), key=lambda p, row=row: (-row[p], p)) for row in sims]
    chosen: list[int] = []
    for rank in range(per_target or len(pool)):
        for neighbours in lists:
            if neighbours[rank] not in chosen and len(chosen) < size:
                chosen.append(neighbours[rank])
    return chosen


def signs(rows: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """±1 rows: normalised, every entry is ±0.25 and every dot product exact, so many similarities tie exactly."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (rows, dim), generator=generator).float() * 2 - 1


def test_each_target_gets_its_nearest_row_before_any_target_gets_a_second():
    e = torch.eye(4)
    # rows 0-2 crowd around target 0 (e0); rows 3 and 4 are target 1's (e2) nearest, 4 farther
    pool = torch.stack([e[0], e[0] + 0.1 * e[1], e[0] + 0.2 * e[1], e[2] + 0.5 * e[3], e[2] + e[3]])
    target = torch.stack([e[0], e[2]])
    assert select_nearest(pool, target, 1) == [0]
    assert select_nearest(pool, target, 2) == [0, 3]  # ranking by best similarity alone would give [0, 1]
    assert select_nearest(pool, target, 4) == [0, 3, 1, 4]  # 2nd neighbours: target 0's row 1, target 1's row 4
    assert select_nearest(pool, target, 5, per_target=1) == [0, 3]  # kNN-TAPT with k=1: fewer than asked


def test_ties_go_to_the_lower_pool_index_and_rows_are_taken_once():
    e = torch.eye(3)
    pool = torch.stack([e[1], e[0], e[0], e[0], e[2]])
    assert select_nearest(pool, e[:1], 2) == [1, 2]
    assert select_nearest(pool, torch.stack([e[0], e[0], e[0]]), 4) == [1, 2, 3, 0]  # overlapping: looks deeper


@pytest.mark.parametrize("size, per_target", [(1, None), (40, None), (97, None), (120, None), (120, 2)])
def test_selection_matches_the_reference_in_blocks_or_whole(size, per_target, monkeypatch):
    pool, target = signs(120, seed=1), signs(9, seed=2)
    expected = reference_selection(pool, target, size, per_target)
    whole = select_nearest(pool, target, size, per_target, block_rows=len(target))
    assert whole == expected
    assert select_nearest(pool, target, size, per_target, block_rows=1) == expected
    assert select_nearest(pool, target, size, per_target, block_rows=4) == expected
    monkeypatch.setattr(selection, "BLOCK_ELEMENTS", 2 * len(pool))  # the default block: 2 target rows at a time
    assert select_nearest(pool, target, size, per_target) == expected
    assert select_nearest(pool * 3.0, target, size, per_target) == expected  # cosine: the scale does not matter


def test_float_embeddings_select_deterministically_and_in_blocks():
    generator = torch.Generator().manual_seed(0)
    pool, target = torch.randn(3000, 24, generator=generator), torch.randn(50, 24, generator=generator)
    chosen = select_nearest(pool, target, 500)
    assert len(set(chosen)) == 500 and chosen == select_nearest(pool, target, 500)
    assert chosen == select_nearest(pool, target, 500, block_rows=7)
    best = max_similarity(pool, target, block_rows=3)
    expected = (F.normalize(target, dim=1) @ F.normalize(pool, dim=1).T).max(0).values
    torch.testing.assert_close(best, expected)


def test_first_round_holds_every_target_s_nearest_row():
    pool, target = torch.randn(400, 8, generator=torch.Generator().manual_seed(3)), torch.eye(8)
    firsts = {int((F.normalize(pool, dim=1) @ t).argmax()) for t in target}
    assert set(select_nearest(pool, target, len(firsts))) == firsts


@pytest.mark.parametrize("size, message", [(0, "cannot select 0 of 5 pool texts — pass a size between 1 and 5"),
                                           (6, "cannot select 6 of 5 pool texts — pass a size between 1 and 5, or "
                                               "a larger pool")])
def test_a_size_outside_the_pool_is_refused(size, message):
    with pytest.raises(UserInputError, match=message):
        select_nearest(torch.eye(5), torch.eye(5)[:2], size)


def test_embeddings_of_two_backbones_are_refused():
    with pytest.raises(UserInputError, match="pool embeddings have 5 dimensions, target 4 — embed both with the same"):
        select_nearest(torch.eye(5), torch.eye(4), 1)


@pytest.mark.parametrize("pool, target, message", [([], ["x"], "the selection pool is empty"),
                                                   (["a b"], [], "the target is empty"),
                                                   (["a", "  "], ["a"], "selection pool text 1 is blank")])
def test_select_texts_refuses_empty_input_before_loading_anything(pool, target, message):
    with pytest.raises(UserInputError, match=message):
        select_texts("no-such-model-anywhere", pool, target, 1)


# ---------------------------------------------------------------------------------------------------- language


@pytest.mark.parametrize("language", list(FOREIGN))
@pytest.mark.parametrize("target", [FINANCE_TARGET, None], ids=["target", "english-reference"])
def test_a_pool_in_another_script_is_refused(minilm_tokenizer, language, target):
    with pytest.raises(UserInputError) as refused:
        check_language(minilm_tokenizer, FOREIGN[language], target)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("the selection pool looks like another language or script")
    assert "100% of its texts" in message and message.endswith(
        "— use a pool in the tokenizer's language, or a multilingual backbone")


def test_a_pool_of_unknown_words_is_refused_even_when_its_pieces_are_long():
    """The tiny word-level tokenizer reads whole words: out-of-vocabulary words are single [UNK] tokens."""
    with pytest.raises(UserInputError, match=r"100% of its texts .* \(pool [0-9.]+ vs [0-9.]+ characters per token, "
                                             r"[0-9]+% unknown\)"):
        check_language(build_tokenizer(), ["chop the onions finely", "bake the bread slowly"], ["profit rose"])
    assert check_language(build_tokenizer(), ["the bank cut the price"], ["profit rose"]).foreign_share == 0


def ectsum_lines(count: int) -> list[str]:
    path = DATA_ROOT / "ectsum" / "ectsum_val.jsonl"
    if not path.is_file():
        pytest.skip(f"ECTSum not found under {DATA_ROOT} (set LIGHTNING_ADAPTERS_DATA)")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:40]]
    return [line for row in rows for line in row["transcript"].splitlines() if line.strip()][:count]


def test_english_finance_pools_pass_and_a_few_foreign_lines_are_reported(minilm_tokenizer):
    pool = ectsum_lines(600)
    for target in (FINANCE_TARGET, None):
        measured = check_language(minilm_tokenizer, pool, target)
        assert measured.foreign_share < 0.02 and measured.pool_chars_per_token > 3.5
    mixed = pool[:100] + [line for lines in FOREIGN.values() for line in lines]  # 9 foreign lines in 109
    measured = check_language(minilm_tokenizer, mixed, FINANCE_TARGET)
    assert 9 / 109 <= measured.foreign_share < 12 / 109 and measured.pool_unknown_share > 0


# ---------------------------------------------------------------------------------------------------- the CLI


def write_csv(path: Path, column: str, texts: list[str]) -> Path:
    path.write_text(f"{column}\n" + "".join(f'"{text}"\n' for text in texts))
    return path


def run_select(*arguments: str) -> None:
    main(["select", *arguments])


def output_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_select_writes_the_nearest_texts_with_scores_and_their_origin(model_dirs, tmp_path, capsys):
    words = WORDS[20:]
    pool_rows = [" ".join(words[(3 * i + k) % len(words)] for k in range(3 + i % 3)) for i in range(20)]
    table = write_csv(tmp_path / "pool.csv", "body", pool_rows[:10] + pool_rows[:2])  # 2 repeats, dropped
    text_file = tmp_path / "pool.txt"
    text_file.write_text("\n".join(pool_rows[10:14]) + "\n\n" + "\n".join(pool_rows[14:]) + "\n")
    target = write_csv(tmp_path / "target.csv", "text", ["profit rose in the quarter", "bank card refund"])
    run_select("--pool", str(table), str(text_file), "--target", str(target), "--output", str(tmp_path / "out.jsonl"),
               "--size", "7", "--pool-column", "body", "--backbone", model_dirs["bert"], "--batch-size", "3")
    summary = capsys.readouterr().out
    assert "7 of 20 pool texts written to" in summary and "2 blank or repeated texts dropped" in summary
    written = output_lines(tmp_path / "out.jsonl")
    # the reference: the same backbone's embeddings and the same rule, computed here directly
    model, tokenizer = AutoModel.from_pretrained(model_dirs["bert"]), build_tokenizer()
    pool_emb = embed_texts(model, tokenizer, pool_rows)
    target_emb = embed_texts(model, tokenizer, ["profit rose in the quarter", "bank card refund"])
    chosen = select_nearest(pool_emb, target_emb, 7)
    best = max_similarity(pool_emb, target_emb)
    assert [row["text"] for row in written] == [pool_rows[i] for i in chosen]
    assert [row["score"] for row in written] == pytest.approx([float(best[i]) for i in chosen], abs=1e-5)
    for row, i in zip(written, chosen, strict=True):
        assert set(row) == {"text", "score", "source", "row"}
        if i < 10:  # the CSV: header on line 1
            assert (row["source"], row["row"]) == (str(table), i + 2)
        else:  # the text file: a blank line after its 4th line
            assert (row["source"], row["row"]) == (str(text_file), i - 9 + (i >= 14))
            assert text_file.read_text().splitlines()[row["row"] - 1] == row["text"]


def test_select_with_minilm_picks_the_in_domain_lines_of_multi_line_cells(tmp_path, capsys):
    cells = [{"transcript": f"{finance}\n{cooking}", "id": n}
             for n, (finance, cooking) in enumerate(zip(FINANCE, COOKING, strict=True))]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(cell) + "\n" for cell in cells))
    target = tmp_path / "target.txt"
    target.write_text("\n".join(FINANCE_TARGET) + "\n")
    output = tmp_path / "selected.jsonl"
    run_select("--pool", str(pool), "--pool-column", "transcript", "--lines", "--target", str(target),
               "--output", str(output), "--size", "5")
    written = output_lines(output)
    assert sorted(row["text"] for row in written) == sorted(FINANCE)
    assert all(row["line"] == 1 and row["row"] == FINANCE.index(row["text"]) + 1 for row in written)
    assert written[0]["score"] >= written[-1]["score"] > 0.2
    summary = capsys.readouterr().out
    assert "5 of 10 pool texts written to" in summary
    selected, whole = re.search(r"similarity to the target ([0-9.]+), whole pool ([0-9.-]+)", summary).groups()
    assert float(selected) > float(whole)


def test_a_failed_write_leaves_no_file(model_dirs, tmp_path, monkeypatch):
    def broken(text, score):
        raise RuntimeError("killed")

    monkeypatch.setattr(select_cli, "record", broken)
    pool = write_csv(tmp_path / "pool.csv", "text", ["profit rose", "bank card cut", "net sales fell"])
    with pytest.raises(RuntimeError, match="killed"):
        run_select("--pool", str(pool), "--target", str(pool), "--output", str(tmp_path / "out.jsonl"), "--size",
                   "2", "--backbone", model_dirs["bert"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.csv"]


REFUSALS = {
    "empty text file": (lambda d: (d / "pool.txt").write_text("\n \n"), ["--pool", "pool.txt"],
                        "--pool 'pool.txt' is empty (no non-blank lines)"),
    "empty table": (lambda d: (d / "pool.csv").write_text("text\n"), ["--pool", "pool.csv"],
                    "--pool 'pool.csv' is empty (no data rows)"),
    "blank texts": (lambda d: (d / "pool.csv").write_text('text\n""\n"  "\n'), ["--pool", "pool.csv"],
                    "the selection pool (pool.csv) holds no text: every cell is blank"),
    "missing column": (lambda d: write_csv(d / "pool.csv", "text", ["profit rose"]),
                       ["--pool", "pool.csv", "--pool-column", "body"],
                       "--pool 'pool.csv' has no column 'body' (columns: text) — set --pool-column to one of them"),
    "missing file": (lambda d: None, ["--pool", "nowhere.csv"], "--pool not found: 'nowhere.csv'"),
    "size 0": (lambda d: write_csv(d / "pool.csv", "text", ["profit rose"]), ["--pool", "pool.csv", "--size", "0"],
               "cannot select 0 of 1 pool texts — pass a size between 1 and 1"),
    "size over the pool": (lambda d: write_csv(d / "pool.csv", "text", ["profit rose", "bank card"]),
                           ["--pool", "pool.csv", "--size", "50"],
                           "cannot select 50 of 2 pool texts — pass a size between 1 and 2, or a larger pool"),
    "foreign pool": (lambda d: write_csv(d / "pool.csv", "text", FOREIGN["greek"] + FOREIGN["russian"]),
                     ["--pool", "pool.csv", "--backbone", "minilm"],
                     "the selection pool looks like another language or script than the tokenizer expects"),
    "existing output": (lambda d: (write_csv(d / "pool.csv", "text", ["profit rose"]),
                                   (d / "out.jsonl").write_text("mine\n")), ["--pool", "pool.csv"],
                        "--output 'out.jsonl' exists — pass --overwrite to replace it, or another path"),
    "per-target 0": (lambda d: write_csv(d / "pool.csv", "text", ["profit rose"]),
                     ["--pool", "pool.csv", "--per-target", "0"], "per_target 0 is below 1"),
    "batch size 0": (lambda d: write_csv(d / "pool.csv", "text", ["profit rose"]),
                     ["--pool", "pool.csv", "--batch-size", "0"], "batch size 0 is below 1"),
    "bad size": (lambda d: write_csv(d / "pool.csv", "text", ["profit rose"]), ["--pool", "pool.csv", "--size", "x"],
                 "argument --size: invalid int value: 'x'"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, model_dirs, tmp_path, monkeypatch, capsys):
    prepare, arguments, message = REFUSALS[case]
    monkeypatch.chdir(tmp_path)
    prepare(tmp_path)
    write_csv(tmp_path / "target.csv", "text", FINANCE_TARGET if case == "foreign pool" else ["profit rose"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    defaults = {"--size": "1", "--backbone": model_dirs["bert"]}
    given = [arg for arg in arguments if arg.startswith("--")]
    extra = [item for option, value in defaults.items() if option not in given for item in (option, value)]
    with pytest.raises(SystemExit) as stop:
        run_select(*arguments, "--target", "target.csv", "--output", "out.jsonl", *extra)
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.count("\n") == 1, error
    assert error.startswith("lightning-adapters select: error: ") and message in error, error
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing changed
