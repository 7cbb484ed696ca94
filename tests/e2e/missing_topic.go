package main

// missing-topic: a few messages go to a topic that does not exist (the brokers do not auto-create
// topics) while the writers write steadily to existing ones. outboxd must deliver every message of
// the existing topics meanwhile, keep the stray messages in the outbox (neither lost nor delivered
// nor dead-lettered), and deliver them once the topic exists, which the harness then makes.

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kerr"
)

// missingTopic is the scenario's state between its fault and its check before the drain.
type missingTopic struct {
	topic string
	fault *Fault
	at    time.Time // when the stray messages committed
}

func missingTopicScenario() Scenario {
	return Scenario{name: "missing-topic",
		about:  "a few messages to a topic that does not exist while the writers write to existing ones: those flow, the stray ones wait in the outbox until the harness creates their topic",
		topics: 4, partitions: 6, replicas: 1, short: 25 * time.Second, long: 90 * time.Second,
		// librdkafka gives up on a topic it cannot see after this long (30 s by default): the
		// scenario meets that moment early.
		props: map[string]string{"topic.metadata.propagation.max.ms": "5000"},
		fault: missingTopicFault, beforeDrain: missingTopicHeld}
}

// topicExists asks the metadata whether `topic` exists.
func (e *Env) topicExists(ctx context.Context, topic string) (bool, error) {
	mctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	md, err := e.adm.Metadata(mctx, topic)
	if err != nil {
		return false, err
	}
	t, ok := md.Topics[topic]
	if !ok || t.Err == kerr.UnknownTopicOrPartition {
		return false, nil
	}
	return t.Err == nil, t.Err
}

// missingTopicFault commits a few messages to a topic that does not exist, a few seconds in.
func missingTopicFault(ctx context.Context, e *Env) {
	sleepCtx(ctx, pick(e, 3*time.Second, 10*time.Second))
	if ctx.Err() != nil {
		return
	}
	m := &missingTopic{topic: e.prefix + "-missing"}
	if exists, err := e.topicExists(ctx, m.topic); exists || err != nil {
		e.r.fail("topic %s should not exist yet (exists %v, error %v)", m.topic, exists, err)
		return
	}
	e.addExtraTopics(m.topic)
	conn, err := pgx.Connect(ctx, e.writers.Conninfo)
	if err != nil {
		e.r.fail("connect: %v", err)
		return
	}
	defer conn.Close(context.Background())
	// Two transactions: one key's messages in both (their order is checked), one without a key.
	a, b := "s-a", "s-ключ"
	opened := make(chan struct{})
	close(opened)
	always := &Gate{Reached: func() {}, Open: opened} // commit, at once
	for _, keys := range [][]*string{{&a, &a, &b}, {&a, nil}} {
		lockSet := map[string]bool{}
		for _, k := range keys {
			if k != nil {
				lockSet[*k] = true
			}
		}
		if err := e.writers.publishTx(ctx, conn, e.rnd, m.topic, keys, lockSet, always); err != nil {
			e.r.fail("publish to %s: %v", m.topic, err)
			return
		}
	}
	m.at = time.Now()
	m.fault = e.inject("%d messages committed to topic %s, which does not exist", e.writers.Ledger.CommittedTo(m.topic),
		m.topic)
	e.missing = m
}

// missingTopicHeld runs once the writers stopped: every row of the existing topics must leave the
// outbox (delivered) while the stray rows stay in it, all of them, and their topic still does not
// exist. Then the harness creates the topic, and the run's drain and witness require the stray
// messages to arrive too.
func missingTopicHeld(ctx context.Context, e *Env) {
	m := e.missing
	if m == nil {
		e.r.fail("the stray messages were never written")
		return
	}
	stray := e.writers.Ledger.CommittedTo(m.topic)
	timeout := pick(e, 45*time.Second, 3*time.Minute)
	others, held, err := waitOthersDrained(ctx, e.writers.Conninfo, m.topic, timeout)
	waited := time.Since(m.at).Round(time.Second)
	switch {
	case err != nil:
		e.r.fail("counting the outbox's rows: %v", err)
	case others > 0:
		e.r.fail("delivery stopped while topic %s was missing: %d rows of the existing topics still in the "+
			"outbox %s after the writers stopped (%s after the stray rows committed)", m.topic, others, timeout, waited)
		e.met(m.fault, "its stray rows stopped the delivery of every other topic")
		describeLeft(ctx, e.writers.Conninfo, e.r)
	default:
		e.met(m.fault, "the rows of the existing topics were delivered while the %d stray rows waited in the "+
			"outbox for %s", held, waited)
	}
	if held != int64(stray) {
		e.r.fail("%d of the %d stray rows were in the outbox before their topic existed (the others were lost, "+
			"dead-lettered or delivered somewhere)", held, stray)
	}
	if exists, err := e.topicExists(ctx, m.topic); exists || err != nil {
		e.r.fail("topic %s exists before the harness created it (auto-created? error %v)", m.topic, err)
	}
	cctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	err = createTopics(cctx, e.adm, 6, 1, []string{m.topic})
	cancel()
	if err != nil {
		e.r.fail("create the missing topic: %v", err)
		return
	}
	e.recordCount(m.topic, 6)
	logf("topic %s created by the harness, %s after its stray rows committed", m.topic, waited)
	e.r.note("topic %s created %s after its %d stray rows committed", m.topic, waited, stray)
}

// waitOthersDrained waits until the outbox holds no row of a topic other than `topic`, and returns
// the rows of the other topics and of `topic` then (or at the timeout).
func waitOthersDrained(ctx context.Context, conninfo, topic string, timeout time.Duration) (others, held int64, err error) {
	deadline := time.Now().Add(timeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var conn *pgx.Conn
		conn, err = pgx.Connect(cctx, conninfo)
		if err == nil {
			err = conn.QueryRow(cctx, "SELECT count(*) FILTER (WHERE topic <> $1), count(*) FILTER (WHERE topic = $1) "+
				"FROM outbox.messages", topic).Scan(&others, &held)
			conn.Close(cctx)
		}
		cancel()
		if (err == nil && others == 0) || !time.Now().Before(deadline) || ctx.Err() != nil {
			return others, held, err
		}
		time.Sleep(250 * time.Millisecond)
	}
}
