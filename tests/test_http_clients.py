"""The HTTP clients of OpenAIBackend give the same results, retries and errors: evolkit's lean HTTP/1.1 client (the
default for plain http endpoints), aiohttp (``http_client="aiohttp"``) and the OpenAI SDK's httpx client. The two
direct clients read what OpenAI-compatible servers send: Content-Length and chunked bodies, gzip, keep-alive and
Connection: close, idle connections the server closed."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading

import pytest

from evolkit.backends import Request, Sampling
from evolkit.backends.openai import OpenAIBackend, _lean_ok
from tests.faultserver import FAULT_KINDS, FaultPlan, FaultServer

PLAN = FaultPlan({k: 0.12 for k in FAULT_KINDS}, max_failures=2, seed=11, always=("DOOMED",))


def _reqs(n: int, doomed: tuple[int, ...] = ()) -> list[Request]:
    return [Request([{"role": "user", "content": f"lean q{i}" + (" DOOMED" if i in doomed else "")}],
                    Sampling(n=2, max_tokens=8)) for i in range(n)]


def _run(be: OpenAIBackend, reqs: list[Request]) -> dict[int, object]:
    async def go() -> dict[int, object]:
        try:
            return {i: r async for i, r in be.stream(reqs)}
        finally:
            await be.aclose()

    return asyncio.run(go())


def _backend(url: str, client: str, **kw) -> OpenAIBackend:
    opts = dict(request_timeout=1.0, max_retries=3, backoff_base=0.01, backoff_max=0.05, max_concurrency=32)
    opts.update(kw)
    return OpenAIBackend("fault-model", base_url=url, api_key="sk-test-key", http_client=client, **opts)


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
def test_direct_and_sdk_clients_agree_under_every_fault(client: str) -> None:
    reqs = _reqs(120, doomed=(3, 50))
    out = {}
    for c in (client, "sdk"):
        with FaultServer(plan=PLAN, hang_seconds=3, retry_after=0.1) as srv:
            be = _backend(srv.base_url, c)
            assert (be.endpoints[0].lean is not None) == (c == "lean")
            assert (be.endpoints[0].aio is not None) == (c == "aiohttp")
            out[c] = _run(be, reqs)
            out[c + "-received"] = srv.received()
    direct, sdk = out[client], out["sdk"]
    assert sorted(direct) == sorted(sdk) == list(range(120))
    for i in range(120):
        a, b = direct[i], sdk[i]
        assert (a.ok, a.error, a.attempts) == (b.ok, b.error, b.attempts), i
        assert [(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in a.completions] == \
               [(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in b.completions], i
    assert not all(r.ok for r in sdk.values()) and any(r.attempts > 1 for r in sdk.values())  # faults did happen
    assert out[client + "-received"] == out["sdk-received"]  # the same requests reached the server, as often


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_status_errors_read_as_the_sdks(status: int) -> None:
    def plan(key: str, attempt: int) -> str | None:
        return "401" if status == 401 else None

    results = {}
    for client in ("lean", "aiohttp", "sdk"):
        if status == 401:  # the fault server's 401 quotes the key it was sent
            with FaultServer(plan=plan) as srv:
                results[client] = _run(_backend(srv.base_url, client), _reqs(1))[0]
        else:
            body = json.dumps({"error": {"message": f"bad request ({status})", "type": "invalid_request_error"}})
            with _TinyServer(status=status, body=body) as tiny:
                results[client] = _run(_backend(tiny.url, client), _reqs(1))[0]
    sdk = results["sdk"]
    assert not sdk.ok and sdk.attempts == 1 and str(status) in sdk.error, sdk.error
    for client in ("lean", "aiohttp"):
        r = results[client]
        assert not r.ok and r.error == sdk.error and r.attempts == 1, (client, r.error, sdk.error)


class _TinyServer:
    """A raw HTTP/1.1 server answering every POST with one prepared response (chunked, gzip, close ...)."""

    def __init__(self, status: int = 200, body: str | None = None, chunked: bool = False, gzipped: bool = False,
                 close: bool = False, http10: bool = False, close_idle_after: int | None = None):
        self.status, self.chunked, self.gzipped, self.close, self.http10 = status, chunked, gzipped, close, http10
        self.body = body
        self.close_idle_after = close_idle_after  # close a keep-alive connection after this many requests on it
        self.requests = 0
        self.connections = 0

    def _payload(self, req: dict) -> bytes:
        if self.body is not None:
            return self.body.encode()
        n = int(req.get("n") or 1)
        last = req["messages"][-1]["content"]
        return json.dumps({"choices": [{"index": i, "message": {"role": "assistant", "content": f"{last} -> {i}"},
                                        "finish_reason": "stop"} for i in range(n)],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 4 * n}}).encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                              if ln.lower().startswith(b"content-length"))
                req = json.loads(await reader.readexactly(length))
                self.requests += 1
                served += 1
                payload = self._payload(req)
                version = "HTTP/1.0" if self.http10 else "HTTP/1.1"
                headers = [f"{version} {self.status} X", "Content-Type: application/json"]
                if self.gzipped:
                    payload = gzip.compress(payload)
                    headers.append("Content-Encoding: gzip")
                if self.close:
                    headers.append("Connection: close")
                if self.chunked:
                    headers.append("Transfer-Encoding: chunked")
                    mid = len(payload) // 2
                    parts = [p for p in (payload[:mid], payload[mid:]) if p]
                    body = b"".join(f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n" for p in parts)
                    body += b"0\r\nX-Trailer: yes\r\n\r\n"
                elif self.http10 and self.close:
                    body = payload  # no length: the body ends with the connection
                else:
                    headers.append(f"Content-Length: {len(payload)}")
                    body = payload
                writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
                await writer.drain()
                if self.close or (self.close_idle_after is not None and served >= self.close_idle_after):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.tasks.discard(asyncio.current_task())

    def __enter__(self) -> _TinyServer:
        ready = threading.Event()
        self.tasks: set = set()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self.srv = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{self.srv.sockets[0].getsockname()[1]}/v1"
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            self.srv.close()
            for t in list(self.tasks):
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        self.thread.join(10)


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
@pytest.mark.parametrize("kind", ["chunked", "gzip", "chunked+gzip", "close", "http10-close", "idle-closed"])
def test_direct_clients_read_server_variants(kind: str, client: str) -> None:
    opts = {"chunked": dict(chunked=True), "gzip": dict(gzipped=True), "chunked+gzip": dict(chunked=True, gzipped=True),
            "close": dict(close=True), "http10-close": dict(http10=True, close=True),
            "idle-closed": dict(close_idle_after=3)}[kind]
    with _TinyServer(**opts) as srv:
        be = _backend(srv.url, client, max_concurrency=4)
        got = _run(be, _reqs(40))
        requests = srv.requests
    assert sorted(got) == list(range(40))
    for i, r in got.items():
        if client == "lean" or kind != "idle-closed":
            assert r.ok and r.attempts == 1, (i, r.error)  # a connection closed by the server is no failed attempt
        else:
            # aiohttp, like the SDK's httpx, may send a request on a connection the server has just closed: that
            # attempt fails ("connection error") and is retried; the lean client sends it again on a fresh one.
            assert r.ok and r.attempts <= 2, (i, r.error)
        assert [c.text for c in r.completions] == [f"lean q{i} -> 0", f"lean q{i} -> 1"]
        assert r.completions[0].prompt_tokens == 5 and r.completions[0].completion_tokens == 4
    assert requests == 40


def test_which_endpoints_use_the_lean_client(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert _lean_ok("http://10.0.0.5:8000/v1", "auto")
    assert not _lean_ok("https://api.openai.com/v1", "auto") and not _lean_ok("https://x/v1", "lean")
    assert not _lean_ok("http://10.0.0.5:8000/v1", "sdk")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.local:3128")
    assert not _lean_ok("http://10.0.0.5:8000/v1", "auto")  # proxied: the SDK's client honours the proxy
    monkeypatch.setenv("NO_PROXY", "10.0.0.5")
    assert _lean_ok("http://10.0.0.5:8000/v1", "auto")


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
def test_backend_reused_across_event_loops(client: str) -> None:
    """Stages run one event loop each with the same backend: connections of a finished loop are not reused."""
    with _TinyServer() as srv:
        be = _backend(srv.url, client, max_concurrency=4)

        async def once(reqs: list[Request]) -> dict[int, object]:
            return {i: r async for i, r in be.stream(reqs)}

        first = asyncio.run(once(_reqs(10)))
        second = asyncio.run(once(_reqs(10)))
        asyncio.run(be.aclose())
        connections = srv.connections
    assert all(r.ok and r.attempts == 1 for r in list(first.values()) + list(second.values()))
    assert [c.text for c in second[3].completions] == ["lean q3 -> 0", "lean q3 -> 1"]
    assert connections >= 2  # the second loop opened its own connections
