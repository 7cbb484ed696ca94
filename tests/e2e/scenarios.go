package main

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
)

// Scenario is one fault pattern, run on its own fresh topics and database.
type Scenario struct {
	name, about    string
	longOnly       bool
	cluster        bool // the 3-broker cluster (RF 3 or 2, min.insync.replicas 2) instead of the single broker
	topics         int  // topics created before outboxd starts (0: the scenario makes its own)
	partitions     int
	replicas       int16
	short, long    time.Duration // how long the writers write
	allowMovedKeys bool
	props          map[string]string // extra [kafka.properties] for outboxd in this scenario
	fault          func(ctx context.Context, e *Env)
	setup          func(ctx context.Context, e *Env) error // after migrate, before outboxd starts
	beforeDrain    func(ctx context.Context, e *Env)       // after the writers stopped, before the drain
	eo             bool                                    // relay.delivery = "exactly_once": read_committed witness, a duplicate fails
	bulk           bool                                    // writers commit up to 100 messages per transaction without pauses (a big stream)
	target         int64                                   // long form: the writers stop once this many messages committed (`long` is then the time limit)
}

// Env is what a scenario's fault function works with.
type Env struct {
	h         *Harness
	r         *Result
	rnd       *rand.Rand
	adm       *kadm.Client
	brokers   []string
	outboxd   *Outboxd
	instances []*Outboxd // every outboxd of the run (outboxd first): their unwanted exits count
	topics    *TopicSet
	writers   *Writers
	prefix    string
	paused    atomic.Bool // supervisor off: the fault function owns outboxd's life now
	tid       string      // exactly-once: outboxd's transactional.id
	target    int64       // the writers stop at this many committed messages (0: at the time limit)
	countsMu  sync.Mutex
	counts    map[string][]int // partition counts each topic had while written
	faultLock sync.Mutex
	faults    []*Fault
	// Checks that need the witness's records: run after the read (e.g. a fault is met when outboxd
	// wrote into the partitions it added).
	afterRead []func(seen []Seen)
	// Topics the writers do not pick but the witness reads (a topic that does not exist yet), and
	// topics only deleted at the end (a checkpoint topic).
	extraMu     sync.Mutex
	extraTopics []string
	dropTopics  []string
	missing     *missingTopic // missing-topic's stray messages
	history     *history      // eo-history's checkpoint topic
}

// Fault is one fault the scenario injected. It counts only once outboxd met it (met), shown by
// evidence from outboxd's side: its log, the cluster's metadata, the witness's records.
type Fault struct {
	what, evidence string
	met            bool
}

// inject records a fault the scenario caused; `met` or `missed` says afterwards whether outboxd met it.
func (e *Env) inject(format string, args ...any) *Fault {
	e.faultLock.Lock()
	defer e.faultLock.Unlock()
	f := &Fault{what: fmt.Sprintf(format, args...)}
	e.faults = append(e.faults, f)
	e.r.FaultsInjected++
	logf("fault: %s", f.what)
	return f
}

// met: outboxd met the fault, as `evidence` shows.
func (e *Env) met(f *Fault, evidence string, args ...any) {
	e.faultLock.Lock()
	defer e.faultLock.Unlock()
	if f.met {
		return
	}
	f.met = true
	f.evidence = fmt.Sprintf(evidence, args...)
	e.r.Faults++
	e.r.FaultLog = append(e.r.FaultLog, f.what+": "+f.evidence)
	logf("fault met: %s: %s", f.what, f.evidence)
}

// missed: no sign that outboxd met the fault; it does not count.
func (e *Env) missed(f *Fault, why string, args ...any) {
	msg := fmt.Sprintf(why, args...)
	e.r.note("fault not met by outboxd (not counted): %s: %s", f.what, msg)
	logf("fault NOT met: %s: %s", f.what, msg)
}

// injectMet is inject and met at once, for faults that hit outboxd itself (a signal to its process).
func (e *Env) injectMet(evidence string, format string, args ...any) {
	e.met(e.inject(format, args...), "%s", evidence)
}

// metIfLogged marks f met when outboxd's log (any instance's) gets a line after byte `from`
// that `match` accepts within `timeout`, else missed.
//
// The wait is bounded by `timeout` only: the scenario's writing time may end meanwhile.
func (e *Env) metIfLogged(f *Fault, od *Outboxd, from int64, what string, match func(line string) bool,
	timeout time.Duration) {
	if line, ok := waitLogLine(context.Background(), od.LogPath, from, match, timeout); ok {
		e.met(f, "outboxd's log: %s", strings.TrimSpace(line))
	} else {
		e.missed(f, "no %s in outboxd's log within %s", what, timeout)
	}
}

