-- 0011's reserve_hold again (its settlement-bound check an EXISTS).
CREATE OR REPLACE FUNCTION reserve_hold(
    p_job bytea, p_signer bytea, p_nonce numeric, p_deadline bigint,
    p_payer bytea, p_spender bytea, p_amount numeric, p_model text, p_lifetime_seconds integer,
    p_expiry_seconds integer, p_max_cost numeric, p_body_hash bytea, p_signature bytea, p_digest bytea,
    p_escrow numeric, p_pending numeric, p_budget numeric, p_allowlisted boolean, p_paused boolean,
    p_settlement_bound integer, p_tokens bigint, p_window_seconds integer,
    p_node bytea, p_max_tokens integer, p_prompt_bound integer
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
                       request_signature, request_digest, expires_at, lifetime_seconds, rate_window, rate_tokens,
                       node, max_tokens, prompt_bound)
        VALUES (p_job, p_payer, p_spender, p_amount, p_model, p_max_cost, p_body_hash, p_nonce, p_deadline,
                p_signature, p_digest, now() + make_interval(secs => p_expiry_seconds), p_lifetime_seconds,
                win, CASE WHEN win IS NULL THEN 0 ELSE p_tokens END, p_node, p_max_tokens, p_prompt_bound);
    RETURN 'ok';
END;
$$;
