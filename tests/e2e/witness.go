package main

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Seen is one record the witness read.
type Seen struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   []kgo.RecordHeader
	ID        int64 // from the outbox-id header; -1 when missing or malformed
	At        int64 // from the outbox-created-at header; -1 when missing or malformed
}

func (s *Seen) MsgID() MsgID { return MsgID{s.ID, s.At} }

// ReadAll reads every record of the topics from their start up to the end offsets the broker reports
// now (every acknowledged message is below them). It is the independent witness: franz-go, not
// outboxd's librdkafka. Returns the records and the partition count of each topic.
func ReadAll(ctx context.Context, brokers []string, topics []string) ([]Seen, map[string]int, error) {
	ends, counts, err := endOffsets(ctx, brokers, topics)
	if err != nil {
		return nil, nil, err
	}
	want := map[string]map[int32]kgo.Offset{}
	remaining := map[string]map[int32]int64{}
	left := 0
	for topic, ps := range ends {
		for p, end := range ps {
			if end > 0 {
				if want[topic] == nil {
					want[topic] = map[int32]kgo.Offset{}
					remaining[topic] = map[int32]int64{}
				}
				want[topic][p] = kgo.NewOffset().AtStart()
				remaining[topic][p] = end
				left++
			}
		}
	}
	out, err := readPartitions(ctx, brokers, want, left, "end", func(rec *kgo.Record) (keep, done bool) {
		end, ok := remaining[rec.Topic][rec.Partition]
		if !ok || rec.Offset >= end {
			return false, false
		}
		if rec.Offset == end-1 {
			delete(remaining[rec.Topic], rec.Partition)
			return true, true
		}
		return true, false
	})
	return out, counts, err
}

