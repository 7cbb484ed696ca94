package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Expected is what Kafka must hold for one message id.
type Expected struct {
	Topic   string
	Key     *string // nil: no key
	Value   []byte  // nil: tombstone
	Headers map[string]string
}

// MsgID identifies a message: outbox-id and outbox-created-at (microseconds since 1970). After a
// PostgreSQL crash the sequence may hand out an id again; the pair tells the two messages apart.
type MsgID struct{ ID, At int64 }

func (m MsgID) String() string { return fmt.Sprintf("%d@%d", m.ID, m.At) }

// Ledger records every id that publish() returned and what became of its transaction.
type Ledger struct {
	mu         sync.Mutex
	msgs       map[MsgID]*Expected
	committed  map[MsgID]bool
	rolledBack map[MsgID]bool
	uncertain  map[string][]MsgID // COMMIT got no answer: marker token -> ids, settled by the marker row
	perTopic   map[string]int     // committed messages per topic
	txCommits  int
	txRollback int
	txErrors   int
}

func NewLedger() *Ledger {
	return &Ledger{msgs: map[MsgID]*Expected{}, committed: map[MsgID]bool{},
		rolledBack: map[MsgID]bool{}, uncertain: map[string][]MsgID{}, perTopic: map[string]int{}}
}

func (l *Ledger) record(ids []MsgID, msgs []*Expected, outcome string, token string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, id := range ids {
		l.msgs[id] = msgs[i]
		switch outcome {
		case "commit":
			l.committed[id] = true
			l.perTopic[msgs[i].Topic]++
		case "rollback", "error":
			l.rolledBack[id] = true
		}
	}
	switch outcome {
	case "commit":
		l.txCommits++
	case "rollback":
		l.txRollback++
	case "error":
		l.txErrors++
	case "uncertain":
		l.uncertain[token] = append(l.uncertain[token], ids...)
	}
}

// CommittedTo: how many messages to `topic` are known committed.
func (l *Ledger) CommittedTo(topic string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.perTopic[topic]
}

// Settle asks PostgreSQL what became of transactions whose COMMIT got no answer.
func (l *Ledger) Settle(ctx context.Context, conninfo string) (committed, aborted int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.uncertain) == 0 {
		return 0, 0, nil
	}
	conn, err := pgx.Connect(ctx, conninfo)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(ctx)
	// Each transaction also inserted a marker row (its business change): it exists iff the
	// transaction committed. (pg_xact_status is no proof here: a transaction whose WAL was never
	// flushed may see its xid handed out again after crash recovery, to one that commits.)
	for token, ids := range l.uncertain {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM e2e_commits WHERE token = $1::bigint)",
			token).Scan(&exists); err != nil {
			return committed, aborted, fmt.Errorf("marker %s: %w", token, err)
		}
		if exists {
			committed++
			l.txCommits++
			for _, id := range ids {
				l.committed[id] = true
				l.perTopic[l.msgs[id].Topic]++
			}
		} else {
			aborted++
			l.txErrors++
			for _, id := range ids {
				l.rolledBack[id] = true
			}
		}
		delete(l.uncertain, token)
	}
	return committed, aborted, nil
}

// TopicSet is the set of topics writers may use; scenario (a) grows it while writing.
type TopicSet struct {
	mu     sync.Mutex
	all    []string
	newest []string
}

func (s *TopicSet) Add(topics ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.all = append(s.all, topics...)
	s.newest = append([]string(nil), topics...)
}

func (s *TopicSet) All() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.all...)
}

// pick prefers the newest topics (the partitions whose leaders are new), else any.
func (s *TopicSet) pick(r *rand.Rand) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.all) == 0 {
		return "", false
	}
	if len(s.newest) > 0 && r.Intn(2) == 0 {
		return s.newest[r.Intn(len(s.newest))], true
	}
	return s.all[r.Intn(len(s.all))], true
}

// WriterConfig shapes the traffic.
type WriterConfig struct {
	Writers      int
	KeysPerTopic int
	MaxMsgsPerTx int
	RollbackPct  int // percent of transactions rolled back
	LatePct      int // percent of transactions that wait after taking their ids (out-of-order commits)
	MaxLate      time.Duration
	Pause        time.Duration // between transactions of one writer (0 = flat out)
	// percent of transaction attempts that take their key locks in reverse order: they can
	// deadlock with another writer (40P01), which the application retries
	ReverseLockPct int
}

var unicodeWords = []string{"zürich", "ключ", "键", "キー", "🙂", "ℵ₀", "naïve", "مفتاح", "Ωμέγα"}

func keyName(r *rand.Rand, prefix string, n int) string {
	if n%3 == 0 {
		return fmt.Sprintf("%s%s-%d", prefix, unicodeWords[n%len(unicodeWords)], n)
	}
	return fmt.Sprintf("%sk%d", prefix, n)
}

