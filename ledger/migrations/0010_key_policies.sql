-- Key policies (issue 12): a payer names its developer keys and limits each one to requests and model
-- tokens per rate window, with an optional expiry. The limits are counted in fixed windows stored here,
-- inside the hold's transaction, so they hold across service replicas.
CREATE TABLE key_policies (
    payer               bytea   NOT NULL,
    spender             bytea   NOT NULL,
    label               text    CHECK (char_length(label) <= 64),
    requests_per_minute integer CHECK (requests_per_minute > 0),
    tokens_per_minute   bigint  CHECK (tokens_per_minute > 0),
    expires_at          bigint,
    updated_at          bigint  NOT NULL,
    CHECK (spender <> payer),
    PRIMARY KEY (payer, spender)
);

-- One row per (pair, fixed window): the requests admitted and the model tokens they may use (the worst
-- case while a call runs, trued to the metered tokens when it is metered). `window_start` is unix seconds.
CREATE TABLE key_rate_windows (
    payer        bytea   NOT NULL,
    spender      bytea   NOT NULL,
    window_start bigint  NOT NULL,
    requests     integer NOT NULL DEFAULT 0 CHECK (requests >= 0),
    tokens       bigint  NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    PRIMARY KEY (payer, spender, window_start)
);

-- The window a hold was counted in (null: the pair has no limits) and the tokens it counted there.
ALTER TABLE holds ADD COLUMN rate_window bigint;
ALTER TABLE holds ADD COLUMN rate_tokens bigint NOT NULL DEFAULT 0;

DROP FUNCTION reserve_hold(bytea, bytea, numeric, bigint, bytea, bytea, numeric, text, integer, integer, numeric,
                           bytea, bytea, bytea, numeric, numeric, numeric, boolean, boolean, integer);

