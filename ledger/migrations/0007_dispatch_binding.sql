-- Receipts bound to the dispatch, and metering that fails closed (Invariants 8 and 9).
--
-- A hold records the node its job was sent to and that ticket's bounds (max_tokens, the prompt
-- bound): only a receipt signed by that node, within those bounds, meters it. What the service
-- itself relayed (usage it saw, streamed tokens counted) is kept on the hold so that a call with
-- output but no acceptable receipt is charged from it, capped by the hold, and its usage record
-- names why (`unreceipted`), for the auditor.
ALTER TABLE holds ADD COLUMN node bytea;
ALTER TABLE holds ADD COLUMN max_tokens integer;
ALTER TABLE holds ADD COLUMN prompt_bound integer;
ALTER TABLE holds ADD COLUMN relayed_prompt integer;
ALTER TABLE holds ADD COLUMN relayed_completion integer;
ALTER TABLE holds ADD COLUMN relayed_cost numeric(78,0);
ALTER TABLE holds ADD COLUMN receipt_refusal text;

ALTER TABLE usage_records ADD COLUMN unreceipted text;

DROP FUNCTION meter_hold(bytea, bytea, integer, integer, numeric, bytea, timestamptz);

-- Close a hold in one transaction: release its reservation and, when `p_cost` is not null,
-- reserve the metered cost instead (until the burn is mirrored), record the usage with both
-- signatures (or, charged fail-closed, with no receipt signature and the reason in
-- `p_unreceipted`), and write its settlement outbox row. A charge is never above the hold.
-- Idempotent: false when already closed.
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

-- A hold past its expiry: charged fail-closed from what was relayed when the call produced output
-- and no receipt came, else released uncharged.
CREATE FUNCTION expire_hold(p_job bytea) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
BEGIN
    SELECT * INTO h FROM holds WHERE job_id = p_job;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF coalesce(h.relayed_completion, 0) > 0 THEN
        RETURN meter_hold(p_job, '\x'::bytea, h.relayed_prompt, h.relayed_completion, h.relayed_cost,
                          '\x'::bytea, NULL, coalesce(h.receipt_refusal, 'no_receipt'));
    END IF;
    RETURN meter_hold(p_job, '\x'::bytea, 0, 0, NULL, '\x'::bytea, NULL, NULL);
END;
$$;
