package freetier

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/batcher"
	"github.com/unimeter/unimeter/examples/go/internal/saasapi"
	"github.com/unimeter/unimeter/examples/go/internal/testserver"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

const (
	freeTier = 10_000
	hardCap  = 100_000
)

// calls records n API calls of account (ids prefix-1 ... prefix-n), in batches of 10,000.
func calls(ctx context.Context, t *testing.T, c *unimeter.Client, account uint64, prefix string, n int) {
	t.Helper()
	now := time.Now().UnixNano()
	for start := 0; start < n; start += 10_000 {
		batch := make([]*pb.Event, 0, 10_000)
		for i := start; i < n && i < start+10_000; i++ {
			batch = append(batch, &pb.Event{
				AccountId: account, MetricCode: MetricCode, Value: 1, TimeUnixNano: now,
				EventId: fmt.Sprintf("%s-%d", prefix, i+1),
			})
		}
		resp, err := unimeter.Ingest(ctx, c, batch)
		if err != nil {
			t.Fatal(err)
		}
		if int(resp.GetNStored()) != len(batch) {
			t.Fatalf("stored %d of %d", resp.GetNStored(), len(batch))
		}
	}
}

type consumer struct {
	e      *Enforcer
	alerts chan *pb.Alert
	cancel context.CancelFunc
	done   chan error
}

// startConsumer runs an Enforcer with its state in path until stop, and waits until it is live.
func startConsumer(ctx context.Context, t *testing.T, c *unimeter.Client, metric *pb.Metric, path string) *consumer {
	t.Helper()
	e, err := NewEnforcer(c, metric, path)
	if err != nil {
		t.Fatal(err)
	}
	k := &consumer{e: e, alerts: make(chan *pb.Alert, 100), done: make(chan error, 1)}
	e.OnAlert = func(a *pb.Alert) { k.alerts <- a }
	e.Log = log.New(testWriter{t}, "", 0)
	e.Backoff = unimeter.Backoff{Initial: 50 * time.Millisecond, Max: 250 * time.Millisecond, Multiplier: 2}
	runCtx, cancel := context.WithCancel(ctx)
	k.cancel = cancel
	go func() { k.done <- e.Run(runCtx) }()
	select {
	case <-e.Ready():
	case err := <-k.done:
		t.Fatalf("consumer stopped before it was live: %v", err)
	case <-ctx.Done():
		t.Fatal("consumer not live in time")
	}
	return k
}

