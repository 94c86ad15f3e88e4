"""``lightning-adapters serve``: the real server process (LitServe) holding three adapters of one tiny BERT answers
exactly as `Predictor` does for each adapter alone, under a concurrent burst that mixes adapters in one dynamic
batch; every bad request gets a 4xx with a one-line JSON error and the server keeps answering; bad startup arguments
are one line and exit status 2."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import build_model, build_tokenizer
from test_generation import lm_dirs  # noqa: F401 — a fixture: tiny LMs with their LM heads
from test_predictor import perturb, same_rows

from lightning_adapters import (
    AdapterModule,
    ClassificationHead,
    GenerationHead,
    Lora,
    Predictor,
    QuestionAnsweringHead,
    save_adapter,
)
from lightning_adapters.serve_cli import main as serve_main

pytest.importorskip("litserve")

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the company profit rose in the quarter", "bank card cut", "net sales fell and shares dropped"]
QUESTIONS = [{"id": "q1", "question": "what rose", "context": "the company profit rose in the quarter"},
             {"id": "q2", "question": "what fell", "context": "net sales fell"}]
MAX_CHARS = 400


@pytest.fixture(scope="module")
def folders(model_dirs, lm_dirs, tmp_path_factory) -> dict[str, str]:  # noqa: F811
    """Three adapters of one tiny BERT (two classifiers with random, different weights; one QA), one classifier
    of another BERT (other weights, same architecture) and a generation adapter saved without a model card."""
    root = tmp_path_factory.mktemp("served")
    bert = model_dirs["bert"]
    made = {"sentiment": AdapterModule(bert, strategy=Lora(r=2), head=ClassificationHead(),
                                       label_names=["negative", "neutral", "positive"]),
            "intent": AdapterModule(bert, strategy=Lora(r=4), head=ClassificationHead(),
                                    label_names=["card", "refund"]),
            "qa": AdapterModule(bert, strategy=Lora(r=2), head=QuestionAnsweringHead())}
    other = root / "other_base"
    build_model("bert", seed=7).save_pretrained(other)
    build_tokenizer().save_pretrained(other)
    made["other"] = AdapterModule(str(other), strategy=Lora(r=2), head=ClassificationHead(), label_names=["a", "b"])
    made["generation"] = AdapterModule(lm_dirs["gpt2"], strategy=Lora(r=2), head=GenerationHead(max_new_tokens=2))
    for seed, (name, module) in enumerate(made.items(), start=1):
        save_adapter(perturb(module, seed), root / name)
    return {name: str(root / name) for name in made}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(port: int, path: str, body: bytes | dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read()
    return status, json.loads(text) if path != "/health" else text.decode()  # /health answers plain "ok"


@contextlib.contextmanager
def running_server(arguments: list[str], log: Path):
    """The real server process (``python -m lightning_adapters.cli serve ARGUMENTS``) on a free port, ready; yields
    (process, port) and kills its process group afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lightning_adapters.cli", "serve", *arguments, "--port", str(port)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)  # its own process group: LitServe's workers end with it
    try:
        deadline = time.monotonic() + 150
        while True:
            assert process.poll() is None, f"server exited ({process.returncode}): {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server not ready in time: {log.read_text()[-3000:]}"
            try:
                if call(port, "/health")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        yield process, port
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group: killing the main process alone orphans workers
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server_process(folders, tmp_path_factory):
    """Three adapters of one base behind one server, small limits so that the 413s are cheap to reach."""
    arguments = ["--adapters", *(f"{name}={folders[name]}" for name in ("sentiment", "intent", "qa")),
                 "--max-batch-size", "8", "--batch-timeout", "0.05", "--max-chars", str(MAX_CHARS),
                 "--max-inputs", "8"]
    with running_server(arguments, tmp_path_factory.mktemp("log") / "server.log") as started:
        yield started


@pytest.fixture(scope="module")
def server(server_process) -> int:
    return server_process[1]


@pytest.fixture(scope="module")
def expected(folders) -> dict[str, list[dict]]:
    """What `Predictor` answers for each adapter alone."""
    return {"sentiment": Predictor.from_adapter(folders["sentiment"]).predict(TEXTS),
            "intent": Predictor.from_adapter(folders["intent"]).predict(TEXTS),
            "qa": Predictor.from_adapter(folders["qa"]).predict(QUESTIONS)}


