package main

// Exactly-once mode (relay.delivery = "exactly_once"): the witness reads with
// isolation.level=read_committed and a duplicate fails the scenario. Scenarios named eo-* run in this
// mode; -delivery exactly_once runs any scenario in it.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// deliveryFlag: -delivery; "exactly_once" runs every selected scenario in exactly-once mode.
var deliveryFlag string

// setExactlyOnce switches the scenario's config to exactly-once delivery with a transactional.id of
// its own (each scenario has its own database, so its own checkpoint key).
func setExactlyOnce(path, tid string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	text := string(b)
	for key, value := range map[string]string{"delivery": `"exactly_once"`, "transactional_id": fmt.Sprintf("%q", tid)} {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + ` = .*$`)
		if re.FindStringIndex(text) == nil {
			return fmt.Errorf("config/outboxd.toml has no line %q", key+" = ")
		}
		text = re.ReplaceAllLiteralString(text, key+" = "+value)
	}
	return os.WriteFile(path, []byte(text), 0o644)
}

// ReadAllCommitted is ReadAll for exactly-once mode: a read_committed consumer (franz-go). Such a
// consumer stops at each partition's last stable offset and never returns the commit markers, so the
// end of a partition is marked first: after outboxd stopped, the harness writes one plain record
// into every partition and reads until it meets each of them. Records of aborted transactions are
// not returned; records of committed ones are, once each unless outboxd sent something twice.
func ReadAllCommitted(ctx context.Context, brokers []string, topics []string) ([]Seen, map[string]int, error) {
	ends, counts, err := endOffsets(ctx, brokers, topics)
	if err != nil {
		return nil, nil, err
	}
	want := map[string]map[int32]kgo.Offset{}
	var markers []*kgo.Record
	marker := strconv.FormatInt(time.Now().UnixNano(), 10)
	for topic, ps := range ends {
		want[topic] = map[int32]kgo.Offset{}
		for p := range ps {
			want[topic][p] = kgo.NewOffset().AtStart()
			markers = append(markers, &kgo.Record{Topic: topic, Partition: p, Value: []byte("e2e end marker"),
				Headers: []kgo.RecordHeader{{Key: "e2e-end", Value: []byte(marker)}}})
		}
	}
	if len(markers) == 0 {
		return nil, counts, nil
	}
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.RequestRetries(20))
	if err != nil {
		return nil, nil, err
	}
	if err := prod.ProduceSync(ctx, markers...).FirstErr(); err != nil {
		prod.Close()
		return nil, nil, fmt.Errorf("end markers: %w", err)
	}
	prod.Close()
	out, err := readPartitions(ctx, brokers, want, len(markers), "end marker",
		func(rec *kgo.Record) (keep, done bool) {
			for _, h := range rec.Headers {
				if h.Key == "e2e-end" {
					return false, string(h.Value) == marker
				}
			}
			return true, false
		}, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	return out, counts, err
}

// Signal sends sig to the current outboxd process (SIGSTOP / SIGCONT for the zombie scenario).
func (o *Outboxd) Signal(sig syscall.Signal) error {
	o.mu.Lock()
	cmd := o.cmd
	o.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return fmt.Errorf("outboxd is not running")
	}
	return cmd.Process.Signal(sig)
}

