"""`python -m redemption`: run the redemption service from the environment's settings."""

from __future__ import annotations

import logging

from redemption.config import get_service_settings
from redemption.server import run_service


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_service(get_service_settings())


if __name__ == "__main__":
    main()