// message builds one random message and the SQL that publishes it.
func randomMessage(r *rand.Rand, topic string, key *string) (sql string, args []any, exp *Expected) {
	exp = &Expected{Topic: topic, Key: key, Headers: map[string]string{}}
	var headersArg any // nil: NULL headers
	switch r.Intn(4) {
	case 0: // NULL headers
	case 1:
		headersArg = "{}"
	default:
		h := map[string]string{"trace-id": fmt.Sprintf("%016x", r.Uint64())}
		if r.Intn(2) == 0 {
			h["ünï-çødé"] = unicodeWords[r.Intn(len(unicodeWords))] + " \"quoted\" \\ tab\t"
		}
		b, _ := json.Marshal(h)
		headersArg = string(b)
		exp.Headers = h
	}
	nonce := fmt.Sprintf("%x", r.Uint64())
	switch r.Intn(10) {
	case 0: // tombstone
		return "SELECT outbox.publish($1::text, $2::text, NULL::bytea, $3::jsonb), NULL::text",
			[]any{topic, key, headersArg}, exp
	case 1, 2, 3: // binary, with NUL and high bytes
		b := make([]byte, 1+r.Intn(300))
		r.Read(b)
		b[0] = 0
		exp.Value = b
		return "SELECT outbox.publish($1::text, $2::text, $3::bytea, $4::jsonb), NULL::text",
			[]any{topic, key, b, headersArg}, exp
	case 4, 5: // jsonb: Kafka gets PostgreSQL's text form of it, which the query returns too
		doc := fmt.Sprintf(`{"n": %q, "w": %q, "list": [1, 2.50, true, null]}`, nonce,
			unicodeWords[r.Intn(len(unicodeWords))])
		return "SELECT outbox.publish($1::text, $2::text, $3::jsonb, $4::jsonb), $3::jsonb::text",
			[]any{topic, key, doc, headersArg}, exp
	default: // text with unicode
		s := fmt.Sprintf("payload %s %s", nonce, unicodeWords[r.Intn(len(unicodeWords))])
		exp.Value = []byte(s)
		return "SELECT outbox.publish($1::text, $2::text, $3::text, $4::jsonb), NULL::text",
			[]any{topic, key, s, headersArg}, exp
	}
}

// Writers run concurrent application transactions against one database until ctx ends.
type Writers struct {
	Conninfo string
	Topics   *TopicSet
	Ledger   *Ledger
	Cfg      WriterConfig
	seed     int64
	Written  atomic.Int64
	Stats    WriterStats
	// aggregate rows known to exist ("topic/key")
	aggregates sync.Map
}

func (w *Writers) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := 0; i < w.Cfg.Writers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w.loop(ctx, rand.New(rand.NewSource(w.seed+int64(i)*7919+time.Now().UnixNano())))
		}(i)
	}
	wg.Wait()
}

func (w *Writers) loop(ctx context.Context, r *rand.Rand) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil || conn.IsClosed() {
			c, err := pgx.Connect(ctx, w.Conninfo)
			if err != nil {
				sleepCtx(ctx, 200*time.Millisecond) // PostgreSQL down: retry
				continue
			}
			conn = c
		}
		topic, ok := w.Topics.pick(r)
		if !ok {
			sleepCtx(ctx, 20*time.Millisecond)
			continue
		}
		if err := w.oneTransaction(ctx, conn, r, topic, ""); err != nil && conn != nil {
			if conn.IsClosed() || isConnError(err) {
				conn.Close(context.Background())
				conn = nil
			}
		}
		if w.Cfg.Pause > 0 {
			sleepCtx(ctx, time.Duration(r.Int63n(int64(w.Cfg.Pause))))
		}
	}
}

func isConnError(err error) bool {
	var pgErr interface{ SQLState() string }
	return !errors.As(err, &pgErr)
}

// oneTransaction writes 1..MaxMsgsPerTx messages to one topic under per-key locks, then commits,
// rolls back, or first waits (its ids are taken; later ids commit before it).
// keyPrefix scopes the keys (burst writers use their own keys so they do not wait on each other).
func (w *Writers) oneTransaction(ctx context.Context, conn *pgx.Conn, r *rand.Rand, topic, keyPrefix string) error {
	n := 1 + r.Intn(w.Cfg.MaxMsgsPerTx)
	keys := make([]*string, n)
	lockSet := map[string]bool{}
	for i := range keys {
		if r.Intn(12) == 0 {
			continue // NULL key
		}
		k := keyName(r, keyPrefix, r.Intn(w.Cfg.KeysPerTopic))
		keys[i] = &k
		lockSet[k] = true
	}
	return w.publishTx(ctx, conn, r, topic, keys, lockSet, nil)
}

