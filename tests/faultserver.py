"""A local OpenAI-compatible chat server for tests: instant, deterministic, and faulty on demand.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) on a raw asyncio server, so it serves hundreds of
concurrent connections from one thread. ``POST /v1/chat/completions`` answers with a reply derived from the prompt (the
same prompt always gets the same text), ``GET /health`` and ``GET /v1/models`` answer too.

Faults are decided per request by a *plan*: a function of (prompt key, attempt number of that prompt) that returns a
fault kind or None, so a test knows in advance which prompt fails how often. Kinds:

* ``"429"``: status 429 with ``Retry-After`` (seconds, ``retry_after``);
* ``"500"``: status 500 with a JSON error body;
* ``"delay"``: answers only after ``hang_seconds`` (longer than the client's timeout);
* ``"cut"``: sends the status line, headers and part of the body, then closes the socket;
* ``"malformed"``: status 200 with a body that is not JSON;
* ``"badshape"``: status 200 with JSON that is not a chat completion;
* ``"401"``: status 401 whose error message quotes the request's API key (as some servers do);
* ``"400"``: status 400 ("prompt too long"): a request the server will never take.

The prompt key is the content of the last user message. Every request is logged (:attr:`FaultServer.log`) with its key,
attempt number, arrival time and fault, the ``response_format`` it asked for, and whether a normal answer was delivered
(``answered``). ``refuse_response_format=True`` makes the server answer every request that has a ``response_format``
with status 400, as servers without structured output do.

``hold_after(m)`` makes the server answer ``m`` more requests and hold every later one unanswered until
``release()``, which closes the held connections without an answer: a test can then kill a client at a point where
nothing is in the middle of being answered.

Run as ``python -m tests.faultserver --port 0`` to serve from a separate process (prints the base URL).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = ("429", "500", "delay", "cut", "malformed", "badshape")
#: Not retryable, so not in FAULT_KINDS: status 401 whose message echoes the Authorization header, as some servers do.
AUTH_FAULT = "401"

Plan = Callable[[str, int], "str | None"]


def _u(*parts: Any) -> float:
    """A reproducible uniform number in [0, 1) from the parts."""
    h = hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


@dataclass
class FaultPlan:
    """Fails a share of prompts, each with one fault kind for its first 1..``max_failures`` attempts.

    ``shares`` maps fault kinds to the share of prompts that get them (the rest never fail). ``always`` names prompts
    (by a substring of their key) that fail with 500 on every attempt.
    """

    shares: dict[str, float] = field(default_factory=dict)
    max_failures: int = 2
    seed: int = 0
    always: tuple[str, ...] = ()

    def kind_of(self, key: str) -> str | None:
        u = _u("kind", self.seed, key)
        acc = 0.0
        for kind in sorted(self.shares):
            acc += self.shares[kind]
            if u < acc:
                return kind
        return None

    def failures_of(self, key: str) -> int:
        if any(a in key for a in self.always):
            return 10**9
        if self.kind_of(key) is None:
            return 0
        return 1 + int(_u("n", self.seed, key) * self.max_failures)

    def __call__(self, key: str, attempt: int) -> str | None:
        if any(a in key for a in self.always):
            return "500"
        kind = self.kind_of(key)
        if kind is not None and attempt <= self.failures_of(key):
            return kind
        return None


def always(kind: str) -> Plan:
    """A plan that fails every request with ``kind`` (an endpoint that is down)."""
    return lambda key, attempt: kind


def default_reply(messages: list[dict[str, Any]], index: int, seed: Any = None) -> str:
    """A reproducible step-by-step answer derived from the prompt and the choice index."""
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    h = int(_u("reply", last, index, seed) * 10**6)
    return (
        f"Step 1: Read the problem ({len(last)} characters).\n\n"
        f"Step 2: Combine the numbers ({h % 97} and {h % 13}).\n\n"
        f"The answer is: {h % 100}"
    )


def prompt_key(body: dict[str, Any]) -> str:
    msgs = body.get("messages") or []
    return next((str(m.get("content", "")) for m in reversed(msgs) if m.get("role") == "user"), "")


@dataclass
class LogEntry:
    key: str
    attempt: int
    t: float
    fault: str | None
    answered: bool = False
    held: bool = False
    response_format: Any = None


_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 400: "Bad Request", 429: "Too Many Requests", 500: "Internal Server Error"}


class FaultServer:
    def __init__(
        self,
        plan: Plan | None = None,
        reply: Callable[[list[dict[str, Any]], int, Any], str] = default_reply,
        latency: float = 0.0,
        hang_seconds: float = 30.0,
        retry_after: float = 1,
        model: str = "fault-model",
        host: str = "127.0.0.1",
        port: int = 0,
        refuse_response_format: bool = False,
    ):
        self.plan = plan or (lambda key, attempt: None)
        self.refuse_response_format = refuse_response_format
        self.reply = reply
        self.latency = latency
        self.hang_seconds = hang_seconds
        self.retry_after = retry_after
        self.model = model
        self.host = host
        self.port = port
        self.log: list[LogEntry] = []
        self.headers_seen: list[dict[str, str]] = []
        self._attempts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hold_budget: int | None = None
        self._release: asyncio.Event | None = None
        self.connections = 0
        self.max_open_connections = 0
        self._open = 0

    # -- lifecycle ------------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FaultServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.host, self.port, backlog=2048, limit=1 << 22)
                )
                self.port = self._server.sockets[0].getsockname()[1]
                self._release = asyncio.Event()
            except BaseException as e:  # pragma: no cover - reported to start()
                errors.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="faultserver", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls --------------------------------------------------------------------------------------------
    def hold_after(self, m: int) -> None:
        """Answer ``m`` more requests normally, then hold every later one until :meth:`release`."""
        with self._lock:
            self._hold_budget = m

    def release(self) -> None:
        """Stop holding: the held requests are closed without an answer; later ones are answered again."""
        with self._lock:
            self._hold_budget = None
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def reset(self) -> None:
        with self._lock:
            self.log.clear()
            self.headers_seen.clear()
            self._attempts.clear()

    def entries(self) -> list[LogEntry]:
        with self._lock:
            return list(self.log)

    def received(self) -> Counter[str]:
        """Requests received per prompt key."""
        return Counter(e.key for e in self.entries())

    def answered(self) -> Counter[str]:
        """Normal answers delivered per prompt key."""
        return Counter(e.key for e in self.entries() if e.answered)

    def held(self) -> int:
        return sum(e.held for e in self.entries())

    # -- HTTP -----------------------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self._open += 1
        self.max_open_connections = max(self.max_open_connections, self._open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers = {}
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = b""
                length = int(headers.get("content-length") or 0)
                if length:
                    body = await reader.readexactly(length)
                keep = await self._route(method, path, headers, body, reader, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return
        finally:
            self._open -= 1
            self._tasks.discard(task)
            try:
                writer.close()
            except Exception:  # pragma: no cover
                pass

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, payload: bytes, extra: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}",
                f"Content-Length: {len(payload)}", "Connection: keep-alive"]
        for k, v in (extra or {}).items():
            head.append(f"{k}: {v}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()

    async def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes, reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if method == "GET" and path.rstrip("/") in ("/health", "/v1/health"):
            await self._send(writer, 200, b'{"status":"ok"}')
            return True
        if method == "GET" and path.rstrip("/") == "/v1/models":
            await self._send(writer, 200, json.dumps({"object": "list", "data": [{"id": self.model, "object": "model"}]}).encode())
            return True
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            await self._send(writer, 404, b'{"error":{"message":"not found"}}')
            return True
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            await self._send(writer, 400, b'{"error":{"message":"bad json"}}')
            return True
        key = prompt_key(req)
        with self._lock:
            self._attempts[key] += 1
            attempt = self._attempts[key]
            fault = self.plan(key, attempt)
            entry = LogEntry(key, attempt, time.monotonic(), fault, response_format=req.get("response_format"))
            self.log.append(entry)
            self.headers_seen.append(headers)
            hold = False
            if self._hold_budget is not None and fault is None:
                if self._hold_budget > 0:
                    self._hold_budget -= 1
                else:
                    hold = entry.held = True
        if self.refuse_response_format and "response_format" in req:
            await self._send(writer, 400, json.dumps({"error": {
                "message": "Unrecognized request argument supplied: response_format",
                "type": "invalid_request_error"}}).encode())
            return True
        if hold:
            assert self._release is not None
            await self._release.wait()
            return False  # close without an answer
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault == "429":
            await self._send(writer, 429, b'{"error":{"message":"rate limited","type":"rate_limit"}}',
                             {"Retry-After": f"{self.retry_after:g}"})
            return True
        if fault == "401":
            token = headers.get("authorization", "").removeprefix("Bearer ").strip()
            msg = json.dumps({"error": {"message": f"Incorrect API key provided: {token}", "type": "invalid_request_error"}})
            await self._send(writer, 401, msg.encode())
            return True
        if fault == "400":
            await self._send(writer, 400, b'{"error":{"message":"prompt too long","type":"invalid_request_error"}}')
            return True
        if fault == "500":
            await self._send(writer, 500, b'{"error":{"message":"internal error","type":"server_error"}}')
            return True
        if fault == "cut":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{\"id\": \"chat")
            await writer.drain()
            return False
        if fault == "malformed":
            await self._send(writer, 200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
            return True
        if fault == "badshape":
            await self._send(writer, 200, b'{"hello": "this is not a chat completion"}')
            return True
        if fault == "delay":
            await asyncio.sleep(self.hang_seconds)
        n = int(req.get("n") or 1)
        msgs = req.get("messages") or []
        seed = req.get("seed")
        texts = [self.reply(msgs, i, seed) for i in range(n)]
        pt = max(1, len(json.dumps(msgs)) // 4)
        ct = sum(max(1, len(t) // 4) for t in texts)
        payload = {
            "id": f"chatcmpl-{hashlib.sha1(body).hexdigest()[:12]}",
            "object": "chat.completion",
            "created": 0,
            "model": req.get("model") or self.model,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                for i, t in enumerate(texts)
            ],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        }
        await self._send(writer, 200, json.dumps(payload).encode())
        if fault is None:
            entry.answered = True
        return True


def refused_url() -> str:
    """A base URL on which nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def main() -> None:  # pragma: no cover - manual use
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    srv = FaultServer(latency=args.latency, port=args.port).start()
    print(srv.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
