"""OpenAI-compatible chat backend (OpenAI, ``vllm serve``, llama.cpp's server, TGI ...).

* bounded concurrency: a fixed pool of workers pulls requests one by one, so a finished request frees its slot at once
  (no batch barrier) and memory stays flat in the number of requests;
* per-request retries with exponential backoff and full jitter on 429 / 5xx / timeouts / connection errors / malformed
  responses, honouring ``Retry-After``;
* optional requests-per-minute and tokens-per-minute limits;
* the HTTP client: plain ``http://`` endpoints (``vllm serve`` replicas and the like) are spoken to with evolkit's small
  keep-alive HTTP/1.1 client (:mod:`evolkit.backends._lean_http`, some 20x less CPU per request than the SDK's httpx
  stack, which would otherwise be the bottleneck at thousands of requests per second, and 2-3x less than aiohttp:
  docs/performance.md); ``https://`` endpoints, proxied ones and ``http_client="sdk"`` use the OpenAI SDK's client,
  and ``http_client="aiohttp"`` uses aiohttp for plain http endpoints. All give the same results, retries and errors
  (except that a request sent on a keep-alive connection the server has just closed is re-sent at once by the lean
  client, and counted as a failed attempt by the others);
* structured output: a request's ``json_schema`` is sent as ``response_format`` (type ``json_schema``, see
  :func:`response_format`). An endpoint that refuses it (400/422) gets the request once more without it, at once and
  outside the retry budget; when that one is answered, the endpoint is remembered and gets no ``response_format``
  from then on (a warning says so). llama.cpp's server honours ``response_format`` on chat requests only (raw requests
  go to ``/completions``, where it reads its own ``json_schema`` field instead);
* several base URLs: each request goes to the healthy endpoint with the fewest requests in flight; an endpoint that keeps
  failing is drained for a cool-down while its requests are retried elsewhere. After the cool-down it gets one probe
  request at a time until one succeeds; a failed probe drains it again for twice as long (up to 16 cool-downs). An
  attempt that failed because of its endpoint (connection error, timeout, 5xx) while another endpoint is healthy is
  retried there at once and does not use up the request's retries, so a dead replica never makes a request fail.

A request that still fails after its retries becomes ``Result(error=...)`` for that item alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from .base import Backend, Completion, Request, Result

log = logging.getLogger("evolkit.backends.openai")

class _Bucket:
    """A token bucket refilled continuously: ``rate`` units per minute."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = per_minute
        self.level = per_minute
        self.t = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, amount: float) -> None:
        amount = min(amount, self.capacity)
        async with self.lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
                self.t = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)


@dataclass
class _Endpoint:
    url: str
    #: Several clients, each with its own small connection pool: a worker always uses the same one (see ``stream``).
    clients: list[Any]
    #: The lean HTTP client's connections (plain http endpoints); None: requests go through ``clients``.
    lean: Any = None
    #: aiohttp sessions (plain http endpoints); None: requests go through ``clients`` or ``lean``.
    aio: Any = None
    in_flight: int = 0
    #: The endpoint answered a request with a ``response_format`` by 400/422 and the same request without it: its
    #: requests are sent without one from then on.
    no_response_format: bool = False
    consecutive_failures: int = 0
    down_until: float = 0.0
    #: Drained before and not yet proven healthy again: at most one request (a probe) at a time.
    suspect: bool = False
    cooldown: float = 0.0


def _lean_ok(url: str, mode: str) -> bool:
    """Whether ``url`` goes through the lean client: ``lean`` forces it for http URLs; ``auto`` uses it for http URLs
    that no proxy setting of the environment applies to (https, proxies: the SDK's client)."""
    if mode == "sdk" or not url.startswith("http://"):
        return False
    if mode == "lean":
        return True
    import urllib.request
    from urllib.parse import urlsplit

    proxies = urllib.request.getproxies()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(urlsplit(url).netloc))


