-- Settlement: batches of metered usage burned on chain, their per-(payer, spender) items, every
-- transaction attempt, debts left by shortfalls, and the SQL functions that confirm a batch and
-- release reservations. Addresses are 20-byte bytea, amounts numeric(78,0), as in 0002.

-- Each settled record's StandardMerkleTree proof (sibling hashes, leaf to root) against its batch root.
ALTER TABLE usage_records ADD COLUMN merkle_proof bytea[];
CREATE INDEX usage_records_batch ON usage_records (batch_id) WHERE batch_id IS NOT NULL;

-- One settlement batch. Its contents never change after the cut, so every retry of it submits the
-- same batchId, root and items: the contract settles a batchId once, which makes a burn exactly-once.
-- status: cut (stored, nothing sent) -> submitted (tx_hash/nonce recorded) -> confirmed; any failed
-- attempt -> failed (last_error), which is retried like cut/submitted. `kind` = usage (metered
-- records) or debt (an operator clearing shortfalls, see `debts`).
CREATE TABLE settlement_batches (
    batch_id      bytea         PRIMARY KEY CHECK (length(batch_id) = 32),
    kind          text          NOT NULL DEFAULT 'usage' CHECK (kind IN ('usage', 'debt')),
    receipts_root bytea         NOT NULL CHECK (length(receipts_root) = 32),
    receipt_count integer       NOT NULL CHECK (receipt_count > 0),
    item_count    integer       NOT NULL CHECK (item_count > 0),
    total         numeric(78,0) NOT NULL CHECK (total >= 0),
    status        text          NOT NULL DEFAULT 'cut'
                  CHECK (status IN ('cut', 'submitted', 'confirmed', 'failed')),
    attempts      integer       NOT NULL DEFAULT 0,
    tx_hash       bytea,
    nonce         bigint,
    last_error    text,
    settled_block bigint,
    gas_used      bigint,
    paid          numeric(78,0),
    cut_at        timestamptz   NOT NULL DEFAULT now(),
    submitted_at  timestamptz,
    confirmed_at  timestamptz,
    -- Set once the mirror has seen the burn and the reservations were dropped (release_settled).
    released_at   timestamptz,
    updated_at    timestamptz   NOT NULL DEFAULT now(),
    swept_at      timestamptz,
    CHECK (status <> 'confirmed' OR (settled_block IS NOT NULL AND tx_hash IS NOT NULL AND paid IS NOT NULL))
);
CREATE INDEX settlement_batches_open ON settlement_batches (cut_at) WHERE status <> 'confirmed';
CREATE INDEX settlement_batches_unreleased ON settlement_batches (settled_block)
    WHERE status = 'confirmed' AND released_at IS NULL;
CREATE INDEX settlement_batches_confirmed_at ON settlement_batches (confirmed_at) WHERE confirmed_at IS NOT NULL;

-- What a batch asks the contract to burn: one item per (payer, spender); `paid` from the receipt.
CREATE TABLE settlement_items (
    batch_id bytea         NOT NULL REFERENCES settlement_batches (batch_id),
    payer    bytea         NOT NULL,
    spender  bytea         NOT NULL,
    amount   numeric(78,0) NOT NULL CHECK (amount >= 0),
    receipts integer       NOT NULL CHECK (receipts > 0),
    paid     numeric(78,0) CHECK (paid >= 0 AND paid <= amount),
    PRIMARY KEY (batch_id, payer, spender)
);

