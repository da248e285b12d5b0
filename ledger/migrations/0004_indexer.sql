-- The chain indexer: every event of the Sluice contracts, decoded, in chain order, and where the
-- indexer stands. Rows read from a block that is later replaced are deleted and read again from
-- the fork point, so the table always equals the canonical chain up to `indexer_cursor.block`.

CREATE TABLE indexer_cursor (
    id         smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    chain_id   bigint      NOT NULL,
    block      bigint      NOT NULL,
    block_hash bytea       NOT NULL,
    head       bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Hash and time of every block events were read from, and of every committed window's last block:
-- a reorg is traced back to the highest of these the chain still has.
CREATE TABLE indexer_blocks (
    block      bigint      PRIMARY KEY,
    block_hash bytea       NOT NULL CHECK (length(block_hash) = 32),
    block_time timestamptz NOT NULL
);
-- Block times never decrease, so a time range is turned into a block range here.
CREATE INDEX indexer_blocks_time ON indexer_blocks (block_time);

-- One row per log. `kind` is the audit category; `accounts` every non-zero address the event names
-- (for filtering); `batch_id` and `amount` the figures reconciliation sums (`amount`: the compute
-- tokens the event moves or records; for Shortfall the unpaid part); `args` every argument decoded
-- by name (addresses checksummed, uint256 as decimal strings, bytes32 as 0x hex).
CREATE TABLE chain_events (
    block      bigint        NOT NULL,
    log_index  integer       NOT NULL,
    block_hash bytea         NOT NULL,
    block_time timestamptz   NOT NULL,
    tx_hash    bytea         NOT NULL,
    tx_index   integer       NOT NULL,
    contract   text          NOT NULL CHECK (contract IN ('token', 'sale', 'rate_card', 'settlement')),
    address    bytea         NOT NULL,
    event      text          NOT NULL,
    kind       text          NOT NULL CHECK (kind IN (
                   'purchase', 'issue', 'mint', 'burn', 'transfer', 'approval', 'redemption', 'shortfall',
                   'batch', 'rate_change', 'role_change', 'allowlist', 'pause', 'config')),
    accounts   bytea[]       NOT NULL,
    batch_id   bytea,
    amount     numeric(78,0),
    args       jsonb         NOT NULL,
    PRIMARY KEY (block, log_index)
);
CREATE INDEX chain_events_accounts ON chain_events USING gin (accounts);
CREATE INDEX chain_events_kind ON chain_events (kind, block, log_index);
CREATE INDEX chain_events_batch ON chain_events (batch_id) WHERE batch_id IS NOT NULL;
