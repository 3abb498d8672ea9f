"""The command line of chapter 19: train the router (once), render its model card, refresh the golden files.

    python -m behind_pipeline.capstone                   # train the router and its twin unless current
    python -m behind_pipeline.capstone --card [--check]  # render (or check) book/model_card_capstone.md
    python -m behind_pipeline.capstone --refresh-golden  # rewrite tests/golden/ch19_*.json
"""

import argparse
import sys
from collections.abc import Sequence

from behind_pipeline import paths
from behind_pipeline.capstone.card import write_model_card
from behind_pipeline.capstone.golden import refresh_golden
from behind_pipeline.capstone.router import PREPARED, ensure_class_weighted_router, is_current, router_dir
from behind_pipeline.capstone.triage import ensure_router
from behind_pipeline.trained_once import SUMMARY_FILE


def main(argv: Sequence[str] | None = None) -> int:
    # prog: the command the docs name; argparse would print "__main__.py", the file python -m runs
    parser = argparse.ArgumentParser(prog="python -m behind_pipeline.capstone",
                                     description="Train the ticket router (once), render its card, refresh goldens.")
    parser.add_argument("--card", action="store_true", help="render book/model_card_capstone.md from results/")
    parser.add_argument("--check", action="store_true", help="with --card: exit 1 if the card is out of date")
    parser.add_argument("--refresh-golden", action="store_true", help="rewrite tests/golden/ch19_*.json")
    args = parser.parse_args(argv)
    paths.configure_environment()
    if args.card:
        return write_model_card(check=args.check)
    from behind_pipeline.models import classifier_id
    from behind_pipeline.runtime import setup_chapter

    setup_chapter(PREPARED.seed)
    if args.refresh_golden:
        refresh_golden()
        return 0
    folder = router_dir(PREPARED, classifier_id())
    if is_current(folder, PREPARED, classifier_id()):
        print(f"ticket router in {folder.relative_to(paths.PROJECT_ROOT)} is current")
    ensure_router(PREPARED)  # trains when it is not current; the triage settings beside the weights
    # The chapter compares the router with its class-weighted twin: trained here, so no test ever trains it.
    twin = ensure_class_weighted_router(PREPARED)
    for summary in (folder / SUMMARY_FILE, twin / SUMMARY_FILE):
        summary.touch()  # newer than the sources again, so make stops asking
    return 0


if __name__ == "__main__":
    sys.exit(main())
