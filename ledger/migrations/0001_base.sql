-- Base schema: one recorded Sluice deployment per chain (the deployer's JSON record).
CREATE TABLE deployments (
    chain_id   bigint      PRIMARY KEY,
    record     jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
