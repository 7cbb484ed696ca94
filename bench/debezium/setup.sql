-- The Debezium-shaped outbox table (the columns the outbox EventRouter reads by default:
-- id, aggregatetype, aggregateid, type, payload), for the Debezium benchmark peer.
-- Usage: psql -v ON_ERROR_STOP=1 -v schema=public -v tbl=outbox -f setup.sql
-- (run.sh setup --table schema.table does this.)
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS :"schema";
CREATE TABLE IF NOT EXISTS :"schema".:"tbl" (
  id            uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
  aggregatetype varchar(255) NOT NULL,
  aggregateid   varchar(255) NOT NULL,
  type          varchar(255) NOT NULL,
  payload       jsonb,
  created_at    timestamptz  NOT NULL DEFAULT clock_timestamp()
);
