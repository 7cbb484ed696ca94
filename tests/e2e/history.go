package main

// eo-history: an exactly-once outbox with history. Before outboxd first starts, its checkpoint topic
// already holds many committed records under its transactional.id, in outboxd's checkpoint format
// (sidecar/checkpoint.cpp: "outboxd-checkpoint v1 outbox=<incarnation> sent=<id ranges> dead=<id
// ranges>"), as months of transactions would leave them in the active segment that compaction never
// touches. Every start of outboxd then reads its checkpoint from that topic; the scenario kills it
// again and again (as eo-kill), so every restart has to find its last checkpoint behind the history.

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

// historyRecords: -history; the number of checkpoint records written before outboxd starts
// (0: the form's default).
var historyRecords int

// historyLastRows: the rows the history's last record carries. outboxd's first start must say that
// its last committed transaction carried this many: the proof that it read the history to its end.
const historyLastRows = 7

type history struct {
	topic   string
	records int
	fault   *Fault
}

func historyScenario() Scenario {
	return Scenario{name: "eo-history",
		about: "exactly-once: the checkpoint topic already holds 100,000 (long: 1,000,000) committed checkpoint records of this outbox; outboxd SIGKILLed 0.3-3 s after each restart is ready, so every start reads them",
		eo:    true, topics: 4, partitions: 6, replicas: 1, short: 16 * time.Second, long: 120 * time.Second,
		setup: historySetup, fault: historyFault}
}

// historySetup gives the run a checkpoint topic of its own (compacted, one partition, as outboxd
// creates it), fills it with the history, and moves the outbox's id sequence past the ids the
// history names (those rows were delivered and removed long ago).
func historySetup(ctx context.Context, e *Env) error {
	n := orDefault(historyRecords, pick(e, 100_000, 1_000_000))
	h := &history{topic: e.prefix + "-checkpoints", records: n}
	if err := replaceConfigLine(e.outboxd.Config, "checkpoint_topic", fmt.Sprintf("%q", h.topic)); err != nil {
		return err
	}
	compact := "compact"
	resp, err := e.adm.CreateTopics(ctx, 1, 1, map[string]*string{"cleanup.policy": &compact}, h.topic)
	if err == nil {
		for _, t := range resp.Sorted() {
			if t.Err != nil {
				err = t.Err
			}
		}
	}
	if err != nil {
		return fmt.Errorf("create the checkpoint topic: %w", err)
	}
	e.extraMu.Lock()
	e.dropTopics = append(e.dropTopics, h.topic)
	e.extraMu.Unlock()

	conn, err := pgx.Connect(ctx, e.writers.Conninfo)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var incarnation string
	if err := conn.QueryRow(ctx, "SELECT incarnation::text FROM outbox.relay_state").Scan(&incarnation); err != nil {
		return fmt.Errorf("the outbox's incarnation: %w", err)
	}

	// Record i carries 1 to 20 consecutive ids, as transactions of various sizes did; the last one
	// carries historyLastRows.
	started := time.Now()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.TransactionalID(e.tid), kgo.DefaultProduceTopic(h.topic),
		kgo.RequestRetries(20), kgo.MaxBufferedRecords(20_000))
	if err != nil {
		return err
	}
	defer cl.Close()
	next := int64(1)
	const perTransaction = 10_000
	for i := 0; i < n; {
		if err := cl.BeginTransaction(); err != nil {
			return fmt.Errorf("history: begin: %w", err)
		}
		var recs []*kgo.Record
		for ; i < n && len(recs) < perTransaction; i++ {
			rows := int64(1 + i%20)
			if i == n-1 {
				rows = historyLastRows
			}
			sent := strconv.FormatInt(next, 10)
			if rows > 1 {
				sent += "-" + strconv.FormatInt(next+rows-1, 10)
			}
			next += rows
			recs = append(recs, &kgo.Record{Key: []byte(e.tid),
				Value: []byte("outboxd-checkpoint v1 outbox=" + incarnation + " sent=" + sent + " dead=")})
		}
		if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			_ = cl.EndTransaction(ctx, kgo.TryAbort)
			return fmt.Errorf("history: produce: %w", err)
		}
		if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
			return fmt.Errorf("history: commit: %w", err)
		}
	}
	// The history's ids were handed out (and their rows removed) long ago.
	if _, err := conn.Exec(ctx, "SELECT setval('outbox.messages_id_seq', $1)", next-1); err != nil {
		return fmt.Errorf("move the id sequence: %w", err)
	}
	logf("history: %d checkpoint records (ids 1-%d) committed to %s under %s in %s", n, next-1, h.topic, e.tid,
		time.Since(started).Round(time.Millisecond))
	h.fault = e.inject("the checkpoint topic holds %d committed records of this outbox's history", n)
	e.history = h
	return nil
}

