-- outboxd schema, version 7: admin commands that put rows back into the outbox below the running
-- relay's fetch position (`outboxd dead-letters requeue`, `outboxd replay`) ask it to look there
-- again. The command sets rescan_from (to the lowest id it put back, or lower if already set) in
-- the transaction that puts the rows back; the relay reads it with every fetch, in the same
-- snapshot as the rows, waits for what it has in flight, rescans from that id and clears it
-- (docs/design.md, "The admin room").
ALTER TABLE outbox.relay_state ADD COLUMN IF NOT EXISTS rescan_from bigint;

-- The admin commands run as the relay's role: requeue inserts rows with their original ids.
GRANT INSERT ON outbox.messages TO outbox_relay;