// afterReading adds a check to run on the witness's records.
func (e *Env) afterReading(check func(seen []Seen)) {
	e.faultLock.Lock()
	defer e.faultLock.Unlock()
	e.afterRead = append(e.afterRead, check)
}

func (e *Env) addExtraTopics(names ...string) {
	e.extraMu.Lock()
	defer e.extraMu.Unlock()
	e.extraTopics = append(e.extraTopics, names...)
}

// witnessTopics: every topic of the run's messages.
func (e *Env) witnessTopics() []string {
	e.extraMu.Lock()
	defer e.extraMu.Unlock()
	return append(e.topics.All(), e.extraTopics...)
}

// ownTopics: every topic the run made, deleted at its end.
func (e *Env) ownTopics() []string {
	t := e.witnessTopics()
	e.extraMu.Lock()
	defer e.extraMu.Unlock()
	return append(t, e.dropTopics...)
}

func (e *Env) recordCount(topic string, n int) {
	e.countsMu.Lock()
	defer e.countsMu.Unlock()
	for _, c := range e.counts[topic] {
		if c == n {
			return
		}
	}
	e.counts[topic] = append(e.counts[topic], n)
}

func (e *Env) long() bool { return e.h.Long }

// pick returns the short or the long form's value.
func pick[T any](e *Env, short, long T) T {
	if e.long() {
		return long
	}
	return short
}

func allScenarios() []Scenario {
	return append([]Scenario{
		{name: "new-topics", about: "many topics x 12 partitions created at once and written at once right after outboxd starts, plus topics the harness creates once their first rows committed",
			short: 16 * time.Second, long: 60 * time.Second, fault: newTopicsFault},
		{name: "kill-outboxd", about: "outboxd SIGKILLed every 1.5-4 s and restarted",
			topics: 6, partitions: 6, replicas: 1, short: 25 * time.Second, long: 120 * time.Second, fault: killOutboxdFault},
		{name: "pg-crash", about: "PostgreSQL crashed (pg_ctl -m immediate) and restarted",
			topics: 6, partitions: 6, replicas: 1, short: 25 * time.Second, long: 120 * time.Second, fault: pgCrashFault},
		{name: "broker-kill", about: "each broker of the 3-broker cluster SIGKILLed and restarted in turn",
			cluster: true, topics: 6, partitions: 6, replicas: 3, short: 20 * time.Second, long: 60 * time.Second, fault: brokerKillFault},
		{name: "leader-moves", about: "preferred leader elections and partition reassignments while writing (3-broker cluster, RF 2)",
			cluster: true, topics: 4, partitions: 6, replicas: 2, short: 25 * time.Second, long: 120 * time.Second, fault: leaderMovesFault},
		{name: "add-partitions", about: "partitions added to the topics while writing (3 -> 6 -> 9)",
			topics: 4, partitions: 3, replicas: 1, short: 21 * time.Second, long: 90 * time.Second, allowMovedKeys: true,
			// librdkafka sees new partitions at its periodic metadata refresh (5 min by default):
			// refresh every second, so the mapping changes while messages are in flight.
			props: map[string]string{"topic.metadata.refresh.interval.ms": "1000"},
			fault: addPartitionsFault},
		{name: "broker-outage", about: "the single broker down for 70 s while writing (long form only)",
			longOnly: true, topics: 4, partitions: 6, replicas: 1, short: 90 * time.Second, long: 90 * time.Second,
			fault: brokerOutageFault},
		missingTopicScenario(),
	}, exactlyOnceScenarios()...)
}

func defaultWriterConfig(long bool) WriterConfig {
	return WriterConfig{Writers: 12, KeysPerTopic: 24, MaxMsgsPerTx: 6, RollbackPct: 12, LatePct: 8,
		MaxLate: 300 * time.Millisecond, Pause: 4 * time.Millisecond, ReverseLockPct: 3}
}

