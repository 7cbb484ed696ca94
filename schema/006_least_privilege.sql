-- outboxd schema, version 6: outbox_relay gets what outboxd does and no more
-- (tests/integration/privilege_test.cpp).
-- Dead-lettering is INSERT ... ON CONFLICT DO UPDATE SET error, failed_at: that needs UPDATE on
-- those two columns (without it, the relay role could not dead-letter anything). The relay never
-- deletes dead letters (an operator does).
GRANT UPDATE (error, failed_at) ON outbox.dead_letters TO outbox_relay;
REVOKE DELETE ON outbox.dead_letters FROM outbox_relay;
-- The relay may mark a message sent (on_sent = "retain"), never rewrite it.
REVOKE UPDATE ON outbox.messages FROM outbox_relay;
GRANT UPDATE (sent_at) ON outbox.messages TO outbox_relay;
-- Check-back counts unanswered checks; settling goes through outbox.settle().
REVOKE UPDATE ON outbox.prepared FROM outbox_relay;
GRANT UPDATE (check_count, last_checked_at, next_check_at) ON outbox.prepared TO outbox_relay;
REVOKE UPDATE ON outbox.relay_state FROM outbox_relay;
GRANT UPDATE (sleeping) ON outbox.relay_state TO outbox_relay;