class _AiohttpPool:
    """aiohttp for one plain-http endpoint: one session (keep-alive pool) per event loop, since each stage runs its
    own loop and a session cannot outlive the loop it was made in. A session is closed when its loop shuts down
    (``asyncio.run`` cancels the task that owns it) or by :meth:`aclose`."""

    def __init__(self, url: str, headers: dict[str, str], limit: int, timeout: float):
        self.url = url.rstrip("/")
        self.headers = headers
        self.limit = limit
        self.timeout = timeout
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: asyncio.Task | None = None

    def session(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._session is None or self._session.closed:
            import aiohttp

            # keepalive_timeout 4 s: an idle connection is dropped before servers with the usual 5 s keep-alive
            # (uvicorn, so ``vllm serve``; llama.cpp's server) close it, so a request is rarely sent on a stale one.
            connector = aiohttp.TCPConnector(limit=self.limit, keepalive_timeout=4.0)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self.headers, timeout=aiohttp.ClientTimeout(total=self.timeout),
                skip_auto_headers=("User-Agent",),
            )
            self._loop = loop
            self._owner = loop.create_task(self._own(self._session))
        return self._session

    @staticmethod
    async def _own(session: Any) -> None:
        try:
            await asyncio.get_running_loop().create_future()  # until the loop shuts down or aclose
        finally:
            await session.close()

    async def aclose(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None and self._loop is asyncio.get_running_loop() and not owner.done():
            owner.cancel()
            await asyncio.gather(owner, return_exceptions=True)
        self._session = None
        self._loop = None


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    """The ``response_format`` that asks an OpenAI-compatible server for JSON following ``schema`` (OpenAI, ``vllm
    serve`` and llama.cpp's server read this form). Strict mode (OpenAI) only where the schema allows it."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", str(schema.get("title") or "answer")).strip("_")[:64] or "answer"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": _strict_ok(schema)}}


def _strict_ok(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts ``schema``: every object sets ``additionalProperties: false`` and requires
    all its properties (a schema that breaks this is sent with ``strict: false`` rather than rejected)."""
    if not isinstance(schema, dict):
        return True
    props = schema.get("properties")
    if schema.get("type") == "object" or isinstance(props, dict):
        if schema.get("additionalProperties") is not False:
            return False
        if set(props or {}) != set(schema.get("required") or []):
            return False
    subs: list[Any] = list((props or {}).values()) if isinstance(props, dict) else []
    for key in ("items", "not", "additionalProperties"):
        subs.append(schema.get(key))
    for key in ("anyOf", "allOf", "oneOf", "prefixItems"):
        subs.extend(schema.get(key) or [])
    for key in ("$defs", "definitions"):
        subs.extend((schema.get(key) or {}).values())
    return all(_strict_ok(x) for x in subs)


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, endpoint_fault: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.endpoint_fault = endpoint_fault


class OpenAIBackend(Backend):
    supports_json_schema = True

    def __init__(
        self,
        model: str,
        base_url: str | Sequence[str] | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 128,
        max_retries: int = 6,
        request_timeout: float = 600.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        rpm: float | None = None,
        tpm: float | None = None,
        extra_body: dict[str, Any] | None = None,
        drain_after_failures: int = 5,
        drain_seconds: float = 30.0,
        retry_after_max: float = 300.0,
        connections_per_client: int = 8,
        http_client: str = "auto",
    ):
        super().__init__()
        import httpx

        self.model = model
        urls = [base_url] if isinstance(base_url, str) or base_url is None else list(base_url)
        key = api_key or os.environ.get(api_key_env) or "EMPTY"
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.extra_body = extra_body or {}
        self.drain_after_failures = drain_after_failures
        self.drain_seconds = drain_seconds
        #: A server's Retry-After is honoured up to this many seconds (independent of our own backoff cap).
        self.retry_after_max = retry_after_max
        self._rpm = _Bucket(rpm) if rpm else None
        self._tpm = _Bucket(tpm) if tpm else None
        # httpx's connection pool does work quadratic in its size on every request, which dominates at a concurrency
        # of 100+; so the slots are spread over clients of ``connections_per_client`` connections each (worker w uses
        # client w % clients), which keeps each pool small and the per-request cost flat.
        per = max(1, int(connections_per_client))
        n_clients = -(-self.max_concurrency // per)
        per = -(-self.max_concurrency // n_clients)
        self._limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        self._tls: Any = None  # one CA bundle load, shared by the SDK clients (made when the first one is)
        self._key = key
        self._n_clients = n_clients
        if http_client not in ("auto", "lean", "aiohttp", "sdk"):
            raise ValueError(f"http_client must be auto, lean, aiohttp or sdk, not {http_client!r}")
        if http_client == "aiohttp":
            try:
                import aiohttp  # noqa: F401
            except ImportError as e:
                raise RuntimeError("http_client 'aiohttp' needs aiohttp: pip install 'evolkit[aiohttp]'") from e
        self.request_timeout = request_timeout
        self.endpoints = []
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Accept": "application/json",
                   "Accept-Encoding": "gzip, deflate", "User-Agent": "evolkit"}
        for url in urls:
            if url and http_client == "aiohttp" and url.startswith("http://"):
                aio = _AiohttpPool(url, headers, self.max_concurrency, request_timeout)
                self.endpoints.append(_Endpoint(url, [], aio=aio))
            elif url and _lean_ok(url, http_client):
                from ._lean_http import LeanPool

                # Its SDK client (only to phrase status errors exactly as the SDK does) is made when first needed.
                lean = LeanPool(url, headers, max_idle=self.max_concurrency)
                self.endpoints.append(_Endpoint(url, [], lean=lean))
            else:
                self.endpoints.append(_Endpoint(url or "https://api.openai.com/v1", self._sdk_clients(url, n_clients)))

    def _sdk_clients(self, url: str | None, n: int) -> list[Any]:
        import httpx
        from openai import AsyncOpenAI

        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return [
            AsyncOpenAI(
                base_url=url,
                api_key=self._key,
                max_retries=0,
                timeout=self.request_timeout,
                http_client=httpx.AsyncClient(limits=self._limits, timeout=self.request_timeout, verify=self._tls),
            )
            for _ in range(n)
        ]

    # -- endpoint choice -------------------------------------------------------------------------------------------
    def _pick(self) -> _Endpoint:
        if len(self.endpoints) == 1:
            return self.endpoints[0]
        now = time.monotonic()
        up = [e for e in self.endpoints if e.down_until <= now]
        healthy = [e for e in up if not (e.suspect and e.in_flight > 0)] or up or self.endpoints
        return min(healthy, key=lambda e: e.in_flight)

    def _mark(self, ep: _Endpoint, ok: bool) -> None:
        if ok:
            ep.consecutive_failures = 0
            ep.suspect = False
            ep.cooldown = 0.0
            return
        ep.consecutive_failures += 1
        if len(self.endpoints) < 2:
            return
        if ep.suspect and ep.down_until <= time.monotonic():  # a failed probe: drained again, for longer
            ep.cooldown = min(ep.cooldown * 2, 16 * self.drain_seconds)
            ep.down_until = time.monotonic() + ep.cooldown
            ep.consecutive_failures = 0
        elif ep.consecutive_failures >= self.drain_after_failures:
            ep.cooldown = max(ep.cooldown, self.drain_seconds)
            ep.down_until = time.monotonic() + ep.cooldown
            ep.suspect = True
            ep.consecutive_failures = 0

    def _other_healthy(self, ep: _Endpoint) -> bool:
        now = time.monotonic()
        return any(e is not ep and e.down_until <= now and not e.suspect for e in self.endpoints)

    # -- one request -----------------------------------------------------------------------------------------------
    async def _call(self, ep: _Endpoint, req: Request, slot: int = 0, schema: bool = False) -> list[Completion]:
        """One attempt at ``ep``; ``schema``: ask for :attr:`Request.json_schema` through ``response_format``."""
        import httpx
        import openai

        s = req.sampling
        body: dict[str, Any] = dict(model=self.model, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
        if req.raw:  # plain-text prompt: the legacy completions endpoint (vllm serve, llama.cpp, TGI all serve it)
            body["prompt"] = req.prompt_text()
        else:
            body["messages"] = req.messages
        if s.n != 1:
            body["n"] = s.n
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed + req.sample_offset
        if schema:
            body["response_format"] = response_format(req.json_schema or {})
        if self.extra_body:
            body.update(self.extra_body)
        path = "/completions" if req.raw else "/chat/completions"
        if ep.aio is not None:
            data = await self._aiohttp_post(ep, path, body)
            return self._completions(data, req)
        if ep.lean is not None:
            data = await self._lean_post(ep, path, body)
            return self._completions(data, req)
        # The SDK's generic ``post`` (its documented way to send a body as is): same auth, timeouts and errors as
        # ``chat.completions.create``, without its per-request parameter transformation and response model
        # construction, which cost more than everything else together at high request rates.
        try:
            client = ep.clients[slot % len(ep.clients)]
            resp = await client.post(path, cast_to=httpx.Response, body=body)
        except openai.APIStatusError as e:
            code = e.status_code
            if code == 429 or code >= 500 or code == 408:
                ra = e.response.headers.get("retry-after") if e.response is not None else None
                try:
                    retry_after = float(ra) if ra is not None else None
                except ValueError:
                    retry_after = None
                raise _Retryable(f"http {code}", retry_after, endpoint_fault=code >= 500) from e
            raise  # 4xx other than 408/429: the request itself is wrong; retrying will not help
        except openai.APITimeoutError as e:
            raise _Retryable("timeout", endpoint_fault=True) from e
        except openai.APIConnectionError as e:
            raise _Retryable("connection error", endpoint_fault=True) from e
        try:
            data = resp.json()
        except ValueError as e:  # malformed JSON body
            raise _Retryable(f"malformed response: {type(e).__name__}") from e
        return self._completions(data, req)

    async def _lean_post(self, ep: _Endpoint, path: str, body: dict[str, Any]) -> Any:
        """One exchange with the lean client, failures sorted exactly as :meth:`_call` sorts the SDK's."""
        import json

        import zlib

        from ._lean_http import ProtocolError

        payload = json.dumps(body).encode()
        try:
            status, headers, content = await ep.lean.post(path, payload, self.request_timeout)
        except TimeoutError as e:
            raise _Retryable("timeout", endpoint_fault=True) from e
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError, zlib.error) as e:
            raise _Retryable("connection error", endpoint_fault=True) from e
        return self._answer(ep, path, status, headers, content)

    def _answer(self, ep: _Endpoint, path: str, status: int, headers: Any, content: bytes) -> Any:
        """The JSON body of a reply, or the failure it stands for (retryable: 408, 429, 5xx, malformed JSON), as the
        SDK's client sorts them. ``headers`` have lower-case names."""
        import json

        if status >= 400:
            if status == 429 or status >= 500 or status == 408:
                ra = headers.get("retry-after")
                try:
                    retry_after = float(ra) if ra is not None else None
                except ValueError:
                    retry_after = None
                raise _Retryable(f"http {status}", retry_after, endpoint_fault=status >= 500)
            raise self._status_error(ep, path, status, headers, content)
        try:
            return json.loads(content)
        except ValueError as e:  # malformed JSON body
            raise _Retryable(f"malformed response: {type(e).__name__}") from e

    async def _aiohttp_post(self, ep: _Endpoint, path: str, body: dict[str, Any]) -> Any:
        """One exchange through aiohttp, failures sorted exactly as :meth:`_call` sorts the SDK's."""
        import json

        import aiohttp

        payload = json.dumps(body).encode()
        try:
            async with ep.aio.session().post(ep.aio.url + path, data=payload) as resp:
                status = resp.status
                content = await resp.read()
                headers = resp.headers
        except TimeoutError as e:  # asyncio.TimeoutError is TimeoutError; aiohttp's timeout errors derive from it
            raise _Retryable("timeout", endpoint_fault=True) from e
        except (aiohttp.ClientError, OSError) as e:
            raise _Retryable("connection error", endpoint_fault=True) from e
        return self._answer(ep, path, status, {k.lower(): v for k, v in headers.items()}, content)

    def _status_error(self, ep: _Endpoint, path: str, status: int, headers: dict[str, str], content: bytes
                      ) -> Exception:
        """The exception the SDK raises for this response (same class and message), built by the SDK itself."""
        import httpx

        if not ep.clients:
            ep.clients = self._sdk_clients(ep.url, 1)
        client = ep.clients[0]
        request = httpx.Request("POST", f"{ep.url.rstrip('/')}{path}")
        skip = ("content-encoding", "transfer-encoding", "content-length")  # the body is already decoded
        hdrs = [(k, v) for k, v in headers.items() if k not in skip]
        response = httpx.Response(status, headers=hdrs, content=content, request=request)
        try:
            return client._make_status_error_from_response(response)
        except Exception:  # pragma: no cover - an SDK without that helper
            return RuntimeError(f"Error code: {status} - {content[:300].decode('utf-8', 'replace')}")

    def _completions(self, data: Any, req: Request) -> list[Completion]:
        s = req.sampling
        try:
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            usage = data.get("usage") or {}
            pt = usage.get("prompt_tokens") or 0
            ct = usage.get("completion_tokens") or 0
            out = [
                Completion(
                    (c.get("text") if req.raw else c["message"].get("content")) or "",
                    c.get("finish_reason"),
                    pt if i == 0 else 0,
                    (ct // max(1, len(choices))) if ct else 0,
                )
                for i, c in enumerate(choices)
            ]
        except (AttributeError, TypeError, KeyError) as e:
            raise _Retryable(f"malformed response: {type(e).__name__}: {e}") from e
        if len(out) < s.n:
            raise _Retryable(f"malformed response: {len(out)} of {s.n} choices")
        return out

    async def _one(self, req: Request, slot: int = 0) -> Result:
        est_tokens = 0
        if self._tpm:
            prompt_chars = sum(len(m.get("content", "")) for m in req.messages)
            est_tokens = req.sampling.max_tokens * req.sampling.n + prompt_chars // 4
        last = "unknown"
        sent = 0
        #: Attempts that failed because of their endpoint while another one was healthy: retried at once elsewhere,
        #: outside the retry budget (at most two per endpoint, so a request that fails everywhere still ends).
        free = 0
        attempt = 1
        #: The endpoints that refused this request's response_format (they get the request without one).
        refused_by: list[_Endpoint] = []
        refusal = ""
        while attempt <= self.max_retries + 1:
            if self._rpm:
                await self._rpm.take(1)
            if self._tpm:
                await self._tpm.take(est_tokens)
            ep = self._pick()
            ep.in_flight += 1
            sent += 1
            schema = req.json_schema is not None and ep not in refused_by and not ep.no_response_format
            try:
                comps = await self._call(ep, req, slot, schema)
                self._mark(ep, True)
                if ep in refused_by and not ep.no_response_format:
                    ep.no_response_format = True
                    log.warning("%s refused response_format (%s) and answered without it: its requests are sent "
                                "without a JSON schema from now on", ep.url, refusal)
                return Result(comps, attempts=sent)
            except _Retryable as e:
                last = e.reason
                self._mark(ep, not e.endpoint_fault)
                if e.endpoint_fault and free < 2 * len(self.endpoints) and self._other_healthy(ep):
                    free += 1
                    continue
                if attempt > self.max_retries:
                    break
                delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, self.retry_after_max))
                attempt += 1
                await asyncio.sleep(delay)
            except Exception as e:  # a non-retryable error of this request alone
                if schema and getattr(e, "status_code", None) in (400, 422):
                    # Perhaps the server does not take response_format: the same request once more, at once and
                    # outside the retry budget, without it if it goes to the same endpoint; if that endpoint answers
                    # it then, the endpoint is remembered.
                    refused_by.append(ep)
                    refusal = f"{type(e).__name__}: {str(e)[:200]}"
                    continue
                return Result(error=f"{type(e).__name__}: {str(e)[:300]}", attempts=sent)
            finally:
                ep.in_flight -= 1
        return Result(error=f"gave up after {sent} attempts: {last}", attempts=sent)

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, Result]]:
        n = len(requests)
        if n == 0:
            return
        queue: asyncio.Queue[tuple[int, Result]] = asyncio.Queue()
        it = iter(range(n))

        async def worker(slot: int) -> None:
            for i in it:  # shared iterator: each worker takes the next index when it is free
                try:
                    res = await self._one(requests[i], slot)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # never lose an item
                    res = Result(error=f"{type(e).__name__}: {e}")
                self.stats.add(res)
                queue.put_nowait((i, res))

        workers = [asyncio.create_task(worker(w)) for w in range(min(self.max_concurrency, n))]
        try:
            for _ in range(n):
                yield await queue.get()
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "endpoints": len(self.endpoints)}

    async def aclose(self) -> None:
        for ep in self.endpoints:
            if ep.lean is not None:
                await ep.lean.aclose()
            if ep.aio is not None:
                await ep.aio.aclose()
            for client in ep.clients:
                await client.close()
