"""The audit API's domain: who may call it (`auth`), what it answers (`models`), how a request narrows
the history (`filters`), what it reads (`store`) and the CSV exports (`exports`).

Everything served here is raw: on-chain rows from the indexer's `chain_events`, receipts with both
signatures from `usage_records`, batches and debts from the settlement tables (migration 0003).
Nothing is recomputed for the auditor; `sluice audit verify` recomputes it all independently.
"""
