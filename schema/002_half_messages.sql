-- outboxd schema, version 2: half (prepared) messages and check-back, after RocketMQ's
-- transactional messages. See docs/half-messages.md.
--
-- A prepared message lives in outbox.prepared and is never delivered from there. Settling it
-- moves it out of state 'prepared' exactly once, under the row's lock:
--   commit   -> a NEW row in outbox.messages (a fresh id taken in the committing transaction, so
--               the relay's scan invariant holds), header outbox-prepared-id = this id;
--   rollback -> nothing is delivered;
--   dead_letter (check-back's final action) -> optionally a copy on a dead-letter topic.

CREATE TABLE outbox.prepared (
  id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  topic          text        NOT NULL,
  key            text,
  payload        bytea,
  headers        jsonb       NOT NULL DEFAULT '{}',
  created_at     timestamptz NOT NULL DEFAULT now(),
  -- The message's own "do not check before": its first check waits for the longer of this and
  -- outboxd's checkback.transaction_timeout (RocketMQ's CHECK_IMMUNITY_TIME_IN_SECONDS).
  check_immunity interval,
  state          text        NOT NULL DEFAULT 'prepared'
                 CHECK (state IN ('prepared', 'committed', 'rolled_back', 'dead_lettered')),
  check_count    integer     NOT NULL DEFAULT 0,
  -- The earliest time of the next check (the first one also waits for transaction_timeout).
  next_check_at  timestamptz NOT NULL,
  last_checked_at timestamptz,
  settled_at     timestamptz,
  settled_by     text        CHECK (settled_by IN ('application', 'check', 'max_checks')),
  message_id     bigint,     -- the outbox.messages id of the committed (or dead-letter) copy
  CHECK ((state = 'prepared') = (settled_at IS NULL))
);
CREATE INDEX prepared_due ON outbox.prepared (next_check_at) WHERE state = 'prepared';
CREATE INDEX prepared_settled ON outbox.prepared (settled_at)
  WHERE state IN ('committed', 'rolled_back');

CREATE FUNCTION outbox.prepare(topic text, key text, payload bytea, headers jsonb DEFAULT '{}',
                               check_immunity interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  new_id bigint;
BEGIN
  IF topic IS NULL OR topic = '' THEN
    RAISE EXCEPTION 'outbox.prepare: topic must not be empty' USING ERRCODE = '22023';
  END IF;
  IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'object' THEN
    RAISE EXCEPTION 'outbox.prepare: headers must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF check_immunity < interval '0' THEN
    RAISE EXCEPTION 'outbox.prepare: check_immunity must not be negative' USING ERRCODE = '22023';
  END IF;
  INSERT INTO outbox.prepared (topic, key, payload, headers, check_immunity, next_check_at)
  VALUES (prepare.topic, prepare.key, prepare.payload, coalesce(prepare.headers, '{}'),
          prepare.check_immunity, now() + coalesce(prepare.check_immunity, interval '0'))
  RETURNING id INTO new_id;
  RETURN new_id;
END $$;

CREATE FUNCTION outbox.prepare(topic text, key text, payload text, headers jsonb DEFAULT '{}',
                               check_immunity interval DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
  SELECT outbox.prepare(topic, key, convert_to(payload, 'UTF8'), headers, check_immunity)
$$;

CREATE FUNCTION outbox.prepare(topic text, key text, payload jsonb, headers jsonb DEFAULT '{}',
                               check_immunity interval DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
  SELECT outbox.prepare(topic, key, convert_to(payload::text, 'UTF8'), headers, check_immunity)
$$;

-- Internal: settles a prepared message whose row the caller has locked and found 'prepared'.
-- verdict: commit | rollback | dead_letter; final_topic: dead_letter's copy ('' or NULL: none).
CREATE FUNCTION outbox.apply_verdict(prepared_id bigint, verdict text, source text,
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
                              p.headers || jsonb_build_object('outbox-prepared-id', p.id::text));
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

-- The application's commit: makes the message deliverable, atomically with the caller's
-- transaction. Idempotent (returns the same outbox.messages id); an error after a rollback.
CREATE FUNCTION outbox.commit(prepared_id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  p outbox.prepared;
BEGIN
  SELECT * INTO p FROM outbox.prepared WHERE id = prepared_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'outbox.commit: no prepared message with id %', prepared_id
      USING ERRCODE = 'P0002';
  END IF;
  IF p.state = 'committed' THEN
    RETURN p.message_id;
  END IF;
  IF p.state <> 'prepared' THEN
    RAISE EXCEPTION 'outbox.commit: prepared message % cannot be committed: it was already % (by %)',
      prepared_id, replace(p.state, '_', ' '), p.settled_by
      USING ERRCODE = '55000';
  END IF;
  PERFORM outbox.apply_verdict(prepared_id, 'commit', 'application');
  RETURN (SELECT message_id FROM outbox.prepared WHERE id = prepared_id);
END $$;

-- The application's rollback: the message is never delivered. Idempotent; an error after a commit.
CREATE FUNCTION outbox.rollback(prepared_id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  p outbox.prepared;
BEGIN
  SELECT * INTO p FROM outbox.prepared WHERE id = prepared_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'outbox.rollback: no prepared message with id %', prepared_id
      USING ERRCODE = 'P0002';
  END IF;
  IF p.state = 'rolled_back' THEN
    RETURN;
  END IF;
  IF p.state <> 'prepared' THEN
    RAISE EXCEPTION 'outbox.rollback: prepared message % cannot be rolled back: it was already % (by %)',
      prepared_id, replace(p.state, '_', ' '), p.settled_by
      USING ERRCODE = '55000';
  END IF;
  PERFORM outbox.apply_verdict(prepared_id, 'rollback', 'application');
END $$;

-- Check-back's verdicts (outboxd): settles the message unless it is settled already, in which
-- case nothing changes and it returns false (a late verdict, to be ignored). source: check or
-- max_checks; a check verdict also counts the check.
CREATE FUNCTION outbox.settle(prepared_id bigint, verdict text, source text,
                              final_topic text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  p outbox.prepared;
BEGIN
  IF source NOT IN ('check', 'max_checks') THEN
    RAISE EXCEPTION 'outbox.settle: source must be check or max_checks' USING ERRCODE = '22023';
  END IF;
  SELECT * INTO p FROM outbox.prepared WHERE id = prepared_id FOR UPDATE;
  IF NOT FOUND OR p.state <> 'prepared' THEN
    RETURN false;
  END IF;
  IF source = 'check' THEN
    UPDATE outbox.prepared SET check_count = check_count + 1, last_checked_at = now()
     WHERE id = prepared_id;
  END IF;
  PERFORM outbox.apply_verdict(prepared_id, verdict, source, final_topic);
  RETURN true;
END $$;

REVOKE ALL ON FUNCTION outbox.prepare(text, text, bytea, jsonb, interval),
                       outbox.prepare(text, text, text, jsonb, interval),
                       outbox.prepare(text, text, jsonb, jsonb, interval),
                       outbox.apply_verdict(bigint, text, text, text),
                       outbox.commit(bigint),
                       outbox.rollback(bigint),
                       outbox.settle(bigint, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.prepare(text, text, bytea, jsonb, interval),
                          outbox.prepare(text, text, text, jsonb, interval),
                          outbox.prepare(text, text, jsonb, jsonb, interval),
                          outbox.commit(bigint),
                          outbox.rollback(bigint) TO outbox_writer;
GRANT EXECUTE ON FUNCTION outbox.settle(bigint, text, text, text) TO outbox_relay;
-- Check-back reads due messages, counts unanswered checks and removes old settled rows.
GRANT SELECT, UPDATE, DELETE ON outbox.prepared TO outbox_relay;
