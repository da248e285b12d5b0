DELETE FROM chain_events WHERE kind IN ('deposit', 'withdrawal', 'budget');
ALTER TABLE chain_events DROP CONSTRAINT chain_events_kind_check;
ALTER TABLE chain_events ADD CONSTRAINT chain_events_kind_check CHECK (kind IN (
    'purchase', 'issue', 'mint', 'burn', 'transfer', 'approval', 'redemption', 'shortfall',
    'batch', 'rate_change', 'role_change', 'allowlist', 'pause', 'config'));
DROP FUNCTION reserve_hold(bytea, bytea, numeric, bigint, bytea, bytea, numeric, text, integer, integer, numeric,
                           bytea, bytea, bytea, numeric, numeric, numeric, boolean, boolean, integer);
DROP INDEX usage_records_unsettled;
ALTER TABLE holds DROP COLUMN lifetime_seconds;
ALTER TABLE holds DROP COLUMN relaying;
DROP FUNCTION effective_budget(numeric, numeric, bigint);
DROP TABLE mirror_settlement;
DROP TABLE mirror_budgets;
DROP TABLE mirror_escrow;
CREATE TABLE mirror_balances (
    account bytea         PRIMARY KEY,
    balance numeric(78,0) NOT NULL CHECK (balance >= 0),
    block   bigint        NOT NULL
);
CREATE TABLE mirror_allowances (
    owner   bytea         NOT NULL,
    spender bytea         NOT NULL,
    amount  numeric(78,0) NOT NULL CHECK (amount >= 0),
    block   bigint        NOT NULL,
    PRIMARY KEY (owner, spender)
);
