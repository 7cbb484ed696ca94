package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Harness holds what every scenario shares: where things are and how to reach the services.
type Harness struct {
	Root             string
	Binary           string
	WorkDir          string
	Long             bool
	KeepTopics       bool
	PGPort           string
	SingleBootstrap  []string
	ClusterBootstrap []string
}

func (h *Harness) conninfo(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%s dbname=%s user=postgres connect_timeout=5", h.PGPort, db)
}

// script runs one of the project's scripts (scripts/pg.sh, scripts/kafka.sh) with the ports exported.
func (h *Harness) script(ctx context.Context, name string, args ...string) error {
	_, err := h.scriptOutput(ctx, name, args...)
	return err
}

// scriptOutput is script that also returns what the script printed.
func (h *Harness) scriptOutput(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(h.Root, "scripts", name), args...)
	cmd.Env = os.Environ()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("scripts/%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// createDatabase makes a fresh database for one scenario run and applies the schema with outboxd migrate.
func (h *Harness) createDatabase(ctx context.Context, db string) error {
	admin, err := pgx.Connect(ctx, h.conninfo("postgres"))
	if err != nil {
		return fmt.Errorf("PostgreSQL on port %s: %w", h.PGPort, err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
		return err
	}
	_, err = admin.Exec(ctx, "CREATE DATABASE "+db)
	return err
}

func (h *Harness) exec(ctx context.Context, db, sql string) error {
	conn, err := pgx.Connect(ctx, h.conninfo(db))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

func (h *Harness) dropDatabase(db string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, h.conninfo("postgres"))
	if err != nil {
		logf("drop database %s: %v", db, err)
		return
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
		logf("drop database %s: %v", db, err)
	}
}

func newAdmin(brokers []string) (*kadm.Client, *kgo.Client, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RequestRetries(20),
		kgo.RetryTimeout(30*time.Second))
	if err != nil {
		return nil, nil, err
	}
	return kadm.NewClient(cl), cl, nil
}

// Outboxd is one `outboxd run` process, restartable. The log of every start is appended to one file.
type Outboxd struct {
	Binary, Config, LogPath string

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	exitErr  error
	sent     syscall.Signal // the signal the harness sent to end the current process (0: none)
	starts   int
	killed   int
	unwanted []string // exits the harness did not cause, with when and how
}

// Unwanted lists the exits the harness did not cause: every one fails the run.
func (o *Outboxd) Unwanted() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.unwanted...)
}

// causedBy: whether the process ended as the harness's signal `sent` makes it end: killed by that
// signal, or (SIGTERM) a clean exit with status 0. Anything else (an exit(1), an abort, a crash, an
// exit before the signal was sent) is the product's own doing.
func causedBy(sent syscall.Signal, state *os.ProcessState) bool {
	if sent == 0 || state == nil {
		return false
	}
	ws, ok := state.Sys().(syscall.WaitStatus)
	if !ok {
		return false
	}
	if ws.Signaled() {
		return ws.Signal() == sent
	}
	return sent == syscall.SIGTERM && ws.Exited() && ws.ExitStatus() == 0
}

func (o *Outboxd) Migrate(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, o.Binary, "migrate", "--config", o.Config).CombinedOutput()
	if err != nil {
		return fmt.Errorf("outboxd migrate: %v: %s", err, out)
	}
	return nil
}

