"""What the key policy's rate check costs on the hold path: `reserve_hold` + its release, one round trip each,
for one (payer, spender) pair without a policy and with limits (one more row lock and upsert per call).

    DATABASE_URL=... python scripts/bench_rate_check.py PAYER SPENDER [--calls 500]

PAYER must have escrow and have given SPENDER a budget in the mirror (e.g. the README's journey on the
embedded stack). The pair's policy is set and removed directly in the database; prints figures and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import time

import psycopg

RESERVE = ("SELECT reserve_hold(%s, %s, %s::numeric, %s, %s, %s, 1::numeric, 'bench', 300, 330, 1::numeric, %s, %s,"
           " %s, NULL, NULL, NULL, NULL, NULL, 3600, 40, 60)")
RELEASE = "SELECT meter_hold(%s, '\\x'::bytea, 0, 0, NULL, '\\x'::bytea, NULL, NULL)"


def run(conn: psycopg.Connection, payer: bytes, spender: bytes, calls: int) -> list[float]:
    took = []
    for _ in range(calls):
        job, nonce = secrets.token_bytes(32), secrets.randbits(120)
        started = time.perf_counter()
        outcome = conn.execute(RESERVE, (job, spender, nonce, int(time.time()) + 300, payer, spender, b"\0" * 32,
                                         b"\0" * 65, b"\0" * 32)).fetchone()
        took.append(time.perf_counter() - started)
        assert outcome is not None and outcome[0] == "ok", outcome
        conn.execute(RELEASE, (job,))
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("payer")
    p.add_argument("spender")
    p.add_argument("--calls", type=int, default=500)
    opts = p.parse_args()
    payer, spender = bytes.fromhex(opts.payer[2:]), bytes.fromhex(opts.spender[2:])
    figures: dict[str, dict[str, int]] = {}
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        saved = conn.execute("SELECT * FROM key_policies WHERE payer = %s AND spender = %s",
                             (payer, spender)).fetchall()
        try:
            for mode in ("no policy", "limits", "no policy ", "limits "):
                conn.execute("DELETE FROM key_policies WHERE payer = %s AND spender = %s", (payer, spender))
                if mode.startswith("limits"):
                    conn.execute("INSERT INTO key_policies (payer, spender, requests_per_minute, tokens_per_minute,"
                                 " updated_at) VALUES (%s, %s, 2000000000, 9000000000000, 0)", (payer, spender))
                took = run(conn, payer, spender, opts.calls)
                figures[mode.strip()] = {"median_us": round(statistics.median(took) * 1e6),
                                         "p95_us": round(statistics.quantiles(took, n=20)[18] * 1e6)}
        finally:
            conn.execute("DELETE FROM key_policies WHERE payer = %s AND spender = %s", (payer, spender))
            for row in saved:
                conn.execute("INSERT INTO key_policies VALUES (%s, %s, %s, %s, %s, %s, %s)", row)
    for mode, f in figures.items():
        print(f"{mode:10} reserve_hold median {f['median_us']} µs, p95 {f['p95_us']} µs ({opts.calls} calls)")
    print(json.dumps({"calls": opts.calls, **figures}))


if __name__ == "__main__":
    main()
