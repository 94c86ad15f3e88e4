"""``lightning-adapters serve``: many adapters on one base model behind one HTTP endpoint, on LitServe.

Each worker holds the base once: the first adapter folder builds the module (`lightning_adapters.load_adapter`), the
others are added to it (`AdapterModule.load_adapter`, which checks that they were trained on the same base). A
request names its adapter; LitServe gathers concurrent requests into a dynamic batch, and the batch is answered
adapter by adapter: each adapter's requests are encoded together by that adapter's `Predictor` DataModule and run
through the module's mixed-batch path (batch key ``adapter_names``, `lightning_adapters.mixed_batches`), so every
answer is exactly the one ``Predictor.from_adapter(folder).predict(inputs)`` gives (tests/test_serve.py). Grouping
before encoding costs no more than one routed batch of every row (that path also runs the backbone once per adapter
present) and keeps each adapter's own DataModule, so adapters of different tasks (classification, NER, QA) share
a batch.

Routes: ``POST /predict`` (`lightning_adapters.serve_requests` for the request shape and its checks), ``GET /health``
and ``GET /info`` (LitServe's), ``GET /adapters``; and ``POST /stream`` when a generation adapter is served: one
input's generated text as it comes, in JSON lines ``{"text": piece}`` ... then ``{"done": true, "generated": text}``
(the pieces join to ``generated``, which is what ``/predict`` answers), or ``{"error": message}`` if the adapter's
data refuses the input. LitServe streams per route, so ``/stream`` is a second LitAPI with its own worker, which
holds the base a second time with only the streaming adapters; ``--no-stream`` leaves it out.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from lightning_adapters.adapter_folder import read_adapter_config
from lightning_adapters.base_fingerprint import check_fingerprint
from lightning_adapters.data import QADataModule, SplitDataModule
from lightning_adapters.errors import UserInputError, first_line
from lightning_adapters.heads import GenerationHead, TaskHead
from lightning_adapters.mixed_batches import ROUTE_KEY, rows_of
from lightning_adapters.module import load_adapter
from lightning_adapters.named_adapters import check_adapter_name
from lightning_adapters.predictor import Predictor, as_rows, recorded_data, stream_with, task_data
from lightning_adapters.registry import build_from_config
from lightning_adapters.serve_requests import AdapterInfo, CheckRequests

try:  # the `serve` extra; without it the rest of the package works and `serve` says what to install
    import litserve as ls
except ImportError:
    ls = None

LitAPI = ls.LitAPI if ls is not None else object


def require_litserve() -> None:
    if ls is None:
        raise UserInputError("serving needs LitServe, which is not installed — pip install 'lightning-adapters[serve]'")


# ---- startup: what is served, checked before any model loads ------------------------------------------------------
def read_adapters(pairs: list[tuple[str, str]]) -> dict[str, AdapterInfo]:
    """``(name, folder)`` pairs as served adapters; a bad name, an unreadable folder or a folder trained on another
    base than the first one's is one line (`UserInputError`)."""
    infos: dict[str, AdapterInfo] = {}
    first_base = None
    for name, folder in pairs:
        check_adapter_name(name)
        if name in infos:
            raise UserInputError(f"adapter name '{name}' is given twice — give each adapter its own name")
        config = read_adapter_config(folder)
        base = config["base_model"]
        if first_base is None:
            first_base = base
        elif isinstance(first_base, dict) and "weights" in first_base and "config_json" in first_base:
            try:
                check_fingerprint(base, first_base, f"adapter '{name}' ({folder})")
            except UserInputError as err:
                raise UserInputError(f"{str(err).split(' — ')[0]} (the base of '{pairs[0][0]}') — one server holds "
                                     "one base: serve it from a server of its own") from err
        infos[name] = describe(name, folder, config)
    return infos


def describe(name: str, folder: str, config: dict) -> AdapterInfo:
    head = build_from_config(config["head"], TaskHead, "head")
    strategy = config["strategy"].get("class_path", "?").rsplit(".", 1)[-1]
    data = data_class(folder, head)
    takes_text = data.text_rows is not SplitDataModule.text_rows
    hint = '{"question": "...", "context": "..."}' if issubclass(data, QADataModule) else \
        f"{{...the columns of a {data.__name__} predict file}}"
    return AdapterInfo(name=name, folder=str(Path(folder).resolve()), head=type(head).__name__, strategy=strategy,
                       labels=config.get("label_names"), data=f"{data.__module__}.{data.__name__}",
                       takes_text=takes_text, row_hint=hint,
                       streams=isinstance(head, GenerationHead) and head.streams)


def data_class(folder: str, head: TaskHead) -> type[SplitDataModule]:
    """The DataModule `Predictor.from_adapter` picks for this folder (its card's, else the head's task family)."""
    found = recorded_data(folder, head)
    if found is not None:
        return found
    try:
        return task_data(head)
    except UserInputError as err:  # a generation head reads summarization or dialogue rows: the card says which
        raise UserInputError(f"adapter '{folder}': its model card names no training data, and {type(head).__name__} "
                             "reads summarization or dialogue rows — export it with lightning-adapters fit, or "
                             "save_adapter(..., card={'data': '`<DataModule class path>`'})") from err