func (o *Outboxd) Start() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	logFile, err := os.OpenFile(o.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logFile, "----- e2e: outboxd start #%d at %s\n", o.starts+1, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(o.Binary, "run", "--config", o.Config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	o.starts++
	o.cmd = cmd
	o.sent = 0
	exited := make(chan struct{})
	o.exited = exited
	start := o.starts
	go func() {
		err := cmd.Wait()
		o.mu.Lock()
		o.exitErr = err
		if !causedBy(o.sent, cmd.ProcessState) {
			what := fmt.Sprintf("start #%d (pid %d) exited on its own at %s: %v", start, cmd.Process.Pid,
				time.Now().UTC().Format("15:04:05.000"), err)
			if o.sent != 0 {
				what += fmt.Sprintf(" (the harness had sent %v)", o.sent)
			}
			o.unwanted = append(o.unwanted, what)
			fmt.Fprintf(logFile, "----- e2e: %s\n", what)
		}
		o.mu.Unlock()
		logFile.Close()
		close(exited)
	}()
	return nil
}

// Alive reports whether the current process runs.
func (o *Outboxd) Alive() bool {
	o.mu.Lock()
	ch := o.exited
	o.mu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL and waits for the process to be gone. It reports whether the process was
// running when the signal went out (the kill then hit outboxd).
func (o *Outboxd) Kill() bool {
	alive := o.Alive()
	o.signalAndWait(syscall.SIGKILL, 10*time.Second)
	o.mu.Lock()
	o.killed++
	o.mu.Unlock()
	return alive
}

// Stop sends SIGTERM (a clean shutdown) and waits; SIGKILL after the timeout.
func (o *Outboxd) Stop(timeout time.Duration) error {
	if !o.Alive() {
		return nil
	}
	if !o.signalAndWait(syscall.SIGTERM, timeout) {
		o.signalAndWait(syscall.SIGKILL, 10*time.Second)
		return fmt.Errorf("outboxd did not exit within %s of SIGTERM", timeout)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	var ee *exec.ExitError
	if errors.As(o.exitErr, &ee) {
		return fmt.Errorf("outboxd exited after SIGTERM with %v", o.exitErr)
	}
	return nil
}

func (o *Outboxd) signalAndWait(sig syscall.Signal, timeout time.Duration) bool {
	o.mu.Lock()
	cmd, ch := o.cmd, o.exited
	select {
	case <-ch:
	default:
		if cmd != nil {
			o.sent = sig // under the lock: an exit after this is the signal's, when its status says so
		}
	}
	o.mu.Unlock()
	if cmd == nil || ch == nil {
		return true
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-ch:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Supervise restarts outboxd when it exits without being asked to (as systemd's Restart=always
// would), so that the run goes on and its other figures are measured; the exit itself was recorded
// (Unwanted) and fails the run.
func (o *Outboxd) Supervise(ctx context.Context, paused func() bool) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		if paused() || o.Alive() {
			continue
		}
		o.mu.Lock()
		msg := fmt.Sprintf("%v", o.exitErr)
		o.mu.Unlock()
		logf("outboxd exited on its own (%s); restarting it", msg)
		if err := o.Start(); err != nil {
			logf("restart outboxd: %v", err)
		}
	}
}

// writeConfig writes the user's config/outboxd.toml with only the connection settings changed.
func (h *Harness) writeConfig(path, db string, bootstrap []string, extraProps map[string]string) error {
	tmpl, err := os.ReadFile(filepath.Join(h.Root, "config", "outboxd.toml"))
	if err != nil {
		return err
	}
	text := string(tmpl)
	replace := func(key, value string) error {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + ` = .*$`)
		loc := re.FindStringIndex(text)
		if loc == nil {
			return fmt.Errorf("config/outboxd.toml has no line %q", key+" = ")
		}
		text = text[:loc[0]] + key + " = " + value + text[loc[1]:]
		return nil
	}
	if err := replace("conninfo", fmt.Sprintf("%q", h.conninfo(db))); err != nil {
		return err
	}
	if err := replace("bootstrap_servers", fmt.Sprintf("%q", strings.Join(bootstrap, ","))); err != nil {
		return err
	}
	// Several outboxd instances run on this host: each admin listener takes a free port.
	if err := replace("listen", `"127.0.0.1:0"`); err != nil {
		return err
	}
	if _, debug := extraProps["debug"]; debug {
		if err := replace("level", `"debug"`); err != nil { // librdkafka's debug lines log at debug
			return err
		}
	}
	if len(extraProps) > 0 {
		var b strings.Builder
		for k, v := range extraProps {
			fmt.Fprintf(&b, "%q = %s\n", k, v)
		}
		text = strings.Replace(text, "[kafka.properties]\n", "[kafka.properties]\n"+b.String(), 1)
	}
	return os.WriteFile(path, []byte(text), 0o644)
}
