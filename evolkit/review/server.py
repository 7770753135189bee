"""Start and stop a real local Argilla 2.8 server stack (redis + osmem + argilla-server), with the stdlib only.

    from evolkit.review.server import LocalArgilla

    with LocalArgilla("argilla-work") as srv:          # or srv = LocalArgilla(...).start(); ...; srv.stop()
        import argilla as rg
        client = rg.Argilla(api_url=srv.url, api_key=srv.api_key)
        srv.reviewers                                         # [("reviewer1", "<password>"), ("reviewer2", ...)]

    python -m evolkit.review.server [--workdir DIR] [--port N]    # prints URL, owner API key, reviewer logins

The stack, all on 127.0.0.1 and on free ports unless ``port`` is given:

* ``redis-server`` (Debian package) with no persistence (``--save "" --appendonly no``): Argilla's job queue;
* ``osmem-server``: an in-memory OpenSearch-compatible engine (``ARGILLA_SEARCH_ENGINE=opensearch``). It keeps
  nothing on disk, so each start reindexes every dataset from the database;
* ``argilla-server==2.8.0`` on SQLite (``<workdir>/argilla/argilla.db``), run by ``_argilla_entry.py`` in its own venv
  (default ``<repo>/.cache/argilla-venv``, override with ``EVOLKIT_ARGILLA_VENV``; made by
  ``scripts/install_argilla_server.sh``). The entry script swaps in a search engine class that does not use Painless
  scripts (osmem refuses them; see ``_argilla_engine.py``), migrates the database, creates the owner (with an API key),
  the annotators and a default workspace when missing, reindexes, then runs uvicorn.

Nothing here imports ``argilla`` or ``argilla_server``: this module runs in the project venv, the server in its own.
The workdir keeps the SQLite database, ``credentials.json`` (mode 600: owner password + API key, reviewer passwords,
the token-signing secret; reused on the next start) and the logs ``redis.log``, ``osmem.log``, ``argilla.log``.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import IO, Optional, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent.parent
ENTRY_SCRIPT = PACKAGE_DIR / "_argilla_entry.py"
INSTALL_SCRIPT = REPO_DIR / "scripts" / "install_argilla_server.sh"
VENV_ENV_VAR = "EVOLKIT_ARGILLA_VENV"
DEFAULT_REVIEWERS = ("reviewer1", "reviewer2")
DEFAULT_WORKSPACE = "evolkit"
LOCALHOST = "127.0.0.1"

__all__ = ["LocalArgilla", "ArgillaServerError", "ArgillaServerNotInstalled", "default_venv", "main"]


class ArgillaServerError(RuntimeError):
    """The local Argilla stack could not be started (the message carries the relevant log tail)."""


class ArgillaServerNotInstalled(ArgillaServerError):
    """The argilla-server venv (or redis-server) is missing: run scripts/install_argilla_server.sh."""


def default_venv() -> Path:
    """The argilla-server venv: ``$EVOLKIT_ARGILLA_VENV`` or ``<repo>/.cache/argilla-venv``."""
    env = os.environ.get(VENV_ENV_VAR)
    return Path(env).expanduser().resolve() if env else REPO_DIR / ".cache" / "argilla-venv"


def _install_hint() -> str:
    return f"run `bash {INSTALL_SCRIPT}` (or set {VENV_ENV_VAR} to an existing argilla-server 2.8 venv)"


def venv_python(venv: Optional[Path] = None) -> Path:
    """The venv's python; raises ``ArgillaServerNotInstalled`` with the install hint when it is missing."""
    venv = Path(venv) if venv else default_venv()
    python = venv / "bin" / "python"
    if not python.exists():
        raise ArgillaServerNotInstalled(f"argilla-server venv not found at {venv}: {_install_hint()}")
    return python


def osmem_binary(venv: Path) -> Path:
    """The ``osmem-server`` binary bundled in the venv's ``osmem_server`` package (or ``$OSMEM_SERVER_BIN``)."""
    env = os.environ.get("OSMEM_SERVER_BIN")
    if env:
        return Path(env)
    for cand in sorted(venv.glob("lib/python3*/site-packages/osmem_server/bin/osmem-server")):
        if os.access(cand, os.X_OK):
            return cand
    raise ArgillaServerNotInstalled(f"osmem-server binary not found in {venv}: {_install_hint()}")


