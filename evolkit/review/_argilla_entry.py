"""Entry script of the local Argilla server; run ONLY by the argilla-server venv's python (see ``server.py``).

    <argilla-venv>/bin/python evolkit/review/_argilla_entry.py serve --host 127.0.0.1 --port N --credentials FILE

One process does, in order (the server's import costs ~5 s, so the steps share it):

1. install ``ScriptlessOpenSearchEngine`` (``_argilla_engine.py``) as Argilla's ``opensearch`` engine, before anything
   asks ``SearchEngine.get_by_name`` for an engine;
2. ``database migrate`` (the argilla-server CLI's ``migrate_db``, alembic to ``head``);
3. create the owner (with the requested API key), the annotators and the default workspace when missing (the CLI's
   ``database users create`` code path); an existing owner keeps its API key, which is written back; an existing
   annotator whose password no longer matches gets the requested one;
4. reindex every dataset into the (in-memory, hence empty) search engine: the CLI's ``search-engine reindex`` code;
5. write the credentials FILE back (``"ready": true`` and the owner's real API key), then ``uvicorn.run`` the app.

The server's settings come from the environment (``ARGILLA_*``) set by ``server.py``. Configuration is read from the
JSON credentials FILE rather than argv so that no secret shows in ``ps``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Run as a script, Python puts this file's folder (evolkit/review/) first on sys.path; a sibling module could then
# shadow a package the server imports (e.g. a future evolkit/review/datasets.py would hide HF `datasets`). Drop it.
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path.pop(0)


def _log(msg: str) -> None:
    print(f"[evolkit-argilla] {msg}", flush=True)


def install_engine() -> type:
    """Load ``_argilla_engine.py`` from this folder (by path, not through the evolkit package) and install it."""
    spec = importlib.util.spec_from_file_location("evolkit_argilla_engine", HERE / "_argilla_engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cls = module.install()
    _log(f"search engine 'opensearch' -> {cls.__name__} (no Painless scripts)")
    return cls


def migrate() -> None:
    from argilla_server.cli.database.migrate import migrate_db

    migrate_db(revision="head")


async def _ensure_users(creds: dict) -> dict:
    from argilla_server.cli.database.users.create import _create
    from argilla_server.contexts import accounts
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.models import UserRole, Workspace, WorkspaceUser
    from sqlalchemy import select

    workspace = creds.get("workspace")
    workspaces = [workspace] if workspace else []
    owner = creds["owner"]

    async def create(**kwargs) -> None:
        # The CLI's `users create` echoes the new user's API key: keep it out of the log.
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            await _create(**kwargs)
        first = (out.getvalue().strip().splitlines() or ["(no output)"])[0]
        _log(f"users create {kwargs['username']!r} ({kwargs['role'].value}): {first}")

    await create(
        first_name=owner.get("first_name") or owner["username"],
        username=owner["username"],
        role=UserRole.owner,
        password=owner["password"],
        api_key=owner["api_key"],
        workspace=workspaces,
    )
    for reviewer in creds.get("reviewers", []):
        await create(
            first_name=reviewer.get("first_name") or reviewer["username"],
            username=reviewer["username"],
            role=UserRole.annotator,
            password=reviewer["password"],
            workspace=workspaces,
        )

    async with AsyncSessionLocal() as db:
        ws = None
        if workspace:
            ws = (await db.execute(select(Workspace).filter_by(name=workspace))).scalar_one_or_none()
            if ws is None:
                ws = await Workspace.create(db, name=workspace)
        for entry, role in [(owner, UserRole.owner)] + [(r, UserRole.annotator) for r in creds.get("reviewers", [])]:
            user = await accounts.get_user_by_username(db, entry["username"])
            if user is None:  # _create skipped it because another user holds that API key
                raise SystemExit(f"user {entry['username']!r} could not be created (API key already in use?)")
            if user.role != role:
                _log(f"warning: existing user {user.username!r} has role {user.role.value!r}, not {role.value!r}")
            if role is UserRole.owner:
                if user.api_key != entry["api_key"]:
                    _log(f"owner {user.username!r} already existed: keeping its API key from the database")
                    entry["api_key"] = user.api_key
            elif not accounts.verify_password(entry["password"], user.password_hash):
                _log(f"resetting the password of existing user {user.username!r} to the configured one")
                user.password_hash = accounts.hash_password(entry["password"])
                await db.commit()
            if ws is not None:
                member = (
                    await db.execute(select(WorkspaceUser).filter_by(workspace_id=ws.id, user_id=user.id))
                ).scalar_one_or_none()
                if member is None:
                    await WorkspaceUser.create(db, workspace_id=ws.id, user_id=user.id)
    return creds


async def _reindex() -> None:
    from argilla_server.cli.search_engine.reindex import Reindexer
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.search_engine import get_search_engine

    async with AsyncSessionLocal() as db:
        async for engine in get_search_engine():
            n_datasets = n_records = 0
            async for dataset in Reindexer.reindex_datasets(db, engine):
                n_datasets += 1
                async for records in Reindexer.reindex_dataset_records(db, engine, dataset):
                    n_records += len(records)
            _log(f"reindexed {n_datasets} dataset(s), {n_records} record(s)")


async def _bootstrap(creds: dict) -> dict:
    from argilla_server.database import async_engine

    try:
        creds = await _ensure_users(creds)
        await _reindex()
        return creds
    finally:
        # The app's event loop is another one: leave no pooled connection bound to this loop.
        await async_engine.dispose()


def serve(args: argparse.Namespace) -> None:
    cred_path = Path(args.credentials)
    creds = json.loads(cred_path.read_text())
    creds.pop("ready", None)

    install_engine()
    _log("database migrate")
    migrate()
    _log("users, workspace, reindex")
    creds = asyncio.run(_bootstrap(creds))

    creds["ready"] = True
    tmp = cred_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(creds, indent=2))
    os.chmod(tmp, 0o600)
    tmp.replace(cred_path)

    import uvicorn

    _log(f"starting uvicorn on http://{args.host}:{args.port}")
    uvicorn.run("argilla_server:app", host=args.host, port=args.port, access_log=args.access_log, log_level="info")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="_argilla_entry.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="migrate, create users, reindex, then run the Argilla server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--credentials", required=True, help="JSON file: owner, reviewers, workspace (rewritten when ready)")
    p.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args)


if __name__ == "__main__":
    main()
