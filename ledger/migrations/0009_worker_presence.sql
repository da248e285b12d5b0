-- Settlement workers announce themselves here (ledger.settlement.presence): `sluice status` reads who is
-- running, with the beat, from the same database query as the nodes, instead of a broker broadcast that
-- waits its whole timeout for replies. A clean shutdown deletes the row; a killed worker's row goes stale.
CREATE TABLE settlement_workers (
    name          text        PRIMARY KEY,
    pid           integer     NOT NULL,
    concurrency   integer     NOT NULL CHECK (concurrency > 0),
    beat          boolean     NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