// RunScenario runs one scenario end to end and returns its figures; it never panics the harness.
func (h *Harness) RunScenario(ctx context.Context, s Scenario, run int) *Result {
	r := &Result{Scenario: s.name, Run: run, AllowMovedKeys: s.allowMovedKeys}
	start := time.Now()
	defer func() { r.Duration = time.Since(start) }()

	brokers := h.SingleBootstrap
	if s.cluster {
		brokers = h.ClusterBootstrap
	}
	adm, kcl, err := newAdmin(brokers)
	if err != nil {
		r.fail("kafka client: %v", err)
		return r
	}
	defer kcl.Close()
	pingCtx, cancelPing := context.WithTimeout(ctx, 20*time.Second)
	if _, err := adm.ListBrokers(pingCtx); err != nil {
		cancelPing()
		r.fail("Kafka at %s is not reachable: %v", strings.Join(brokers, ","), err)
		return r
	}
	cancelPing()

	tag := fmt.Sprintf("%s-%d-%d-%d", s.name, os.Getpid(), run, time.Now().Unix()%100000)
	db := "e2e_" + strings.ReplaceAll(tag, "-", "_")
	if err := h.createDatabase(ctx, db); err != nil {
		r.fail("create database: %v", err)
		return r
	}
	if !h.KeepTopics {
		defer h.dropDatabase(db)
	}
	dir := filepath.Join(h.WorkDir, tag)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.fail("%v", err)
		return r
	}
	cfg := filepath.Join(dir, "outboxd.toml")
	extra := map[string]string{}
	for k, v := range s.props {
		extra[k] = v
	}
	for _, kv := range kafkaProps {
		k, v, _ := strings.Cut(kv, "=")
		extra[k] = fmt.Sprintf("%q", v)
	}
	if kafkaDebug != "" {
		extra["debug"] = fmt.Sprintf("%q", kafkaDebug)
	}
	if err := h.writeConfig(cfg, db, brokers, extra); err != nil {
		r.fail("config: %v", err)
		return r
	}
	r.ExactlyOnce = s.eo || deliveryFlag == "exactly_once"
	if r.ExactlyOnce {
		if err := setExactlyOnce(cfg, "outboxd-"+db); err != nil {
			r.fail("config: %v", err)
			return r
		}
	}
	od := &Outboxd{Binary: h.Binary, Config: cfg, LogPath: filepath.Join(dir, "outboxd.log")}
	if err := od.Migrate(ctx); err != nil {
		r.fail("%v", err)
		return r
	}
	// The application's own table: each transaction inserts a marker row beside its messages, so a
	// COMMIT that got no answer can be settled afterwards.
	// And each key's aggregate row, which half the keys' writers lock with SELECT ... FOR UPDATE.
	if err := h.exec(ctx, db, "CREATE TABLE e2e_commits (token bigint PRIMARY KEY); "+
		"CREATE TABLE e2e_aggregates (topic text, key text, version bigint NOT NULL DEFAULT 0, PRIMARY KEY (topic, key))"); err != nil {
		r.fail("%v", err)
		return r
	}

	e := &Env{h: h, r: r, rnd: rand.New(rand.NewSource(time.Now().UnixNano())), adm: adm, brokers: brokers,
		outboxd: od, instances: []*Outboxd{od}, topics: &TopicSet{}, prefix: "e2e-" + tag, counts: map[string][]int{}}
	if r.ExactlyOnce {
		e.tid = "outboxd-" + db
	}
	if h.Long {
		e.target = s.target
	}
	led := NewLedger()
	e.writers = &Writers{Conninfo: h.conninfo(db), Topics: e.topics, Ledger: led, Cfg: defaultWriterConfig(h.Long),
		seed: time.Now().UnixNano()}
	if s.bulk {
		e.writers.Cfg.MaxMsgsPerTx, e.writers.Cfg.Pause, e.writers.Cfg.LatePct = 100, 0, 2
	}
	defer func() {
		if h.KeepTopics {
			return
		}
		dctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if topics := e.ownTopics(); len(topics) > 0 {
			if _, err := adm.DeleteTopics(dctx, topics...); err != nil {
				logf("delete topics: %v", err)
			}
		}
	}()

	if s.topics > 0 {
		var names []string
		for i := 0; i < s.topics; i++ {
			names = append(names, fmt.Sprintf("%s-t%d", e.prefix, i))
		}
		if err := createTopics(ctx, adm, int32(s.partitions), s.replicas, names); err != nil {
			r.fail("create topics: %v", err)
			return r
		}
		// Leaders first: these scenarios test their own fault, new-topics tests this one.
		if err := waitLeaders(ctx, adm, names, 60*time.Second); err != nil {
			r.fail("%v", err)
			return r
		}
		for _, n := range names {
			e.recordCount(n, s.partitions)
		}
		e.topics.Add(names...)
	}

	if s.setup != nil {
		if err := s.setup(ctx, e); err != nil {
			r.fail("setup: %v", err)
			return r
		}
	}
	if err := od.Start(); err != nil {
		r.fail("start outboxd: %v", err)
		return r
	}
	superCtx, stopSuper := context.WithCancel(ctx)
	go od.Supervise(superCtx, e.paused.Load)

	writeFor := s.short
	if h.Long {
		writeFor = s.long
	}
	runCtx, stopRun := context.WithTimeout(ctx, writeFor)
	if e.target > 0 {
		// Count-bound: the writers stop once the target committed (writeFor is the time limit).
		go func() {
			for runCtx.Err() == nil && e.writers.Written.Load() < e.target {
				sleepCtx(runCtx, 100*time.Millisecond)
			}
			stopRun()
		}()
	}
	// The writers write until the time is up and the fault function is done: a fault is injected
	// while messages flow (a fault round may take longer than the writing time).
	writeCtx, stopWrite := context.WithCancel(ctx)
	faultDone := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); e.writers.Run(writeCtx) }()
	go func() { defer wg.Done(); defer close(faultDone); s.fault(runCtx, e) }()
	go func() {
		defer wg.Done()
		<-runCtx.Done()
		<-faultDone
		stopWrite()
	}()
	wg.Wait()
	stopRun()
	e.paused.Store(false)
	logf("writing done: %d messages committed; waiting for the outbox to drain", e.writers.Written.Load())
	logf("writers: %s", &e.writers.Stats)
	r.note("writers: %s", &e.writers.Stats)
	// The test world is what it claims: every isolation level and both kinds of lock committed.
	for i, l := range isolationLevels {
		if e.writers.Stats.Committed[i].Load() == 0 {
			r.fail("no %s transaction of the writers committed", l.name)
		}
	}
	if e.writers.Stats.RowLocked.Load() == 0 || e.writers.Stats.Advisory.Load() == 0 {
		r.fail("the writers committed no transaction with a row lock or none with an advisory lock")
	}

	// Settle COMMITs that got no answer (PostgreSQL crashed under them).
	settleCtx, cancelSettle := context.WithTimeout(ctx, 90*time.Second)
	for {
		c, a, err := led.Settle(settleCtx, h.conninfo(db))
		r.SettledCommitted += c
		r.SettledAborted += a
		if err == nil || settleCtx.Err() != nil {
			if err != nil {
				r.fail("settle uncertain commits: %v", err)
			}
			break
		}
		sleepCtx(settleCtx, time.Second)
	}
	cancelSettle()
	if s.beforeDrain != nil {
		s.beforeDrain(ctx, e)
	}

	drainTimeout := pick(e, 45*time.Second, 3*time.Minute)
	if err := waitDrained(ctx, h.conninfo(db), drainTimeout, &r.DeadLetters); err != nil {
		// Stuck rows: show them, then see whether a restarted outboxd delivers them.
		r.Stuck = describeLeft(ctx, h.conninfo(db), r)
		r.fail("%v; outboxd restarted (SIGTERM, start) to see whether it delivers them", err)
		e.paused.Store(true)
		if err := od.Stop(30 * time.Second); err != nil {
			r.fail("%v", err)
		}
		if err := od.Start(); err != nil {
			r.fail("restart outboxd: %v", err)
		}
		e.paused.Store(false)
		if err := waitDrained(ctx, h.conninfo(db), 60*time.Second, &r.DeadLetters); err != nil {
			r.fail("after the restart: %v", err)
		} else {
			r.note("the %d stuck rows were delivered after the restart", r.Stuck)
		}
	}
	stopSuper()
	if err := od.Stop(30 * time.Second); err != nil {
		r.fail("%v", err)
	}
	for i, o := range e.instances {
		for _, u := range o.Unwanted() {
			r.UnwantedExits++
			r.note("outboxd instance %d: %s (log %s)", i+1, u, o.LogPath)
		}
	}

	readCtx, cancelRead := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelRead()
	read := ReadAll
	if r.ExactlyOnce {
		read = ReadAllCommitted
	}
	seen, counts, err := read(readCtx, brokers, e.witnessTopics())
	if err != nil {
		r.fail("witness: %v", err)
	}
	for t, n := range counts {
		e.recordCount(t, n)
	}
	for _, check := range e.afterRead {
		check(seen)
	}
	Verify(r, led, seen, e.counts)
	if r.Faults == 0 {
		r.fail("none of the %d injected faults was met by outboxd: the run proved nothing about them",
			r.FaultsInjected)
	}
	if r.Failed() {
		logf("outboxd log: %s", od.LogPath)
		for _, n := range r.Notes {
			logf("  %s", n)
		}
	}
	return r
}

