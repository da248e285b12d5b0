DROP FUNCTION release_settled();
DROP FUNCTION confirm_batch(bytea, bytea, bigint, bigint, bytea[], bytea[], numeric[]);
DROP TABLE debts, settlement_attempts, settlement_items, settlement_batches;
DROP INDEX usage_records_batch;
ALTER TABLE usage_records DROP COLUMN merkle_proof;