// logSize and waitLog: wait (bounded) until the log has `text` after byte `from`.
func logSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func waitLog(ctx context.Context, path string, from int64, text string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if b, err := os.ReadFile(path); err == nil && int64(len(b)) > from && strings.Contains(string(b[from:]), text) {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// waitLogLine waits (bounded) until the log has a line after byte `from` that `match` accepts, and
// returns it.
func waitLogLine(ctx context.Context, path string, from int64, match func(string) bool,
	timeout time.Duration) (string, bool) {
	deadline := time.Now().Add(timeout)
	for {
		if b, err := os.ReadFile(path); err == nil && int64(len(b)) > from {
			for _, line := range strings.Split(string(b[from:]), "\n") {
				if match(line) {
					return line, true
				}
			}
		}
		if !time.Now().Before(deadline) || ctx.Err() != nil {
			return "", false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// another makes one more outboxd instance on the scenario's config (its own log).
func (e *Env) another(n int) *Outboxd {
	dir := filepath.Dir(e.outboxd.LogPath)
	o := &Outboxd{Binary: e.outboxd.Binary, Config: e.outboxd.Config,
		LogPath: filepath.Join(dir, fmt.Sprintf("outboxd-%d.log", n))}
	e.instances = append(e.instances, o)
	return o
}

// threeInstancesFault: three outboxd instances on one outbox; every 1.5-4 s a random one is SIGKILLed
// and restarted (the leader or a standby: whoever it hits).
func threeInstancesFault(ctx context.Context, e *Env) {
	e.paused.Store(true)
	defer e.paused.Store(false)
	ods := []*Outboxd{e.outboxd, e.another(2), e.another(3)}
	for _, o := range ods[1:] {
		if err := o.Start(); err != nil {
			e.r.fail("start instance: %v", err)
			return
		}
	}
	defer func() {
		for _, o := range ods[1:] {
			if err := o.Stop(30 * time.Second); err != nil {
				e.r.fail("%v", err)
			}
		}
	}()
	for {
		sleepCtx(ctx, 1500*time.Millisecond+time.Duration(e.rnd.Int63n(int64(2500*time.Millisecond))))
		if ctx.Err() != nil {
			break
		}
		i := e.rnd.Intn(len(ods))
		e.killed(ods[i], "SIGKILL instance %d", i+1)
		time.Sleep(time.Duration(e.rnd.Int63n(int64(500 * time.Millisecond))))
		if err := ods[i].Start(); err != nil {
			e.r.fail("restart instance %d: %v", i+1, err)
			return
		}
	}
	for i, o := range ods {
		if !o.Alive() {
			if err := o.Start(); err != nil {
				e.r.fail("restart instance %d: %v", i+1, err)
			}
		}
	}
}

// zombieFault: the leader is frozen (SIGSTOP) until a standby takes the outbox, then thawed
// (SIGCONT). The thawed instance must notice that it lost the outbox (its PostgreSQL session is
// gone, its producer is fenced) and publish nothing: any record it committed would be a duplicate
// for the read_committed witness. Repeated while the writers write.
func zombieFault(ctx context.Context, e *Env) {
	e.paused.Store(true)
	defer e.paused.Store(false)
	extra := e.another(2)
	a, b := e.outboxd, extra
	if !waitLog(ctx, a.LogPath, 0, "leading the outbox", 60*time.Second) {
		e.r.fail("outboxd never led")
		return
	}
	if err := extra.Start(); err != nil {
		e.r.fail("start the standby: %v", err)
		return
	}
	defer func() {
		// Whichever is frozen now is thawed first, then the extra instance stops (the supervised
		// one stays and drains).
		_ = a.Signal(syscall.SIGCONT)
		if err := extra.Stop(30 * time.Second); err != nil {
			e.r.fail("%v", err)
		}
	}()
	for round := 0; ctx.Err() == nil; round++ {
		sleepCtx(ctx, 2*time.Second)
		if ctx.Err() != nil {
			return
		}
		// a leads here (the first round, and after each swap below).
		fromB := logSize(b.LogPath)
		if err := a.Signal(syscall.SIGSTOP); err != nil {
			e.r.fail("SIGSTOP: %v", err)
			return
		}
		f := e.inject("SIGSTOP the leader until the standby leads, then SIGCONT (round %d)", round+1)
		// A round once begun is finished (the writers write until the fault function returns).
		took := waitLog(context.Background(), b.LogPath, fromB, "leading the outbox", 60*time.Second)
		fromA := logSize(a.LogPath)
		if err := a.Signal(syscall.SIGCONT); err != nil {
			e.r.fail("SIGCONT: %v", err)
			return
		}
		if !took {
			e.missed(f, "the standby did not lead within 60 s")
			e.r.fail("the standby did not take over within 60 s of SIGSTOP")
			return
		}
		if !waitLog(context.Background(), a.LogPath, fromA, "stopped delivering", 30*time.Second) {
			e.missed(f, "the thawed leader did not say it stopped delivering")
			e.r.fail("the thawed old leader did not give up the outbox within 30 s")
			return
		}
		e.met(f, "the standby led while the leader was frozen, and the thawed leader stood down")
		e.r.note("round %d: standby took over, the thawed leader stood down", round+1)
		a, b = b, a
	}
}

// fiftyKillsFault: 50 SIGKILLs of outboxd spread evenly over the stream, each restarted at once:
// with a target (the long form's 1,000,000 messages), kill i when (i+1)/51 of it committed;
// otherwise evenly over the writing time.
func fiftyKillsFault(ctx context.Context, e *Env) {
	e.paused.Store(true)
	defer e.paused.Store(false)
	writeFor := e.h.longOr(60*time.Second, 360*time.Second)
	every := writeFor / 51
	from := int64(0)
	for i := 0; i < 50; i++ {
		if e.target > 0 {
			for ctx.Err() == nil && e.writers.Written.Load() < e.target*int64(i+1)/51 {
				sleepCtx(ctx, 50*time.Millisecond)
			}
		} else {
			sleepCtx(ctx, every)
		}
		if ctx.Err() != nil {
			break
		}
		// Each kill hits a process that delivers (its transactions are initialized).
		if !waitLog(ctx, e.outboxd.LogPath, from, "exactly-once: transactions ready", 60*time.Second) {
			if ctx.Err() == nil {
				e.r.fail("outboxd not ready to deliver within 60 s of its start")
			}
			break
		}
		from = logSize(e.outboxd.LogPath)
		e.killed(e.outboxd, "SIGKILL outboxd (%d of 50, %d messages committed so far)", i+1, e.writers.Written.Load())
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

// eoKillFault: as kill-outboxd, but each kill lands 0.3-3 s after the new process is ready to
// deliver ("exactly-once: transactions ready" in its log: InitTransactions done, the checkpoint
// applied), so every kill hits a stream of transactions, not a process still starting.
func eoKillFault(ctx context.Context, e *Env) {
	e.paused.Store(true)
	defer e.paused.Store(false)
	from := int64(0)
	for ctx.Err() == nil {
		if !waitLog(ctx, e.outboxd.LogPath, from, "exactly-once: transactions ready", 60*time.Second) {
			if ctx.Err() == nil {
				e.r.fail("outboxd not ready to deliver within 60 s of its start")
			}
			break
		}
		sleepCtx(ctx, 300*time.Millisecond+time.Duration(e.rnd.Int63n(int64(2700*time.Millisecond))))
		if ctx.Err() != nil {
			break
		}
		from = logSize(e.outboxd.LogPath)
		e.killed(e.outboxd, "SIGKILL outboxd (%d messages committed so far)", e.writers.Written.Load())
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

// exactlyOnceScenarios: appended to allScenarios.
func exactlyOnceScenarios() []Scenario {
	return []Scenario{
		{name: "eo-kill", about: "exactly-once: outboxd SIGKILLed 0.3-3 s after each restart is ready to deliver; 0 duplicates for read_committed",
			eo: true, topics: 6, partitions: 6, replicas: 1, short: 16 * time.Second, long: 240 * time.Second, fault: eoKillFault},
		{name: "eo-three", about: "exactly-once: three instances, a random one SIGKILLed every 1.5-4 s",
			eo: true, topics: 4, partitions: 6, replicas: 1, short: 14 * time.Second, long: 120 * time.Second, fault: threeInstancesFault},
		{name: "eo-zombie", about: "exactly-once: the leader SIGSTOPped until a standby leads, then SIGCONTed: fenced, publishes nothing",
			eo: true, topics: 4, partitions: 6, replicas: 1, short: 25 * time.Second, long: 120 * time.Second, fault: zombieFault},
		{name: "eo-million", about: "exactly-once, long form only: a bulk stream until 1,000,000 messages committed (time limit 30 minutes) with outboxd SIGKILLed 50 times, evenly over the stream",
			longOnly: true, eo: true, bulk: true, topics: 6, partitions: 6, replicas: 1, short: 60 * time.Second, long: 30 * time.Minute,
			target: 1_000_000, fault: fiftyKillsFault},
		{name: "eo-pg-crash", about: "exactly-once: PostgreSQL crashed and restarted (long form only)",
			longOnly: true, eo: true, topics: 6, partitions: 6, replicas: 1, short: 25 * time.Second, long: 120 * time.Second,
			fault: pgCrashFault},
		{name: "eo-broker-kill", about: "exactly-once: the transaction coordinator of outboxd's transactional.id SIGKILLed (found each round with DescribeTransactions), down 8 s, restarted; 3 rounds in 5 minutes of writing (long form only)",
			longOnly: true, eo: true, cluster: true, topics: 6, partitions: 6, replicas: 3, short: 20 * time.Second,
			long: 300 * time.Second, fault: coordinatorKillFault},
		{name: "eo-broker-outage", about: "exactly-once: the single broker down for 70 s while writing (long form only)",
			longOnly: true, eo: true, topics: 4, partitions: 6, replicas: 1, short: 90 * time.Second, long: 90 * time.Second,
			fault: brokerOutageFault},
		historyScenario(),
	}
}

// coordinatorKillFault: each round, find the broker that coordinates outboxd's transactional.id
// (DescribeTransactions: the leader of its __transaction_state partition), SIGKILL it while
// transactions flow, keep it down 8 s (short form 3 s), restart it and wait for it to rejoin
// (scripts/kafka.sh restart-node). The next round's coordinator is found again: leadership of that
// partition moved when its leader died.
func coordinatorKillFault(ctx context.Context, e *Env) {
	rounds := pick(e, 1, 3)
	for round := 0; round < rounds; round++ {
		sleepCtx(ctx, 3*time.Second)
		if ctx.Err() != nil {
			return
		}
		n, state, err := txnCoordinator(ctx, e)
		if err != nil {
			e.r.fail("round %d: finding the transaction coordinator of %s: %v", round+1, e.tid, err)
			return
		}
		from := logSize(e.outboxd.LogPath)
		if err := e.h.script(context.Background(), "kafka.sh", "kill", fmt.Sprint(n)); err != nil {
			e.r.fail("%v", err)
			return
		}
		killedAt := time.Now()
		f := e.inject("broker %d SIGKILLed: the transaction coordinator of %s (transaction %s)", n, e.tid, state)
		down := time.Duration(pick(e, 3, 8)) * time.Second
		e.metIfLogged(f, e.outboxd, from, "lost connection to broker "+e.brokers[n-1],
			lostBroker(e.brokers[n-1]), down)
		sleepCtx(context.Background(), down-time.Since(killedAt))
		// Where the coordinator went (one quick look: the broker comes back regardless).
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if d, err := e.adm.DescribeTransactions(dctx, e.tid); err == nil && d[e.tid].Err == nil {
			e.r.note("round %d: coordinator moved from broker %d to broker %d", round+1, n, d[e.tid].Coordinator)
		}
		cancel()
		started := time.Now()
		out, err := e.h.scriptOutput(context.Background(), "kafka.sh", "restart-node", fmt.Sprint(n))
		if err != nil {
			e.r.fail("%v", err)
			return
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "rejoin") {
				e.r.note("round %d: %s", round+1, strings.TrimSpace(line))
			}
		}
		logf("broker %d restarted and rejoined in %.0f s", n, time.Since(started).Seconds())
	}
}

// txnCoordinator: the broker id coordinating e.tid, and its transaction's state; retried for up to
// 60 s (the coordinator may be moving, or outboxd not yet have initialized transactions).
func txnCoordinator(ctx context.Context, e *Env) (int32, string, error) {
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		described, err := e.adm.DescribeTransactions(dctx, e.tid)
		cancel()
		if err == nil {
			if d, ok := described[e.tid]; ok && d.Err == nil && d.Coordinator >= 0 {
				return d.Coordinator, d.State, nil
			} else if ok && d.Err != nil {
				err = d.Err
			} else {
				err = fmt.Errorf("not described")
			}
		}
		last = err
		sleepCtx(ctx, 500*time.Millisecond)
	}
	if last == nil {
		last = ctx.Err()
	}
	return -1, "", last
}
