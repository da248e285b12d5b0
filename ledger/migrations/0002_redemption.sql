-- Redemption: the chain mirror, durable nonces, holds, reservations, usage records,
-- the settlement outbox and the node registry. Addresses are 20-byte bytea, amounts
-- numeric(78,0) (a uint256 fits), never floats.

-- The chain mirror: absolute values re-read from the chain for every account, pair
-- and model that an event touched, as of `block`.
CREATE TABLE mirror_cursor (
    id         smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    chain_id   bigint      NOT NULL,
    block      bigint      NOT NULL,
    block_hash bytea       NOT NULL,
    head       bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

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

CREATE TABLE mirror_allowlist (
    account bytea   PRIMARY KEY,
    allowed boolean NOT NULL,
    block   bigint  NOT NULL
);

CREATE TABLE mirror_token (
    id     smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    paused boolean  NOT NULL,
    block  bigint   NOT NULL
);

CREATE TABLE mirror_rates (
    model       bytea         PRIMARY KEY,
    name        text          NOT NULL,
    input_rate  numeric(78,0) NOT NULL,
    output_rate numeric(78,0) NOT NULL,
    tier        smallint      NOT NULL,
    listed      boolean       NOT NULL,
    block       bigint        NOT NULL
);

-- (signer, nonce) pairs ever accepted; kept until well past their deadline.
CREATE TABLE call_nonces (
    signer   bytea         NOT NULL,
    nonce    numeric(78,0) NOT NULL,
    deadline bigint        NOT NULL,
    PRIMARY KEY (signer, nonce)
);
CREATE INDEX call_nonces_deadline ON call_nonces (deadline);

-- What is reserved against each payer's balance and each (payer, spender) allowance:
-- open holds plus metered usage whose burn the mirror has not seen yet.
CREATE TABLE reserved_payer (
    payer    bytea         PRIMARY KEY,
    reserved numeric(78,0) NOT NULL DEFAULT 0 CHECK (reserved >= 0)
);

CREATE TABLE reserved_pair (
    payer    bytea         NOT NULL,
    spender  bytea         NOT NULL,
    reserved numeric(78,0) NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (payer, spender)
);

CREATE TABLE holds (
    job_id            bytea         PRIMARY KEY,
    payer             bytea         NOT NULL,
    spender           bytea         NOT NULL,
    amount            numeric(78,0) NOT NULL CHECK (amount > 0),
    model             text          NOT NULL,
    max_cost          numeric(78,0) NOT NULL,
    body_hash         bytea         NOT NULL,
    nonce             numeric(78,0) NOT NULL,
    deadline          bigint        NOT NULL,
    request_signature bytea         NOT NULL,
    request_digest    bytea         NOT NULL,
    created_at        timestamptz   NOT NULL DEFAULT now(),
    expires_at        timestamptz   NOT NULL
);
CREATE INDEX holds_expires ON holds (expires_at);

-- Accounts refused new calls (e.g. after a settlement shortfall).
CREATE TABLE suspended_accounts (
    account bytea       PRIMARY KEY,
    reason  text        NOT NULL,
    since   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE usage_records (
    job_id            bytea         PRIMARY KEY,
    payer             bytea         NOT NULL,
    spender           bytea         NOT NULL,
    model             text          NOT NULL,
    prompt_tokens     integer       NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens integer       NOT NULL CHECK (completion_tokens >= 0),
    cost              numeric(78,0) NOT NULL CHECK (cost >= 0),
    max_cost          numeric(78,0) NOT NULL CHECK (cost <= max_cost),
    node              bytea         NOT NULL,
    body_hash         bytea         NOT NULL,
    nonce             numeric(78,0) NOT NULL,
    deadline          bigint        NOT NULL,
    request_signature bytea         NOT NULL,
    request_digest    bytea         NOT NULL,
    receipt_signature bytea         NOT NULL,
    started_at        timestamptz   NOT NULL,
    first_token_at    timestamptz,
    finished_at       timestamptz   NOT NULL DEFAULT now(),
    status            text          NOT NULL DEFAULT 'metered'
                      CHECK (status IN ('metered', 'batched', 'settled', 'released')),
    batch_id          bytea,
    settled_block     bigint
);
CREATE INDEX usage_records_pair ON usage_records (payer, spender);
CREATE INDEX usage_records_status ON usage_records (status) WHERE status <> 'released';

-- Transactional outbox: written in the metering transaction, consumed by the settlement workers.
CREATE TABLE settlement_outbox (
    id         bigserial   PRIMARY KEY,
    job_id     bytea       NOT NULL UNIQUE REFERENCES usage_records (job_id),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE nodes (
    node           bytea       PRIMARY KEY,
    url            text        NOT NULL,
    models         text[]      NOT NULL,
    tier           text        NOT NULL CHECK (tier IN ('edge', 'regional', 'cloud')),
    region         text        NOT NULL,
    capacity       integer     NOT NULL,
    running        integer     NOT NULL DEFAULT 0,
    waiting        integer     NOT NULL DEFAULT 0,
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    registered_at  timestamptz NOT NULL DEFAULT now(),
    retired        boolean     NOT NULL DEFAULT false
);

-- Take a hold for one signed call, atomically: consume the nonce, refuse a paused token, a payer
-- that is not allowlisted and suspended accounts,
-- and reserve `amount` against the payer's balance and, for another spender, the allowance.
-- Concurrent calls on one payer serialise on its reserved_payer row, so N calls against a
-- balance that covers K are admitted exactly K times. Returns 'ok' or the refusal code.
CREATE FUNCTION reserve_hold(
    p_job bytea, p_signer bytea, p_nonce numeric, p_deadline bigint,
    p_payer bytea, p_spender bytea, p_amount numeric, p_model text, p_ttl_seconds integer,
    p_max_cost numeric, p_body_hash bytea, p_signature bytea, p_digest bytea,
    p_balance numeric, p_allowance numeric, p_allowlisted boolean, p_paused boolean
) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    -- Chain figures: given by the caller when it read the chain directly (mirror lagging),
    -- else taken from the mirror.
    p_paused := coalesce(p_paused, (SELECT paused FROM mirror_token), false);
    p_allowlisted := coalesce(p_allowlisted, (SELECT allowed FROM mirror_allowlist WHERE account = p_payer), false);
    p_balance := coalesce(p_balance, (SELECT balance FROM mirror_balances WHERE account = p_payer), 0);
    p_allowance := coalesce(p_allowance,
        (SELECT amount FROM mirror_allowances WHERE owner = p_payer AND spender = p_spender), 0);
    INSERT INTO call_nonces (signer, nonce, deadline) VALUES (p_signer, p_nonce, p_deadline)
        ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'nonce_replayed';
    END IF;
    -- A signer that is neither the payer nor approved by it: a wrong key, body, chain or contract.
    IF p_spender <> p_payer AND p_allowance = 0 THEN
        RETURN 'unknown_signer';
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
    INSERT INTO reserved_payer (payer) VALUES (p_payer) ON CONFLICT DO NOTHING;
    -- Invariant 1: the signed maxCost must fit what is available; the reservation itself is the
    -- worst case of the clamped call (p_amount <= p_max_cost).
    UPDATE reserved_payer SET reserved = reserved + p_amount
        WHERE payer = p_payer AND reserved + p_max_cost <= p_balance;
    IF NOT FOUND THEN
        RETURN 'insufficient_balance';
    END IF;
    IF p_spender <> p_payer THEN
        INSERT INTO reserved_pair (payer, spender) VALUES (p_payer, p_spender) ON CONFLICT DO NOTHING;
        UPDATE reserved_pair SET reserved = reserved + p_amount
            WHERE payer = p_payer AND spender = p_spender AND reserved + p_max_cost <= p_allowance;
        IF NOT FOUND THEN
            UPDATE reserved_payer SET reserved = reserved - p_amount WHERE payer = p_payer;
            RETURN 'insufficient_allowance';
        END IF;
    END IF;
    INSERT INTO holds (job_id, payer, spender, amount, model, max_cost, body_hash, nonce, deadline,
                       request_signature, request_digest, expires_at)
        VALUES (p_job, p_payer, p_spender, p_amount, p_model, p_max_cost, p_body_hash, p_nonce, p_deadline,
                p_signature, p_digest, now() + make_interval(secs => p_ttl_seconds));
    RETURN 'ok';
END;
$$;

-- Close a hold in one transaction: release its reservation and, when `p_cost` is not null,
-- reserve the metered cost instead (until the burn is mirrored), record the usage with both
-- signatures, and write its settlement outbox row. Idempotent: false when already closed.
CREATE FUNCTION meter_hold(
    p_job bytea, p_node bytea, p_prompt integer, p_completion integer, p_cost numeric,
    p_receipt_signature bytea, p_first_token_at timestamptz
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    delta numeric;
BEGIN
    DELETE FROM holds WHERE job_id = p_job RETURNING * INTO h;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    delta := coalesce(p_cost, 0) - h.amount;
    UPDATE reserved_payer SET reserved = reserved + delta WHERE payer = h.payer;
    IF h.spender <> h.payer THEN
        UPDATE reserved_pair SET reserved = reserved + delta WHERE payer = h.payer AND spender = h.spender;
    END IF;
    IF p_cost IS NOT NULL THEN
        INSERT INTO usage_records (job_id, payer, spender, model, prompt_tokens, completion_tokens, cost, max_cost,
                                   node, body_hash, nonce, deadline, request_signature, request_digest,
                                   receipt_signature, started_at, first_token_at)
            VALUES (h.job_id, h.payer, h.spender, h.model, p_prompt, p_completion, p_cost, h.max_cost,
                    p_node, h.body_hash, h.nonce, h.deadline, h.request_signature, h.request_digest,
                    p_receipt_signature, h.created_at, p_first_token_at);
        INSERT INTO settlement_outbox (job_id) VALUES (h.job_id);
    END IF;
    RETURN true;
END;
$$;
