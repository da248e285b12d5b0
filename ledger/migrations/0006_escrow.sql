-- Escrow accounts and on-chain budgets (issue 9): the mirror follows Settlement's escrow, pending
-- withdrawals and budgets instead of token balances and ERC-20 allowances, and a hold is checked
-- against escrow - pending withdrawal - reserved and, for another spender, the effective budget
-- (a pending cut counts at once) - reserved.
DROP FUNCTION reserve_hold(bytea, bytea, numeric, bigint, bytea, bytea, numeric, text, integer, numeric,
                           bytea, bytea, bytea, numeric, numeric, boolean, boolean);
DROP TABLE mirror_balances;
DROP TABLE mirror_allowances;

CREATE TABLE mirror_escrow (
    account    bytea         PRIMARY KEY,
    escrow     numeric(78,0) NOT NULL CHECK (escrow >= 0),
    pending    numeric(78,0) NOT NULL CHECK (pending >= 0),
    unlocks_at bigint        NOT NULL,
    block      bigint        NOT NULL
);

-- budgetOf(payer, spender) as of `block`: `remaining`, and a pending cut to `scheduled` effective at
-- `effective_at` (0: none). `granted` is the amount of the last BudgetSet: 0 means the payer never
-- gave this key a budget or cut it to zero (403 no_budget), not that usage spent it (402).
CREATE TABLE mirror_budgets (
    payer        bytea         NOT NULL,
    spender      bytea         NOT NULL,
    remaining    numeric(78,0) NOT NULL CHECK (remaining >= 0),
    scheduled    numeric(78,0) NOT NULL CHECK (scheduled >= 0),
    effective_at bigint        NOT NULL,
    granted      numeric(78,0) NOT NULL CHECK (granted >= 0),
    block        bigint        NOT NULL,
    PRIMARY KEY (payer, spender)
);

CREATE TABLE mirror_settlement (
    id            smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    unlock_period bigint   NOT NULL,
    block         bigint   NOT NULL
);

-- The budget admission counts: the scheduled amount as soon as a cut is pending.
CREATE FUNCTION effective_budget(p_remaining numeric, p_scheduled numeric, p_effective_at bigint)
RETURNS numeric LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_effective_at > 0 THEN least(p_remaining, p_scheduled) ELSE p_remaining END
$$;

