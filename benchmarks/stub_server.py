"""An instant, content-aware OpenAI-compatible stub for the memory and scale benchmarks (run in its own process).

Replies come from ``tests/stub_replies.py`` (an evolution prompt gets a new word problem with numbers, a solve prompt a
three-step solution whose final answer agrees across most samples), plus two rules: a solve prompt of a synthetic seed
(:func:`synthetic_problem`) gets the right answer in 80% of the samples, so the sft stage keeps and drops rows as it
would on a real teacher; and 4.5% of evolutions are what the filters exist for (refusals, exact and near copies of a
few stock problems, copies of GSM8k test problems: see :func:`evolution`), so every filter eliminates something. ``GET /stats`` returns the requests and completions served so far
(counted at the server, so a benchmark can tell how many requests a resumed run sent again).

Usage: ``python benchmarks/stub_server.py`` prints the port it listens on, then serves until killed.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.stub_replies import h, smart_reply  # noqa: E402

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elif", "Femi", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Milo", "Nora",
         "Omar", "Pia", "Quin", "Rosa", "Sami", "Tara")
ITEMS = ("apple", "marble", "pencil", "sticker", "cookie", "ticket", "shell", "button", "stamp", "card", "bead", "coin")
PLACES = ("garage", "kitchen", "attic", "classroom", "garden", "library", "basement", "office", "studio", "barn")

_SYNTH = re.compile(r"has (\d+) (\w+)s in the \w+\. \w+ gives \w+ (\d+) more \w+s, and then \w+ buys (\d+) packs "
                    r"with (\d+) \w+s in each pack\. On the way home \w+ loses (\d+) ")


def synthetic_problem(i: int) -> dict[str, str]:
    """A GSM8k-style record (``question``, ``answer`` with ``#### N``), unique for every ``i`` (mixed-radix numbers)."""
    a, rest = 10 + i % 90, i // 90
    b, rest = 2 + rest % 40, rest // 40
    c, rest = 2 + rest % 9, rest // 9
    d, rest = 3 + rest % 12, rest // 12
    e = 1 + rest % 9 + 10 * (rest // 9)
    name, other = NAMES[i % len(NAMES)], NAMES[(i * 7 + 3) % len(NAMES)]
    item, place, place2 = ITEMS[(i // 3) % len(ITEMS)], PLACES[(i // 5) % len(PLACES)], PLACES[(i // 7) % len(PLACES)]
    total = a + b + c * d - e
    q = (f"{name} has {a} {item}s in the {place}. {other} gives {name} {b} more {item}s, and then {name} buys {c} packs "
         f"with {d} {item}s in each pack. On the way home {name} loses {e} {item}s near the {place2}. How many "
         f"{item}s does {name} have now?")
    sol = (f"{name} starts with {a} {item}s and gets {b} more, so {a} + {b} = <<{a}+{b}={a + b}>>{a + b}.\n"
           f"The packs hold {c} * {d} = <<{c}*{d}={c * d}>>{c * d} {item}s.\n"
           f"Together that is {a + b} + {c * d} = <<{a + b}+{c * d}={a + b + c * d}>>{a + b + c * d}.\n"
           f"After losing {e}, {name} has {a + b + c * d} - {e} = <<{a + b + c * d}-{e}={total}>>{total}.\n"
           f"#### {total}")
    return {"question": q, "answer": sol}


def write_seed_file(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps(synthetic_problem(i)) + "\n")
    return path


#: Evolutions that the filters must catch, per 1,000: refusals, exact copies of a few stock problems (every copy after
#: the first is a duplicate), near copies of them, and copies of benchmark test problems (decontamination).
REFUSE, EXACT, NEAR, TEST = 10, 15, 10, 10
_STOCK = [smart_reply([{"role": "user", "content": f"Rewrite the math problem stock {i}"}], 0) for i in range(50)]
_TESTS: list[str] = []


def _test_questions() -> list[str]:
    if not _TESTS:
        from evolkit.settings import data_dir

        path = data_dir() / "gsm8k" / "test.jsonl"
        if path.exists():
            with open(path, encoding="utf-8") as f:
                _TESTS.extend(json.loads(line)["question"] for line in f if line.strip())
        _TESTS.append("")  # looked once
    return _TESTS[:-1]


def evolution(messages: list[dict[str, Any]], index: int, seed: Any, last: str) -> str:
    x = h("filters", last, seed, index) % 1000
    pick = h("pick", last, seed, index)
    if x < REFUSE:
        return "I'm sorry, but I can't rewrite this problem."
    x -= REFUSE
    if x < EXACT:
        return _STOCK[pick % len(_STOCK)]
    x -= EXACT
    if x < NEAR:
        return _STOCK[pick % len(_STOCK)] + " Explain."
    x -= NEAR
    tests = _test_questions()
    if x < TEST and tests:
        return tests[pick % len(tests)]
    return smart_reply(messages, index, seed)


def reply(messages: list[dict[str, Any]], index: int, seed: Any = None) -> str:
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    m = _SYNTH.search(last)
    system = next((m_.get("content", "") for m_ in messages if m_.get("role") == "system"), "")
    if system.startswith("You write math problems") or last.startswith("Rewrite the math problem"):
        return evolution(messages, index, seed, last)
    if m:
        a, _, b, c, d, e = m.groups()
        ans = int(a) + int(b) + int(c) * int(d) - int(e)
        if h("agree", last, index, seed) % 10 >= 8:
            ans += 1 + h("d", last, index) % 5
        return (f"Step 1: Add the gifts: {a} + {b} = {int(a) + int(b)}.\n\nStep 2: The packs hold {c} * {d} = "
                f"{int(c) * int(d)}.\n\nStep 3: Take away the {e} lost ones.\n\nThe answer is: {ans}")
    return smart_reply(messages, index, seed)


STATS = {"requests": 0, "completions": 0}


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The next request on a keep-alive connection: (head, body); the body is ``{}`` when there is none."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return head, (await reader.readexactly(length) if length else b"{}")


def chat_completion(texts: list[str], model: str = "stub", prompt_tokens: int = 20, completion_tokens: int = 60
                    ) -> bytes:
    """An OpenAI chat-completion body with one choice per text (``completion_tokens`` counted per choice)."""
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
               for i, t in enumerate(texts)]
    used = completion_tokens * len(texts)
    return json.dumps({"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": model,
                       "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                                                     "total_tokens": prompt_tokens + used}}).encode()


def http_ok(payload: bytes) -> bytes:
    """A 200 response carrying a JSON payload (keep-alive)."""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head, body = await read_request(reader)
            length = len(body)
            if head.startswith(b"GET /stats"):
                payload = json.dumps(STATS).encode()
            else:
                req = json.loads(body)
                n = int(req.get("n") or 1)
                msgs = req.get("messages") or [{"role": "user", "content": req.get("prompt", "")}]
                STATS["requests"] += 1
                STATS["completions"] += n
                payload = chat_completion([reply(msgs, i, req.get("seed")) for i in range(n)],
                                          req.get("model", "stub"), length // 4)
            writer.write(http_ok(payload))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve() -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", 0, backlog=4096, limit=1 << 22)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


class Stub:
    """The stub in a subprocess: ``with Stub() as url: ...``; :meth:`stats` asks it for its counts."""

    def __init__(self) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=30) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def __enter__(self) -> Stub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    asyncio.run(_serve())
