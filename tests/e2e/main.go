// Command outboxd-e2e is outboxd's black-box delivery harness.
//
// It drives the built outboxd binary as a user would (a TOML config, `outboxd migrate`, `outboxd run`,
// SIGKILL and restart), writes through outbox.publish from many concurrent transactions at three
// isolation levels, injects faults (new topics, killed outboxd, crashed PostgreSQL, killed brokers,
// leader moves, added partitions, a long broker outage, a topic that does not exist, a checkpoint
// topic with history) and reads Kafka with its own consumer (franz-go) as the witness. Per scenario it
// reports lost, phantom, duplicate, key-order, content and partition figures and exits 1 when any
// scenario lost a message, delivered a rolled-back one, broke key order or changed content, when an
// outboxd exited without the harness causing it, or when outboxd met none of the scenario's faults.
//
// See tests/e2e/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	var (
		root      = flag.String("root", ".", "outboxd source tree (config/outboxd.toml, scripts/)")
		bin       = flag.String("outboxd", "", "outboxd binary (default <root>/build/outboxd)")
		work      = flag.String("work", "", "directory for configs and logs (default <root>/build/e2e)")
		only      = flag.String("scenarios", "", "comma-separated scenario names (default: all of the form)")
		long      = flag.Bool("long", false, "long form (make chaos): longer scenarios, more faults, the broker outage")
		repeat    = flag.Int("repeat", 1, "run each selected scenario this many times")
		keepGoing = flag.Bool("keep-topics", false, "keep the scenarios' topics and databases (debugging)")
		list      = flag.Bool("list", false, "list the scenarios and exit")
	)
	flag.Var(&kafkaProps, "kafka-prop", "extra [kafka.properties] entry for outboxd, key=value (repeatable), e.g. batch.num.messages=4")
	flag.StringVar(&kafkaDebug, "kafka-debug", "", "set librdkafka's debug property in outboxd's config (e.g. eos,msg)")
	flag.StringVar(&deliveryFlag, "delivery", "", "exactly_once: run the selected scenarios in exactly-once mode (read_committed witness, a duplicate fails)")
	flag.IntVar(&newTopicsWaves, "waves", 0, "new-topics: waves of topics (default 3 short, 6 long)")
	flag.IntVar(&newTopicsPerWave, "wave-topics", 0, "new-topics: topics created at once per wave (default 12 short, 16 long)")
	flag.IntVar(&newTopicsBurst, "burst", 0, "new-topics: messages per topic committed the moment it exists (default 100 short, 150 long)")
	flag.IntVar(&historyRecords, "history", 0, "eo-history: checkpoint records written before outboxd starts (default 100,000 short, 1,000,000 long)")
	flag.Parse()

	if *list {
		for _, s := range allScenarios() {
			form := "short+long"
			if s.longOnly {
				form = "long only"
			}
			fmt.Printf("%-16s %-10s %s\n", s.name, form, s.about)
		}
		return
	}

	absRoot, err := filepath.Abs(*root)
	check(err)
	h := &Harness{
		Root:       absRoot,
		Binary:     *bin,
		WorkDir:    *work,
		Long:       *long,
		KeepTopics: *keepGoing,
		PGPort:     envOr("OUTBOXD_PG_PORT", "55432"),
		SingleBootstrap: []string{
			"127.0.0.1:" + envOr("OUTBOXD_KAFKA_PORT", "59092"),
		},
		ClusterBootstrap: clusterBootstrap(envOr("OUTBOXD_CLUSTER_PORT", "19092")),
	}
	if h.Binary == "" {
		h.Binary = filepath.Join(absRoot, "build", "outboxd")
	}
	if h.WorkDir == "" {
		h.WorkDir = filepath.Join(absRoot, "build", "e2e")
	}
	check(os.MkdirAll(h.WorkDir, 0o755))

	var selected []Scenario
	want := map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	named := len(want) > 0
	for _, s := range allScenarios() {
		if named {
			if want[s.name] {
				selected = append(selected, s)
				delete(want, s.name)
			}
		} else if !s.longOnly || *long {
			selected = append(selected, s)
		}
	}
	for n := range want {
		fmt.Fprintf(os.Stderr, "unknown scenario %q (see -list)\n", n)
		os.Exit(2)
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	start := time.Now()
	var results []*Result
	for _, s := range selected {
		for i := 1; i <= *repeat; i++ {
			if ctx.Err() != nil {
				break
			}
			logf("=== scenario %s (run %d/%d, %s form)", s.name, i, *repeat, formName(*long))
			r := h.RunScenario(ctx, s, i)
			results = append(results, r)
			logf("=== %s", r.Summary())
		}
	}
	printTable(os.Stdout, results, time.Since(start))
	for _, r := range results {
		if r.Failed() {
			os.Exit(1)
		}
	}
}

func formName(long bool) string {
	if long {
		return "long"
	}
	return "short"
}

// clusterBootstrap lists the 3-broker cluster's brokers as scripts/kafka.sh lays
// them out: P, P+10000 and P+20000 for OUTBOXD_CLUSTER_PORT=P.
func clusterBootstrap(base string) []string {
	p, err := strconv.Atoi(base)
	if err != nil {
		check(fmt.Errorf("OUTBOXD_CLUSTER_PORT must be a number, got %q", base))
	}
	return []string{
		fmt.Sprintf("127.0.0.1:%d", p),
		fmt.Sprintf("127.0.0.1:%d", p+10000),
		fmt.Sprintf("127.0.0.1:%d", p+20000),
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "outboxd-e2e:", err)
		os.Exit(2)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[e2e %s] %s\n", time.Now().UTC().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
