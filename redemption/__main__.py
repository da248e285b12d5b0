"""`python -m redemption`: run the redemption service from the environment's settings."""

from __future__ import annotations

import logging
import sys

from ledger.keys import KeyUnavailable
from redemption.config import get_service_settings
from redemption.server import check_workers, run_service
from redemption.state import WorkersWithMetricsPort, resolve_dispatch_key


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_service_settings()
    try:
        resolve_dispatch_key(settings)  # before serving: a process with a well-known key must not start
    except KeyUnavailable as exc:
        print(f"redemption service refused to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        check_workers(settings)
    except WorkersWithMetricsPort as exc:
        print(f"redemption service refused to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run_service(settings)


if __name__ == "__main__":
    main()
