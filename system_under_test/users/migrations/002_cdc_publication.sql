-- depends: 001_create_users_table
-- Change data capture (seed §6): the relay decodes this publication through
-- a logical replication slot.  REPLICA IDENTITY FULL puts the whole old row
-- in each update and delete (the envelope's `before`).
ALTER TABLE users REPLICA IDENTITY FULL;
CREATE PUBLICATION msdb_cdc FOR TABLE users;