func createTopics(ctx context.Context, adm *kadm.Client, partitions int32, replicas int16, names []string) error {
	resp, err := adm.CreateTopics(ctx, partitions, replicas, nil, names...)
	if err != nil {
		return err
	}
	for _, t := range resp.Sorted() {
		if t.Err != nil {
			return fmt.Errorf("%s: %w", t.Topic, t.Err)
		}
	}
	return nil
}

// waitLeaders waits until every partition of the topics has a leader in the metadata.
func waitLeaders(ctx context.Context, adm *kadm.Client, topics []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		md, err := adm.Metadata(ctx, topics...)
		ready := err == nil
		if err == nil {
			for _, t := range topics {
				td, ok := md.Topics[t]
				if !ok || td.Err != nil || len(td.Partitions) == 0 {
					ready = false
					break
				}
				for _, p := range td.Partitions {
					if p.Leader < 0 || p.Err != nil {
						ready = false
					}
				}
			}
		}
		if ready {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("topics without leaders after %s (last error %v)", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitDrained waits until outbox.messages is empty: outboxd removed every row it was acknowledged for.
func waitDrained(ctx context.Context, conninfo string, timeout time.Duration, deadLetters *int) error {
	deadline := time.Now().Add(timeout)
	var left int64 = -1
	var lastErr error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := pgx.Connect(cctx, conninfo)
		if err == nil {
			err = conn.QueryRow(cctx, "SELECT count(*) FROM outbox.messages").Scan(&left)
			if err == nil && left == 0 {
				var dl int
				err = conn.QueryRow(cctx, "SELECT count(*) FROM outbox.dead_letters").Scan(&dl)
				*deadLetters = dl
				conn.Close(cctx)
				cancel()
				return err
			}
			conn.Close(cctx)
		}
		cancel()
		lastErr = err
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("outbox not drained after %s: %d rows left (last error %v)", timeout, left, lastErr)
}

// describeLeft notes the rows still in the outbox and returns how many there are.
func describeLeft(ctx context.Context, conninfo string, r *Result) int {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, conninfo)
	if err != nil {
		return 0
	}
	defer conn.Close(cctx)
	rows, err := conn.Query(cctx, "SELECT id, topic, coalesce(key, '<null>'), txid::text, created_at::text, "+
		"count(*) OVER () FROM outbox.messages ORDER BY id LIMIT 20")
	if err != nil {
		return 0
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var id, total int64
		var topic, key, txid, created string
		if rows.Scan(&id, &topic, &key, &txid, &created, &total) == nil {
			n = int(total)
			r.note("stuck in the outbox: id %d topic %s key %q txid %s created %s", id, topic, key, txid, created)
			logf("stuck in the outbox: id %d topic %s key %q txid %s created %s", id, topic, key, txid, created)
		}
	}
	return n
}

// ---- the faults --------------------------------------------------------------------------------

// newTopicsFault: waves of topics, each created at once while a burst of transactions that already
// took their ids waits to commit the moment CreateTopics returns; regular writers then write to them
// too. Three more topics are written from the start but exist only once their first rows committed:
// the harness creates them then, as an operator would (the brokers do not auto-create topics).
func newTopicsFault(ctx context.Context, e *Env) {
	late := []string{e.prefix + "-late0", e.prefix + "-late1", e.prefix + "-late2"}
	e.topics.Add(late...)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); e.createLate(ctx, late, 12) }()
	defer wg.Wait()
	waves := orDefault(newTopicsWaves, pick(e, 3, 6))
	perWave := orDefault(newTopicsPerWave, pick(e, 12, 16))
	partitions := int32(12)
	burst := orDefault(newTopicsBurst, pick(e, 100, 150)) // messages per topic held open until it exists
	interval := time.Duration(int64(e.h.longOr(16*time.Second, 60*time.Second)) / int64(waves+1))
	for w := 0; w < waves && ctx.Err() == nil; w++ {
		var names []string
		for i := 0; i < perWave; i++ {
			names = append(names, fmt.Sprintf("%s-w%d-t%d", e.prefix, w, i))
		}
		gate := make(chan struct{})
		var ready, done sync.WaitGroup
		for _, t := range names {
			ready.Add(1)
			done.Add(1)
			go func(topic string) {
				defer done.Done()
				e.burst(topic, burst, gate, &ready)
			}(t)
		}
		ready.Wait()
		cctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := createTopics(cctx, e.adm, partitions, 1, names)
		cancel()
		close(gate) // the bursts commit now
		e.topics.Add(names...)
		for _, n := range names {
			e.recordCount(n, int(partitions))
		}
		if err != nil {
			e.r.fail("create topics: %v", err)
		}
		f := e.inject("wave %d: %d topics x %d partitions created, %d messages each committed at once", w, perWave,
			partitions, burst)
		e.metIfDelivered(f, names)
		done.Wait()
		sleepCtx(ctx, interval)
	}
}