// Gate holds a transaction between taking its ids and committing (the bursts of new-topics).
type Gate struct {
	Reached func()          // called once the ids are taken
	Open    <-chan struct{} // commit when this closes
}

// Isolation levels of the writers' transactions and each one's share of them (percent).
var isolationLevels = []struct {
	name  string
	level pgx.TxIsoLevel
	pct   int
}{
	{"read committed", pgx.ReadCommitted, 50},
	{"repeatable read", pgx.RepeatableRead, 25},
	{"serializable", pgx.Serializable, 25},
}

func pickIsolation(r *rand.Rand) int {
	n := r.Intn(100)
	for i, l := range isolationLevels {
		if n < l.pct {
			return i
		}
		n -= l.pct
	}
	return 0
}

// rowLocked: whether the writers of `key` serialize with SELECT ... FOR UPDATE on the key's
// aggregate row (e2e_aggregates), else with pg_advisory_xact_lock. Fixed per key: writers of one key
// must all take the same lock, or they would not wait for each other.
func rowLocked(topic, key string) bool {
	h := fnv.New32a()
	h.Write([]byte(topic + "/" + key))
	return h.Sum32()%2 == 0
}

// WriterStats: what the writers' transactions met, for the run's log (atomic: writers share it).
type WriterStats struct {
	Committed   [3]atomic.Int64 // committed transactions per isolation level (isolationLevels)
	RowLocked   atomic.Int64    // committed transactions that locked an aggregate row FOR UPDATE
	Advisory    atomic.Int64    // committed transactions that took an advisory lock
	Serialize   atomic.Int64    // attempts that failed with 40001 (could not serialize) and were retried
	Deadlock    atomic.Int64    // attempts that failed with 40P01 (deadlock detected) and were retried
	GaveUp      atomic.Int64    // transactions that failed 40001/40P01 on every attempt
	Reversed    atomic.Int64    // attempts that took their locks in reverse order
	RolledBack  atomic.Int64    // transactions the application rolled back on purpose
	CommitError atomic.Int64    // COMMITs the server refused (40001 at COMMIT among them)
}

func (s *WriterStats) String() string {
	return fmt.Sprintf("committed transactions: %d read committed, %d repeatable read, %d serializable "+
		"(%d locked an aggregate row FOR UPDATE, %d took advisory locks); retried: %d after 40001, %d after "+
		"40P01 (%d attempts locked in reverse order); %d gave up; %d rolled back on purpose; %d COMMITs refused",
		s.Committed[0].Load(), s.Committed[1].Load(), s.Committed[2].Load(), s.RowLocked.Load(), s.Advisory.Load(),
		s.Serialize.Load(), s.Deadlock.Load(), s.Reversed.Load(), s.GaveUp.Load(), s.RolledBack.Load(),
		s.CommitError.Load())
}

// maxAttempts: a transaction that fails with a serialization failure or a deadlock is retried, as an
// application must, this many times in all.
const maxAttempts = 20

// publishTx is one application transaction, retried on 40001 and 40P01 (each failed attempt's ids
// are rolled back in the ledger; only a COMMIT that succeeded puts ids in it as committed). With a
// gate it runs at READ COMMITTED, always commits, and commits when the gate opens; otherwise its
// isolation level is drawn from isolationLevels.
func (w *Writers) publishTx(ctx context.Context, conn *pgx.Conn, r *rand.Rand, topic string, keys []*string,
	lockSet map[string]bool, gate *Gate) error {
	level := 0
	if gate == nil {
		level = pickIsolation(r)
	}
	if err := w.ensureAggregates(conn, topic, lockSet); err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		reverse := gate == nil && r.Intn(100) < w.Cfg.ReverseLockPct
		err := w.attempt(conn, r, topic, keys, lockSet, gate, level, reverse)
		code := sqlState(err)
		if code != "40001" && code != "40P01" {
			return err
		}
		if attempt == maxAttempts || conn.IsClosed() {
			w.Stats.GaveUp.Add(1)
			return err
		}
		if code == "40001" {
			w.Stats.Serialize.Add(1)
		} else {
			w.Stats.Deadlock.Add(1)
		}
		sleepCtx(context.Background(), time.Duration(r.Int63n(int64(time.Duration(attempt)*5*time.Millisecond))))
	}
}

// ensureAggregates makes the aggregate rows of the row-locked keys exist (in their own statement,
// before the transaction: the entities exist before anyone writes about them).
func (w *Writers) ensureAggregates(conn *pgx.Conn, topic string, lockSet map[string]bool) error {
	for k := range lockSet {
		if !rowLocked(topic, k) {
			continue
		}
		name := topic + "/" + k
		if _, done := w.aggregates.Load(name); done {
			continue
		}
		if _, err := conn.Exec(context.Background(),
			"INSERT INTO e2e_aggregates (topic, key) VALUES ($1, $2) ON CONFLICT DO NOTHING", topic, k); err != nil {
			return err
		}
		w.aggregates.Store(name, true)
	}
	return nil
}

