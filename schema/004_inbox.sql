-- outboxd schema, version 4: the consumer's inbox (docs/consuming.md). A consumer whose side
-- effects live in PostgreSQL calls outbox.consume_once(consumer, outbox-id) inside the
-- transaction that applies the message; it returns true the first time for that consumer and
-- message, false ever after, so a redelivered message (Kafka is at least once) changes nothing.
-- The inbox row commits or rolls back with the consumer's own transaction.

CREATE TABLE outbox.inbox (
  consumer     text        NOT NULL,
  message_id   bigint      NOT NULL,   -- the record's outbox-id header
  processed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, message_id)
);
-- For the retention sweep (outbox.prune_inbox).
CREATE INDEX inbox_processed_at ON outbox.inbox (processed_at);

-- True exactly once per (consumer, message_id), inside the caller's transaction. A concurrent
-- caller with the same pair waits for the first one's transaction: false if it committed, true if
-- it rolled back (then the second one does the work).
CREATE FUNCTION outbox.consume_once(consumer text, message_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
BEGIN
  IF consumer IS NULL OR consumer = '' OR message_id IS NULL THEN
    RAISE EXCEPTION 'outbox.consume_once: consumer and message_id are required'
      USING ERRCODE = '22023';
  END IF;
  INSERT INTO outbox.inbox (consumer, message_id)
  VALUES (consume_once.consumer, consume_once.message_id)
  ON CONFLICT DO NOTHING;
  RETURN FOUND;
END $$;

-- Removes inbox rows processed longer ago than `retention`, at most `max_rows` of them; returns
-- how many. outboxd's leader runs it every inbox.cleanup_interval with inbox.retention; a consumer
-- whose inbox lives in another database calls it itself. A message redelivered after its row was
-- removed is processed again: keep retention longer than any redelivery (consumer lag, replays).
CREATE FUNCTION outbox.prune_inbox(retention interval, max_rows integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  n integer;
BEGIN
  DELETE FROM outbox.inbox WHERE (consumer, message_id) IN (
    SELECT i.consumer, i.message_id FROM outbox.inbox i
     WHERE i.processed_at < now() - retention
     LIMIT max_rows);
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;

-- outbox_consumer: what a consumer's login role needs (GRANT outbox_consumer TO my_consumer).
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outbox_consumer') THEN
    CREATE ROLE outbox_consumer NOLOGIN;
  END IF;
END $$;

REVOKE ALL ON FUNCTION outbox.consume_once(text, bigint),
                       outbox.prune_inbox(interval, integer) FROM PUBLIC;
GRANT USAGE ON SCHEMA outbox TO outbox_consumer;
GRANT EXECUTE ON FUNCTION outbox.consume_once(text, bigint),
                          outbox.prune_inbox(interval, integer) TO outbox_consumer;
GRANT SELECT ON outbox.inbox TO outbox_consumer;
GRANT EXECUTE ON FUNCTION outbox.prune_inbox(interval, integer) TO outbox_relay;
GRANT SELECT ON outbox.inbox TO outbox_relay;