// createLate creates each of `topics` once the writers committed a first row to it (the row waits
// in the outbox for a topic that does not exist yet), as an operator would.
func (e *Env) createLate(ctx context.Context, topics []string, partitions int32) {
	for _, t := range topics {
		for ctx.Err() == nil && e.writers.Ledger.CommittedTo(t) == 0 {
			sleepCtx(ctx, 50*time.Millisecond)
		}
		committed := e.writers.Ledger.CommittedTo(t)
		cctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := createTopics(cctx, e.adm, partitions, 1, []string{t})
		cancel()
		if err != nil {
			e.r.fail("create the late topic %s: %v", t, err)
			continue
		}
		e.recordCount(t, int(partitions))
		f := e.inject("topic %s created after %d of its messages committed", t, committed)
		e.metIfDelivered(f, []string{t})
	}
}

// metIfDelivered: the fault is met when the witness reads outboxd's records in each of `topics`.
func (e *Env) metIfDelivered(f *Fault, topics []string) {
	e.afterReading(func(seen []Seen) {
		n := map[string]int{}
		for i := range seen {
			n[seen[i].Topic]++
		}
		for _, t := range topics {
			if n[t] == 0 {
				e.missed(f, "the witness read no record of outboxd in %s", t)
				return
			}
		}
		e.met(f, "the witness read outboxd's records in each of its %d topics", len(topics))
	})
}