// endOffsets lists the end offset of every partition of the topics (a topic that does not exist has
// none) and the partition count of each topic.
func endOffsets(ctx context.Context, brokers []string, topics []string) (map[string]map[int32]int64, map[string]int, error) {
	adm, cl, err := newAdmin(brokers)
	if err != nil {
		return nil, nil, err
	}
	defer cl.Close()
	// Right after a leader election a partition's new leader answers OFFSET_NOT_AVAILABLE (or
	// NOT_LEADER...) until its high watermark has caught up: a retriable error is asked again until
	// ctx ends, any other fails the read.
	for {
		listed, err := adm.ListEndOffsets(ctx, topics...)
		if err != nil {
			return nil, nil, fmt.Errorf("list end offsets: %w", err)
		}
		ends := map[string]map[int32]int64{}
		counts := map[string]int{}
		var listErr error
		retry := false
		listed.Each(func(o kadm.ListedOffset) {
			if o.Err != nil {
				if o.Err != kerr.UnknownTopicOrPartition {
					listErr = fmt.Errorf("end offset of %s/%d: %w", o.Topic, o.Partition, o.Err)
					retry = retry || kerr.IsRetriable(o.Err)
				}
				return
			}
			counts[o.Topic]++
			if ends[o.Topic] == nil {
				ends[o.Topic] = map[int32]int64{}
			}
			ends[o.Topic][o.Partition] = o.Offset
		})
		if listErr == nil {
			return ends, counts, nil
		}
		if !retry {
			return nil, nil, listErr
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("%w (still at %v)", listErr, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// readPartitions is the witness's one read loop: a franz-go consumer (with `opts`) of the partitions
// `want`, polled until `left` of them are done. For each record, `take` says whether it is kept
// (as a Seen) and whether it finishes its partition. `end` names what a partition is read to, for
// the error when ctx ends first.
func readPartitions(ctx context.Context, brokers []string, want map[string]map[int32]kgo.Offset, left int,
	end string, take func(*kgo.Record) (keep, done bool), opts ...kgo.Opt) ([]Seen, error) {
	if left == 0 {
		return nil, nil
	}
	consumer, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ConsumePartitions(want),
		kgo.FetchMaxWait(500 * time.Millisecond)}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer consumer.Close()
	var out []Seen
	for left > 0 {
		fetches := consumer.PollFetches(ctx)
		if ctx.Err() != nil {
			return out, fmt.Errorf("witness: %d partitions not read to their %s: %w", left, end, ctx.Err())
		}
		fetches.EachError(func(t string, p int32, err error) {
			logf("witness fetch %s/%d: %v", t, p, err)
		})
		fetches.EachRecord(func(rec *kgo.Record) {
			keep, done := take(rec)
			if keep {
				out = append(out, newSeen(rec))
			}
			if done {
				left--
			}
		})
	}
	return out, nil
}

// newSeen is the record as the witness keeps it, with its outbox-id and outbox-created-at.
func newSeen(rec *kgo.Record) Seen {
	s := Seen{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Key: rec.Key,
		Value: rec.Value, Headers: rec.Headers, ID: -1, At: -1}
	for _, h := range rec.Headers {
		if v, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil {
			if h.Key == "outbox-id" {
				s.ID = v
			} else if h.Key == "outbox-created-at" {
				s.At = v
			}
		}
	}
	return s
}

// Verify compares what Kafka holds with the ledger.
// partitionCounts: every partition count each topic had while messages were produced (for the
// partition check; a topic that grew has several).
func Verify(r *Result, led *Ledger, seen []Seen, partitionCounts map[string][]int) {
	led.mu.Lock()
	defer led.mu.Unlock()
	r.Committed = len(led.committed)
	r.RolledBack = len(led.rolledBack)
	r.Uncertain = len(led.uncertain)
	r.Records = len(seen)

	// Kafka order within a partition is offset order; ReadAll returns each partition in order, but
	// partitions interleave: sort to be sure.
	sort.SliceStable(seen, func(i, j int) bool {
		a, b := seen[i], seen[j]
		if a.Topic != b.Topic {
			return a.Topic < b.Topic
		}
		if a.Partition != b.Partition {
			return a.Partition < b.Partition
		}
		return a.Offset < b.Offset
	})

	first := map[MsgID]*Seen{}
	type keyRef struct{ topic, key string }
	partitionsOfKey := map[keyRef]map[int32]bool{}
	// per (topic, key, partition): highest id among first copies so far
	type kp struct {
		topic, key string
		partition  int32
	}
	maxID := map[kp]int64{}
	for i := range seen {
		s := &seen[i]
		if s.ID < 0 || s.At < 0 {
			r.Foreign++
			r.note("record %s/%d@%d lacks outbox-id or outbox-created-at", s.Topic, s.Partition, s.Offset)
			continue
		}
		exp, known := led.msgs[s.MsgID()]
		if !known {
			r.Foreign++
			r.note("id %s in %s/%d@%d was never returned by publish()", s.MsgID(), s.Topic, s.Partition, s.Offset)
			continue
		}
		if why := contentDiff(s, exp); why != "" {
			r.Content++
			r.note("id %d content: %s", s.ID, why)
		}
		if f, dup := first[s.MsgID()]; dup {
			r.Duplicates++
			// a message without a key may land on another partition when sent again
			if f.Topic != s.Topic || (exp.Key != nil && f.Partition != s.Partition) || !bytes.Equal(f.Key, s.Key) ||
				!bytes.Equal(f.Value, s.Value) || !sameHeaders(f.Headers, s.Headers) {
				r.DuplicateMismatch++
				r.note("id %d: copies differ (%s/%d@%d vs %s/%d@%d)", s.ID, f.Topic, f.Partition, f.Offset, s.Topic,
					s.Partition, s.Offset)
			}
			continue
		}
		first[s.MsgID()] = s
		if led.rolledBack[s.MsgID()] {
			r.Phantom++
			r.note("id %d was rolled back yet delivered (%s/%d@%d)", s.ID, s.Topic, s.Partition, s.Offset)
		}
		if exp.Key == nil {
			continue
		}
		// partition: murmur2 of the key, as the Java client maps it, for one of the topic's counts
		okPartition := false
		for _, n := range partitionCounts[s.Topic] {
			if int32(javaPartition(s.Key, n)) == s.Partition {
				okPartition = true
			}
		}
		if !okPartition {
			r.PartitionMismatch++
			r.note("id %d key %q in partition %d, murmur2 says %v of counts %v", s.ID, *exp.Key, s.Partition,
				expectedPartitions(s.Key, partitionCounts[s.Topic]), partitionCounts[s.Topic])
		}
		ref := keyRef{s.Topic, *exp.Key}
		if partitionsOfKey[ref] == nil {
			partitionsOfKey[ref] = map[int32]bool{}
		}
		partitionsOfKey[ref][s.Partition] = true
		k := kp{s.Topic, *exp.Key, s.Partition}
		if m, ok := maxID[k]; ok && s.ID < m {
			r.OrderBreaks++
			r.note("key %q on %s/%d: id %d after id %d", *exp.Key, s.Topic, s.Partition, s.ID, m)
		}
		if s.ID > maxID[k] {
			maxID[k] = s.ID
		}
	}
	for _, ps := range partitionsOfKey {
		if len(ps) > 1 {
			r.MovedKeys++
		}
	}
	r.Delivered = len(first)
	var lost []MsgID
	for id := range led.committed {
		if _, ok := first[id]; !ok {
			lost = append(lost, id)
		}
	}
	sort.Slice(lost, func(i, j int) bool { return lost[i].ID < lost[j].ID })
	r.Lost = len(lost)
	for i, id := range lost {
		if i == 20 {
			r.note("... and %d more lost", len(lost)-20)
			break
		}
		exp := led.msgs[id]
		key := "<null>"
		if exp.Key != nil {
			key = *exp.Key
			r.note("lost id %s (topic %s, key %q, partition %v)", id, exp.Topic, key,
				expectedPartitions([]byte(key), partitionCounts[exp.Topic]))
		} else {
			r.note("lost id %s (topic %s, no key)", id, exp.Topic)
		}
	}
}

var keyPartitioner = kgo.StickyKeyPartitioner(nil)

// javaPartition is the Java client's default mapping of a key: murmur2, sign bit masked, modulo n.
// franz-go's StickyKeyPartitioner with a nil hasher is exactly that for records with a key.
func javaPartition(key []byte, n int) int {
	return keyPartitioner.ForTopic("").Partition(&kgo.Record{Key: key}, n)
}

func expectedPartitions(key []byte, counts []int) []int {
	var out []int
	for _, n := range counts {
		out = append(out, javaPartition(key, n))
	}
	return out
}

func contentDiff(s *Seen, exp *Expected) string {
	if s.Topic != exp.Topic {
		return fmt.Sprintf("topic %s, want %s", s.Topic, exp.Topic)
	}
	if exp.Key == nil {
		if s.Key != nil {
			return fmt.Sprintf("key %q, want null", s.Key)
		}
	} else if s.Key == nil || !bytes.Equal(s.Key, []byte(*exp.Key)) {
		return fmt.Sprintf("key %q, want %q", s.Key, *exp.Key)
	}
	if (exp.Value == nil) != (s.Value == nil) || !bytes.Equal(exp.Value, s.Value) {
		return fmt.Sprintf("value %q, want %q", trunc(s.Value), trunc(exp.Value))
	}
	want := []kgo.RecordHeader{{Key: "outbox-id", Value: []byte(strconv.FormatInt(s.ID, 10))},
		{Key: "outbox-created-at", Value: []byte(strconv.FormatInt(s.At, 10))}}
	for k, v := range exp.Headers {
		want = append(want, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	if !sameHeaders(want, s.Headers) {
		return fmt.Sprintf("headers %v, want %v", headerStrings(s.Headers), headerStrings(want))
	}
	if s.Headers[0].Key != "outbox-id" || s.Headers[1].Key != "outbox-created-at" {
		return "outbox-id, outbox-created-at are not the first two headers"
	}
	return ""
}

func trunc(b []byte) []byte {
	if b == nil {
		return []byte("<null>")
	}
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

func headerStrings(hs []kgo.RecordHeader) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.Key + "=" + string(h.Value)
	}
	sort.Strings(out)
	return out
}

func sameHeaders(a, b []kgo.RecordHeader) bool {
	if len(a) != len(b) {
		return false
	}
	x, y := headerStrings(a), headerStrings(b)
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return true
}

// Result is one scenario run's figures.
type Result struct {
	Scenario          string
	Run               int
	Duration          time.Duration
	Faults            int // injected faults that outboxd met (Fault, Env.met)
	FaultsInjected    int
	FaultLog          []string
	Committed         int
	RolledBack        int
	Uncertain         int // COMMIT without an answer that pg_xact_status could not settle
	SettledCommitted  int
	SettledAborted    int
	Records           int
	Delivered         int
	Lost              int
	Phantom           int
	Duplicates        int
	DuplicateMismatch int
	OrderBreaks       int
	MovedKeys         int
	Content           int
	Foreign           int
	PartitionMismatch int
	DeadLetters       int
	Stuck             int // rows outboxd did not deliver within the drain timeout
	UnwantedExits     int
	Errors            []string
	Notes             []string
	AllowMovedKeys    bool
	ExactlyOnce       bool // a duplicate fails the run
}

func (r *Result) note(format string, args ...any) {
	if len(r.Notes) < 200 {
		r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
	}
}

func (r *Result) fail(format string, args ...any) {
	r.Errors = append(r.Errors, fmt.Sprintf(format, args...))
}

// Failed: anything lost, phantom, out of key order, changed, foreign, misplaced, dead-lettered,
// duplicated with different content, an outboxd exit the harness did not cause, or the run itself
// could not be completed (which includes a run where outboxd met none of the faults).
func (r *Result) Failed() bool {
	return r.Lost > 0 || r.UnwantedExits > 0 || r.Phantom > 0 || r.OrderBreaks > 0 || r.Content > 0 || r.Foreign > 0 ||
		r.DuplicateMismatch > 0 || r.PartitionMismatch > 0 || r.DeadLetters > 0 || r.Uncertain > 0 || r.Stuck > 0 ||
		(r.MovedKeys > 0 && !r.AllowMovedKeys) || len(r.Errors) > 0 || r.Committed == 0 ||
		(r.ExactlyOnce && r.Duplicates > 0)
}

func (r *Result) Summary() string {
	verdict := "ok"
	if r.Failed() {
		verdict = "FAILED"
	}
	return fmt.Sprintf("%s run %d: %s in %s: committed %d, rolled back %d, delivered %d (records %d), lost %d, "+
		"phantom %d, duplicates %d, order breaks %d, content %d, partition %d, moved keys %d, dead letters %d, "+
		"faults met %d of %d, outboxd exits %d, errors %v", r.Scenario, r.Run, verdict, r.Duration.Round(time.Second), r.Committed, r.RolledBack,
		r.Delivered, r.Records, r.Lost, r.Phantom, r.Duplicates, r.OrderBreaks, r.Content, r.PartitionMismatch,
		r.MovedKeys, r.DeadLetters, r.Faults, r.FaultsInjected, r.UnwantedExits, r.Errors)
}