-- 0006's reserve_hold, plus the key policy: after the settlement check an expired key is refused
-- ('key_expired'); after the escrow reservation the pair's window counts one request and `p_tokens`
-- (the worst case: prompt bound + clamped max_tokens) against the limits ('rate_limited <retry_after>' /
-- 'token_rate_limited <retry_after> <needed> <used> <limit>'); then the budget. A refusal undoes the
-- reservations before it; the nonce stays consumed. Row locks: payer, then the pair's window, then the
-- pair's budget (meter_hold takes them in the same order).
CREATE FUNCTION reserve_hold(
    p_job bytea, p_signer bytea, p_nonce numeric, p_deadline bigint,
    p_payer bytea, p_spender bytea, p_amount numeric, p_model text, p_lifetime_seconds integer,
    p_expiry_seconds integer, p_max_cost numeric, p_body_hash bytea, p_signature bytea, p_digest bytea,
    p_escrow numeric, p_pending numeric, p_budget numeric, p_allowlisted boolean, p_paused boolean,
    p_settlement_bound integer, p_tokens bigint, p_window_seconds integer
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    granted numeric;
    available numeric;
    policy key_policies%ROWTYPE;
    now_unix numeric := extract(epoch FROM clock_timestamp());
    win bigint;
    used_requests integer;
    used_tokens bigint;
    retry_after integer;
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
    IF p_spender <> p_payer THEN
        SELECT * INTO policy FROM key_policies WHERE payer = p_payer AND spender = p_spender;
        IF policy.expires_at IS NOT NULL AND policy.expires_at <= now_unix THEN
            RETURN 'key_expired';
        END IF;
    END IF;
    INSERT INTO reserved_payer (payer) VALUES (p_payer) ON CONFLICT DO NOTHING;
    UPDATE reserved_payer SET reserved = reserved + p_amount
        WHERE payer = p_payer AND reserved + p_amount <= p_escrow - p_pending
        RETURNING reserved - p_amount INTO available;
    IF NOT FOUND THEN
        SELECT p_escrow - p_pending - reserved INTO available FROM reserved_payer WHERE payer = p_payer;
        RETURN 'insufficient_escrow ' || p_amount || ' ' || greatest(available, 0);
    END IF;
    IF policy.requests_per_minute IS NOT NULL OR policy.tokens_per_minute IS NOT NULL THEN
        win := (floor(now_unix / p_window_seconds) * p_window_seconds)::bigint;
        INSERT INTO key_rate_windows (payer, spender, window_start) VALUES (p_payer, p_spender, win)
            ON CONFLICT DO NOTHING;
        UPDATE key_rate_windows SET requests = requests + 1, tokens = tokens + p_tokens
            WHERE payer = p_payer AND spender = p_spender AND window_start = win
              AND (policy.requests_per_minute IS NULL OR requests + 1 <= policy.requests_per_minute)
              AND (policy.tokens_per_minute IS NULL OR tokens + p_tokens <= policy.tokens_per_minute)
            RETURNING requests INTO used_requests;
        IF NOT FOUND THEN
            UPDATE reserved_payer SET reserved = reserved - p_amount WHERE payer = p_payer;
            SELECT requests, tokens INTO used_requests, used_tokens FROM key_rate_windows
                WHERE payer = p_payer AND spender = p_spender AND window_start = win;
            retry_after := greatest(ceil(win + p_window_seconds - now_unix), 1)::integer;
            IF policy.requests_per_minute IS NOT NULL AND used_requests + 1 > policy.requests_per_minute THEN
                RETURN 'rate_limited ' || retry_after || ' ' || policy.requests_per_minute;
            END IF;
            RETURN 'token_rate_limited ' || retry_after || ' ' || p_tokens || ' ' || used_tokens || ' '
                || policy.tokens_per_minute;
        END IF;
    END IF;
    IF p_spender <> p_payer THEN
        INSERT INTO reserved_pair (payer, spender) VALUES (p_payer, p_spender) ON CONFLICT DO NOTHING;
        UPDATE reserved_pair SET reserved = reserved + p_amount
            WHERE payer = p_payer AND spender = p_spender AND reserved + p_amount <= p_budget;
        IF NOT FOUND THEN
            UPDATE reserved_payer SET reserved = reserved - p_amount WHERE payer = p_payer;
            IF win IS NOT NULL THEN
                UPDATE key_rate_windows SET requests = requests - 1, tokens = tokens - p_tokens
                    WHERE payer = p_payer AND spender = p_spender AND window_start = win;
            END IF;
            SELECT p_budget - reserved INTO available FROM reserved_pair WHERE payer = p_payer AND spender = p_spender;
            RETURN 'insufficient_budget ' || p_amount || ' ' || greatest(available, 0);
        END IF;
    END IF;
    INSERT INTO holds (job_id, payer, spender, amount, model, max_cost, body_hash, nonce, deadline,
                       request_signature, request_digest, expires_at, lifetime_seconds, rate_window, rate_tokens)
        VALUES (p_job, p_payer, p_spender, p_amount, p_model, p_max_cost, p_body_hash, p_nonce, p_deadline,
                p_signature, p_digest, now() + make_interval(secs => p_expiry_seconds), p_lifetime_seconds,
                win, CASE WHEN win IS NULL THEN 0 ELSE p_tokens END);
    RETURN 'ok';
END;
$$;

DROP FUNCTION meter_hold(bytea, bytea, integer, integer, numeric, bytea, timestamptz, text);

-- 0007's meter_hold, plus the rate window between the payer's and the pair's rows (reserve_hold's lock
-- order): metering trues the window's tokens from the worst case to the metered tokens; a release gives
-- the window back its request and tokens (a window already past counts for nothing either way).
CREATE FUNCTION meter_hold(
    p_job bytea, p_node bytea, p_prompt integer, p_completion integer, p_cost numeric,
    p_receipt_signature bytea, p_first_token_at timestamptz, p_unreceipted text
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    delta numeric;
BEGIN
    DELETE FROM holds WHERE job_id = p_job RETURNING * INTO h;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_cost IS NOT NULL THEN
        p_cost := least(p_cost, h.amount);
    END IF;
    delta := coalesce(p_cost, 0) - h.amount;
    UPDATE reserved_payer SET reserved = reserved + delta WHERE payer = h.payer;
    IF h.rate_window IS NOT NULL THEN
        IF p_cost IS NOT NULL THEN
            UPDATE key_rate_windows
                SET tokens = greatest(tokens - h.rate_tokens + least(p_prompt::bigint + p_completion, h.rate_tokens), 0)
                WHERE payer = h.payer AND spender = h.spender AND window_start = h.rate_window;
        ELSE
            UPDATE key_rate_windows
                SET requests = greatest(requests - 1, 0), tokens = greatest(tokens - h.rate_tokens, 0)
                WHERE payer = h.payer AND spender = h.spender AND window_start = h.rate_window;
        END IF;
    END IF;
    IF h.spender <> h.payer THEN
        UPDATE reserved_pair SET reserved = reserved + delta WHERE payer = h.payer AND spender = h.spender;
    END IF;
    IF p_cost IS NOT NULL THEN
        INSERT INTO usage_records (job_id, payer, spender, model, prompt_tokens, completion_tokens, cost, max_cost,
                                   node, body_hash, nonce, deadline, request_signature, request_digest,
                                   receipt_signature, started_at, first_token_at, unreceipted)
            VALUES (h.job_id, h.payer, h.spender, h.model, p_prompt, p_completion, p_cost, h.max_cost,
                    coalesce(h.node, p_node), h.body_hash, h.nonce, h.deadline, h.request_signature,
                    h.request_digest, p_receipt_signature, h.created_at, p_first_token_at, p_unreceipted);
        INSERT INTO settlement_outbox (job_id) VALUES (h.job_id);
    END IF;
    RETURN true;
END;
$$;
