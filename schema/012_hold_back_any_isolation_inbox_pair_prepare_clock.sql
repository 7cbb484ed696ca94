-- outboxd schema, version 12 (docs/design.md, "Delayed delivery" and section 12):
-- 1. The hold-back behind a waiting message of a key holds for REPEATABLE READ and SERIALIZABLE
--    writers too.
-- 2. The inbox is keyed by (consumer, outbox-id, outbox-created-at), the pair that tells a
--    message apart when an id comes back.
-- 3. A prepared message's first check counts from the prepare() call, not from its transaction's
--    start.
--
-- 1. publish() decides the hold-back by reading outbox.delayed. Under READ COMMITTED each statement
-- sees what committed before it, so a writer that waited for the key's lock sees the delayed
-- message of the writer before it. Under REPEATABLE READ or SERIALIZABLE it reads its transaction's
-- snapshot, which may have been taken before that writer committed: it would not see the message
-- it must wait behind. outbox.delayed_keys has one row per (topic, key) with messages waiting, and
-- every message that starts waiting writes that row (a new row, or a new version of it). A unique
-- index sees the latest committed state whatever the snapshot, and PostgreSQL refuses, with a
-- serialization failure (40001), a REPEATABLE READ or SERIALIZABLE insert whose conflicting row
-- its snapshot cannot see. So publish() in such a transaction probes the key's row with an insert
-- that it always undoes: it conflicts with nothing (no message of the key waits, or the last one
-- was just released: then its snapshot may still see released messages and it waits behind them,
-- which only costs a release round), with a row its snapshot sees (its snapshot's view of the
-- key's waiting messages is current), or with a newer one (40001: the writer retries, as such
-- writers must, and its new snapshot sees the message). A READ COMMITTED publish() does not probe.

CREATE TABLE outbox.delayed_keys (
  topic  text        NOT NULL,
  key    text        NOT NULL,
  due_at timestamptz NOT NULL,  -- the latest due time of the key's waiting messages
  PRIMARY KEY (topic, key)
);

-- Messages that were waiting before this version get their keys' rows. The lock keeps writers
-- from adding a waiting message meanwhile.
LOCK TABLE outbox.delayed IN EXCLUSIVE MODE;
INSERT INTO outbox.delayed_keys (topic, key, due_at)
SELECT d.topic, d.key, max(d.due_at) FROM outbox.delayed d
 WHERE d.key IS NOT NULL
 GROUP BY d.topic, d.key;