def test_answers_equal_the_predictor_for_each_adapter(server, expected):
    assert expected["sentiment"] != expected["intent"]
    for name in ("sentiment", "intent"):
        status, answer = call(server, "/predict", {"adapter": name, "inputs": TEXTS})
        assert status == 200, answer
        same_rows(answer["predictions"], expected[name], 1e-5)
        status, answer = call(server, "/predict", {"adapter": name, "text": TEXTS[1]})
        same_rows(answer["predictions"], [{**expected[name][1], "id": 0}], 1e-5)  # alone, it is input 0
    status, answer = call(server, "/predict", {"adapter": "qa", "inputs": QUESTIONS})
    assert status == 200, answer
    same_rows(answer["predictions"], expected["qa"], 1e-4)


def test_a_concurrent_burst_mixing_adapters_gets_each_adapter_s_answers(server, expected):
    jobs = [("sentiment", "intent", "qa")[i % 3] for i in range(36)]

    def ask(name: str):
        body = {"adapter": name, "inputs": QUESTIONS if name == "qa" else TEXTS}
        return name, call(server, "/predict", body)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, jobs))
    for name, (status, answer) in answers:
        assert status == 200, answer
        same_rows(answer["predictions"], expected[name], 1e-4 if name == "qa" else 1e-5)


BAD = [
    (b'{"adapter": "sentiment", "text": ', 400, "not valid JSON"),
    (b'["sentiment"]', 422, "a JSON list, not an object"),
    ({"text": "profit rose"}, 422, "no 'adapter' field — name one of the served adapters: sentiment, intent, qa"),
    ({"adapter": "sentimen", "text": "profit rose"}, 404, "no adapter named 'sentimen' — this server has sentiment"),
    ({"adapter": "sentiment"}, 422, "give exactly one of 'text' and 'inputs'"),
    ({"adapter": "sentiment", "txt": "profit rose"}, 422, "unknown field 'txt'"),
    ({"adapter": "sentiment", "text": 42}, 422, "'text' is a int"),
    ({"adapter": "sentiment", "inputs": []}, 422, "'inputs' must be a non-empty list"),
    ({"adapter": "sentiment", "inputs": ["profit rose", {"text": "x"}]}, 422, "all texts (strings) or all rows"),
    ({"adapter": "sentiment", "text": "profit " * 100}, 413, "over this server's limit of 400 (--max-chars)"),
    ({"adapter": "sentiment", "inputs": ["profit"] * 9}, 413, "9 inputs in one request"),
    ({"adapter": "qa", "text": "what rose"}, 422, "adapter 'qa' (QuestionAnsweringHead) reads rows, not plain text"),
    ({"adapter": "sentiment", "inputs": [{"sentence": "profit rose"}]}, 422, "no 'text' column"),  # the data's check
    ({"adapter": "qa", "inputs": [{"question": "what rose"}]}, 422, "context"),
    ({"adapter": "sentiment", "text": "   "}, 422, "empty text"),
]


def test_bad_requests_get_a_4xx_with_one_line_and_the_server_keeps_answering(server, expected):
    for body, status, message in BAD:
        got, answer = call(server, "/predict", body)
        assert got == status and message in answer["error"] and "\n" not in answer["error"], (body, got, answer)
    # a request the worker refuses fails alone: the good requests batched with it are answered
    jobs = [{"adapter": "sentiment", "inputs": [{"sentence": "x"}]} if i % 2 else
            {"adapter": "sentiment", "inputs": TEXTS} for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: call(server, "/predict", body), jobs))
    for i, (status, answer) in enumerate(answers):
        assert status == (422 if i % 2 else 200), answer
        if not i % 2:
            same_rows(answer["predictions"], expected["sentiment"], 1e-5)
    assert call(server, "/health")[0] == 200


def test_a_body_sent_as_form_data_is_read_as_json(server, expected):
    request = urllib.request.Request(f"http://127.0.0.1:{server}/predict", data=json.dumps(
        {"adapter": "intent", "inputs": TEXTS}).encode())  # urllib, like curl -d, declares form data
    with urllib.request.urlopen(request, timeout=60) as response:
        same_rows(json.loads(response.read())["predictions"], expected["intent"], 1e-5)


def test_adapters_lists_labels_head_and_strategy(server):
    status, listing = call(server, "/adapters")
    assert status == 200
    by_name = {entry["name"]: entry for entry in listing["adapters"]}
    assert list(by_name) == ["sentiment", "intent", "qa"]
    assert by_name["sentiment"]["labels"] == ["negative", "neutral", "positive"]
    assert by_name["intent"]["head"] == "ClassificationHead" and by_name["intent"]["strategy"] == "Lora"
    assert by_name["qa"]["head"] == "QuestionAnsweringHead" and by_name["qa"]["labels"] is None


