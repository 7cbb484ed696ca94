-- outboxd schema, version 1: the outbox table, the write functions, dead letters and the roles.
-- Applied by `outboxd migrate` inside one transaction; it is recorded in outbox.schema_migrations.

CREATE SCHEMA IF NOT EXISTS outbox;

-- Ids must be taken after the transaction id: a row's id is then never below an id that was
-- visible in a snapshot taken while its transaction had no xid yet (see docs/design.md, "scan").
CREATE SEQUENCE outbox.messages_id_seq AS bigint;

CREATE FUNCTION outbox.next_message_id() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_current_xact_id();
  RETURN nextval('outbox.messages_id_seq');
END $$;

-- A row's presence means "not yet acknowledged by Kafka" (or, with on_sent = "retain",
-- sent_at IS NULL does). The relay reads rows in id order and removes them after the ack.
CREATE TABLE outbox.messages (
  id         bigint      PRIMARY KEY DEFAULT outbox.next_message_id(),
  txid       xid8        NOT NULL DEFAULT pg_current_xact_id(),
  topic      text        NOT NULL,
  key        text,
  payload    bytea,
  headers    jsonb       NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  sent_at    timestamptz
);
ALTER SEQUENCE outbox.messages_id_seq OWNED BY outbox.messages.id;
-- A queue table: vacuum it by a fixed number of dead rows, not by a fraction of its size.
ALTER TABLE outbox.messages SET (autovacuum_vacuum_scale_factor = 0,
                                 autovacuum_vacuum_threshold = 20000,
                                 autovacuum_vacuum_insert_scale_factor = 0,
                                 autovacuum_vacuum_insert_threshold = 20000);

-- Rows that can never be delivered (poison), with the reason.
CREATE TABLE outbox.dead_letters (
  id         bigint      PRIMARY KEY,
  topic      text        NOT NULL,
  key        text,
  payload    bytea,
  headers    jsonb       NOT NULL,
  created_at timestamptz NOT NULL,
  failed_at  timestamptz NOT NULL DEFAULT now(),
  error      text        NOT NULL
);

-- One row: whether the relay sleeps on LISTEN and wants a NOTIFY. NOTIFY serializes the commits
-- of every notifying transaction, so publish() notifies only while the relay is asleep.
CREATE TABLE outbox.relay_state (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  sleeping  boolean NOT NULL DEFAULT false
);
INSERT INTO outbox.relay_state DEFAULT VALUES;

CREATE FUNCTION outbox.publish(topic text, key text, payload bytea, headers jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
DECLARE
  new_id bigint;
BEGIN
  IF topic IS NULL OR topic = '' THEN
    RAISE EXCEPTION 'outbox.publish: topic must not be empty' USING ERRCODE = '22023';
  END IF;
  INSERT INTO outbox.messages (topic, key, payload, headers)
  VALUES (publish.topic, publish.key, publish.payload, coalesce(publish.headers, '{}'))
  RETURNING id INTO new_id;
  IF (SELECT sleeping FROM outbox.relay_state) THEN
    PERFORM pg_notify('outbox', '');
  END IF;
  RETURN new_id;
END $$;

CREATE FUNCTION outbox.publish(topic text, key text, payload text, headers jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
  SELECT outbox.publish(topic, key, convert_to(payload, 'UTF8'), headers)
$$;

CREATE FUNCTION outbox.publish(topic text, key text, payload jsonb, headers jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, outbox AS $$
  SELECT outbox.publish(topic, key, convert_to(payload::text, 'UTF8'), headers)
$$;

-- Roles: outbox_writer may only call the write functions; outbox_relay is what outboxd needs.
-- Grant them to login roles: GRANT outbox_writer TO app; GRANT outbox_relay TO outboxd;
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outbox_writer') THEN
    CREATE ROLE outbox_writer NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outbox_relay') THEN
    CREATE ROLE outbox_relay NOLOGIN;
  END IF;
END $$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA outbox FROM PUBLIC;
GRANT USAGE ON SCHEMA outbox TO outbox_writer, outbox_relay;
GRANT EXECUTE ON FUNCTION outbox.publish(text, text, bytea, jsonb),
                          outbox.publish(text, text, text, jsonb),
                          outbox.publish(text, text, jsonb, jsonb) TO outbox_writer;
GRANT SELECT, UPDATE, DELETE ON outbox.messages TO outbox_relay;
GRANT SELECT, INSERT, DELETE ON outbox.dead_letters TO outbox_relay;
GRANT SELECT, UPDATE ON outbox.relay_state TO outbox_relay;
GRANT SELECT ON outbox.schema_migrations TO outbox_relay;
