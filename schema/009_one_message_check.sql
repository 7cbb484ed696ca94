-- outboxd schema, version 9: the write functions share one check of a message and one hold-back
-- lookup, where versions 2, 3 and 5 wrote them out in each function. Behaviour, error messages,
-- signatures and grants are unchanged: CREATE OR REPLACE keeps each function's owner, grants and
-- defaults.
--
-- The two helpers are SECURITY INVOKER and revoked from PUBLIC: only the owner's SECURITY DEFINER
-- write functions can call them; outbox_writer and outbox_relay cannot (and held_until reads
-- outbox.delayed, which outbox_writer may not).

-- Refuses a message the relay could never deliver: an empty topic, or headers that are not a JSON
-- object (NULL means {}). `caller` names the write function in the error.
CREATE FUNCTION outbox.check_message(caller text, topic text, headers jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, outbox AS $$
BEGIN
  IF topic IS NULL OR topic = '' THEN
    RAISE EXCEPTION '%: topic must not be empty', caller USING ERRCODE = '22023';
  END IF;
  IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'object' THEN
    RAISE EXCEPTION '%: headers must be a JSON object', caller USING ERRCODE = '22023';
  END IF;
END $$;

-- Per-key order of delayed delivery (version 5): the latest due time of the messages of
-- (topic, key) that wait in outbox.delayed, or NULL when none waits (or the key is NULL).
CREATE FUNCTION outbox.held_until(topic text, key text) RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog, outbox AS $$
  SELECT max(d.due_at) FROM outbox.delayed d
   WHERE held_until.key IS NOT NULL AND d.topic = held_until.topic AND d.key = held_until.key
$$;

CREATE OR REPLACE FUNCTION outbox.publish(topic text, key text, payload bytea, headers jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  new_id bigint;
  held_until timestamptz;
BEGIN
  PERFORM outbox.check_message('outbox.publish', topic, headers);
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

CREATE OR REPLACE FUNCTION outbox.publish(topic text, key text, payload bytea, headers jsonb,
                                          deliver_at timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
BEGIN
  IF deliver_at IS NULL OR deliver_at <= clock_timestamp() THEN
    RETURN outbox.publish(topic, key, payload, headers);
  END IF;
  PERFORM outbox.check_message('outbox.publish', topic, headers);
  RETURN outbox.delay_message(topic, key, payload, headers, deliver_at,
                              outbox.held_until(topic, key));
END $$;

CREATE OR REPLACE FUNCTION outbox.prepare(topic text, key text, payload bytea,
                                          headers jsonb DEFAULT '{}',
                                          check_immunity interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  new_id bigint;
BEGIN
  PERFORM outbox.check_message('outbox.prepare', topic, headers);
  IF check_immunity < interval '0' THEN
    RAISE EXCEPTION 'outbox.prepare: check_immunity must not be negative' USING ERRCODE = '22023';
  END IF;
  INSERT INTO outbox.prepared (topic, key, payload, headers, check_immunity, next_check_at)
  VALUES (prepare.topic, prepare.key, prepare.payload, coalesce(prepare.headers, '{}'),
          prepare.check_immunity, now() + coalesce(prepare.check_immunity, interval '0'))
  RETURNING id INTO new_id;
  RETURN new_id;
END $$;

REVOKE ALL ON FUNCTION outbox.check_message(text, text, jsonb),
                       outbox.held_until(text, text) FROM PUBLIC;
