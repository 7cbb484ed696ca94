-- outboxd schema, version 10: put-back generations, for the exactly-once recovery
-- (docs/design.md, section 10, "Rows put back by an admin command"). `dead-letters requeue` and
-- `replay` put rows back with their old ids, which the last committed checkpoint may name; the
-- next leader's recovery removes the rows that checkpoint names, so it must tell the row the
-- checkpoint carried from the same id put back after it. Each such command bumps
-- relay_state.put_back (in its transaction, before it touches a row) and stamps the rows it puts
-- back with the new value; the relay reads relay_state.put_back in each fetch's snapshot and
-- writes it into the checkpoint. A row whose stamp is higher was put back after that fetch: the
-- recovery leaves it to be sent. NULL: never put back. Adding a nullable column rewrites nothing.
ALTER TABLE outbox.relay_state ADD COLUMN IF NOT EXISTS put_back bigint NOT NULL DEFAULT 0;
ALTER TABLE outbox.messages ADD COLUMN IF NOT EXISTS put_back bigint;

-- The admin commands run as the relay's role (schema 006 allows it only the columns it needs):
-- they set rescan_from (schema 007) and put_back, and replay stamps the rows it puts back.
GRANT UPDATE (rescan_from, put_back) ON outbox.relay_state TO outbox_relay;
GRANT UPDATE (put_back) ON outbox.messages TO outbox_relay;