// Overrides of the new-topics shape (flags -waves, -wave-topics, -burst); 0 = the form's default.
var newTopicsWaves, newTopicsPerWave, newTopicsBurst int

// kafkaProps: extra librdkafka properties for outboxd (flag -kafka-prop key=value).
type propList []string

func (p *propList) String() string     { return strings.Join(*p, ",") }
func (p *propList) Set(v string) error { *p = append(*p, v); return nil }

var kafkaProps propList

// kafkaDebug: librdkafka's debug contexts for outboxd (flag -kafka-debug), "" = none.
var kafkaDebug string

func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func (h *Harness) longOr(short, long time.Duration) time.Duration {
	if h.Long {
		return long
	}
	return short
}

// burst publishes n messages to a topic that does not exist yet, in one transaction under its keys'
// locks, marks itself ready, and commits when the gate opens.
func (e *Env) burst(topic string, n int, gate <-chan struct{}, ready *sync.WaitGroup) {
	var once sync.Once
	reached := func() { once.Do(ready.Done) }
	defer reached() // also on failure, so the creator never waits forever
	r := rand.New(rand.NewSource(time.Now().UnixNano()))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.writers.Conninfo)
	if err != nil {
		e.r.fail("burst connect: %v", err)
		return
	}
	defer conn.Close(context.Background())
	keys := make([]*string, n)
	lockSet := map[string]bool{}
	for i := range keys {
		if i%10 == 9 {
			continue // some messages without a key
		}
		k := keyName(r, "b-", r.Intn(e.writers.Cfg.KeysPerTopic*2))
		keys[i] = &k
		lockSet[k] = true
	}
	if err := e.writers.publishTx(ctx, conn, r, topic, keys, lockSet, &Gate{Reached: reached, Open: gate}); err != nil {
		e.r.fail("burst on %s: %v", topic, err)
		return
	}
	// Then keep this topic's partitions busy while their leaders settle: a later batch must be able
	// to overtake an earlier one that failed with NOT_LEADER_OR_FOLLOWER.
	until := time.Now().Add(burstFollow)
	for time.Now().Before(until) && !conn.IsClosed() {
		_ = e.writers.oneTransaction(context.Background(), conn, r, topic, "b-")
	}
}

// burstFollow: how long each burst writer keeps writing to its new topic after the burst commit.
const burstFollow = 2500 * time.Millisecond

// killOutboxdFault: SIGKILL outboxd every 1.5-4 s, restart it after 0-0.5 s.
func killOutboxdFault(ctx context.Context, e *Env) {
	e.paused.Store(true)
	defer e.paused.Store(false)
	for {
		sleepCtx(ctx, 1500*time.Millisecond+time.Duration(e.rnd.Int63n(int64(2500*time.Millisecond))))
		if ctx.Err() != nil {
			break
		}
		e.killed(e.outboxd, "SIGKILL outboxd")
		time.Sleep(time.Duration(e.rnd.Int63n(int64(500 * time.Millisecond))))
		if err := e.outboxd.Start(); err != nil {
			e.r.fail("restart outboxd: %v", err)
			return
		}
	}
	if !e.outboxd.Alive() {
		if err := e.outboxd.Start(); err != nil {
			e.r.fail("restart outboxd: %v", err)
		}
	}
}

// pgCrashFault: crash PostgreSQL (scripts/pg.sh crash: pg_ctl -m immediate, then start with crash
// recovery) every few seconds.
func pgCrashFault(ctx context.Context, e *Env) {
	every := pick(e, 9*time.Second, 12*time.Second)
	for {
		sleepCtx(ctx, every/2+time.Duration(e.rnd.Int63n(int64(every/2))))
		if ctx.Err() != nil {
			return
		}
		from := logSize(e.outboxd.LogPath)
		if err := e.h.script(context.Background(), "pg.sh", "crash"); err != nil {
			e.r.fail("%v", err)
			return
		}
		f := e.inject("PostgreSQL crashed and restarted (scripts/pg.sh crash)")
		// outboxd's session died with the server: it stops delivering (it led) or says PostgreSQL
		// failed (it was still reconnecting after the last crash).
		e.metIfLogged(f, e.outboxd, from, "lost PostgreSQL session", lostPostgres, 30*time.Second)
	}
}