# ---- the worker ---------------------------------------------------------------------------------------------------
class HoldsAdapters(LitAPI):
    """A worker that loads ``adapters`` on one base at setup (`load_predictors`)."""

    adapters: dict[str, AdapterInfo]
    forward_batch_size: int
    threads: int | None

    def setup(self, device: str) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            self.predictors, self.internal = load_predictors(self.adapters, device, self.forward_batch_size)
        except UserInputError as err:  # a worker cannot return it: say it on one line and stop the worker
            print(f"lightning-adapters serve: error: {first_line(err)}", file=sys.stderr, flush=True)
            raise


class AdaptersAPI(HoldsAdapters):
    """``POST /predict``: one base, several adapters; a dynamic batch is answered adapter by adapter (see the module
    docstring)."""

    def __init__(self, adapters: dict[str, AdapterInfo], max_batch_size: int = 16, batch_timeout: float = 0.01,
                 forward_batch_size: int = 32, threads: int | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.adapters, self.forward_batch_size, self.threads = adapters, forward_batch_size, threads

    def decode_request(self, request) -> dict[str, Any]:
        # no annotation on ``request``: LitServe would make it the endpoint's parameter type (a query parameter);
        # the JSON body it reads by default was checked in the HTTP process (serve_requests.CheckRequests)
        return {"adapter": request["adapter"], "inputs": [request["text"]] if "text" in request else request["inputs"]}

    def batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return requests

    def unbatch(self, answers: list[Any]) -> list[Any]:
        return answers

    def predict(self, requests):
        batched = self.max_batch_size > 1  # unbatched, LitServe passes one request
        requests = requests if batched else [requests]
        answers: list[Any] = [None] * len(requests)
        for name in dict.fromkeys(request["adapter"] for request in requests):
            mine = [i for i, request in enumerate(requests) if request["adapter"] == name]
            for i, answer in zip(mine, self.answer(name, [requests[i]["inputs"] for i in mine]), strict=True):
                answers[i] = answer
        return answers if batched else answers[0]

    def answer(self, name: str, requests: list[list[Any]]) -> list[list[dict] | UserInputError]:
        """Each request's rows from adapter ``name``: all requests encoded and run together (`predict_routed`); if
        the data refuses one of them, each request alone, so that only the bad one fails."""
        predictor, adapter = self.predictors[name], self.internal[name]
        rows, answers = [], []
        for inputs in requests:
            try:
                rows.append(numbered_rows(inputs, predictor.data))
            except UserInputError as err:
                rows.append(err)
        good = [request for request in rows if not isinstance(request, UserInputError)]
        try:
            flat = predict_routed(predictor, adapter, [row for request in good for row in request]) if good else []
        except UserInputError:
            return [request if isinstance(request, UserInputError) else predict_alone(predictor, adapter, request)
                    for request in rows]
        start = 0
        for request in rows:  # one row out per row in (per question for QA): cut the flat list back per request
            if isinstance(request, UserInputError):
                answers.append(request)
            else:
                answers.append(flat[start:start + len(request)])
                start += len(request)
        return answers

    def encode_response(self, output: list[dict] | UserInputError):
        if isinstance(output, UserInputError):  # this request alone: the others of its batch were answered
            from starlette.responses import JSONResponse  # the `serve` extra's (via LitServe): only when serving

            return JSONResponse({"error": first_line(output)}, status_code=422)
        return {"predictions": output}


class StreamAPI(HoldsAdapters):
    """``POST /stream``: the streaming adapters on a base of their own; one request at a time (LitServe streams
    unbatched requests), answered in JSON lines (see the module docstring)."""

    def __init__(self, adapters: dict[str, AdapterInfo], threads: int | None = None) -> None:
        super().__init__(max_batch_size=1, stream=True, api_path="/stream")
        self.adapters, self.forward_batch_size, self.threads = adapters, 1, threads

    def decode_request(self, request) -> dict[str, Any]:  # checked in the HTTP process (CheckRequests)
        return {"adapter": request["adapter"], "input": request["text"] if "text" in request else request["inputs"][0]}

    def predict(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        name = request["adapter"]
        pieces = []
        try:
            for piece in stream_routed(self.predictors[name], self.internal[name], request["input"]):
                pieces.append(piece)
                yield {"text": piece}
        except UserInputError as err:  # the 200 and its headers are sent: the refusal is a line of the stream
            yield {"error": first_line(err)}
            return
        yield {"done": True, "generated": "".join(pieces)}

    def encode_response(self, lines: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        yield from lines  # LitServe writes each dict as a JSON line


def stream_routed(predictor: Predictor, adapter: str, item: str | dict[str, Any]) -> Iterator[str]:
    """`Predictor.stream` of ``item`` by adapter ``adapter`` of the predictor's module, switched on alone while it
    generates (`AdapterModule.only_adapter`)."""
    module = predictor.module
    batch = predictor.encode_one(item)
    with module.only_adapter(adapter):
        yield from stream_with(module.head_of(adapter), module.backbone, batch)


def load_predictors(adapters: dict[str, AdapterInfo], device: str, batch_size: int
                    ) -> tuple[dict[str, Predictor], dict[str, str]]:
    """One module holding every adapter (the base once), and a Predictor per adapter on it; and each served name's
    name inside the module: the first adapter is the module's own (``default``), the others ``served_<n>``, so any
    served name (``default`` too) is free."""
    first, *others = adapters.values()
    module = load_adapter(first.folder)
    internal = {first.name: module.own_adapter}
    for number, info in enumerate(others, start=1):
        internal[info.name] = f"served_{number}"
        module.load_adapter(info.folder, internal[info.name])
    predictors = {}
    for info in adapters.values():
        module.set_active_adapters(internal[info.name])  # the Predictor reads the active adapter's head and labels
        predictors[info.name] = Predictor.from_module(module, device=device, batch_size=batch_size,
                                                      data=data_class(info.folder, module.task_head))
    return predictors, internal


def numbered_rows(inputs: list[Any], data: SplitDataModule) -> list[dict[str, Any]]:
    """``inputs`` as rows numbered from 0 within their request, as `Predictor.predict` numbers them alone; rows that
    carry their own ``id`` keep it."""
    rows = as_rows(inputs, data)
    if not any("id" in row for row in rows):
        rows = [{**row, "id": number} for number, row in enumerate(rows)]
    return rows


def predict_routed(predictor: Predictor, adapter: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`Predictor.predict` of ``rows`` by adapter ``adapter`` of the predictor's module (which holds them all): the
    same batches, each routed with the mixed-batch key, so the module switches adapters per batch (a flag on each
    adapter layer) instead of `AdapterModule.set_active_adapters` (which also rebuilds metric objects: ~25 ms on
    MiniLM). The route adds each row's adapter name, which a Predictor row does not have: it is taken out again."""
    loader = predictor.data.predict_loader(rows, predictor.batch_size)
    answers: list[dict[str, Any]] = []
    with torch.inference_mode():
        for index, batch in enumerate(loader):
            batch = move_data_to_device(batch, predictor.device)
            batch[ROUTE_KEY] = [adapter] * rows_of(batch)
            answers += [{key: value for key, value in row.items() if key != "adapter"}
                        for row in predictor.module.predict_step(batch, index)]
    return answers


def predict_alone(predictor: Predictor, adapter: str, rows: list[dict[str, Any]]) -> list[dict] | UserInputError:
    try:
        return predict_routed(predictor, adapter, rows)
    except UserInputError as err:
        return err


# ---- the server ---------------------------------------------------------------------------------------------------
def worker_threads(workers: int, accelerator: str) -> int | None:
    """Torch threads per CPU worker process: the cores shared among the workers and LitServe's HTTP process. With
    torch's default (every core) a worker's threads spin on cores the HTTP process needs: on 2 cores, 1 worker
    served ~13 requests/s with 2 threads and ~70 with 1 (recipes/benchmark/serve_load.py). None on a GPU."""
    if accelerator != "cpu":
        return None
    return max(1, (os.cpu_count() or 1) // (workers + 1))


def build_server(adapters: dict[str, AdapterInfo], max_batch_size: int = 16, batch_timeout: float = 0.01,
                 workers: int = 1, max_chars: int = 10_000, max_inputs: int = 64, accelerator: str = "cpu",
                 timeout: float = 30.0, threads: int | None = None, stream: bool = True):
    """The LitServer: request checks in front (`CheckRequests`), ``GET /adapters`` beside LitServe's routes, and
    ``POST /stream`` (`StreamAPI`) if ``stream`` and an adapter streams. ``threads``: torch threads per worker
    process (default: `worker_threads`)."""
    require_litserve()
    streaming = {name: info for name, info in adapters.items() if info.streams} if stream else {}
    processes = workers * (2 if streaming else 1)
    threads = threads if threads is not None else worker_threads(processes, accelerator)
    apis = [AdaptersAPI(adapters, max_batch_size, batch_timeout, threads=threads)]
    if streaming:
        apis.append(StreamAPI(streaming, threads=threads))
    shapes = {name: vars(info) for name, info in adapters.items()}
    payload = 8 * max_chars * max_inputs + 65_536  # JSON escapes: up to 6 bytes a character
    server = ls.LitServer(apis, accelerator=accelerator, devices=1, workers_per_device=workers, timeout=timeout,
                          max_payload_size=payload,
                          middlewares=[(CheckRequests, {"adapters": shapes, "max_chars": max_chars,
                                                        "max_inputs": max_inputs})])
    listing = {"adapters": [info.public() for info in adapters.values()]}
    server.app.add_api_route("/adapters", lambda: listing, methods=["GET"])
    return server
