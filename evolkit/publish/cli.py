"""``evolkit publish``: the command line of :func:`evolkit.publish.build.publish_run`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .build import publish_run
from .specs import SPECS


def cmd_publish(args: argparse.Namespace) -> int:
    publish_run(
        args.run_dir, local=args.local, repo=args.repo, private=True if args.private else None, dry_run=args.dry_run,
        separate_repos=True if args.separate_repos else None,
        configs=[c for x in args.configs for c in x.split(",") if c] if args.configs else None,
        test_size=args.test_size, min_split_rows=args.min_split_rows, seed=args.seed,
        overwrite=True if args.overwrite else None, pretty_name=args.pretty_name, commit_message=args.message,
        sft_include_evolved=True if args.sft_include_evolved else None,
        echo=lambda s: print(s, file=sys.stdout),
    )
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "publish", help="publish a run's datasets (Parquet configs + card) to a local folder or a Hub dataset repo",
        description="Validate every dataset of a run against schemas/, split it, and write it as one dataset repo "
                    "(README.md card with configs, data/<config>/<split>-*.parquet, images/, provenance.json): to a "
                    "local folder (default RUN_DIR/dataset) and/or a Hugging Face Hub dataset repo in one commit. "
                    "Pushing uses HF_TOKEN or the login token.",
    )
    p.add_argument("run_dir", help="the run folder (runs/<name>)")
    p.add_argument("--repo", metavar="USER/NAME", help="Hub dataset repo to push to (created when missing)")
    p.add_argument("--local", metavar="DIR", help="local folder (default: RUN_DIR/dataset when --repo is not given)")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--dry-run", action="store_true", help="validate and show what would be written or pushed")
    p.add_argument("--separate-repos", action="store_true",
                   help="one repo (or sub-folder) per config: USER/NAME-<config>")
    p.add_argument("--configs", action="append", metavar="NAME[,NAME]",
                   help=f"publish only these configs (default: all that exist; known: {', '.join(SPECS)})")
    p.add_argument("--test-size", type=float, help="share of root problems in the test split (default 0.1)")
    p.add_argument("--min-split-rows", type=int, help="configs with fewer rows get a train split only (default 100)")
    p.add_argument("--seed", type=int, help="split seed (default: the run's seed)")
    p.add_argument("--overwrite", action="store_true",
                   help="publish over another run's publish (a local folder or a Hub repo), or into an existing Hub "
                        "repo evolkit did not publish: data/ and images/ are replaced by this run's, README.md and "
                        "provenance.json overwritten, other files stay (one commit; the history stays). A local "
                        "folder evolkit did not write is never replaced")
    p.add_argument("--sft-include-evolved", action="store_true",
                   help="add the evolved problems' verified solutions to the sft config (default off, as in the "
                   "recipe: evolved problems are the RL prompts; the run config's publish.sft_include_evolved)")
    p.add_argument("--pretty-name", help="the card's title / pretty_name")
    p.add_argument("-m", "--message", help="commit message")
    p.set_defaults(func=cmd_publish)
