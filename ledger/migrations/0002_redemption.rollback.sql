DROP FUNCTION meter_hold(bytea, bytea, integer, integer, numeric, bytea, timestamptz);
DROP FUNCTION reserve_hold(bytea, bytea, numeric, bigint, bytea, bytea, numeric, text, integer, numeric, bytea, bytea,
    bytea, numeric, numeric, boolean, boolean);
DROP TABLE nodes, settlement_outbox, usage_records, suspended_accounts, holds, reserved_pair, reserved_payer,
    call_nonces, mirror_rates, mirror_token, mirror_allowlist, mirror_allowances, mirror_balances, mirror_cursor;