-- Every transaction sent for a batch and every failed attempt: the audit trail and the failure metric.
CREATE TABLE settlement_attempts (
    id       bigserial   PRIMARY KEY,
    batch_id bytea       NOT NULL REFERENCES settlement_batches (batch_id),
    action   text        NOT NULL CHECK (action IN ('sent', 'replaced', 'found', 'failed')),
    tx_hash  bytea,
    nonce    bigint,
    error    text,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX settlement_attempts_batch ON settlement_attempts (batch_id);

-- Usage a payer could not cover when its batch settled (the contract's Shortfall event). The payer
-- is suspended until every debt of it is cleared by a `debt` batch. Such a batch burns, per debt,
-- a leaf (jobId = the batch that recorded the debt, payer, spender, owed - paid), so its own
-- receiptsRoot points auditors at the Shortfall it settles.
CREATE TABLE debts (
    id             bigserial     PRIMARY KEY,
    payer          bytea         NOT NULL,
    spender        bytea         NOT NULL,
    batch_id       bytea         NOT NULL REFERENCES settlement_batches (batch_id),
    owed           numeric(78,0) NOT NULL,
    paid           numeric(78,0) NOT NULL CHECK (paid >= 0 AND paid < owed),
    created_at     timestamptz   NOT NULL DEFAULT now(),
    clearing_batch bytea         REFERENCES settlement_batches (batch_id),
    clearing_proof bytea[],
    cleared_at     timestamptz,
    UNIQUE (batch_id, payer, spender)
);
CREATE INDEX debts_outstanding ON debts (payer) WHERE cleared_at IS NULL;

-- Confirm a batch from its mined receipt, in one transaction, at most once (false when it already
-- was): record what each item paid (items absent from p_payers paid nothing), mark its usage
-- records settled at p_block, and for each shortfall record the debt, stop reserving the unpaid
-- part and suspend the payer. A confirmed debt batch clears the debts it carried and lifts the
-- shortfall suspension of payers with nothing left outstanding.
CREATE FUNCTION confirm_batch(
    p_batch bytea, p_tx bytea, p_block bigint, p_gas bigint,
    p_payers bytea[], p_spenders bytea[], p_paid numeric[]
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    b settlement_batches%ROWTYPE;
BEGIN
    SELECT * INTO b FROM settlement_batches WHERE batch_id = p_batch FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown settlement batch %', p_batch;
    END IF;
    IF b.status = 'confirmed' THEN
        RETURN false;
    END IF;
    UPDATE settlement_items i SET paid = coalesce(
            (SELECT v.paid FROM unnest(p_payers, p_spenders, p_paid) AS v (payer, spender, paid)
             WHERE v.payer = i.payer AND v.spender = i.spender), 0)
        WHERE i.batch_id = p_batch;
    UPDATE settlement_batches SET status = 'confirmed', tx_hash = p_tx, settled_block = p_block, gas_used = p_gas,
            paid = (SELECT coalesce(sum(paid), 0) FROM settlement_items WHERE batch_id = p_batch),
            confirmed_at = now(), updated_at = now(), last_error = NULL
        WHERE batch_id = p_batch;
    IF b.kind = 'usage' THEN
        UPDATE usage_records SET status = 'settled', settled_block = p_block
            WHERE batch_id = p_batch AND status = 'batched';
        -- The unpaid part becomes a debt: it stops counting against the payer's balance and allowance now.
        -- Rows are locked in key order, like release_settled, so the two never deadlock.
        PERFORM 1 FROM reserved_payer WHERE payer IN (
            SELECT payer FROM settlement_items WHERE batch_id = p_batch AND paid < amount) ORDER BY payer FOR UPDATE;
        UPDATE reserved_payer r SET reserved = r.reserved - s.unpaid
            FROM (SELECT payer, sum(amount - paid) AS unpaid FROM settlement_items
                  WHERE batch_id = p_batch AND paid < amount GROUP BY payer) s
            WHERE r.payer = s.payer;
        PERFORM 1 FROM reserved_pair WHERE (payer, spender) IN (
            SELECT payer, spender FROM settlement_items WHERE batch_id = p_batch AND paid < amount AND payer <> spender)
            ORDER BY payer, spender FOR UPDATE;
        UPDATE reserved_pair r SET reserved = r.reserved - (i.amount - i.paid)
            FROM settlement_items i
            WHERE i.batch_id = p_batch AND i.paid < i.amount AND i.payer <> i.spender
              AND r.payer = i.payer AND r.spender = i.spender;
    ELSE
        UPDATE debts SET cleared_at = now() WHERE clearing_batch = p_batch AND cleared_at IS NULL;
    END IF;
    INSERT INTO debts (payer, spender, batch_id, owed, paid)
        SELECT payer, spender, batch_id, amount, paid FROM settlement_items WHERE batch_id = p_batch AND paid < amount;
    INSERT INTO suspended_accounts (account, reason)
        SELECT DISTINCT payer, 'settlement shortfall in batch 0x' || encode(p_batch, 'hex')
        FROM settlement_items WHERE batch_id = p_batch AND paid < amount
        ON CONFLICT (account) DO NOTHING;
    IF b.kind = 'debt' THEN
        DELETE FROM suspended_accounts s
            WHERE s.reason LIKE 'settlement shortfall%'
              AND s.account IN (SELECT payer FROM settlement_items WHERE batch_id = p_batch)
              AND NOT EXISTS (SELECT 1 FROM debts d WHERE d.payer = s.account AND d.cleared_at IS NULL);
    END IF;
    RETURN true;
END;
$$;

-- Drop the paid part of every confirmed usage batch from reserved_payer / reserved_pair once the
-- chain mirror has seen its burn (mirror_cursor.block >= settled_block): before that the mirrored
-- balance still includes the burned tokens, so releasing earlier would let calls overspend.
-- Idempotent and safe to call from any number of processes at once (the service's housekeeping
-- loop and the settlement workers); returns the number of batches released by this call.
CREATE FUNCTION release_settled() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    seen bigint;
    ready bytea[];
BEGIN
    SELECT block INTO seen FROM mirror_cursor WHERE id = 1;
    IF seen IS NULL THEN
        RETURN 0;
    END IF;
    SELECT array_agg(batch_id) INTO ready FROM (
        SELECT batch_id FROM settlement_batches
        WHERE status = 'confirmed' AND released_at IS NULL AND settled_block <= seen
        ORDER BY batch_id
        FOR UPDATE SKIP LOCKED
    ) r;
    IF ready IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE settlement_batches SET released_at = now() WHERE batch_id = ANY (ready);
    UPDATE usage_records SET status = 'released' WHERE batch_id = ANY (ready) AND status = 'settled';
    -- Debt batches burn amounts that were never reserved: only usage batches release anything.
    PERFORM 1 FROM reserved_payer WHERE payer IN (
        SELECT i.payer FROM settlement_items i JOIN settlement_batches b USING (batch_id)
        WHERE i.batch_id = ANY (ready) AND b.kind = 'usage' AND i.paid > 0) ORDER BY payer FOR UPDATE;
    UPDATE reserved_payer r SET reserved = r.reserved - s.paid
        FROM (SELECT i.payer, sum(i.paid) AS paid FROM settlement_items i JOIN settlement_batches b USING (batch_id)
              WHERE i.batch_id = ANY (ready) AND b.kind = 'usage' GROUP BY i.payer) s
        WHERE r.payer = s.payer AND s.paid > 0;
    PERFORM 1 FROM reserved_pair WHERE (payer, spender) IN (
        SELECT i.payer, i.spender FROM settlement_items i JOIN settlement_batches b USING (batch_id)
        WHERE i.batch_id = ANY (ready) AND b.kind = 'usage' AND i.paid > 0 AND i.payer <> i.spender)
        ORDER BY payer, spender FOR UPDATE;
    UPDATE reserved_pair r SET reserved = r.reserved - s.paid
        FROM (SELECT i.payer, i.spender, sum(i.paid) AS paid
              FROM settlement_items i JOIN settlement_batches b USING (batch_id)
              WHERE i.batch_id = ANY (ready) AND b.kind = 'usage' AND i.payer <> i.spender
              GROUP BY i.payer, i.spender) s
        WHERE r.payer = s.payer AND r.spender = s.spender AND s.paid > 0;
    RETURN cardinality(ready);
END;
$$;