def redis_binary() -> Path:
    found = shutil.which("redis-server")
    if not found:
        raise ArgillaServerNotInstalled(f"redis-server is not on PATH: {_install_hint()}")
    return Path(found)


def is_installed(venv: Optional[Path] = None) -> bool:
    """True when the server venv, its osmem binary and redis-server are all present (nothing is started)."""
    try:
        venv = Path(venv) if venv else default_venv()
        venv_python(venv)
        osmem_binary(venv)
        redis_binary()
        return True
    except ArgillaServerNotInstalled:
        return False


def free_port(host: str = LOCALHOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_is_free(port: int, host: str = LOCALHOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT leftovers are fine
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _tail(path: Path, lines: int = 60, offset: int = 0) -> str:
    """The last ``lines`` lines of a log, from byte ``offset`` on (where the current run started writing)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child when the launcher dies (even by SIGKILL): no orphans."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort (non-Linux libc)
        pass


class _Proc:
    """One child process, its log file and how to stop it."""

    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path, log_file: IO, log_offset: int = 0):
        self.name, self.popen, self.log_path, self.log_file = name, popen, log_path, log_file
        self.log_offset = log_offset  # where this run's lines start in the (appended) log

    def tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines, self.log_offset)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float) -> None:
        p = self.popen
        if p.poll() is None:
            if p.stdin is not None:  # osmem exits when its stdin closes
                try:
                    p.stdin.close()
                except OSError:
                    pass
            self._signal(signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                p.wait(timeout=10)
        # Anything left in its process group (it was started in a session of its own) goes too.
        self._signal(signal.SIGKILL, group_only=True)
        for stream in (p.stdin, p.stdout, self.log_file):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def _signal(self, sig: int, group_only: bool = False) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            if not group_only and self.popen.poll() is None:
                try:
                    self.popen.send_signal(sig)
                except ProcessLookupError:
                    pass


class LocalArgilla:
    """A local Argilla server stack in ``workdir``; ``start()`` / ``stop()`` or use it as a context manager.

    ``workdir`` (created if missing; a fresh temporary folder when ``None``, removed again by ``stop()``) keeps the
    SQLite database, ``credentials.json`` and the logs, so a later start on the same folder sees the same data
    (reindexed into the search engine at start). ``port`` is the Argilla HTTP port (a free one when ``None``).
    """

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        port: Optional[int] = None,
        *,
        venv: str | os.PathLike | None = None,
        reviewers: Sequence[str] = DEFAULT_REVIEWERS,
        owner: str = "owner",
        workspace: Optional[str] = DEFAULT_WORKSPACE,
        startup_timeout: float = 300.0,
        stop_timeout: float = 15.0,
        access_log: bool = False,
    ):
        names = [owner, *reviewers]
        bad = [n for n in names if not n or n != n.strip() or any(c.isspace() for c in n)]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"usernames must be distinct, non-empty and without spaces: {names!r}")
        self._tmp_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="evolkit-argilla-") if workdir is None else workdir).resolve()
        self.requested_port = port
        self.venv = Path(venv).resolve() if venv else default_venv()
        self.reviewer_names = list(reviewers)
        self.owner_name = owner
        self.workspace = workspace
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.access_log = access_log
        self.port: Optional[int] = None
        self.redis_url: Optional[str] = None
        self.search_url: Optional[str] = None
        self.startup_seconds: Optional[float] = None
        self._procs: dict[str, _Proc] = {}
        self._creds: dict = {}
        self._lock_file: Optional[IO] = None
        self._started = False
        self._finalizer = weakref.finalize(self, LocalArgilla._stop_procs, self._procs, 5.0)

    # ------------------------------------------------------------------ public API
    @property
    def url(self) -> str:
        """Base URL of the Argilla server (``http://127.0.0.1:PORT``)."""
        self._require_started()
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def api_key(self) -> str:
        """The owner's API key (``X-Argilla-Api-Key`` / ``argilla.Argilla(api_key=...)``)."""
        self._require_started()
        return self._creds["owner"]["api_key"]

    @property
    def owner(self) -> tuple[str, str]:
        """The owner's (username, password), for the web UI."""
        self._require_started()
        return self._creds["owner"]["username"], self._creds["owner"]["password"]

    @property
    def reviewers(self) -> list[tuple[str, str]]:
        """The annotator logins as (username, password); members of ``workspace`` when one is set."""
        self._require_started()
        return [(r["username"], r["password"]) for r in self._creds.get("reviewers", [])]

    @property
    def log_paths(self) -> dict[str, Path]:
        return {name: self.workdir / f"{name}.log" for name in ("redis", "osmem", "argilla")}

    @property
    def running(self) -> bool:
        return self._started and bool(self._procs) and all(p.alive() for p in self._procs.values())

    def start(self) -> "LocalArgilla":
        """Start redis, osmem and Argilla; return once ``/api/v1/status`` answers (raises ``ArgillaServerError``)."""
        if self._started:
            return self
        python = venv_python(self.venv)
        osmem_bin = osmem_binary(self.venv)
        redis_bin = redis_binary()
        if not ENTRY_SCRIPT.exists():
            raise ArgillaServerError(f"missing {ENTRY_SCRIPT}")
        if self.requested_port is not None and not _port_is_free(self.requested_port):
            raise ArgillaServerError(f"port {self.requested_port} on {LOCALHOST} is already in use")
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._acquire_workdir_lock()
        try:
            self._prepare_credentials()
            self._start_redis(redis_bin)
            self._start_osmem(osmem_bin)
            self._start_argilla(python)
            self._wait_ready()
        except BaseException:
            self._stop_procs(self._procs, self.stop_timeout)
            self._release_workdir_lock()
            raise
        self._started = True
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop Argilla, then osmem, then redis (SIGTERM, SIGKILL after ``stop_timeout``); safe to call twice."""
        self._stop_procs(self._procs, self.stop_timeout)
        self._started = False
        self._release_workdir_lock()
        if self._tmp_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalArgilla":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"http://{LOCALHOST}:{self.port}" if self._started else "not started"
        return f"LocalArgilla({str(self.workdir)!r}, {where})"

    def describe(self) -> str:
        """Human-readable connection details (contains secrets: for the terminal of the person who started it)."""
        lines = [
            f"Argilla {self.url}  (workdir {self.workdir})",
            f"  owner:     {self.owner[0]} / {self.owner[1]}",
            f"  API key:   {self.api_key}",
            f"  workspace: {self.workspace or '-'}",
        ]
        lines += [f"  reviewer:  {u} / {p}" for u, p in self.reviewers]
        lines.append(f"  logs:      {', '.join(str(p) for p in self.log_paths.values())}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ internals
    def _require_started(self) -> None:
        if not self._started:
            raise ArgillaServerError("the local Argilla server is not started (call start() first)")

    def _acquire_workdir_lock(self) -> None:
        f = open(self.workdir / ".lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise ArgillaServerError(f"{self.workdir} is in use by another running LocalArgilla") from None
            raise
        self._lock_file = f

    def _release_workdir_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @property
    def _cred_path(self) -> Path:
        return self.workdir / "credentials.json"

    def _prepare_credentials(self) -> None:
        """Load ``credentials.json`` or make one; every requested user gets a password (random on first start)."""
        old: dict = {}
        if self._cred_path.exists():
            try:
                old = json.loads(self._cred_path.read_text())
            except ValueError:
                old = {}
        owner = old.get("owner") or {}
        if owner.get("username") != self.owner_name:
            owner = {}
        owner = {
            "username": self.owner_name,
            "first_name": owner.get("first_name") or "Owner",
            "password": owner.get("password") or secrets.token_urlsafe(12),
            "api_key": owner.get("api_key") or "evk." + secrets.token_urlsafe(24),
        }
        known = {r.get("username"): r for r in old.get("reviewers", [])}
        reviewers = [
            {
                "username": name,
                "first_name": (known.get(name) or {}).get("first_name") or name,
                "password": (known.get(name) or {}).get("password") or secrets.token_urlsafe(12),
            }
            for name in self.reviewer_names
        ]
        self._creds = {
            "owner": owner,
            "reviewers": reviewers,
            "workspace": self.workspace,
            "auth_secret_key": old.get("auth_secret_key") or secrets.token_hex(32),
        }
        self._write_creds(self._creds)

    def _write_creds(self, creds: dict) -> None:
        tmp = self._cred_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(creds, f, indent=2)
        tmp.replace(self._cred_path)

    def _popen(self, name: str, cmd: list[str], *, env=None, stdin=None, stdout=None, log_mode="a") -> _Proc:
        log_path = self.workdir / f"{name}.log"
        log_file = open(log_path, log_mode)
        log_offset = log_file.tell()
        log_file.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd[:2])} ...\n")
        log_file.flush()
        # Ask for PDEATHSIG only from the main thread: Linux sends it when the *thread* that forked exits.
        preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        popen = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=env,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log_file,
            stderr=log_file,
            start_new_session=True,  # Ctrl-C in the terminal reaches the launcher only; it stops them in order
            preexec_fn=preexec,
        )
        proc = _Proc(name, popen, log_path, log_file, log_offset)
        self._procs[name] = proc
        return proc

    def _start_redis(self, redis_bin: Path) -> None:
        last = ""
        for _attempt in range(5):
            port = free_port()
            cmd = [
                str(redis_bin),
                "--bind", LOCALHOST,
                "--port", str(port),
                "--save", "",
                "--appendonly", "no",
                "--protected-mode", "yes",
                "--daemonize", "no",
                "--dir", str(self.workdir),
                "--logfile", "",
            ]  # fmt: skip
            proc = self._popen("redis", cmd)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if not proc.alive():
                    break
                if self._redis_ping(port):
                    self.redis_url = f"redis://{LOCALHOST}:{port}/0"
                    return
                time.sleep(0.05)
            proc.stop(2)
            self._procs.pop("redis", None)
            last = proc.tail(20)
            if "in use" not in last.lower():
                break
        raise ArgillaServerError(f"redis-server did not start; {self.workdir / 'redis.log'}:\n{last}")

    @staticmethod
    def _redis_ping(port: int) -> bool:
        try:
            with socket.create_connection((LOCALHOST, port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _start_osmem(self, osmem_bin: Path) -> None:
        # osmem picks its own free port (--addr ...:0) and prints {"url": ...} on stdout when ready. It exits when
        # its stdin closes or when --parent-pid disappears, so it cannot outlive the launcher.
        cmd = [str(osmem_bin), "--addr", f"{LOCALHOST}:0", "--parent-pid", str(os.getpid()), "--no-ja"]
        proc = self._popen("osmem", cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        ready: dict = {}

        def read_stdout() -> None:
            assert proc.popen.stdout is not None
            for raw in proc.popen.stdout:
                line = raw.decode(errors="replace")
                if not ready:
                    try:
                        msg = json.loads(line)
                        if isinstance(msg, dict) and "url" in msg:
                            ready.update(msg)
                            continue
                    except ValueError:
                        pass
                try:
                    proc.log_file.write(line)
                    proc.log_file.flush()
                except (OSError, ValueError):
                    return

        threading.Thread(target=read_stdout, name="osmem-stdout", daemon=True).start()
        deadline = time.monotonic() + 30
        while not ready and proc.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not ready:
            raise ArgillaServerError(f"osmem-server did not start; {proc.log_path}:\n{proc.tail(20)}")
        self.search_url = ready["url"]
        if not self.search_url.startswith(f"http://{LOCALHOST}:"):
            raise ArgillaServerError(f"osmem-server listens on {self.search_url}, expected {LOCALHOST}")

    def _server_env(self) -> dict:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ARGILLA_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        }
        home = self.workdir / "argilla"
        home.mkdir(exist_ok=True)
        env.update(
            {
                "ARGILLA_HOME_PATH": str(home),
                "ARGILLA_DATABASE_URL": f"sqlite+aiosqlite:///{home / 'argilla.db'}",
                "ARGILLA_SEARCH_ENGINE": "opensearch",
                "ARGILLA_ELASTICSEARCH": self.search_url or "",
                "ARGILLA_REDIS_URL": self.redis_url or "",
                "ARGILLA_AUTH_SECRET_KEY": self._creds["auth_secret_key"],
                "ARGILLA_SHOW_HUGGINGFACE_SPACE_PERSISTENT_STORAGE_WARNING": "false",
                "HF_HUB_DISABLE_TELEMETRY": "1",  # the server would otherwise report usage to the HF hub
                "PYTHONUNBUFFERED": "1",
                "NO_COLOR": "1",
            }
        )
        return env

    def _start_argilla(self, python: Path) -> None:
        for attempt in range(3):
            self.port = self.requested_port or free_port()
            cmd = [str(python), str(ENTRY_SCRIPT), "serve", "--host", LOCALHOST, "--port", str(self.port)]
            cmd += ["--credentials", str(self._cred_path)]
            if self.access_log:
                cmd.append("--access-log")
            self._popen("argilla", cmd, env=self._server_env())
            try:
                self._wait_status()
                return
            except ArgillaServerError as e:
                retry = self.requested_port is None and attempt < 2 and "address already in use" in str(e).lower()
                if not retry:
                    raise
                self._procs.pop("argilla").stop(self.stop_timeout)

    def _wait_status(self) -> None:
        proc = self._procs["argilla"]
        url = f"http://{LOCALHOST}:{self.port}/api/v1/status"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            for other in self._procs.values():
                if not other.alive():
                    raise ArgillaServerError(
                        f"{other.name} exited with code {other.popen.returncode} during startup; "
                        f"{other.log_path}:\n{other.tail()}"
                    )
            try:
                with urllib.request.urlopen(url, timeout=3) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ArgillaServerError(
                    f"Argilla did not answer {url} within {self.startup_timeout:.0f} s; {proc.log_path}:\n{proc.tail()}"
                )
            time.sleep(0.5)

    def _wait_ready(self) -> None:
        creds = json.loads(self._cred_path.read_text())
        if not creds.get("ready"):
            raise ArgillaServerError(f"Argilla answers but did not confirm its users; see {self.log_paths['argilla']}")
        self._creds = creds

    @staticmethod
    def _stop_procs(procs: dict, grace: float) -> None:
        # Argilla first (it talks to the other two), then the search engine, then redis.
        for name in ("argilla", "osmem", "redis"):
            proc = procs.pop(name, None)
            if proc is not None:
                proc.stop(grace)
        for proc in list(procs.values()):
            proc.stop(grace)
        procs.clear()


# ---------------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m evolkit.review.server``: start the stack, print its logins, stop on Ctrl-C / SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m evolkit.review.server", description="Run a local Argilla 2.8 server (redis + osmem + SQLite)."
    )
    parser.add_argument("--workdir", default=str(REPO_DIR / ".cache" / "argilla-data"), help="data and logs folder")
    parser.add_argument("--port", type=int, default=None, help="Argilla HTTP port (default: a free one)")
    parser.add_argument("--reviewer", action="append", dest="reviewers", help="annotator username (repeatable)")
    parser.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="workspace the reviewers join")
    parser.add_argument("--timeout", type=float, default=300.0, help="startup timeout in seconds")
    args = parser.parse_args(argv)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, h) for sig, h in ((signal.SIGTERM, on_signal), (signal.SIGINT, on_signal))}
    srv = LocalArgilla(
        args.workdir,
        args.port,
        reviewers=args.reviewers or DEFAULT_REVIEWERS,
        workspace=args.workspace,
        startup_timeout=args.timeout,
    )
    print(f"starting Argilla in {srv.workdir} ...", flush=True)
    try:
        srv.start()
        print(srv.describe(), flush=True)
        print(f"ready in {srv.startup_seconds:.1f} s; Ctrl-C to stop", flush=True)
        while srv.running:
            time.sleep(1)
        dead = [p.name for p in srv._procs.values() if not p.alive()]
        print(f"error: {', '.join(dead) or 'a process'} exited; see the logs in {srv.workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
        return 0
    except ArgillaServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for sig in previous:  # a second Ctrl-C / SIGTERM must not interrupt the shutdown
            signal.signal(sig, signal.SIG_IGN)
        srv.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
