-- depends: 005_reserve_function
-- transactional: false
-- The open reservations, indexed by order.  reservations_state_idx indexed
-- only the state: confirming an order's reservation (store.py, confirm)
-- matched it and read every entry it held.  A confirmation moves a row out
-- of RESERVED in a non-HOT update, so the old version's entry stays in a
-- partial index until vacuum: under an order load the confirmation read
-- ~18,000 entries after a minute, and catalog's backends' CPU per order
-- doubled between two autovacuums (docs/performance.md, 2026-12-03).  Keyed
-- by order_id, the same lookup reads one order's entries.  Built and
-- dropped CONCURRENTLY: no lock that stops writes on a deployment that has
-- the table full (hence outside a transaction).
CREATE INDEX CONCURRENTLY IF NOT EXISTS reservations_reserved_idx
    ON reservations (order_id) WHERE state = 'RESERVED';
DROP INDEX CONCURRENTLY IF EXISTS reservations_state_idx;
