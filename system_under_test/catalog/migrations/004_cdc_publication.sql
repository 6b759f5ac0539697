-- depends: 003_release_tombstones
-- Change data capture (seed §6): products feed the search index.
ALTER TABLE products REPLICA IDENTITY FULL;
CREATE PUBLICATION msdb_cdc FOR TABLE products;
