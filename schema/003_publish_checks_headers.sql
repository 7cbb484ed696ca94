-- outboxd schema, version 3: outbox.publish refuses headers that are not a JSON object, as
-- outbox.prepare does (version 2). Before, such a row was accepted and then dead-lettered by the
-- relay. CREATE OR REPLACE keeps the function's grants and may run again without harm.
CREATE OR REPLACE FUNCTION outbox.publish(topic text, key text, payload bytea, headers jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  new_id bigint;
BEGIN
  IF topic IS NULL OR topic = '' THEN
    RAISE EXCEPTION 'outbox.publish: topic must not be empty' USING ERRCODE = '22023';
  END IF;
  IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'object' THEN
    RAISE EXCEPTION 'outbox.publish: headers must be a JSON object' USING ERRCODE = '22023';
  END IF;
  INSERT INTO outbox.messages (topic, key, payload, headers)
  VALUES (publish.topic, publish.key, publish.payload, coalesce(publish.headers, '{}'))
  RETURNING id INTO new_id;
  IF (SELECT sleeping FROM outbox.relay_state) THEN
    PERFORM pg_notify('outbox', '');
  END IF;
  RETURN new_id;
END $$;