// lostPostgres: a line of outboxd's log that says it lost its PostgreSQL session.
func lostPostgres(line string) bool {
	return strings.Contains(line, "stopped delivering") ||
		(strings.Contains(line, " warning ") && strings.Contains(line, "PostgreSQL"))
}

// lostBroker returns a match for a line of outboxd's log about its connection to the broker at
// `addr` (host:port): librdkafka's "Disconnected", "Connection refused", "Receive failed" ... name
// the broker as "host:port/id".
func lostBroker(addr string) func(string) bool {
	return func(line string) bool {
		return strings.Contains(line, addr+"/") && (strings.Contains(line, " warning ") ||
			strings.Contains(line, " error "))
	}
}

// killed SIGKILLs an instance; the fault is met when the process was running.
func (e *Env) killed(o *Outboxd, format string, args ...any) {
	f := e.inject(format, args...)
	if o.Kill() {
		e.met(f, "the process was running when SIGKILL went out")
	} else {
		e.missed(f, "the process had already ended")
	}
}

// brokerKillFault: SIGKILL each broker of the cluster in turn, keep it down a few seconds, restart it.
func brokerKillFault(ctx context.Context, e *Env) {
	rounds := pick(e, 1, 3)
	for round := 0; round < rounds; round++ {
		for _, n := range []int{1, 2, 3} {
			sleepCtx(ctx, 3*time.Second)
			from := logSize(e.outboxd.LogPath)
			if err := e.h.script(context.Background(), "kafka.sh", "kill", fmt.Sprint(n)); err != nil {
				e.r.fail("%v", err)
				return
			}
			killedAt := time.Now()
			f := e.inject("broker %d SIGKILLed", n)
			down := time.Duration(pick(e, 3, 8)) * time.Second
			e.metIfLogged(f, e.outboxd, from, "lost connection to broker "+e.brokers[n-1],
				lostBroker(e.brokers[n-1]), down)
			time.Sleep(down - time.Since(killedAt))
			if err := e.h.script(context.Background(), "kafka.sh", "restart-node", fmt.Sprint(n)); err != nil {
				e.r.fail("%v", err)
				return
			}
			logf("broker %d restarted", n)
		}
	}
}

// leaderMovesFault: alternately (1) reverse every partition's replica list and elect the preferred
// leader (a leader change on every partition), (2) move every partition to the next pair of brokers
// (a reassignment that copies data) and elect the preferred leader.
func leaderMovesFault(ctx context.Context, e *Env) {
	topics := e.topics.All()
	for step := 0; ; step++ {
		sleepCtx(ctx, pick(e, 2500*time.Millisecond, 3*time.Second))
		if ctx.Err() != nil {
			return
		}
		actx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		md, err := e.adm.Metadata(actx, topics...)
		if err != nil {
			cancel()
			e.r.fail("metadata: %v", err)
			return
		}
		before := leaders(md, topics)
		req := kadm.AlterPartitionAssignmentsReq{}
		what := "replica order reversed"
		if step%2 == 1 {
			what = "reassigned to the next brokers"
		}
		for _, t := range topics {
			for _, p := range md.Topics[t].Partitions {
				reps := append([]int32(nil), p.Replicas...)
				if step%2 == 0 {
					for i, j := 0, len(reps)-1; i < j; i, j = i+1, j-1 {
						reps[i], reps[j] = reps[j], reps[i]
					}
				} else {
					for i := range reps {
						reps[i] = reps[i]%3 + 1
					}
				}
				req.Assign(t, p.Partition, reps)
			}
		}
		resp, err := e.adm.AlterPartitionAssignments(actx, req)
		moved := 0
		if err == nil {
			resp.Each(func(r kadm.AlterPartitionAssignmentsResponse) {
				if r.Err == nil {
					moved++
				}
			})
		}
		elected := 0
		if err == nil {
			// a reassignment finishes in the background; elect after a moment, then again later
			time.Sleep(700 * time.Millisecond)
			var res kadm.ElectLeadersResults
			res, err = e.adm.ElectLeaders(actx, kadm.ElectPreferredReplica, kadm.TopicsSet{})
			if err == nil {
				for _, ps := range res {
					for _, p := range ps {
						if p.Err == nil {
							elected++
						}
					}
				}
			}
		}
		cancel()
		if err != nil {
			logf("leader moves: %v", err)
		}
		f := e.inject("%s on %d partitions, %d preferred leaders elected", what, moved, elected)
		// Met when partitions outboxd writes to have another leader in the metadata (a reassignment
		// may finish a moment later: looked for up to 3 s).
		changed := 0
		for deadline := time.Now().Add(3 * time.Second); changed == 0 && time.Now().Before(deadline); {
			mctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var after kadm.Metadata
			after, err = e.adm.Metadata(mctx, topics...)
			cancel()
			if err == nil {
				for tp, l := range leaders(after, topics) {
					if b, ok := before[tp]; ok && b != l {
						changed++
					}
				}
			}
			if changed == 0 {
				time.Sleep(250 * time.Millisecond)
			}
		}
		if changed > 0 {
			e.met(f, "%d of %d partitions have another leader in the metadata", changed, len(before))
		} else {
			e.missed(f, "no partition's leader changed in the metadata (error %v)", err)
		}
	}
}

