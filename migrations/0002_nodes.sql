-- Several nodes on one database (src/store/cluster.rs).
-- A node's lease: it trusts its caches only while it holds one, and every write that changes
-- what a cache holds waits for the acknowledgement of each node whose lease is live.
-- `floor` is the node's change-feed horizon (Unix nanoseconds): no product write of that node
-- not yet committed is stamped before it.
CREATE TABLE nodes (
    id uuid PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    floor bigint NOT NULL,
    -- Marked when the lease has run out: the node's writes begun after fail; the row is removed
    -- once every transaction begun before has ended.
    gone boolean NOT NULL DEFAULT false,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Change notices too long for a NOTIFY payload: the notice names the row, written in the same
-- transaction as the change it describes. Rows are removed a few minutes later.
CREATE TABLE notices (
    id bigserial PRIMARY KEY,
    body bytea NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
