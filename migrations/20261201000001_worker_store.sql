-- Which vector store each live worker uses, so a worker can warn at start when the others use
-- another one (an embedded store is one directory on one machine; copies of it elsewhere split
-- the tenants' documents). `store` is `embedded:<the directory's id>` or `qdrant:<url>`; `boot_id`
-- tells machines apart (containers on one machine share it, and can share one directory).
ALTER TABLE worker_leases
    ADD COLUMN host       TEXT,
    ADD COLUMN boot_id    TEXT,
    ADD COLUMN store      TEXT,
    ADD COLUMN store_path TEXT;