-- A hold's call is cut at the hold lifetime; `relaying` is cleared when the service stops relaying it
-- without metering it (a dropped stream waiting for the node's posted receipt). The expiry sweep
-- releases only holds whose call ended, and those of a replica that died (twice the lifetime).
ALTER TABLE holds ADD COLUMN relaying boolean NOT NULL DEFAULT true;
ALTER TABLE holds ADD COLUMN lifetime_seconds integer NOT NULL DEFAULT 0;

-- Usage not yet burned, oldest first: the settlement bound is checked against it on every admission.
CREATE INDEX usage_records_unsettled ON usage_records (finished_at) WHERE status IN ('metered', 'batched');

-- Take a hold for one signed call, atomically: consume the nonce, refuse a paused token, a payer that
-- is not allowlisted, suspended accounts, a key without budget, and calls while settlement is overdue;
-- reserve `p_amount` (the hold H) against escrow - pending - reserved and, for another spender,
-- against effective budget - reserved. Concurrent calls on one payer serialise on its reserved_payer
-- row, so N calls against funds for K are admitted exactly K times, across replicas.
-- Returns 'ok', a refusal code, or 'insufficient_escrow <needed> <available>' /
-- 'insufficient_budget <needed> <available>'.
CREATE FUNCTION reserve_hold(
    p_job bytea, p_signer bytea, p_nonce numeric, p_deadline bigint,
    p_payer bytea, p_spender bytea, p_amount numeric, p_model text, p_lifetime_seconds integer,
    p_expiry_seconds integer, p_max_cost numeric, p_body_hash bytea, p_signature bytea, p_digest bytea,
    p_escrow numeric, p_pending numeric, p_budget numeric, p_allowlisted boolean, p_paused boolean,
    p_settlement_bound integer
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    granted numeric;
    available numeric;
BEGIN
    -- Chain figures: given by the caller when it read the chain directly (mirror lagging), else the mirror's.
    p_paused := coalesce(p_paused, (SELECT paused FROM mirror_token), false);
    p_allowlisted := coalesce(p_allowlisted, (SELECT allowed FROM mirror_allowlist WHERE account = p_payer), false);
    IF p_escrow IS NULL THEN
        SELECT escrow, pending INTO p_escrow, p_pending FROM mirror_escrow WHERE account = p_payer;
    END IF;
    p_escrow := coalesce(p_escrow, 0);
    p_pending := coalesce(p_pending, 0);
    IF p_spender <> p_payer THEN
        SELECT b.granted, effective_budget(b.remaining, b.scheduled, b.effective_at)
            INTO granted, available FROM mirror_budgets b WHERE payer = p_payer AND spender = p_spender;
        p_budget := coalesce(p_budget, available, 0);
    END IF;
    -- A key the payer never gave a budget, or cut to zero (a budget spent down by usage is a 402). Checked
    -- before the nonce is recorded: a signature from a key not authorized for the payer inserts nothing.
    IF p_spender <> p_payer AND p_budget = 0 AND coalesce(granted, 0) = 0 THEN
        RETURN 'no_budget';
    END IF;
    INSERT INTO call_nonces (signer, nonce, deadline) VALUES (p_signer, p_nonce, p_deadline)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'nonce_replayed';
    END IF;
    IF p_paused THEN
        RETURN 'paused';
    END IF;
    IF NOT p_allowlisted THEN
        RETURN 'not_allowlisted';
    END IF;
    IF EXISTS (SELECT 1 FROM suspended_accounts WHERE account IN (p_payer, p_spender)) THEN
        RETURN 'suspended';
    END IF;
    -- Invariant 7: admitting more while usage waits past the settlement bound would outrun unlockPeriod.
    IF EXISTS (SELECT 1 FROM usage_records WHERE status IN ('metered', 'batched')
               AND finished_at < now() - make_interval(secs => p_settlement_bound)) THEN
        RETURN 'settlement_overdue';
    END IF;
    INSERT INTO reserved_payer (payer) VALUES (p_payer) ON CONFLICT DO NOTHING;
    UPDATE reserved_payer SET reserved = reserved + p_amount
        WHERE payer = p_payer AND reserved + p_amount <= p_escrow - p_pending
        RETURNING reserved - p_amount INTO available;
    IF NOT FOUND THEN
        SELECT p_escrow - p_pending - reserved INTO available FROM reserved_payer WHERE payer = p_payer;
        RETURN 'insufficient_escrow ' || p_amount || ' ' || greatest(available, 0);
    END IF;
    IF p_spender <> p_payer THEN
        INSERT INTO reserved_pair (payer, spender) VALUES (p_payer, p_spender) ON CONFLICT DO NOTHING;
        UPDATE reserved_pair SET reserved = reserved + p_amount
            WHERE payer = p_payer AND spender = p_spender AND reserved + p_amount <= p_budget;
        IF NOT FOUND THEN
            UPDATE reserved_payer SET reserved = reserved - p_amount WHERE payer = p_payer;
            SELECT p_budget - reserved INTO available FROM reserved_pair WHERE payer = p_payer AND spender = p_spender;
            RETURN 'insufficient_budget ' || p_amount || ' ' || greatest(available, 0);
        END IF;
    END IF;
    INSERT INTO holds (job_id, payer, spender, amount, model, max_cost, body_hash, nonce, deadline,
                       request_signature, request_digest, expires_at, lifetime_seconds)
        VALUES (p_job, p_payer, p_spender, p_amount, p_model, p_max_cost, p_body_hash, p_nonce, p_deadline,
                p_signature, p_digest, now() + make_interval(secs => p_expiry_seconds), p_lifetime_seconds);
    RETURN 'ok';
END;
$$;

-- The indexer's kinds for the escrow events.
ALTER TABLE chain_events DROP CONSTRAINT chain_events_kind_check;
ALTER TABLE chain_events ADD CONSTRAINT chain_events_kind_check CHECK (kind IN (
    'purchase', 'issue', 'mint', 'burn', 'transfer', 'approval', 'redemption', 'shortfall',
    'batch', 'rate_change', 'role_change', 'allowlist', 'pause', 'config', 'deposit', 'withdrawal', 'budget'));