// leaders maps each partition of the topics to its leader in the metadata.
func leaders(md kadm.Metadata, topics []string) map[string]int32 {
	out := map[string]int32{}
	for _, t := range topics {
		for _, p := range md.Topics[t].Partitions {
			out[fmt.Sprintf("%s/%d", t, p.Partition)] = p.Leader
		}
	}
	return out
}

// addPartitionsFault: 3 -> 6 -> 9 partitions while writing.
func addPartitionsFault(ctx context.Context, e *Env) {
	topics := e.topics.All()
	total := e.h.longOr(21*time.Second, 90*time.Second)
	for _, n := range []int{6, 9} {
		sleepCtx(ctx, total/3)
		if ctx.Err() != nil {
			return
		}
		actx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		resp, err := e.adm.UpdatePartitions(actx, n, topics...)
		cancel()
		if err == nil {
			for _, t := range resp.Sorted() {
				if t.Err != nil {
					err = fmt.Errorf("%s: %w", t.Topic, t.Err)
				}
			}
		}
		if err != nil {
			e.r.fail("add partitions: %v", err)
			return
		}
		for _, t := range topics {
			e.recordCount(t, n)
		}
		f := e.inject("partitions of %d topics raised to %d", len(topics), n)
		old := int32(n - 3)
		e.afterReading(func(seen []Seen) {
			// outboxd met the new partitions when it wrote into them.
			in := 0
			for i := range seen {
				if seen[i].Partition >= old && seen[i].Partition < int32(n) {
					in++
				}
			}
			if in > 0 {
				e.met(f, "the witness read %d records of outboxd in partitions %d-%d", in, old, n-1)
			} else {
				e.missed(f, "the witness read no record in partitions %d-%d", old, n-1)
			}
		})
	}
}

// brokerOutageFault: stop the single broker for 70 s while the writers go on.
func brokerOutageFault(ctx context.Context, e *Env) {
	sleepCtx(ctx, 5*time.Second)
	if ctx.Err() != nil {
		return
	}
	started := time.Now()
	from := logSize(e.outboxd.LogPath)
	if err := e.h.script(context.Background(), "kafka.sh", "stop", "single"); err != nil {
		e.r.fail("%v", err)
		return
	}
	f := e.inject("broker stopped for 70 s")
	e.metIfLogged(f, e.outboxd, from, "lost connection to the broker", lostBroker(e.brokers[0]),
		70*time.Second)
	time.Sleep(70*time.Second - time.Since(started))
	if err := e.h.script(context.Background(), "kafka.sh", "start", "single"); err != nil {
		e.r.fail("%v", err)
		return
	}
	logf("broker started after 70 s")
}

// ---- the table ---------------------------------------------------------------------------------

func printTable(w io.Writer, results []*Result, total time.Duration) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\trun\tsecs\tfaults met/injected\tcommitted\trolled back\tdelivered\tlost\tphantom\tdup\tdup differ\t"+
		"order breaks\tmoved keys\tcontent\tpartition\tdead letters\tstuck\toutboxd exits\tverdict\t")
	var failed, passed int
	for _, r := range results {
		verdict := "ok"
		if r.Failed() {
			verdict = "FAILED"
			failed++
		} else {
			passed++
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%d/%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n",
			r.Scenario, r.Run, r.Duration.Seconds(), r.Faults, r.FaultsInjected, r.Committed, r.RolledBack, r.Delivered, r.Lost,
			r.Phantom, r.Duplicates, r.DuplicateMismatch, r.OrderBreaks, r.MovedKeys, r.Content+r.Foreign,
			r.PartitionMismatch, r.DeadLetters, r.Stuck, r.UnwantedExits, verdict)
	}
	tw.Flush()
	for _, r := range results {
		for _, e := range r.Errors {
			fmt.Fprintf(w, "%s run %d: error: %s\n", r.Scenario, r.Run, e)
		}
	}
	fmt.Fprintf(w, "e2e total time: %s\n", total.Round(time.Second))
	fmt.Fprintf(w, "e2e: %d passed, %d failed\n", passed, failed)
}