func (k *consumer) stop(t *testing.T) {
	t.Helper()
	k.cancel()
	if err := <-k.done; err != context.Canceled {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
}

// expect receives exactly the alerts described ("account threshold value_at_cross"), in any
// order, and then nothing more for a while.
func (k *consumer) expect(ctx context.Context, t *testing.T, want ...string) {
	t.Helper()
	pending := map[string]int{}
	for _, w := range want {
		pending[w]++
	}
	for range want {
		select {
		case a := <-k.alerts:
			got := fmt.Sprintf("%d %s %d", a.GetAccountId(), a.GetThresholdCode(), a.GetValueAtCross())
			if pending[got] == 0 || a.GetMultiple() != 1 {
				t.Fatalf("unexpected alert %s (multiple %d); want %q", got, a.GetMultiple(), want)
			}
			pending[got]--
		case <-ctx.Done():
			t.Fatalf("alerts missing: %v", pending)
		}
	}
	select {
	case a := <-k.alerts:
		t.Fatalf("alert beyond %q: %v", want, a)
	case <-time.After(300 * time.Millisecond):
	}
}

func listAlerts(ctx context.Context, t *testing.T, c *unimeter.Client, account uint64) []string {
	t.Helper()
	r, err := c.Alerts.ListAlerts(ctx, &pb.ListAlertsRequest{AccountId: account})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range r.GetAlerts() {
		out = append(out, fmt.Sprintf("%s %d", a.GetThresholdCode(), a.GetValueAtCross()))
	}
	return out
}

func status402(ctx context.Context, t *testing.T, e *Enforcer, c *unimeter.Client, account uint64) int {
	t.Helper()
	b := batcher.New(c.Ingest, batcher.Config{Window: 10 * time.Millisecond})
	defer b.Close(ctx)
	mw := &saasapi.Middleware{Batcher: b, Limiter: e, Metric: MetricCode, Log: log.New(io.Discard, "", 0)}
	srv := httptest.NewServer(mw.Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})))
	defer srv.Close()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	req.Header.Set(saasapi.AccountHeader, strconv.FormatUint(account, 10))
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestThresholdAlertsEnforcementAndResume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	dataDir := t.TempDir()
	srv, err := testserver.Start(ctx, dataDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	// Reconnect quickly after the server restarts below (gRPC's default backoff starts at 1 s).
	fastReconnect := grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 250 * time.Millisecond},
	})
	c, err := unimeter.Dial(srv.Addr, fastReconnect)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	metric, err := unimeter.EnsureMetric(ctx, c, Metric(freeTier, hardCap))
	if err != nil {
		t.Fatal(err)
	}
	statePath := filepath.Join(t.TempDir(), "alerts-state.json")
	const heavy, light, free, late, returning = 11, 12, 13, 14, 15

	// A live consumer sees each crossing once, exactly as the thresholds imply.
	k := startConsumer(ctx, t, c, metric, statePath)
	calls(ctx, t, c, heavy, "heavy", 100_000)
	calls(ctx, t, c, light, "light", 10_000)
	calls(ctx, t, c, free, "free", 9_999)
	k.expect(ctx, t, "11 free_tier_exceeded 10000", "11 hard_cap 100000", "12 free_tier_exceeded 10000")
	if got := listAlerts(ctx, t, c, heavy); fmt.Sprint(got) != "[free_tier_exceeded 10000 hard_cap 100000]" {
		t.Fatalf("ListAlerts(heavy) = %q", got)
	}
	if got := listAlerts(ctx, t, c, free); len(got) != 0 {
		t.Fatalf("ListAlerts(free) = %q, want none", got)
	}
	for account, want := range map[uint64]int{heavy: 402, light: 200, free: 200} {
		if got := status402(ctx, t, k.e, c, account); got != want {
			t.Errorf("account %d: HTTP %d, want %d", account, got, want)
		}
	}
	// The request of "free" above was its 10,000th call: its alert follows.
	k.expect(ctx, t, "13 free_tier_exceeded 10000")

	// The server crashes and restarts on the same address: the consumer resubscribes from its
	// offsets. (SIGKILL: a graceful stop would wait its whole 10 s grace for the open stream.)
	addr := srv.Addr
	_ = srv.Kill()
	srv, err = testserver.StartAt(ctx, dataDir, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	calls(ctx, t, c, late, "late", 10_000)
	k.expect(ctx, t, "14 free_tier_exceeded 10000") // and no replay of the earlier ones

	// The consumer restarts; meanwhile more calls cross a threshold, and one-shot ones stay quiet.
	k.stop(t)
	calls(ctx, t, c, returning, "returning", 10_000)
	calls(ctx, t, c, heavy, "heavy-more", 5)
	k2 := startConsumer(ctx, t, c, metric, statePath)
	k2.expect(ctx, t, "15 free_tier_exceeded 10000")
	if over, _ := k2.e.OverCap(ctx, heavy); !over {
		t.Error("the restarted consumer forgot that account 11 is over its cap")
	}
	if over, _ := k2.e.OverCap(ctx, returning); over {
		t.Error("account 15 is not over its cap")
	}
	got, err := c.Query.QueryRealtime(ctx, &pb.QueryRealtimeRequest{AccountId: heavy, MetricCode: MetricCode})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetValue().GetCount() != 100_005 || got.GetValue().GetAlertFlags() != 0b11 {
		t.Fatalf("heavy: count %d flags %b, want 100005, 11", got.GetValue().GetCount(), got.GetValue().GetAlertFlags())
	}
	k2.stop(t)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func TestAlertsAtOrBelowTheSavedOffsetAreSkipped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	e := &Enforcer{path: path, periodLen: time.Hour, now: time.Now, state: State{
		Offsets: map[uint32]uint64{7: 4}, OverCap: map[uint64]int64{},
	}}
	var seen []uint64
	e.OnAlert = func(a *pb.Alert) { seen = append(seen, a.GetOffset()) }
	start := time.Now().UnixNano()
	alert := func(off uint64) *pb.Alert {
		return &pb.Alert{AccountId: 9, ThresholdCode: HardCap, Partition: 7, Offset: off, PeriodStartUnixNano: start}
	}
	// A reconnect redelivered 3 to 5: alone, then in a message with the one after it.
	for _, batch := range [][]*pb.Alert{{alert(3)}, {alert(4), alert(5)}, {alert(5), alert(6)}} {
		if err := e.alerts(batch); err != nil {
			t.Fatal(err)
		}
	}
	if fmt.Sprint(seen) != "[5 6]" {
		t.Fatalf("handled offsets %v, want [5 6]", seen)
	}
	saved, err := LoadState(path)
	if err != nil {
		t.Fatal(err)
	}
	if saved.Offsets[7] != 6 || saved.OverCap[9] != start+time.Hour.Nanoseconds() {
		t.Fatalf("saved %+v", saved)
	}
	if over, _ := e.OverCap(context.Background(), 9); !over {
		t.Fatal("account 9 should be over its cap")
	}
	e.now = func() time.Time { return time.Now().Add(2 * time.Hour) } // the period is over
	if over, _ := e.OverCap(context.Background(), 9); over {
		t.Fatal("a hard cap must expire with its period")
	}
}

func TestHeartbeatRecordsEveryPartitionEvenAtZero(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	e := &Enforcer{path: path, now: time.Now, state: State{Offsets: map[uint32]uint64{}, OverCap: map[uint64]int64{}}}
	if err := e.heartbeat(map[uint32]uint64{0: 0, 1: 3}); err != nil {
		t.Fatal(err)
	}
	saved, err := LoadState(path)
	if err != nil {
		t.Fatal(err)
	}
	if off, ok := saved.Offsets[0]; !ok || off != 0 || saved.Offsets[1] != 3 {
		t.Fatalf("saved offsets %v, want map[0:0 1:3]", saved.Offsets)
	}
}
