-- outboxd schema, version 5: delayed delivery (docs/design.md, "Delayed delivery").
--
-- A message with a deliver_at in the future is kept in outbox.delayed, never in outbox.messages,
-- so the relay's scan never meets it. When its time has come, outboxd's leader moves it into
-- outbox.messages with outbox.release_due(): a NEW row with a fresh id taken in the releasing
-- transaction (as outbox.commit does for half messages), so the scan window's invariant holds
-- (an id is taken after its transaction's xid) and the relay delivers it like any other row.
--
-- Per-key order: while a message of a (topic, key) waits in outbox.delayed, every later message
-- of that key waits behind it (in outbox.delayed, due no earlier than the one before it), also
-- messages published without a delay. Released in (due_at, seq) order by one releaser at a time,
-- they get ids in that order and Kafka sees them in publish order. Messages without a key have no
-- order and are never held.

CREATE TABLE outbox.delayed (
  seq        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- The id publish() returned; the Kafka record carries it as header outbox-delayed-id (its
  -- outbox-id is the id of the released row).
  id         bigint      NOT NULL UNIQUE,
  topic      text        NOT NULL,
  key        text,
  payload    bytea,
  headers    jsonb       NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  deliver_at timestamptz NOT NULL,  -- what the writer asked for (now() for a held-back message)
  due_at     timestamptz NOT NULL   -- greatest(deliver_at, due_at of the key's earlier ones)
);
CREATE INDEX delayed_due ON outbox.delayed (due_at, seq);
CREATE INDEX delayed_key ON outbox.delayed (topic, key, due_at) WHERE key IS NOT NULL;
ALTER TABLE outbox.delayed SET (autovacuum_vacuum_scale_factor = 0,
                                autovacuum_vacuum_threshold = 20000,
                                autovacuum_vacuum_insert_scale_factor = 0,
                                autovacuum_vacuum_insert_threshold = 20000);

-- Internal: stores a message in outbox.delayed, due no earlier than `not_before` and no earlier
-- than the messages of its key that wait already.
CREATE FUNCTION outbox.delay_message(topic text, key text, payload bytea, headers jsonb,
                                     deliver_at timestamptz, held_until timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  new_id bigint := nextval('outbox.messages_id_seq');
BEGIN
  INSERT INTO outbox.delayed (id, topic, key, payload, headers, deliver_at, due_at)
  VALUES (new_id, delay_message.topic, delay_message.key, delay_message.payload,
          coalesce(delay_message.headers, '{}'), delay_message.deliver_at,
          greatest(delay_message.deliver_at, delay_message.held_until));
  RETURN new_id;
END $$;

-- The base publish (version 3's), now also holding a message back behind a waiting delayed
-- message of its key. The text and jsonb overloads call it, so they hold back too.
CREATE OR REPLACE FUNCTION outbox.publish(topic text, key text, payload bytea, headers jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  new_id bigint;
  held_until timestamptz;
BEGIN
  IF topic IS NULL OR topic = '' THEN
    RAISE EXCEPTION 'outbox.publish: topic must not be empty' USING ERRCODE = '22023';
  END IF;
  IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'object' THEN
    RAISE EXCEPTION 'outbox.publish: headers must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF key IS NOT NULL THEN
    SELECT max(d.due_at) INTO held_until FROM outbox.delayed d
     WHERE d.topic = publish.topic AND d.key = publish.key;
    IF held_until IS NOT NULL THEN
      RETURN outbox.delay_message(topic, key, payload, headers, clock_timestamp(), held_until);
    END IF;
  END IF;
  INSERT INTO outbox.messages (topic, key, payload, headers)
  VALUES (publish.topic, publish.key, publish.payload, coalesce(publish.headers, '{}'))
  RETURNING id INTO new_id;
  IF (SELECT sleeping FROM outbox.relay_state) THEN
    PERFORM pg_notify('outbox', '');
  END IF;
  RETURN new_id;
END $$;

-- publish with a delivery time: kept until deliver_at (NULL or a past time: at once, still
-- behind a waiting message of its key). E.g. outbox.publish('t', 'k', 'v', '{}', now() + interval '1 hour').
CREATE FUNCTION outbox.publish(topic text, key text, payload bytea, headers jsonb,
                               deliver_at timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  held_until timestamptz;
BEGIN
  IF deliver_at IS NULL OR deliver_at <= clock_timestamp() THEN
    RETURN outbox.publish(topic, key, payload, headers);
  END IF;
  IF topic IS NULL OR topic = '' THEN
    RAISE EXCEPTION 'outbox.publish: topic must not be empty' USING ERRCODE = '22023';
  END IF;
  IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'object' THEN
    RAISE EXCEPTION 'outbox.publish: headers must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF key IS NOT NULL THEN
    SELECT max(d.due_at) INTO held_until FROM outbox.delayed d
     WHERE d.topic = publish.topic AND d.key = publish.key;
  END IF;
  RETURN outbox.delay_message(topic, key, payload, headers, deliver_at, held_until);
END $$;

CREATE FUNCTION outbox.publish(topic text, key text, payload text, headers jsonb,
                               deliver_at timestamptz)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
  SELECT outbox.publish(topic, key, convert_to(payload, 'UTF8'), headers, deliver_at)
$$;

CREATE FUNCTION outbox.publish(topic text, key text, payload jsonb, headers jsonb,
                               deliver_at timestamptz)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
  SELECT outbox.publish(topic, key, convert_to(payload::text, 'UTF8'), headers, deliver_at)
$$;

-- Moves up to max_rows messages whose time has come into outbox.messages, in (due_at, seq)
-- order, each a new row with a fresh id; returns how many. One releaser at a time (a transaction
-- advisory lock), so two releasers can never interleave ids of one key. outboxd's leader calls it.
CREATE FUNCTION outbox.release_due(max_rows integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  n integer;
  cutoff timestamptz;
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
    RETURNING d.seq, d.id, d.topic, d.key, d.payload, d.headers, d.due_at)
  -- The default id is taken row by row above the sort (a volatile expression is evaluated after
  -- ORDER BY ... LIMIT), so ids follow (due_at, seq).
  INSERT INTO outbox.messages (topic, key, payload, headers)
  SELECT o.topic, o.key, o.payload, o.headers
    FROM (SELECT m.topic, m.key, m.payload,
                 m.headers || jsonb_build_object('outbox-delayed-id', m.id::text) AS headers
            FROM moved m
           ORDER BY m.due_at, m.seq
           LIMIT max_rows) AS o;
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n > 0 AND (SELECT sleeping FROM outbox.relay_state) THEN
    PERFORM pg_notify('outbox', '');
  END IF;
  RETURN n;
END $$;

-- Half messages with a delivery time: outbox.commit() publishes them with it.
ALTER TABLE outbox.prepared ADD COLUMN deliver_at timestamptz;

CREATE FUNCTION outbox.prepare(topic text, key text, payload bytea, headers jsonb,
                               check_immunity interval, deliver_at timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  new_id bigint := outbox.prepare(topic, key, payload, headers, check_immunity);
BEGIN
  UPDATE outbox.prepared SET deliver_at = prepare.deliver_at WHERE id = new_id;
  RETURN new_id;
END $$;

CREATE FUNCTION outbox.prepare(topic text, key text, payload text, headers jsonb,
                               check_immunity interval, deliver_at timestamptz)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
  SELECT outbox.prepare(topic, key, convert_to(payload, 'UTF8'), headers, check_immunity,
                        deliver_at)
$$;

CREATE FUNCTION outbox.prepare(topic text, key text, payload jsonb, headers jsonb,
                               check_immunity interval, deliver_at timestamptz)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
  SELECT outbox.prepare(topic, key, convert_to(payload::text, 'UTF8'), headers, check_immunity,
                        deliver_at)
$$;

-- Version 2's apply_verdict, publishing a committed half message with its deliver_at.
CREATE OR REPLACE FUNCTION outbox.apply_verdict(prepared_id bigint, verdict text, source text,
                                                final_topic text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  p outbox.prepared;
  copy_id bigint;
  new_state text;
BEGIN
  SELECT * INTO p FROM outbox.prepared WHERE id = prepared_id;
  IF verdict = 'commit' THEN
    new_state := 'committed';
    copy_id := outbox.publish(p.topic, p.key, p.payload,
                              p.headers || jsonb_build_object('outbox-prepared-id', p.id::text),
                              p.deliver_at);
  ELSIF verdict = 'rollback' THEN
    new_state := 'rolled_back';
  ELSIF verdict = 'dead_letter' THEN
    new_state := 'dead_lettered';
    IF final_topic IS NOT NULL AND final_topic <> '' THEN
      copy_id := outbox.publish(final_topic, p.key, p.payload,
                                p.headers || jsonb_build_object(
                                  'outbox-prepared-id', p.id::text, 'outbox-topic', p.topic,
                                  'outbox-error', 'no verdict after ' || p.check_count || ' checks'));
    END IF;
  ELSE
    RAISE EXCEPTION 'outbox: unknown verdict "%"', verdict USING ERRCODE = '22023';
  END IF;
  UPDATE outbox.prepared
     SET state = new_state, settled_at = now(), settled_by = source, message_id = copy_id
   WHERE id = prepared_id;
END $$;

REVOKE ALL ON FUNCTION outbox.delay_message(text, text, bytea, jsonb, timestamptz, timestamptz),
                       outbox.publish(text, text, bytea, jsonb, timestamptz),
                       outbox.publish(text, text, text, jsonb, timestamptz),
                       outbox.publish(text, text, jsonb, jsonb, timestamptz),
                       outbox.release_due(integer),
                       outbox.prepare(text, text, bytea, jsonb, interval, timestamptz),
                       outbox.prepare(text, text, text, jsonb, interval, timestamptz),
                       outbox.prepare(text, text, jsonb, jsonb, interval, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.publish(text, text, bytea, jsonb, timestamptz),
                          outbox.publish(text, text, text, jsonb, timestamptz),
                          outbox.publish(text, text, jsonb, jsonb, timestamptz),
                          outbox.prepare(text, text, bytea, jsonb, interval, timestamptz),
                          outbox.prepare(text, text, text, jsonb, interval, timestamptz),
                          outbox.prepare(text, text, jsonb, jsonb, interval, timestamptz)
                       TO outbox_writer;
GRANT EXECUTE ON FUNCTION outbox.release_due(integer) TO outbox_relay;
GRANT SELECT ON outbox.delayed TO outbox_relay;
