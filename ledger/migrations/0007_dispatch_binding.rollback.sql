DROP FUNCTION expire_hold(bytea);
DROP FUNCTION meter_hold(bytea, bytea, integer, integer, numeric, bytea, timestamptz, text);
ALTER TABLE usage_records DROP COLUMN unreceipted;
ALTER TABLE holds DROP COLUMN node, DROP COLUMN max_tokens, DROP COLUMN prompt_bound, DROP COLUMN relayed_prompt,
    DROP COLUMN relayed_completion, DROP COLUMN relayed_cost, DROP COLUMN receipt_refusal;
-- 0002's meter_hold
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
