DROP FUNCTION reserve_hold(bytea, bytea, numeric, bigint, bytea, bytea, numeric, text, integer, integer, numeric,
                           bytea, bytea, bytea, numeric, numeric, numeric, boolean, boolean, integer, bigint, integer);
DROP FUNCTION meter_hold(bytea, bytea, integer, integer, numeric, bytea, timestamptz, text);
ALTER TABLE holds DROP COLUMN rate_window, DROP COLUMN rate_tokens;
DROP TABLE key_rate_windows;
DROP TABLE key_policies;
-- 0006's reserve_hold
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

-- 0007's meter_hold
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
