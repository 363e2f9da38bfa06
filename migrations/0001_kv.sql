-- The store's trees (src/store/kv.rs): one row per record, a tree's rows in key order.
-- bytea compares byte by byte, which is the order the store's keys are built for.
CREATE TABLE kv (
    tree text NOT NULL,
    k bytea NOT NULL,
    v bytea NOT NULL,
    PRIMARY KEY (tree, k)
);