// replaceConfigLine sets `key = value` in the config at `path` (the line must exist).
func replaceConfigLine(path, key, value string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + ` = .*$`)
	if re.FindIndex(b) == nil {
		return fmt.Errorf("%s has no line %q", path, key+" = ")
	}
	return os.WriteFile(path, re.ReplaceAllLiteral(b, []byte(key+" = "+value)), 0o644)
}

var readyLine = regexp.MustCompile(`exactly-once: transactions ready \((\d+) ms\)(.*)`)

// historyFault: the history is met when outboxd's first start says its last committed transaction
// carried historyLastRows rows (it read the history to its end); then SIGKILLs as in eo-kill.
func historyFault(ctx context.Context, e *Env) {
	h := e.history
	line, ok := waitLogLine(context.Background(), e.outboxd.LogPath, 0, readyLine.MatchString, 60*time.Second)
	switch {
	case !ok:
		e.missed(h.fault, "outboxd was not ready to deliver within 60 s of its start")
		e.r.fail("outboxd was not ready to deliver within 60 s of its start, with %d checkpoint records in %s",
			h.records, h.topic)
		return
	case strings.Contains(line, fmt.Sprintf("carried %d rows", historyLastRows)):
		e.met(h.fault, "outboxd's first start found the history's last checkpoint: %s", strings.TrimSpace(line))
	default:
		e.missed(h.fault, "outboxd's first start did not find the history's last checkpoint: %s", strings.TrimSpace(line))
		e.r.fail("outboxd did not read the history's last checkpoint (%d rows): %s", historyLastRows, line)
	}
	e.afterReading(func([]Seen) { noteReadTimes(e) })
	eoKillFault(ctx, e)
}

// noteReadTimes notes how long each start took to be ready (the checkpoint read is most of it), and
// how many reads outboxd gave up on as too slow (and retried).
func noteReadTimes(e *Env) {
	b, err := os.ReadFile(e.outboxd.LogPath)
	if err != nil {
		return
	}
	if n := strings.Count(string(b), "reading the checkpoint topic timed out"); n > 0 {
		e.r.note("outboxd's log: %d checkpoint read time-outs said (each outage of reads is said once)", n)
		logf("history: outboxd's log says %d times that a checkpoint read timed out", n)
	}
	var ms []int
	for _, m := range readyLine.FindAllStringSubmatch(string(b), -1) {
		if v, err := strconv.Atoi(m[1]); err == nil {
			ms = append(ms, v)
		}
	}
	if len(ms) == 0 {
		return
	}
	sort.Ints(ms)
	e.r.note("%d starts ready to deliver with %d checkpoint records: min %d ms, median %d ms, max %d ms",
		len(ms), e.history.records, ms[0], ms[len(ms)/2], ms[len(ms)-1])
	logf("history: %d starts ready to deliver: min %d ms, median %d ms, max %d ms", len(ms), ms[0],
		ms[len(ms)/2], ms[len(ms)-1])
}
