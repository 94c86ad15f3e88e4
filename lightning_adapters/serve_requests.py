"""What ``POST /predict`` and ``POST /stream`` accept, checked in the HTTP process before a request joins a batch.

LitServe's batched loop fails a whole dynamic batch when one request's ``decode_request`` raises, so a bad request
must never reach it: `CheckRequests` (ASGI middleware) answers it here with a 4xx and a one-line JSON ``error``, and
the good requests beside it are served as if it never came. What only the adapter's DataModule can judge (a row
missing a column, an empty text) is caught per request in the worker (`lightning_adapters.serve`).

Request: ``{"adapter": NAME, "text": "..."}`` or ``{"adapter": NAME, "inputs": [text or row, ...]}``; to
``/stream``, one input only, to an adapter whose listing says ``"streams": true`` (a generation adapter that does not
decode with beam search).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

FIELDS = ("adapter", "text", "inputs")
SHAPE = '{"adapter": NAME, "text": "..."} or {"adapter": NAME, "inputs": [text or row, ...]}'


@dataclass
class AdapterInfo:
    """One served adapter as ``GET /adapters`` lists it (and as requests are checked against it)."""

    name: str
    folder: str
    head: str
    strategy: str
    labels: list[str] | None
    data: str  # the DataModule class that encodes its inputs
    takes_text: bool  # plain texts are rows of its data (False: e.g. question answering reads question + context)
    row_hint: str  # what a row holds, for messages
    streams: bool = False  # POST /stream serves it (a generation head that streams)

    def public(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key not in ("takes_text", "row_hint")}


class RequestError(Exception):
    """A request the server refuses: its HTTP status and a one-line message naming the problem and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_request(body: bytes, adapters: dict[str, AdapterInfo], max_chars: int, max_inputs: int,
                  stream: bool = False) -> dict[str, Any]:
    """The request in ``body`` as ``{"adapter": name, "inputs": [...]}``, or `RequestError`; ``stream``: a request
    to ``/stream``."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as err:  # RecursionError: absurd nesting
        raise RequestError(400, f"the request body is not valid JSON ({str(err)[:80]}) — send {SHAPE}") from None
    if not isinstance(request, dict):
        raise RequestError(422, f"the request body is a JSON {type(request).__name__}, not an object — send {SHAPE}")
    extra = [key for key in request if key not in FIELDS]
    if extra:
        raise RequestError(422, f"unknown field '{extra[0]}' — send {SHAPE}")
    name = request.get("adapter")
    if not isinstance(name, str):
        problem = "no 'adapter' field" if name is None else f"'adapter' is a {type(name).__name__}"
        raise RequestError(422, f"{problem} — name one of the served adapters: {', '.join(adapters)}")
    if name not in adapters:
        raise RequestError(404, f"no adapter named '{name[:80]}' — this server has {', '.join(adapters)} "
                                "(GET /adapters lists them)")
    if ("text" in request) == ("inputs" in request):
        raise RequestError(422, f"give exactly one of 'text' and 'inputs' — send {SHAPE}")
    inputs = [request["text"]] if "text" in request else request["inputs"]
    if "text" in request and not isinstance(request["text"], str):
        raise RequestError(422, f"'text' is a {type(request['text']).__name__} — send one text (a string), or "
                                "rows as 'inputs'")
    if stream:
        check_streams(adapters[name], inputs)
    check_inputs(inputs, adapters[name], max_chars, max_inputs)
    return {"adapter": name, "inputs": inputs}


def check_streams(adapter: AdapterInfo, inputs: Any) -> None:
    if not adapter.streams:
        what = "decodes with beam search" if adapter.head == "GenerationHead" else \
            f"does not generate text ({adapter.head})"
        raise RequestError(422, f"adapter '{adapter.name}' {what}, so it cannot stream — POST /predict instead")
    if isinstance(inputs, list) and len(inputs) != 1:
        raise RequestError(422, f"/stream generates for one input, not {len(inputs)} — send \"text\", or one row "
                                "as \"inputs\", per request")


def check_inputs(inputs: Any, adapter: AdapterInfo, max_chars: int, max_inputs: int) -> None:
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(422, "'inputs' must be a non-empty list of texts or rows — send {\"adapter\": NAME, "
                                "\"inputs\": [text or row, ...]}")
    if len(inputs) > max_inputs:
        raise RequestError(413, f"{len(inputs)} inputs in one request, over this server's limit of {max_inputs} "
                                "(--max-inputs) — split them over several requests")
    kinds = {type(item) for item in inputs}
    if not (kinds <= {str} or kinds <= {dict}):
        raise RequestError(422, "'inputs' must be all texts (strings) or all rows (objects), not "
                                f"{', '.join(sorted(kind.__name__ for kind in kinds))}")
    if str in kinds and not adapter.takes_text:
        raise RequestError(422, f"adapter '{adapter.name}' ({adapter.head}) reads rows, not plain text — send "
                                f"\"inputs\": [{adapter.row_hint}, ...]")
    for number, item in enumerate(inputs):
        size = characters(item)
        if size > max_chars:
            raise RequestError(413, f"input {number} holds {size:,} characters, over this server's limit of "
                                    f"{max_chars:,} (--max-chars) — shorten or split it")


def characters(value: Any) -> int:
    """Characters in the strings of a JSON value (keys included); iterative, so nesting cannot overflow."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            total += sum(len(key) for key in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


PATHS = {"/predict": False, "/stream": True}  # the checked routes: does it stream?


class CheckRequests:
    """ASGI middleware: ``POST /predict`` and ``POST /stream`` bodies are checked (`check_request`) and refused with
    a JSON 4xx, or passed on unchanged (the body is replayed to the app)."""

    def __init__(self, app, adapters: dict[str, dict], max_chars: int, max_inputs: int):
        self.app = app
        self.adapters = {name: AdapterInfo(**info) for name, info in adapters.items()}
        self.max_chars, self.max_inputs = max_chars, max_inputs

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in PATHS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            check_request(body, self.adapters, self.max_chars, self.max_inputs, stream=PATHS[scope["path"]])
        except RequestError as err:
            from starlette.responses import JSONResponse  # the `serve` extra's (via LitServe): only when serving

            await JSONResponse({"error": str(err)}, status_code=err.status)(scope, receive, send)
            return
        # the body is JSON whatever the client declared (curl -d says form data, which LitServe would parse as a form)
        headers = [(key, value) for key, value in scope["headers"] if key != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
