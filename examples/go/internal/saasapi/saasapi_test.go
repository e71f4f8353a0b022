package saasapi

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/batcher"
	"github.com/unimeter/unimeter/examples/go/internal/testserver"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

var addr string

func TestMain(m *testing.M) { testserver.Exit(m, &addr) }

type fixture struct {
	client  *unimeter.Client
	srv     *httptest.Server
	flushes atomic.Int64
	flushed atomic.Int64
}

// newFixture serves an "ok" handler behind the middleware, for metric code capped at hardCap.
func newFixture(ctx context.Context, t *testing.T, code string, hardCap uint64, checkEvery time.Duration) *fixture {
	t.Helper()
	c, err := unimeter.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	stored, err := unimeter.EnsureMetric(ctx, c, Metric(code, hardCap))
	if err != nil {
		t.Fatal(err)
	}
	lim, err := NewLimiter(c.Query, stored, checkEvery)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{client: c}
	b := batcher.New(c.Ingest, batcher.Config{Window: 20 * time.Millisecond, OnFlush: func(fl batcher.Flush) {
		if fl.Err != nil {
			t.Errorf("flush: %v", fl.Err)
		}
		f.flushes.Add(1)
		f.flushed.Add(int64(fl.Events))
	}})
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	mw := &Middleware{Batcher: b, Limiter: lim, Metric: code, Log: log.New(io.Discard, "", 0)}
	f.srv = httptest.NewServer(mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) get(ctx context.Context, t *testing.T, account uint64) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+"/v1/things", nil)
	if account != 0 {
		req.Header.Set(AccountHeader, strconv.FormatUint(account, 10))
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Error(err) // not Fatal: called from several goroutines
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func (f *fixture) usage(ctx context.Context, t *testing.T, account uint64, code string) *pb.AggValue {
	t.Helper()
	r, err := f.client.Query.QueryRealtime(ctx, &pb.QueryRealtimeRequest{AccountId: account, MetricCode: code})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetValue()
}

func TestCapIsEnforcedWith402AndRejectedCallsAreNotBilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f := newFixture(ctx, t, "saas_capped_calls", 5, 0)
	const acct, other = 1001, 1002
	for i := 1; i <= 5; i++ {
		if got := f.get(ctx, t, acct); got != http.StatusOK {
			t.Fatalf("request %d: status %d, want 200", i, got)
		}
	}
	for i := 6; i <= 8; i++ {
		if got := f.get(ctx, t, acct); got != http.StatusPaymentRequired {
			t.Fatalf("request %d: status %d, want 402", i, got)
		}
	}
	if got := f.get(ctx, t, other); got != http.StatusOK {
		t.Fatalf("another account: status %d, want 200", got)
	}
	v := f.usage(ctx, t, acct, "saas_capped_calls")
	if v.GetCount() != 5 || v.GetValue() != 5 || v.GetAlertFlags() != 1 {
		t.Fatalf("usage = count %d value %d flags %b, want 5, 5, 1", v.GetCount(), v.GetValue(), v.GetAlertFlags())
	}
	if got := f.usage(ctx, t, other, "saas_capped_calls").GetCount(); got != 1 {
		t.Fatalf("other account count = %d, want 1", got)
	}
	if got := f.get(ctx, t, 0); got != http.StatusUnauthorized {
		t.Fatalf("no account: status %d, want 401", got)
	}
}

func TestConcurrentRequestsShareBatches(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f := newFixture(ctx, t, "saas_calls", 100_000, time.Second)
	const acct, n = 2001, 60
	var wg sync.WaitGroup
	codes := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = f.get(ctx, t, acct)
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusOK {
			t.Fatalf("request %d: status %d", i, c)
		}
	}
	if got := f.usage(ctx, t, acct, "saas_calls").GetCount(); got != n {
		t.Fatalf("count = %d, want %d", got, n)
	}
	if f.flushed.Load() != n || f.flushes.Load() >= n/3 {
		t.Fatalf("%d events in %d Ingest calls: want %d events in fewer than %d calls", f.flushed.Load(), f.flushes.Load(), n, n/3)
	}
}

func TestOverCapAnswerIsCachedUntilThePeriodEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f := newFixture(ctx, t, "saas_cached_calls", 2, time.Hour)
	stored, err := f.client.Metrics.GetMetric(ctx, &pb.GetMetricRequest{Code: "saas_cached_calls"})
	if err != nil {
		t.Fatal(err)
	}
	var queries atomic.Int64
	counting := countingQuery{QueryServiceClient: f.client.Query, n: &queries}
	lim, err := NewLimiter(counting, stored.GetMetric(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const acct = 3001
	if _, err := unimeter.Ingest(ctx, f.client, []*pb.Event{
		{AccountId: acct, MetricCode: "saas_cached_calls", Value: 1, EventId: "c1"},
		{AccountId: acct, MetricCode: "saas_cached_calls", Value: 1, EventId: "c2"},
	}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		over, err := lim.OverCap(ctx, acct)
		if err != nil || !over {
			t.Fatalf("OverCap = %v, %v; want true", over, err)
		}
	}
	if queries.Load() != 1 {
		t.Fatalf("%d QueryRealtime calls, want 1 (cached until the period ends)", queries.Load())
	}
	lim.now = func() time.Time { return time.Now().Add(31 * 24 * time.Hour) } // next period
	if _, err := lim.OverCap(ctx, acct); err != nil {
		t.Fatal(err)
	}
	if queries.Load() != 2 {
		t.Fatalf("%d QueryRealtime calls after the period ended, want 2", queries.Load())
	}
}

type countingQuery struct {
	pb.QueryServiceClient
	n *atomic.Int64
}

func (c countingQuery) QueryRealtime(ctx context.Context, in *pb.QueryRealtimeRequest, opts ...grpc.CallOption) (*pb.QueryRealtimeResponse, error) {
	c.n.Add(1)
	return c.QueryServiceClient.QueryRealtime(ctx, in, opts...)
}
