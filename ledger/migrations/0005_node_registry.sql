-- Node registry: who put each node in the table. 'heartbeat' = it registered itself with a signed
-- heartbeat (open registration, how the embedded stack's simulated nodes join); 'operator' =
-- `sluice admin nodes register`. Once any operator registration exists, the service accepts
-- heartbeats only from operator-registered nodes that are not retired.
ALTER TABLE nodes ADD COLUMN registered_by text NOT NULL DEFAULT 'heartbeat'
    CHECK (registered_by IN ('heartbeat', 'operator'));