def test_sigterm_stops_every_server_process(server_process):  # last of the server's tests: it stops it
    process, port = server_process
    process.terminate()  # the main process only, as `kill PID`, systemd or docker stop do
    assert process.wait(timeout=40) == 0  # reaped: from here on, a member of its group is another process
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break  # no process of the group is left: HTTP and worker processes ended with the main one
        time.sleep(0.5)
    else:
        left = subprocess.run(["ps", "-o", "pid,args", "-g", str(process.pid)], capture_output=True, text=True)
        pytest.fail(f"server processes still running after SIGTERM: {left.stdout}")


def stream_lines(port: int, body: dict) -> tuple[int, list[dict]]:
    """``POST /stream``: the status and the JSON lines, each parsed as it arrives."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/stream", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, [json.loads(line) for line in response if line.strip()]
    except urllib.error.HTTPError as err:
        return err.code, [json.loads(err.read())]


def test_a_generation_adapter_answers_and_streams_its_generated_text(lm_dirs, tmp_path):  # noqa: F811
    card = {"data": "`lightning_adapters.data.summarization.SummarizationDataModule`, train_file=x.jsonl"}
    made = {"summary": GenerationHead(max_new_tokens=12), "beams": GenerationHead(max_new_tokens=4, num_beams=2)}
    for seed, (name, head) in enumerate(made.items(), start=1):  # as fit exports them: the card names their data
        save_adapter(perturb(AdapterModule(lm_dirs["gpt2"], strategy=Lora(r=2), head=head), seed), tmp_path / name,
                     card=card)
    sources = ["the company profit rose in the quarter", "bank card cut"]
    expected = Predictor.from_adapter(tmp_path / "summary").predict(sources)
    arguments = ["--adapters", *(f"{name}={tmp_path / name}" for name in made)]
    with running_server(arguments, tmp_path / "server.log") as (_, port):
        status, answer = call(port, "/predict", {"adapter": "summary", "inputs": sources})
        assert status == 200 and all(row["generated"] for row in answer["predictions"]), answer
        same_rows(answer["predictions"], expected, 0)
        assert {row["name"]: row["streams"] for row in call(port, "/adapters")[1]["adapters"]} == \
            {"summary": True, "beams": False}
        for source, row in zip(sources, expected, strict=True):
            status, lines = stream_lines(port, {"adapter": "summary", "text": source})
            pieces = [line["text"] for line in lines[:-1]]
            assert status == 200 and lines[-1] == {"done": True, "generated": row["generated"]}, lines
            assert "".join(pieces) == row["generated"] and all(pieces), lines
        assert len(stream_lines(port, {"adapter": "summary", "text": sources[0]})[1]) > 2  # pieces, not one
        refusals = {"beam search": {"adapter": "beams", "text": "x"},
                    "/stream generates for one input, not 2": {"adapter": "summary", "inputs": sources},
                    "no adapter named 'nope'": {"adapter": "nope", "text": "x"}}
        for message, body in refusals.items():
            status, lines = stream_lines(port, body)
            assert 400 <= status < 500 and message in lines[0]["error"], (status, lines)
        status, lines = stream_lines(port, {"adapter": "summary", "inputs": [{"source": ""}]})
        assert status == 200 and len(lines) == 1 and "empty" in lines[0]["error"], lines  # the data's refusal
        status, lines = stream_lines(port, {"adapter": "summary", "text": sources[1]})  # still answering
        assert lines[-1] == {"done": True, "generated": expected[1]["generated"]}


@pytest.mark.parametrize(("arguments", "message"), [
    (["a={sentiment}", "b={other}"], "was trained on base model"),
    (["a={sentiment}", "b=no-such-folder"], "no adapter_config.json in 'no-such-folder'"),
    (["a={sentiment}", "a={intent}"], "adapter name 'a' is given twice"),
    (["{sentiment}"], "is not NAME=DIR"),
    (["1st={sentiment}"], "must be a word"),
    (["g={generation}"], "its model card names no training data"),
    (["a={sentiment}", "--batch-timeout", "40"], "--batch-timeout 40.0 must be at least 0 and below --timeout 30.0"),
])
def test_startup_refusals_are_one_line_with_status_2(folders, capsys, arguments, message):
    with pytest.raises(SystemExit) as stop:
        serve_main(["--adapters", *(argument.format(**folders) for argument in arguments)])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and error.count("\n") == 1, error
