"""A small HTTP/1.1 client for JSON POSTs to OpenAI-compatible servers on plain ``http://`` (``vllm serve`` replicas,
llama.cpp, TGI on a LAN), used by :class:`~evolkit.backends.openai.OpenAIBackend` instead of the SDK's httpx stack.

At a few thousand requests per second the client itself becomes the bottleneck: the SDK + httpx + httpcore + h11
path costs on the order of a millisecond of CPU per request, this one a few tens of microseconds (asyncio streams,
keep-alive connections reused LIFO, one ``bytes`` join per request, one header parse per response). It speaks what
those servers speak: ``Content-Length`` and ``chunked`` bodies, ``gzip``/``deflate`` encodings, keep-alive and
``Connection: close``; anything else (https, proxies, HTTP/2) stays with the SDK client.

A connection that has been idle may have been closed by the server (keep-alive timeout): when a reused connection
ends before any byte of the response, the request is sent again on a fresh one, as HTTP clients usually do. Every
other failure is raised: ``ConnectionError``/``OSError``/``asyncio.IncompleteReadError`` for a broken exchange,
``TimeoutError`` when the whole exchange takes longer than ``timeout`` (checked every ``timeout / 20``, at most
every second), :class:`ProtocolError` for an unreadable
response.
"""

from __future__ import annotations

import asyncio
import zlib
from urllib.parse import urlsplit

_LIMIT = 1 << 22  # longest header line / chunk-size line the reader accepts


class ProtocolError(ConnectionError):
    """The server's answer is not HTTP/1.x we can read."""


class _Stale(Exception):
    """A reused connection ended before any byte of the response arrived."""


class LeanPool:
    """Keep-alive connections to one ``http://host:port/prefix`` (at most ``max_idle`` kept idle)."""

    def __init__(self, base_url: str, default_headers: dict[str, str], max_idle: int = 256):
        u = urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"lean HTTP client: only http://host[:port][/path] URLs, not {base_url!r}")
        self.host = u.hostname
        self.port = u.port or 80
        self.prefix = u.path.rstrip("/")
        host_header = u.hostname if u.port is None else f"{u.hostname}:{u.port}"
        if ":" in u.hostname and not u.hostname.startswith("["):  # IPv6 literal
            host_header = f"[{u.hostname}]" + (f":{u.port}" if u.port else "")
        lines = [f"Host: {host_header}"] + [f"{k}: {v}" for k, v in default_headers.items()]
        self._head_tail = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.max_idle = max_idle
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._deadlines: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None
        self._period = 1.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        """Forget the connections and the watchdog of another event loop (they cannot be used from this one)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            self._close(conn)
        self._deadlines.clear()
        self._expired.clear()
        self._watchdog = None
        self._loop = loop

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, limit=_LIMIT)

    @staticmethod
    def _close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        try:
            conn[1].close()
        except Exception:  # pragma: no cover - closing a broken transport
            pass

    async def post(self, path: str, body: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
        """POST ``body`` (JSON) to ``prefix + path``; returns (status, headers with lower-case names, body)."""
        request = b"".join((
            b"POST ", (self.prefix + path).encode("latin-1"), b" HTTP/1.1\r\n", self._head_tail,
            b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body,
        ))
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # used from a new event loop (each stage runs its own): start afresh
            self._reset(loop)
        self._deadlines[task] = loop.time() + timeout
        if self._watchdog is None or self._watchdog.done():
            self._period = min(1.0, max(0.005, timeout / 20))
            self._watchdog = loop.create_task(self._watch())
        else:
            self._period = min(self._period, max(0.005, timeout / 20))
        try:
            return await self._post(request)
        except asyncio.CancelledError:
            if task in self._expired:  # our deadline, not someone else's cancellation
                self._expired.discard(task)
                task.uncancel()
                raise TimeoutError(f"no complete answer within {timeout:g} s") from None
            raise
        finally:
            self._deadlines.pop(task, None)
            self._expired.discard(task)

    async def _watch(self) -> None:
        """Cancels the exchanges past their deadline (one timer for all of them, not one per request: at thousands
        of requests per second the per-request timer handles of ``asyncio.timeout`` cost more than the rest)."""
        loop = asyncio.get_running_loop()
        while self._deadlines:
            await asyncio.sleep(self._period)
            now = loop.time()
            for task, deadline in list(self._deadlines.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def _post(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        while True:
            conn = None
            while self._idle:
                cand = self._idle.pop()
                if cand[0].at_eof() or cand[1].is_closing():
                    self._close(cand)
                    continue
                conn = cand
                break
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                status, headers, data, keep = await self._exchange(conn, request, reused)
            except _Stale:
                self._close(conn)
                continue  # the server had closed this idle connection: send it again on another one
            except BaseException:
                self._close(conn)
                raise
            if keep and len(self._idle) < self.max_idle:
                self._idle.append(conn)
            else:
                self._close(conn)
            return status, headers, data

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes, reused: bool
                        ) -> tuple[int, dict[str, str], bytes, bool]:
        reader, writer = conn
        try:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if reused and not e.partial:
                raise _Stale() from e
            raise
        except (ConnectionResetError, BrokenPipeError) as e:
            if reused:
                raise _Stale() from e
            raise
        status, version, headers = _parse_head(head)
        while 100 <= status < 200:  # interim responses (100 Continue ...): the real one follows
            status, version, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        conn_hdr = headers.get("connection", "").lower()
        keep = ("close" not in conn_hdr) if version >= (1, 1) else ("keep-alive" in conn_hdr)
        te = headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            data = await _read_chunked(reader)
        elif "content-length" in headers:
            try:
                n = int(headers["content-length"].split(",")[0].strip())
            except ValueError:
                raise ProtocolError(f"bad Content-Length {headers['content-length']!r}") from None
            data = await reader.readexactly(n)
        elif status in (204, 304):
            data = b""
        else:  # no length: the body ends with the connection
            data = await reader.read()
            keep = False
        enc = headers.get("content-encoding", "").lower().strip()
        if enc in ("gzip", "x-gzip"):
            data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            try:
                data = zlib.decompress(data)
            except zlib.error:
                data = zlib.decompress(data, -zlib.MAX_WBITS)
        elif enc not in ("", "identity"):
            raise ProtocolError(f"unsupported Content-Encoding {enc!r}")
        return status, headers, data, keep

    async def aclose(self) -> None:
        if self._loop is not asyncio.get_running_loop():
            self._reset(asyncio.get_running_loop())
        if self._watchdog is not None and not self._watchdog.done():
            self._watchdog.cancel()
        idle, self._idle = self._idle, []
        for conn in idle:
            self._close(conn)


def _parse_head(head: bytes) -> tuple[int, tuple[int, int], dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    version = (1, 1) if parts[0] == "HTTP/1.1" else (1, 0)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(parts[1]), version, headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError("chunk not followed by CRLF")
