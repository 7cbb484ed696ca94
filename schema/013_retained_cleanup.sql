-- outboxd schema, version 13: the removal of sent rows (relay.on_sent = "retain") reads them by
-- their sent_at. The relay removes the expired rows in statements of 10,000 until none is left;
-- without this index each statement walked the table in id order past every retained row not due
-- yet. Partial: with on_sent = "delete" no row has sent_at set, so the index stays empty and the
-- application's write path pays nothing for it.
CREATE INDEX messages_sent_at ON outbox.messages (sent_at) WHERE sent_at IS NOT NULL;
