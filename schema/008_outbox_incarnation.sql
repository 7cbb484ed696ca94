-- outboxd schema, version 8: the outbox's incarnation, a random id made once per outbox. The
-- exactly-once mode writes it into each checkpoint record and trusts only checkpoints of its own
-- incarnation: a re-created database (or another outbox sharing the transactional.id) must not
-- remove rows because of someone else's checkpoint. ADD COLUMN ... DEFAULT fills the existing row.
ALTER TABLE outbox.relay_state ADD COLUMN IF NOT EXISTS incarnation uuid NOT NULL DEFAULT gen_random_uuid();