func sqlState(err error) string {
	var pgErr interface{ SQLState() string }
	if errors.As(err, &pgErr) {
		return pgErr.SQLState()
	}
	return ""
}

// attempt is one try of an application transaction: BEGIN at `level`, the marker row, the key
// locks (sorted; reversed when `reverse`, which can deadlock with another writer), the messages,
// then COMMIT, ROLLBACK, or a wait first (its ids are taken; later ids commit before it).
func (w *Writers) attempt(conn *pgx.Conn, r *rand.Rand, topic string, keys []*string,
	lockSet map[string]bool, gate *Gate, level int, reverse bool) error {
	opCtx := context.Background() // never abandon a transaction half-way because the scenario ends
	tx, err := conn.BeginTx(opCtx, pgx.TxOptions{IsoLevel: isolationLevels[level].level})
	if err != nil {
		return err
	}
	token := fmt.Sprint(r.Int63()) // the marker row's key
	var at int64                   // now(): the rows' created_at, which outboxd sends as outbox-created-at
	var ids []MsgID
	var exps []*Expected
	fail := func(err error) error {
		_ = tx.Rollback(opCtx)
		w.Ledger.record(ids, exps, "error", "")
		return err
	}
	if err := tx.QueryRow(opCtx, "SELECT (extract(epoch FROM now()) * 1000000)::bigint").Scan(&at); err != nil {
		return fail(err)
	}
	if _, err := tx.Exec(opCtx, "INSERT INTO e2e_commits (token) VALUES ($1::bigint)", token); err != nil {
		return fail(err)
	}
	// The README's discipline: writers of one key serialize, with an advisory lock or a row lock on
	// the key's aggregate. Locks in a fixed order, no deadlocks (unless reversed on purpose).
	locks := make([]string, 0, len(lockSet))
	for k := range lockSet {
		locks = append(locks, k)
	}
	sort.Strings(locks)
	if reverse && len(locks) > 1 {
		w.Stats.Reversed.Add(1)
		for i, j := 0, len(locks)-1; i < j; i, j = i+1, j-1 {
			locks[i], locks[j] = locks[j], locks[i]
		}
	}
	rows, advisory := false, false
	for _, k := range locks {
		if rowLocked(topic, k) {
			rows = true
			var version int64
			if err := tx.QueryRow(opCtx, "SELECT version FROM e2e_aggregates WHERE topic = $1 AND key = $2 FOR UPDATE",
				topic, k).Scan(&version); err != nil {
				return fail(err)
			}
			if _, err := tx.Exec(opCtx, "UPDATE e2e_aggregates SET version = $3 WHERE topic = $1 AND key = $2",
				topic, k, version+1); err != nil {
				return fail(err)
			}
		} else {
			advisory = true
			if _, err := tx.Exec(opCtx, "SELECT pg_advisory_xact_lock(hashtext($1))", topic+"/"+k); err != nil {
				return fail(err)
			}
		}
	}
	for _, key := range keys {
		sql, args, exp := randomMessage(r, topic, key)
		var id int64
		var jsonText *string
		if err := tx.QueryRow(opCtx, sql, args...).Scan(&id, &jsonText); err != nil {
			return fail(err)
		}
		if jsonText != nil {
			exp.Value = []byte(*jsonText)
		}
		ids = append(ids, MsgID{id, at})
		exps = append(exps, exp)
	}
	if gate != nil {
		gate.Reached()
		select {
		case <-gate.Open:
		case <-time.After(2 * time.Minute):
		}
	} else if w.Cfg.LatePct > 0 && r.Intn(100) < w.Cfg.LatePct {
		time.Sleep(time.Duration(r.Int63n(int64(w.Cfg.MaxLate))))
	}
	if gate == nil && r.Intn(100) < w.Cfg.RollbackPct {
		if err := tx.Rollback(opCtx); err != nil {
			w.Ledger.record(ids, exps, "error", "") // not committed either way
			return err
		}
		w.Ledger.record(ids, exps, "rollback", "")
		w.Stats.RolledBack.Add(1)
		return nil
	}
	if err := tx.Commit(opCtx); err != nil {
		if sqlState(err) != "" {
			w.Ledger.record(ids, exps, "error", "") // the server refused the commit
			w.Stats.CommitError.Add(1)
		} else {
			w.Ledger.record(ids, exps, "uncertain", token) // no answer: the marker row decides later
		}
		return err
	}
	w.Ledger.record(ids, exps, "commit", "")
	w.Written.Add(int64(len(ids)))
	w.Stats.Committed[level].Add(1)
	if rows {
		w.Stats.RowLocked.Add(1)
	}
	if advisory {
		w.Stats.Advisory.Add(1)
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