-- Raises 40001 when a message of (topic, key) started waiting, or a waiting one's key row changed,
-- after the caller's snapshot was taken; otherwise changes nothing. For REPEATABLE READ and
-- SERIALIZABLE callers (under READ COMMITTED the insert would simply succeed).
CREATE FUNCTION outbox.check_key_snapshot(caller text, topic text, key text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, outbox AS $$
BEGIN
  BEGIN
    INSERT INTO outbox.delayed_keys (topic, key, due_at)
    VALUES (check_key_snapshot.topic, check_key_snapshot.key, '-infinity')
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
      -- No message of the key waits: undo the probe (the subtransaction rolls back).
      RAISE EXCEPTION USING ERRCODE = 'OXK01';
    END IF;
  EXCEPTION
    WHEN SQLSTATE 'OXK01' THEN
      NULL;
    WHEN serialization_failure THEN
      RAISE EXCEPTION '%: a message of key "%" on topic "%" started waiting (delayed delivery) after this transaction''s snapshot was taken',
        caller, key, topic
        USING ERRCODE = '40001',
              HINT = 'Retry the transaction: it then waits behind that message, in key order.';
  END;
END $$;

-- Stores a message in outbox.delayed and records its key as holding messages back. Under
-- REPEATABLE READ or SERIALIZABLE, the key row's upsert raises 40001 when that row changed after
-- the snapshot (then `held_until`, read from the snapshot, may be too early).
CREATE OR REPLACE FUNCTION outbox.delay_message(topic text, key text, payload bytea, headers jsonb,
                                                deliver_at timestamptz, held_until timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  new_id bigint := nextval('outbox.messages_id_seq');
  due timestamptz := greatest(delay_message.deliver_at, delay_message.held_until);
BEGIN
  IF delay_message.key IS NOT NULL THEN
    BEGIN
      INSERT INTO outbox.delayed_keys AS k (topic, key, due_at)
      VALUES (delay_message.topic, delay_message.key, due)
      ON CONFLICT ON CONSTRAINT delayed_keys_pkey
        DO UPDATE SET due_at = greatest(k.due_at, excluded.due_at);
    EXCEPTION WHEN serialization_failure THEN
      RAISE EXCEPTION 'outbox.publish: a message of key "%" on topic "%" started waiting (delayed delivery) after this transaction''s snapshot was taken',
        delay_message.key, delay_message.topic
        USING ERRCODE = '40001',
              HINT = 'Retry the transaction: it then waits behind that message, in key order.';
    END;
  END IF;
  INSERT INTO outbox.delayed (id, topic, key, payload, headers, deliver_at, due_at)
  VALUES (new_id, delay_message.topic, delay_message.key, delay_message.payload,
          coalesce(delay_message.headers, '{}'), delay_message.deliver_at, due);
  RETURN new_id;
END $$;

CREATE OR REPLACE FUNCTION outbox.publish(topic text, key text, payload bytea, headers jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  new_id bigint;
  held_until timestamptz;
BEGIN
  PERFORM outbox.check_message('outbox.publish', topic, headers);
  IF key IS NOT NULL AND current_setting('transaction_isolation') <> 'read committed' THEN
    PERFORM outbox.check_key_snapshot('outbox.publish', topic, key);
  END IF;
  held_until := outbox.held_until(topic, key);
  IF held_until IS NOT NULL THEN
    RETURN outbox.delay_message(topic, key, payload, headers, clock_timestamp(), held_until);
  END IF;
  INSERT INTO outbox.messages (topic, key, payload, headers)
  VALUES (publish.topic, publish.key, publish.payload, coalesce(publish.headers, '{}'))
  RETURNING id INTO new_id;
  IF (SELECT sleeping FROM outbox.relay_state) THEN
    PERFORM pg_notify('outbox', '');
  END IF;
  RETURN new_id;
END $$;

-- Version 5's release, which now also removes the key rows of the keys it emptied. A key row that
-- a writer holds (it is adding a message of that key) is left alone; so is one whose key still
-- has waiting messages. The removal is its own statement, so under READ COMMITTED it sees the
-- messages of every writer that committed before the rows were locked.
CREATE OR REPLACE FUNCTION outbox.release_due(max_rows integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  n integer;
  cutoff timestamptz;
  topics text[];
  keys text[];
BEGIN
  PERFORM pg_advisory_xact_lock(8294706103617400005);
  -- One cutoff for the whole statement: clock_timestamp() in the WHERE clause would be read per
  -- row, so a scan could take a later message of a key (due at the same time as the one before
  -- it) and leave the earlier one; it would also stop the index scan from ending at the cutoff.
  cutoff := clock_timestamp();
  WITH due AS (
    SELECT d.seq FROM outbox.delayed d
     WHERE d.due_at <= cutoff
     ORDER BY d.due_at, d.seq
     LIMIT max_rows),
  moved AS (
    DELETE FROM outbox.delayed d USING due WHERE d.seq = due.seq
    RETURNING d.seq, d.id, d.topic, d.key, d.payload, d.headers, d.due_at),
  -- The default id is taken row by row above the sort (a volatile expression is evaluated after
  -- ORDER BY ... LIMIT), so ids follow (due_at, seq).
  released AS (
    INSERT INTO outbox.messages (topic, key, payload, headers)
    SELECT o.topic, o.key, o.payload, o.headers
      FROM (SELECT m.topic, m.key, m.payload,
                   m.headers || jsonb_build_object('outbox-delayed-id', m.id::text) AS headers
              FROM moved m
             ORDER BY m.due_at, m.seq
             LIMIT max_rows) AS o
    RETURNING topic, key)
  SELECT count(*)::integer, array_agg(r.topic) FILTER (WHERE r.key IS NOT NULL),
         array_agg(r.key) FILTER (WHERE r.key IS NOT NULL)
    INTO n, topics, keys
    FROM released r;
  IF keys IS NOT NULL THEN
    SELECT array_agg(l.topic), array_agg(l.key) INTO topics, keys
      FROM (SELECT k.topic, k.key FROM outbox.delayed_keys k
             WHERE (k.topic, k.key) IN (SELECT u.t, u.k FROM unnest(topics, keys) AS u(t, k))
             ORDER BY k.topic, k.key
               FOR UPDATE SKIP LOCKED) AS l;
    DELETE FROM outbox.delayed_keys k
     WHERE (k.topic, k.key) IN (SELECT u.t, u.k FROM unnest(topics, keys) AS u(t, k))
       AND NOT EXISTS (SELECT FROM outbox.delayed d WHERE d.topic = k.topic AND d.key = k.key);
  END IF;
  IF n > 0 AND (SELECT sleeping FROM outbox.relay_state) THEN
    PERFORM pg_notify('outbox', '');
  END IF;
  RETURN n;
END $$;

-- 3. The first check counts from the prepare() call: a prepare late in a long transaction must not
-- be checked as soon as that transaction commits (now() is the transaction's start).
ALTER TABLE outbox.prepared ALTER COLUMN created_at SET DEFAULT clock_timestamp();

CREATE OR REPLACE FUNCTION outbox.prepare(topic text, key text, payload bytea,
                                          headers jsonb DEFAULT '{}',
                                          check_immunity interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  new_id bigint;
  prepared_at timestamptz := clock_timestamp();
BEGIN
  PERFORM outbox.check_message('outbox.prepare', topic, headers);
  IF check_immunity < interval '0' THEN
    RAISE EXCEPTION 'outbox.prepare: check_immunity must not be negative' USING ERRCODE = '22023';
  END IF;
  INSERT INTO outbox.prepared (topic, key, payload, headers, created_at, check_immunity,
                               next_check_at)
  VALUES (prepare.topic, prepare.key, prepare.payload, coalesce(prepare.headers, '{}'),
          prepared_at, prepare.check_immunity,
          prepared_at + coalesce(prepare.check_immunity, interval '0'))
  RETURNING id INTO new_id;
  RETURN new_id;
END $$;

-- 2. The inbox key: (consumer, outbox-id, outbox-created-at). An id can come back for a different
-- message (README, "Durability"); its outbox-created-at differs. message_created_at is the
-- record's outbox-created-at header (microseconds since 1970, UTC); 0 in rows written by the
-- id-only consume_once (all rows before this version): such a row stands for every message with
-- its id, as it did.
ALTER TABLE outbox.inbox ADD COLUMN message_created_at bigint NOT NULL DEFAULT 0;
ALTER TABLE outbox.inbox ALTER COLUMN message_created_at DROP DEFAULT;
ALTER TABLE outbox.inbox DROP CONSTRAINT inbox_pkey,
  ADD PRIMARY KEY (consumer, message_id, message_created_at);

-- True exactly once per (consumer, message_id, created_at), inside the caller's transaction: pass
-- the record's outbox-id and outbox-created-at headers. A concurrent caller with the same triple
-- waits for the first one's transaction: false if it committed, true if it rolled back.
CREATE FUNCTION outbox.consume_once(consumer text, message_id bigint, created_at bigint)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
BEGIN
  IF consumer IS NULL OR consumer = '' OR message_id IS NULL OR created_at IS NULL THEN
    RAISE EXCEPTION 'outbox.consume_once: consumer, message_id and created_at are required'
      USING ERRCODE = '22023';
  END IF;
  IF created_at <= 0 THEN
    RAISE EXCEPTION 'outbox.consume_once: created_at must be the record''s outbox-created-at header (microseconds since 1970), got %',
      created_at USING ERRCODE = '22023';
  END IF;
  IF EXISTS (SELECT FROM outbox.inbox i
              WHERE i.consumer = consume_once.consumer AND i.message_id = consume_once.message_id
                AND i.message_created_at = 0) THEN
    RETURN false;
  END IF;
  INSERT INTO outbox.inbox (consumer, message_id, message_created_at)
  VALUES (consume_once.consumer, consume_once.message_id, consume_once.created_at)
  ON CONFLICT DO NOTHING;
  RETURN FOUND;
END $$;

-- The id-only form, kept for consumers written before version 12: true once per
-- (consumer, message_id) whatever the created_at, so it turns away a different message that
-- reuses an id. Pass the created_at (above) instead.
CREATE OR REPLACE FUNCTION outbox.consume_once(consumer text, message_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
BEGIN
  IF consumer IS NULL OR consumer = '' OR message_id IS NULL THEN
    RAISE EXCEPTION 'outbox.consume_once: consumer and message_id are required'
      USING ERRCODE = '22023';
  END IF;
  IF EXISTS (SELECT FROM outbox.inbox i
              WHERE i.consumer = consume_once.consumer
                AND i.message_id = consume_once.message_id) THEN
    RETURN false;
  END IF;
  INSERT INTO outbox.inbox (consumer, message_id, message_created_at)
  VALUES (consume_once.consumer, consume_once.message_id, 0)
  ON CONFLICT DO NOTHING;
  RETURN FOUND;
END $$;

CREATE OR REPLACE FUNCTION outbox.prune_inbox(retention interval, max_rows integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  n integer;
BEGIN
  DELETE FROM outbox.inbox WHERE (consumer, message_id, message_created_at) IN (
    SELECT i.consumer, i.message_id, i.message_created_at FROM outbox.inbox i
     WHERE i.processed_at < now() - retention
     LIMIT max_rows);
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;

REVOKE ALL ON FUNCTION outbox.check_key_snapshot(text, text, text),
                       outbox.consume_once(text, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.consume_once(text, bigint, bigint) TO outbox_consumer;
